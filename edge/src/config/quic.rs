//! `[quic]`: what an HTTP/3 client may hold before the handshake is done and after.

use super::at_least;
use super::walk::{Cx, FromToml, Table};

/// When the QUIC listener answers an Initial with a Retry (address validation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Only once `retry_threshold` unvalidated handshakes are in progress.
    Auto,
    /// Every client whose address is not yet validated.
    Always,
    Never,
}

/// QUIC connection limits. Handshake memory is bounded by these: unvalidated
/// handshakes in progress stay at most `retry_threshold` under `auto`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quic {
    pub retry: Retry,
    /// Unvalidated handshakes in progress past which `auto` sends Retry.
    pub retry_threshold: usize,
    /// Open QUIC connections at most (handshaking or established).
    pub max_connections: usize,
    /// Open QUIC connections from one source IP address at most.
    pub max_connections_per_source: usize,
}

impl Default for Quic {
    fn default() -> Self {
        Self {
            retry: Retry::Auto,
            retry_threshold: 64,
            max_connections: 10_000,
            max_connections_per_source: 256,
        }
    }
}

impl FromToml for Retry {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match v.as_str() {
            Some("auto") => Ok(Self::Auto),
            Some("always") => Ok(Self::Always),
            Some("never") => Ok(Self::Never),
            Some(other) => Err(format!(
                "expected \"auto\", \"always\" or \"never\", found {other:?}"
            )),
            None => Err(format!(
                "expected \"auto\", \"always\" or \"never\", found {}",
                v.type_name()
            )),
        }
    }
}

pub(super) fn read_quic(cx: &mut Cx<'_>, root: &mut Table<'_>) -> Quic {
    let d = Quic::default();
    let Some(mut t) = root.table(cx, "quic") else {
        return d;
    };
    let out = Quic {
        retry: t.or(cx, "retry", d.retry),
        retry_threshold: t.or(cx, "retry_threshold", d.retry_threshold),
        max_connections: at_least(cx, &mut t, "max_connections", d.max_connections, 1),
        max_connections_per_source: at_least(
            cx,
            &mut t,
            "max_connections_per_source",
            d.max_connections_per_source,
            1,
        ),
    };
    t.finish(cx);
    out
}

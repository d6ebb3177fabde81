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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Config;
    use super::*;

    const POOL: &str = "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n";

    fn parse(quic: &str) -> Result<Config, super::super::ConfigErrors> {
        Config::parse(
            &format!("{quic}\n{POOL}"),
            "edge.toml",
            Some(Path::new("/")),
        )
    }

    #[test]
    fn defaults_and_every_key() {
        let c = parse("").expect("valid");
        assert_eq!(c.quic, Quic::default());
        let text = "[quic]\nretry = \"always\"\nretry_threshold = 0\nmax_connections = 5\n\
                    max_connections_per_source = 1\n";
        let c = parse(text).expect("valid");
        assert_eq!(
            c.quic,
            Quic {
                retry: Retry::Always,
                retry_threshold: 0,
                max_connections: 5,
                max_connections_per_source: 1,
            }
        );
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let e = parse("[quic]\nretry = \"sometimes\"\nmax_connections = 0\n").expect_err("bad");
        let keys: Vec<_> = e.errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(keys, [(2, "quic.retry"), (3, "quic.max_connections")]);
    }
}

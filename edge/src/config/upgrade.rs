//! `[upgrade]`: which HTTP/1.1 upgrades (WebSocket) edge passes to backends,
//! and how long a tunnel may sit idle.

use std::time::Duration;

use super::positive;
use super::walk::{Cx, FromToml, Table};

/// HTTP/1.1 protocol upgrades (RFC 9110 7.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// Protocol names (lower case, without version) whose `Upgrade` requests
    /// are forwarded; an empty list strips every `Upgrade`, as for others.
    pub protocols: Vec<String>,
    /// A tunnel with no byte either way for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Upgrade {
    fn default() -> Self {
        Self {
            protocols: vec!["websocket".to_owned()],
            idle_timeout: Duration::from_secs(120),
        }
    }
}

impl Upgrade {
    /// The configured name `Upgrade: NAME[/VERSION]` offers, if it is one.
    pub fn allows(&self, name: &str) -> Option<&str> {
        self.protocols
            .iter()
            .find(|p| p.eq_ignore_ascii_case(name))
            .map(String::as_str)
    }
}

/// A protocol name as `Upgrade` carries it: an RFC 9110 token, no version.
struct Protocol(String);

impl FromToml for Protocol {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        let s = v
            .as_str()
            .ok_or_else(|| format!("expected a string, found {}", v.type_name()))?;
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if s.is_empty() || !s.chars().all(token) {
            return Err(format!(
                "{s:?} is not a protocol name (a token such as \"websocket\", without a version)"
            ));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
}

pub(super) fn read_upgrade(cx: &mut Cx<'_>, root: &mut Table<'_>) -> Upgrade {
    let d = Upgrade::default();
    let Some(mut t) = root.table(cx, "upgrade") else {
        return d;
    };
    let protocols = t
        .opt::<Vec<Protocol>>(cx, "protocols")
        .map_or(d.protocols, |v| v.into_iter().map(|p| p.0).collect());
    let idle_timeout = positive(cx, &mut t, "idle_timeout", d.idle_timeout);
    t.finish(cx);
    Upgrade {
        protocols,
        idle_timeout,
    }
}

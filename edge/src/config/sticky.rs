//! `sticky = { ... }` on a pool: keep a user on one endpoint, by a signed cookie
//! naming it, or by a header or the client address (consistent hashing, and in
//! `shared` mode an assignment in `[redis]` every edge reads).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::walk::{Cx, FromToml, Table};
use super::{positive, Pool};

/// A pool's sticky-session settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sticky {
    /// What identifies a user.
    pub key: StickyKey,
    /// The cookie edge sets (cookie key only).
    pub cookie: String,
    /// How long a pin lasts: the cookie's `Max-Age`, the Redis entry's expiry.
    pub ttl: Duration,
    /// Whether every edge keeps a user on the same endpoint: cookies signed with
    /// the same `secret_file`, or header / client assignments kept in `[redis]`.
    pub shared: bool,
    /// The key cookies are signed with (at least 16 bytes); without it, one is
    /// generated in `state_dir` and kept across restarts.
    pub secret_file: Option<PathBuf>,
    /// Where `shared` was set, for the check that `[redis]` exists.
    pub(super) shared_line: usize,
}

/// What a sticky pool recognises a user by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StickyKey {
    /// A cookie edge sets on the first answer, naming the endpoint (signed).
    Cookie,
    /// A request header's value (e.g. a user id set by an auth layer).
    Header(String),
    /// The client address (after trusted proxies).
    ClientIp,
}

impl FromToml for StickyKey {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        const EXPECTED: &str = "expected \"cookie\", \"client_ip\" or \"header:NAME\"";
        let s = v
            .as_str()
            .ok_or_else(|| format!("{EXPECTED}, found {}", v.type_name()))?;
        match s.split_once(':') {
            None if s == "cookie" => Ok(Self::Cookie),
            None if s == "client_ip" => Ok(Self::ClientIp),
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(|h| Self::Header(h.as_str().to_owned()))
                .map_err(|_| format!("{name:?} is not a header name")),
            _ => Err(format!("{EXPECTED}, found {s:?}")),
        }
    }
}

/// The cookie name edge uses unless told otherwise.
pub const DEFAULT_COOKIE: &str = "edge_s";
/// Shortest signing key accepted from `secret_file`.
pub const MIN_SECRET: usize = 16;

/// Whether `name` may be a cookie name (an RFC 6265 token).
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// `sticky = { key, cookie, ttl, shared, secret_file }` of one pool.
pub(super) fn read_sticky(cx: &mut Cx<'_>, pool: &mut Table<'_>, base: &Path) -> Option<Sticky> {
    let mut t = pool.table(cx, "sticky")?;
    let key = t.or(cx, "key", StickyKey::Cookie);
    let cookie = t.or(cx, "cookie", DEFAULT_COOKIE.to_owned());
    if !is_cookie_name(&cookie) {
        let line = t.line_of(cx, "cookie");
        cx.error(
            line,
            &t.path("cookie"),
            format!("{cookie:?} is not a cookie name"),
        );
    }
    let ttl = positive(cx, &mut t, "ttl", Duration::from_secs(3600));
    let shared_line = t.line_of(cx, "shared");
    let shared = t.or(cx, "shared", false);
    let secret_file = t.opt::<PathBuf>(cx, "secret_file").map(|p| base.join(p));
    if let Some(path) = &secret_file {
        let reason = match std::fs::read(path) {
            Ok(bytes) if bytes.len() >= MIN_SECRET => None,
            Ok(bytes) => Some(format!(
                "{} holds {} bytes; a signing key needs at least {MIN_SECRET}",
                path.display(),
                bytes.len()
            )),
            Err(e) => Some(format!("cannot read {}: {e}", path.display())),
        };
        if let Some(reason) = reason {
            let line = t.line_of(cx, "secret_file");
            cx.error(line, &t.path("secret_file"), reason);
        }
    }
    if shared && key == StickyKey::Cookie && secret_file.is_none() {
        cx.error(
            shared_line,
            &t.path("shared"),
            "shared cookies need secret_file: every edge must sign them with the same key",
        );
    }
    if key != StickyKey::Cookie && t.has("cookie") {
        let line = t.line_of(cx, "cookie");
        cx.error(line, &t.path("cookie"), "only used with key = \"cookie\"");
    }
    t.finish(cx);
    Some(Sticky {
        key,
        cookie,
        ttl,
        shared,
        secret_file,
        shared_line,
    })
}

/// A `shared` header or client-address pool keeps its assignments in Redis.
pub(super) fn check_shared(cx: &mut Cx<'_>, pools: &[Pool], has_redis: bool) {
    for p in pools {
        let Some(s) = &p.sticky else { continue };
        if s.shared && s.key != StickyKey::Cookie && !has_redis {
            cx.error(
                s.shared_line,
                &format!("pools.{}.sticky.shared", p.name()),
                "keeps assignments in Redis: add a [redis] table",
            );
        }
    }
}

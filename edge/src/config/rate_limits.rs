//! `[[rate_limits]]`: request rate rules (GCRA), matched by host, path prefix or
//! route and counted per key, on this edge (`local`) or across every edge through
//! `[redis]` (`global`).

use std::time::Duration;

use super::walk::{Cx, FromToml, Table};
use super::Pool;

/// What a rule counts requests by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    /// The client address (a trusted proxy's forwarded address, else the peer).
    ClientIp,
    /// A request header's value (lower-case name); requests without it are not limited.
    Header(String),
    /// A cookie's value; requests without it are not limited.
    Cookie(String),
    /// The matched route (every client together).
    Route,
}

impl FromToml for LimitKey {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        const EXPECTED: &str =
            "expected \"client_ip\", \"route\", \"header:NAME\" or \"cookie:NAME\"";
        let s = v
            .as_str()
            .ok_or_else(|| format!("{EXPECTED}, found {}", v.type_name()))?;
        match s.split_once(':') {
            None if s == "client_ip" => Ok(Self::ClientIp),
            None if s == "route" => Ok(Self::Route),
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(|h| Self::Header(h.as_str().to_owned()))
                .map_err(|_| format!("{name:?} is not a header name")),
            Some(("cookie", name))
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)) =>
            {
                Ok(Self::Cookie(name.to_owned()))
            }
            Some(("cookie", name)) => Err(format!("{name:?} is not a cookie name")),
            _ => Err(format!("{EXPECTED}, found {s:?}")),
        }
    }
}

/// Where a rule's counters live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitScope {
    /// On this edge only.
    Local,
    /// In `[redis]`, shared by every edge.
    Global,
}

impl FromToml for LimitScope {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match v.as_str() {
            Some("local") => Ok(Self::Local),
            Some("global") => Ok(Self::Global),
            Some(o) => Err(format!("expected \"local\" or \"global\", found {o:?}")),
            None => Err(format!(
                "expected \"local\" or \"global\", found {}",
                v.type_name()
            )),
        }
    }
}

/// What a `global` rule does while Redis is away (down, slow, breaker open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitFallback {
    /// Count on this edge alone (the limit then applies per edge).
    Local,
    /// Let every request through.
    Allow,
}

impl FromToml for LimitFallback {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match v.as_str() {
            Some("local") => Ok(Self::Local),
            Some("allow") => Ok(Self::Allow),
            Some(o) => Err(format!("expected \"local\" or \"allow\", found {o:?}")),
            None => Err(format!(
                "expected \"local\" or \"allow\", found {}",
                v.type_name()
            )),
        }
    }
}

/// A rate: `count` requests per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u64,
    pub per: Duration,
}

impl Rate {
    /// The time one request uses up (GCRA's emission interval), at least 1 ns.
    pub fn interval(&self) -> Duration {
        let ns = self.per.as_nanos() / u128::from(self.count.max(1));
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX).max(1))
    }

    /// Requests in one second, rounded up.
    pub fn per_second(&self) -> u64 {
        let per_ns = self.per.as_nanos().max(1);
        let n = (u128::from(self.count) * 1_000_000_000).div_ceil(per_ns);
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

impl FromToml for Rate {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        const EXPECTED: &str = "expected a rate like \"100/s\", \"600/m\" or \"1000/h\"";
        let s = v
            .as_str()
            .ok_or_else(|| format!("{EXPECTED}, found {}", v.type_name()))?;
        let (n, unit) = s
            .split_once('/')
            .ok_or_else(|| format!("{EXPECTED}, found {s:?}"))?;
        let count: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("{EXPECTED}, found {s:?}"))?;
        if count == 0 {
            return Err("the rate must be at least 1 request per unit".to_owned());
        }
        if count > 10_000_000 {
            return Err(format!("{count} is out of range (at most 10000000)"));
        }
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(format!("{EXPECTED}, found {s:?}")),
        };
        Ok(Self { count, per })
    }
}

/// One `[[rate_limits]]` rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub name: String,
    /// Match: all that are given must match (none given: every request).
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    /// The pool of the matched route (routes are named by their pool).
    pub route: Option<String>,
    pub key: LimitKey,
    pub rate: Rate,
    /// Requests allowed at once on top of the steady rate (GCRA's tolerance).
    pub burst: u64,
    pub scope: LimitScope,
    pub fallback: LimitFallback,
}

pub(super) fn read_rate_limits(
    cx: &mut Cx<'_>,
    root: &mut Table<'_>,
    pools: &[Pool],
    has_redis: bool,
) -> Vec<RateLimit> {
    let mut out: Vec<RateLimit> = Vec::new();
    // Every name given, valid rule or not (a duplicate is an error either way).
    let mut names: Vec<String> = Vec::new();
    for mut t in root.tables(cx, "rate_limits") {
        let name = t.opt::<String>(cx, "name");
        let host = t
            .opt::<String>(cx, "host")
            .map(|h| super::normalize_host(&h));
        let path_prefix = t.opt::<String>(cx, "path_prefix");
        let route = t.opt::<String>(cx, "route");
        let key = t.or(cx, "key", LimitKey::ClientIp);
        let rate = t.opt::<Rate>(cx, "rate");
        let burst = t.opt::<u64>(cx, "burst");
        let scope = t.or(cx, "scope", LimitScope::Local);
        let fallback = t.or(cx, "fallback", LimitFallback::Local);
        let name = match name {
            Some(n)
                if !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') =>
            {
                Some(n)
            }
            Some(n) => {
                let line = t.line_of(cx, "name");
                cx.error(
                    line,
                    &t.path("name"),
                    format!("{n:?} is not a name (visible ASCII, no quotes)"),
                );
                None
            }
            None => {
                let line = t.line();
                cx.error(line, &t.path("name"), "every rate limit needs a name");
                None
            }
        };
        if let Some(n) = &name {
            if names.contains(n) {
                let line = t.line_of(cx, "name");
                cx.error(
                    line,
                    &t.path("name"),
                    format!("{n:?} is used by an earlier rate limit"),
                );
            }
            names.push(n.clone());
        }
        if let Some(p) = &path_prefix {
            if !p.starts_with('/') {
                let line = t.line_of(cx, "path_prefix");
                cx.error(line, &t.path("path_prefix"), "must start with '/'");
            }
        }
        if let Some(r) = &route {
            if !cx.pools_from_flags && !pools.iter().any(|p| p.name() == r) {
                let line = t.line_of(cx, "route");
                cx.error(
                    line,
                    &t.path("route"),
                    format!("no pool {r:?} (a route is named by its pool)"),
                );
            }
        }
        if rate.is_none() && !t.has("rate") {
            let line = t.line();
            cx.error(
                line,
                &t.path("rate"),
                "every rate limit needs a rate, like \"100/s\"",
            );
        }
        if scope == LimitScope::Global && !has_redis {
            let line = t.line_of(cx, "scope");
            cx.error(
                line,
                &t.path("scope"),
                "\"global\" needs [redis] (or use \"local\")",
            );
        }
        if burst == Some(0) {
            let line = t.line_of(cx, "burst");
            cx.error(line, &t.path("burst"), "must be at least 1");
        }
        t.finish(cx);
        if let (Some(name), Some(rate)) = (name, rate) {
            let burst = burst.filter(|b| *b > 0).unwrap_or(rate.per_second().max(1));
            out.push(RateLimit {
                name,
                host,
                path_prefix,
                route,
                key,
                rate,
                burst,
                scope,
                fallback,
            });
        }
    }
    out
}

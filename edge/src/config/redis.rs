//! `[redis]`: the one Redis every shared feature uses (cache L2, and later sticky
//! sessions and global limits): one server, a Redis Cluster, or a master found
//! through Sentinel, with the deadline and breaker every call goes through.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::walk::{Cx, Table};
use super::{at_least, positive};

/// Where Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://` or `rediss://` (TLS) URL of one server.
    Single(String),
    /// Seed URLs of a Redis Cluster; the rest of the nodes are discovered.
    Cluster(Vec<String>),
    /// A master named `master`, looked up through these sentinels (and again
    /// after a failover).
    Sentinel {
        master: String,
        sentinels: Vec<String>,
        /// Credentials of the master and replicas (the sentinels' own are in
        /// their URLs).
        username: Option<String>,
        password: Option<String>,
        /// The master speaks TLS.
        tls: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redis {
    pub target: RedisTarget,
    /// PEM file of the CA that signed the servers' certificates (`rediss://`),
    /// instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// Deadline of every call.
    pub timeout: Duration,
    /// Consecutive failures that open the breaker.
    pub breaker_failures: u32,
    /// How long the open breaker skips Redis before one probe.
    pub breaker_cooldown: Duration,
}

impl Redis {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
    pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
    pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(2);

    /// One server at `url` with the default deadline and breaker.
    pub fn single(url: String) -> Self {
        Self {
            target: RedisTarget::Single(url),
            tls_ca: None,
            timeout: Self::DEFAULT_TIMEOUT,
            breaker_failures: Self::DEFAULT_BREAKER_FAILURES,
            breaker_cooldown: Self::DEFAULT_BREAKER_COOLDOWN,
        }
    }

    /// How logs name it: addresses only, never credentials.
    pub fn describe(&self) -> String {
        match &self.target {
            RedisTarget::Single(u) => redact(u),
            RedisTarget::Cluster(seeds) => format!(
                "cluster {}",
                seeds
                    .iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            RedisTarget::Sentinel {
                master, sentinels, ..
            } => format!(
                "sentinel master {master:?} via {}",
                sentinels
                    .iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// `redis://user:secret@host` → `redis://host`.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => url.to_owned(),
    }
}

pub(super) fn read_redis(cx: &mut Cx<'_>, root: &mut Table<'_>, base: &Path) -> Option<Redis> {
    let mut t = root.table(cx, "redis")?;
    let url = t.opt::<String>(cx, "url");
    let cluster = t.opt::<Vec<String>>(cx, "cluster");
    let sentinel = t.table(cx, "sentinel").map(|mut s| {
        let master = s.opt::<String>(cx, "master");
        let sentinels = s.opt::<Vec<String>>(cx, "nodes").unwrap_or_default();
        let username = s.opt::<String>(cx, "username");
        let password = s.opt::<String>(cx, "password");
        let tls = s.or(cx, "tls", false);
        if master.as_deref().is_none_or(str::is_empty) {
            let line = s.line();
            cx.error(line, &s.path("master"), "the master's name is required");
        }
        if sentinels.is_empty() {
            let line = s.line_of(cx, "nodes");
            cx.error(
                line,
                &s.path("nodes"),
                "at least one sentinel URL is required, like [\"redis://127.0.0.1:26379\"]",
            );
        }
        for u in &sentinels {
            check_url(cx, &s, "nodes", u);
        }
        s.finish(cx);
        RedisTarget::Sentinel {
            master: master.unwrap_or_default(),
            sentinels,
            username,
            password,
            tls,
        }
    });
    let line = t.line();
    let path = t.path("url");
    let target = match (url, cluster, sentinel) {
        (Some(u), None, None) => {
            check_url(cx, &t, "url", &u);
            RedisTarget::Single(u)
        }
        (None, Some(seeds), None) => {
            if seeds.is_empty() {
                let line = t.line_of(cx, "cluster");
                cx.error(
                    line,
                    &t.path("cluster"),
                    "at least one seed URL is required",
                );
            }
            for u in &seeds {
                check_url(cx, &t, "cluster", u);
            }
            RedisTarget::Cluster(seeds)
        }
        (None, None, Some(s)) => s,
        (None, None, None) => {
            cx.error(
                line,
                &path,
                "say where Redis is: url = \"redis://HOST:PORT\", cluster = [seed URLs] or sentinel = { master, nodes }",
            );
            RedisTarget::Single(String::new())
        }
        _ => {
            cx.error(
                line,
                &t.path("url"),
                "give only one of url, cluster and sentinel",
            );
            RedisTarget::Single(String::new())
        }
    };
    let tls_ca = t.opt::<PathBuf>(cx, "tls_ca").map(|p| base.join(p));
    if let Some(p) = &tls_ca {
        if !p.is_file() {
            let line = t.line_of(cx, "tls_ca");
            cx.error(
                line,
                &t.path("tls_ca"),
                format!("no such file: {}", p.display()),
            );
        }
    }
    let out = Redis {
        target,
        tls_ca,
        timeout: positive(cx, &mut t, "timeout", Redis::DEFAULT_TIMEOUT),
        breaker_failures: at_least(
            cx,
            &mut t,
            "breaker_failures",
            Redis::DEFAULT_BREAKER_FAILURES,
            1,
        ),
        breaker_cooldown: positive(
            cx,
            &mut t,
            "breaker_cooldown",
            Redis::DEFAULT_BREAKER_COOLDOWN,
        ),
    };
    t.finish(cx);
    Some(out)
}

fn check_url(cx: &mut Cx<'_>, t: &Table<'_>, key: &str, url: &str) {
    if !valid_url(url) {
        let line = t.line_of(cx, key);
        cx.error(
            line,
            &t.path(key),
            format!(
                "invalid Redis URL {url:?}; write it like \"redis://127.0.0.1:6379\" (rediss:// for TLS)"
            ),
        );
    }
}

/// `redis[s]://[user:password@]host[:port][/db]`: what the redis crate accepts.
pub(super) fn valid_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    !host.is_empty() && redis::Client::open(url).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_the_description() {
        let r = Redis::single("redis://edge:s3cret@10.0.0.1:6379/2".into());
        assert_eq!(r.describe(), "redis://10.0.0.1:6379/2");
    }

    #[test]
    fn urls_are_checked() {
        assert!(valid_url("redis://127.0.0.1:6379"));
        assert!(valid_url("rediss://cache.internal:6380/1"));
        assert!(!valid_url("http://127.0.0.1:6379"));
        assert!(!valid_url("redis://"));
    }
}

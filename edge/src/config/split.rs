//! `split = [...]` on a route: gray release. Several pool versions share the
//! route's traffic by weight; targeting rules (`targets`) win over weights; a
//! cohort key (`split_key`, the sticky key forms) makes the weighted choice a
//! hash bucket, the same on every edge; `guard` rolls a canary back by itself.

use std::time::Duration;

use super::walk::{Cx, Table};
use super::{positive, Geo, Pool, StickyKey};

/// A route's traffic split.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// The versions, baseline first.
    pub versions: Vec<SplitVersion>,
    /// What keeps a user in one cohort (a hash bucket of it); `None`: each
    /// request is drawn by weight on its own.
    pub key: Option<StickyKey>,
    /// Rules that send a request to a version whatever the weights say, first match wins.
    pub targets: Vec<Target>,
    /// The request header naming the chosen version's tag upstream.
    pub header: String,
    /// The W3C `baggage` member that also carries the tag (honoured from
    /// trusted peers, set upstream), when on.
    pub baggage: Option<String>,
    /// The automatic rollback guard, when on.
    pub guard: Option<Guard>,
    /// Progressive delivery, when on: the canary's weights (percent, rising)
    /// and how long the guard must stay clean on one before the next.
    pub steps: Option<(Vec<u32>, Duration)>,
}

/// One `{ pool, weight, tag }` of a split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitVersion {
    pub pool: String,
    /// Share of the traffic, relative to the split's total.
    pub weight: u32,
    /// What the upstream header says for it (default: the pool's name).
    pub tag: String,
}

/// A targeting rule: requests it matches go to `version` (an index into `versions`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub when: Match,
    pub version: usize,
}

/// What a targeting rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// A request header with this exact value (`x-canary: always`).
    Header(String, String),
    /// A cookie with this exact value.
    Cookie(String, String),
    /// Clients `[geo]` places in this region.
    Region(String),
    /// The cohort key's bucket (0..100) in `from..=to`.
    Bucket(u8, u8),
}

/// `guard = { ... }`: when the canary's errors or p99 grow past the baseline's
/// by these ratios, its weight goes to 0 until the split changes.
#[derive(Clone, Debug, PartialEq)]
pub struct Guard {
    pub max_error_ratio: f64,
    pub max_p99_ratio: f64,
    /// Requests each side needs in the window before the guard judges.
    pub min_requests: u64,
    pub window: Duration,
    /// Error rates below this count as this (a baseline with no errors does not
    /// make one canary error a breach).
    pub error_floor: f64,
    /// p99s below this count as this (loopback jitter is no breach).
    pub latency_floor: Duration,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            max_error_ratio: 2.0,
            max_p99_ratio: 1.5,
            min_requests: 200,
            window: Duration::from_secs(60),
            error_floor: 0.01,
            latency_floor: Duration::from_millis(20),
        }
    }
}

/// The header the chosen version's tag goes upstream in, unless told otherwise.
pub const DEFAULT_HEADER: &str = "x-edge-version";
/// Cohort buckets a key hashes into.
pub const BUCKETS: u8 = 100;

/// The route's `split`, `split_key`, `targets`, `version_header` and `guard`,
/// when it has a `split`.
pub(super) fn read_split(
    cx: &mut Cx<'_>,
    route: &mut Table<'_>,
    pools: &[Pool],
    geo: Option<&Geo>,
) -> Option<Split> {
    let split_line = route.line_of(cx, "split");
    let tables = route.tables(cx, "split");
    let rest = [
        "split_key",
        "targets",
        "version_header",
        "version_baggage",
        "guard",
        "steps",
        "step_after",
    ];
    if tables.is_empty() {
        for key in rest.into_iter().filter(|k| route.has(k)) {
            let line = route.line_of(cx, key);
            cx.error(line, &route.path(key), "only used with split");
        }
        return None;
    }
    let mut versions = Vec::new();
    for mut t in tables {
        let pool = t.opt::<String>(cx, "pool").unwrap_or_default();
        if !pools.iter().any(|p| p.name() == pool) {
            let line = t.line_of(cx, "pool");
            let reason = match pool.as_str() {
                "" => "missing (required)".to_owned(),
                p => format!("no pool named {p:?} ([pools.{p}])"),
            };
            cx.error(line, &t.path("pool"), reason);
        }
        let weight = t.or::<u32>(cx, "weight", 0);
        let tag = t.or(cx, "tag", pool.clone());
        if http::HeaderValue::from_str(&tag).is_err() || tag.is_empty() {
            let line = t.line_of(cx, "tag");
            cx.error(
                line,
                &t.path("tag"),
                format!("{tag:?} cannot be a header value"),
            );
        }
        if versions
            .iter()
            .any(|v: &SplitVersion| v.pool == pool || v.tag == tag)
        {
            let line = t.line();
            cx.error(
                line,
                &t.path("pool"),
                "each version needs its own pool and tag",
            );
        }
        versions.push(SplitVersion { pool, weight, tag });
        t.finish(cx);
    }
    if versions.iter().map(|v| u64::from(v.weight)).sum::<u64>() == 0 {
        cx.error(split_line, &route.path("split"), "the weights add up to 0");
    }
    if versions.len() < 2 {
        cx.error(
            split_line,
            &route.path("split"),
            "a split needs at least two versions",
        );
    }
    let key = route.opt::<StickyKey>(cx, "split_key");
    if key == Some(StickyKey::Cookie) {
        let line = route.line_of(cx, "split_key");
        let reason =
            "expected \"client_ip\" or \"header:NAME\" (a cohort is hashed from the request)";
        cx.error(line, &route.path("split_key"), reason);
    }
    let targets = read_targets(cx, route, &versions, key.is_some(), geo);
    let header = route.or(cx, "version_header", DEFAULT_HEADER.to_owned());
    if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
        let line = route.line_of(cx, "version_header");
        cx.error(
            line,
            &route.path("version_header"),
            format!("{header:?} is not a header name"),
        );
    }
    let baggage = read_baggage(cx, route, &versions);
    let guard = read_guard(cx, route);
    let steps = read_steps(cx, route, versions.len(), guard.is_some());
    Some(Split {
        versions,
        key,
        targets,
        header: header.to_ascii_lowercase(),
        baggage,
        guard,
        steps,
    })
}

/// `steps = [5, 25, 50, 100]` with `step_after = "5m"`: rising percentages of
/// the one canary, moved up while the guard stays clean.
fn read_steps(
    cx: &mut Cx<'_>,
    route: &mut Table<'_>,
    versions: usize,
    guarded: bool,
) -> Option<(Vec<u32>, Duration)> {
    let after = positive(cx, route, "step_after", Duration::ZERO);
    let after_line = route.line_of(cx, "step_after");
    let Some(steps) = route.opt::<Vec<u32>>(cx, "steps") else {
        if !after.is_zero() {
            cx.error(
                after_line,
                &route.path("step_after"),
                "only used with steps",
            );
        }
        return None;
    };
    let line = route.line_of(cx, "steps");
    let key = route.path("steps");
    let rising = steps.windows(2).all(|w| w[0] < w[1]);
    if steps.is_empty() || !rising || steps.iter().any(|s| !(1..=100).contains(s)) {
        cx.error(
            line,
            &key,
            "expected rising percentages from 1 to 100, like [5, 25, 50, 100]",
        );
    }
    if versions != 2 {
        cx.error(
            line,
            &key,
            "steps need exactly two versions (the baseline and one canary)",
        );
    }
    if !guarded {
        cx.error(
            line,
            &key,
            "steps need a guard (it decides when to move up)",
        );
    }
    if after.is_zero() {
        cx.error(
            line,
            &route.path("step_after"),
            "missing (required with steps)",
        );
    }
    Some((steps, after))
}

/// `version_baggage = "edge-version"`: a baggage member key (a token), and
/// every tag a value it can carry as written (no percent-encoding needed).
fn read_baggage(
    cx: &mut Cx<'_>,
    route: &mut Table<'_>,
    versions: &[SplitVersion],
) -> Option<String> {
    let key = route.opt::<String>(cx, "version_baggage")?;
    let line = route.line_of(cx, "version_baggage");
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$&'*+-.^_`|~".contains(&b);
    if key.is_empty() || !key.bytes().all(token) {
        let reason =
            format!("{key:?} is not a baggage member key (a token, like \"edge-version\")");
        cx.error(line, &route.path("version_baggage"), reason);
        return None;
    }
    let plain = |b: u8| b.is_ascii_graphic() && !b",;\\\"%".contains(&b);
    for v in versions.iter().filter(|v| !v.tag.bytes().all(plain)) {
        let reason = format!(
            "tag {:?} cannot travel in baggage as written (no comma, semicolon, quote, backslash, percent or space)",
            v.tag
        );
        cx.error(line, &route.path("version_baggage"), reason);
    }
    Some(key)
}

/// `targets = [{ header = "x-canary", value = "always", pool = "api-v2" }, ...]`.
fn read_targets(
    cx: &mut Cx<'_>,
    route: &mut Table<'_>,
    versions: &[SplitVersion],
    has_key: bool,
    geo: Option<&Geo>,
) -> Vec<Target> {
    let mut out = Vec::new();
    for mut t in route.tables(cx, "targets") {
        let pool = t.opt::<String>(cx, "pool").unwrap_or_default();
        let version = versions.iter().position(|v| v.pool == pool);
        if version.is_none() {
            let line = t.line_of(cx, "pool");
            cx.error(
                line,
                &t.path("pool"),
                format!("{pool:?} is not one of the split's pools"),
            );
        }
        let when = read_match(cx, &mut t, has_key, geo);
        t.finish(cx);
        if let (Some(when), Some(version)) = (when, version) {
            out.push(Target { when, version });
        }
    }
    out
}

/// Exactly one of `header` + `value`, `cookie` + `value`, `region`, `bucket`.
fn read_match(
    cx: &mut Cx<'_>,
    t: &mut Table<'_>,
    has_key: bool,
    geo: Option<&Geo>,
) -> Option<Match> {
    let line = t.line();
    let header = t.opt::<String>(cx, "header");
    let cookie = t.opt::<String>(cx, "cookie");
    let region = t.opt::<String>(cx, "region");
    let bucket = t.opt::<String>(cx, "bucket");
    let value = t.opt::<String>(cx, "value");
    let given = [
        header.is_some(),
        cookie.is_some(),
        region.is_some(),
        bucket.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        let reason = "needs exactly one of header, cookie, region or bucket";
        cx.error(line, &t.path("header"), reason);
        return None;
    }
    if (header.is_some() || cookie.is_some()) != value.is_some() {
        let reason = "header and cookie rules need a value (and only they take one)";
        cx.error(line, &t.path("value"), reason);
        return None;
    }
    let value = value.unwrap_or_default();
    if let Some(h) = header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            cx.error(
                t.line_of(cx, "header"),
                &t.path("header"),
                format!("{h:?} is not a header name"),
            );
            return None;
        }
        return Some(Match::Header(h.to_ascii_lowercase(), value));
    }
    if let Some(c) = cookie {
        if !super::is_cookie_name(&c) {
            cx.error(
                t.line_of(cx, "cookie"),
                &t.path("cookie"),
                format!("{c:?} is not a cookie name"),
            );
            return None;
        }
        return Some(Match::Cookie(c, value));
    }
    if let Some(r) = region {
        let known = geo.is_some_and(|g| g.regions.iter().any(|x| x.id == r));
        if !known {
            let reason = format!("no region {r:?} in [geo.regions]");
            cx.error(t.line_of(cx, "region"), &t.path("region"), reason);
            return None;
        }
        return Some(Match::Region(r));
    }
    let b = bucket.unwrap_or_default();
    let parsed = parse_buckets(&b);
    let line = t.line_of(cx, "bucket");
    match parsed {
        Some(_) if !has_key => {
            cx.error(line, &t.path("bucket"), "bucket rules need split_key");
            None
        }
        Some((from, to)) => Some(Match::Bucket(from, to)),
        None => {
            let reason = format!("expected \"FROM-TO\" within 0-{}, found {b:?}", BUCKETS - 1);
            cx.error(line, &t.path("bucket"), reason);
            None
        }
    }
}

/// `"0-9"` → (0, 9); `"7"` → (7, 7).
fn parse_buckets(s: &str) -> Option<(u8, u8)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b) = (a.trim().parse::<u8>().ok()?, b.trim().parse::<u8>().ok()?);
    (a <= b && b < BUCKETS).then_some((a, b))
}

fn read_guard(cx: &mut Cx<'_>, route: &mut Table<'_>) -> Option<Guard> {
    let mut t = route.table(cx, "guard")?;
    let d = Guard::default();
    let ratio = |cx: &mut Cx<'_>, t: &mut Table<'_>, key: &'static str, d: f64| {
        let v = t.or(cx, key, d);
        if !(v > 1.0 && v.is_finite()) {
            let line = t.line_of(cx, key);
            cx.error(line, &t.path(key), "must be a number above 1");
        }
        v
    };
    let max_error_ratio = ratio(cx, &mut t, "max_error_ratio", d.max_error_ratio);
    let max_p99_ratio = ratio(cx, &mut t, "max_p99_ratio", d.max_p99_ratio);
    let min_requests = t.or(cx, "min_requests", d.min_requests).max(1);
    let window = positive(cx, &mut t, "window", d.window);
    let error_floor = t.or(cx, "error_floor", d.error_floor);
    if !(error_floor > 0.0 && error_floor <= 1.0) {
        let line = t.line_of(cx, "error_floor");
        cx.error(
            line,
            &t.path("error_floor"),
            "must be above 0 and at most 1",
        );
    }
    let latency_floor = t.or(cx, "latency_floor", d.latency_floor);
    t.finish(cx);
    Some(Guard {
        max_error_ratio,
        max_p99_ratio,
        min_requests,
        window,
        error_floor,
        latency_floor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const POOLS: &str = r#"
[pools.v1]
endpoints = ["http://127.0.0.1:8081"]
[pools.v2]
endpoints = ["http://127.0.0.1:8082"]
"#;

    fn parse(routes: &str) -> Result<Config, crate::config::ConfigErrors> {
        let text = format!("{POOLS}{routes}");
        Config::parse(
            &text,
            "edge.toml",
            Some(std::path::Path::new("/nonexistent")),
        )
    }

    /// (line, key, reason) of every error, lines counted within `routes`.
    fn errors(routes: &str) -> Vec<(usize, String, String)> {
        let offset = POOLS.lines().count();
        parse(routes)
            .expect_err("must be refused")
            .errors
            .into_iter()
            .map(|e| (e.line.saturating_sub(offset), e.key, e.reason))
            .collect()
    }

    #[test]
    fn reads_a_split_with_targets_key_and_guard() {
        let c = parse(
            r#"
[[routes]]
name = "api"
path_prefix = "/api"
split = [{ pool = "v1", weight = 95 }, { pool = "v2", weight = 5, tag = "canary" }]
split_key = "header:X-User"
version_header = "X-Version"
targets = [
  { header = "X-Canary", value = "always", pool = "v2" },
  { cookie = "beta", value = "1", pool = "v2" },
  { bucket = "0-4", pool = "v2" },
]
guard = { window = "2s", min_requests = 50 }
"#,
        )
        .expect("valid");
        let r = &c.routes[0];
        assert_eq!((r.name.as_str(), r.pool.as_str()), ("api", "v1"));
        let s = r.split.as_ref().expect("split");
        assert_eq!(s.versions[0].tag, "v1");
        assert_eq!(s.versions[1].tag, "canary");
        assert_eq!(s.key, Some(StickyKey::Header("x-user".to_owned())));
        assert_eq!(s.header, "x-version");
        assert_eq!(
            s.targets,
            vec![
                Target {
                    when: Match::Header("x-canary".into(), "always".into()),
                    version: 1
                },
                Target {
                    when: Match::Cookie("beta".into(), "1".into()),
                    version: 1
                },
                Target {
                    when: Match::Bucket(0, 4),
                    version: 1
                },
            ]
        );
        let g = s.guard.as_ref().expect("guard");
        assert_eq!(g.window, Duration::from_secs(2));
        assert_eq!(g.min_requests, 50);
        assert_eq!(g.max_error_ratio, 2.0);
        assert_eq!(g.max_p99_ratio, 1.5);
    }

    #[test]
    fn bad_splits_are_refused_with_key_and_line() {
        let got = errors(
            r#"
[[routes]]
path_prefix = "/a"
split = [{ pool = "v1", weight = 0 }, { pool = "v3", weight = 0 }]
targets = [{ region = "mars", pool = "v2" }, { bucket = "0-9", pool = "v1" }]
guard = { max_error_ratio = 0.5, surprise = 1 }
[[routes]]
path_prefix = "/b"
pool = "v1"
split = [{ pool = "v1", weight = 1 }, { pool = "v1", weight = 1 }]
[[routes]]
path_prefix = "/c"
pool = "v1"
split_key = "client_ip"
"#,
        );
        let has = |line: usize, key: &str, reason: &str| {
            assert!(
                got.iter()
                    .any(|(l, k, r)| *l == line && k == key && r.contains(reason)),
                "no {line} {key} {reason:?} in {got:#?}"
            );
        };
        has(4, "routes[0].split[1].pool", "no pool named \"v3\"");
        has(4, "routes[0].split", "add up to 0");
        has(5, "routes[0].targets[0].region", "no region \"mars\"");
        has(
            5,
            "routes[0].targets[0].pool",
            "not one of the split's pools",
        );
        has(5, "routes[0].targets[1].bucket", "need split_key");
        has(6, "routes[0].guard.max_error_ratio", "above 1");
        has(6, "routes[0].guard.surprise", "unknown key");
        has(9, "routes[1].pool", "not both");
        has(10, "routes[1].split[1].pool", "its own pool and tag");
        has(14, "routes[2].split_key", "only used with split");
    }

    #[test]
    fn baggage_needs_a_token_key_and_plain_tags() {
        let split =
            r#"split = [{ pool = "v1", weight = 1 }, { pool = "v2", weight = 1, tag = "v 2" }]"#;
        let ok = r#"[[routes]]
path_prefix = "/"
split = [{ pool = "v1", weight = 1 }, { pool = "v2", weight = 1 }]
version_baggage = "edge-version"
"#;
        let c = parse(ok).expect("valid");
        let s = c.routes[0].split.as_ref().expect("split");
        assert_eq!(s.baggage.as_deref(), Some("edge-version"));
        let got = errors(&format!(
            "[[routes]]\npath_prefix = \"/\"\n{split}\nversion_baggage = \"edge version\"\n[[routes]]\npath_prefix = \"/b\"\n{split}\nversion_baggage = \"v\"\n"
        ));
        let has = |line: usize, key: &str, reason: &str| {
            assert!(
                got.iter()
                    .any(|(l, k, r)| *l == line && k == key && r.contains(reason)),
                "no {line} {key} {reason:?} in {got:#?}"
            );
        };
        has(4, "routes[0].version_baggage", "not a baggage member key");
        has(8, "routes[1].version_baggage", "cannot travel in baggage");
    }

    #[test]
    fn steps_are_rising_percentages_of_one_guarded_canary() {
        let route = |rest: &str| {
            format!("[[routes]]\npath_prefix = \"/\"\nsplit = [{{ pool = \"v1\", weight = 1 }}, {{ pool = \"v2\", weight = 1 }}]\n{rest}\n")
        };
        let c = parse(&route(
            "guard = {}\nsteps = [5, 50, 100]\nstep_after = \"5m\"",
        ))
        .expect("valid");
        let s = c.routes[0].split.as_ref().expect("split");
        assert_eq!(s.steps, Some((vec![5, 50, 100], Duration::from_secs(300))));
        for (rest, key, reason) in [
            (
                "guard = {}\nsteps = [50, 5]\nstep_after = \"1m\"",
                "steps",
                "rising",
            ),
            (
                "guard = {}\nsteps = [5, 101]\nstep_after = \"1m\"",
                "steps",
                "rising",
            ),
            (
                "guard = {}\nsteps = []\nstep_after = \"1m\"",
                "steps",
                "rising",
            ),
            (
                "steps = [5, 100]\nstep_after = \"1m\"",
                "steps",
                "need a guard",
            ),
            ("guard = {}\nsteps = [5, 100]", "step_after", "missing"),
            (
                "guard = {}\nstep_after = \"1m\"",
                "step_after",
                "only used with steps",
            ),
            (
                "guard = {}\nsteps = [5, 100]\nstep_after = \"soon\"",
                "step_after",
                "invalid duration",
            ),
        ] {
            let got = errors(&route(rest));
            let key = format!("routes[0].{key}");
            assert!(
                got.iter().any(|(_, k, r)| *k == key && r.contains(reason)),
                "{rest}: no {key} {reason:?} in {got:#?}"
            );
        }
    }

    #[test]
    fn bucket_ranges() {
        assert_eq!(parse_buckets("0-9"), Some((0, 9)));
        assert_eq!(parse_buckets("7"), Some((7, 7)));
        assert_eq!(parse_buckets("9-0"), None);
        assert_eq!(parse_buckets("0-100"), None);
        assert_eq!(parse_buckets("x"), None);
    }
}

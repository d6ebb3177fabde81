//! Phase `limit`: `[[rate_limits]]` decide, with the route and the client address
//! in hand, whether a request goes on or is answered here (429), before the cache
//! or the origin sees it.
//!
//! The rules (`Rules`) are rebuilt from each config; the counters (`Store`) are
//! built once and outlive reloads, keyed by a fingerprint of the rule's whole
//! config, so an unchanged rule keeps its counters and a changed one starts
//! afresh (the old counters idle out). `global` rules decide in Redis with one
//! atomic script per request; when Redis is not there (down, past its deadline,
//! breaker open) they fall back to this edge's counters or let the request by.

pub mod gcra;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response, StatusCode};
use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest, Sha256};

use super::admit::Admitted;
use super::route::Route;
use super::{Cx, Flow, Proxy};
use crate::body::Body;
use crate::config::{LimitFallback, LimitKey, LimitScope, RateLimit};
use crate::shared::Redis;

/// Keys counted on this edge at most (least recently used go first).
const LOCAL_KEYS: u64 = 100_000;
/// A key unseen this long is forgotten locally (its bucket is full again long
/// before, for any rate whose burst window is shorter).
const LOCAL_IDLE: Duration = Duration::from_secs(600);
/// Key values longer than this (or not plain visible ASCII) are counted by digest.
const MAX_RAW_KEY: usize = 64;

/// GCRA in Redis: `KEYS[1]` holds the TAT in microseconds of Redis' own clock
/// (one clock for every edge); `ARGV` = interval and tolerance in µs. Returns
/// `{1, remaining, reset_us}` or `{0, retry_us, 0}`; the key expires when its
/// bucket is full again.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next = tat + interval
local ahead = next - now
if ahead > tolerance then
  return {0, ahead - tolerance, 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil(ahead / 1000) + 1)
return {1, math.floor((tolerance - ahead) / interval), ahead}
";

/// The counters, kept across reloads.
pub struct Store {
    local: moka::sync::Cache<(u64, Box<str>), Arc<AtomicU64>>,
    redis: Option<Arc<Redis>>,
    script: redis::Script,
    rejected: IntCounterVec,
    epoch: Instant,
}

impl Store {
    pub fn new(redis: Option<Arc<Redis>>, registry: &Registry) -> prometheus::Result<Arc<Self>> {
        let rejected = IntCounterVec::new(
            Opts::new(
                "proxy_rate_limited_total",
                "Requests answered 429 by a rate limit, by rule.",
            ),
            &["rule"],
        )?;
        registry.register(Box::new(rejected.clone()))?;
        Ok(Arc::new(Self {
            local: moka::sync::Cache::builder()
                .max_capacity(LOCAL_KEYS)
                .time_to_idle(LOCAL_IDLE)
                .build(),
            redis,
            script: redis::Script::new(SCRIPT),
            rejected,
            epoch: Instant::now(),
        }))
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// This edge's decision for `key` under `rule`.
    fn local(&self, rule: &Rule, key: &str) -> gcra::Decision {
        let cell = self
            .local
            .get_with((rule.id, key.into()), || Arc::new(AtomicU64::new(0)));
        gcra::decide_on(&cell, self.now(), rule.params)
    }

    /// The shared decision, or `None` when Redis cannot give one in time.
    async fn global(&self, rule: &Rule, key: &str) -> Option<gcra::Decision> {
        let redis = self.redis.as_ref()?;
        let rkey = format!("edge:rl:{}:{:016x}:{key}", rule.name, rule.id);
        let interval = (rule.params.interval / 1_000).max(1);
        let tolerance = (rule.params.tolerance / 1_000).max(interval);
        let script = &self.script;
        let (ok, a, _reset): (i64, i64, i64) = redis
            .call("rate_limit", |mut c| async move {
                script
                    .key(rkey)
                    .arg(interval)
                    .arg(tolerance)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Some(if ok == 1 {
            gcra::Decision::Allowed {
                remaining: n(a),
                reset: n(_reset).saturating_mul(1_000),
            }
        } else {
            gcra::Decision::Denied {
                retry: n(a).saturating_mul(1_000),
            }
        })
    }
}

/// One rule, ready to match.
struct Rule {
    name: Arc<str>,
    /// Fingerprint of the rule's config: the counters' identity.
    id: u64,
    host: Option<String>,
    path_prefix: Option<String>,
    route: Option<String>,
    key: LimitKey,
    params: gcra::Params,
    scope: LimitScope,
    fallback: LimitFallback,
    /// `"name";q=Q;w=W`, the same on every answer.
    policy: HeaderValue,
}

/// The rules of one config, in order.
#[derive(Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    pub fn new(config: &[RateLimit]) -> Self {
        Self(config.iter().map(Rule::new).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any rule counts in Redis.
    pub fn any_global(config: &[RateLimit]) -> bool {
        config.iter().any(|r| r.scope == LimitScope::Global)
    }
}

impl Rule {
    fn new(c: &RateLimit) -> Self {
        let digest = Sha256::digest(format!("{c:?}").as_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        let interval = u64::try_from(c.rate.interval().as_nanos()).unwrap_or(u64::MAX);
        let params = gcra::Params::new(interval, c.burst);
        let window = secs_up(params.tolerance);
        // The name was checked to be visible ASCII without quotes.
        let policy = HeaderValue::from_str(&format!("\"{}\";q={};w={window}", c.name, c.burst))
            .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""));
        Self {
            name: c.name.as_str().into(),
            id: u64::from_be_bytes(id),
            host: c.host.clone(),
            path_prefix: c.path_prefix.clone(),
            route: c.route.clone(),
            key: c.key.clone(),
            params,
            scope: c.scope,
            fallback: c.fallback,
            policy,
        }
    }

    fn matches(&self, admitted: &Admitted, route: &Route<'_>, path: &str) -> bool {
        self.host.as_deref().is_none_or(|h| h == admitted.host.host)
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| super::route::prefix_matches(p, path))
            && self.route.as_deref().is_none_or(|r| r == route.pool.name())
    }

    /// What this request is counted by; `None`: the rule does not count it.
    fn key_of(
        &self,
        admitted: &Admitted,
        route: &Route<'_>,
        req: &Request<Body>,
    ) -> Option<String> {
        let raw: Vec<u8> = match &self.key {
            LimitKey::ClientIp => return Some(admitted.client.to_string()),
            LimitKey::Route => return Some(route.pool.name().to_owned()),
            LimitKey::Header(name) => req.headers().get(name.as_str())?.as_bytes().to_vec(),
            LimitKey::Cookie(name) => super::headers::cookie(req.headers(), name)?.to_vec(),
        };
        Some(match std::str::from_utf8(&raw) {
            Ok(s) if s.len() <= MAX_RAW_KEY && s.bytes().all(|b| b.is_ascii_graphic()) => {
                s.to_owned()
            }
            _ => {
                let d = Sha256::digest(&raw);
                let mut s = String::with_capacity(33);
                s.push('#');
                for b in &d[..16] {
                    s.push_str(&format!("{b:02x}"));
                }
                s
            }
        })
    }
}

/// Whole seconds, rounded up, at least 1.
fn secs_up(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000).max(1)
}

/// Lets a request through unless a matching rule's key is over its rate; every
/// matching rule counts the request (in config order, until one refuses).
pub async fn limit(
    proxy: &Proxy,
    cx: &Cx<'_>,
    admitted: &Admitted,
    route: &Route<'_>,
    req: &Request<Body>,
) -> Flow {
    if proxy.rate_limits.is_empty() {
        return Flow::Continue;
    }
    let Some(store) = &proxy.limit_store else {
        return Flow::Continue;
    };
    let path = req.uri().path();
    for rule in &proxy.rate_limits.0 {
        if !rule.matches(admitted, route, path) {
            continue;
        }
        let Some(key) = rule.key_of(admitted, route, req) else {
            continue;
        };
        let decision = match rule.scope {
            LimitScope::Local => store.local(rule, &key),
            LimitScope::Global => match store.global(rule, &key).await {
                Some(d) => d,
                None => match rule.fallback {
                    LimitFallback::Local => store.local(rule, &key),
                    LimitFallback::Allow => continue,
                },
            },
        };
        if let gcra::Decision::Denied { retry } = decision {
            store.rejected.with_label_values(&[&*rule.name]).inc();
            return Flow::Answer(Box::new(too_many(rule, retry, cx.grpc)));
        }
    }
    Flow::Continue
}

/// The 429: when to come back, and the policy that refused (the IETF
/// RateLimit header fields draft). `respond` adds the request id. A gRPC
/// client gets it as RESOURCE_EXHAUSTED (trailers-only), with the same fields.
fn too_many(rule: &Rule, retry: u64, grpc: bool) -> Response<Body> {
    let secs = secs_up(retry);
    let mut resp = if grpc {
        let code = crate::error::GRPC_RESOURCE_EXHAUSTED;
        crate::error::grpc_trailers_only(code, "rate limit exceeded (edge)")
    } else {
        let mut resp = Response::new(Body::full(bytes::Bytes::from_static(
            b"rate limit exceeded\n",
        )));
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    };
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    h.insert("ratelimit-policy", rule.policy.clone());
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\";r=0;t={secs}", rule.name)) {
        h.insert("ratelimit", v);
    }
    resp
}

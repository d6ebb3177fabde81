//! The effective config as JSON, for the admin API's `GET /config`: every
//! setting after defaults, durations written as the file writes them ("10s"),
//! and no secret in it.
//!
//! What counts as secret, from the structs below: the admin token (shown only
//! as set or not), the userinfo of every Redis URL (`[redis] url`, `cluster`,
//! sentinel `nodes`, the older `cache.redis`) and the sentinel `password`.
//! Files that hold secrets (`admin_token_file`, sticky `secret_file`, TLS keys,
//! `tls.ticket_keys`, the ACME account under `storage`) appear as paths, never
//! as contents.
//!
//! The structs are taken apart field by field (no `..`): a field added to one
//! of them does not compile here until someone decides how it is shown.

use std::time::Duration;

use serde_json::{json, Value};

use super::{
    Acme, Cache, Client, Config, Geo, Pool, RateLimit, Redis, RedisTarget, Route, Split, Sticky,
};

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// The whole config, secrets redacted.
pub fn to_json(config: &Config) -> Value {
    let Config {
        listen,
        http_listen,
        http_mode,
        admin,
        admin_token,
        trusted_proxies,
        proxy_protocol,
        workers,
        state_dir,
        alt_svc,
        tls,
        client,
        routes,
        pools,
        geo,
        cache,
        redis,
        quic,
        log,
        drain,
        limits,
        rate_limits,
        acme,
        upgrade,
        forecast,
    } = config;
    json!({
        "listen": strings(listen),
        "http_listen": strings(http_listen),
        "http_mode": snake(http_mode),
        "admin": admin.map(|a| a.to_string()),
        "admin_token": admin_token.as_ref().map(|_| REDACTED),
        "trusted_proxies": strings(trusted_proxies),
        "proxy_protocol": {
            "trusted": strings(&proxy_protocol.trusted),
            "required": proxy_protocol.required,
            "max_header_bytes": proxy_protocol.max_header_bytes,
        },
        "workers": workers.map(|w| w.get()),
        "state_dir": path(state_dir),
        "alt_svc": { "enabled": alt_svc.enabled, "max_age": dur(alt_svc.max_age) },
        "tls": tls_json(tls),
        "client": client_json(client),
        "routes": routes.iter().map(route_json).collect::<Vec<_>>(),
        "pools": pools.iter().map(|p| pool_json(p, geo.as_ref())).collect::<Vec<_>>(),
        "geo": geo.as_ref().map(geo_json),
        "cache": cache_json(cache),
        "redis": redis.as_ref().map(redis_json),
        "quic": {
            "retry": snake(&quic.retry),
            "retry_threshold": quic.retry_threshold,
            "max_connections": quic.max_connections,
            "max_connections_per_source": quic.max_connections_per_source,
        },
        "log": {
            "access": log.access.as_ref().map(snake),
            "access_file": log.access_file.as_deref().map(path),
        },
        "drain": { "delay": dur(drain.delay), "grace": dur(drain.grace) },
        "limits": { "memory_high": limits.memory_high },
        "rate_limits": rate_limits.iter().map(rate_limit_json).collect::<Vec<_>>(),
        "acme": acme.as_ref().map(acme_json),
        "upgrade": {
            "protocols": upgrade.protocols,
            "idle_timeout": dur(upgrade.idle_timeout),
        },
        "forecast": forecast.as_ref().map(forecast_json),
    })
}

fn forecast_json(f: &super::Forecast) -> Value {
    let super::Forecast {
        interval,
        history,
        horizons,
        refit_every,
        endpoint_rps,
        prewarm,
        prewarm_rise,
        connection_rps,
        prewarm_max,
    } = f;
    json!({
        "interval": dur(*interval),
        "history": history,
        "horizons": horizons,
        "refit_every": refit_every,
        "endpoint_rps": endpoint_rps,
        "prewarm": prewarm,
        "prewarm_rise": prewarm_rise,
        "connection_rps": connection_rps,
        "prewarm_max": prewarm_max,
    })
}

/// `redis://user:password@host` → `redis://<redacted>@host`: the userinfo may
/// hold a password (or be one), so all of it goes.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{REDACTED}@{host}{path}"),
                None => url.to_owned(),
            }
        }
        // Not a URL the config accepts; it could be anything, so none of it.
        None if url.is_empty() => String::new(),
        None => REDACTED.to_owned(),
    }
}

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A path as text (never a serialisation error, whatever its bytes).
fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn strings<T: ToString>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// A unit variant as the file writes it: `LeastRequest` → `least_request`.
fn snake<T: std::fmt::Debug>(v: &T) -> String {
    let mut out = String::new();
    for (i, c) in format!("{v:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn client_json(c: &Client) -> Value {
    json!({
        "header_read_timeout": dur(c.header_read_timeout),
        "idle_timeout": dur(c.idle_timeout),
        "max_header_bytes": c.max_header_bytes,
        "max_headers": c.max_headers,
        "max_concurrent_streams": c.max_concurrent_streams,
        "max_connections": c.max_connections,
        "max_body_bytes": c.max_body_bytes,
        "body_idle_timeout": dur(c.body_idle_timeout),
        "min_body_rate": c.min_body_rate,
        "body_rate_grace": dur(c.body_rate_grace),
        "normalize_path": c.normalize_path,
        "path_encoded_separators": snake(&c.path_encoded_separators),
        "max_connections_per_ip": c.max_connections_per_ip,
        "write_idle_timeout": dur(c.write_idle_timeout),
        "goaway_grace": dur(c.goaway_grace),
    })
}

fn tls_json(t: &super::Tls) -> Value {
    let super::Tls {
        handshake_timeout,
        certificates,
        client_auth,
        early_data,
        ticket_keys,
        ticket_rotation,
        ticket_keys_line: _,
    } = t;
    // The key file's path and how many keys it held, never a key.
    let ticket_key_count = match ticket_keys {
        super::TicketKeys::File { keys, .. } => Some(keys.len()),
        super::TicketKeys::Local | super::TicketKeys::Redis => None,
    };
    json!({
        "handshake_timeout": dur(*handshake_timeout),
        "early_data": early_data,
        "certificates": certificates.iter()
            .map(|c| json!({ "cert": path(&c.cert), "key": path(&c.key) }))
            .collect::<Vec<_>>(),
        "client_auth": client_auth.as_ref().map(|a| json!({
            "ca": path(&a.ca),
            "mode": snake(&a.mode),
            "header": a.header.as_str(),
        })),
        "ticket_keys": ticket_keys.describe(),
        "ticket_key_count": ticket_key_count,
        "ticket_rotation": match ticket_keys {
            super::TicketKeys::Local => None,
            _ => Some(dur(*ticket_rotation)),
        },
    })
}

fn route_json(r: &Route) -> Value {
    let Route {
        name,
        host,
        path_prefix,
        pool,
        cache,
        cache_set_cookie,
        max_body_bytes,
        cache_statuses,
        require_client_cert,
        split,
        compress,
        early_hints,
    } = r;
    let statuses: Vec<u16> = (200..=599)
        .filter(|s| cache_statuses.contains(*s))
        .collect();
    json!({
        "name": name,
        "host": host,
        "path_prefix": path_prefix,
        "pool": pool,
        "cache": cache,
        "cache_set_cookie": cache_set_cookie,
        "max_body_bytes": max_body_bytes,
        "cache_statuses": statuses,
        "require_client_cert": require_client_cert,
        "split": split.as_ref().map(split_json),
        "compress": compress.as_ref().map_or(Vec::new(), |c| {
            c.encodings.iter().map(|e| e.token()).collect::<Vec<_>>()
        }),
        "compress_min_bytes": compress.as_ref().map(|c| c.min_bytes),
        "compress_types": compress.as_ref().map(|c| &c.types),
        "early_hints": early_hints.as_str(),
    })
}

fn split_json(s: &Split) -> Value {
    use super::Match;
    let targets: Vec<Value> = s
        .targets
        .iter()
        .map(|t| {
            let when = match &t.when {
                Match::Header(name, value) => json!({ "header": name, "value": value }),
                Match::Cookie(name, value) => json!({ "cookie": name, "value": value }),
                Match::Region(region) => json!({ "region": region }),
                Match::Bucket(from, to) => json!({ "buckets": [from, to] }),
            };
            let tag = s.versions.get(t.version).map(|v| v.tag.as_str());
            json!({ "when": when, "version": tag })
        })
        .collect();
    json!({
        "versions": s.versions.iter()
            .map(|v| json!({ "tag": v.tag, "pool": v.pool, "weight": v.weight }))
            .collect::<Vec<_>>(),
        "key": s.key.as_ref().map(sticky_key),
        "targets": targets,
        "header": s.header,
        "baggage": s.baggage,
        "steps": s.steps.as_ref().map(|(steps, after)| json!({ "steps": steps, "step_after": dur(*after) })),
        "guard": s.guard.as_ref().map(|g| json!({
            "max_error_ratio": g.max_error_ratio,
            "max_p99_ratio": g.max_p99_ratio,
            "min_requests": g.min_requests,
            "window": dur(g.window),
            "error_floor": g.error_floor,
            "latency_floor": dur(g.latency_floor),
        })),
    })
}

fn sticky_key(k: &super::StickyKey) -> String {
    match k {
        super::StickyKey::Cookie => "cookie".to_owned(),
        super::StickyKey::ClientIp => "client_ip".to_owned(),
        super::StickyKey::Header(name) => format!("header:{name}"),
    }
}

fn pool_json(p: &Pool, geo: Option<&Geo>) -> Value {
    let Pool {
        settings: s,
        ca,
        dns,
        regional_dns,
        sticky,
    } = p;
    let region = |id: u16| -> Value {
        geo.and_then(|g| g.regions.get(usize::from(id)))
            .map_or_else(|| json!(id), |r| json!(r.id))
    };
    let dns_json = |d: &upstream::discovery::DnsConfig| {
        json!({
            "name": d.name,
            "kind": match d.kind {
                upstream::discovery::RecordKind::Address => "a",
                upstream::discovery::RecordKind::Srv => "srv",
            },
            "port": d.port,
            "tls": d.tls,
            "nameservers": strings(&d.nameservers),
            "ttl_floor": dur(d.ttl_floor),
            "ttl_ceiling": dur(d.ttl_ceiling),
            "timeout": dur(d.timeout),
        })
    };
    json!({
        "name": s.name,
        "endpoints": strings(&s.endpoints),
        "weights": s.weights,
        "regions": s.regions.iter().map(|r| region(*r)).collect::<Vec<_>>(),
        "protocol": snake(&s.protocol),
        "connect_timeout": dur(s.connect_timeout),
        "response_timeout": dur(s.response_timeout),
        "request_timeout": s.request_timeout.map(dur),
        "idle_timeout": dur(s.idle_timeout),
        "ca": ca.as_deref().map(path),
        "policy": match s.policy {
            upstream::Policy::LeastRequest => "least_request",
            upstream::Policy::RoundRobin => "round_robin",
            upstream::Policy::WeightedRoundRobin => "weighted_round_robin",
            upstream::Policy::Maglev => "consistent_hash",
        },
        "hash_keys": s.hash_keys,
        "max_retries": s.max_retries,
        "retry_budget": s.retry_budget,
        "retry_min_per_sec": s.retry_min_per_sec,
        "retry_statuses": s.retry_statuses.iter().map(|c| c.as_u16()).collect::<Vec<_>>(),
        "breaker": {
            "failures": s.breaker.failures,
            "open_base": dur(s.breaker.open_base),
            "open_max": dur(s.breaker.open_max),
        },
        "max_requests": s.max_requests,
        "health_check": s.health_check.as_ref().map(|h| json!({
            "path": h.path,
            "interval": dur(h.interval),
            "timeout": dur(h.timeout),
            "healthy": h.healthy,
            "unhealthy": h.unhealthy,
        })),
        "max_pending_connects": s.max_pending_connects,
        "min_available_share": s.min_available_share,
        "spillover_threshold": s.overprovisioning.threshold(),
        "max_connections_per_endpoint": s.max_connections_per_endpoint,
        "connection_queue": s.connection_queue,
        "connection_queue_timeout": dur(s.connection_queue_timeout),
        "hedge": s.hedge.as_ref().map(|h| json!({
            "after": match h.after {
                upstream::HedgeAfter::Fixed(d) => dur(d),
                upstream::HedgeAfter::Percentile(p) => format!("p{p}"),
            },
            "max": h.max,
        })),
        "dns": dns.as_ref().map(dns_json),
        "regional_dns": regional_dns.iter()
            .map(|(r, d)| json!({ "region": region(*r), "dns": dns_json(d) }))
            .collect::<Vec<_>>(),
        "sticky": sticky.as_ref().map(sticky_json),
    })
}

fn sticky_json(s: &Sticky) -> Value {
    let Sticky {
        key,
        cookie,
        ttl,
        shared,
        secret_file,
        shared_line: _,
    } = s;
    json!({
        "key": sticky_key(key),
        "cookie": cookie,
        "ttl": dur(*ttl),
        "shared": shared,
        // The path only: the signing key itself is never read into the config.
        "secret_file": secret_file.as_deref().map(path),
    })
}

fn geo_json(g: &Geo) -> Value {
    json!({
        "region": g.region,
        "prefer": snake(&g.prefer),
        "spillover_threshold": g.spillover_threshold,
        "debug_header": g.debug_header,
        "mmdb": g.mmdb.is_some(),
        "measure_min_samples": g.measure.min_samples,
        "measure_stale_after": dur(g.measure.stale_after),
        "measure_weight": g.measure.weight,
        "regions": g.regions.iter().map(|r| json!({
            "id": r.id,
            "cidrs": strings(&r.cidrs),
            "countries": r.countries,
            "continents": r.continents,
            "latency": r.latency.iter()
                .map(|(to, d)| (to.clone(), json!(dur(*d))))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    })
}

fn cache_json(c: &Cache) -> Value {
    let Cache {
        enabled,
        l1_max_bytes,
        l1_max_entry_bytes,
        l2,
        redis,
        redis_timeout,
        redis_breaker_failures,
        redis_breaker_cooldown,
        l2_max_entry_bytes,
        coalesce_timeout,
        max_ttl,
        keep_stale,
    } = c;
    json!({
        "enabled": enabled,
        "l1_max_bytes": l1_max_bytes,
        "l1_max_entry_bytes": l1_max_entry_bytes,
        "l2": l2,
        "redis": redis.as_deref().map(redact_url),
        "redis_timeout": dur(*redis_timeout),
        "redis_breaker_failures": redis_breaker_failures,
        "redis_breaker_cooldown": dur(*redis_breaker_cooldown),
        "l2_max_entry_bytes": l2_max_entry_bytes,
        "coalesce_timeout": dur(*coalesce_timeout),
        "max_ttl": dur(*max_ttl),
        "keep_stale": dur(*keep_stale),
    })
}

fn redis_json(r: &Redis) -> Value {
    let Redis {
        target,
        tls_ca,
        timeout,
        breaker_failures,
        breaker_cooldown,
    } = r;
    let urls = |list: &[String]| list.iter().map(|u| redact_url(u)).collect::<Vec<_>>();
    let target = match target {
        RedisTarget::Single(url) => json!({ "url": redact_url(url) }),
        RedisTarget::Cluster(seeds) => json!({ "cluster": urls(seeds) }),
        RedisTarget::Sentinel {
            master,
            sentinels,
            username,
            password,
            tls,
        } => json!({ "sentinel": {
            "master": master,
            "nodes": urls(sentinels),
            "username": username,
            "password": password.as_ref().map(|_| REDACTED),
            "tls": tls,
        }}),
    };
    let mut out = json!({
        "tls_ca": tls_ca.as_deref().map(path),
        "timeout": dur(*timeout),
        "breaker_failures": breaker_failures,
        "breaker_cooldown": dur(*breaker_cooldown),
    });
    if let (Some(out), Value::Object(target)) = (out.as_object_mut(), target) {
        out.extend(target);
    }
    out
}

fn rate_limit_json(r: &RateLimit) -> Value {
    use super::LimitKey;
    let key = match &r.key {
        LimitKey::ClientIp => "client_ip".to_owned(),
        LimitKey::Route => "route".to_owned(),
        LimitKey::Header(name) => format!("header:{name}"),
        LimitKey::Cookie(name) => format!("cookie:{name}"),
    };
    json!({
        "name": r.name,
        "host": r.host,
        "path_prefix": r.path_prefix,
        "route": r.route,
        "key": key,
        "rate": rate(r.rate),
        "burst": r.burst,
        "scope": snake(&r.scope),
        "fallback": snake(&r.fallback),
    })
}

/// As the file writes it: `100/s`, `600/m`, `1000/h`.
fn rate(r: super::Rate) -> String {
    let unit = match r.per.as_secs() {
        1 => "s",
        60 => "m",
        3600 => "h",
        _ => return format!("{}/{}", r.count, dur(r.per)),
    };
    format!("{}/{unit}", r.count)
}

fn acme_json(a: &Acme) -> Value {
    let Acme {
        directory,
        contact,
        domains,
        challenge,
        storage,
        ca,
        renew_before,
    } = a;
    let challenge = match challenge {
        super::AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        super::AcmeChallenge::Http01 => "http-01",
    };
    json!({
        "directory": redact_url(directory),
        "contact": contact,
        "domains": domains,
        "challenge": challenge,
        // The account key and certificates live here; never read into the config.
        "storage": path(storage),
        "ca": ca.as_deref().map(path),
        "renew_before": dur(*renew_before),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted_from_urls() {
        assert_eq!(
            redact_url("redis://edge:s3cret@10.0.0.1:6379/2"),
            "redis://<redacted>@10.0.0.1:6379/2"
        );
        assert_eq!(
            redact_url("rediss://:s3cret@cache.internal"),
            "rediss://<redacted>@cache.internal"
        );
        assert_eq!(redact_url("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379");
        assert_eq!(redact_url("s3cret"), REDACTED);
    }

    #[test]
    fn no_secret_reaches_the_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "tok-0123456789abcdef-secret\n").expect("write");
        let text = format!(
            r#"
admin_token_file = {token:?}
[pools.api]
endpoints = ["http://127.0.0.1:9000"]
[redis.sentinel]
master = "m"
nodes = ["redis://:nodepass@127.0.0.1:26379"]
username = "edge"
password = "masterpass"
"#
        );
        let config = Config::parse(&text, "test", Some(dir.path())).expect("parses");
        let body = to_json(&config).to_string();
        for secret in ["tok-0123456789abcdef-secret", "nodepass", "masterpass"] {
            assert!(!body.contains(secret), "{secret} in {body}");
        }
        let v = to_json(&config);
        assert_eq!(v["admin_token"], REDACTED);
        assert_eq!(v["redis"]["sentinel"]["password"], REDACTED);
        assert_eq!(
            v["redis"]["sentinel"]["nodes"][0],
            "redis://<redacted>@127.0.0.1:26379"
        );
        assert_eq!(v["pools"][0]["endpoints"][0], "http://127.0.0.1:9000");
        assert_eq!(v["pools"][0]["policy"], "least_request");
        assert_eq!(v["drain"]["delay"], "10s");
    }
}

use super::*;
use upstream::Protocol;

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, "edge.toml", Some(Path::new("/nonexistent-base")))
}

fn errors(text: &str) -> Vec<(usize, String)> {
    parse(text)
        .expect_err("config must be refused")
        .errors
        .into_iter()
        .map(|e| (e.line, e.key))
        .collect()
}

#[test]
fn one_pool_without_routes_gets_a_catch_all_route() {
    let c = parse("[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n").expect("valid");
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].pool, "web");
    assert_eq!(c.listen, [DEFAULT_LISTEN.parse().expect("addr")]);
    assert_eq!(c.pools[0].settings.idle_timeout, Duration::from_secs(90));
    assert_eq!(c.pools[0].settings.protocol, Protocol::H2);
}

#[test]
fn reads_every_section() {
    let c = parse(
        r#"
listen = "127.0.0.1:4433"
http_listen = "127.0.0.1:8080"
admin = "127.0.0.1:9000"
trusted_proxies = ["10.0.0.0/8", "192.0.2.1"]
workers = 2

[alt_svc]
enabled = false
max_age = "1h"

[client]
header_read_timeout = "5s"
idle_timeout = "2m"
max_headers = 50

[[routes]]
host = "API.Example:443"
path_prefix = "/v1"
pool = "api"

[[routes]]
pool = "web"

[pools.api]
endpoints = ["https://api.internal:8443"]
protocol = "h1"
connect_timeout = "250ms"

[pools.web]
endpoints = ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
"#,
    )
    .expect("valid");
    assert_eq!(
        c.http_listen,
        ["127.0.0.1:8080"
            .parse::<std::net::SocketAddr>()
            .expect("addr")]
    );
    assert_eq!(c.trusted_proxies.len(), 2);
    assert!(!c.alt_svc.enabled);
    assert_eq!(c.alt_svc.max_age, Duration::from_secs(3600));
    assert_eq!(c.client.idle_timeout, Duration::from_secs(120));
    assert_eq!(c.client.max_headers, 50);
    assert_eq!(c.routes[0].host.as_deref(), Some("api.example"));
    assert_eq!(c.routes[1].path_prefix, "/");
    let api = c
        .pools
        .iter()
        .find(|p| p.name() == "api")
        .expect("api pool");
    assert_eq!(api.settings.protocol, Protocol::H1);
    assert_eq!(api.settings.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.workers.map(NonZeroUsize::get), Some(2));
}

#[test]
fn reports_every_error_with_key_and_line() {
    let text = r#"listen = "127.0.0.1:4433"
colour = "blue"

[pools.web]
endpoints = ["http://127.0.0.1:8081"]
connect_timeout = "soon"

[[tls.certificates]]
cert = "missing.pem"
key = "missing.key"
"#;
    let found = errors(text);
    assert!(found.contains(&(2, "colour".to_owned())), "{found:?}");
    assert!(
        found.contains(&(6, "pools.web.connect_timeout".to_owned())),
        "{found:?}"
    );
    assert!(
        found.contains(&(9, "tls.certificates[0].cert".to_owned())),
        "{found:?}"
    );
    assert!(
        found.contains(&(10, "tls.certificates[0].key".to_owned())),
        "{found:?}"
    );
    let shown = parse(text).expect_err("refused").to_string();
    assert!(
        shown.contains("edge.toml:2: colour: unknown key"),
        "{shown}"
    );
    assert!(shown.contains("invalid duration \"soon\""), "{shown}");
}

#[test]
fn refuses_bad_values_and_dangling_names() {
    let found = errors(
        r#"listen = "not an address"
trusted_proxies = ["10.0.0.0/33"]
[client]
max_headers = 2
[[routes]]
pool = "nowhere"
path_prefix = "api"
[pools.web]
endpoints = ["ftp://x"]
protocol = "h9"
"#,
    );
    let keys: Vec<&str> = found.iter().map(|(_, k)| k.as_str()).collect();
    for key in [
        "listen",
        "trusted_proxies",
        "client.max_headers",
        "routes[0].pool",
        "routes[0].path_prefix",
        "pools.web.endpoints",
        "pools.web.protocol",
    ] {
        assert!(keys.contains(&key), "{key} not in {keys:?}");
    }
}

#[test]
fn several_pools_need_routes_and_no_pool_is_an_error() {
    let found =
        errors("[pools.a]\nendpoints=[\"http://a\"]\n[pools.b]\nendpoints=[\"http://b\"]\n");
    assert_eq!(found[0].1, "routes");
    let found = errors("");
    assert_eq!(found[0].1, "pools");
}

#[test]
fn unknown_keys_in_nested_tables_are_named_with_their_path() {
    let found =
        errors("[pools.web]\nendpoints=[\"http://a\"]\ntimeout = \"1s\"\n[alt_svc]\nmaxage = 5\n");
    assert!(
        found.contains(&(3, "pools.web.timeout".to_owned())),
        "{found:?}"
    );
    assert!(
        found.contains(&(5, "alt_svc.maxage".to_owned())),
        "{found:?}"
    );
}

#[test]
fn syntax_errors_name_their_line() {
    let e = parse("listen = \"a\"\n[pools\n").expect_err("syntax");
    assert_eq!(e.errors[0].line, 2);
}

#[test]
fn host_normalisation_drops_case_and_port() {
    assert_eq!(normalize_host("Example.COM:8443"), "example.com");
    assert_eq!(normalize_host("[::1]:443"), "::1");
    assert_eq!(normalize_host("example.com"), "example.com");
}

#[test]
fn reads_pool_resilience_settings_and_refuses_bad_ones() {
    let c = parse(
        r#"
[pools.web]
endpoints = ["http://127.0.0.1:8081"]
balancer = "round_robin"
max_retries = 1
retry_budget = 0.5
retry_min_per_sec = 10
retry_statuses = [502, 503]
breaker_failures = 3
breaker_open = "2s"
breaker_open_max = "20s"
max_requests = 64
"#,
    )
    .expect("valid");
    let p = &c.pools[0].settings;
    assert_eq!(p.policy, upstream::Policy::RoundRobin);
    assert_eq!(
        (p.max_retries, p.retry_budget, p.retry_min_per_sec),
        (1, 0.5, 10)
    );
    assert_eq!(
        p.retry_statuses,
        [
            http::StatusCode::BAD_GATEWAY,
            http::StatusCode::SERVICE_UNAVAILABLE
        ]
    );
    assert_eq!(p.breaker.failures, 3);
    assert_eq!(p.breaker.open_base, Duration::from_secs(2));
    assert_eq!(p.breaker.open_max, Duration::from_secs(20));
    assert_eq!(p.max_requests, 64);

    let found = errors(
        r#"[pools.web]
endpoints = ["http://127.0.0.1:8081"]
balancer = "fastest"
retry_budget = 1.5
retry_statuses = [404]
breaker_open = "10s"
breaker_open_max = "1s"
"#,
    );
    for (line, key) in [
        (3, "pools.web.balancer"),
        (4, "pools.web.retry_budget"),
        (5, "pools.web.retry_statuses"),
        (7, "pools.web.breaker_open_max"),
    ] {
        assert!(
            found.contains(&(line, key.to_owned())),
            "{key} in {found:?}"
        );
    }
}

#[test]
fn reads_health_checks_and_dns_and_refuses_bad_ones() {
    let c = parse(
        r#"
[pools.web]
dns = { name = "_http._tcp.web.internal", kind = "srv", nameservers = ["127.0.0.1:5353"], ttl_floor = "2s" }
health_check = { path = "/ready", interval = "1s", unhealthy = 5 }
"#,
    )
    .expect("valid");
    let p = &c.pools[0];
    let check = p.settings.health_check.as_ref().expect("health check");
    assert_eq!(
        (check.path.as_str(), check.interval, check.unhealthy),
        ("/ready", Duration::from_secs(1), 5)
    );
    let dns = p.dns.as_ref().expect("dns");
    assert_eq!(dns.kind, upstream::discovery::RecordKind::Srv);
    assert_eq!(dns.ttl_floor, Duration::from_secs(2));
    assert_eq!(
        dns.nameservers,
        ["127.0.0.1:5353"
            .parse::<std::net::SocketAddr>()
            .expect("addr")]
    );

    let found = errors(
        r#"[pools.a]
endpoints = ["http://127.0.0.1:1"]
dns = { name = "a.internal", port = 80 }
health_check = { path = "ready" }
[pools.b]
dns = { kind = "a" }
[[routes]]
pool = "a"
"#,
    );
    for (line, key) in [
        (3, "pools.a.dns"),
        (4, "pools.a.health_check.path"),
        (6, "pools.b.dns.name"),
        (6, "pools.b.dns.port"),
    ] {
        assert!(
            found.contains(&(line, key.to_owned())),
            "{key} in {found:?}"
        );
    }
}

#[test]
fn endpoints_may_carry_weights() {
    let c = parse(
        r#"[pools.web]
endpoints = ["http://127.0.0.1:8081", { url = "http://127.0.0.1:8082", weight = 3 }]
balancer = "weighted_round_robin"
"#,
    )
    .expect("valid");
    let p = &c.pools[0].settings;
    assert_eq!(p.endpoints.len(), 2);
    assert_eq!(p.weights, [1, 3]);
    let found = errors("[pools.web]\nendpoints = [{ url = \"http://a\", wieght = 3 }, 7]\n");
    assert!(!found.is_empty(), "refused");
    assert!(
        found
            .iter()
            .all(|(line, key)| *line == 2 && key == "pools.web.endpoints"),
        "{found:?}"
    );
    let shown = parse("[pools.web]\nendpoints = [{ url = \"http://a\", wieght = 3 }]\n")
        .expect_err("unknown key")
        .to_string();
    assert!(shown.contains("unknown key \"wieght\""), "{shown}");
}

#[test]
fn a_file_may_leave_pools_to_the_upstream_flags() {
    let text = "listen = \"127.0.0.1:0\"\n[client]\nheader_read_timeout = \"300s\"\n";
    assert!(
        Config::parse(text, "edge.toml", None).is_err(),
        "alone, a pool is needed"
    );
    let c = Config::parse_opts(text, "edge.toml", None, true).expect("flags supply the pools");
    assert!(c.pools.is_empty());
    assert_eq!(c.client.header_read_timeout, Duration::from_secs(300));
}

const GEO: &str = r#"
[geo]
region = "eu"
spillover_threshold = 0.8
debug_header = true

[geo.regions.eu]
cidrs = ["127.1.0.0/16"]
latency = { us = "80ms", ap = "150ms" }

[geo.regions.us]
cidrs = ["127.2.0.0/16", "::ffff:127.2.0.0/112"]
countries = ["us", "CA"]

[geo.regions.ap]
continents = ["as"]
"#;

#[test]
fn reads_geo_and_regional_pools() {
    let text = format!(
        "{GEO}
[pools.api.regions.eu]
endpoints = [\"http://127.1.0.10:8080\", \"http://127.1.0.11:8080\"]
[pools.api.regions.us]
endpoints = [\"http://127.2.0.10:8080\"]
[pools.api.regions.ap]
dns = {{ name = \"ap.api.internal\", port = 8080 }}

[pools.web]
dns = {{ name = \"{{region}}.web.internal\", port = 80 }}
[[routes]]
pool = \"api\"
[[routes]]
host = \"web.example\"
pool = \"web\"
"
    );
    let c = parse(&text).expect("valid");
    let geo = c.geo.as_ref().expect("geo");
    assert_eq!(geo.region, "eu");
    assert_eq!(geo.prefer, Prefer::Client);
    assert!(geo.debug_header);
    assert_eq!(
        geo.regions
            .iter()
            .map(|r| r.id.as_str())
            .collect::<Vec<_>>(),
        ["eu", "us", "ap"]
    );
    assert_eq!(geo.regions[1].countries, ["US", "CA"]);
    assert_eq!(geo.regions[2].continents, ["AS"]);
    assert_eq!(
        geo.regions[0].latency,
        [
            ("us".to_owned(), Duration::from_millis(80)),
            ("ap".to_owned(), Duration::from_millis(150))
        ]
    );
    let api = &c.pools[0].settings;
    assert_eq!(api.endpoints.len(), 3);
    assert_eq!(api.regions, [0, 0, 1]);
    assert!((api.overprovisioning.threshold() - 0.8).abs() < 1e-9);
    assert_eq!(c.pools[0].regional_dns.len(), 1);
    assert_eq!(c.pools[0].regional_dns[0].0, 2);
    let web: Vec<(u16, &str)> = c.pools[1]
        .regional_dns
        .iter()
        .map(|(r, d)| (*r, d.name.as_str()))
        .collect();
    assert_eq!(
        web,
        [
            (0, "eu.web.internal"),
            (1, "us.web.internal"),
            (2, "ap.web.internal")
        ]
    );
    assert!(c.pools[1].dns.is_none());
}

#[test]
fn geo_mistakes_name_key_and_line() {
    let text = r#"[geo]
region = "mars"
spillover_threshold = 1.5
prefer = "nearest"
mmdb = "missing.mmdb"

[geo.regions.eu]
cidrs = ["127.1.0.0/33"]
latency = { us = "80ms" }

[pools.api.regions.eu]
endpoints = ["http://127.1.0.10:8080"]
[pools.api.regions.moon]
endpoints = ["http://127.3.0.10:8080"]

[pools.flat]
endpoints = ["http://127.0.0.1:1"]
[pools.flat.regions.eu]
endpoints = ["http://127.1.0.1:1"]

[[routes]]
pool = "api"
"#;
    let got = errors(text);
    for want in [
        (2, "geo.region"),
        (3, "geo.spillover_threshold"),
        (4, "geo.prefer"),
        (5, "geo.mmdb"),
        (8, "geo.regions.eu.cidrs"),
        (9, "geo.regions.eu.latency.us"),
        (13, "pools.api.regions.moon"),
        (18, "pools.flat.regions"),
    ] {
        assert!(
            got.contains(&(want.0, want.1.to_owned())),
            "missing {want:?} in {got:?}"
        );
    }
}

#[test]
fn regions_without_geo_are_refused() {
    let got = errors(
        "[pools.api.regions.eu]\nendpoints = [\"http://127.1.0.10:8080\"]\n\
         [pools.web]\ndns = { name = \"{region}.web\", port = 80 }\n[[routes]]\npool = \"api\"\n",
    );
    assert!(
        got.contains(&(1, "pools.api.regions".to_owned())),
        "{got:?}"
    );
    assert!(
        got.contains(&(4, "pools.web.dns.name".to_owned())),
        "{got:?}"
    );
}

#[test]
fn a_corrupt_mmdb_is_a_config_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("corrupt.mmdb");
    std::fs::write(&path, b"this is not a MaxMind database").expect("write");
    let text = format!(
        "[geo]\nregion = \"eu\"\nmmdb = {:?}\n[geo.regions.eu]\ncountries = [\"DE\"]\n\
         [pools.a]\nendpoints = [\"http://127.0.0.1:1\"]\n",
        path.display().to_string()
    );
    let e = parse(&text).expect_err("corrupt database");
    let e = &e.errors[0];
    assert_eq!((e.line, e.key.as_str()), (3, "geo.mmdb"));
    assert!(
        e.reason.contains("corrupt.mmdb") && e.reason.contains("not a valid MaxMind database"),
        "{}",
        e.reason
    );
}

#[test]
fn cache_is_off_by_default_and_reads_every_key() {
    let c = parse("[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n").expect("valid");
    assert!(!c.cache.enabled);
    assert!(c.routes[0].cache);
    let c = parse(
        r#"
[cache]
enabled = true
l1_max_bytes = 1000000
l1_max_entry_bytes = 1000
redis = "redis://127.0.0.1:6379/2"
redis_timeout = "20ms"
redis_breaker_failures = 3
redis_breaker_cooldown = "1s"
l2_max_entry_bytes = 500
coalesce_timeout = "2s"
max_ttl = "1h"
keep_stale = "10m"

[[routes]]
path_prefix = "/private"
pool = "web"
cache = false

[[routes]]
pool = "web"
cache_set_cookie = true

[pools.web]
endpoints = ["http://127.0.0.1:8080"]
"#,
    )
    .expect("valid");
    let k = &c.cache;
    assert!(k.enabled);
    assert_eq!(k.l1_max_bytes, 1_000_000);
    assert_eq!(k.l1_max_entry_bytes, 1000);
    assert_eq!(k.redis.as_deref(), Some("redis://127.0.0.1:6379/2"));
    assert_eq!(k.redis_timeout, Duration::from_millis(20));
    assert_eq!(k.redis_breaker_failures, 3);
    assert_eq!(k.redis_breaker_cooldown, Duration::from_secs(1));
    assert_eq!(k.l2_max_entry_bytes, 500);
    assert_eq!(k.coalesce_timeout, Duration::from_secs(2));
    assert_eq!(k.max_ttl, Duration::from_secs(3600));
    assert_eq!(k.keep_stale, Duration::from_secs(600));
    assert!(!c.routes[0].cache);
    assert!(c.routes[1].cache && c.routes[1].cache_set_cookie);
}

#[test]
fn cache_errors_name_key_and_line() {
    let e = errors(
        r#"[pools.web]
endpoints = ["http://127.0.0.1:8080"]

[cache]
redis = "localhost:6379"
redis_timeout = "0s"
redis_breaker_failures = 0
l1_max_bytes = "big"
colour = "blue"

[[routes]]
pool = "web"
cache = "yes"
"#,
    );
    assert_eq!(
        e,
        vec![
            (5, "cache.redis".to_owned()),
            (6, "cache.redis_timeout".to_owned()),
            (7, "cache.redis_breaker_failures".to_owned()),
            (8, "cache.l1_max_bytes".to_owned()),
            (9, "cache.colour".to_owned()),
            (13, "routes[0].cache".to_owned()),
        ]
    );
}

#[test]
fn body_limits_and_connection_caps_have_defaults_and_are_read() {
    let d = parse("[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n").expect("valid");
    assert_eq!(d.client.max_body_bytes, 1 << 30);
    assert_eq!(d.client.body_idle_timeout, Duration::from_secs(10));
    assert_eq!(d.client.min_body_rate, 500);
    assert_eq!(d.client.body_rate_grace, Duration::from_secs(20));
    assert_eq!(d.routes[0].max_body_bytes, None);
    assert_eq!(d.pools[0].settings.max_connections_per_endpoint, 1024);
    assert_eq!(d.pools[0].settings.connection_queue, 1024);
    assert_eq!(
        d.pools[0].settings.connection_queue_timeout,
        Duration::from_secs(1)
    );
    let c = parse(
        r#"
[client]
max_body_bytes = 4096
body_idle_timeout = "2s"
min_body_rate = 0
body_rate_grace = "5s"

[[routes]]
path_prefix = "/upload"
pool = "web"
max_body_bytes = 1048576

[pools.web]
endpoints = ["http://127.0.0.1:8080"]
max_connections_per_endpoint = 64
connection_queue = 8
connection_queue_timeout = "250ms"
"#,
    )
    .expect("valid");
    assert_eq!(c.client.max_body_bytes, 4096);
    assert_eq!(c.client.body_idle_timeout, Duration::from_secs(2));
    assert_eq!(c.client.min_body_rate, 0);
    assert_eq!(c.client.body_rate_grace, Duration::from_secs(5));
    assert_eq!(c.routes[0].max_body_bytes, Some(1 << 20));
    let p = &c.pools[0].settings;
    assert_eq!(p.max_connections_per_endpoint, 64);
    assert_eq!(p.connection_queue, 8);
    assert_eq!(p.connection_queue_timeout, Duration::from_millis(250));
    let bad = errors(
        "[client]\nbody_idle_timeout = \"0s\"\n[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\nmax_connections_per_endpoint = 0\n",
    );
    assert_eq!(
        bad,
        [
            (2, "client.body_idle_timeout".to_owned()),
            (5, "pools.web.max_connections_per_endpoint".to_owned())
        ]
    );
}

const WEB: &str = "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n";

#[test]
fn redis_reads_one_server_a_cluster_or_sentinel() {
    use crate::config::RedisTarget;
    let c = parse(&format!(
        "{WEB}\n[redis]\nurl = \"rediss://edge:pw@10.0.0.1:6380/1\"\ntimeout = \"20ms\"\nbreaker_failures = 2\nbreaker_cooldown = \"1s\"\n"
    ))
    .expect("valid");
    let r = c.redis.expect("redis");
    assert_eq!(
        r.target,
        RedisTarget::Single("rediss://edge:pw@10.0.0.1:6380/1".into())
    );
    assert_eq!(
        (r.timeout, r.breaker_failures, r.breaker_cooldown),
        (Duration::from_millis(20), 2, Duration::from_secs(1))
    );
    assert_eq!(r.describe(), "rediss://10.0.0.1:6380/1");

    let c = parse(&format!(
        "{WEB}\n[redis]\ncluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\n"
    ))
    .expect("valid");
    assert!(matches!(c.redis.expect("redis").target, RedisTarget::Cluster(s) if s.len() == 2));

    let c = parse(&format!(
        "{WEB}\n[redis]\nsentinel = {{ master = \"edge\", nodes = [\"redis://10.0.0.1:26379\"], password = \"pw\" }}\n"
    ))
    .expect("valid");
    match c.redis.expect("redis").target {
        RedisTarget::Sentinel {
            master,
            sentinels,
            password,
            tls,
            ..
        } => {
            assert_eq!(master, "edge");
            assert_eq!(sentinels, vec!["redis://10.0.0.1:26379".to_owned()]);
            assert_eq!(password.as_deref(), Some("pw"));
            assert!(!tls);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_older_cache_redis_is_the_shared_redis() {
    let c = parse(&format!(
        "{WEB}\n[cache]\nenabled = true\nredis = \"redis://127.0.0.1:6379\"\nredis_timeout = \"30ms\"\n"
    ))
    .expect("valid");
    let r = c.redis.expect("redis from cache.redis");
    assert_eq!(r.timeout, Duration::from_millis(30));
    assert!(c.cache.l2);
}

#[test]
fn redis_errors_name_key_and_line() {
    let e = errors(&format!(
        "{WEB}\n[redis]\nurl = \"redis://127.0.0.1:6379\"\ncluster = [\"redis://127.0.0.1:7000\"]\n"
    ));
    assert_eq!(e, vec![(4, "redis.url".to_owned())]);
    let e = errors(&format!("{WEB}\n[redis]\ntimeout = \"0s\"\n"));
    assert_eq!(
        e,
        vec![(4, "redis.url".to_owned()), (5, "redis.timeout".to_owned())]
    );
    let e = errors(&format!(
        "{WEB}\n[redis]\nsentinel = {{ nodes = [\"http://x\"] }}\ncolour = 1\n"
    ));
    assert_eq!(
        e,
        vec![
            (5, "redis.sentinel.master".to_owned()),
            (5, "redis.sentinel.nodes".to_owned()),
            (6, "redis.colour".to_owned()),
        ]
    );
    let e = errors(&format!(
        "{WEB}\n[redis]\nurl = \"redis://127.0.0.1:6379\"\n\n[cache]\nredis = \"redis://127.0.0.1:6380\"\n"
    ));
    assert_eq!(e, vec![(4, "cache.redis".to_owned())]);
}

#[test]
fn state_dir_and_http_mode_are_checked_with_their_lines() {
    let pools = "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n";
    let c = parse(&format!(
        "state_dir = \"/tmp/edge-state\"\nhttp_mode = \"redirect\"\n{pools}"
    ))
    .expect("valid");
    assert_eq!(c.state_dir, PathBuf::from("/tmp/edge-state"));
    assert_eq!(c.http_mode, HttpMode::Redirect);
    let d = parse(pools).expect("valid");
    assert_eq!(d.http_mode, HttpMode::Proxy);
    // An existing file is not a directory.
    let found = errors(&format!(
        "workers = 1\nstate_dir = \"/proc/self/status\"\nhttp_mode = \"forward\"\n{pools}"
    ));
    assert!(found.contains(&(2, "state_dir".to_owned())), "{found:?}");
    assert!(found.contains(&(3, "http_mode".to_owned())), "{found:?}");
}

const ONE_POOL: &str = "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n";

#[test]
fn rate_limits_read_with_their_defaults() {
    let c = parse(&format!(
        "{ONE_POOL}\n[[rate_limits]]\nname = \"api\"\nrate = \"100/s\"\n\n\
         [[rate_limits]]\nname = \"login\"\nhost = \"Example.COM\"\npath_prefix = \"/login\"\n\
         route = \"web\"\nkey = \"cookie:session\"\nrate = \"600/m\"\nburst = 3\n"
    ))
    .expect("valid");
    let [api, login] = &c.rate_limits[..] else {
        panic!("two rules: {:?}", c.rate_limits)
    };
    assert_eq!(api.key, LimitKey::ClientIp);
    assert_eq!(api.scope, LimitScope::Local);
    assert_eq!(api.fallback, LimitFallback::Local);
    // The default burst is one second's worth of the rate.
    assert_eq!(api.burst, 100);
    assert_eq!(api.rate.interval(), Duration::from_millis(10));
    assert_eq!(login.host.as_deref(), Some("example.com"));
    assert_eq!(login.key, LimitKey::Cookie("session".into()));
    assert_eq!(login.burst, 3);
    assert_eq!(login.rate.interval(), Duration::from_millis(100));
    let slow = parse(&format!(
        "{ONE_POOL}\n[[rate_limits]]\nname = \"slow\"\nrate = \"1/h\"\nkey = \"header:X-Api-Key\"\n"
    ))
    .expect("valid");
    assert_eq!(slow.rate_limits[0].burst, 1, "at least 1");
    assert_eq!(
        slow.rate_limits[0].key,
        LimitKey::Header("x-api-key".into())
    );
}

#[test]
fn bad_rate_limits_are_refused_with_key_and_line() {
    let text = format!(
        "{ONE_POOL}
[[rate_limits]]
name = \"a\"
rate = \"abc\"

[[rate_limits]]
name = \"a\"
rate = \"10/s\"
key = \"session\"

[[rate_limits]]
name = \"g\"
rate = \"10/s\"
scope = \"global\"
burst = 0
route = \"nope\"

[[rate_limits]]
rate = \"10/fortnight\"
colour = \"red\"
"
    );
    let errs = parse(&text).expect_err("refused").errors;
    let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.key.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (6, "rate_limits[0].rate"),
            (9, "rate_limits[1].name"),
            (11, "rate_limits[1].key"),
            (16, "rate_limits[2].scope"),
            (17, "rate_limits[2].burst"),
            (18, "rate_limits[2].route"),
            (20, "rate_limits[3].name"),
            (21, "rate_limits[3].rate"),
            (22, "rate_limits[3].colour"),
        ],
        "{errs:#?}"
    );
    let reason = |key: &str| {
        errs.iter()
            .find(|e| e.key == key)
            .map(|e| e.reason.clone())
            .unwrap_or_default()
    };
    assert!(reason("rate_limits[0].rate").contains("\"100/s\""));
    assert!(reason("rate_limits[1].name").contains("earlier rate limit"));
    assert!(reason("rate_limits[1].key").contains("header:NAME"));
    assert!(reason("rate_limits[2].scope").contains("[redis]"));
}

#[test]
fn a_rule_without_a_rate_is_refused() {
    let errs = errors(&format!("{ONE_POOL}\n[[rate_limits]]\nname = \"x\"\n"));
    assert_eq!(errs, vec![(4, "rate_limits[0].rate".to_owned())]);
}

#[test]
fn goaway_grace_has_a_default_and_zero_is_refused() {
    let pool = "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n";
    let d = parse(pool).expect("valid");
    assert_eq!(d.client.goaway_grace, Duration::from_secs(10));
    let c = parse(&format!("[client]\ngoaway_grace = \"3s\"\n{pool}")).expect("valid");
    assert_eq!(c.client.goaway_grace, Duration::from_secs(3));
    let bad = errors(&format!("[client]\ngoaway_grace = \"0s\"\n{pool}"));
    assert_eq!(bad, [(2, "client.goaway_grace".to_owned())]);
}

#[test]
fn sticky_reads_with_its_defaults() {
    let c = parse(
        "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\nsticky = {}\n\n\
         [pools.api]\nendpoints = [\"http://127.0.0.1:8081\"]\n\
         sticky = { key = \"header:X-User\", ttl = \"10m\" }\n\n\
         [[routes]]\npool = \"web\"\n",
    )
    .expect("valid");
    let web = c.pools[0].sticky.as_ref().expect("web is sticky");
    assert_eq!(web.key, StickyKey::Cookie);
    assert_eq!(web.cookie, "edge_s");
    assert_eq!(web.ttl, Duration::from_secs(3600));
    assert!(!web.shared);
    assert!(
        !c.pools[0].settings.hash_keys,
        "cookies pin, they do not hash"
    );
    let api = c.pools[1].sticky.as_ref().expect("api is sticky");
    assert_eq!(api.key, StickyKey::Header("x-user".to_owned()));
    assert_eq!(api.ttl, Duration::from_secs(600));
    assert!(
        c.pools[1].settings.hash_keys,
        "a header key places by hashing"
    );
}

#[test]
fn sticky_mistakes_are_refused_with_their_keys() {
    let pool = "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n";
    let cases = [
        ("sticky = { key = \"session\" }", "pools.web.sticky.key"),
        ("sticky = { cookie = \"a b\" }", "pools.web.sticky.cookie"),
        ("sticky = { ttl = \"0s\" }", "pools.web.sticky.ttl"),
        (
            "sticky = { key = \"client_ip\", cookie = \"x\" }",
            "pools.web.sticky.cookie",
        ),
        // Every edge must sign with the same key, so it cannot be generated.
        ("sticky = { shared = true }", "pools.web.sticky.shared"),
        // Assignments live in Redis: without [redis] there is nowhere to keep them.
        (
            "sticky = { key = \"client_ip\", shared = true }",
            "pools.web.sticky.shared",
        ),
        (
            "sticky = { secret_file = \"/nonexistent/key\" }",
            "pools.web.sticky.secret_file",
        ),
    ];
    for (line, key) in cases {
        let got = errors(&format!("{pool}{line}\n"));
        assert_eq!(got, vec![(3, key.to_owned())], "{line}");
    }
}

#[test]
fn a_short_sticky_secret_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = dir.path().join("short");
    std::fs::write(&short, b"too short").expect("write");
    let text = format!(
        "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\nsticky = {{ secret_file = {:?} }}\n",
        short.display().to_string()
    );
    let err = parse(&text).expect_err("refused").to_string();
    assert!(err.contains("at least 16"), "{err}");
    let long = dir.path().join("long");
    std::fs::write(&long, [7u8; 32]).expect("write");
    let text = format!(
        "[redis]\nurl = \"redis://127.0.0.1:6379\"\n[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n\
         sticky = {{ secret_file = {:?}, shared = true }}\n",
        long.display().to_string()
    );
    let c = parse(&text).expect("a long enough key, shared");
    assert!(c.pools[0].sticky.as_ref().is_some_and(|s| s.shared));
}

#[test]
fn the_access_log_is_read_and_its_mistakes_refused() {
    let pool = "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n";
    let c = parse(pool).expect("valid");
    assert_eq!(
        c.log.access, None,
        "JSON or text by the terminal when not set"
    );
    let c = parse(&format!(
        "{pool}[log]\naccess = \"text\"\naccess_file = \"/tmp/a.log\"\n"
    ))
    .expect("valid");
    assert_eq!(c.log.access, Some(AccessFormat::Text));
    assert_eq!(c.log.access_file, Some(PathBuf::from("/tmp/a.log")));
    assert_eq!(
        errors(&format!("{pool}[log]\naccess = \"csv\"\n")),
        vec![(4, "log.access".to_owned())]
    );
    assert_eq!(
        errors(&format!(
            "{pool}[log]\naccess_file = \"/nonexistent-dir/a.log\"\n"
        )),
        vec![(4, "log.access_file".to_owned())]
    );
}

#[test]
fn drain_reads_with_its_defaults_and_refuses_a_zero_grace() {
    let pool = "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n";
    let c = parse(pool).expect("valid");
    assert_eq!(c.drain.delay, Duration::from_secs(10));
    assert_eq!(c.drain.grace, Duration::from_secs(30));
    let c = parse(&format!("{pool}[drain]\ndelay = \"0s\"\ngrace = \"5s\"\n")).expect("valid");
    assert_eq!(c.drain.delay, Duration::ZERO, "zero delay: leave at once");
    assert_eq!(c.drain.grace, Duration::from_secs(5));
    assert_eq!(
        errors(&format!("{pool}[drain]\ngrace = \"0s\"\n")),
        vec![(4, "drain.grace".to_owned())]
    );
}

#[test]
fn zero_workers_and_listeners_on_one_address_are_refused() {
    let text = r#"listen = "127.0.0.1:8443"
http_listen = "0.0.0.0:8443"
workers = 0
[pools.web]
endpoints = ["http://127.0.0.1:8081"]
"#;
    let found = errors(text);
    assert!(found.contains(&(2, "http_listen".to_owned())), "{found:?}");
    assert!(found.contains(&(3, "workers".to_owned())), "{found:?}");
    let shown = parse(text).expect_err("refused").to_string();
    assert!(
        shown.contains("`listen` (127.0.0.1:8443) and `http_listen` (0.0.0.0:8443)"),
        "{shown}"
    );
    // A listener on the admin listener's default address names that default.
    let shown = parse(
        "listen = \"127.0.0.1:9901\"\n[pools.web]\nendpoints = [\"http://127.0.0.1:8081\"]\n",
    )
    .expect_err("refused")
    .to_string();
    assert!(shown.contains("edge.toml:1: listen:"), "{shown}");
    assert!(
        shown.contains("`admin`'s default (127.0.0.1:9901)"),
        "{shown}"
    );
    // Port 0 never collides; nor do different families or ports.
    for ok in [
        "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n",
        "listen = \"[::1]:8443\"\nhttp_listen = \"127.0.0.1:8443\"\n",
        "listen = \"127.0.0.1:8443\"\nhttp_listen = \"127.0.0.1:8080\"\n",
    ] {
        let text = format!("{ok}[pools.web]\nendpoints = [\"http://127.0.0.1:8081\"]\n");
        assert!(parse(&text).is_ok(), "{text}");
    }
}

#[test]
fn upgrade_reads_with_its_defaults_and_refuses_bad_names_and_a_zero_timeout() {
    let pool = "[pools.web]\nendpoints = [\"http://127.0.0.1:8080\"]\n";
    let c = parse(pool).expect("valid");
    assert_eq!(c.upgrade.protocols, ["websocket"]);
    assert_eq!(c.upgrade.idle_timeout, Duration::from_secs(120));
    let c = parse(&format!(
        "{pool}[upgrade]\nprotocols = [\"WebSocket\", \"x-custom\"]\nidle_timeout = \"5m\"\n"
    ))
    .expect("valid");
    assert_eq!(c.upgrade.protocols, ["websocket", "x-custom"]);
    assert_eq!(c.upgrade.idle_timeout, Duration::from_secs(300));
    let off = parse(&format!("{pool}[upgrade]\nprotocols = []\n")).expect("valid");
    assert!(
        off.upgrade.protocols.is_empty(),
        "an empty list turns upgrades off"
    );
    assert_eq!(
        errors(&format!(
            "{pool}[upgrade]\nprotocols = [\"websocket/13\"]\nidle_timeout = \"0s\"\n"
        )),
        vec![
            (4, "upgrade.protocols".to_owned()),
            (5, "upgrade.idle_timeout".to_owned())
        ]
    );
}

#[test]
fn admin_token_file_is_read_and_a_short_or_missing_one_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = "[pools.web]\nendpoints = [\"http://127.0.0.1:8081\"]\n";
    let good = dir.path().join("token");
    std::fs::write(&good, "0123456789abcdef-token\nignored\n").expect("write");
    let short = dir.path().join("short");
    std::fs::write(&short, "abc\n").expect("write");
    let read = |path: &std::path::Path| {
        let text = format!(
            "admin_token_file = {:?}\n{pool}",
            path.display().to_string()
        );
        Config::parse(&text, "edge.toml", Some(dir.path()))
    };
    let c = read(&good).expect("valid");
    assert_eq!(
        c.admin_token.as_ref().map(Secret::expose),
        Some("0123456789abcdef-token")
    );
    assert_eq!(
        format!("{:?}", c.admin_token),
        "Some(Secret(..))",
        "never printed"
    );
    for bad in [short, dir.path().join("missing")] {
        let e = read(&bad).expect_err("refused");
        assert_eq!(
            (e.errors[0].line, e.errors[0].key.as_str()),
            (1, "admin_token_file"),
            "{e}"
        );
    }
}

#[test]
fn listen_and_http_listen_take_one_address_or_a_list() {
    let pool = "[pools.web]\nendpoints = [\"http://127.0.0.1:8081\"]\n";
    let c = parse(&format!(
        "listen = [\"127.0.0.1:8443\", \"[::1]:8443\"]\nhttp_listen = \"[::1]:8080\"\n{pool}"
    ))
    .expect("valid");
    let want: Vec<std::net::SocketAddr> = vec![
        "127.0.0.1:8443".parse().expect("addr"),
        "[::1]:8443".parse().expect("addr"),
    ];
    assert_eq!(c.listen, want);
    assert_eq!(c.http_listen.len(), 1);
    let c = parse(&format!("http_listen = []\n{pool}")).expect("valid");
    assert!(c.http_listen.is_empty());
    let found = errors(&format!(
        "listen = []\nhttp_listen = [\"127.0.0.1:80\", \"nope\"]\n{pool}"
    ));
    assert_eq!(
        found,
        [(1, "listen".to_owned()), (2, "http_listen".to_owned())]
    );
}

#[test]
fn proxy_protocol_defaults_off_and_is_validated() {
    let pool = "[pools.web]\nendpoints = [\"http://127.0.0.1:8081\"]\n";
    let c = parse(pool).expect("valid");
    assert!(!c.proxy_protocol.enabled());
    let c = parse(&format!(
        "{pool}[proxy_protocol]\ntrusted = [\"10.0.0.0/8\", \"192.0.2.1\"]\nrequired = false\n"
    ))
    .expect("valid");
    assert!(c.proxy_protocol.trusts("10.1.2.3".parse().expect("ip")));
    assert!(!c.proxy_protocol.trusts("127.0.0.1".parse().expect("ip")));
    assert!(!c.proxy_protocol.required);
    let found = errors(&format!(
        "{pool}[proxy_protocol]\ntrusted = [\"nope\"]\nmax_header_bytes = 70000\n"
    ));
    assert_eq!(
        found,
        [
            (4, "proxy_protocol.trusted".to_owned()),
            (5, "proxy_protocol.max_header_bytes".to_owned())
        ]
    );
}

#[test]
fn an_h3_pool_is_read_and_shown_in_the_effective_config() {
    let c =
        parse("[pools.web]\nendpoints = [\"https://origin.internal:8443\"]\nprotocol = \"h3\"\n")
            .expect("valid");
    assert_eq!(c.pools[0].settings.protocol, Protocol::H3);
    let shown = super::effective::to_json(&c);
    assert_eq!(shown["pools"][0]["protocol"], "h3", "{shown}");
}

#[test]
fn an_h3_pool_over_cleartext_dns_endpoints_is_refused_at_protocol() {
    let text = "[pools.web]\ndns = { name = \"api.internal\", port = 8443 }\nprotocol = \"h3\"\n";
    assert_eq!(errors(text), [(3, "pools.web.protocol".to_owned())]);
    let tls = "[pools.web]\ndns = { name = \"api.internal\", port = 8443, tls = true }\nprotocol = \"h3\"\n";
    parse(tls).expect("h3 over dns endpoints with tls is valid");
}

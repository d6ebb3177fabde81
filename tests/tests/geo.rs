//! Geo routing with real processes: clients connect from different loopback
//! networks (127.1.0.0/16 is region a, 127.2.0.0/16 region b, ...), every origin
//! is a `test-origin` process on its region's network, so the `x-origin` of each
//! answer says which region served it. Delays injected in the origins stand for
//! the distance to their region.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use edge_tests::dns::{self, Dnsmasq};
use edge_tests::process::Finished;
use edge_tests::{
    curl, errors, poll_until, run_edge, wait_for, Edge, KeepAlive, Load, OriginProcess, Pki, Reply,
};
use http::Method;
use tokio::time::Instant;

const TEST_ORIGIN: &str = env!("CARGO_BIN_EXE_test-origin");

/// A client address in region network `net` (`127.{net}.0.1`).
fn client(net: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, net, 0, 1))
}

/// The region network an origin listens in: the second octet of its address.
fn net_of(origin: &SocketAddr) -> u8 {
    match origin.ip() {
        IpAddr::V4(v4) => v4.octets()[1],
        IpAddr::V6(_) => 0,
    }
}

/// `n` origins of one region, on `127.{net}.0.10`, `.11`, ..., answering after `delay_ms`.
async fn origins(net: u8, n: u8, delay_ms: u64) -> anyhow::Result<Vec<OriginProcess>> {
    let mut out = Vec::new();
    for i in 0..n {
        let addr = format!("127.{net}.0.{}:0", 10 + i);
        out.push(OriginProcess::start(TEST_ORIGIN, &addr, delay_ms).await?);
    }
    Ok(out)
}

/// One region of the test config: its id, network, endpoints and any more keys
/// of its `[geo.regions.ID]` table.
struct RegionSpec<'a> {
    id: &'static str,
    net: u8,
    origins: &'a [OriginProcess],
    /// More lines for `[geo.regions.ID]` (e.g. `latency = {...}`).
    geo: &'static str,
}

/// An edge config with `[geo]` (own region `a`, debug header on), one regional
/// pool `api` probing `/healthz` every 100 ms, and `top`/`geo`/`pool` lines added.
fn config(regions: &[RegionSpec<'_>], top: &str, geo: &str, pool: &str) -> String {
    let mut out = format!(
        "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n{top}\n\
         [geo]\nregion = \"a\"\ndebug_header = true\n{geo}\n"
    );
    for r in regions {
        out.push_str(&format!(
            "[geo.regions.{}]\ncidrs = [\"127.{}.0.0/16\"]\n{}\n",
            r.id, r.net, r.geo
        ));
    }
    out.push_str(
        "[pools.api]\nprotocol = \"h1\"\nhealth_check = { path = \"/healthz\", interval = \"100ms\", \
         timeout = \"1s\", healthy = 2, unhealthy = 2 }\n",
    );
    out.push_str(pool);
    out.push('\n');
    for r in regions {
        let urls: Vec<String> = r.origins.iter().map(|o| format!("{:?}", o.url())).collect();
        out.push_str(&format!(
            "[pools.api.regions.{}]\nendpoints = [{}]\n",
            r.id,
            urls.join(", ")
        ));
    }
    out
}

/// A region with no more keys than its CIDR.
fn region<'a>(id: &'static str, net: u8, origins: &'a [OriginProcess]) -> RegionSpec<'a> {
    RegionSpec {
        id,
        net,
        origins,
        geo: "",
    }
}

async fn start(toml: &str) -> anyhow::Result<Edge> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    Edge::start_with_toml(dir, pki, toml).await
}

/// `n` GETs from `from` over one keep-alive connection: how many each region
/// network served; any error fails.
async fn served_from(edge: &Edge, from: IpAddr, n: usize) -> anyhow::Result<HashMap<u8, usize>> {
    let mut conn = KeepAlive::from(from, edge.http()?);
    let mut seen = HashMap::new();
    for i in 0..n {
        let origin = conn
            .answer(&Method::GET, &format!("{from}-{i}"), Reply::checked_origin)
            .await
            .map_err(|e| anyhow::anyhow!("request {i} from {from}: {e}"))?;
        *seen.entry(net_of(&origin)).or_default() += 1;
    }
    Ok(seen)
}

/// The value of one metric series, 0 when absent.
async fn metric(edge: &Edge, series: &str) -> anyhow::Result<f64> {
    Ok(edge.metric(series).await?.0.unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_served_by_their_own_regions_backends() -> anyhow::Result<()> {
    let (a, b, c) = (
        origins(1, 2, 0).await?,
        origins(2, 2, 0).await?,
        origins(3, 2, 0).await?,
    );
    let regions = [region("a", 1, &a), region("b", 2, &b), region("c", 3, &c)];
    let edge = start(&config(&regions, "", "", "")).await?;

    for net in [1, 2, 3] {
        let seen = served_from(&edge, client(net), 60).await?;
        assert_eq!(seen, HashMap::from([(net, 60)]), "clients of 127.{net}/16");
    }
    // An address no prefix holds belongs to the edge's own region, a.
    let seen = served_from(&edge, client(9), 20).await?;
    assert_eq!(seen, HashMap::from([(1, 20)]), "unplaced clients");

    // The decision is visible in the debug header and in the region series.
    let url = format!("http://{}/", edge.http()?);
    let resp = curl(&["--interface", "127.2.0.1", url.as_str()]).await?;
    let header = resp.header("x-edge-geo").unwrap_or_default().to_owned();
    assert!(
        header.starts_with("client-region=b; by=cidr; region=b; endpoint=http://127.2.0."),
        "x-edge-geo: {header:?}"
    );
    let counted = metric(
        &edge,
        "proxy_region_requests_total{backend=\"api\",client_region=\"b\",region=\"b\"}",
    )
    .await?;
    assert_eq!(counted, 61.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarded_for_from_an_untrusted_peer_does_not_move_the_client(
) -> anyhow::Result<()> {
    let (a, b) = (origins(1, 1, 0).await?, origins(2, 1, 0).await?);
    let regions = [region("a", 1, &a), region("b", 2, &b)];
    // 127.9.0.0/16 is a trusted proxy in front of the edge; 127.1.0.1 is not.
    let edge = start(&config(
        &regions,
        "trusted_proxies = [\"127.9.0.0/16\"]",
        "",
        "",
    ))
    .await?;
    let url = format!("http://{}/", edge.http()?);
    let region_of = |resp: &edge_tests::CurlResponse| {
        resp.header("x-edge-geo")
            .and_then(|h| h.split("; ").find_map(|f| f.strip_prefix("region=")))
            .map(str::to_owned)
    };
    for _ in 0..5 {
        let spoofed = curl(&[
            "--interface",
            "127.1.0.1",
            "-H",
            "X-Forwarded-For: 127.2.0.1",
            url.as_str(),
        ])
        .await?;
        assert_eq!(spoofed.status, 200);
        assert_eq!(
            region_of(&spoofed).as_deref(),
            Some("a"),
            "spoofed XFF ignored"
        );
    }
    // The same header from the trusted proxy does place the client: the test
    // would see it if the header were ignored altogether.
    let proxied = curl(&[
        "--interface",
        "127.9.0.1",
        "-H",
        "X-Forwarded-For: 127.2.0.1",
        url.as_str(),
    ])
    .await?;
    assert_eq!(
        region_of(&proxied).as_deref(),
        Some("b"),
        "trusted proxy's XFF"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_mmdb_places_clients_by_country_and_continent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("test.mmdb");
    make_mmdb(
        &db,
        &serde_json::json!([
            ["127.1.0.0/16", {"country": {"iso_code": "DE"}, "continent": {"code": "EU"}}],
            ["127.2.0.0/16", {"country": {"iso_code": "US"}, "continent": {"code": "NA"}}],
            ["127.3.0.0/16", {"country": {"iso_code": "JP"}, "continent": {"code": "AS"}}],
        ]),
    )
    .await?;
    let (a, b, c) = (
        origins(1, 1, 0).await?,
        origins(2, 1, 0).await?,
        origins(3, 1, 0).await?,
    );
    // No CIDRs: only the database places clients.
    let toml = config(
        &[],
        "",
        &format!("mmdb = {:?}", db.display().to_string()),
        "",
    ) + &format!(
        "[geo.regions.a]\ncountries = [\"DE\"]\n[geo.regions.b]\ncountries = [\"us\"]\n\
             [geo.regions.c]\ncontinents = [\"AS\"]\n\
             [pools.api.regions.a]\nendpoints = [{:?}]\n[pools.api.regions.b]\nendpoints = [{:?}]\n\
             [pools.api.regions.c]\nendpoints = [{:?}]\n",
        a[0].url(),
        b[0].url(),
        c[0].url()
    );
    let edge = start(&toml).await?;
    let url = format!("http://{}/", edge.http()?);
    for (net, want) in [
        (1, "client-region=a; by=country; region=a"),
        (2, "client-region=b; by=country; region=b"),
        (3, "client-region=c; by=continent; region=c"),
        // Not in the database: the edge's own region.
        (4, "client-region=a; by=default; region=a"),
    ] {
        let from = client(net).to_string();
        let resp = curl(&["--interface", from.as_str(), url.as_str()]).await?;
        let header = resp.header("x-edge-geo").unwrap_or_default();
        assert!(header.starts_with(want), "from {from}: {header:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_corrupt_mmdb_is_refused_with_key_and_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let corrupt = dir.path().join("corrupt.mmdb");
    std::fs::write(&corrupt, b"\x00\x01 not a MaxMind database")?;
    for (file, why) in [
        (
            dir.path().join("missing.mmdb"),
            "cannot read MaxMind database",
        ),
        (corrupt, "is not a valid MaxMind database"),
    ] {
        let path = dir.path().join("edge.toml");
        std::fs::write(
            &path,
            format!(
                "[geo]\nregion = \"a\"\nmmdb = {:?}\n[geo.regions.a]\ncountries = [\"DE\"]\n\
                 [pools.api]\nendpoints = [\"http://127.0.0.1:1\"]\n",
                file.display().to_string()
            ),
        )?;
        let out: Finished = run_edge(
            ["check", "-c", path.to_str().unwrap_or_default()],
            Duration::from_secs(10),
        )
        .await?;
        assert_eq!(out.code, Some(2), "{out:?}");
        let want = format!("{}:3: geo.mmdb: ", path.display());
        assert!(
            out.stderr.contains(&want) && out.stderr.contains(why),
            "wanted {want:?} … {why:?} in:\n{}",
            out.stderr
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_region_fails_over_to_the_measured_nearest_and_comes_back() -> anyhow::Result<()> {
    // The configured matrix is wrong: it puts b at 10 ms and c at 200 ms, while
    // b's origins answer after 90 ms and c's after 40 ms.
    let a = origins(1, 2, 5).await?;
    let (b, c) = (origins(2, 1, 90).await?, origins(3, 1, 40).await?);
    let a_addrs: Vec<SocketAddr> = a.iter().map(|o| o.addr).collect();
    let regions = [
        RegionSpec {
            id: "a",
            net: 1,
            origins: &a,
            geo: "latency = { b = \"10ms\", c = \"200ms\" }",
        },
        region("b", 2, &b),
        region("c", 3, &c),
    ];
    let edge = start(&config(&regions, "", "measure_min_samples = 3", "")).await?;

    // Measurement takes over: c ends up nearer than b.
    poll_until(
        "measured distances to replace the configured ones",
        Duration::from_secs(10),
        || async {
            let b = metric(&edge, "proxy_region_distance_seconds{region=\"b\"}")
                .await
                .unwrap_or(0.0);
            let c = metric(&edge, "proxy_region_distance_seconds{region=\"c\"}")
                .await
                .unwrap_or(1.0);
            b > 0.05 && c < b
        },
    )
    .await?;

    let start_at = Instant::now();
    let load = Load::start_from(
        Some(client(1)),
        edge.http()?,
        4,
        Duration::from_millis(20),
        Method::GET,
        Reply::checked_origin,
    );
    wait_for("answers from region a", Duration::from_secs(5), || {
        a_addrs
            .iter()
            .find_map(|o| load.first_answer_from(o, start_at))
    })
    .await?;
    // Steady traffic for a while first: the pool's retry budget (20% of its
    // requests) is what pays for the failed tries while the region dies.
    tokio::time::sleep_until(start_at + Duration::from_secs(2)).await; // workload timing
    for o in a {
        o.kill().await?;
    }
    let killed = Instant::now();
    // From 2 s after the kill on, region c serves everything.
    tokio::time::sleep_until(killed + Duration::from_secs(2)).await; // workload timing
    let c_addr = c[0].addr;
    let settled = Instant::now();
    wait_for(
        "region c to serve after the kill",
        Duration::from_secs(5),
        || load.first_answer_from(&c_addr, settled),
    )
    .await?;
    tokio::time::sleep_until(killed + Duration::from_secs(3)).await; // workload timing

    // Restore a on the same addresses: traffic returns within 10 s.
    let mut restored = Vec::new();
    for addr in &a_addrs {
        restored.push(OriginProcess::start(TEST_ORIGIN, &addr.to_string(), 5).await?);
    }
    let back_from = Instant::now();
    let back = wait_for("traffic back in region a", Duration::from_secs(10), || {
        a_addrs
            .iter()
            .find_map(|o| load.first_answer_from(o, back_from))
    })
    .await?;
    let seen = load.finish().await?;

    assert_eq!(errors(&seen), Vec::<String>::new(), "client-visible errors");
    let after_kill: Vec<u8> = seen
        .iter()
        .filter(|(at, _)| *at >= killed + Duration::from_secs(2) && *at < back_from)
        .filter_map(|(_, r)| r.as_ref().ok().map(net_of))
        .collect();
    assert!(
        after_kill.len() > 20,
        "the load ran: {} answers",
        after_kill.len()
    );
    assert!(
        after_kill.iter().all(|&net| net == 3),
        "from 2 s after the kill, only c (measured nearest) serves: {:?}",
        count(&after_kill)
    );
    assert!(back.duration_since(back_from) < Duration::from_secs(10));
    drop(restored);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_region_down_spills_the_configured_share() -> anyhow::Result<()> {
    let mut a = origins(1, 4, 0).await?;
    let b = origins(2, 2, 0).await?;
    let regions = [
        RegionSpec {
            id: "a",
            net: 1,
            origins: &a,
            geo: "latency = { b = \"30ms\" }",
        },
        region("b", 2, &b),
    ];
    let edge = start(&config(&regions, "", "spillover_threshold = 0.7", "")).await?;
    // Two of a's four endpoints go down, and the health checks see it.
    let down: Vec<OriginProcess> = a.drain(2..).collect();
    let down_urls: Vec<String> = down.iter().map(OriginProcess::url).collect();
    for o in down {
        o.kill().await?;
    }
    poll_until(
        "two endpoints of a marked unhealthy",
        Duration::from_secs(10),
        || async {
            let mut unhealthy = 0;
            for url in &down_urls {
                let series =
                    format!("proxy_endpoint_healthy{{backend=\"api\",endpoint=\"{url}\"}}");
                if edge.metric(&series).await.ok().and_then(|m| m.0) == Some(0.0) {
                    unhealthy += 1;
                }
            }
            unhealthy == 2
        },
    )
    .await?;

    // 2000 requests from a's clients, 8 connections at a time.
    let http = edge.http()?;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let from = IpAddr::V4(Ipv4Addr::new(127, 1, 0, 100 + i));
            tokio::spawn(async move {
                let mut conn = KeepAlive::from(from, http);
                let mut nets = Vec::new();
                for n in 0..250 {
                    let origin = conn
                        .answer(&Method::GET, &format!("{i}-{n}"), Reply::checked_origin)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    nets.push(net_of(&origin));
                }
                anyhow::Ok(nets)
            })
        })
        .collect();
    let mut nets = Vec::new();
    for t in tasks {
        nets.extend(t.await??);
    }
    // healthy share 2/4 = 0.5; with a 70% threshold a keeps 0.5 / 0.7 ≈ 71.4%.
    let local = nets.iter().filter(|&&n| n == 1).count() as f64 / nets.len() as f64;
    let want = 0.5 / 0.7;
    assert!(
        (local - want).abs() <= 0.05,
        "region a kept {:.1}% (want {:.1}% ± 5): {:?}",
        local * 100.0,
        want * 100.0,
        count(&nets)
    );
    assert_eq!(nets.len(), 2000);
    Ok(())
}

/// How many of `nets` are each network, for messages.
fn count(nets: &[u8]) -> HashMap<u8, usize> {
    let mut out = HashMap::new();
    for &n in nets {
        *out.entry(n).or_default() += 1;
    }
    out
}

/// Writes a MaxMind-format database of `networks` with geo's test script
/// (PyPI mmdb-writer, which the test command installs).
async fn make_mmdb(out: &std::path::Path, networks: &serde_json::Value) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let script = edge_tests::edge::workspace_root().join("geo/testdata/make_mmdb.py");
    let mut child = tokio::process::Command::new(edge_tests::process::python())
        .arg(script)
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    stdin.write_all(networks.to_string().as_bytes()).await?;
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    anyhow::ensure!(status.success(), "make_mmdb.py failed: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_name_template_finds_each_regions_endpoints_in_dns() -> anyhow::Result<()> {
    let ips = [1, 2].map(|net| IpAddr::V4(Ipv4Addr::new(127, net, 0, 10)));
    let (port, _origins) = OriginProcess::on_one_port(TEST_ORIGIN, &ips).await?;
    let hosts = dns::hosts("a.api.internal", &ips[..1]) + &dns::hosts("b.api.internal", &ips[1..]);
    let dnsmasq = Dnsmasq::start(&hosts, "").await?;
    let toml = config(&[], "", "", "")
        + &format!(
            "dns = {{ name = \"{{region}}.api.internal\", port = {port}, nameservers = [\"{}\"] }}\n\
             [geo.regions.a]\ncidrs = [\"127.1.0.0/16\"]\n[geo.regions.b]\ncidrs = [\"127.2.0.0/16\"]\n",
            dnsmasq.addr()
        );
    let edge = start(&toml).await?;
    for net in [1, 2] {
        let seen = served_from(&edge, client(net), 30).await?;
        assert_eq!(seen, HashMap::from([(net, 30)]), "clients of 127.{net}/16");
    }
    Ok(())
}

/// `ops/geo/run.sh selftest`: the demo a user runs works (three regions, own-region
/// routing, a region down and back). It uses fixed ports 18080, 18443, 19901, 19101.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_geo_demo_script_passes_its_selftest() -> anyhow::Result<()> {
    let root = edge_tests::edge::workspace_root();
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(root.join("ops/geo/run.sh"))
        .arg("selftest")
        .env("EDGE_BIN", edge_tests::edge::edge_bin()?)
        .env("ORIGIN_BIN", TEST_ORIGIN)
        .current_dir(&root);
    let out = edge_tests::process::run_command(command, Duration::from_secs(120)).await?;
    out.ensure_success("ops/geo/run.sh selftest")?;
    assert!(out.stdout.contains("selftest: ok"), "{}", out.stdout);
    Ok(())
}

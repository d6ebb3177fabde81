//! GeoDNS drops a withdrawing edge before it stops: the PowerDNS example in
//! `ops/geo/powerdns/` (its pdns.conf and lua2 script, with the example's
//! names, addresses and port swapped for loopback ones) run by a real
//! pdns_server, in front of two real edges on 127.0.0.2 and 127.0.0.3. After
//! SIGTERM to one edge, its `/healthz` answers 503 for `drain.delay`, ifurlup
//! declares it down and the answer holds only the other edge — while the
//! withdrawing edge still serves requests.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context as _;
use edge_tests::dns::common_free_port;
use edge_tests::powerdns::PowerDns;
use edge_tests::scripted::{get, Reply, Scripted};
use edge_tests::{eventually, workspace_root, Edge, EdgeConfig, Pki};

const NAME: &str = "www.edge.test.";
const EDGE_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const EDGE_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// An edge with its listeners on `ip` (the admin one on `admin_port`) that
/// withdraws for a minute on SIGTERM: long enough to watch DNS drop it.
async fn edge_on(ip: Ipv4Addr, admin_port: u16, origin: &Scripted) -> anyhow::Result<Edge> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let toml = EdgeConfig::new(origin.url())
        .protocol("h1")
        .section("[drain]\ndelay = \"60s\"\n")
        .to_toml(&pki);
    let toml = replace_once(
        &toml,
        "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n",
        &format!("listen = \"{ip}:0\"\nhttp_listen = \"{ip}:0\"\nadmin = \"{ip}:{admin_port}\"\n"),
    )?;
    Edge::start_with_toml(dir, pki, &toml).await
}

/// `text` with `from` (which must be there, once) replaced: the example files
/// must keep the shape this test edits.
fn replace_once(text: &str, from: &str, to: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        text.matches(from).count() == 1,
        "expected {from:?} once in:\n{text}"
    );
    Ok(text.replacen(from, to, 1))
}

fn example(file: &str) -> anyhow::Result<String> {
    let path = workspace_root().join("ops/geo/powerdns").join(file);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_drops_a_withdrawing_edge_while_it_still_serves() -> anyhow::Result<()> {
    let origin = Scripted::start(|_| Reply::ok(&[], "ok")).await?;
    let port = common_free_port(&[IpAddr::V4(EDGE_A), IpAddr::V4(EDGE_B)])?;
    let edge_a = edge_on(EDGE_A, port, &origin).await?;
    let edge_b = edge_on(EDGE_B, port, &origin).await?;

    let script = example("edges.lua")?;
    let script = replace_once(
        &script,
        "local zone = \"example.net.\"",
        "local zone = \"edge.test.\"",
    )?;
    let script = replace_once(
        &script,
        "local name = \"www.example.net.\"",
        &format!("local name = \"{NAME}\""),
    )?;
    let script = replace_once(
        &script,
        "local edges = { \"192.0.2.10\", \"198.51.100.10\" }",
        &format!("local edges = {{ \"{EDGE_A}\", \"{EDGE_B}\" }}"),
    )?;
    let script = replace_once(
        &script,
        "http://www.example.net:9901/healthz",
        &format!("http://www.edge.test:{port}/healthz"),
    )?;
    // Checks every second and no packet cache, so the wait below is short.
    let conf = example("pdns.conf")?;
    let conf = replace_once(
        &conf,
        "lua-health-checks-interval=2",
        "lua-health-checks-interval=1",
    )?;
    let conf = replace_once(&conf, "cache-ttl=1", "cache-ttl=0")?;
    let pdns = PowerDns::start(&conf, &script).await?;

    let answer_is = |want: Vec<Ipv4Addr>| {
        let pdns = &pdns;
        move || {
            let want = want.clone();
            async move {
                let got = pdns.a(NAME).await?;
                Ok((got == want).then_some(()))
            }
        }
    };
    let deadline = Duration::from_secs(20);
    eventually(
        "both edges in the answer",
        deadline,
        answer_is(vec![EDGE_A, EDGE_B]),
    )
    .await
    .with_context(|| pdns.log())?;

    edge_a.terminate().await?;
    eventually(
        "127.0.0.2 out of the answer",
        deadline,
        answer_is(vec![EDGE_B]),
    )
    .await
    .with_context(|| pdns.log())?;

    // Dropped from DNS while still withdrawing: /healthz says so, and
    // requests that still arrive are served.
    let healthz = get(edge_a.admin()?, "/healthz", &[]).await?;
    assert_eq!(healthz.status, 503, "{}", edge_a.log());
    assert_eq!(get(edge_a.http()?, "/", &[]).await?.status, 200);
    assert_eq!(get(edge_b.admin()?, "/healthz", &[]).await?.status, 200);
    assert!(
        pdns.log().contains("declaring 127.0.0.2 DOWN"),
        "{}",
        pdns.log()
    );
    Ok(())
}

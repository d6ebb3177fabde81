//! Pools whose endpoints come from DNS: a real dnsmasq answers for `api.internal`
//! with a 1 s TTL, origins are `test-origin` processes on 127.0.0.11, .12 and .13
//! sharing one port (each answer's `x-origin` header names the one that served it),
//! and the load is real HTTP/1.1 keep-alive clients in this process.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use edge_tests::dns::{self, DnsPool, Dnsmasq, TTL};
use edge_tests::process::Finished;
use edge_tests::{
    assert_one_line_naming, errors, run_edge, served_by, wait_for, Edge, EdgeConfig, KeepAlive,
    Load, OriginProcess, Pki, Reply,
};
use http::Method;
use tokio::time::Instant;

const API: &str = "api.internal";
const SRV: &str = "_http._tcp.api.internal";
const RUN_TIMEOUT: Duration = Duration::from_secs(20);
const TEST_ORIGIN: &str = env!("CARGO_BIN_EXE_test-origin");

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Edge with pool `default` discovered by `dns`, plus `settings` (TOML values) on it.
async fn edge_with_dns(dns: &DnsPool, settings: &[(&str, &str)]) -> anyhow::Result<Edge> {
    let mut config = EdgeConfig::new("http://127.0.0.1:9");
    for (key, value) in settings {
        config = config.pool_setting(key, value);
    }
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let toml = dns::with_dns(&config.to_toml(&pki), "default", dns, false)?;
    Edge::start_with_toml(dir, pki, &toml).await
}

/// Keep-alive clients, each sending a GET every `every`, until finished: each
/// answer is the origin that served it (`x-origin`, its port the body).
fn start_load(edge: SocketAddr, clients: usize, every: Duration) -> Load<SocketAddr> {
    Load::start(edge, clients, every, Method::GET, Reply::checked_origin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_pool_follows_record_changes_and_drains_removed_endpoints() -> anyhow::Result<()> {
    let (port, origins) =
        OriginProcess::on_one_port(TEST_ORIGIN, &[ip(11), ip(12), ip(13)]).await?;
    let [o11, o12, o13] = [&origins[0], &origins[1], &origins[2]];
    let dnsmasq = Dnsmasq::start(&dns::hosts(API, &[ip(11), ip(12)]), "").await?;
    let edge = edge_with_dns(&DnsPool::address(API, port, dnsmasq.addr()), &[]).await?;
    let start = Instant::now();
    let load = start_load(edge.http()?, 4, Duration::from_millis(20));

    wait_for("answers from .11 and .12", Duration::from_secs(5), || {
        let both = load.first_answer_from(&o11.addr, start).is_some()
            && load.first_answer_from(&o12.addr, start).is_some();
        both.then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // workload timing: steady load first
    dnsmasq.set_hosts(&dns::hosts(API, &[ip(12), ip(13)]))?;
    let changed = Instant::now();
    // The record TTL (1 s) plus a second for the refresh tick.
    let within = TTL + Duration::from_secs(2);
    let first_13 = wait_for(".13 answering", within, || {
        load.first_answer_from(&o13.addr, changed)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // workload timing: after the change
    let seen = load.finish().await?;
    let first_13 = first_13?;
    let end = Instant::now();
    let since_change = |at: Instant| {
        let (after, before) = (
            at.saturating_duration_since(changed),
            changed.saturating_duration_since(at),
        );
        after.as_secs_f64() - before.as_secs_f64()
    };
    eprintln!(
        "{} answers; after the change (s): .13 first answered {:.3}, .11 last received {:?}",
        seen.len(),
        since_change(first_13),
        o11.requests_since(start).last().copied().map(since_change),
    );

    assert_eq!(errors(&seen), Vec::<String>::new(), "client-visible errors");
    assert!(
        served_by(&seen, &o13.addr, start, changed) == 0,
        ".13 answered before its record existed"
    );
    assert!(
        first_13 - changed <= within,
        ".13 first answered {:?} after the change",
        first_13 - changed
    );
    assert!(
        served_by(&seen, &o12.addr, first_13, end) > 0,
        ".12, in both sets, kept serving"
    );
    // Requests in flight at the change may still finish on .11; nothing new goes there.
    let drained = first_13 + Duration::from_secs(1);
    let late = o11.requests_since(drained);
    assert!(
        late.is_empty(),
        ".11 received {} requests more than 1 s after .13 first answered (the last {:?} after)",
        late.len(),
        late.last().map(|at| *at - first_13)
    );
    assert!(
        !o11.requests_since(start).is_empty() && !o13.requests_since(changed).is_empty(),
        "origins' own logs agree: .11 served before, .13 after"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weights_split_traffic_one_to_three() -> anyhow::Result<()> {
    let (port, origins) = OriginProcess::on_one_port(TEST_ORIGIN, &[ip(11), ip(12)]).await?;
    let hosts = "127.0.0.11 a.internal\n127.0.0.12 b.internal\n";
    let conf = dns::srv_host(SRV, "a.internal", port, 0, 1)
        + &dns::srv_host(SRV, "b.internal", port, 0, 3);
    let dnsmasq = Dnsmasq::start(hosts, &conf).await?;
    let edge = edge_with_dns(
        &DnsPool::srv(SRV, dnsmasq.addr()),
        &[("balancer", "\"weighted_round_robin\"")],
    )
    .await?;

    let (total, clients) = (4000, 4);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let edge = edge.http();
            tokio::spawn(async move {
                let edge = edge.map_err(|e| e.to_string())?;
                let mut conn = KeepAlive::new(edge);
                let mut answers = Vec::new();
                for seq in 0..total / clients {
                    let id = format!("c{client}-{seq}");
                    answers.push(conn.answer(&Method::GET, &id, Reply::checked_origin).await);
                }
                Ok::<_, String>(answers)
            })
        })
        .collect();
    let mut counts = HashMap::<SocketAddr, usize>::new();
    let mut failed = Vec::new();
    for task in tasks {
        for answer in task.await?.map_err(anyhow::Error::msg)? {
            match answer {
                Ok(origin) => *counts.entry(origin).or_default() += 1,
                Err(e) => failed.push(e),
            }
        }
    }
    assert_eq!(failed, Vec::<String>::new(), "client-visible errors");
    let light = counts.get(&origins[0].addr).copied().unwrap_or(0);
    let heavy = counts.get(&origins[1].addr).copied().unwrap_or(0);
    assert_eq!(light + heavy, total, "answers by origin: {counts:?}");
    let share = light as f64 / total as f64;
    eprintln!("answers by origin: {counts:?}");
    assert!(
        (0.20..=0.30).contains(&share),
        "weight 1 of 4 got {share:.3} of {total} requests: {counts:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_dnsmasq_changes_nothing_for_60_s() -> anyhow::Result<()> {
    let (port, origins) = OriginProcess::on_one_port(TEST_ORIGIN, &[ip(11), ip(12)]).await?;
    let mut dnsmasq = Dnsmasq::start(&dns::hosts(API, &[ip(11), ip(12)]), "").await?;
    let edge = edge_with_dns(
        &DnsPool::address(API, port, dnsmasq.addr()).timeout("500ms"),
        &[("balancer", "\"round_robin\"")],
    )
    .await?;
    // A few refreshes while the server is up, then no server at all.
    tokio::time::sleep(TTL * 2).await; // workload timing
    dnsmasq.stop()?;
    let killed = Instant::now();
    let load = start_load(edge.http()?, 2, Duration::from_millis(40));
    tokio::time::sleep(Duration::from_secs(60)).await; // workload timing: the 60 s
    let seen = load.finish().await?;

    assert_eq!(errors(&seen), Vec::<String>::new(), "client-visible errors");
    assert!(seen.len() > 2500, "the load ran: {} answers", seen.len());
    for window in 0..6 {
        let from = killed + Duration::from_secs(10 * window);
        let to = from + Duration::from_secs(10);
        for origin in &origins {
            assert!(
                served_by(&seen, &origin.addr, from, to) > 0,
                "{} served between {}0 s and {}0 s after the kill",
                origin.addr,
                window,
                window + 1
            );
        }
    }
    let (failures, page) = edge
        .metric("proxy_dns_failures{backend=\"default\"}")
        .await?;
    assert!(
        failures.is_some_and(|n| n > 0.0),
        "proxy_dns_failures{{backend=\"default\"}} > 0: {failures:?}\n{page}"
    );
    let (age, page) = edge
        .metric("proxy_dns_last_success_age_seconds{backend=\"default\"}")
        .await?;
    eprintln!(
        "{} answers; proxy_dns_failures {failures:?}, proxy_dns_last_success_age_seconds {age:?}",
        seen.len()
    );
    assert!(
        // 60 s without a server: even a gauge set only at each (backed-off) retry
        // is past 30 s by now.
        age.is_some_and(|s| s >= 30.0),
        "the last success is old: {age:?}\n{page}"
    );
    Ok(())
}

/// Writes edge's config with pool `default` discovered by `dns` (and its
/// `endpoints` too when `keep_endpoints`) and runs `edge COMMAND -c FILE`.
async fn edge_command(
    command: &str,
    dns: &DnsPool,
    keep_endpoints: bool,
) -> anyhow::Result<(Finished, String)> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let toml = EdgeConfig::new("http://127.0.0.1:9").to_toml(&pki);
    let toml = dns::with_dns(&toml, "default", dns, keep_endpoints)?;
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, &toml)?;
    let out = run_edge(
        [command.as_ref(), "-c".as_ref(), file.as_os_str()],
        RUN_TIMEOUT,
    )
    .await?;
    Ok((out, file.display().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_lookup_failure_stops_start_with_one_clear_line() -> anyhow::Result<()> {
    // Nothing listens on this port: the query is refused by the kernel (or times out).
    let closed = SocketAddr::from(([127, 0, 0, 1], dns::free_udp_tcp_port()?));
    let (out, _) = edge_command(
        "run",
        &DnsPool::address(API, 8080, closed).timeout("500ms"),
        false,
    )
    .await?;
    assert_one_line_naming(&out, API);

    // Outside `internal`, with no upstream, dnsmasq answers REFUSED.
    let dnsmasq = Dnsmasq::start(&dns::hosts(API, &[ip(11)]), "").await?;
    let (out, _) = edge_command(
        "run",
        &DnsPool::address("api.elsewhere", 8080, dnsmasq.addr()).timeout("500ms"),
        false,
    )
    .await?;
    assert_one_line_naming(&out, "api.elsewhere");
    assert!(
        dnsmasq.log().contains("api.elsewhere"),
        "edge asked dnsmasq:\n{}",
        dnsmasq.log()
    );
    Ok(())
}

/// Asserts `edge check` exited 2 with a `FILE:LINE: KEY: reason` line for `key`.
fn assert_check_error(out: &Finished, file: &str, key: &str) {
    let printed = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(2), "edge check:\n{printed}");
    let found = printed.lines().any(|l| {
        l.strip_prefix(file)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| rest.split_once(": "))
            .is_some_and(|(line, rest)| {
                line.parse::<u32>().is_ok() && rest.starts_with(&format!("{key}: "))
            })
    });
    assert!(found, "no `{file}:LINE: {key}: reason` line in:\n{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_check_refuses_dns_and_endpoints_together_and_missing_name() -> anyhow::Result<()> {
    let nameserver = SocketAddr::from(([127, 0, 0, 1], 53));
    let good = DnsPool::address(API, 8080, nameserver);
    // The key is known: without this, an "unknown key" error would pass the rest.
    let (out, _) = edge_command("check", &good, false).await?;
    assert_eq!(
        out.code,
        Some(0),
        "edge check on a dns pool:\n{}{}",
        out.stdout,
        out.stderr
    );

    let (out, file) = edge_command("check", &good, true).await?;
    assert_check_error(&out, &file, "pools.default.dns");

    let nameless = DnsPool {
        name: None,
        ..good.clone()
    };
    let (out, file) = edge_command("check", &nameless, false).await?;
    assert_check_error(&out, &file, "pools.default.dns.name");
    Ok(())
}

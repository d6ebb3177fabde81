//! Slow readers (`slowhttptest -X`): clients that ask for a large response and
//! read none of it. Each is cut off once it has taken no byte for
//! `client.write_idle_timeout`, its upstream request is freed, and what the edge
//! holds for it meanwhile is bounded.

use std::time::{Duration, Instant};

use edge_tests::clients::slow_reader;
use edge_tests::{eventually, poll_until, Edge, EdgeConfig, Load, Origin, Reply};
use http::Method;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const READERS: usize = 200;
const BODY: usize = 8 << 20;

fn ok(reply: Reply) -> Result<(), String> {
    if reply.status == 200 {
        Ok(())
    } else {
        Err(format!("{}: {}", reply.status, reply.body))
    }
}

/// The sum of every series of metric `name` on edge's `/metrics`.
async fn metric_sum(edge: &Edge, name: &str) -> anyhow::Result<f64> {
    let (_, page) = edge.metric(name).await?;
    Ok(page
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Established TCP connections to local port `port` (from the connecting side).
fn established_to(port: u16) -> anyhow::Result<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let remote = format!(":{port:04X}");
    Ok(table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2].ends_with(&remote) && f[3] == "01"
        })
        .count())
}

/// Reads until the peer closes (EOF or reset); fails after `deadline`.
async fn until_closed(stream: &mut TcpStream, deadline: Duration) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let drain = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline, drain)
        .await
        .map_err(|_| anyhow::anyhow!("still open after {deadline:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_are_cut_off_and_their_upstreams_freed() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .client_setting("write_idle_timeout", "\"10s\"");
    let edge = Edge::start(&config).await?;
    let http = edge.http()?;
    let canary = Load::start(http, 1, Duration::from_millis(100), Method::GET, ok);
    poll_until("a canary answer", Duration::from_secs(10), || async {
        metric_sum(&edge, "proxy_requests_total")
            .await
            .is_ok_and(|n| n >= 1.0)
    })
    .await?;
    let base_kib = edge.rss_kib()?;

    let path = format!("/bytes/{BODY}");
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        readers.push(slow_reader(http, &path).await?);
    }
    let opened = Instant::now();
    // Every reader's response has started: each holds an upstream request.
    let held_kib = eventually(
        "every reader in flight",
        Duration::from_secs(30),
        || async {
            let in_flight = metric_sum(&edge, "proxy_endpoint_in_flight").await?;
            let rss = edge.rss_kib()?;
            Ok((in_flight >= READERS as f64).then_some(rss))
        },
    )
    .await?;

    poll_until("every reader cut off", Duration::from_secs(60), || async {
        metric_sum(&edge, "proxy_write_idle_timeouts_total")
            .await
            .is_ok_and(|n| n >= READERS as f64)
    })
    .await?;
    let cut_after = opened.elapsed();
    for reader in &mut readers {
        until_closed(reader, Duration::from_secs(10)).await?;
    }
    poll_until(
        "upstream requests freed",
        Duration::from_secs(10),
        || async {
            metric_sum(&edge, "proxy_endpoint_in_flight")
                .await
                .is_ok_and(|n| n <= 1.0)
        },
    )
    .await?;
    // The canary's pooled connection (and one being replaced) may remain.
    let origin_conns = established_to(origin.addr.port())?;
    assert!(origin_conns <= 3, "{origin_conns} origin connections left");
    eprintln!("slow readers: base {base_kib} KiB, held {held_kib} KiB, cut after {cut_after:?}");
    let after_kib = eventually(
        "RSS back near its base",
        Duration::from_secs(30),
        || async {
            let rss = edge.rss_kib()?;
            Ok((rss.saturating_sub(base_kib) < 64 * 1024).then_some(rss))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}: base {base_kib} KiB, now {:?} KiB", edge.rss_kib()))?;

    let answers = canary.finish().await?;
    let failed: Vec<_> = answers.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "canary failures: {failed:?}");
    let held_per_conn = held_kib.saturating_sub(base_kib) / READERS as u64;
    // What waits for each reader is bounded (hyper's write buffer and one
    // upstream chunk), far below the 8 MiB it asked for.
    assert!(
        held_per_conn < 512,
        "{held_per_conn} KiB per held slow reader"
    );
    eprintln!(
        "slow readers: base {base_kib} KiB, {READERS} held {held_kib} KiB \
         ({held_per_conn} KiB each), all cut off {cut_after:?} after opening, \
         after {after_kib} KiB; {} origin connections left; canary {} x 200",
        origin_conns,
        answers.len()
    );
    Ok(())
}

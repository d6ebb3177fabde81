//! Connection slots: idle sockets from one source cannot take every slot, an
//! accept that fails for lack of file descriptors is counted and logged at most
//! once a second (and the edge recovers), and past `limits.memory_high` the edge
//! stops accepting and sheds idle connections, oldest first.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use edge_tests::clients::slow_reader;
use edge_tests::{
    poll_until, process, start_default, Edge, EdgeConfig, KeepAlive, Load, Origin, Reply,
};
use http::Method;
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpSocket, TcpStream};

fn ok(reply: Reply) -> Result<(), String> {
    if reply.status == 200 {
        Ok(())
    } else {
        Err(format!("{}: {}", reply.status, reply.body))
    }
}

async fn connect_from(from: IpAddr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    Ok(socket.connect(to).await?)
}

/// Whether the peer has closed `stream` (EOF or reset), without waiting.
fn closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

async fn get_200(from: IpAddr, to: SocketAddr) -> anyhow::Result<()> {
    let reply = KeepAlive::from(from, to)
        .request(&Method::GET, "/", "canary")
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(reply.status == 200, "canary got {}", reply.status);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_every_slot() -> anyhow::Result<()> {
    const LIMIT: usize = 8;
    const OPENED: usize = 20;
    let origin = Origin::start().await?;
    // Without the per-source limit, the 20 idle sockets would fill the 12 slots
    // for the whole minute the header timeout allows them.
    let config = EdgeConfig::new(origin.url())
        .client_setting("max_connections", "12")
        .client_setting("max_connections_per_ip", &LIMIT.to_string())
        .client_setting("header_read_timeout", "\"60s\"")
        .client_setting("idle_timeout", "\"60s\"");
    let edge = Edge::start(&config).await?;
    let attacker: IpAddr = "127.0.0.1".parse()?;
    // A connect the reset beat to completion counts as closed.
    let mut idle = Vec::new();
    for _ in 0..OPENED {
        idle.push(connect_from(attacker, edge.http()?).await.ok());
    }
    let is_closed = |s: &Option<TcpStream>| s.as_ref().is_none_or(closed);
    let extra = OPENED - LIMIT;
    edge_tests::wait_until("the extra sockets closed", Duration::from_secs(5), || {
        idle.iter().filter(|s| is_closed(s)).count() >= extra
    })
    .await?;
    // Sockets past the limit on the TLS listener (never a ClientHello) are closed
    // at accept too, well before the 10 s handshake timeout.
    let mut tls = Vec::new();
    for _ in 0..3 {
        tls.push(connect_from(attacker, edge.https_addr).await.ok());
    }
    edge_tests::wait_until("the TLS extras closed", Duration::from_secs(5), || {
        tls.iter().all(is_closed)
    })
    .await?;
    let started = Instant::now();
    get_200("127.0.0.2".parse()?, edge.http()?).await?;
    let canary_took = started.elapsed();
    let held = idle.iter().filter(|s| !is_closed(s)).count();
    assert_eq!(held, LIMIT, "sockets the source keeps");
    let (refused, page) = edge
        .metric("proxy_connections_refused_total{reason=\"per_ip\"}")
        .await?;
    assert_eq!(refused, Some((extra + 3) as f64), "{page}");
    eprintln!(
        "per-source limit: {OPENED}+3 idle sockets from one source, {held} kept, {} reset at \
         accept; a client from 127.0.0.2 got 200 in {canary_took:?}",
        extra + 3
    );
    Ok(())
}

/// Lines of `log` reporting a failed accept.
fn accept_failures(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("accept failed"))
        .collect()
}

fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_failures_under_emfile_are_counted_and_rate_limited() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let http = edge.http()?;
    // A keep-alive client already connected keeps being served meanwhile.
    let canary = Load::start(http, 1, Duration::from_millis(100), Method::GET, ok);
    poll_until("a canary answer", Duration::from_secs(10), || async {
        edge.metric("proxy_requests_total{backend=\"default\",protocol=\"h1\",status=\"200\"}")
            .await
            .is_ok_and(|(v, _)| v.is_some())
    })
    .await?;
    // Room for 20 more descriptors, then EMFILE on every accept.
    let limit = open_fds(edge.pid())? + 20;
    let pid = edge.pid().to_string();
    let nofile = format!("--nofile={limit}:{limit}");
    process::run(
        "prlimit",
        ["--pid", pid.as_str(), nofile.as_str()],
        Duration::from_secs(5),
    )
    .await?
    .ensure_success("prlimit")?;
    let flood_start = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..60 {
        idle.push(TcpStream::connect(http).await?);
    }
    // A few seconds of failing accepts, seen in the log (the admin listener
    // cannot be scraped while there is no descriptor to accept it with).
    edge_tests::wait_until("3 s of failing accepts", Duration::from_secs(20), || {
        accept_failures(&edge.log()).len() >= 4
    })
    .await?;
    let flood = flood_start.elapsed();
    drop(idle);
    get_200("127.0.0.1".parse()?, http).await?;
    let log = edge.log();
    let lines = accept_failures(&log);
    let seconds = flood_start.elapsed().as_secs_f64();
    assert!(
        lines.len() as f64 <= seconds + 1.0,
        "{} accept-failure lines in {seconds:.1} s:\n{}",
        lines.len(),
        lines.join("\n")
    );
    let (counted, page) = edge
        .metric("proxy_accept_errors_total{reason=\"emfile\"}")
        .await?;
    let counted = counted.unwrap_or(0.0);
    assert!(
        counted > lines.len() as f64,
        "{counted} counted for {} lines:\n{page}",
        lines.len()
    );
    let answers = canary.finish().await?;
    let failed: Vec<_> = answers.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "canary failures: {failed:?}");
    eprintln!(
        "EMFILE: {counted} failed accepts over {flood:?}+, {} log lines in {seconds:.1} s; \
         a new client got 200 once the idle sockets closed; canary {} x 200",
        lines.len(),
        answers.len()
    );
    Ok(())
}

async fn gauge(edge: &Edge, series: &str) -> f64 {
    edge.metric(series)
        .await
        .ok()
        .and_then(|(v, _)| v)
        .unwrap_or(0.0)
}

/// Requests in flight to every endpoint.
async fn in_flight(edge: &Edge) -> f64 {
    let name = "proxy_endpoint_in_flight{";
    let Ok((_, page)) = edge.metric(name).await else {
        return 0.0;
    };
    page.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The RSS of an idle edge that has served one request, in bytes.
async fn idle_rss(origin: &Origin) -> anyhow::Result<u64> {
    let edge = Edge::start(&EdgeConfig::new(origin.url())).await?;
    get_200("127.0.0.1".parse()?, edge.http()?).await?;
    Ok(edge.rss_kib()? * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_stops_accepting_and_sheds_idle_connections() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    const IDLE: usize = 30;
    const IDLE_H2: usize = 10;
    const IDLE_QUIC: usize = 5;
    let origin = Origin::start().await?;
    let high = idle_rss(&origin).await? + (24 << 20);
    let config = EdgeConfig::new(origin.url())
        .top_setting("limits", &format!("{{ memory_high = {high} }}"))
        .client_setting("write_idle_timeout", "\"1h\"")
        // Every client here is 127.0.0.1, and it may take a few hundred slow
        // readers to pass the mark: the per-source cap is not under test.
        .client_setting("max_connections_per_ip", "4096");
    let edge = Edge::start(&config).await?;
    let http = edge.http()?;
    let canary = Load::start(http, 1, Duration::from_millis(100), Method::GET, ok);
    // The oldest connections: one request each, then parked.
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let mut conn = TcpStream::connect(http).await?;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: edge.test\r\n\r\n")
            .await?;
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).await?;
        anyhow::ensure!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "idle client not served"
        );
        idle.push(conn);
    }
    poll_until(
        "the idle connections parked",
        Duration::from_secs(10),
        || async { gauge(&edge, "proxy_parked_connections").await >= IDLE as f64 },
    )
    .await?;
    // Idle QUIC connections (handshake done, no request).
    let (mut idle_quic, mut quic_lines) = idle_quic(&edge, IDLE_QUIC).await?;
    // Idle HTTP/2 (h2c) connections: one request each, then nothing.
    let mut idle_h2 = Vec::new();
    for _ in 0..IDLE_H2 {
        idle_h2.push(idle_h2c(http).await?);
    }
    // Memory goes up with slow readers (each holds buffered response bytes).
    let mut readers = Vec::new();
    let path = format!("/bytes/{}", 64 << 20);
    while gauge(&edge, "proxy_overload_active").await < 1.0 {
        anyhow::ensure!(readers.len() < 2000, "RSS never passed {high}");
        for _ in 0..20 {
            readers.push(slow_reader(http, &path).await?);
        }
        let opened = readers.len() as f64;
        poll_until("the batch in flight", Duration::from_secs(20), || async {
            gauge(&edge, "proxy_overload_active").await >= 1.0 || in_flight(&edge).await >= opened
        })
        .await?;
    }
    let peak = edge.rss_kib()?;
    edge_tests::wait_until("the idle connections shed", Duration::from_secs(10), || {
        idle.iter().all(closed)
    })
    .await?;
    // The idle h2 connections get GOAWAY and end (the client side sees its
    // connection task finish).
    edge_tests::wait_until(
        "the idle h2 connections shed",
        Duration::from_secs(20),
        || idle_h2.iter().all(tokio::task::JoinHandle::is_finished),
    )
    .await?;
    // The idle QUIC connections are closed (H3_NO_ERROR).
    let line = tokio::time::timeout(Duration::from_secs(30), quic_lines.next_line())
        .await??
        .ok_or_else(|| anyhow::anyhow!("idle QUIC script ended early"))?;
    let closed_quic: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(
        closed_quic["terminated"], IDLE_QUIC,
        "idle QUIC shed: {closed_quic}"
    );
    assert_eq!(
        closed_quic["codes"],
        serde_json::json!([0x100]),
        "{closed_quic}"
    );
    let _ = idle_quic.wait().await;
    // A new client waits in the backlog while the guard holds.
    let mut late = TcpStream::connect(http).await?;
    late.write_all(b"GET / HTTP/1.1\r\nHost: edge.test\r\n\r\n")
        .await?;
    let shed = gauge(&edge, "proxy_overload_shed_total").await;
    assert!(shed >= (IDLE + IDLE_H2 + IDLE_QUIC) as f64, "{shed} shed");
    let mut byte = [0u8; 1];
    let early = late.try_read(&mut byte);
    assert!(
        gauge(&edge, "proxy_overload_active").await >= 1.0
            && matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "answered while overloaded: {early:?}"
    );
    // QUIC has no backlog: a new HTTP/3 connection is refused while it holds.
    let h3_while = edge_tests::h3_requests(&edge, &serde_json::json!([{"path": "/"}])).await;
    assert!(
        h3_while.as_ref().map_or(true, |r| r[0]["status"] != 200),
        "HTTP/3 served while overloaded: {h3_while:?}"
    );
    let refused = gauge(&edge, "quic_incoming_total{decision=\"refused_overload\"}").await;
    assert!(refused >= 1.0, "no QUIC attempt refused for overload");
    let readers_held = readers.len();
    drop(readers);
    poll_until("the overload to clear", Duration::from_secs(60), || async {
        gauge(&edge, "proxy_overload_active").await < 1.0
    })
    .await?;
    let mut answer = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), late.read_exact(&mut answer)).await??;
    assert_eq!(&answer, b"HTTP/1.1 200", "the deferred client");
    let h3_after = edge_tests::h3_requests(&edge, &serde_json::json!([{"path": "/"}])).await?;
    assert_eq!(
        h3_after[0]["status"], 200,
        "HTTP/3 after the overload cleared: {h3_after}"
    );
    let log = edge.log();
    assert!(
        log.contains("overload: RSS") && log.contains("overload cleared"),
        "{log}"
    );
    let answers = canary.finish().await?;
    let failed: Vec<_> = answers.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(failed.is_empty(), "canary failures: {failed:?}");
    eprintln!(
        "overload: memory_high {high} B, peak RSS {peak} KiB with {readers_held} slow readers; \
         {shed} idle shed (h1, h2, h3); deferred client answered 200 after clearing, RSS {} KiB; canary {} x 200",
        edge.rss_kib()?,
        answers.len()
    );
    Ok(())
}

/// An h2c connection (prior knowledge) that made one request and then sits
/// idle; the handle finishes when edge ends the connection.
async fn idle_h2c(addr: std::net::SocketAddr) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await?);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(format!("http://{addr}/"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    anyhow::ensure!(resp.status() == 200, "idle h2 client got {}", resp.status());
    http_body_util::BodyExt::collect(resp.into_body()).await?;
    // Keep the sender alive inside the task, so only edge can end the connection.
    Ok(tokio::spawn(async move {
        let _send = send;
        let _ = driver.await;
    }))
}

/// `count` idle QUIC connections (tests/py/quic_hostile.py `idle`), all
/// connected; the script's next line tells how the server ended them.
async fn idle_quic(
    edge: &Edge,
    count: usize,
) -> anyhow::Result<(
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
)> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new(edge_tests::process::python())
        .arg(edge_tests::clients::py_script("quic_hostile.py"))
        .args(["idle", "--host", &edge.h3_addr.ip().to_string()])
        .args(["--port", &edge.h3_addr.port().to_string()])
        .arg("--ca")
        .arg(&edge.pki.ca_cert)
        .args(["--count", &count.to_string(), "--deadline", "90"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await??
        .ok_or_else(|| anyhow::anyhow!("idle QUIC script printed nothing"))?;
    let report: serde_json::Value = serde_json::from_str(&first)?;
    anyhow::ensure!(report["connected"] == count, "idle QUIC clients: {report}");
    Ok((child, lines))
}

/// `(soft, hard)` open-file limits of a process, from `/proc/PID/limits`.
fn nofile_limits(pid: u32) -> anyhow::Result<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or_else(|| anyhow::anyhow!("no open-file line: {limits}"))?;
    let mut f = line.split_whitespace().skip(3);
    Ok((
        f.next().unwrap_or_default().to_string(),
        f.next().unwrap_or_default().to_string(),
    ))
}

#[tokio::test]
async fn the_soft_open_file_limit_is_raised_to_the_hard_one_and_the_cap_logged(
) -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let (_, hard) = nofile_limits(std::process::id())?;
    let hard_n: u64 = hard.parse()?;
    anyhow::ensure!(
        hard_n > 256,
        "the hard limit here is {hard}: cannot lower the soft one below it"
    );
    let edge = Edge::start_with_soft_nofile(&EdgeConfig::new(origin.url()), 256).await?;
    let (soft, now_hard) = nofile_limits(edge.pid())?;
    assert_eq!(
        (soft.as_str(), now_hard.as_str()),
        (hard.as_str(), hard.as_str())
    );
    let log = edge.log();
    assert!(
        log.contains(&format!("open-file limit raised from 256 to {hard}")),
        "{log}"
    );
    // The cap follows the raised limit (70% of it), not the 256 it started with.
    let cap = hard_n / 10 * 7;
    assert!(
        log.contains(&format!(
            "client connections capped at {cap} (open-file limit {hard})"
        )),
        "{log}"
    );
    Ok(())
}

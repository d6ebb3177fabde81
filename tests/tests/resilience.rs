//! A backend's death, hang or slowness must not reach clients: origins are real
//! processes (SIGKILL, SIGSTOP), load is a steady paced GET stream, and every
//! answer names the origin port that served it.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use edge_tests::{Edge, EdgeConfig};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// A `test-origin` process: its answers' bodies are its port; it logs every
/// request (`REQ METHOD ID`) it receives, collected in `log`.
struct OriginProcess {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl OriginProcess {
    async fn start(addr: &str, delay_ms: u64) -> anyhow::Result<Self> {
        Self::start_with_health(addr, delay_ms, None).await
    }

    /// With `health`: `/healthz` answers 200 while that file says `ok`, else 503.
    async fn start_with_health(
        addr: &str,
        delay_ms: u64,
        health: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut args = vec![addr.to_owned(), delay_ms.to_string()];
        args.extend(health.map(|p| p.display().to_string()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_test-origin"))
            .args(&args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting test-origin")?;
        let stdout = child.stdout.take().context("test-origin stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("test-origin did not print its address")??
            .context("test-origin exited")?;
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                lock(&sink).push(line);
            }
        });
        Ok(Self {
            child,
            addr: line.trim().parse()?,
            log,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("test-origin already gone")?;
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    async fn kill(mut self) -> anyhow::Result<()> {
        self.signal("KILL")?;
        self.child.wait().await?;
        Ok(())
    }
}

/// One answer seen by the load: when, and which origin port (or what went wrong).
type Seen = Arc<Mutex<Vec<(Instant, Result<u16, String>)>>>;

/// `clients` keep-alive clients, each sending a GET every 20 ms, until `until`.
async fn paced_load(edge: SocketAddr, clients: usize, until: Instant) -> Seen {
    paced(edge, clients, until, http::Method::GET).await
}

/// As `paced_load`, with `method`; every request carries a unique `x-request-id`
/// (client number and sequence).
async fn paced(edge: SocketAddr, clients: usize, until: Instant, method: http::Method) -> Seen {
    let seen: Seen = Arc::default();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let seen = seen.clone();
        let method = method.clone();
        tasks.push(tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            let mut conn = None;
            let mut seq = 0u64;
            while Instant::now() < until {
                pace.tick().await;
                seq += 1;
                let id = format!("c{client}-{seq}");
                let result = send(edge, &mut conn, &method, &id).await;
                if result.is_err() {
                    conn = None;
                }
                lock(&seen).push((Instant::now(), result));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    seen
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn send(
    edge: SocketAddr,
    conn: &mut Option<Sender>,
    method: &http::Method,
    id: &str,
) -> Result<u16, String> {
    if conn.is_none() {
        let stream = tokio::net::TcpStream::connect(edge)
            .await
            .map_err(|e| e.to_string())?;
        let (send, driver) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(driver);
        *conn = Some(send);
    }
    let send = conn.as_mut().ok_or("no connection")?;
    send.ready().await.map_err(|e| e.to_string())?;
    // Body-less, so a proxy *could* replay it: the case that must not happen.
    let body = Bytes::new();
    let req = http::Request::builder()
        .method(method.clone())
        .uri("/")
        .header("host", "edge.test")
        .header("x-request-id", id)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| "client timeout".to_owned())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(format!("{status}: {text}"));
    }
    text.trim()
        .parse()
        .map_err(|_| format!("unexpected body {text:?}"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn edge_over(origins: &[&OriginProcess], settings: &[(&str, &str)]) -> anyhow::Result<Edge> {
    let mut config = EdgeConfig::new(origins[0].url());
    config.pools[0].endpoints = origins.iter().map(|o| o.url()).collect();
    for (key, value) in settings {
        config = config.pool_setting(key, value);
    }
    Edge::start(&config).await
}

fn errors(seen: &Seen) -> Vec<String> {
    lock(seen)
        .iter()
        .filter_map(|(_, r)| r.clone().err())
        .collect()
}

/// Answers from `port` within `[from, to)`.
fn served_by(seen: &Seen, port: u16, from: Instant, to: Instant) -> usize {
    lock(seen)
        .iter()
        .filter(|(at, r)| *at >= from && *at < to && r.as_ref().ok() == Some(&port))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_one_of_three_origins_under_load_loses_no_request() -> anyhow::Result<()> {
    let a = OriginProcess::start("127.0.0.1:0", 0).await?;
    let b = OriginProcess::start("127.0.0.1:0", 0).await?;
    let c = OriginProcess::start("127.0.0.1:0", 0).await?;
    let b_addr = b.addr;
    let edge = edge_over(&[&a, &b, &c], &[]).await?;
    let start = Instant::now();
    let load = tokio::spawn(paced_load(edge.http()?, 4, start + Duration::from_secs(14)));

    tokio::time::sleep_until(start + Duration::from_secs(2)).await; // workload timing
    b.kill().await?;
    let killed = Instant::now();
    tokio::time::sleep_until(start + Duration::from_secs(4)).await; // workload timing
    let b = OriginProcess::start(&b_addr.to_string(), 0).await?;
    let restarted = Instant::now();
    let seen = load.await?;

    assert_eq!(errors(&seen), Vec::<String>::new(), "client-visible errors");
    let total = lock(&seen).len();
    assert!(total > 2000, "the load ran: {total} answers");
    let metrics = edge_tests::curl(&[format!("http://{}/metrics", edge.admin()?)])
        .await?
        .text();
    let retries = metrics
        .lines()
        .find(|l| l.starts_with("proxy_upstream_retries_total{backend=\"default\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        retries.is_some_and(|r| r > 0.0),
        "retries were counted: {retries:?}"
    );
    assert!(
        served_by(&seen, b_addr.port(), start, killed) > 0,
        "b served before the kill"
    );
    let back = served_by(
        &seen,
        b_addr.port(),
        restarted,
        restarted + Duration::from_secs(10),
    );
    assert!(back > 0, "restarted b got traffic again within 10 s");
    drop(b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_hangs_one_origin_breaker_routes_around_it_and_sigcont_brings_it_back(
) -> anyhow::Result<()> {
    let a = OriginProcess::start("127.0.0.1:0", 0).await?;
    let b = OriginProcess::start("127.0.0.1:0", 0).await?;
    let c = OriginProcess::start("127.0.0.1:0", 0).await?;
    let edge = edge_over(&[&a, &b, &c], &[("response_timeout", "\"500ms\"")]).await?;
    let start = Instant::now();
    let load = tokio::spawn(paced_load(edge.http()?, 4, start + Duration::from_secs(16)));

    tokio::time::sleep_until(start + Duration::from_secs(1)).await; // workload timing
    c.signal("STOP")?;
    tokio::time::sleep_until(start + Duration::from_secs(6)).await; // workload timing
    c.signal("CONT")?;
    let resumed = Instant::now();
    let seen = load.await?;

    assert_eq!(errors(&seen), Vec::<String>::new(), "client-visible errors");
    let endpoint = format!("endpoint={}", c.url());
    assert!(
        edge.log()
            .lines()
            .any(|l| l.contains("circuit breaker opened") && l.contains(&endpoint)),
        "the hung origin's breaker opened:\n{}",
        edge.log()
    );
    let back = served_by(
        &seen,
        c.addr.port(),
        resumed,
        resumed + Duration::from_secs(10),
    );
    assert!(
        back > 0,
        "after SIGCONT the origin got traffic again within 10 s"
    );
    Ok(())
}

/// Shares of each origin in answers after a warm-up second.
async fn shares_with_one_slow_origin(balancer: &str) -> anyhow::Result<(f64, usize)> {
    let a = OriginProcess::start("127.0.0.1:0", 0).await?;
    let b = OriginProcess::start("127.0.0.1:0", 0).await?;
    let slow = OriginProcess::start("127.0.0.1:0", 100).await?;
    let edge = edge_over(&[&a, &b, &slow], &[("balancer", balancer)]).await?;
    let start = Instant::now();
    let seen = paced_load(edge.http()?, 4, start + Duration::from_secs(7)).await;
    assert_eq!(errors(&seen), Vec::<String>::new());
    let warm = start + Duration::from_secs(1);
    let after: Vec<u16> = lock(&seen)
        .iter()
        .filter(|(at, _)| *at >= warm)
        .filter_map(|(_, r)| r.as_ref().ok().copied())
        .collect();
    let slow_hits = after.iter().filter(|p| **p == slow.addr.port()).count();
    Ok((slow_hits as f64 / after.len().max(1) as f64, after.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_origin_loses_traffic_with_the_default_balancer() -> anyhow::Result<()> {
    let (share, n) = shares_with_one_slow_origin("\"least_request\"").await?;
    assert!(share < 0.10, "slow origin got {share:.3} of {n} requests");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_gives_a_slow_origin_its_third() -> anyhow::Result<()> {
    let (share, n) = shares_with_one_slow_origin("\"round_robin\"").await?;
    assert!(
        (0.25..0.42).contains(&share),
        "slow origin got {share:.3} of {n} requests"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_origins_down_answers_503_with_retry_after_once_breakers_open() -> anyhow::Result<()> {
    let a = OriginProcess::start("127.0.0.1:0", 0).await?;
    let b = OriginProcess::start("127.0.0.1:0", 0).await?;
    let edge = edge_over(&[&a, &b], &[]).await?;
    let url = format!("http://{}/", edge.http()?);
    let first = edge_tests::curl(&[url.as_str()]).await?;
    assert_eq!(first.status, 200);
    let (a_url, b_url) = (a.url(), b.url());
    a.kill().await?;
    b.kill().await?;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        let r = edge_tests::curl(&[url.as_str()]).await?;
        if r.status == 503 {
            assert_eq!(r.header("retry-after"), Some("1"), "503 says when to retry");
            assert!(r.text().contains("no backend available"), "{}", r.text());
        }
        statuses.push(r.status);
    }
    assert!(
        statuses.iter().all(|s| *s == 502 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses[20..].iter().all(|s| *s == 503),
        "breakers open: {statuses:?}"
    );
    let metrics = edge_tests::curl(&[format!("http://{}/metrics", edge.admin()?)])
        .await?
        .text();
    for url in [a_url, b_url] {
        let series =
            format!("proxy_endpoint_breaker_state{{backend=\"default\",endpoint=\"{url}\"}}");
        let state = metrics.lines().find(|l| l.starts_with(&series));
        assert!(
            state.is_some_and(|l| l.ends_with(" 1") || l.ends_with(" 2")),
            "{url}'s breaker is open (1) or half-open (2): {state:?}\n{metrics}"
        );
    }
    Ok(())
}

/// POSTs are not idempotent: when their backend dies, those in flight there may
/// fail, but none is sent twice (each request id reaches one origin once). They
/// are body-less, so replaying them would be mechanically possible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_to_a_dying_origin_fail_at_most_in_flight_and_never_reach_two_origins(
) -> anyhow::Result<()> {
    let a = OriginProcess::start("127.0.0.1:0", 50).await?;
    let b = OriginProcess::start("127.0.0.1:0", 50).await?;
    let c = OriginProcess::start("127.0.0.1:0", 50).await?;
    let logs = [a.log.clone(), b.log.clone(), c.log.clone()];
    let clients = 4;
    let edge = edge_over(&[&a, &b, &c], &[]).await?;
    let start = Instant::now();
    let load = tokio::spawn(paced(
        edge.http()?,
        clients,
        start + Duration::from_secs(6),
        http::Method::POST,
    ));
    tokio::time::sleep_until(start + Duration::from_secs(2)).await; // workload timing
    b.kill().await?;
    let seen = load.await?;

    let failures = errors(&seen);
    assert!(
        failures.len() <= clients,
        "at most one POST in flight per client can be lost with its backend: {failures:#?}"
    );
    let mut received = std::collections::HashMap::<String, usize>::new();
    for log in &logs {
        for line in lock(log).iter() {
            if let Some(id) = line.strip_prefix("REQ POST ") {
                *received.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    let twice: Vec<_> = received.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "POSTs delivered more than once: {twice:?}"
    );
    let answered = lock(&seen).iter().filter(|(_, r)| r.is_ok()).count();
    assert!(answered > 200, "the load ran: {answered} answers");
    assert!(
        received.len() >= answered,
        "every answered POST reached an origin"
    );
    Ok(())
}

/// An origin that serves traffic but reports itself unhealthy is taken out of
/// rotation by active health checks (passive breaking cannot see it), and put
/// back when it reports healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_an_unhealthy_origin_out_and_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let health = dir.path().join("b-health");
    std::fs::write(&health, "ok")?;
    let a = OriginProcess::start("127.0.0.1:0", 0).await?;
    let b = OriginProcess::start_with_health("127.0.0.1:0", 0, Some(&health)).await?;
    let check = "{ path = \"/healthz\", interval = \"100ms\", timeout = \"500ms\", healthy = 2, unhealthy = 2 }";
    let edge = edge_over(&[&a, &b], &[("health_check", check)]).await?;
    let start = Instant::now();
    let load = tokio::spawn(paced_load(edge.http()?, 2, start + Duration::from_secs(10)));

    tokio::time::sleep_until(start + Duration::from_secs(2)).await; // workload timing
    std::fs::write(&health, "down")?;
    let marked_down = Instant::now();
    wait_until_logged(&edge, "health check failing").await?;
    let out = Instant::now();
    tokio::time::sleep_until(start + Duration::from_secs(6)).await; // workload timing
    std::fs::write(&health, "ok")?;
    wait_until_logged(&edge, "health check passing").await?;
    let back = Instant::now();
    let seen = load.await?;

    assert_eq!(errors(&seen), Vec::<String>::new(), "client-visible errors");
    let port = b.addr.port();
    assert!(
        served_by(&seen, port, start, marked_down) > 0,
        "b served while healthy"
    );
    // Requests already on their way when b went out may still land (their answers
    // can be late on a busy machine); none chosen a second later.
    let settle = Duration::from_secs(1);
    assert_eq!(
        served_by(&seen, port, out + settle, back),
        0,
        "b out of rotation while unhealthy"
    );
    assert!(
        served_by(&seen, port, back, back + Duration::from_secs(3)) > 0,
        "b back in rotation"
    );
    let metrics = edge_tests::curl(&[format!("http://{}/metrics", edge.admin()?)])
        .await?
        .text();
    let series = format!(
        "proxy_endpoint_healthy{{backend=\"default\",endpoint=\"{}\"}} 1",
        b.url()
    );
    assert!(metrics.contains(&series), "{series} in\n{metrics}");
    Ok(())
}

async fn wait_until_logged(edge: &Edge, text: &str) -> anyhow::Result<()> {
    edge_tests::wait_until(text, Duration::from_secs(10), || edge.log().contains(text)).await
}

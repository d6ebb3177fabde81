//! Who is to blame: a slow, broken or vanished client, or edge's own lack of
//! file descriptors, never makes a healthy backend look sick. Each attack runs
//! against the only endpoint of a pool with the default breaker (5 failures);
//! the guilty requests get a client status (400/408/413, or are counted as 499),
//! the endpoint's breaker stays closed, and a canary on another connection keeps
//! getting 200. Also: the body limits themselves (413, 408, minimum rate), 421
//! for a Host the TLS connection's certificate does not cover, the response
//! timeout counted from the end of the upload, and the HTTP/1.1 connection cap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_tests::{
    curl, eventually, wait_until, Edge, EdgeConfig, KeepAlive, Origin, PoolConfig, RouteConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// How long any single answer may take in these tests (generous: a deadline, not a speed).
const ANSWER: Duration = Duration::from_secs(15);

/// A client on its own keep-alive connection sending `GET /echo` every 50 ms
/// until stopped; every answer's status (or error) is kept.
struct Canary {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Result<u16, String>>>>,
    task: JoinHandle<()>,
}

impl Canary {
    async fn start(edge: SocketAddr) -> anyhow::Result<Self> {
        let mut client = KeepAlive::new(edge);
        // The first answer before any attack: the connection and its pooled
        // upstream connection exist from here on.
        let first = client
            .request(&http::Method::GET, "/echo", "canary-0")
            .await;
        anyhow::ensure!(
            matches!(&first, Ok(r) if r.status == 200),
            "canary before the attack: {first:?}"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(vec![Ok(200)]));
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut n = 1;
            while !stop2.load(Ordering::SeqCst) {
                let id = format!("canary-{n}");
                let got = client.request(&http::Method::GET, "/echo", &id).await;
                let got = got.map(|r| r.status.as_u16());
                seen2.lock().unwrap_or_else(|p| p.into_inner()).push(got);
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await; // the canary's pace
            }
        });
        Ok(Self { stop, seen, task })
    }

    /// Stops the canary once it got one more answer (one after the attack, when
    /// an opened breaker would show); fails unless every answer was 200.
    /// Returns how many.
    async fn finish(self) -> anyhow::Result<usize> {
        let count = || self.seen.lock().unwrap_or_else(|p| p.into_inner()).len();
        let before = count();
        wait_until("a canary answer after the attack", ANSWER, || {
            count() > before
        })
        .await?;
        self.stop.store(true, Ordering::SeqCst);
        self.task.await?;
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let bad: Vec<_> = seen.iter().filter(|s| !matches!(s, Ok(200))).collect();
        anyhow::ensure!(bad.is_empty(), "canary got {bad:?} of {}", seen.len());
        Ok(seen.len())
    }
}

/// The endpoints' breaker states (0 closed) and ejections of pool `backend`.
async fn breakers(edge: &Edge, backend: &str) -> anyhow::Result<Vec<(f64, f64)>> {
    let (_, page) = edge.metric("proxy_endpoint_breaker_state").await?;
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let label = format!("{{backend=\"{backend}\",");
    let of = |name: &str| -> Vec<f64> {
        page.lines()
            .filter(|l| l.starts_with(&format!("{name}{label}")))
            .filter_map(value)
            .collect()
    };
    let states = of("proxy_endpoint_breaker_state");
    let ejections = of("proxy_endpoint_ejections_total");
    anyhow::ensure!(
        !states.is_empty(),
        "no breaker series for {backend}:\n{page}"
    );
    Ok(states.into_iter().zip(ejections).collect())
}

/// Fails unless every endpoint of `backend` has a closed breaker that never opened.
async fn assert_breaker_closed(edge: &Edge, backend: &str) -> anyhow::Result<()> {
    let b = breakers(edge, backend).await?;
    anyhow::ensure!(
        b.iter()
            .all(|&(state, ejections)| state == 0.0 && ejections == 0.0),
        "breaker of {backend} (state, ejections): {b:?}"
    );
    Ok(())
}

/// `proxy_requests_total` for `backend` and `status` over every protocol (0 when absent).
async fn answered(edge: &Edge, backend: &str, status: u16) -> anyhow::Result<f64> {
    let mut sum = 0.0;
    for protocol in ["h1", "h2", "h3"] {
        let series = format!(
            "proxy_requests_total{{backend=\"{backend}\",protocol=\"{protocol}\",status=\"{status}\"}}"
        );
        sum += edge.metric(&series).await?.0.unwrap_or(0.0);
    }
    Ok(sum)
}

/// Opens a connection and writes `bytes` on it.
async fn send(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(bytes).await?;
    Ok(stream)
}

/// The status code of the response on `stream` (its status line), or `None`
/// when the connection closed first.
async fn status(stream: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<Option<u16>> {
    let read = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = got.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&got[..end]).into_owned();
                return Ok(line.split(' ').nth(1).and_then(|s| s.parse().ok()));
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(ANSWER, read)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {ANSWER:?}"))?
}

/// An origin (h1 and h2c) and edge over it with `client` and pool settings.
async fn pair(client: &[(&str, &str)], pool: &[(&str, &str)]) -> anyhow::Result<(Origin, Edge)> {
    let origin = Origin::start().await?;
    let mut config = EdgeConfig::new(origin.url());
    for (k, v) in client {
        config = config.client_setting(k, v);
    }
    for (k, v) in pool {
        config = config.pool_setting(k, v);
    }
    let edge = Edge::start(&config).await?;
    Ok((origin, edge))
}

const CHUNKED_UPLOAD: &str =
    "POST /upload HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n";

/// A chunked upload of one byte every `every`, until edge answers: the status.
async fn trickle(addr: SocketAddr, every: Duration) -> anyhow::Result<Option<u16>> {
    let (mut read, mut write) = send(addr, CHUNKED_UPLOAD.as_bytes()).await?.into_split();
    let answer = status(&mut read);
    tokio::pin!(answer);
    loop {
        if write.write_all(b"1\r\na\r\n").await.is_err() {
            return answer.await;
        }
        tokio::select! {
            got = &mut answer => return got,
            () = tokio::time::sleep(every) => {} // the attacker's pace
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_get_408_and_leave_the_breaker_closed() -> anyhow::Result<()> {
    let (origin, edge) = pair(&[("body_idle_timeout", "\"300ms\"")], &[]).await?;
    let addr = edge.http()?;
    let canary = Canary::start(addr).await?;
    // Seven POSTs that send one byte every 5 s, all at once.
    let started = std::time::Instant::now();
    let slow: Vec<_> = (0..7)
        .map(|_| tokio::spawn(trickle(addr, Duration::from_secs(5))))
        .collect();
    for s in slow {
        assert_eq!(s.await??, Some(408), "a stalled upload");
    }
    let canary = canary.finish().await?;
    assert_breaker_closed(&edge, "default").await?;
    assert!(origin.requests() >= 7, "the uploads did reach the origin");
    eprintln!(
        "canary answers: {canary}; 408 after {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_below_the_minimum_rate_get_408() -> anyhow::Result<()> {
    let (_origin, edge) = pair(
        &[
            ("body_idle_timeout", "\"10s\""),
            ("min_body_rate", "1000"),
            ("body_rate_grace", "\"500ms\""),
        ],
        &[],
    )
    .await?;
    let addr = edge.http()?;
    let canary = Canary::start(addr).await?;
    // One byte every 100 ms each: never idle for long, but about 10 B/s.
    let started = std::time::Instant::now();
    let trickles: Vec<_> = (0..6)
        .map(|_| tokio::spawn(trickle(addr, Duration::from_millis(100))))
        .collect();
    for t in trickles {
        assert_eq!(t.await??, Some(408), "an upload below the minimum rate");
    }
    eprintln!("408 after {:?}", started.elapsed());
    let canary = canary.finish().await?;
    eprintln!("canary answers: {canary}");
    assert_breaker_closed(&edge, "default").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_uploads_count_as_499_and_leave_the_breaker_closed() -> anyhow::Result<()> {
    let (_origin, edge) = pair(&[], &[]).await?;
    let addr = edge.http()?;
    let canary = Canary::start(addr).await?;
    let head = "POST /upload HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 100000\r\n\r\n";
    for _ in 0..7 {
        let mut s = send(addr, head.as_bytes()).await?;
        s.write_all(&[b'x'; 1000]).await?;
        // Vanish mid-body.
        drop(s);
    }
    wait_until_answered(&edge, "default", 499, 7.0).await?;
    let series = "proxy_errors_total{kind=\"client_closed\",side=\"client\"}";
    assert_eq!(
        edge.metric(series).await?.0,
        Some(7.0),
        "counted as the client's"
    );
    let canary = canary.finish().await?;
    eprintln!("canary answers: {canary}");
    assert_breaker_closed(&edge, "default").await?;
    Ok(())
}

/// Waits until `count` answers with `status` were counted for `backend`.
async fn wait_until_answered(
    edge: &Edge,
    backend: &str,
    status: u16,
    count: f64,
) -> anyhow::Result<()> {
    eventually(&format!("{count} answers {status}"), ANSWER, || async {
        Ok((answered(edge, backend, status).await? >= count).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowing_chunk_sizes_get_400_and_leave_the_breaker_closed() -> anyhow::Result<()> {
    let (_origin, edge) = pair(&[], &[]).await?;
    let addr = edge.http()?;
    let canary = Canary::start(addr).await?;
    for _ in 0..6 {
        // 17 hex digits: more than a u64 holds.
        let mut s = send(addr, CHUNKED_UPLOAD.as_bytes()).await?;
        s.write_all(b"5\r\nhello\r\n11111111111111111\r\nx\r\n0\r\n\r\n")
            .await?;
        assert_eq!(
            status(&mut s).await?,
            Some(400),
            "an overflowing chunk size"
        );
    }
    let canary = canary.finish().await?;
    eprintln!("canary answers: {canary}");
    assert_breaker_closed(&edge, "default").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emfile_on_upstream_connect_is_edges_own_503_not_the_backends() -> anyhow::Result<()> {
    const NOFILE: u64 = 128;
    let origin = Origin::start().await?;
    let mut config = EdgeConfig::new(origin.url())
        .client_setting("max_connections", "100000")
        .client_setting("header_read_timeout", "\"60s\"")
        .client_setting("idle_timeout", "\"60s\"");
    // `/g` and `/slow` go to an HTTP/1.1 pool that has no connection yet: each request there
    // needs a connect. The canary's pool (h2) keeps its one shared connection.
    config.pools.push(PoolConfig {
        name: "guilty".to_owned(),
        endpoints: vec![origin.url()],
        settings: vec![("protocol".to_owned(), "\"h1\"".to_owned())],
    });
    config.routes = vec![
        RouteConfig {
            host: None,
            path_prefix: "/g".to_owned(),
            pool: "guilty".to_owned(),
        },
        RouteConfig {
            host: None,
            path_prefix: "/slow".to_owned(),
            pool: "guilty".to_owned(),
        },
        RouteConfig {
            host: None,
            path_prefix: "/".to_owned(),
            pool: "default".to_owned(),
        },
    ];
    let edge = Edge::start_with_nofile(&config, NOFILE).await?;
    let addr = edge.http()?;
    let canary = Canary::start(addr).await?;
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", edge.pid())).map(|d| d.count());
    // Requests held at the origin until edge has no descriptor left. Idle
    // client connections alone cannot get there: the client cap keeps a
    // reserve of descriptors for upstream connects, so the held requests'
    // own upstream connects use the last ones up, and the connects past that
    // hit EMFILE.
    let exhausted = || edge.log().matches("no local resources").count();
    let mut holders = Vec::new();
    for _ in 0..70 {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /slow/60000 HTTP/1.1\r\nHost: edge.test\r\n\r\n")
            .await?;
        holders.push(s);
    }
    wait_until("upstream connects hitting EMFILE", ANSWER, || {
        exhausted() > 0
    })
    .await?;
    let canary = canary.finish().await?;
    drop(holders);
    wait_until("descriptors freed", ANSWER, || {
        fds().is_ok_and(|n| (n as u64) < NOFILE - 16)
    })
    .await?;
    // Right away the same pool serves again: its breaker never opened.
    let mut after = KeepAlive::new(addr);
    let got = after
        .request(&http::Method::GET, "/g/echo", "after")
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_breaker_closed(&edge, "guilty").await?;
    let series = "proxy_errors_total{kind=\"overloaded\",side=\"local\"}";
    let local = edge.metric(series).await?.0.unwrap_or(0.0);
    assert!(local >= 1.0, "counted as edge's own: {local}");
    assert!(answered(&edge, "guilty", 503).await? >= 1.0, "answered 503");
    let (_, text) = edge.metric("proxy_errors_total").await?;
    let blamed: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("proxy_errors_total{") && l.contains("side=\"upstream\""))
        .collect();
    assert!(blamed.is_empty(), "blamed on the backend: {blamed:?}");
    assert!(
        edge.log().contains("side=\"local\"") || edge.log().contains("side=local"),
        "the 503s are logged as edge's own"
    );
    eprintln!("canary answers: {canary}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_limit_gets_413_before_any_byte_is_read() -> anyhow::Result<()> {
    let (origin, edge) = pair(&[("max_body_bytes", "1000")], &[]).await?;
    let addr = edge.http()?;
    let head = "POST /upload HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 1001\r\n\r\n";
    let mut s = send(addr, head.as_bytes()).await?;
    assert_eq!(status(&mut s).await?, Some(413));
    assert_eq!(origin.requests(), 0, "the origin never saw it");
    // At the limit it passes.
    let body = "x".repeat(1000);
    let ok =
        format!("POST /upload HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 1000\r\n\r\n{body}");
    let mut s = send(addr, ok.as_bytes()).await?;
    assert_eq!(status(&mut s).await?, Some(200));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_crossing_the_limit_is_cut_with_413() -> anyhow::Result<()> {
    let (_origin, edge) = pair(&[("max_body_bytes", "1000")], &[]).await?;
    let addr = edge.http()?;
    let canary = Canary::start(addr).await?;
    for _ in 0..6 {
        let mut s = send(addr, CHUNKED_UPLOAD.as_bytes()).await?;
        let chunk = format!("258\r\n{}\r\n", "y".repeat(600));
        s.write_all(chunk.as_bytes()).await?;
        s.write_all(chunk.as_bytes()).await?;
        assert_eq!(
            status(&mut s).await?,
            Some(413),
            "1200 bytes past a 1000 limit"
        );
    }
    let canary = canary.finish().await?;
    eprintln!("canary answers: {canary}");
    assert_breaker_closed(&edge, "default").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_body_crossing_the_limit_is_cut_with_413() -> anyhow::Result<()> {
    let (origin, edge) = pair(&[("max_body_bytes", "1000")], &[]).await?;
    let file = edge.dir.path().join("body.bin");
    std::fs::write(&file, vec![b'z'; 2000])?;
    let url = format!("http://{}/upload", edge.http()?);
    let data = format!("@{}", file.display());
    // No content-length (curl drops it when told to): only the stream tells.
    let args = [
        "--http2-prior-knowledge",
        "-H",
        "Content-Length:",
        "--data-binary",
        data.as_str(),
        url.as_str(),
    ];
    let response = curl(&args).await?;
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(response.header("x-request-id").is_some());
    // The head went upstream before the body crossed the limit (a declared
    // length would have been refused before that).
    assert_eq!(origin.requests(), 1, "cut in the stream, not by a length");
    assert_breaker_closed(&edge, "default").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h3_body_crossing_the_limit_is_cut_with_413() -> anyhow::Result<()> {
    let (origin, edge) = pair(&[("max_body_bytes", "1000")], &[]).await?;
    // aioquic sends the body with no content-length: only the stream tells.
    let spec = serde_json::json!([
        { "method": "POST", "path": "/upload", "body_bytes": 2000 },
        { "method": "POST", "path": "/upload", "body_bytes": 1000 },
    ]);
    let out = edge_tests::h3_requests(&edge, &spec).await?;
    assert_eq!(out[0]["status"], 413, "{out}");
    assert_eq!(out[1]["status"], 200, "{out}");
    assert_eq!(out[1]["body"], "1000", "{out}");
    assert!(origin.requests() >= 1);
    assert_breaker_closed(&edge, "default").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_sets_its_own_body_limit() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let mut config = EdgeConfig::new(origin.url());
    config.routes = vec![
        RouteConfig {
            host: None,
            path_prefix: "/small".to_owned(),
            pool: "default".to_owned(),
        },
        RouteConfig {
            host: None,
            path_prefix: "/".to_owned(),
            pool: "default".to_owned(),
        },
    ];
    let dir = tempfile::tempdir()?;
    let pki = edge_tests::Pki::generate(dir.path())?;
    let toml = config.to_toml(&pki).replace(
        "path_prefix = \"/small\"\n",
        "path_prefix = \"/small\"\nmax_body_bytes = 10\n",
    );
    let edge = Edge::start_with_toml(dir, pki, &toml).await?;
    let addr = edge.http()?;
    let post = |path: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 11\r\n\r\nhello world")
    };
    let mut s = send(addr, post("/small/upload").as_bytes()).await?;
    assert_eq!(
        status(&mut s).await?,
        Some(413),
        "over the route's 10 bytes"
    );
    let mut s = send(addr, post("/upload").as_bytes()).await?;
    assert_eq!(
        status(&mut s).await?,
        Some(200),
        "other routes keep the 1 GiB default"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_starts_once_the_body_is_sent() -> anyhow::Result<()> {
    let (origin, edge) = pair(&[], &[("response_timeout", "\"1s\"")]).await?;
    let addr = edge.http()?;
    // A legitimate slow upload: 10 chunks 300 ms apart, 3 s in all, three times
    // the response timeout; the origin answers as soon as the body is complete.
    let mut s = send(addr, CHUNKED_UPLOAD.as_bytes()).await?;
    for _ in 0..10 {
        s.write_all(b"3\r\nabc\r\n").await?;
        tokio::time::sleep(Duration::from_millis(300)).await; // the uploader's pace
    }
    s.write_all(b"0\r\n\r\n").await?;
    assert_eq!(
        status(&mut s).await?,
        Some(200),
        "a slow upload is not a slow backend"
    );
    assert_eq!(origin.requests(), 1);
    assert_breaker_closed(&edge, "default").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_the_connections_certificate_does_not_cover_gets_421() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = edge_tests::Pki::generate(dir.path())?;
    let a = pki.issue_leaf(dir.path(), "a", &["a.test", "*.a.test"])?;
    let b = pki.issue_leaf(dir.path(), "b", &["b.test"])?;
    let config = EdgeConfig::new(origin.url()).certificate(a).certificate(b);
    let edge = Edge::start_with_pki(dir, pki, &config).await?;
    let port = edge.https_addr.port();
    let ca = edge.pki.ca_cert.to_string_lossy().into_owned();
    let as_a = |host: &str| {
        vec![
            "--cacert".to_owned(),
            ca.clone(),
            "--resolve".to_owned(),
            format!("a.test:{port}:127.0.0.1"),
            "-H".to_owned(),
            format!("Host: {host}"),
            format!("https://a.test:{port}/echo"),
        ]
    };
    for (host, expected) in [
        ("a.test", 200),
        ("www.a.test", 200), // the wildcard: the same certificate vouches for it
        ("b.test", 421),     // another certificate's name
        ("elsewhere.test", 421),
    ] {
        let response = curl(&as_a(host)).await?;
        assert_eq!(response.status, expected, "SNI a.test, Host {host}");
        if expected == 421 {
            assert!(response.header("x-request-id").is_some());
        }
    }
    assert_eq!(
        origin.requests(),
        2,
        "no misdirected request reached the origin"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connections_per_endpoint_are_capped() -> anyhow::Result<()> {
    let (origin, edge) = pair(
        &[],
        &[
            ("protocol", "\"h1\""),
            ("max_connections_per_endpoint", "4"),
            ("connection_queue", "1000"),
            ("connection_queue_timeout", "\"10s\""),
        ],
    )
    .await?;
    let addr = edge.http()?;
    let request = |path: &'static str, id: String| async move {
        let mut c = KeepAlive::new(addr);
        c.request(&http::Method::GET, path, &id)
            .await
            .map(|r| r.status.as_u16())
    };
    // Four slow requests hold every connection the endpoint may have...
    let holders: Vec<_> = (0..4)
        .map(|i| tokio::spawn(request("/slow/2000", format!("hold-{i}"))))
        .collect();
    wait_until("the four connections open", ANSWER, || {
        origin.connections() == 4
    })
    .await?;
    // ...then 200 clients start requests and give up after 100 ms. Before the
    // cap, each opened its own upstream connection (and left it to the origin).
    let cancelled: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(tokio::time::timeout(
                Duration::from_millis(100),
                request("/slow/2000", format!("gone-{i}")),
            ))
        })
        .collect();
    for c in cancelled {
        assert!(c.await?.is_err(), "a queued request gave up");
    }
    for h in holders {
        assert_eq!(h.await?, Ok(200));
    }
    assert_eq!(
        origin.connections(),
        4,
        "no connection for a cancelled request"
    );
    // Then 20 at once that wait for their answers: all served, 4 at a time.
    let waiting: Vec<_> = (0..20)
        .map(|i| tokio::spawn(request("/slow/100", format!("w-{i}"))))
        .collect();
    for w in waiting {
        assert_eq!(w.await?, Ok(200));
    }
    assert!(
        origin.peak_connections() <= 4,
        "origin had {} connections open at once for a cap of 4",
        origin.peak_connections()
    );
    eprintln!(
        "origin connections: {} in all, at most {} at once",
        origin.connections(),
        origin.peak_connections()
    );
    assert_breaker_closed(&edge, "default").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_queue_requests_get_503_with_retry_after() -> anyhow::Result<()> {
    let (origin, edge) = pair(
        &[],
        &[
            ("protocol", "\"h1\""),
            ("max_connections_per_endpoint", "2"),
            ("connection_queue", "2"),
            ("connection_queue_timeout", "\"200ms\""),
        ],
    )
    .await?;
    let addr = edge.http()?;
    let mut all = Vec::new();
    for _ in 0..10 {
        all.push(tokio::spawn(async move {
            let mut s = send(addr, b"GET /slow/1500 HTTP/1.1\r\nHost: edge.test\r\n\r\n").await?;
            let mut got = Vec::new();
            let _ = tokio::time::timeout(ANSWER, async {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            anyhow::Ok(String::from_utf8_lossy(&got).into_owned())
        }));
    }
    let mut ok = 0;
    let mut shed = 0;
    for a in all {
        let head = a.await??.to_ascii_lowercase();
        if head.starts_with("http/1.1 200") {
            ok += 1;
        } else if head.starts_with("http/1.1 503") {
            assert!(head.contains("retry-after: 1"), "{head}");
            shed += 1;
        } else {
            panic!("unexpected answer: {head:?}");
        }
    }
    eprintln!("queue: {ok} served, {shed} shed with 503");
    assert!(ok >= 2, "the two connections served ({ok} ok, {shed} shed)");
    assert!(
        shed >= 1,
        "past the queue, requests are shed ({ok} ok, {shed} shed)"
    );
    assert!(
        origin.peak_connections() <= 2,
        "{} connections at once",
        origin.peak_connections()
    );
    assert_breaker_closed(&edge, "default").await?;
    Ok(())
}

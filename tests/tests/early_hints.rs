//! 103 Early Hints (RFC 8297) from the origin reach HTTP/1.1, HTTP/2 and
//! HTTP/3 clients before the final response, directly and through a second
//! edge over h2c and over h3; never an HTTP/1.0 client, and per route only the
//! clients `early_hints` names. The origin holds its final answer until the
//! test has seen the 103 at the client, so a hint that was only written out
//! with the final response fails the test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use edge_tests::clients::py_script;
use edge_tests::process::python;
use edge_tests::{
    assert_check_refuses, curl, h3_requests_streaming, raw_http, toml_path, toml_str, Edge,
    EdgeConfig, Streaming, REQUEST_TIMEOUT,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// The origin's interim answer: a Link to preload, and a hop-by-hop field
/// (named by its Connection) that must not pass.
const HINT: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\
    Connection: x-hop\r\nX-Hop: 1\r\n\r\n";
const FINAL: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: no-store\r\n\r\nfinal";
const LINK: &str = "</style.css>; rel=preload; as=style";

/// An HTTP/1.1 origin answering every request with its interim bytes
/// ([`HINT`] unless told) at once and then [`FINAL`], each final only once the
/// test releases one.
struct HintOrigin {
    addr: SocketAddr,
    release: Arc<Semaphore>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HintOrigin {
    async fn start() -> anyhow::Result<Self> {
        Self::start_with(HINT.to_vec()).await
    }

    async fn start_with(interim: Vec<u8>) -> anyhow::Result<Self> {
        let interim: Arc<[u8]> = interim.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let release = Arc::new(Semaphore::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (gate, count) = (release.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, interim.clone(), gate.clone(), count.clone()));
            }
        });
        Ok(Self {
            addr,
            release,
            requests,
            task,
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Lets one held (or the next) final response go.
    fn release(&self) {
        self.release.add_permits(1);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HintOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    interim: Arc<[u8]>,
    release: Arc<Semaphore>,
    requests: Arc<AtomicUsize>,
) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            requests.fetch_add(1, Ordering::SeqCst);
            if stream.write_all(&interim).await.is_err() {
                return;
            }
            match release.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return,
            }
            if stream.write_all(FINAL).await.is_err() {
                return;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// edge in front of `origin` (HTTP/1.1 to it), with `early_hints` on its route
/// when given.
async fn edge_over(origin: &HintOrigin, early_hints: Option<&str>) -> anyhow::Result<Edge> {
    let mut config = EdgeConfig::new(origin.url()).protocol("h1");
    if let Some(policy) = early_hints {
        config = config.route_setting("early_hints", &toml_str(policy));
    }
    Edge::start(&config).await
}

/// What an HTTP/1.1 client reads: the 103's head (before the origin is let
/// go: it holds the final response until then), then the rest.
async fn h1_hint_then_final(
    to: SocketAddr,
    origin: &HintOrigin,
) -> anyhow::Result<(String, String)> {
    let mut stream = TcpStream::connect(to).await?;
    let request = format!(
        "GET /page HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
        to.port()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let exchange = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(
                n > 0,
                "closed before a head: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        let (hint, early_rest) = text.split_once("\r\n\r\n").unwrap_or_default();
        let hint = hint.to_owned();
        anyhow::ensure!(
            early_rest.is_empty(),
            "more than the 103 before release: {text:?}"
        );
        origin.release();
        let mut rest = Vec::new();
        while !rest.ends_with(b"final") {
            let n = stream.read(&mut buf).await?;
            anyhow::ensure!(
                n > 0,
                "closed before the body: {:?}",
                String::from_utf8_lossy(&rest)
            );
            rest.extend_from_slice(&buf[..n]);
        }
        Ok((hint, String::from_utf8_lossy(&rest).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await?
}

/// The 103's head carries the origin's Link and not its hop-by-hop field.
fn assert_hint(head: &str, status_line: &str) {
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.starts_with(status_line),
        "not a {status_line:?}: {head:?}"
    );
    assert!(
        lower.contains(&format!("link: {LINK}")),
        "no Link: {head:?}"
    );
    assert!(
        !lower.contains("x-hop"),
        "a hop-by-hop field passed: {head:?}"
    );
}

/// The final response: a 200 with the body, none of the 103's fields mixed in.
fn assert_final(rest: &str, status_line: &str) {
    let lower = rest.to_ascii_lowercase();
    assert!(lower.starts_with(status_line), "final: {rest:?}");
    assert!(
        !lower.contains("link:"),
        "the 103's Link in the final head: {rest:?}"
    );
    assert!(rest.ends_with("final"), "final body: {rest:?}");
}

/// Python h2 to edge (over TLS, or h2c), printing each head as it comes.
fn h2_client(e: &Edge, tls: bool) -> anyhow::Result<Streaming> {
    let mut args = vec![
        py_script("h2_heads.py").to_string_lossy().into_owned(),
        "--path".into(),
        "/page".into(),
    ];
    if tls {
        args.extend([
            "--tls".into(),
            "--ca".into(),
            e.pki.ca_cert.to_string_lossy().into_owned(),
            "--port".into(),
            e.https_addr.port().to_string(),
        ]);
    } else {
        args.extend(["--port".into(), e.http()?.port().to_string()]);
    }
    Streaming::spawn(&python().to_string_lossy(), &args)
}

/// A client printing one JSON line per response head (h2_heads.py,
/// h3_requests.py --print-heads): the 103's (awaited before the origin is let
/// go), then every line after it.
async fn hint_then_rest(
    mut client: Streaming,
    origin: &HintOrigin,
) -> anyhow::Result<(Value, Vec<Value>)> {
    let heads = client.until(|l| l.contains("\"head\": 103")).await?;
    anyhow::ensure!(heads.len() == 1, "a head before the 103: {heads:?}");
    origin.release();
    let hint = serde_json::from_str(&heads[0])?;
    let rest = client
        .rest()
        .await?
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    Ok((hint, rest))
}

fn fields(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| Some((h[0].as_str()?.to_owned(), h[1].as_str()?.to_owned())))
        .collect()
}

/// Interim head fields with the origin's Link and not its hop-by-hop field.
fn assert_hint_fields(headers: &Value) {
    let hint = fields(headers);
    assert!(
        hint.contains(&("link".to_owned(), LINK.to_owned())),
        "{headers}"
    );
    assert!(!hint.iter().any(|(n, _)| n == "x-hop"), "{headers}");
}

/// A 103 head line as the clients print it.
fn assert_json_hint(hint: &Value) {
    assert_eq!(hint["head"], 103, "{hint}");
    assert_hint_fields(&hint["headers"]);
}

/// After the 103: the final head (a 200 without the 103's fields), then the
/// client's closing line, returned.
fn assert_json_final(rest: &[Value]) -> Value {
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert_eq!(rest[0]["head"], 200, "{rest:?}");
    let link = fields(&rest[0]["headers"]).iter().any(|(n, _)| n == "link");
    assert!(!link, "the 103's Link in the final head: {rest:?}");
    rest[1].clone()
}

async fn hints_passed(e: &Edge, protocol: &str) -> anyhow::Result<f64> {
    let series = format!("proxy_early_hints_total{{protocol=\"{protocol}\"}}");
    Ok(e.metric(&series).await?.0.unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_clients_get_the_103_before_the_final_response_and_http10_clients_none(
) -> anyhow::Result<()> {
    let origin = HintOrigin::start().await?;
    let e = edge_over(&origin, None).await?;
    // Twice on one connection would need keep-alive framing around a 1xx; two
    // connections show each request gets its own.
    for round in 0..2 {
        let (hint, rest) = h1_hint_then_final(e.http()?, &origin).await?;
        assert_hint(&hint, "http/1.1 103");
        assert_final(&rest, "http/1.1 200");
        assert_eq!(hints_passed(&e, "h1").await?, f64::from(round + 1));
    }
    // HTTP/1.0 has no interim responses (RFC 9110 15.2): the final only.
    origin.release();
    let request = format!(
        "GET /page HTTP/1.0\r\nHost: 127.0.0.1:{}\r\n\r\n",
        e.http()?.port()
    );
    let answer = raw_http(e.http()?, &request).await?;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer:?}");
    assert!(!answer.contains("103"), "{answer:?}");
    assert_eq!(origin.requests(), 3);
    assert_eq!(hints_passed(&e, "h1").await?, 2.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_clients_get_the_103_before_the_final_response_over_tls_and_h2c() -> anyhow::Result<()> {
    let origin = HintOrigin::start().await?;
    let e = edge_over(&origin, None).await?;
    for tls in [true, false] {
        let (hint, rest) = hint_then_rest(h2_client(&e, tls)?, &origin).await?;
        assert_json_hint(&hint);
        let end = assert_json_final(&rest);
        assert_eq!(end["body"], "final", "tls {tls}: {end}");
    }
    assert_eq!(hints_passed(&e, "h2").await?, 2.0);
    Ok(())
}

/// Through aioquic: the 103 head line (printed as it arrives), the final
/// head, and the results, whose `interim` holds the 103.
async fn assert_h3_hint_then_final(e: &Edge, origin: &HintOrigin) -> anyhow::Result<()> {
    let spec = serde_json::json!([{"method": "GET", "path": "/page"}]);
    let (hint, rest) = hint_then_rest(h3_requests_streaming(e, &spec)?, origin).await?;
    assert_json_hint(&hint);
    let results = assert_json_final(&rest);
    let r = &results[0];
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"], "final", "{r}");
    assert_eq!(r["interim"].as_array().map(Vec::len), Some(1), "{r}");
    assert_eq!(r["interim"][0]["status"], 103, "{r}");
    assert_hint_fields(&r["interim"][0]["headers"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_clients_get_the_103_before_the_final_response() -> anyhow::Result<()> {
    let origin = HintOrigin::start().await?;
    let e = edge_over(&origin, None).await?;
    assert_h3_hint_then_final(&e, &origin).await?;
    assert_eq!(hints_passed(&e, "h3").await?, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_pass_through_a_second_edge_over_h2c_and_over_h3() -> anyhow::Result<()> {
    let origin = HintOrigin::start().await?;
    let back = edge_over(&origin, None).await?;
    // Front → back over h2c (the pool's default protocol): hyper's HTTP/2
    // client hands the 1xx on, and the back edge's HTTP/2 server sent it.
    let front = Edge::start(&EdgeConfig::new(format!("http://{}", back.http()?))).await?;
    let (hint, rest) = h1_hint_then_final(front.http()?, &origin).await?;
    assert_hint(&hint, "http/1.1 103");
    assert_final(&rest, "http/1.1 200");
    assert_eq!(hints_passed(&back, "h2").await?, 1.0, "back edge over h2c");
    // Front → back over HTTP/3: the exchange reads the 103's HEADERS frame
    // and waits for the final one (it used to take the 103 for the answer).
    let config = EdgeConfig::new(format!("https://localhost:{}", back.h3_addr.port()))
        .protocol("h3")
        .pool_setting("ca", &toml_path(&back.pki.ca_cert));
    let front = Edge::start(&config).await?;
    assert_h3_hint_then_final(&front, &origin).await?;
    assert_eq!(hints_passed(&back, "h3").await?, 1.0, "back edge over h3");
    let (fallbacks, _) = front
        .metric(r#"proxy_upstream_h3_fallbacks_total{backend="default"}"#)
        .await?;
    assert_eq!(
        fallbacks.unwrap_or(0.0),
        0.0,
        "the front edge fell back to TCP"
    );
    Ok(())
}

/// An HTTP/1.1 request answered at once (the origin let go first): no 103.
async fn h1_without_hint(e: &Edge, origin: &HintOrigin) -> anyhow::Result<()> {
    origin.release();
    let request = format!(
        "GET /page HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        e.http()?.port()
    );
    let answer = raw_http(e.http()?, &request).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("final"), "{answer:?}");
    Ok(())
}

/// The heads and closing line of an HTTP/2 request answered at once.
async fn h2_at_once(e: &Edge, origin: &HintOrigin) -> anyhow::Result<Vec<Value>> {
    origin.release();
    let lines = h2_client(e, true)?.rest().await?;
    Ok(lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?)
}

/// An HTTP/2 request answered at once: the final head only.
async fn h2_without_hint(e: &Edge, origin: &HintOrigin) -> anyhow::Result<()> {
    let heads = h2_at_once(e, origin).await?;
    assert_eq!(assert_json_final(&heads)["body"], "final");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_passes_hints_only_to_the_clients_its_early_hints_names() -> anyhow::Result<()> {
    let origin = HintOrigin::start().await?;
    // h2_and_h3: an HTTP/1.1 client gets none, an HTTP/2 one does.
    let e = edge_over(&origin, Some("h2_and_h3")).await?;
    h1_without_hint(&e, &origin).await?;
    let (hint, rest) = hint_then_rest(h2_client(&e, true)?, &origin).await?;
    assert_json_hint(&hint);
    assert_json_final(&rest);
    let config = curl(&[format!("http://{}/config", e.admin()?)])
        .await?
        .json()?;
    let route = &config["config"]["routes"][0];
    assert_eq!(route["early_hints"], "h2_and_h3", "{route}");
    // off: nobody.
    let e = edge_over(&origin, Some("off")).await?;
    h2_without_hint(&e, &origin).await?;
    assert_eq!(hints_passed(&e, "h2").await?, 0.0);
    assert_eq!(origin.requests(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_early_hints_policy_is_refused_with_its_line() -> anyhow::Result<()> {
    let toml = [
        "listen = \"127.0.0.1:0\"",             // 1
        "[[routes]]",                           // 2
        "pool = \"default\"",                   // 3
        "early_hints = \"sometimes\"",          // 4
        "[pools.default]",                      // 5
        "endpoints = [\"http://127.0.0.1:9\"]", // 6
    ];
    let reason = "\"sometimes\" is not one of";
    assert_check_refuses(&toml, &[(4, "routes[0].early_hints", reason)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_flooding_103s_gets_eight_per_request_through_and_oversized_ones_none(
) -> anyhow::Result<()> {
    // 1,000 hints of 1 KiB before the final answer.
    let one = format!(
        "HTTP/1.1 103 Early Hints\r\nLink: </{}.css>; rel=preload\r\n\r\n",
        "a".repeat(1000)
    );
    let origin = HintOrigin::start_with(one.repeat(1000).into_bytes()).await?;
    let e = edge_over(&origin, None).await?;
    origin.release();
    let request = format!(
        "GET /page HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        e.http()?.port()
    );
    let answer = raw_http(e.http()?, &request).await?;
    assert_eq!(answer.matches("HTTP/1.1 103 ").count(), 8, "h1");
    assert!(answer.ends_with("final"), "h1 final: {}", answer.len());
    let heads = h2_at_once(&e, &origin).await?;
    let hints = heads.iter().filter(|h| h["head"] == 103).count();
    assert_eq!(hints, 8, "h2");
    assert_eq!(
        heads.last().map(|l| &l["body"]),
        Some(&Value::from("final"))
    );
    origin.release();
    let spec = serde_json::json!([{"method": "GET", "path": "/page"}]);
    let r = &edge_tests::h3_requests(&e, &spec).await?[0];
    assert_eq!(r["interim"].as_array().map(Vec::len), Some(8), "h3");
    assert_eq!(r["body"], "final", "h3");
    for protocol in ["h1", "h2", "h3"] {
        assert_eq!(hints_passed(&e, protocol).await?, 8.0, "{protocol}");
    }
    // One hint past 8 KiB of fields is dropped whole; the answer is not.
    let big = format!(
        "HTTP/1.1 103 Early Hints\r\nLink: </{}.css>; rel=preload\r\n\r\n",
        "b".repeat(9 * 1024)
    );
    let origin = HintOrigin::start_with(big.into_bytes()).await?;
    let e = edge_over(&origin, None).await?;
    h1_without_hint(&e, &origin).await?;
    h2_without_hint(&e, &origin).await?;
    Ok(())
}

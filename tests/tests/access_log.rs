//! The access log against the real binary: one JSON line per request on h1,
//! h2 and h3, with what edge decided (pool, endpoint, tries, sticky, rate limit, its own
//! error) and measured (bytes both ways, time to head and to the last byte);
//! hostile header values stay inside their JSON string; a response the client
//! abandons is logged as incomplete; SIGUSR1 reopens the file after a rotation;
//! `text` goes to stdout.

use std::time::Duration;

use edge_tests::clients::{curl, tls_args};
use edge_tests::scripted::{fetch, get, Reply, Scripted};
use edge_tests::{eventually, Edge, EdgeConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DEADLINE: Duration = Duration::from_secs(10);

/// The JSON lines of `path` so far (each must parse).
fn lines(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits for the line whose request id is `id`.
async fn line_of(path: &std::path::Path, id: &str) -> anyhow::Result<serde_json::Value> {
    eventually(&format!("access line of {id}"), DEADLINE, || async {
        Ok(lines(path)?.into_iter().find(|l| l["request_id"] == id))
    })
    .await
}

fn big_or_small(seen: &edge_tests::scripted::Seen) -> Reply {
    if seen.target.starts_with("/big") {
        Reply::ok(&[], vec![b'x'; 8 << 20])
    } else {
        Reply::ok(&[("cache-status", "origin; fwd=uri-miss")], "hello")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_json_line_with_what_edge_decided() -> anyhow::Result<()> {
    let origin = Scripted::start(big_or_small).await?;
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .pool_setting("sticky", "{}")
        .section("[log]\naccess = \"json\"\naccess_file = \"access.log\"\n")
        .section("[[rate_limits]]\nname = \"tight\"\npath_prefix = \"/limited\"\nkey = \"route\"\nrate = \"1/m\"\nburst = 1\n");
    let edge = Edge::start(&config).await?;
    let file = edge.dir.path().join("access.log");
    let addr = edge.http()?;

    // h1 GET with a query and a hostile User-Agent.
    let ua = "evil\" \\ \tagent";
    let got = get(addr, "/a/b?x=1", &[("user-agent", ua)]).await?;
    assert_eq!(got.status, 200);
    let id = got.header("x-request-id").unwrap_or_default().to_owned();
    let l = line_of(&file, &id).await?;
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/a/b?x=1");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["status"], 200);
    assert_eq!(l["user_agent"], ua, "the value survives, escaped: {l}");
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["pool"], "default");
    assert_eq!(l["endpoint"], origin.url());
    assert_eq!(l["tries"], 1);
    assert_eq!(l["response_bytes"], 5);
    assert_eq!(l["sticky"], "new");
    assert_eq!(l["cache"], "origin; fwd=uri-miss");
    assert_eq!(l["incomplete"], false);
    let head = l["head_ms"].as_f64().unwrap_or(-1.0);
    let total = l["duration_ms"].as_f64().unwrap_or(-1.0);
    assert!(head >= 0.0 && total >= head, "head {head} ≤ total {total}");
    assert!(
        l["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "{l}"
    );

    // h1 POST: the request body's bytes are counted.
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut post = b"POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n\
        x-request-id: post-1\r\nconnection: close\r\n\r\n"
        .to_vec();
    post.extend([b'b'; 1000]);
    s.write_all(&post).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut answer)).await??;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let l = line_of(&file, "post-1").await?;
    assert_eq!(l["method"], "POST");
    assert_eq!(l["request_bytes"], 1000, "{l}");

    // A rate limit refusal names its rule; edge's own error names its kind.
    for _ in 0..2 {
        get(addr, "/limited", &[]).await?;
    }
    let refused = get(addr, "/limited", &[]).await?;
    assert_eq!(refused.status, 429);
    let l = line_of(&file, refused.header("x-request-id").unwrap_or_default()).await?;
    assert_eq!(l["limited"], "tight", "{l}");
    let bad = fetch(addr, "GET", "bad host!", "/", &[]).await?;
    assert_eq!(bad.status, 400);
    let l = line_of(&file, bad.header("x-request-id").unwrap_or_default()).await?;
    assert_eq!(l["status"], 400);
    assert!(l["error"].as_str().is_some_and(|e| !e.is_empty()), "{l}");
    assert_eq!(l["endpoint"], "", "never reached a backend");

    // h2 over TLS.
    let mut args = tls_args(&edge);
    args.extend([
        "--http2".to_owned(),
        "-A".to_owned(),
        "h2-client".to_owned(),
        edge.https_origin() + "/h2",
    ]);
    let got = curl(&args).await?;
    assert_eq!(got.status, 200);
    let l = line_of(&file, got.header("x-request-id").unwrap_or_default()).await?;
    assert_eq!(l["protocol"], "HTTP/2");
    assert_eq!(l["tls"], "yes");
    assert_eq!(l["user_agent"], "h2-client");

    // h3 (aioquic).
    let spec = serde_json::json!([{"path": "/h3", "headers": [["x-request-id", "h3-1"]]}]);
    let results = edge_tests::h3_requests(&edge, &spec).await?;
    assert_eq!(results[0]["status"], 200, "{results}");
    let l = line_of(&file, "h3-1").await?;
    assert_eq!(l["protocol"], "HTTP/3");
    assert_eq!(l["tls"], "yes");
    assert_eq!(l["response_bytes"], 5);

    // A client that reads the head of an 8 MiB answer and goes away.
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /big HTTP/1.1\r\nhost: localhost\r\nx-request-id: abandoned-1\r\n\r\n")
        .await?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await?;
    assert!(n > 0);
    drop(s);
    let l = line_of(&file, "abandoned-1").await?;
    assert_eq!(l["incomplete"], true, "{l}");
    assert!(
        l["response_bytes"].as_u64().is_some_and(|b| b < 8 << 20),
        "{l}"
    );

    // Every line is one JSON object, one per request.
    let all = lines(&file)?;
    assert_eq!(all.len(), 9, "{all:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_a_rotation() -> anyhow::Result<()> {
    let origin = Scripted::start(big_or_small).await?;
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .section("[log]\naccess = \"json\"\naccess_file = \"access.log\"\n");
    let edge = Edge::start(&config).await?;
    let file = edge.dir.path().join("access.log");
    let rotated = edge.dir.path().join("access.log.1");
    let addr = edge.http()?;
    let got = get(addr, "/before", &[("x-request-id", "before-1")]).await?;
    assert_eq!(got.status, 200);
    line_of(&file, "before-1").await?;
    std::fs::rename(&file, &rotated)?;
    let status = std::process::Command::new("kill")
        .args(["-USR1", &edge.pid().to_string()])
        .status()?;
    assert!(status.success());
    eventually("the reopen logged", DEADLINE, || async {
        Ok(edge
            .log()
            .contains("reopening the access log")
            .then_some(()))
    })
    .await?;
    // The writer reopens before its next line: the next request lands in the
    // new file, the old one keeps what it had.
    get(addr, "/after", &[("x-request-id", "after-1")]).await?;
    line_of(&file, "after-1").await?;
    let old = lines(&rotated)?;
    assert_eq!(old.len(), 1);
    assert_eq!(old[0]["request_id"], "before-1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_go_to_stdout() -> anyhow::Result<()> {
    let origin = Scripted::start(big_or_small).await?;
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .section("[log]\naccess = \"text\"\n");
    let edge = Edge::start(&config).await?;
    let got = get(edge.http()?, "/t", &[("x-request-id", "text-1")]).await?;
    assert_eq!(got.status, 200);
    eventually("the text line on stdout", DEADLINE, || async {
        Ok(edge
            .log()
            .lines()
            .find(|l| l.contains("id=text-1"))
            .map(str::to_owned))
    })
    .await
    .and_then(|line| {
        anyhow::ensure!(line.starts_with("127.0.0.1 - - ["), "{line}");
        anyhow::ensure!(line.contains("\"GET /t HTTP/1.1\" 200 5 "), "{line}");
        anyhow::ensure!(line.contains(" pool=default "), "{line}");
        Ok(())
    })
}

//! W3C Trace Context through the real binary: a client's valid `traceparent`
//! is continued (same trace id and flags, edge's span as the new parent,
//! `tracestate` kept), an absent or malformed one starts a trace (and drops the
//! orphaned `tracestate`), on h1, h2 and h3; the trace id is on edge's error
//! pages and in the access log.

use std::time::Duration;

use edge_tests::scripted::{get, Reply, Scripted};
use edge_tests::{curl, eventually, h3_requests, tls_args, Edge, EdgeConfig};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// An origin answering with the trace headers it received, as JSON.
async fn origin() -> anyhow::Result<Scripted> {
    Scripted::start(|seen| {
        let body = serde_json::json!({
            "traceparent": seen.header("traceparent"),
            "tracestate": seen.header("tracestate"),
        });
        Reply::ok(&[], body.to_string())
    })
    .await
}

/// `version-trace-parent-flags` split; panics on a malformed value.
fn parts(traceparent: &serde_json::Value) -> Vec<String> {
    let v = traceparent.as_str().unwrap_or_default();
    let p: Vec<String> = v.split('-').map(str::to_owned).collect();
    assert_eq!(p.len(), 4, "{v}");
    assert_eq!(
        (p[0].len(), p[1].len(), p[2].len(), p[3].len()),
        (2, 32, 16, 2),
        "{v}"
    );
    assert!(v
        .bytes()
        .all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_traceparent_is_continued_on_h1_h2_and_h3() -> anyhow::Result<()> {
    let origin = origin().await?;
    let edge = Edge::start(&EdgeConfig::new(origin.url()).protocol("h1")).await?;

    let got = get(
        edge.http()?,
        "/",
        &[("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await?;
    let seen: serde_json::Value = serde_json::from_slice(&got.body)?;
    let p = parts(&seen["traceparent"]);
    assert_eq!(p[1], TRACE, "trace id kept");
    assert_ne!(
        p[2], "00f067aa0ba902b7",
        "edge's span is the origin's parent"
    );
    assert_eq!(p[3], "01");
    assert_eq!(seen["tracestate"], "congo=t61rcWkgMzE");

    // h2 over TLS (curl), unsampled: the flag is kept.
    let unsampled = PARENT.replace("-01", "-00");
    let mut args = tls_args(&edge);
    args.extend([
        "--http2".to_owned(),
        "-H".to_owned(),
        format!("traceparent: {unsampled}"),
        format!("{}/", edge.https_origin()),
    ]);
    let r = curl(&args).await?;
    assert_eq!(r.http_version, "2");
    let seen: serde_json::Value = serde_json::from_slice(&r.body)?;
    let p = parts(&seen["traceparent"]);
    assert_eq!((p[1].as_str(), p[3].as_str()), (TRACE, "00"));

    // h3.
    let spec = serde_json::json!([{ "path": "/", "headers": [["traceparent", PARENT]] }]);
    let results = h3_requests(&edge, &spec).await?;
    let seen: serde_json::Value =
        serde_json::from_str(results[0]["body"].as_str().unwrap_or_default())?;
    assert_eq!(parts(&seen["traceparent"])[1], TRACE, "{results}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absent_or_malformed_traceparent_starts_a_trace() -> anyhow::Result<()> {
    let origin = origin().await?;
    let edge = Edge::start(&EdgeConfig::new(origin.url()).protocol("h1")).await?;
    let mut ids = Vec::new();
    for headers in [
        vec![],
        vec![
            (
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            ("tracestate", "orphan=1"),
        ],
        vec![("traceparent", "garbage"), ("tracestate", "orphan=1")],
    ] {
        let got = get(edge.http()?, "/", &headers).await?;
        let seen: serde_json::Value = serde_json::from_slice(&got.body)?;
        let p = parts(&seen["traceparent"]);
        assert_eq!(
            (p[0].as_str(), p[3].as_str()),
            ("00", "01"),
            "a started trace is sampled"
        );
        assert_ne!(p[1], "0".repeat(32));
        assert!(
            seen["tracestate"].is_null(),
            "orphaned tracestate passed: {seen}"
        );
        ids.push(p[1].clone());
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "each request its own trace: {ids:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_id_is_on_error_pages_and_in_the_access_log() -> anyhow::Result<()> {
    // A pool whose only endpoint refuses connections: edge's own 502 page.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = EdgeConfig::new(format!("http://{dead}"))
        .protocol("h1")
        .section("[log]\naccess = \"json\"\naccess_file = \"access.log\"\n");
    let edge = Edge::start(&config).await?;
    let got = get(edge.http()?, "/", &[("traceparent", PARENT)]).await?;
    assert!(got.status >= 500, "{}", got.status);
    let page = String::from_utf8_lossy(&got.body);
    assert!(page.contains(&format!("trace id: {TRACE}")), "{page}");

    let id = got.header("x-request-id").unwrap_or_default().to_owned();
    let file = edge.dir.path().join("access.log");
    let line = eventually("the access line", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["request_id"] == id.as_str()))
    })
    .await?;
    assert_eq!(line["trace_id"], TRACE, "{line}");
    Ok(())
}

/// Values new on every request (the request id, the traceparent) go out as
/// HPACK never-indexed literals on both HTTP/2 sides: indexed, each would
/// evict fields that repeat, on a client's connection and on the upstream
/// connection every client shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_ids_are_never_indexed_in_hpack_on_either_side() -> anyhow::Result<()> {
    const N: usize = 60;
    let origin = edge_tests::clients::PyServer::start("hpack_probe.py").await?;
    let edge = Edge::start(&EdgeConfig::new(origin.url()).protocol("h2")).await?;
    let http = edge.http()?;

    // Downstream: edge's answers on one h2c connection.
    let got = edge_tests::python_json(
        "hpack_probe.py",
        &[
            "client".to_owned(),
            http.ip().to_string(),
            http.port().to_string(),
            format!("--n={N}"),
        ],
        Duration::from_secs(30),
    )
    .await?;
    let answers = got["answers"].as_array().expect("answers");
    assert_eq!(answers.len(), N, "{got}");
    for a in answers {
        assert_eq!(a["status"], "200", "{got}");
        assert!(
            a["never_indexed"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == "x-request-id")),
            "x-request-id indexed in an answer: {got}"
        );
    }
    // Upstream: what the origin saw on edge's pooled connection; the last
    // request came after N others through the same table.
    let last = answers.len();
    let seen = get(http, "/", &[]).await?;
    let seen: serde_json::Value = serde_json::from_slice(&seen.body)?;
    let names = seen["never_indexed"].as_array().expect("names");
    for field in ["x-request-id", "traceparent"] {
        assert!(
            names.iter().any(|n| n == field),
            "{field} indexed upstream after {last} requests: {seen}"
        );
    }
    Ok(())
}

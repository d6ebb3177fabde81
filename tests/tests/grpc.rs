//! gRPC through edge with the real `grpcio` library as both server and client
//! (`tests/py/grpc_check.py`): unary and server-streaming calls over h2c and
//! over TLS (h2), with trailers and `grpc-status` passing intact, and edge's
//! own errors reaching a gRPC client as gRPC statuses, not text pages.

use edge_tests::clients::PyServer;
use edge_tests::{python_json, Edge, EdgeConfig, PYTHON_TIMEOUT};

/// The grpcio server of `grpc_check.py serve`; killed (by its pid) on drop.
async fn call(target: &str, extra: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut args = vec!["call", "--target", target];
    args.extend_from_slice(extra);
    python_json("grpc_check.py", &args, PYTHON_TIMEOUT).await
}

fn assert_calls_intact(seen: &serde_json::Value, over: &str) {
    let echo = &seen["echo"];
    assert_eq!(echo["code"], "OK", "{over}: {seen}");
    assert_eq!(echo["reply"], "hello grpc", "{over}: {seen}");
    assert_eq!(echo["trailers"]["x-trailer"], "echoed", "{over}: {seen}");
    let count = &seen["count"];
    assert_eq!(count["code"], "OK", "{over}: {seen}");
    let messages = count["messages"].as_array().map_or(0, Vec::len);
    assert_eq!(messages, 5, "{over}: {seen}");
    assert_eq!(count["messages"][4], "message 4", "{over}: {seen}");
    assert_eq!(count["trailers"]["x-count"], "5", "{over}: {seen}");
    assert_eq!(seen["fail"]["code"], "NOT_FOUND", "{over}: {seen}");
    assert_eq!(seen["fail"]["details"], "no such thing", "{over}: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_unary_and_streaming_pass_over_h2c_and_tls() -> anyhow::Result<()> {
    let server = PyServer::start("grpc_check.py").await?;
    let edge = Edge::start(&EdgeConfig::new(format!(
        "http://127.0.0.1:{}",
        server.port
    )))
    .await?;
    let h2c = call(&edge.http()?.to_string(), &[]).await?;
    assert_calls_intact(&h2c, "h2c");
    let ca = edge.pki.ca_cert.to_string_lossy().into_owned();
    let tls = call(&edge.https_addr.to_string(), &["--ca", &ca]).await?;
    assert_calls_intact(&tls, "TLS");
    Ok(())
}

/// With the backend gone, edge's 502 reaches the client as a trailers-only
/// answer with grpc-status UNAVAILABLE (14) and edge's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_backend_is_unavailable_to_a_grpc_client() -> anyhow::Result<()> {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let edge = Edge::start(&EdgeConfig::new(format!("http://{closed}"))).await?;
    let ca = edge.pki.ca_cert.to_string_lossy().into_owned();
    for (target, extra) in [
        (edge.http()?.to_string(), vec!["--only", "Echo"]),
        (
            edge.https_addr.to_string(),
            vec!["--only", "Echo", "--ca", &ca],
        ),
    ] {
        let seen = call(&target, &extra).await?;
        assert_eq!(seen["Echo"]["code"], "UNAVAILABLE", "{target}: {seen}");
        let details = seen["Echo"]["details"].as_str().unwrap_or_default();
        assert!(details.contains("(edge, request id "), "{target}: {seen}");
    }
    Ok(())
}

/// A backend slower than `response_timeout`: edge's 504 is DEADLINE_EXCEEDED
/// to the gRPC client (a text page's 504 would read as UNAVAILABLE), while
/// the same edge's other calls pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_timeout_is_deadline_exceeded_to_a_grpc_client() -> anyhow::Result<()> {
    let server = PyServer::start("grpc_check.py").await?;
    let config = EdgeConfig::new(server.url()).pool_setting("response_timeout", "\"500ms\"");
    let edge = Edge::start(&config).await?;
    let seen = call(&edge.http()?.to_string(), &["--only", "Slow"]).await?;
    assert_eq!(seen["Slow"]["code"], "DEADLINE_EXCEEDED", "{seen}");
    let seen = call(&edge.http()?.to_string(), &["--only", "Echo"]).await?;
    assert_eq!(seen["Echo"]["code"], "OK", "{seen}");
    Ok(())
}

/// Past a rate limit, edge's refusal is RESOURCE_EXHAUSTED to a gRPC client,
/// not a 429 text page (which grpcio would read as UNAVAILABLE and retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_resource_exhausted_to_a_grpc_client() -> anyhow::Result<()> {
    let server = PyServer::start("grpc_check.py").await?;
    let config = EdgeConfig::new(server.url())
        .section("[[rate_limits]]\nname = \"grpc\"\nkey = \"route\"\nrate = \"1/m\"\nburst = 1\n");
    let edge = Edge::start(&config).await?;
    let target = edge.http()?.to_string();
    let first = call(&target, &["--only", "Echo"]).await?;
    assert_eq!(first["Echo"]["code"], "OK", "{first}");
    let second = call(&target, &["--only", "Echo"]).await?;
    assert_eq!(second["Echo"]["code"], "RESOURCE_EXHAUSTED", "{second}");
    Ok(())
}

//! TLS 1.3 early data (0-RTT, RFC 8470) with `tls.early_data`: a resumed client
//! sends its request before the handshake is done. Over QUIC (aioquic with a
//! saved session ticket) and over TCP (`openssl s_client -early_data`), a GET
//! so sent reaches the origin marked `Early-Data: 1`; a POST is answered 425 by
//! edge and never reaches it. Off (the default), 0-RTT is refused and the
//! request is served after the handshake, unmarked.

use std::path::Path;
use std::time::Duration;

use edge_tests::scripted::{Reply, Scripted};
use edge_tests::{
    echo_header, h3_requests_with, poll_until, python_json, s_client, Edge, EdgeConfig, KeepAlive,
    Origin, Pki, PYTHON_TIMEOUT,
};
use serde_json::{json, Value};

async fn start(early_data: bool) -> anyhow::Result<(Origin, Edge)> {
    let origin = Origin::start().await?;
    let edge = start_for(&origin.url(), early_data).await?;
    Ok((origin, edge))
}

async fn start_for(origin: &str, early_data: bool) -> anyhow::Result<Edge> {
    let mut config = EdgeConfig::new(origin).protocol("h1");
    if early_data {
        config = config.tls_setting("early_data", "true");
    }
    Edge::start(&config).await
}

/// A first HTTP/3 connection that only fetches a session ticket into `ticket`.
async fn h3_ticket(edge: &Edge, ticket: &Path) -> anyhow::Result<()> {
    let out = h3_requests_with(
        edge,
        &json!([{"path": "/"}]),
        &["--session-out", &ticket.to_string_lossy()],
    )
    .await?;
    assert_eq!(out["results"][0]["status"], 200, "{out}");
    Ok(())
}

/// A second connection resuming with `ticket` that sends `spec` at once: in
/// 0-RTT when the ticket allows it. With `hold`, the client sends nothing more
/// (its Finished included) until a response head arrives.
async fn h3_early(edge: &Edge, ticket: &Path, spec: Value, hold: bool) -> anyhow::Result<Value> {
    let ticket = ticket.to_string_lossy();
    let mut args = vec!["--session-in", &*ticket, "--early"];
    if hold {
        args.push("--hold-finished");
    }
    h3_requests_with(edge, &spec, &args).await
}

fn echoed(result: &Value) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(
        result["body"].as_str().unwrap_or_default(),
    )?)
}

async fn early_count(edge: &Edge, proto: &str, outcome: &str) -> anyhow::Result<f64> {
    let series =
        format!("proxy_early_data_requests_total{{outcome=\"{outcome}\",proto=\"{proto}\"}}");
    Ok(edge.metric(&series).await?.0.unwrap_or(0.0))
}

/// The GET is answered while the client still holds back its Finished: edge
/// served it in 0.5-RTT, from early data, and told the origin so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_in_quic_0rtt_is_forwarded_with_early_data_1() -> anyhow::Result<()> {
    let (origin, edge) = start(true).await?;
    let ticket = edge.dir.path().join("h3.ticket");
    h3_ticket(&edge, &ticket).await?;

    let out = h3_early(&edge, &ticket, json!([{"path": "/echo?early"}]), true).await?;
    assert_eq!(out["handshake"]["session_resumed"], true, "{out}");
    assert_eq!(out["handshake"]["early_data_accepted"], true, "{out}");
    let got = &out["results"][0];
    assert_eq!(got["status"], 200, "{out}");
    let echo = echoed(got)?;
    assert_eq!(echo_header(&echo, "early-data"), ["1"], "{echo}");
    assert_eq!(origin.requests(), 2);
    assert_eq!(early_count(&edge, "h3", "accepted").await?, 1.0);
    Ok(())
}

/// An on-path attacker who captured a client's first flight (ClientHello and
/// a 0-RTT GET) and sends it again gets nothing to the origin: the ticket was
/// good for one resumption, so each replay is a full handshake, 0-RTT refused,
/// that the attacker cannot finish; edge drops it at `tls.handshake_timeout`.
/// (One replay: quinn routes a second one with the same connection id to the
/// first until that one is drained, seconds later.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_0rtt_flight_never_reaches_the_origin() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .tls_setting("early_data", "true")
        .tls_setting("handshake_timeout", "\"1s\"");
    let edge = Edge::start(&config).await?;
    let ticket = edge.dir.path().join("h3.ticket");
    h3_ticket(&edge, &ticket).await?;
    let flight = edge.dir.path().join("flight.json");
    let (ticket, flight) = (ticket.to_string_lossy(), flight.to_string_lossy());
    let args = [
        "--session-in",
        &*ticket,
        "--early",
        "--hold-finished",
        "--record-first-flight",
        &*flight,
    ];
    let out = h3_requests_with(&edge, &json!([{"path": "/echo"}]), &args).await?;
    assert_eq!(out["handshake"]["early_data_accepted"], true, "{out}");
    assert_eq!(out["results"][0]["status"], 200, "{out}");
    assert_eq!(origin.requests(), 2);

    let port = edge.h3_addr.port().to_string();
    let replay = ["--port", &*port, "--datagrams", &*flight, "--times", "1"];
    let replayed = python_json("udp_replay.py", &replay, PYTHON_TIMEOUT).await?;
    assert_eq!(
        replayed["answered"].as_array().map(Vec::len),
        Some(1),
        "{replayed}"
    );
    let timeouts = "proxy_handshake_failures_total{reason=\"timeout\",transport=\"quic\"}";
    poll_until(
        "the replay dropped",
        std::time::Duration::from_secs(10),
        || async {
            edge.metric(timeouts)
                .await
                .is_ok_and(|(v, _)| v == Some(1.0))
        },
    )
    .await?;
    assert_eq!(origin.requests(), 2, "no replay reached the origin");
    assert_eq!(early_count(&edge, "h3", "accepted").await?, 1.0);
    Ok(())
}

/// An origin may refuse early data itself (RFC 8470 5.2): its 425 reaches the
/// client as it sent it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origins_425_to_early_data_is_passed_back() -> anyhow::Result<()> {
    let origin = Scripted::start(|seen| match seen.header("early-data") {
        Some("1") => Reply::new(425, &[("x-refused-by", "origin")], "too early"),
        _ => Reply::ok(&[], "ok"),
    })
    .await?;
    let edge = start_for(&origin.url(), true).await?;
    let ticket = edge.dir.path().join("h3.ticket");
    h3_ticket(&edge, &ticket).await?;

    let out = h3_early(&edge, &ticket, json!([{"path": "/early"}]), true).await?;
    assert_eq!(out["handshake"]["early_data_accepted"], true, "{out}");
    let got = &out["results"][0];
    assert_eq!(got["status"], 425, "{out}");
    assert_eq!(got["body"], "too early", "{out}");
    let refused_by = got["headers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|h| h[0] == "x-refused-by" && h[1] == "origin");
    assert!(refused_by, "{out}");
    assert_eq!(origin.count("/early"), 1);
    assert_eq!(early_count(&edge, "h3", "accepted").await?, 1.0);
    assert_eq!(early_count(&edge, "h3", "too_early").await?, 0.0);
    Ok(())
}

/// A POST in 0-RTT could be a replay: 425 from edge, nothing at the origin;
/// the same POST after the handshake is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_in_quic_0rtt_is_answered_425_and_never_reaches_the_origin() -> anyhow::Result<()> {
    let (origin, edge) = start(true).await?;
    let ticket = edge.dir.path().join("h3.ticket");
    h3_ticket(&edge, &ticket).await?;
    assert_eq!(origin.requests(), 1);

    let post = json!([{"method": "POST", "path": "/echo", "body_bytes": 64}]);
    let out = h3_early(&edge, &ticket, post.clone(), true).await?;
    assert_eq!(out["handshake"]["early_data_accepted"], true, "{out}");
    assert_eq!(out["results"][0]["status"], 425, "{out}");
    assert_eq!(origin.requests(), 1, "the 425 was edge's own");
    assert_eq!(early_count(&edge, "h3", "too_early").await?, 1.0);

    // After a full handshake (no ticket) the same request goes through.
    let out = h3_requests_with(&edge, &post, &[]).await?;
    assert_eq!(out[0]["status"], 200, "{out}");
    assert_eq!(origin.requests(), 2);
    Ok(())
}

/// With `tls.early_data` on, a client that does a full handshake and sends a
/// POST at once (with its Finished, in one datagram) is not taken for early
/// data: 200, never 425.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_right_after_a_full_quic_handshake_is_not_early() -> anyhow::Result<()> {
    let (origin, edge) = start(true).await?;
    let post = json!([{"method": "POST", "path": "/echo", "body_bytes": 16}]);
    for i in 1..=5 {
        let out = h3_requests_with(&edge, &post, &[]).await?;
        assert_eq!(out[0]["status"], 200, "connection {i}: {out}");
        assert!(
            echo_header(&echoed(&out[0])?, "early-data").is_empty(),
            "{out}"
        );
    }
    assert_eq!(origin.requests(), 5);
    assert_eq!(early_count(&edge, "h3", "too_early").await?, 0.0);
    assert_eq!(early_count(&edge, "h3", "accepted").await?, 0.0);
    Ok(())
}

/// Served from its ClientHello on, a QUIC connection whose handshake then
/// fails (`require` mTLS, no client certificate) is refused as before, and
/// counted in `proxy_handshake_failures_total`; with a certificate, resumed
/// in 0-RTT, the origin gets the certificate the session was made with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mtls_a_failed_handshake_is_counted_and_a_0rtt_request_carries_the_certificate(
) -> anyhow::Result<()> {
    let origin = Scripted::start(|seen| {
        Reply::ok(
            &[],
            seen.header("x-forwarded-client-cert")
                .unwrap_or("")
                .to_owned(),
        )
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let alice = pki.issue_client(dir.path(), "alice", &["alice.test"])?;
    let client_auth = format!(
        "[tls.client_auth]\nca = {}\nmode = \"require\"\n",
        edge_tests::toml_path(&pki.ca_cert)
    );
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .tls_setting("early_data", "true")
        .section(&client_auth);
    let edge = Edge::start_with_pki(dir, pki, &config).await?;

    let refused = h3_requests_with(&edge, &json!([{"path": "/"}]), &[]).await;
    assert!(
        refused.as_ref().map_or(true, |r| r[0]["status"] != 200),
        "h3 without a certificate: {refused:?}"
    );
    let failures = "proxy_handshake_failures_total{reason=\"alert\",transport=\"quic\"}";
    poll_until("the refusal counted", Duration::from_secs(10), || async {
        edge.metric(failures)
            .await
            .is_ok_and(|(v, _)| v == Some(1.0))
    })
    .await?;
    assert_eq!(origin.seen().len(), 0);

    let (cert, key) = (alice.cert.to_string_lossy(), alice.key.to_string_lossy());
    let ticket = edge.dir.path().join("h3.ticket");
    let ticket = ticket.to_string_lossy();
    let as_alice = ["--client-cert", &*cert, "--client-key", &*key];
    let first = [&as_alice[..], &["--session-out", &*ticket]].concat();
    let out = h3_requests_with(&edge, &json!([{"path": "/"}]), &first).await?;
    assert_eq!(out["results"][0]["status"], 200, "{out}");
    let early = [
        &as_alice[..],
        &["--session-in", &*ticket, "--early", "--hold-finished"],
    ]
    .concat();
    let out = h3_requests_with(&edge, &json!([{"path": "/early"}]), &early).await?;
    assert_eq!(out["handshake"]["early_data_accepted"], true, "{out}");
    assert_eq!(out["results"][0]["status"], 200, "{out}");
    let xfcc = out["results"][0]["body"].as_str().unwrap_or_default();
    assert!(xfcc.contains("Subject=\"CN=alice.test\""), "{out}");
    Ok(())
}

/// Off by default: the ticket offers no early data, the resumed client sends
/// its request after the handshake, and it arrives unmarked; GET /config says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_early_data_0rtt_is_refused_and_the_request_waits_for_the_handshake(
) -> anyhow::Result<()> {
    let (_origin, edge) = start(false).await?;
    let config = KeepAlive::new(edge.admin()?)
        .request(&http::Method::GET, "/config", "config")
        .await
        .map_err(anyhow::Error::msg)?;
    let config: Value = serde_json::from_str(&config.body)?;
    assert_eq!(config["config"]["tls"]["early_data"], false, "{config}");

    let ticket = edge.dir.path().join("h3.ticket");
    h3_ticket(&edge, &ticket).await?;
    let out = h3_early(&edge, &ticket, json!([{"path": "/echo"}]), false).await?;
    assert_eq!(out["handshake"]["session_resumed"], true, "{out}");
    assert_eq!(out["handshake"]["early_data_accepted"], false, "{out}");
    let got = &out["results"][0];
    assert_eq!(got["status"], 200, "{out}");
    assert!(echo_header(&echoed(got)?, "early-data").is_empty(), "{out}");
    Ok(())
}

/// `openssl s_client -sess_out`, then `-sess_in -early_data` with `request`.
async fn tcp_early(edge: &Edge, request: &str) -> anyhow::Result<String> {
    let dir = edge.dir.path();
    let (session, first, early, empty) = (
        dir.join("tcp.session"),
        dir.join("first.http"),
        dir.join("early.http"),
        dir.join("empty"),
    );
    std::fs::write(
        &first,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )?;
    std::fs::write(&early, request)?;
    std::fs::write(&empty, "")?;
    let ca = &edge.pki.ca_cert;
    let sess = session.to_string_lossy();
    let out = s_client(edge.https_addr, ca, &["-sess_out", &sess], &first).await?;
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    let early = early.to_string_lossy();
    let out = s_client(
        edge.https_addr,
        ca,
        &["-sess_in", &sess, "-early_data", &early],
        &empty,
    )
    .await?;
    assert!(out.contains("Early data was accepted"), "{out}");
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_in_tls_early_data_is_forwarded_with_early_data_1() -> anyhow::Result<()> {
    let (origin, edge) = start(true).await?;
    let get = "GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let out = tcp_early(&edge, get).await?;
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    // The echo is the first JSON value after the response head: s_client
    // prints more after it (session ticket dumps, whose text column may hold
    // any brace).
    let head = out.find("HTTP/1.1 200").unwrap_or_default();
    let body = out[head..]
        .find("\r\n\r\n")
        .map_or("", |end| &out[head + end + 4..]);
    let echo: Value = serde_json::Deserializer::from_str(body)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no JSON body in {out}"))??;
    assert_eq!(echo_header(&echo, "early-data"), ["1"], "{echo}");
    assert_eq!(origin.requests(), 2);
    assert_eq!(early_count(&edge, "h1", "accepted").await?, 1.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_in_tls_early_data_is_answered_425_and_never_reaches_the_origin(
) -> anyhow::Result<()> {
    let (origin, edge) = start(true).await?;
    let post = "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let out = tcp_early(&edge, post).await?;
    assert!(out.contains("HTTP/1.1 425"), "{out}");
    assert_eq!(origin.requests(), 1, "only the first connection's GET");
    assert_eq!(early_count(&edge, "h1", "too_early").await?, 1.0);
    Ok(())
}

/// Only what came in early data is early: a POST the client sends after the
/// handshake, on the connection whose GET came in early data, is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_the_handshake_on_an_early_data_connection_is_not_early(
) -> anyhow::Result<()> {
    let (origin, edge) = start(true).await?;
    let dir = edge.dir.path();
    let (session, first, early, after) = (
        dir.join("tcp.session"),
        dir.join("first.http"),
        dir.join("early.http"),
        dir.join("after.http"),
    );
    std::fs::write(
        &first,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )?;
    std::fs::write(&early, "GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    std::fs::write(
        &after,
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )?;
    let ca = &edge.pki.ca_cert;
    let sess = session.to_string_lossy();
    s_client(edge.https_addr, ca, &["-sess_out", &sess], &first).await?;
    let early = early.to_string_lossy();
    let out = s_client(
        edge.https_addr,
        ca,
        &["-sess_in", &sess, "-early_data", &early],
        &after,
    )
    .await?;
    assert!(out.contains("Early data was accepted"), "{out}");
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    assert!(!out.contains("HTTP/1.1 425"), "{out}");
    // The GET's echo names early-data; the POST's does not.
    assert_eq!(out.matches("\"early-data\"").count(), 1, "{out}");
    assert_eq!(origin.requests(), 3);
    assert_eq!(early_count(&edge, "h1", "accepted").await?, 1.0);
    Ok(())
}

/// HTTP/2 over TLS: an h2 client's preface, SETTINGS and request sent as early
/// data (`openssl s_client -alpn h2`, bytes from `h2_frames.py`), a GOAWAY
/// after the handshake. The GET reaches the origin marked; the POST does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_requests_in_tls_early_data_follow_the_same_rules() -> anyhow::Result<()> {
    let (origin, edge) = start(true).await?;
    let dir = edge.dir.path();
    let ca = &edge.pki.ca_cert;
    let sess = dir.join("tcp.session");
    let sess = sess.to_string_lossy();
    let h2 = ["-alpn", "h2"];
    for (method, body, early_at_origin) in [("GET", "0", 1), ("POST", "16", 0)] {
        let (request, close) = (dir.join("h2.request"), dir.join("h2.close"));
        let (request_s, close_s) = (request.to_string_lossy(), close.to_string_lossy());
        let frames = [
            "--request",
            &*request_s,
            "--close",
            &*close_s,
            "--method",
            method,
            "--path",
            "/echo",
            "--body-bytes",
            body,
        ];
        python_json("h2_frames.py", &frames, PYTHON_TIMEOUT).await?;
        // A new session for each: a ticket is good for one resumption. Its
        // connection sends the same request after the handshake, then GOAWAY.
        let whole = dir.join("h2.whole");
        std::fs::write(
            &whole,
            [std::fs::read(&request)?, std::fs::read(&close)?].concat(),
        )?;
        let first = [&h2[..], &["-sess_out", &*sess]].concat();
        s_client(edge.https_addr, ca, &first, &whole).await?;
        let before = origin.requests();
        let early = [&h2[..], &["-sess_in", &*sess, "-early_data", &*request_s]].concat();
        let out = s_client(edge.https_addr, ca, &early, &close).await?;
        assert!(out.contains("Early data was accepted"), "{method}: {out}");
        assert_eq!(
            out.matches("[\"early-data\",\"1\"]").count(),
            early_at_origin,
            "{method}: {out}"
        );
        assert_eq!(
            origin.requests() - before,
            early_at_origin as u64,
            "{method}"
        );
    }
    assert_eq!(early_count(&edge, "h2", "accepted").await?, 1.0);
    assert_eq!(early_count(&edge, "h2", "too_early").await?, 1.0);
    Ok(())
}

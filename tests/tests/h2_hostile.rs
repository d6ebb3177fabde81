//! Hostile HTTP/2 clients (tests/py/h2_hostile.py) against the real binary:
//! prefaces never completed, shutdown PINGs never answered, PING/SETTINGS
//! floods never read, streams reset before their response, zero-window
//! readers. Each checks the bound (time to close, how the connection ended,
//! what reached the origin, RSS from /proc) and that a canary h2 client on
//! other connections keeps getting 200 throughout.

use std::time::{Duration, Instant};

use edge_tests::OriginOptions;
use edge_tests::{
    curl, poll_until, python_json, raw_http, start_pair, tls_args, Edge, EdgeConfig, Origin,
};
use serde_json::Value;

/// Generous: every attack script ends on its own.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// RSS growth allowed while an attack runs.
const RSS_BOUND_KIB: u64 = 32 * 1024;

async fn start(configure: impl FnOnce(EdgeConfig) -> EdgeConfig) -> (Origin, Edge) {
    start_pair(OriginOptions::default(), |c| configure(c.protocol("h1")))
        .await
        .expect("origin and edge start")
}

fn args(edge: &Edge, mode: &str, tls: bool, extra: &[&str]) -> Vec<String> {
    let port = if tls {
        edge.https_addr.port()
    } else {
        edge.http_addr.expect("plaintext listener").port()
    };
    let mut out = vec![mode.to_owned(), "--port".to_owned(), port.to_string()];
    if tls {
        out.push("--tls".to_owned());
        out.push("--ca".to_owned());
        out.push(edge.pki.ca_cert.to_string_lossy().into_owned());
    }
    out.extend(extra.iter().map(|s| (*s).to_owned()));
    out
}

/// One h2 GET of `/` over TLS on a new connection.
async fn canary(edge: &Edge) -> u16 {
    let mut a = tls_args(edge);
    a.push("--http2".to_owned());
    a.push(format!("https://localhost:{}/", edge.https_addr.port()));
    curl(&a).await.map(|r| r.status).unwrap_or(0)
}

/// What an attack did to edge while it ran.
struct Outcome {
    report: Value,
    rss_grew_kib: u64,
    canary_ok: usize,
}

/// Runs the attack while a canary asks for `/` on its own connections (every
/// answer must be 200).
async fn under_attack(edge: &Edge, args: Vec<String>) -> Outcome {
    let before = edge.rss_kib().expect("rss");
    let attack =
        tokio::spawn(async move { python_json("h2_hostile.py", &args, SCRIPT_TIMEOUT).await });
    let (mut peak, mut ok) = (before, 0);
    while !attack.is_finished() {
        peak = peak.max(edge.rss_kib().expect("rss"));
        assert_eq!(canary(edge).await, 200, "canary under attack");
        ok += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak = peak.max(edge.rss_kib().expect("rss"));
    let report = attack.await.expect("joined").expect("attack script");
    assert_eq!(canary(edge).await, 200, "canary after the attack");
    Outcome {
        report,
        rss_grew_kib: peak.saturating_sub(before),
        canary_ok: ok + 1,
    }
}

async fn metric(edge: &Edge, series: &str) -> f64 {
    edge.metric(series).await.expect("metrics").0.unwrap_or(0.0)
}

async fn preface_never_sent(tls: bool) {
    let (_origin, edge) = start(|c| c.client_setting("header_read_timeout", "\"2s\"")).await;
    let started = Instant::now();
    let out = under_attack(&edge, args(&edge, "nopreface", tls, &["--wait", "20"])).await;
    let r = &out.report;
    eprintln!(
        "no preface (tls={tls}): {r}, RSS +{} KiB, canary {} x 200, {:?}",
        out.rss_grew_kib,
        out.canary_ok,
        started.elapsed()
    );
    assert_eq!(r["closed"], true, "never closed: {r}");
    let after = r["after"].as_f64().unwrap_or(f64::MAX);
    assert!(after < 2.0 + 1.0, "closed {after} s after connecting: {r}");
    let closes = metric(
        &edge,
        "proxy_h2_connection_closes_total{reason=\"preface_timeout\"}",
    )
    .await;
    assert_eq!(closes, 1.0);
}

#[tokio::test]
async fn a_tls_h2_connection_that_never_sends_the_preface_is_closed() {
    preface_never_sent(true).await;
}

#[tokio::test]
async fn an_h2c_connection_that_never_sends_its_first_settings_is_closed() {
    preface_never_sent(false).await;
}

#[tokio::test]
async fn a_client_that_never_acks_the_shutdown_ping_is_closed_after_the_grace() {
    let (_origin, edge) = start(|c| {
        c.client_setting("idle_timeout", "\"1s\"")
            .client_setting("goaway_grace", "\"2s\"")
    })
    .await;
    let out = under_attack(
        &edge,
        args(
            &edge,
            "noping",
            false,
            &["--wait", "25", "--path", "/slow/30000"],
        ),
    )
    .await;
    let r = &out.report;
    eprintln!("no PING ACK: {r}, canary {} x 200", out.canary_ok);
    assert_eq!(r["status"], "200", "{r}");
    assert_eq!(r["goaway"], true, "{r}");
    assert_eq!(r["closed"], true, "still open: {r}");
    let after = r["after_goaway"].as_f64().unwrap_or(f64::MAX);
    assert!(after < 2.0 + 1.0, "closed {after} s after GOAWAY: {r}");
    let closes = metric(
        &edge,
        "proxy_h2_connection_closes_total{reason=\"goaway_grace\"}",
    )
    .await;
    assert_eq!(closes, 1.0);
}

#[tokio::test]
async fn a_ping_and_settings_flood_whose_replies_are_never_read_is_closed() {
    let (_origin, edge) = start(|c| c.client_setting("write_idle_timeout", "\"2s\"")).await;
    let out = under_attack(&edge, args(&edge, "flood", false, &["--wait", "25"])).await;
    let r = &out.report;
    eprintln!(
        "PING/SETTINGS flood: {r}, RSS +{} KiB, canary {} x 200",
        out.rss_grew_kib, out.canary_ok
    );
    assert_eq!(r["closed"], true, "still open: {r}");
    let after = r["after"].as_f64().unwrap_or(f64::MAX);
    // The stall starts once the socket buffers are full, well within a second here.
    assert!(after < 2.0 * 1.25 + 3.0, "closed after {after} s: {r}");
    assert!(
        out.rss_grew_kib < RSS_BOUND_KIB,
        "RSS grew {} KiB",
        out.rss_grew_kib
    );
    let closes = metric(
        &edge,
        "proxy_h2_connection_closes_total{reason=\"write_stall\"}",
    )
    .await;
    assert_eq!(closes, 1.0);
}

#[tokio::test]
async fn streams_reset_before_their_response_get_the_connection_closed() {
    let (origin, edge) = start(|c| c).await;
    let extra = [
        "--streams",
        "2000",
        "--batch",
        "50",
        "--pause",
        "0.02",
        "--wait",
        "10",
    ];
    let started = Instant::now();
    let out = under_attack(&edge, args(&edge, "resets", true, &extra)).await;
    let r = &out.report;
    eprintln!(
        "2000 premature resets: {r}, origin saw {} requests on {} connections (peak {}), \
         RSS +{} KiB, canary {} x 200, {:?}",
        origin.requests(),
        origin.connections(),
        origin.peak_connections(),
        out.rss_grew_kib,
        out.canary_ok,
        started.elapsed()
    );
    // 0xb: ENHANCE_YOUR_CALM (RFC 9113 7), not the graceful NO_ERROR.
    assert_eq!(r["goaway"], 0xb, "no GOAWAY(ENHANCE_YOUR_CALM): {r}");
    assert_eq!(r["closed"], true, "still open: {r}");
    let sent = r["sent"].as_u64().unwrap_or(u64::MAX);
    assert!(sent < 400, "{sent} streams were sent before the close: {r}");
    // The canary's requests come on top of the attack's.
    let canary = out.canary_ok as u64;
    assert!(
        origin.requests() <= 200 + canary,
        "origin saw {} requests",
        origin.requests()
    );
    assert!(
        origin.connections() <= 200 + canary,
        "origin saw {} connections",
        origin.connections()
    );
    let closes = metric(
        &edge,
        "proxy_h2_connection_closes_total{reason=\"premature_resets\"}",
    )
    .await;
    assert_eq!(closes, 1.0);
    assert!(metric(&edge, "proxy_h2_premature_resets_total").await >= 50.0);
}

#[tokio::test]
async fn zero_window_streams_are_cut_and_their_upstreams_freed() {
    let (origin, edge) = start(|c| c.client_setting("write_idle_timeout", "\"2s\"")).await;
    let extra = [
        "--streams",
        "20",
        "--path",
        "/bytes/10485760",
        "--wait",
        "1",
        "--hold",
        "20",
    ];
    let a = args(&edge, "zerowindow", true, &extra);
    let before = edge.rss_kib().expect("rss");
    let attack =
        tokio::spawn(async move { python_json("h2_hostile.py", &a, SCRIPT_TIMEOUT).await });
    poll_until(
        "20 upstream connections open",
        Duration::from_secs(10),
        || async { origin.open_connections() >= 20 },
    )
    .await
    .expect("the attack reaches the origin");
    let opened = Instant::now();
    poll_until(
        "upstream connections freed",
        Duration::from_secs(10),
        || async {
            assert_eq!(canary(&edge).await, 200, "canary under attack");
            origin.open_connections() <= 1
        },
    )
    .await
    .expect("zero-window streams free their upstreams");
    let freed = opened.elapsed();
    let grew = edge.rss_kib().expect("rss").saturating_sub(before);
    let cut = metric(&edge, "proxy_write_idle_timeouts_total{protocol=\"h2\"}").await;
    eprintln!(
        "20 zero-window streams of 10 MiB: upstreams freed {freed:?} after they opened, \
         {cut} streams cut, RSS +{grew} KiB"
    );
    assert_eq!(cut, 20.0);
    assert!(grew < RSS_BOUND_KIB, "RSS grew {grew} KiB");
    assert!(
        !attack.is_finished(),
        "the client still holds its connection"
    );
    attack.abort();
}

#[tokio::test]
async fn a_broken_h2c_preface_gets_goaway_and_http1_still_works() {
    let (_origin, edge) = start(|c| c).await;
    let out = under_attack(&edge, args(&edge, "badpreface", false, &[])).await;
    let r = &out.report;
    eprintln!("broken h2c preface: {r}, canary {} x 200", out.canary_ok);
    assert_eq!(r["http1"], false, "{r}");
    assert_eq!(r["goaway"], 1, "no GOAWAY(PROTOCOL_ERROR): {r}");
    let http = edge.http_addr.expect("plaintext listener");
    let reply = raw_http(
        http,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("h1 on the shared port");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// PROTOCOL_ERROR (RFC 9113 §7).
const PROTOCOL_ERROR: u64 = 0x1;

/// h2spec 8.1/1 and 8.1.2.6/1–2 in the case that made them intermittent: the
/// answer goes out before the request body is complete (edge's own 413, and a
/// backend that replies without reading the upload), and only then does the
/// client break the stream rules (a DATA total other than `content-length`,
/// trailers without END_STREAM). 40 runs per case, each on a new connection:
/// every one must get PROTOCOL_ERROR. Before, h2 reset the stream with
/// NO_ERROR once the response ended and then ignored the rest.
#[tokio::test]
async fn stream_rules_hold_after_an_early_answer() {
    let early_413 = |c: EdgeConfig| c.client_setting("max_body_bytes", "1");
    let backend_early = |c: EdgeConfig| c;
    for (name, configure) in [
        (
            "edge's 413",
            &early_413 as &dyn Fn(EdgeConfig) -> EdgeConfig,
        ),
        ("backend answer", &backend_early),
    ] {
        let (_origin, edge) = start_pair(OriginOptions::default(), configure)
            .await
            .expect("origin and edge start");
        let out = under_attack(
            &edge,
            args(&edge, "lateframes", true, &["--path", "/", "--runs", "40"]),
        )
        .await;
        let r = &out.report;
        for case in ["long", "short", "split", "trailers_no_es"] {
            let codes = r[case].as_array().expect("codes");
            assert_eq!(codes.len(), 40, "{name} {case}: {r}");
            let wrong: Vec<_> = codes
                .iter()
                .filter(|c| c.as_u64() != Some(PROTOCOL_ERROR))
                .collect();
            assert!(
                wrong.is_empty(),
                "{name}, {case}: {} of 40 runs got no PROTOCOL_ERROR: {wrong:?}",
                wrong.len()
            );
        }
        eprintln!(
            "{name}: 4 cases x 40 runs, all PROTOCOL_ERROR; canary {} x 200",
            out.canary_ok
        );
    }
}

/// STREAM_CLOSED (RFC 9113 5.1, 0x5).
const STREAM_CLOSED: u64 = 0x5;

/// h2spec 5.1/8 and 5.1/11: DATA on a stream the client reset, and on one
/// whose exchange ended both ways, is a STREAM_CLOSED error; h2spec 8.1.2.1/3:
/// trailers carrying a pseudo-header make the request malformed
/// (PROTOCOL_ERROR). 20 runs per case, each on a new connection, over TLS.
#[tokio::test]
async fn frames_on_closed_streams_and_pseudo_headers_in_trailers_are_errors() {
    let (_origin, edge) = start_pair(OriginOptions::default(), |c| c)
        .await
        .expect("origin and edge start");
    let out = under_attack(
        &edge,
        args(
            &edge,
            "closedstreams",
            true,
            &["--path", "/upload", "--runs", "20"],
        ),
    )
    .await;
    let r = &out.report;
    for (case, want) in [
        ("data_after_rst", STREAM_CLOSED),
        ("data_after_close", STREAM_CLOSED),
        ("trailer_pseudo", PROTOCOL_ERROR),
    ] {
        let codes = r[case].as_array().expect("codes");
        assert_eq!(codes.len(), 20, "{case}: {r}");
        let wrong: Vec<_> = codes.iter().filter(|c| c.as_u64() != Some(want)).collect();
        assert!(
            wrong.is_empty(),
            "{case}: {} of 20 runs did not get error {want:#x}: {wrong:?}",
            wrong.len()
        );
    }
    eprintln!(
        "3 cases x 20 runs, each the error h2spec asks; canary {} x 200",
        out.canary_ok
    );
}

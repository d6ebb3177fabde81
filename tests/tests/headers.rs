//! Headers edge owns: `x-request-id`, hop-by-hop stripping both ways, and Host.

use std::collections::HashSet;

use edge_tests::{
    curl, echo_header, echo_headers, h3_requests, raw_http, start_default, start_pair, tls_args,
    Edge, EdgeConfig, OriginOptions, RouteConfig,
};

/// The request-id alphabet (README, "What it does"): 1..=128 of `A-Za-z0-9-_.:+/=`.
fn well_formed_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:+/=".contains(c))
}

fn echo_url(edge: &Edge) -> anyhow::Result<String> {
    Ok(format!("http://{}/echo", edge.http()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_is_unique_per_request_and_sent_upstream() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let response = curl(&[echo_url(&edge)?]).await?;
        assert_eq!(response.status, 200);
        let id = response
            .header("x-request-id")
            .expect("x-request-id on the response")
            .to_owned();
        assert!(well_formed_id(&id), "generated id {id:?}");
        let echo = response.json()?;
        assert_eq!(
            echo_header(&echo, "x-request-id"),
            std::slice::from_ref(&id)
        );
        assert!(seen.insert(id.clone()), "id {id} repeated");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_request_id_is_preserved() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let long = "a".repeat(128);
    for id in ["abc-123_.:+/=", "0", long.as_str()] {
        let response = curl(&["-H", &format!("x-request-id: {id}"), &echo_url(&edge)?]).await?;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-request-id"), Some(id));
        assert_eq!(echo_header(&response.json()?, "x-request-id"), [id]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_id_is_replaced() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let too_long = "a".repeat(129);
    for bad in ["has space", "semi;colon", "quote\"d", too_long.as_str()] {
        let response = curl(&["-H", &format!("x-request-id: {bad}"), &echo_url(&edge)?]).await?;
        assert_eq!(response.status, 200);
        let id = response.header("x-request-id").unwrap_or_default();
        assert_ne!(id, bad, "malformed id kept");
        assert!(well_formed_id(id), "replacement {id:?} for {bad:?}");
        assert_eq!(echo_header(&response.json()?, "x-request-id"), [id]);
    }
    // An empty value (`-H 'name;'` makes curl send it) is malformed too.
    let response = curl(&["-H", "x-request-id;", &echo_url(&edge)?]).await?;
    let id = response.header("x-request-id").unwrap_or_default();
    assert!(well_formed_id(id), "replacement {id:?} for an empty id");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_error_page_carries_request_id_in_header_and_body() -> anyhow::Result<()> {
    // Only `only.example` is routed, so any other host gets edge's own 404.
    let (origin, edge) = start_pair(OriginOptions::default(), |mut config: EdgeConfig| {
        config.routes = vec![RouteConfig {
            host: Some("only.example".to_owned()),
            path_prefix: "/".to_owned(),
            pool: "default".to_owned(),
        }];
        config
    })
    .await?;
    let url = format!("http://{}/nowhere", edge.http()?);

    let response = curl(&[url.as_str()]).await?;
    assert_eq!(response.status, 404);
    let id = response
        .header("x-request-id")
        .expect("x-request-id on 404");
    assert!(well_formed_id(id), "id {id:?}");
    assert!(
        response.text().contains(id),
        "404 body {:?}",
        response.text()
    );

    let response = curl(&["-H", "x-request-id: client-chosen-1", &url]).await?;
    assert_eq!(response.status, 404);
    assert_eq!(response.header("x-request-id"), Some("client-chosen-1"));
    assert!(response.text().contains("client-chosen-1"));
    assert_eq!(origin.requests(), 0);
    Ok(())
}

/// What one client got for a request whose header section is over the limit.
struct Oversized {
    client: &'static str,
    status: u16,
    /// The stream was reset (h3 only) instead of answered.
    reset: bool,
    request_id: Option<String>,
    body: String,
}

/// A request with a 40 000-byte header (default `max_header_bytes` is 32768) over
/// h1 and h2 on TLS, h1 and h2c in plaintext, and h3.
async fn send_oversized_everywhere(edge: &Edge) -> anyhow::Result<Vec<Oversized>> {
    let big = format!("x-big: {}", "a".repeat(40_000));
    let https = format!("{}/echo", edge.https_origin());
    let plain = format!("http://{}/echo", edge.http()?);
    let cases: [(&'static str, Vec<String>); 4] = [
        (
            "h1 tls",
            [tls_args(edge), vec!["--http1.1".into(), https.clone()]].concat(),
        ),
        (
            "h2 tls",
            [tls_args(edge), vec!["--http2".into(), https]].concat(),
        ),
        ("h1 plain", vec!["--http1.1".into(), plain.clone()]),
        ("h2c", vec!["--http2-prior-knowledge".into(), plain]),
    ];
    let mut answers = Vec::new();
    for (client, mut args) in cases {
        args.extend(["-H".to_owned(), big.clone()]);
        let response = curl(&args).await?;
        answers.push(Oversized {
            client,
            status: response.status,
            reset: false,
            request_id: response.header("x-request-id").map(str::to_owned),
            body: response.text(),
        });
    }
    let spec = serde_json::json!([{"path": "/echo", "big_header_bytes": 40_000}]);
    let h3 = &h3_requests(edge, &spec).await?[0];
    let headers = h3["headers"].as_array().cloned().unwrap_or_default();
    answers.push(Oversized {
        client: "h3",
        status: h3["status"].as_u64().unwrap_or(0) as u16,
        reset: !h3["reset"].is_null(),
        request_id: headers
            .iter()
            .find(|pair| pair[0] == "x-request-id")
            .and_then(|pair| pair[1].as_str().map(str::to_owned)),
        body: h3["body"].as_str().unwrap_or_default().to_owned(),
    });
    Ok(answers)
}

impl std::fmt::Debug for Oversized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body: String = self.body.chars().take(200).collect();
        write!(
            f,
            "{}: status {}, reset {}, x-request-id {:?}, body {body:?}",
            self.client, self.status, self.reset, self.request_id
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_section_is_431_on_every_listener() -> anyhow::Result<()> {
    let (origin, edge) = start_default().await?;
    let answers = send_oversized_everywhere(&edge).await?;
    let wrong: Vec<&Oversized> = answers
        .iter()
        .filter(|a| a.status != 431 && !a.reset)
        .collect();
    assert!(wrong.is_empty(), "not refused with 431: {wrong:#?}");
    assert_eq!(
        origin.requests(),
        0,
        "an oversized request reached the origin"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_431_pages_carry_request_id() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let answers = send_oversized_everywhere(&edge).await?;
    // Only edge's own 431 pages are judged here; whether each client got one is the
    // test above.
    let missing: Vec<&Oversized> = answers
        .iter()
        .filter(|a| a.status == 431)
        .filter(|a| {
            !a.request_id
                .as_deref()
                .is_some_and(|id| well_formed_id(id) && a.body.contains(id))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "431 without its request id: {missing:#?}"
    );
    Ok(())
}

/// Hop-by-hop headers a client sends, `x-hop-custom` being named in `Connection`.
const HOP_BY_HOP_REQUEST: [&str; 6] = [
    "Connection: x-hop-custom",
    "X-Hop-Custom: must-not-pass",
    "Keep-Alive: timeout=5",
    "Proxy-Connection: keep-alive",
    "Proxy-Authorization: Basic dXNlcjpwYXNz",
    "Upgrade: example/1",
];

/// Headers the origin must never see from edge, whatever the client sent, and the
/// client never from the origin (`te` is checked apart: `trailers` may pass).
const NEVER_UPSTREAM: [&str; 6] = [
    "x-hop-custom",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "upgrade",
    "proxy-authenticate",
];

async fn assert_request_hop_by_hop_stripped(protocol: &str) -> anyhow::Result<()> {
    let (_origin, edge) = start_pair(OriginOptions::default(), |c| c.protocol(protocol)).await?;
    let mut args: Vec<String> = Vec::new();
    for header in HOP_BY_HOP_REQUEST {
        args.extend(["-H".to_owned(), header.to_owned()]);
    }
    // TE other than `trailers` is hop-by-hop; the body makes curl send it chunked.
    args.extend(
        [
            "-H",
            "TE: gzip",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "X-End-To-End: kept",
            "--data-binary",
            "body",
            "--http1.1",
        ]
        .map(String::from),
    );
    args.push(echo_url(&edge)?);
    let response = curl(&args).await?;
    assert_eq!(response.status, 200, "{}", response.text());
    let echo = response.json()?;
    let seen = echo_headers(&echo);
    for name in NEVER_UPSTREAM {
        assert!(
            seen.iter().all(|(n, _)| n != name),
            "{name} reached the {protocol} origin: {seen:?}"
        );
    }
    for value in echo_header(&echo, "connection") {
        assert!(
            !value.to_ascii_lowercase().contains("x-hop-custom"),
            "client's Connection reached the {protocol} origin: {value}"
        );
    }
    for value in echo_header(&echo, "te") {
        assert_eq!(value, "trailers", "TE other than trailers upstream");
    }
    for value in echo_header(&echo, "transfer-encoding") {
        // Only edge's own framing of the upstream hop may appear.
        assert_eq!(value, "chunked", "client's Transfer-Encoding upstream");
    }
    assert_eq!(echo_header(&echo, "x-end-to-end"), ["kept"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_never_reach_h1_origin() -> anyhow::Result<()> {
    assert_request_hop_by_hop_stripped("h1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_never_reach_h2_origin() -> anyhow::Result<()> {
    assert_request_hop_by_hop_stripped("h2").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_never_reach_client() -> anyhow::Result<()> {
    // An h1 origin, because an h2 origin could not send these headers at all.
    let options = OriginOptions {
        http1_only: true,
        ..OriginOptions::default()
    };
    let (_origin, edge) = start_pair(options, |c| c.protocol("h1")).await?;
    let plain = format!("http://{}/hop-by-hop", edge.http()?);
    let mut tls = tls_args(&edge);
    tls.extend([
        "--http1.1".to_owned(),
        format!("{}/hop-by-hop", edge.https_origin()),
    ]);
    for response in [curl(&["--http1.1", &plain]).await?, curl(&tls).await?] {
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "hop");
        for name in NEVER_UPSTREAM {
            assert!(
                response.header(name).is_none(),
                "{name} reached the client: {:?}",
                response.headers
            );
        }
        assert!(
            response.header("te").is_none(),
            "origin's TE reached the client: {:?}",
            response.headers
        );
        for value in response.header_all("connection") {
            // edge may manage its own client connection, never relay the origin's.
            assert!(
                ["close", "keep-alive"].contains(&value.to_ascii_lowercase().as_str()),
                "origin's Connection reached the client: {value}"
            );
        }
        assert_eq!(response.header("x-end-to-end"), Some("kept"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_is_400() -> anyhow::Result<()> {
    let (origin, edge) = start_default().await?;
    let answer = raw_http(
        edge.http()?,
        "GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 400"), "answer: {answer}");
    assert_eq!(origin.requests(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_host_headers_are_400() -> anyhow::Result<()> {
    let (origin, edge) = start_default().await?;
    let answer = raw_http(
        edge.http()?,
        "GET /echo HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 400"), "answer: {answer}");
    assert_eq!(origin.requests(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_from_untrusted_peer_is_replaced() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let response = curl(&["-H", "X-Forwarded-For: 203.0.113.9", &echo_url(&edge)?]).await?;
    let echo = response.json()?;
    assert_eq!(echo_header(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echo_header(&echo, "x-forwarded-proto"), ["http"]);
    let host = format!("{}", edge.http()?);
    assert_eq!(echo_header(&echo, "x-forwarded-host"), [host]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_from_trusted_peer_is_appended_to() -> anyhow::Result<()> {
    let (_origin, edge) = start_pair(OriginOptions::default(), |c| {
        c.top_setting("trusted_proxies", "[\"127.0.0.1/32\"]")
    })
    .await?;
    let response = curl(&["-H", "X-Forwarded-For: 203.0.113.9", &echo_url(&edge)?]).await?;
    let echo = response.json()?;
    let forwarded = echo_header(&echo, "x-forwarded-for").join(", ");
    let hops: Vec<&str> = forwarded.split(',').map(str::trim).collect();
    assert_eq!(hops, ["203.0.113.9", "127.0.0.1"]);
    Ok(())
}

/// A raw HTTP/1.1 request carrying `fields` extra header fields.
fn with_fields(fields: usize) -> String {
    let mut request =
        String::from("GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for i in 0..fields {
        request.push_str(&format!("x-field-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// The header-count limit (`client.max_headers`): within it the request is
/// forwarded; past it, edge's own 431 page with the request id, up to the 100
/// fields hyper parses on the stack; far past it (over 100), a bare 431 from
/// hyper. None of the refused requests reaches the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_fields_is_431() -> anyhow::Result<()> {
    let (origin, edge) = start_pair(OriginOptions::default(), |config| {
        config.client_setting("max_headers", "20")
    })
    .await?;
    let addr = edge.http()?;
    // Host and Connection count too: 18 more make 20.
    let within = raw_http(addr, &with_fields(18)).await?;
    assert!(within.starts_with("HTTP/1.1 200"), "{within}");
    let forwarded = origin.requests();

    let over = raw_http(addr, &with_fields(30)).await?;
    assert!(over.starts_with("HTTP/1.1 431"), "{over}");
    let id = over
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(well_formed_id(&id), "431 page with a request id:\n{over}");
    assert!(over.contains(&id), "{over}");

    let far_over = raw_http(addr, &with_fields(150)).await?;
    assert!(far_over.starts_with("HTTP/1.1 431"), "{far_over}");
    assert_eq!(
        origin.requests(),
        forwarded,
        "a refused request reached the origin"
    );
    Ok(())
}

//! Request smuggling probes, one table: each raw request goes to edge's
//! plaintext listener on its own connection; the origin records the exact
//! bytes it receives. A probe edge refuses must get 400 with nothing reaching
//! the origin; a probe edge accepts must reach it as one clean request whose
//! framing is the one edge judged.

use edge_tests::{h3_requests, raw_http, Edge, EdgeConfig, RawOrigin};

/// What the origin must have received for a probe.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// Not one byte.
    Nothing,
    /// One request whose bytes contain every one of these (lower-cased) and
    /// none of `forbidden`.
    Clean {
        contains: &'static [&'static str],
        forbidden: &'static [&'static str],
    },
}

struct Probe {
    name: &'static str,
    /// The header lines after `Host:`, each ending in CRLF, then the body.
    head_and_body: &'static str,
    status: u16,
    origin: Origin,
}

const REFUSED: Origin = Origin::Nothing;

/// One chunked request carrying `hello`, without any Content-Length.
const CHUNKED_HELLO: Origin = Origin::Clean {
    contains: &["transfer-encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"],
    forbidden: &["content-length"],
};

const PROBES: &[Probe] = &[
    Probe {
        name: "plain chunked",
        head_and_body: "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 200,
        origin: Origin::Clean {
            contains: &["transfer-encoding: chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"],
            forbidden: &["content-length"],
        },
    },
    Probe {
        name: "plain content-length",
        head_and_body: "Content-Length: 5\r\n\r\nhello",
        status: 200,
        origin: Origin::Clean {
            contains: &["content-length: 5\r\n", "\r\n\r\nhello"],
            forbidden: &["transfer-encoding"],
        },
    },
    Probe {
        name: "gzip, chunked",
        head_and_body: "Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "chunked, chunked",
        head_and_body: "Transfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: ",chunked",
        head_and_body: "Transfer-Encoding: ,chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "two TE lines",
        head_and_body:
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "identity",
        head_and_body: "Transfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "xchunked",
        head_and_body: "Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        // hyper reads the body as chunked and drops Content-Length (RFC 9112
        // 6.1: an intermediary must remove it); the origin sees only chunked.
        name: "CL then TE",
        head_and_body:
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 200,
        origin: CHUNKED_HELLO,
    },
    Probe {
        name: "TE then CL",
        head_and_body:
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        status: 200,
        origin: CHUNKED_HELLO,
    },
    Probe {
        name: "two different Content-Lengths",
        head_and_body: "Content-Length: 5\r\nContent-Length: 3\r\n\r\nhello",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        // Equal values are one length (RFC 9112 6.3); hyper keeps one.
        name: "two equal Content-Lengths",
        head_and_body: "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        status: 200,
        origin: Origin::Clean {
            contains: &["content-length: 5\r\n", "\r\n\r\nhello"],
            forbidden: &["transfer-encoding", "content-length: 5\r\ncontent-length"],
        },
    },
    Probe {
        name: "Content-Length list",
        head_and_body: "Content-Length: 5, 5\r\n\r\nhello",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "signed Content-Length",
        head_and_body: "Content-Length: +5\r\n\r\nhello",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "obs-fold",
        head_and_body: "X-Fold: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "obs-fold hiding TE",
        head_and_body: "X-Fold: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "bare CR in a value",
        head_and_body: "X-Cr: a\rTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "NUL in a value",
        head_and_body: "X-Nul: a\0b\r\n\r\n",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "space before colon",
        head_and_body: "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        status: 400,
        origin: REFUSED,
    },
    Probe {
        name: "tab before colon",
        head_and_body: "Content-Length\t: 5\r\n\r\nhello",
        status: 400,
        origin: REFUSED,
    },
];

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn judge(probe: &Probe, response: &str, received: &[u8]) -> Result<(), String> {
    let status = status_of(response);
    if status != probe.status {
        return Err(format!(
            "status {status}, want {}: {response:?}",
            probe.status
        ));
    }
    let text = String::from_utf8_lossy(received).to_ascii_lowercase();
    match probe.origin {
        Origin::Nothing if received.is_empty() => Ok(()),
        Origin::Nothing => Err(format!("origin received {text:?}")),
        Origin::Clean {
            contains,
            forbidden,
        } => {
            let requests = text.matches(" http/1.1\r\n").count();
            let missing = contains.iter().find(|c| !text.contains(*c));
            let extra = forbidden.iter().find(|f| text.contains(*f));
            match (requests, missing, extra) {
                (1, None, None) => Ok(()),
                _ => Err(format!("origin received {text:?}")),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_probes_get_400_or_reach_the_origin_framed_as_judged() -> anyhow::Result<()> {
    let origin = RawOrigin::start().await?;
    let edge = Edge::start(&EdgeConfig::new(origin.url()).protocol("h1")).await?;
    let mut failures = Vec::new();
    for probe in PROBES {
        origin.clear();
        let request = format!(
            "POST /probe HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n{}",
            probe.head_and_body
        );
        let response = raw_http(edge.http()?, &request).await?;
        // Edge answers a forwarded request only after the origin answered, so
        // what the origin holds now is all it will ever get for this probe.
        if let Err(why) = judge(probe, &response, &origin.received()) {
            failures.push(format!("{}: {why}", probe.name));
        }
    }
    let canary = raw_http(
        edge.http()?,
        "GET /canary HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n",
    )
    .await?;
    assert_eq!(status_of(&canary), 200, "{canary}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_connection_specific_fields_reset_the_stream_with_message_error() -> anyhow::Result<()> {
    let origin = RawOrigin::start().await?;
    let edge = Edge::start(&EdgeConfig::new(origin.url()).protocol("h1")).await?;
    let banned = [
        ("connection", "close"),
        ("transfer-encoding", "chunked"),
        ("keep-alive", "timeout=5"),
        ("upgrade", "websocket"),
        ("proxy-connection", "keep-alive"),
        ("te", "gzip"),
    ];
    let mut spec: Vec<serde_json::Value> = banned
        .iter()
        .map(|(name, value)| serde_json::json!({"path": "/h3", "headers": [[name, value]]}))
        .collect();
    spec.push(serde_json::json!({"path": "/h3", "headers": [["te", "trailers"]]}));
    let results = h3_requests(&edge, &serde_json::Value::Array(spec)).await?;
    for (i, (name, _)) in banned.iter().enumerate() {
        let r = &results[i];
        assert_eq!(r["reset"], 0x10e, "{name}: {r}");
    }
    assert_eq!(
        results[banned.len()]["status"],
        200,
        "te: trailers is allowed"
    );
    // Only the allowed request reached the origin; it is an HTTP/1.1 backend, so
    // TE travels as a hop-by-hop field named in Connection (RFC 9110 10.1.4).
    let text = String::from_utf8_lossy(&origin.received()).to_ascii_lowercase();
    assert_eq!(text.matches("get /h3 http/1.1").count(), 1, "{text}");
    assert!(text.contains("te: trailers\r\n"), "{text}");
    assert!(text.contains("connection: te\r\n"), "{text}");
    Ok(())
}

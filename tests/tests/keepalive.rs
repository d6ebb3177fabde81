//! HTTP/1.1 keep-alive across edge's parked phase: an idle connection gives its
//! hyper state back and takes it again on the next request, without the client
//! noticing (no `Connection: close`, pipelined bytes kept).

use std::time::Duration;

use edge_tests::{poll_until, start_default, Edge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n";

/// Waits until edge reports the test's one client connection parked.
async fn until_parked(edge: &Edge) -> anyhow::Result<()> {
    poll_until(
        "the connection to park",
        Duration::from_secs(10),
        || async {
            let parked = edge.metric("proxy_parked_connections").await;
            parked.is_ok_and(|(value, _)| value == Some(1.0))
        },
    )
    .await
}

/// Reads until `n` complete responses (head and Content-Length body) arrived;
/// returns their heads.
async fn read_responses(conn: &mut TcpStream, n: usize) -> anyhow::Result<Vec<String>> {
    let mut buf = Vec::new();
    let mut heads = Vec::new();
    let mut at = 0;
    while heads.len() < n {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await??;
        anyhow::ensure!(read > 0, "edge closed after {} responses", heads.len());
        buf.extend_from_slice(&chunk[..read]);
        while let Some(end) = find(&buf[at..], b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[at..at + end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let next = at + end + 4 + length;
            if buf.len() < next {
                break;
            }
            heads.push(head);
            at = next;
        }
    }
    Ok(heads)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn assert_kept_alive(heads: &[String]) {
    for head in heads {
        assert!(head.starts_with("HTTP/1.1 200"), "not a 200: {head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "edge asked to close: {head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_serves_its_next_request() -> anyhow::Result<()> {
    let (origin, edge) = start_default().await?;
    let mut conn = TcpStream::connect(edge.http()?).await?;
    for _ in 0..3 {
        conn.write_all(GET).await?;
        assert_kept_alive(&read_responses(&mut conn, 1).await?);
        until_parked(&edge).await?;
    }
    assert_eq!(origin.requests(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_bytes_survive_a_park() -> anyhow::Result<()> {
    let (origin, edge) = start_default().await?;
    let mut conn = TcpStream::connect(edge.http()?).await?;
    // A whole request and the first part of the next, then a wait until the
    // connection parks with those bytes read ahead, then the rest of the second.
    let (first, rest) = GET.split_at(17);
    conn.write_all(&[GET, first].concat()).await?;
    assert_kept_alive(&read_responses(&mut conn, 1).await?);
    until_parked(&edge).await?; // mid-head
    conn.write_all(rest).await?;
    // Two more in one write: pipelined after the park.
    conn.write_all(&GET.repeat(2)).await?;
    assert_kept_alive(&read_responses(&mut conn, 3).await?);
    assert_eq!(origin.requests(), 4);
    Ok(())
}

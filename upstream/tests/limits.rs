//! Pool limits that shed load instead of queueing it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use upstream::{EndpointAddr, Error, Pool, PoolConfig, Protocol};

/// An endpoint that accepts TCP but never answers the TLS handshake, so a
/// connect to it stays under way until the connect timeout. Counts accepts.
async fn silent_tls_endpoint() -> anyhow::Result<(EndpointAddr, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = EndpointAddr::parse(&format!(
        "https://127.0.0.1:{}",
        listener.local_addr()?.port()
    ))?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    Ok((addr, accepted))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_past_the_limit_fail_at_once_instead_of_queueing() -> anyhow::Result<()> {
    let (addr, accepted) = silent_tls_endpoint().await?;
    let mut cfg = PoolConfig::new("limited", vec![addr]);
    // HTTP/1.1: every request opens its own connection. (HTTP/2 requests to one
    // endpoint share one connect: the second would wait for the first's.)
    cfg.protocol = Protocol::H1;
    cfg.connect_timeout = Duration::from_secs(30);
    cfg.max_pending_connects = 1;
    let pool = Arc::new(Pool::<Empty<Bytes>>::new(cfg)?);

    let first = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.send(http::Request::new(Empty::new())).await })
    };
    edge_tests::wait_until("the first connect", Duration::from_secs(10), || {
        accepted.load(Ordering::SeqCst) > 0
    })
    .await?;
    // The first request holds the only connect slot, stuck in its handshake.
    let second = pool.send(http::Request::new(Empty::new())).await;
    match second {
        Err(e @ Error::TooManyConnects { .. }) => {
            assert!(e.to_string().contains("connects under way"), "{e}")
        }
        other => panic!(
            "expected the connect to be shed, got {:?}",
            other.map(|r| r.status())
        ),
    }
    assert!(
        !first.is_finished(),
        "the first connect is still waiting on its handshake"
    );
    first.abort();
    Ok(())
}

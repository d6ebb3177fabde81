//! Leaving without dropping traffic, in the order GeoDNS needs: on SIGTERM
//! `/healthz` answers 503 `draining` for `drain.delay` while the data port still
//! serves, and only then do the listeners stop; a second SIGTERM cuts the
//! delay short. A poller on `/healthz` and a client on the data port watch it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_tests::scripted::{get, Reply, Scripted};
use edge_tests::{eventually, Edge, EdgeConfig};
use tokio::time::Instant;

async fn edge(delay: &str) -> anyhow::Result<(Scripted, Edge)> {
    let origin = Scripted::start(|_| Reply::ok(&[], "ok")).await?;
    let edge = Edge::start(
        &EdgeConfig::new(origin.url())
            .protocol("h1")
            .section(&format!("[drain]\ndelay = \"{delay}\"\n")),
    )
    .await?;
    Ok((origin, edge))
}

/// What one poller saw: (when, ok) per attempt, `ok` meaning the answer it wanted.
type Seen = Arc<Mutex<Vec<(Instant, bool)>>>;

/// Polls `addr` `path` every 50 ms until `stop`, recording whether it got `want`.
fn poll(addr: std::net::SocketAddr, path: &'static str, want: u16, stop: Arc<AtomicBool>) -> Seen {
    let seen: Seen = Arc::default();
    let out = Arc::clone(&seen);
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(2), get(addr, path, &[])).await,
                Ok(Ok(g)) if g.status == want
            );
            out.lock().map(|mut v| v.push((Instant::now(), ok))).ok();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_first_then_the_listeners_stop() -> anyhow::Result<()> {
    let (_origin, mut edge) = edge("2s").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let unhealthy = poll(edge.admin()?, "/healthz", 503, stop.clone());
    let served = poll(edge.http()?, "/", 200, stop.clone());
    eventually("the data port serving", Duration::from_secs(10), || async {
        Ok(served
            .lock()
            .ok()
            .and_then(|v| v.iter().any(|(_, ok)| *ok).then_some(())))
    })
    .await?;
    let term = Instant::now();
    edge.terminate().await?;
    let status = edge.wait_exit(Duration::from_secs(20)).await?;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(status.code(), Some(0), "{}", edge.log());

    let unhealthy = unhealthy.lock().map(|v| v.clone()).unwrap_or_default();
    let served = served.lock().map(|v| v.clone()).unwrap_or_default();
    let withdrawn = unhealthy
        .iter()
        .find(|(at, ok)| *at >= term && *ok)
        .map(|(at, _)| *at)
        .ok_or_else(|| anyhow::anyhow!("/healthz never said 503 after SIGTERM: {}", edge.log()))?;
    // After /healthz failed, the data port still answered 200: the withdrawal
    // came before the listeners stopped, not with them.
    let served_after = served
        .iter()
        .filter(|(at, ok)| *at > withdrawn && *ok)
        .count();
    assert!(
        served_after >= 3,
        "{served_after} answers on the data port after /healthz said 503"
    );
    // And then it stopped: the process is gone, the port refuses.
    assert!(
        get(edge.http()?, "/", &[]).await.is_err(),
        "the data port still answers after exit"
    );
    let log = edge.log();
    let w = log.find("withdrawing").unwrap_or(usize::MAX);
    let d = log.find("draining: no new connections").unwrap_or(0);
    assert!(w < d, "withdrawal logged before draining:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_without_waiting_out_the_delay() -> anyhow::Result<()> {
    let (_origin, mut edge) = edge("10m").await?;
    let admin = edge.admin()?;
    edge.terminate().await?;
    eventually("/healthz 503", Duration::from_secs(10), || async {
        Ok((get(admin, "/healthz", &[]).await?.status == 503).then_some(()))
    })
    .await?;
    // Still serving while withdrawn, and saying so to Prometheus.
    assert_eq!(get(edge.http()?, "/", &[]).await?.status, 200);
    let metrics = get(admin, "/metrics", &[]).await?;
    let body = String::from_utf8_lossy(&metrics.body);
    assert!(body.contains("\nproxy_draining 1\n"), "{body}");
    edge.terminate().await?;
    // Far less than the 10 minutes of the delay.
    let status = edge.wait_exit(Duration::from_secs(20)).await?;
    assert_eq!(status.code(), Some(0));
    assert!(
        edge.log().contains("second signal: stopping now"),
        "{}",
        edge.log()
    );
    Ok(())
}

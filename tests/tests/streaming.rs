//! 1 GiB up and down through h1, h2 and h3 while edge's memory stays flat.
//!
//! Slow by nature: kept in their own file so they can be run (or skipped) alone.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_tests::edge::rss_kib_of;
use edge_tests::{curl, curl_timeout, curl_transfer, gtlsclient, start_default, tls_args, Edge};

const GIB: u64 = 1 << 30;
/// How far above its idle RSS edge may grow while relaying 1 GiB.
const RSS_BUDGET_KIB: u64 = 64 * 1024;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Bound on one 1 GiB transfer (an unoptimised edge on two cores, with the client
/// and the origin sharing them).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `transfer` while sampling edge's RSS; returns its output and the peak RSS.
async fn with_rss_sampling<T>(edge: &Edge, transfer: impl Future<Output = T>) -> (T, u64) {
    let pid = edge.pid();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_EVERY);
            loop {
                ticks.tick().await;
                if let Ok(kib) = rss_kib_of(pid) {
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
            }
        })
    };
    let output = transfer.await;
    sampler.abort();
    if let Ok(kib) = rss_kib_of(pid) {
        peak.fetch_max(kib, Ordering::SeqCst);
    }
    (output, peak.load(Ordering::SeqCst))
}

/// RSS of edge after one small request of the same protocol has warmed it up.
async fn idle_rss(
    edge: &Edge,
    warm_up: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<u64> {
    warm_up.await?;
    edge.rss_kib()
}

fn assert_rss_within_budget(idle: u64, peak: u64, what: &str) {
    eprintln!("{what}: edge RSS {idle} KiB idle, {peak} KiB peak");
    assert!(
        peak.saturating_sub(idle) < RSS_BUDGET_KIB,
        "{what}: edge RSS went from {idle} KiB idle to {peak} KiB (budget {RSS_BUDGET_KIB} KiB)"
    );
}

/// A sparse 1 GiB file of zeros beside edge's config.
fn sparse_gib(edge: &Edge) -> anyhow::Result<String> {
    let path = edge.dir.path().join("upload-1gib.bin");
    std::fs::File::create(&path)?.set_len(GIB)?;
    Ok(path.to_string_lossy().into_owned())
}

fn curl_args(edge: &Edge, version: &str, path: &str) -> Vec<String> {
    let mut args = tls_args(edge);
    args.push(version.to_owned());
    args.push(format!("{}{path}", edge.https_origin()));
    args
}

async fn curl_warm_up(edge: &Edge, version: &str) -> anyhow::Result<()> {
    let response = curl(&curl_args(edge, version, "/")).await?;
    anyhow::ensure!(response.status == 200, "warm-up got {}", response.status);
    Ok(())
}

async fn curl_download(version: &str) -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let idle = idle_rss(&edge, curl_warm_up(&edge, version)).await?;
    let args = curl_args(&edge, version, &format!("/bytes/{GIB}"));
    let (response, peak) = with_rss_sampling(&edge, curl_transfer(&args, TRANSFER_TIMEOUT)).await;
    let response = response?;
    assert_eq!(response.status, 200);
    assert_eq!(response.size_download, GIB, "bytes received");
    assert_rss_within_budget(idle, peak, &format!("download {version}"));
    Ok(())
}

async fn curl_upload(version: &str) -> anyhow::Result<()> {
    let (origin, edge) = start_default().await?;
    let file = sparse_gib(&edge)?;
    let idle = idle_rss(&edge, curl_warm_up(&edge, version)).await?;
    let mut args = curl_args(&edge, version, "/upload");
    // -T streams the file (as a PUT); --data-binary would read it all into curl.
    args.extend(["-T".to_owned(), file]);
    let (response, peak) = with_rss_sampling(&edge, curl_timeout(&args, TRANSFER_TIMEOUT)).await;
    let response = response?;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.size_upload, GIB, "bytes curl sent");
    assert_eq!(
        response.text(),
        GIB.to_string(),
        "bytes the origin received"
    );
    assert_eq!(origin.requests(), 2);
    assert_rss_within_budget(idle, peak, &format!("upload {version}"));
    Ok(())
}

async fn h3_warm_up(edge: &Edge) -> anyhow::Result<()> {
    let response = gtlsclient(edge, "/", &[], false, Duration::from_secs(10)).await?;
    anyhow::ensure!(
        response.text()? == "hello",
        "warm-up got {:?}",
        response.text()?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_download_1gib_exact_with_bounded_rss() -> anyhow::Result<()> {
    curl_download("--http1.1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_upload_1gib_exact_with_bounded_rss() -> anyhow::Result<()> {
    curl_upload("--http1.1").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_download_1gib_exact_with_bounded_rss() -> anyhow::Result<()> {
    curl_download("--http2").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upload_1gib_exact_with_bounded_rss() -> anyhow::Result<()> {
    curl_upload("--http2").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_download_1gib_exact_with_bounded_rss() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let idle = idle_rss(&edge, h3_warm_up(&edge)).await?;
    let path = format!("/bytes/{GIB}");
    let download = gtlsclient(&edge, &path, &[], false, TRANSFER_TIMEOUT);
    let (response, peak) = with_rss_sampling(&edge, download).await;
    let response = response?;
    assert_eq!(response.body_len, GIB, "bytes gtlsclient saved");
    assert_rss_within_budget(idle, peak, "download h3");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_upload_1gib_exact_with_bounded_rss() -> anyhow::Result<()> {
    let (origin, edge) = start_default().await?;
    let file = sparse_gib(&edge)?;
    let idle = idle_rss(&edge, h3_warm_up(&edge)).await?;
    let extra = ["-m".to_owned(), "POST".to_owned(), format!("--data={file}")];
    let upload = gtlsclient(&edge, "/upload", &extra, false, TRANSFER_TIMEOUT);
    let (response, peak) = with_rss_sampling(&edge, upload).await;
    let response = response?;
    assert_eq!(
        response.text()?,
        GIB.to_string(),
        "bytes the origin received"
    );
    assert_eq!(origin.requests(), 2);
    assert_rss_within_budget(idle, peak, "upload h3");
    Ok(())
}

//! `[forecast]`: a replayed daily-shaped load, compressed so a "day" lasts six
//! seconds, through a real edge to a real origin. The exported one-bucket-ahead
//! forecast tracks the rate the edge saw within a stated error, and before the
//! second day's rise is half way up, the origin already holds connections the
//! edge opened ahead of it.

use std::collections::BTreeMap;
use std::time::Duration;

use edge_tests::{run_edge, Edge, EdgeConfig, KeepAlive, Origin, OriginOptions};
use http::Method;
use tokio::time::Instant;

/// One compressed day: trough at 0, peak at half a day.
const DAY: Duration = Duration::from_secs(6);
/// The replay: two and a quarter days (at most ~1,500 requests).
const REPLAY: Duration = Duration::from_millis(13_500);
/// Offered request rate at the trough and at the peak.
const LOW_RPS: f64 = 40.0;
const HIGH_RPS: f64 = 160.0;
/// The error the one-bucket-ahead forecast must stay within, as a mean
/// absolute percentage error over day two on.
const MAX_MAPE: f64 = 0.30;

const FORECAST: &str = "[forecast]\n\
    interval = \"250ms\"\n\
    history = 240\n\
    horizons = 8\n\
    refit_every = 1\n\
    endpoint_rps = 50\n\
    connection_rps = 20\n\
    prewarm_rise = 0.1\n\
    prewarm_max = 8\n";

/// The offered rate `t` into the replay: a cosine day between the two rates.
fn offered(t: Duration) -> f64 {
    let phase = t.as_secs_f64() / DAY.as_secs_f64() * std::f64::consts::TAU;
    LOW_RPS + (HIGH_RPS - LOW_RPS) * (1.0 - phase.cos()) / 2.0
}

/// One scrape of the forecast series of pool `default`.
#[derive(Clone, Copy, Debug)]
struct Scrape {
    observed: f64,
    next: f64,
    prewarmed: f64,
    recommendation: f64,
}

fn value(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(&format!("{series} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The fit count (one per bucket with `refit_every = 1`) and what the
/// forecast's gauges said then; `None` before the first fit.
async fn scrape(edge: &Edge) -> anyhow::Result<Option<(u64, Scrape)>> {
    let (_, page) = edge.metric("proxy_forecast_fits_total").await?;
    let fits = value(
        &page,
        r#"proxy_forecast_fits_total{pool="default",result="ok"}"#,
    );
    let next = value(
        &page,
        r#"proxy_forecast_requests_per_second{horizon="1",pool="default"}"#,
    );
    let observed = value(
        &page,
        r#"proxy_forecast_observed_requests_per_second{pool="default"}"#,
    );
    let (Some(fits), Some(next), Some(observed)) = (fits, next, observed) else {
        return Ok(None);
    };
    let prewarmed = value(
        &page,
        r#"proxy_forecast_prewarmed_connections_total{pool="default"}"#,
    )
    .unwrap_or(0.0);
    let recommendation = value(
        &page,
        r#"proxy_forecast_scale_recommendation{pool="default"}"#,
    )
    .unwrap_or(0.0);
    let s = Scrape {
        observed,
        next,
        prewarmed,
        recommendation,
    };
    Ok(Some((fits as u64, s)))
}

/// What the origin held when the replay's second rise crossed half way.
#[derive(Debug)]
struct AtMidRise {
    at: Instant,
    accepted: u64,
    open: u64,
}

/// Sends the replay from one keep-alive client, one request at a time (so the
/// edge's own traffic needs one upstream connection), and notes the origin's
/// connections when the second day's rise is half way up.
async fn replay(edge: &Edge, origin: &Origin) -> anyhow::Result<(u64, Option<AtMidRise>)> {
    let mut client = KeepAlive::new(edge.http()?);
    let start = Instant::now();
    let mut next = start;
    let mut sent = 0u64;
    let mut mid_rise = None;
    let half_way = (LOW_RPS + HIGH_RPS) / 2.0;
    while next.duration_since(start) < REPLAY {
        tokio::time::sleep_until(next).await;
        let t = next.duration_since(start);
        let rate = offered(t);
        if mid_rise.is_none() && t > DAY && rate >= half_way {
            mid_rise = Some(AtMidRise {
                at: Instant::now(),
                accepted: origin.connections(),
                open: origin.open_connections(),
            });
        }
        let reply = client
            .request(&Method::GET, "/", &format!("replay-{sent}"))
            .await
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(reply.status == 200, "request {sent}: {}", reply.status);
        sent += 1;
        // Paced by schedule, not by answers: a slow answer is caught up on.
        next += Duration::from_secs_f64(1.0 / rate);
    }
    Ok((sent, mid_rise))
}

/// Scrapes until `done`, keeping the last scrape seen at each fit count.
async fn watch(
    edge: &Edge,
    done: &tokio::sync::Notify,
) -> anyhow::Result<BTreeMap<u64, (Instant, Scrape)>> {
    let mut seen = BTreeMap::new();
    let finished = done.notified();
    tokio::pin!(finished);
    loop {
        if let Some((fits, s)) = scrape(edge).await? {
            seen.insert(fits, (Instant::now(), s));
        }
        tokio::select! {
            () = &mut finished => return Ok(seen),
            () = tokio::time::sleep(Duration::from_millis(30)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecast_tracks_a_daily_load_and_prewarms_before_the_rise() -> anyhow::Result<()> {
    let origin = Origin::start_with(OriginOptions {
        http1_only: true,
        ..OriginOptions::default()
    })
    .await?;
    // Idle pooled connections close after 1 s, so those pre-warmed on day one
    // are gone by day two's trough and its rise must be warmed again.
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .pool_setting("idle_timeout", "\"1s\"")
        .section(FORECAST);
    let edge = Edge::start(&config).await?;

    let done = tokio::sync::Notify::new();
    let started = Instant::now();
    let (replayed, seen) = tokio::join!(
        async {
            let r = replay(&edge, &origin).await;
            done.notify_one();
            r
        },
        watch(&edge, &done),
    );
    let ((sent, mid_rise), seen) = (replayed?, seen?);
    assert!(sent > 1000, "replayed only {sent} requests");

    // Tracking: the forecast made at bucket k for k + 1, against what k + 1
    // observed, over day two on (day one is the model's warm-up).
    let day_two = started + DAY;
    let mut errors = Vec::new();
    for (fits, (_, made)) in &seen {
        let Some((at, then)) = seen.get(&(fits + 1)) else {
            continue;
        };
        if *at >= day_two && then.observed > 0.0 {
            errors.push((made.next - then.observed).abs() / then.observed);
        }
    }
    assert!(
        errors.len() >= 20,
        "only {} bucket pairs seen: {seen:?}",
        errors.len()
    );
    let mape = errors.iter().sum::<f64>() / errors.len() as f64;
    println!(
        "one-bucket-ahead MAPE over {} buckets: {mape:.3}",
        errors.len()
    );
    assert!(
        mape <= MAX_MAPE,
        "MAPE {mape:.3} over {} buckets: {seen:?}",
        errors.len()
    );

    // What was observed has the day's shape, and the recommendation follows it
    // (endpoint_rps = 50: 1 at the trough, 3 or more at the peak).
    let observed: Vec<f64> = seen.values().map(|(_, s)| s.observed).collect();
    let (lo, hi) = observed
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    assert!(
        hi >= 2.0 * lo && hi > 80.0,
        "no daily shape in {observed:?}"
    );
    let recommended: Vec<f64> = seen.values().map(|(_, s)| s.recommendation).collect();
    assert!(recommended.iter().any(|&r| r <= 1.0), "{recommended:?}");
    assert!(recommended.iter().any(|&r| r >= 3.0), "{recommended:?}");

    // Pre-warm: one sequential client needs one upstream connection; half way
    // up the second rise the origin already holds more, and a scrape taken
    // before that moment already counted connections opened ahead of the rise.
    let mid = mid_rise.expect("the replay reaches the second rise");
    assert!(
        mid.accepted >= 2 && mid.open >= 2,
        "half way up the rise the origin held {mid:?}"
    );
    let prewarmed_by = |t: Instant| {
        seen.values()
            .filter(|(at, _)| *at < t)
            .map(|(_, s)| s.prewarmed)
            .fold(0.0, f64::max)
    };
    // Counted from day two's trough: warmed for this rise, not left from day one.
    let prewarmed_before = prewarmed_by(mid.at) - prewarmed_by(started + DAY - DAY / 8);
    let first_prewarm = seen
        .values()
        .find(|(_, s)| s.prewarmed > 0.0)
        .map(|(at, _)| at.duration_since(started));
    println!("first pre-warm seen {first_prewarm:?} into the replay (second rise from {DAY:?})");
    println!(
        "half way up the second rise: origin {mid:?}, {prewarmed_before} pre-warmed before it"
    );
    assert!(
        prewarmed_before >= 1.0,
        "no pre-warmed connection counted before half way up the rise: {seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_forecast_table_is_refused_naming_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("edge.toml");
    std::fs::write(
        &file,
        "[pools.default]\nendpoints = [\"http://127.0.0.1:9\"]\n\n[forecast]\ninterval = \"1ms\"\n",
    )?;
    let out = run_edge(
        ["check".as_ref(), "-c".as_ref(), file.as_os_str()],
        Duration::from_secs(10),
    )
    .await?;
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    let printed = format!("{}{}", out.stdout, out.stderr);
    let want = format!(
        "{}:5: forecast.interval: must be at least 50ms",
        file.display()
    );
    assert!(
        printed.lines().any(|l| l.starts_with(&want)),
        "no `{want}` line in:\n{printed}"
    );
    Ok(())
}

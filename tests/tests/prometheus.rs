//! The operator's side of metrics, with the real tools: the alert rules pass
//! `promtool check rules` and their unit tests, edge's exposition passes
//! `promtool check metrics`, and a real Prometheus scraping a running edge
//! evaluates every alert rule without error and answers every query of the
//! Grafana dashboard (`ops/grafana/edge.json`), the core panels with data.

use std::time::Duration;

use edge_tests::process::run;
use edge_tests::prometheus::Prometheus;
use edge_tests::scripted::get;
use edge_tests::{eventually, start_default, workspace_root, Edge};

const PROMTOOL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn alert_rules_pass_promtool_check_and_their_unit_tests() -> anyhow::Result<()> {
    let dir = workspace_root().join("ops/prometheus");
    let check = run(
        "promtool",
        [
            "check",
            "rules",
            &dir.join("alerts.yml").display().to_string(),
        ],
        PROMTOOL,
    )
    .await?;
    check.ensure_success("promtool check rules")?;
    assert!(check.stdout.contains("SUCCESS"), "{}", check.stdout);
    let test = run(
        "promtool",
        [
            "test",
            "rules",
            &dir.join("alerts_test.yml").display().to_string(),
        ],
        PROMTOOL,
    )
    .await?;
    test.ensure_success("promtool test rules")?;
    Ok(())
}

/// Requests of several kinds, so counters, histograms and error series exist.
async fn traffic(edge: &Edge, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let got = get(edge.http()?, &format!("/p/{i}"), &[]).await?;
        assert_eq!(got.status, 200);
    }
    // A bad request: counted as edge's own error, on the client's side.
    let bad = get(edge.http()?, "/%zz", &[]).await?;
    assert_eq!(bad.status, 400);
    Ok(())
}

#[tokio::test]
async fn edge_metrics_pass_promtool_lint() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    traffic(&edge, 5).await?;
    let metrics = get(edge.admin()?, "/metrics", &[]).await?;
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &metrics.body)?;
    let lint = run(
        "sh",
        [
            "-c",
            &format!("promtool check metrics < '{}'", file.path().display()),
        ],
        PROMTOOL,
    )
    .await?;
    lint.ensure_success("promtool check metrics")?;
    assert_eq!(lint.stdout.trim(), "", "lint findings: {}", lint.stdout);
    Ok(())
}

/// Every `expr` of the dashboard, with Grafana's variables as "all".
fn dashboard_queries() -> anyhow::Result<Vec<(String, String)>> {
    let path = workspace_root().join("ops/grafana/edge.json");
    let dashboard: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let expr = expr
                .replace("$__rate_interval", "30s")
                .replace("$instance", ".*")
                .replace("$pool", ".*");
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            out.push((title, expr));
        }
    }
    Ok(out)
}

/// Panels that must show data for an edge that served plain requests.
const CORE_PANELS: &[&str] = &[
    "Requests/s by pool",
    "Requests/s by status class",
    "5xx ratio by pool",
    "Latency by protocol (head to head)",
    "p99 latency by pool",
    "Open client connections by protocol",
    "Edge error answers by kind and side",
    "Overload and drain",
    "Requests/s by client protocol",
];

#[tokio::test]
async fn a_real_prometheus_scrapes_edge_evaluates_the_alerts_and_answers_the_dashboard(
) -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let rules = workspace_root().join("ops/prometheus/alerts.yml");
    let prometheus = Prometheus::start(&[edge.admin()?], &[&rules]).await?;
    traffic(&edge, 40).await?;
    // Requests go on while waiting: a counter's first scrape gives no rate, a
    // later one that saw it grow does.
    eventually(
        "a request rate in Prometheus",
        Duration::from_secs(30),
        || async {
            traffic(&edge, 2).await?;
            let r = prometheus
                .samples("sum(rate(proxy_requests_total{job=\"edge\"}[30s]))")
                .await?;
            let rate = r
                .first()
                .and_then(|s| s["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            Ok((rate > 0.0).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", prometheus.log()))?;

    let queries = dashboard_queries()?;
    assert!(queries.len() >= 40, "{} queries", queries.len());
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let answer = prometheus.query(expr).await?;
        assert_eq!(
            answer["status"], "success",
            "panel {title:?}: {expr}: {answer}"
        );
        if answer["data"]["result"]
            .as_array()
            .is_none_or(Vec::is_empty)
        {
            empty.push(title.as_str());
        }
    }
    for core in CORE_PANELS {
        assert!(
            queries.iter().any(|(t, _)| t == core),
            "no panel {core:?} in the dashboard"
        );
        // A panel with several queries needs data in one of them.
        let with_data = queries
            .iter()
            .any(|(t, _)| t == core && !empty.contains(&t.as_str()));
        assert!(with_data, "panel {core:?} has no data; empty: {empty:?}");
    }
    // The pool variable's values come from the scraped series.
    let pools = prometheus
        .api("/api/v1/label/backend/values?match%5B%5D=proxy_requests_total")
        .await?;
    assert!(
        pools["data"]
            .as_array()
            .is_some_and(|v| v.iter().any(|p| p == "default")),
        "{pools}"
    );

    // Every rule has been evaluated against the real series without error.
    eventually("every rule evaluated", Duration::from_secs(30), || async {
        let rules = prometheus.api("/api/v1/rules").await?;
        let all: Vec<&serde_json::Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        assert!(all.len() >= 10, "{rules}");
        for rule in &all {
            assert_ne!(rule["health"], "err", "rule failed: {rule}");
        }
        Ok(all.iter().all(|r| r["health"] == "ok").then_some(()))
    })
    .await?;
    // A healthy edge fires nothing but may have pending nothing either.
    let alerts = prometheus.api("/api/v1/alerts").await?;
    let firing: Vec<&serde_json::Value> = alerts["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    assert!(firing.is_empty(), "alerts on a healthy edge: {alerts}");
    Ok(())
}

//! The admin listener: `/healthz` and Prometheus `/metrics`.

use edge_tests::{curl, start_default, Edge};

async fn metrics(edge: &Edge) -> anyhow::Result<String> {
    let response = curl(&[format!("http://{}/metrics", edge.admin()?)]).await?;
    assert_eq!(response.status, 200);
    Ok(response.text())
}

/// Parses `name{a="x",b="y"} value` lines, whatever the label order.
fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .filter_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value))
        })
        .collect()
}

fn has_labels(labels: &[(String, String)], wanted: &[(&str, &str)]) -> bool {
    wanted
        .iter()
        .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_200() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let response = curl(&[format!("http://{}/healthz", edge.admin()?)]).await?;
    assert_eq!(response.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_total_counts_200s_of_default_backend() -> anyhow::Result<()> {
    let (origin, edge) = start_default().await?;
    for _ in 0..5 {
        let response = curl(&[format!("http://{}/", edge.http()?)]).await?;
        assert_eq!(response.status, 200);
    }
    assert_eq!(origin.requests(), 5);
    let text = metrics(&edge).await?;
    let counted: Vec<f64> = samples(&text, "proxy_requests_total")
        .into_iter()
        .filter(|(labels, _)| has_labels(labels, &[("backend", "default"), ("status", "200")]))
        .map(|(_, value)| value)
        .collect();
    assert_eq!(counted, [5.0], "in /metrics:\n{text}");
    assert!(
        text.contains(r#"proxy_requests_total{backend="default",protocol="h1",status="200"} 5"#),
        "exact series named in the README missing:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_gauge_is_exported_per_protocol() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let response = curl(&[format!("http://{}/", edge.http()?)]).await?;
    assert_eq!(response.status, 200);
    let text = metrics(&edge).await?;
    let gauges = samples(&text, "proxy_open_connections");
    assert!(
        gauges
            .iter()
            .any(|(labels, _)| has_labels(labels, &[("protocol", "h1")])),
        "no proxy_open_connections{{protocol=\"h1\"}} in:\n{text}"
    );
    for (labels, value) in &gauges {
        assert!(*value >= 0.0, "negative gauge {labels:?} = {value}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_duration_histogram_is_exported() -> anyhow::Result<()> {
    let (_origin, edge) = start_default().await?;
    let response = curl(&[format!("http://{}/", edge.http()?)]).await?;
    assert_eq!(response.status, 200);
    let text = metrics(&edge).await?;
    let counts = samples(&text, "proxy_request_duration_seconds_count");
    let total: f64 = counts
        .iter()
        .filter(|(labels, _)| has_labels(labels, &[("backend", "default")]))
        .filter(|(labels, _)| labels.iter().any(|(k, _)| k == "protocol"))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(total, 1.0, "in /metrics:\n{text}");
    Ok(())
}

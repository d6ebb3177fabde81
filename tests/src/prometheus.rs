//! A real `prometheus` server on a free loopback port, scraping what a test
//! names every second and evaluating rule files, with its TSDB in a temporary
//! directory. Killed on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use crate::process::eventually;
use crate::scripted::get;

pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Starts prometheus scraping `targets` (job `edge`, path `/metrics`) every
    /// second, with `rules` loaded and evaluated every second; waits for ready.
    pub async fn start(targets: &[SocketAddr], rules: &[&Path]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let rules: Vec<String> = rules.iter().map(|r| format!("'{}'", r.display())).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: edge\n    static_configs:\n      - targets: [{}]\n",
            rules.join(", "),
            targets.join(", ")
        );
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, config)?;
        let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus (apt-get install prometheus)")?;
        let prometheus = Self {
            child,
            addr,
            _dir: dir,
        };
        eventually("prometheus ready", Duration::from_secs(30), || async {
            Ok(matches!(get(addr, "/-/ready", &[]).await, Ok(g) if g.status == 200).then_some(()))
        })
        .await
        .with_context(|| prometheus.log())?;
        Ok(prometheus)
    }

    /// Prometheus's own log (stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET on the HTTP API, `path` with its query already encoded; the JSON
    /// body whatever the status (errors are in it).
    pub async fn api(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let got = get(self.addr, path, &[]).await?;
        serde_json::from_slice(&got.body)
            .with_context(|| format!("{path}: {}", String::from_utf8_lossy(&got.body)))
    }

    /// An instant query: the API's whole answer (`status`, `data.result`, `error`).
    pub async fn query(&self, expr: &str) -> anyhow::Result<serde_json::Value> {
        self.api(&format!("/api/v1/query?query={}", encode(expr)))
            .await
    }

    /// The samples of an instant query that must succeed.
    pub async fn samples(&self, expr: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let answer = self.query(expr).await?;
        if answer["status"] != "success" {
            bail!("{expr}: {answer}");
        }
        Ok(answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter value (everything but RFC 3986's unreserved).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

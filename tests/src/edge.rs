//! The edge binary under test: its config, its process and what it logs.

use std::io::{BufRead as _, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use crate::pki::{LeafFiles, Pki};
use crate::process::{self, tail, Finished};

/// How long edge may take from spawn to its `edge ready` line.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// The workspace root (parent of this crate), where `ops/` lives.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Path of the edge binary: `$EDGE_BIN`, else `<target>/debug/edge` of this workspace.
pub fn edge_bin() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("EDGE_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("debug").join("edge")
        }
    };
    if !path.is_file() {
        bail!(
            "edge binary not found at {}: run `cargo build -p edge --bin edge` first \
             or point EDGE_BIN at one",
            path.display()
        );
    }
    Ok(path)
}

/// Writes `lines` as a config file and asserts `edge check` refuses it (exit
/// 2) with, for each `(line, key, reason)`, a line naming `FILE:LINE: KEY`
/// and containing `reason`.
pub async fn assert_check_refuses(
    lines: &[&str],
    expected: &[(usize, &str, &str)],
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, lines.join("\n"))?;
    let out = run_edge(
        ["check".as_ref(), "-c".as_ref(), file.as_os_str()],
        Duration::from_secs(20),
    )
    .await?;
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    let printed = format!("{}{}", out.stdout, out.stderr);
    let file = file.display().to_string();
    for (line, key, reason) in expected {
        assert!(
            printed
                .lines()
                .any(|l| l.contains(&format!("{file}:{line}: {key}")) && l.contains(reason)),
            "no line {line} for {key} ({reason}) in:\n{printed}"
        );
    }
    Ok(())
}

/// Runs the edge binary to completion (e.g. `edge check`), killed after `timeout`.
pub async fn run_edge<I, S>(args: I, timeout: Duration) -> anyhow::Result<Finished>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = tokio::process::Command::new(edge_bin()?);
    command
        .args(args)
        .env("NO_COLOR", "1")
        .current_dir(workspace_root());
    process::run_command(command, timeout).await
}

/// Asserts `edge` failed cleanly: non-zero exit, no panic, exactly one `edge: `
/// line on stderr, and that line naming `name` (e.g. an address or a DNS name).
pub fn assert_one_line_naming(out: &Finished, name: &str) {
    assert!(
        matches!(out.code, Some(code) if code != 0 && code != 101),
        "exit {:?}, stderr:\n{}",
        out.code,
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "panicked:\n{}",
        out.stderr
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("edge: "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one `edge: ` line in:\n{}",
        out.stderr
    );
    assert!(
        lines[0].contains(name),
        "{:?} does not name {name}",
        lines[0]
    );
}

/// One `[pools.NAME]` table.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Pool name, referenced by routes and used as the `backend` metric label.
    pub name: String,
    /// Endpoint URLs such as `http://127.0.0.1:PORT`.
    pub endpoints: Vec<String>,
    /// Further keys with their values already written as TOML (`"1s"`, `"h1"`).
    pub settings: Vec<(String, String)>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Exact host to match, if any.
    pub host: Option<String>,
    /// Path prefix to match.
    pub path_prefix: String,
    /// Pool the route sends to.
    pub pool: String,
}

/// A config file for edge, rendered to TOML by [`EdgeConfig::to_toml`].
///
/// Every listener binds port 0 on 127.0.0.1; the generated certificate is served.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Whether to add the plaintext `http_listen` listener.
    pub http_listen: bool,
    /// Whether to add the `admin` listener.
    pub admin: bool,
    /// Further top-level keys with TOML values (e.g. `trusted_proxies`).
    pub top: Vec<(String, String)>,
    /// `[client]` keys with TOML values.
    pub client: Vec<(String, String)>,
    /// `[tls]` keys with TOML values.
    pub tls: Vec<(String, String)>,
    /// Routes, in order; an empty list renders a single catch-all to `default`.
    pub routes: Vec<RouteConfig>,
    /// Keys with TOML values set on every route rendered.
    pub route_settings: Vec<(String, String)>,
    /// Pools.
    pub pools: Vec<PoolConfig>,
    /// `[[tls.certificates]]`, in order; empty serves the `localhost` leaf of the
    /// [`Pki`] the config is rendered with.
    pub certificates: Vec<LeafFiles>,
    /// `[cache]` keys with TOML values; empty leaves the section out.
    pub cache: Vec<(String, String)>,
    /// Whole TOML sections appended as written (`[redis]\nurl = ...`).
    pub sections: Vec<String>,
}

impl EdgeConfig {
    /// All listeners, Alt-Svc on, and one pool `default` with `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            http_listen: true,
            admin: true,
            top: Vec::new(),
            client: Vec::new(),
            tls: Vec::new(),
            routes: Vec::new(),
            route_settings: Vec::new(),
            pools: vec![PoolConfig {
                name: "default".to_owned(),
                endpoints: vec![endpoint.into()],
                settings: Vec::new(),
            }],
            certificates: Vec::new(),
            cache: Vec::new(),
            sections: Vec::new(),
        }
    }

    /// Sets `key = value` (value written as TOML) in `[tls]`.
    pub fn tls_setting(mut self, key: &str, toml_value: &str) -> Self {
        self.tls.push((key.to_owned(), toml_value.to_owned()));
        self
    }

    /// Appends a whole TOML section, as written.
    pub fn section(mut self, toml: &str) -> Self {
        self.sections.push(toml.to_owned());
        self
    }

    /// Sets `key = value` (value written as TOML) in `[cache]`.
    pub fn cache_setting(mut self, key: &str, toml_value: &str) -> Self {
        self.cache.push((key.to_owned(), toml_value.to_owned()));
        self
    }

    /// Adds a `[[tls.certificates]]` entry (the first one added is edge's default).
    pub fn certificate(mut self, leaf: LeafFiles) -> Self {
        self.certificates.push(leaf);
        self
    }

    /// Sets `key = value` (value written as TOML) on every route.
    pub fn route_setting(mut self, key: &str, toml_value: &str) -> Self {
        self.route_settings
            .push((key.to_owned(), toml_value.to_owned()));
        self
    }

    /// Sets `key = value` (value written as TOML) on the `default` pool.
    pub fn pool_setting(mut self, key: &str, toml_value: &str) -> Self {
        if let Some(pool) = self.pools.iter_mut().find(|p| p.name == "default") {
            pool.settings.push((key.to_owned(), toml_value.to_owned()));
        }
        self
    }

    /// Sets `protocol` of the `default` pool (`h1` or `h2`).
    pub fn protocol(self, protocol: &str) -> Self {
        self.pool_setting("protocol", &toml_str(protocol))
    }

    /// Sets a top-level `key = value` (value written as TOML).
    pub fn top_setting(mut self, key: &str, toml_value: &str) -> Self {
        self.top.push((key.to_owned(), toml_value.to_owned()));
        self
    }

    /// Sets `key = value` (value written as TOML) in `[client]`.
    pub fn client_setting(mut self, key: &str, toml_value: &str) -> Self {
        self.client.push((key.to_owned(), toml_value.to_owned()));
        self
    }

    /// Renders the config, serving the certificate of `pki`.
    pub fn to_toml(&self, pki: &Pki) -> String {
        let mut out = String::from("listen = \"127.0.0.1:0\"\n");
        if self.http_listen {
            out.push_str("http_listen = \"127.0.0.1:0\"\n");
        }
        if self.admin {
            out.push_str("admin = \"127.0.0.1:0\"\n");
        }
        // What edge generates (local CA, sticky signing key) stays in the
        // test's own directory, never in the home of whoever runs the tests.
        if !self.top.iter().any(|(k, _)| k == "state_dir") {
            out.push_str("state_dir = \"state\"\n");
        }
        for (key, value) in &self.top {
            out.push_str(&format!("{key} = {value}\n"));
        }
        out.push_str("\n[alt_svc]\nenabled = true\nmax_age = \"24h\"\n");
        out.push_str("\n[tls]\n");
        for (key, value) in &self.tls {
            out.push_str(&format!("{key} = {value}\n"));
        }
        let default_leaf = [pki.leaf()];
        let certificates = if self.certificates.is_empty() {
            &default_leaf[..]
        } else {
            &self.certificates[..]
        };
        for leaf in certificates {
            out.push_str("[[tls.certificates]]\n");
            out.push_str(&format!("cert = {}\n", toml_path(&leaf.cert)));
            out.push_str(&format!("key = {}\n", toml_path(&leaf.key)));
        }
        if !self.client.is_empty() {
            out.push_str("\n[client]\n");
            for (key, value) in &self.client {
                out.push_str(&format!("{key} = {value}\n"));
            }
        }
        if !self.cache.is_empty() {
            out.push_str("\n[cache]\n");
            for (key, value) in &self.cache {
                out.push_str(&format!("{key} = {value}\n"));
            }
        }
        let default_route = [RouteConfig {
            host: None,
            path_prefix: "/".to_owned(),
            pool: "default".to_owned(),
        }];
        let routes = if self.routes.is_empty() {
            &default_route[..]
        } else {
            &self.routes[..]
        };
        for route in routes {
            out.push_str("\n[[routes]]\n");
            if let Some(host) = &route.host {
                out.push_str(&format!("host = {}\n", toml_str(host)));
            }
            out.push_str(&format!("path_prefix = {}\n", toml_str(&route.path_prefix)));
            out.push_str(&format!("pool = {}\n", toml_str(&route.pool)));
            for (key, value) in &self.route_settings {
                out.push_str(&format!("{key} = {value}\n"));
            }
        }
        for pool in &self.pools {
            out.push_str(&format!("\n[pools.{}]\n", pool.name));
            let endpoints: Vec<String> = pool.endpoints.iter().map(|e| toml_str(e)).collect();
            out.push_str(&format!("endpoints = [{}]\n", endpoints.join(", ")));
            for (key, value) in &pool.settings {
                out.push_str(&format!("{key} = {value}\n"));
            }
        }
        for section in &self.sections {
            out.push('\n');
            out.push_str(section);
            out.push('\n');
        }
        // Tests read edge's output as its log: no access lines there unless a
        // test asks for them with its own [log] section.
        if !self
            .sections
            .iter()
            .any(|s| s.trim_start().starts_with("[log]"))
        {
            out.push_str("\n[log]\naccess = \"off\"\n");
        }
        // Leave at once on SIGTERM, unless a test is about the withdrawal.
        if !self
            .sections
            .iter()
            .any(|s| s.trim_start().starts_with("[drain]"))
        {
            out.push_str("\n[drain]\ndelay = \"0s\"\n");
        }
        out
    }
}

/// A TOML basic string holding `value` (JSON string escapes are valid TOML).
pub fn toml_str(value: &str) -> String {
    serde_json::Value::String(value.to_owned()).to_string()
}

/// A TOML basic string holding `path`.
pub fn toml_path(path: &Path) -> String {
    toml_str(&path.to_string_lossy())
}

/// A running `edge run` process, killed on drop.
///
/// Its stdout and stderr are collected for the whole run and printed on drop, so a
/// failing test's output explains itself.
#[derive(Debug)]
pub struct Edge {
    child: Child,
    log: Arc<Mutex<String>>,
    /// TLS over TCP listener (h1 and h2 by ALPN).
    pub https_addr: SocketAddr,
    /// QUIC listener (same port as `https_addr`).
    pub h3_addr: SocketAddr,
    /// Plaintext h1 + h2c listener, when configured.
    pub http_addr: Option<SocketAddr>,
    /// Admin listener (`/healthz`, `/metrics`), when configured.
    pub admin_addr: Option<SocketAddr>,
    /// Certificates edge serves; clients trust `pki.ca_cert`.
    pub pki: Pki,
    /// Path of the config file edge was started with.
    pub config_path: PathBuf,
    /// Holds the config, the certificates and any files a test writes beside them.
    pub dir: TempDir,
}

impl Edge {
    /// Waits until edge reports its Redis link up (`proxy_redis_connected 1`).
    /// Edge is ready before it has reached Redis, and until then it serves
    /// without it, so a test that needs Redis behind its first request waits here.
    pub async fn redis_connected(&self, deadline: Duration) -> anyhow::Result<()> {
        process::eventually("edge connected to redis", deadline, || async {
            Ok((self.metric("proxy_redis_connected").await?.0 == Some(1.0)).then_some(()))
        })
        .await
    }

    /// The value of the metric line starting with `series` (name and labels) on
    /// `/metrics`, with the whole page (for failure messages).
    pub async fn metric(&self, series: &str) -> anyhow::Result<(Option<f64>, String)> {
        let crate::Reply {
            status, body: page, ..
        } = crate::KeepAlive::new(self.admin()?)
            .request(&http::Method::GET, "/metrics", "metrics")
            .await
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(status == 200, "/metrics answered {status}:\n{page}");
        let value = page
            .lines()
            .find(|l| l.starts_with(&format!("{series} ")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok());
        Ok((value, page))
    }

    /// Writes `config` with fresh certificates to a tempdir and starts edge on it.
    pub async fn start(config: &EdgeConfig) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating tempdir")?;
        let pki = Pki::generate(dir.path())?;
        Self::start_with_pki(dir, pki, config).await
    }

    /// Starts edge on `config` rendered with `pki`, both already in `dir` (for
    /// tests that issue more certificates or start a TLS origin from the same CA).
    pub async fn start_with_pki(
        dir: TempDir,
        pki: Pki,
        config: &EdgeConfig,
    ) -> anyhow::Result<Self> {
        let toml = config.to_toml(&pki);
        Self::start_with_toml(dir, pki, &toml).await
    }

    /// Starts edge on a config given as TOML text, written into `dir`.
    pub async fn start_with_toml(dir: TempDir, pki: Pki, toml: &str) -> anyhow::Result<Self> {
        Self::spawn(dir, pki, toml, None, &[]).await
    }

    /// Starts edge on `config` with `env` added to its environment.
    pub async fn start_with_env(config: &EdgeConfig, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating tempdir")?;
        let pki = Pki::generate(dir.path())?;
        let toml = config.to_toml(&pki);
        Self::spawn(dir, pki, &toml, None, env).await
    }

    /// Sends `signal` (a `kill` name: HUP, USR1, ...) to the edge process, by its pid.
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().to_string();
        let flag = format!("-{signal}");
        process::run(
            "kill",
            [flag.as_str(), pid.as_str()],
            Duration::from_secs(5),
        )
        .await?
        .ensure_success(&format!("kill {flag} {pid}"))?;
        Ok(())
    }

    /// Starts edge on `config` with only the soft open-file limit lowered to
    /// `soft` (`ulimit -Sn`), the hard one left as it is.
    pub async fn start_with_soft_nofile(config: &EdgeConfig, soft: u64) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating tempdir")?;
        let pki = Pki::generate(dir.path())?;
        let toml = config.to_toml(&pki);
        Self::spawn(dir, pki, &toml, Some(format!("-Sn {soft}")), &[]).await
    }

    /// Starts edge on `config` with its open-file limit (RLIMIT_NOFILE) set to
    /// `nofile`, through `sh -c 'ulimit -n N; exec edge ...'` (same pid), for
    /// tests that exhaust its file descriptors.
    pub async fn start_with_nofile(config: &EdgeConfig, nofile: u64) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating tempdir")?;
        let pki = Pki::generate(dir.path())?;
        let toml = config.to_toml(&pki);
        Self::spawn(dir, pki, &toml, Some(format!("-n {nofile}")), &[]).await
    }

    async fn spawn(
        dir: TempDir,
        pki: Pki,
        toml: &str,
        ulimit: Option<String>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let config_path = dir.path().join("edge.toml");
        std::fs::write(&config_path, toml).context("writing edge.toml")?;
        let mut command = match ulimit {
            None => Command::new(edge_bin()?),
            Some(args) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit {args} && exec \"$@\""))
                    .arg("sh")
                    .arg(edge_bin()?);
                sh
            }
        };
        let mut child = command
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning edge")?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            collect(stderr, Arc::clone(&log));
        }
        if let Some(stdout) = child.stdout.take() {
            collect(stdout, Arc::clone(&log));
        }
        let mut edge = Self {
            child,
            log,
            https_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            h3_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: None,
            admin_addr: None,
            pki,
            config_path,
            dir,
        };
        edge.wait_ready().await?;
        Ok(edge)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let end = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            let log = self.log();
            if log.contains("edge ready") {
                return self.parse_listeners(&log);
            }
            if let Some(status) = self.child.try_wait().context("polling edge")? {
                bail!(
                    "edge exited with {status} before `edge ready`:\n{}",
                    tail(&log)
                );
            }
            if tokio::time::Instant::now() >= end {
                bail!(
                    "no `edge ready` line within {READY_DEADLINE:?}:\n{}",
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn parse_listeners(&mut self, log: &str) -> anyhow::Result<()> {
        let mut https = None;
        let mut h3 = None;
        // With several addresses per key, the first of each kind is the one
        // kept here; tests of the others read the lines themselves.
        for (kind, addr) in log.lines().filter_map(parse_listening) {
            let slot = match kind.as_str() {
                "https" => &mut https,
                "h3" => &mut h3,
                "http" => &mut self.http_addr,
                "admin" => &mut self.admin_addr,
                _ => continue,
            };
            slot.get_or_insert(addr);
        }
        self.https_addr = https.with_context(|| format!("no `kind=https` line in:\n{log}"))?;
        self.h3_addr = h3.with_context(|| format!("no `kind=h3` line in:\n{log}"))?;
        Ok(())
    }

    /// Everything edge has written to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Process id of the edge process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM to the edge process (its pid only), with the `kill` command.
    pub async fn terminate(&self) -> anyhow::Result<()> {
        self.signal("TERM").await
    }

    /// Waits, polling, until the edge process exits; fails after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().context("polling edge")? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= end {
                bail!(
                    "edge (pid {}) still running after {deadline:?}:\n{}",
                    self.pid(),
                    tail(&self.log())
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size of the edge process, in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib_of(self.pid())
    }

    /// `http_listen` address; fails when the config had none.
    pub fn http(&self) -> anyhow::Result<SocketAddr> {
        self.http_addr.context("edge has no http listener")
    }

    /// Admin address; fails when the config had none.
    pub fn admin(&self) -> anyhow::Result<SocketAddr> {
        self.admin_addr.context("edge has no admin listener")
    }

    /// `https://localhost:PORT` for the TLS/QUIC listener.
    pub fn https_origin(&self) -> String {
        format!("https://localhost:{}", self.https_addr.port())
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        // libtest shows a test's output only when it fails (by panic or by `Err`),
        // so edge's log is always written and seen exactly when it helps.
        eprintln!(
            "--- edge output (pid {}) ---\n{}",
            self.pid(),
            tail(&self.log())
        );
        // Child::kill signals exactly this child's pid; reap it so no zombie is left.
        if let Err(err) = self.child.kill() {
            eprintln!("killing edge pid {}: {err}", self.pid());
        }
        if let Err(err) = self.child.wait() {
            eprintln!("reaping edge pid {}: {err}", self.pid());
        }
    }
}

/// Resident set size of process `pid`, in KiB, from /proc/PID/status.
pub fn rss_kib_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim();
    kib.parse().with_context(|| format!("parsing {line:?}"))
}

/// Appends every line read from `stream` to `log` on a thread of its own.
fn collect(stream: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let text = strip_ansi(&String::from_utf8_lossy(&line));
                    log.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push_str(&text);
                }
            }
        }
    });
}

/// Removes ANSI colour sequences (`ESC [ ... letter`) in case a logger adds them.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses `... listening kind=KIND addr=IP:PORT ...` into `(KIND, IP:PORT)`.
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let rest = &line[line.find("listening")?..];
    let kind = field(rest, "kind=")?;
    let addr = field(rest, "addr=")?.parse().ok()?;
    Some((kind, addr))
}

fn field(text: &str, key: &str) -> Option<String> {
    let start = text.find(key)? + key.len();
    let value = text[start..].split_whitespace().next()?;
    Some(value.trim_matches('"').trim_end_matches(',').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_lines_plain_quoted_and_coloured() {
        let cases = [
            "2024-01-01T00:00:00Z  INFO edge: listening kind=https addr=127.0.0.1:4433",
            "INFO listening kind=\"h3\" addr=127.0.0.1:4433",
            "\u{1b}[32mINFO\u{1b}[0m listening \u{1b}[3mkind\u{1b}[0m=admin \u{1b}[3maddr\u{1b}[0m=[::1]:9000",
        ];
        let parsed: Vec<_> = cases
            .iter()
            .map(|line| parse_listening(&strip_ansi(line)))
            .collect();
        assert_eq!(
            parsed,
            [
                Some(("https".to_owned(), "127.0.0.1:4433".parse().expect("addr"))),
                Some(("h3".to_owned(), "127.0.0.1:4433".parse().expect("addr"))),
                Some(("admin".to_owned(), "[::1]:9000".parse().expect("addr"))),
            ]
        );
        assert_eq!(parse_listening("edge ready"), None);
    }
}

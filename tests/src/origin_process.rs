//! Origins as separate processes (the `test-origin` binary of this package), for
//! tests that SIGKILL or SIGSTOP a backend or run origins on several loopback
//! addresses sharing one port.
//!
//! `env!("CARGO_BIN_EXE_test-origin")` exists only in this package's integration
//! tests, not in its library, so they pass it in:
//! `OriginProcess::start(env!("CARGO_BIN_EXE_test-origin"), "127.0.0.1:0", 0)`.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long `test-origin` may take to print the address it bound.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// Locks `m`, whatever a panicking holder left behind.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The lines a `test-origin` printed after its address (one `REQ METHOD ID` per
/// request, as it arrives), each with when it was read. A handle: clones share the
/// log, which keeps filling while the process runs and outlives it.
#[derive(Debug, Clone, Default)]
pub struct OriginLog(Arc<Mutex<Vec<(Instant, String)>>>);

impl OriginLog {
    /// Every line so far, in order.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.0).iter().map(|(_, line)| line.clone()).collect()
    }

    /// When each request (`REQ ` line) read at or after `from` arrived.
    pub fn requests_since(&self, from: Instant) -> Vec<Instant> {
        lock(&self.0)
            .iter()
            .filter(|(at, line)| *at >= from && line.starts_with("REQ "))
            .map(|(at, _)| *at)
            .collect()
    }

    fn push(&self, line: String) {
        lock(&self.0).push((Instant::now(), line));
    }
}

/// A running `test-origin`: its answers' bodies are its port and their `x-origin`
/// header its `IP:PORT`. Killed (this child only) when dropped.
#[derive(Debug)]
pub struct OriginProcess {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
    log: OriginLog,
}

impl OriginProcess {
    /// Starts the `test-origin` binary at `bin` on `addr` (`IP:PORT`, port 0 for any),
    /// answering each request after `delay_ms`.
    pub async fn start(bin: impl AsRef<OsStr>, addr: &str, delay_ms: u64) -> anyhow::Result<Self> {
        Self::start_with_health(bin, addr, delay_ms, None).await
    }

    /// As [`start`](Self::start); with `health`, `/healthz` answers 200 while that
    /// file says `ok`, else 503.
    pub async fn start_with_health(
        bin: impl AsRef<OsStr>,
        addr: &str,
        delay_ms: u64,
        health: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut args = vec![addr.to_owned(), delay_ms.to_string()];
        args.extend(health.map(|p| p.display().to_string()));
        let mut child = Command::new(bin)
            .args(&args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting test-origin")?;
        let stdout = child.stdout.take().context("test-origin stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_DEADLINE, lines.next_line())
            .await
            .context("test-origin did not print its address")??
            .with_context(|| format!("test-origin on {addr} exited"))?;
        let log = OriginLog::default();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.push(line);
            }
        });
        Ok(Self {
            child,
            addr: line.trim().parse()?,
            log,
        })
    }

    /// One origin on each of `ips`, all on the same port (as A records and one
    /// configured port need): the port and the origins.
    pub async fn on_one_port(
        bin: impl AsRef<OsStr>,
        ips: &[std::net::IpAddr],
    ) -> anyhow::Result<(u16, Vec<Self>)> {
        let mut last = None;
        // The port is free when picked but could be taken before the origins bind it.
        for _ in 0..5 {
            let port = crate::dns::common_free_port(ips)?;
            let mut origins = Vec::new();
            for ip in ips {
                let addr = SocketAddr::new(*ip, port).to_string();
                match Self::start(bin.as_ref(), &addr, 0).await {
                    Ok(origin) => origins.push(origin),
                    Err(e) => {
                        last = Some(e);
                        break;
                    }
                }
            }
            if origins.len() == ips.len() {
                return Ok((port, origins));
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no origins started")))
    }

    /// `http://IP:PORT`, the endpoint to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its request log (a handle that outlives the process).
    pub fn log(&self) -> OriginLog {
        self.log.clone()
    }

    /// When each request read at or after `from` arrived.
    pub fn requests_since(&self, from: Instant) -> Vec<Instant> {
        self.log.requests_since(from)
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`, ...) to this process (its pid only).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("test-origin already gone")?;
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// SIGKILLs it and reaps it.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.signal("KILL")?;
        self.child.wait().await?;
        Ok(())
    }
}

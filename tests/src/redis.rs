//! A real `redis-server` on a free loopback port, with no persistence, for the
//! cache tests: it can be killed, hung (SIGSTOP), resumed and restarted on the
//! same port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tempfile::TempDir;

/// How long redis-server may take to answer PING after spawn.
const READY_DEADLINE: Duration = Duration::from_secs(10);

pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
}

impl Redis {
    /// Starts redis-server on a free port of 127.0.0.1 and waits for PING.
    pub async fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut redis = Self {
            child: None,
            port,
            dir: tempfile::tempdir()?,
        };
        redis.spawn().await?;
        Ok(redis)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        self.child = Some(child);
        let end = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            if self.ping().await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= end {
                bail!("redis-server on port {} did not answer PING", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn conn(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        let conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .context("connecting to redis")??;
        Ok(conn)
    }

    async fn ping(&self) -> bool {
        let Ok(mut c) = self.conn().await else {
            return false;
        };
        let ping = redis::cmd("PING");
        let pong = ping.query_async::<String>(&mut c);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), pong).await,
            Ok(Ok(_))
        )
    }

    /// Every key (SCAN), for checking what the edge wrote.
    pub async fn keys(&self) -> anyhow::Result<Vec<String>> {
        let mut c = self.conn().await?;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut c).await?;
        Ok(keys)
    }

    /// Overwrites every key under `prefix` with `value` (keeping no TTL).
    pub async fn overwrite(&self, prefix: &str, value: &[u8]) -> anyhow::Result<usize> {
        let mut c = self.conn().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut c)
            .await?;
        for k in &keys {
            redis::cmd("SET")
                .arg(k)
                .arg(value)
                .query_async::<()>(&mut c)
                .await?;
        }
        Ok(keys.len())
    }

    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let pid = self.pid().context("redis is not running")?;
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill {sig} {pid} failed");
        }
        Ok(())
    }

    /// SIGSTOP: the port stays open but nothing answers.
    pub fn hang(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// SIGCONT after [`Redis::hang`].
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    /// Kills the server (its data is lost).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Never leave a stopped process behind, whatever happens to the kill.
        let _ = self.resume();
        self.kill();
    }
}

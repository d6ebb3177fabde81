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

    /// The value of `key`, if set.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let mut c = self.conn().await?;
        Ok(redis::cmd("GET").arg(key).query_async(&mut c).await?)
    }

    /// Sets `key` to `value` (no TTL).
    pub async fn set(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let mut c = self.conn().await?;
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut c)
            .await?;
        Ok(())
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

/// A free loopback TCP port.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One `redis-server` process of a cluster or a sentinel setup, killed on drop.
struct Node {
    child: Option<Child>,
    port: u16,
}

impl Node {
    /// `redis-server` on `port` with `args`, working in `dir`; waits for PING.
    async fn start(dir: &std::path::Path, port: u16, args: &[String]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let node = Self {
            child: Some(child),
            port,
        };
        crate::poll_until(
            &format!("redis on {port} answers PING"),
            READY_DEADLINE,
            || async { cli(port, &["PING"]).await.is_ok_and(|o| o.trim() == "PONG") },
        )
        .await?;
        Ok(node)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS...`, its stdout.
async fn cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .context("redis-cli timed out")?
    .context("running redis-cli (apt-get install redis-tools)")?;
    if !out.status.success() {
        bail!(
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A real Redis Cluster on loopback: `masters` masters, each with one replica,
/// made with `redis-cli --cluster create`, and a short node timeout so a
/// killed master's replica takes over within a few seconds.
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: TempDir,
}

impl RedisCluster {
    pub async fn start(masters: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        for i in 0..masters * 2 {
            let port = free_port()?;
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                // Fail over whatever the replica's replication lag (loaded
                // test machines delay pings).
                "--cluster-replica-validity-factor",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            nodes.push(Node::start(&dir.path().join(i.to_string()), port, &args).await?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        cli(nodes[0].port, &args).await?;
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_ok().await?;
        Ok(cluster)
    }

    /// Waits until every live node says `cluster_state:ok`.
    pub async fn wait_ok(&self) -> anyhow::Result<()> {
        let ports: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect();
        crate::poll_until(
            "every cluster node says cluster_state:ok",
            Duration::from_secs(30),
            || {
                let ports = ports.clone();
                async move {
                    for p in ports {
                        let info = cli(p, &["CLUSTER", "INFO"]).await.unwrap_or_default();
                        if !info.contains("cluster_state:ok") {
                            return false;
                        }
                    }
                    true
                }
            },
        )
        .await
    }

    /// Seed URLs for edge's `[redis] cluster`: the first master alone (the rest
    /// must be discovered).
    pub fn seed(&self) -> String {
        self.nodes[0].url()
    }

    /// The seed's port.
    pub fn seed_port(&self) -> u16 {
        self.nodes[0].port
    }

    /// Ports of the nodes that are masters now.
    pub async fn masters(&self) -> anyhow::Result<Vec<u16>> {
        let mut out = Vec::new();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            if cli(n.port, &["ROLE"]).await?.starts_with("master") {
                out.push(n.port);
            }
        }
        Ok(out)
    }

    /// Every live node's `ROLE` first line, for diagnostics.
    pub async fn roles(&self) -> Vec<(u16, String)> {
        let mut out = Vec::new();
        for n in self.nodes.iter().filter(|n| n.child.is_some()) {
            let role = cli(n.port, &["ROLE"])
                .await
                .unwrap_or_else(|e| e.to_string());
            out.push((n.port, role.lines().next().unwrap_or("").to_owned()));
        }
        out
    }

    /// Kills (SIGKILL) the master on `port`; its replica takes over.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port) {
            n.kill();
        }
    }

    /// How many keys each live master holds (`DBSIZE`).
    pub async fn keys_per_master(&self) -> anyhow::Result<Vec<usize>> {
        let mut out = Vec::new();
        for p in self.masters().await? {
            out.push(cli(p, &["DBSIZE"]).await?.trim().parse()?);
        }
        Ok(out)
    }
}

/// A master, one replica and three sentinels watching them (quorum 2), with
/// short timeouts so a killed master is replaced within a few seconds.
pub struct RedisSentinel {
    master: Node,
    replica: Node,
    sentinels: Vec<Node>,
    _dir: TempDir,
}

impl RedisSentinel {
    /// The name the sentinels know the master by.
    pub const MASTER: &'static str = "edge";

    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let plain = |port: u16| -> Vec<String> {
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
        };
        let mp = free_port()?;
        let master = Node::start(&dir.path().join("master"), mp, &plain(mp)).await?;
        let rp = free_port()?;
        let mut args = plain(rp);
        args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            mp.to_string(),
        ]);
        let replica = Node::start(&dir.path().join("replica"), rp, &args).await?;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let sp = free_port()?;
            let sdir = dir.path().join(format!("sentinel{i}"));
            std::fs::create_dir_all(&sdir)?;
            let conf = sdir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {sp}\nbind 127.0.0.1\n\
                     sentinel monitor {m} 127.0.0.1 {mp} 2\n\
                     sentinel down-after-milliseconds {m} 1000\n\
                     sentinel failover-timeout {m} 5000\n\
                     sentinel parallel-syncs {m} 1\n",
                    m = Self::MASTER
                ),
            )?;
            let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            sentinels.push(Node::start(&sdir, sp, &args).await?);
        }
        let setup = Self {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        // Ready when the replica is in sync and every sentinel knows it.
        crate::poll_until("the replica is in sync", READY_DEADLINE, || async {
            cli(setup.replica.port, &["INFO", "replication"])
                .await
                .is_ok_and(|info| info.contains("master_link_status:up"))
        })
        .await?;
        for s in &setup.sentinels {
            crate::poll_until(
                "the sentinel sees the replica",
                Duration::from_secs(20),
                || async {
                    cli(s.port, &["SENTINEL", "REPLICAS", Self::MASTER])
                        .await
                        .is_ok_and(|out| out.contains(&rp.to_string()))
                },
            )
            .await?;
        }
        Ok(setup)
    }

    /// Sentinel URLs for edge's `[redis] sentinel.nodes`.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(Node::url).collect()
    }

    pub fn master_port(&self) -> u16 {
        self.master.port
    }

    pub fn replica_port(&self) -> u16 {
        self.replica.port
    }

    /// The master's port as the first sentinel names it now.
    pub async fn current_master(&self) -> anyhow::Result<u16> {
        let out = cli(
            self.sentinels[0].port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::MASTER],
        )
        .await?;
        let port = out.lines().nth(1).context("no master address")?;
        Ok(port.trim().parse()?)
    }

    /// Kills (SIGKILL) the master; the sentinels promote the replica.
    pub fn kill_master(&mut self) {
        self.master.kill();
    }

    /// Keys on the server at `port` (`DBSIZE`).
    pub async fn dbsize(port: u16) -> anyhow::Result<usize> {
        Ok(cli(port, &["DBSIZE"]).await?.trim().parse()?)
    }
}

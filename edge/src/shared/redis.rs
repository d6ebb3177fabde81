//! The one Redis client of the edge: cache L2 now, sticky sessions and global
//! limits next. One server, a Redis Cluster or a Sentinel-managed master; every
//! call has a short deadline and goes through a breaker, so Redis down, hung or
//! slow costs a request at most one deadline, and after a few failures nothing
//! at all until a probe succeeds. Errors are counted here and become "not
//! available" (`None`): each caller has its local fallback.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture,
    TlsCertificates, Value,
};

use crate::config::{Redis as RedisConfig, RedisTarget};

/// Consecutive failures open the breaker; while open, one probe per cool-down.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: 0,
            open_until: None,
        }
    }

    /// Whether a call may go out now. When open and the cool-down is over, one
    /// call is let through as a probe and the next probe is a cool-down away
    /// (so a probe that never reports back cannot wedge the breaker).
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.open_until {
            None => true,
            Some(until) if now >= until => {
                self.open_until = Some(now + self.cooldown);
                true
            }
            Some(_) => false,
        }
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
    }

    pub fn failure(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.threshold {
            self.open_until = Some(now + self.cooldown);
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }
}

/// A live connection of whichever kind the config names. Cheap to clone: every
/// kind multiplexes callers over its sockets.
#[derive(Clone)]
pub enum Conn {
    /// One server, or the master a sentinel named; reconnects by itself.
    Node(ConnectionManager),
    /// A Redis Cluster; follows MOVED/ASK and slot changes by itself.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// How connections are made.
enum Connector {
    Single(redis::Client),
    Cluster(ClusterSeeds),
    /// Asked again for the master after every failure, so a failover is
    /// followed within one call.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

/// A Redis Cluster's seeds and every node learned since (`CLUSTER SLOTS`
/// after each connect): a client is built from both, so a connection made
/// again after the seeds died still finds the cluster.
struct ClusterSeeds {
    seeds: Vec<ConnectionInfo>,
    known: Mutex<Vec<ConnectionInfo>>,
    certs: Option<TlsCertificates>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl ClusterSeeds {
    fn client(&self) -> redis::RedisResult<ClusterClient> {
        let mut nodes = self.seeds.clone();
        for n in self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            if !nodes.iter().any(|s| s.addr == n.addr) {
                nodes.push(n.clone());
            }
        }
        let mut b = ClusterClient::builder(nodes)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .retries(1);
        if let Some(c) = &self.certs {
            b = b.certs(c.clone());
        }
        b.build()
    }

    /// Remembers the nodes `conn`'s cluster names, each reached as the first
    /// seed is (scheme, TLS, credentials). Best effort: a failure keeps the
    /// nodes known before.
    async fn learn(&self, conn: &mut ClusterConnection) {
        let Ok(Value::Array(ranges)) = redis::cmd("CLUSTER").arg("SLOTS").query_async(conn).await
        else {
            return;
        };
        let Some(base) = self.seeds.first() else {
            return;
        };
        let mut nodes: Vec<ConnectionInfo> = Vec::new();
        for range in &ranges {
            let Value::Array(fields) = range else {
                continue;
            };
            for node in fields.iter().skip(2) {
                let Value::Array(node) = node else { continue };
                let (Some(host), Some(Value::Int(port))) = (node.first(), node.get(1)) else {
                    continue;
                };
                let host = match host {
                    Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    Value::SimpleString(s) => s.clone(),
                    _ => continue,
                };
                let Ok(port) = u16::try_from(*port) else {
                    continue;
                };
                if let Some(info) = like(base, host, port) {
                    if !nodes.iter().any(|n| n.addr == info.addr) {
                        nodes.push(info);
                    }
                }
            }
        }
        if !nodes.is_empty() {
            *self.known.lock().unwrap_or_else(PoisonError::into_inner) = nodes;
        }
    }
}

/// `base`'s way of connecting (TLS, credentials, database) to `host:port`.
fn like(base: &ConnectionInfo, host: String, port: u16) -> Option<ConnectionInfo> {
    let addr = match &base.addr {
        ConnectionAddr::Tcp(..) => ConnectionAddr::Tcp(host, port),
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => return None,
    };
    Some(ConnectionInfo {
        addr,
        redis: base.redis.clone(),
    })
}

/// `proxy_redis_*`: what the shared Redis client did.
struct RedisMetrics {
    errors: IntCounterVec,
    breaker: IntGauge,
    connected: IntGauge,
    connects: IntCounterVec,
}

impl RedisMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            errors: IntCounterVec::new(
                Opts::new(
                    "proxy_redis_errors_total",
                    "Redis calls that failed, by kind (error, timeout, unavailable, connect).",
                ),
                &["kind"],
            )?,
            breaker: IntGauge::new(
                "proxy_redis_breaker_open",
                "1 while the Redis breaker is open (shared state degraded to local), else 0.",
            )?,
            connected: IntGauge::new(
                "proxy_redis_connected",
                "1 while the edge holds a Redis connection, else 0.",
            )?,
            connects: IntCounterVec::new(
                Opts::new(
                    "proxy_redis_connects_total",
                    "Connections made to Redis (after start, a failover or a failure), by outcome.",
                ),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.breaker.clone()))?;
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.connects.clone()))?;
        Ok(m)
    }
}

pub struct Redis {
    connector: Connector,
    /// Logged instead of URLs, which may carry credentials.
    name: String,
    conn: Mutex<Option<Conn>>,
    connecting: Arc<AtomicBool>,
    timeout: Duration,
    breaker: Mutex<Breaker>,
    metrics: RedisMetrics,
}

impl Redis {
    /// The client for `config`; connects in the background, and calls answer
    /// `None` until it is up.
    pub fn new(config: &RedisConfig, registry: &Registry) -> Result<Arc<Self>, String> {
        let certs = || -> Result<Option<TlsCertificates>, String> {
            let Some(path) = &config.tls_ca else {
                return Ok(None);
            };
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            }))
        };
        let connect_timeout = config.timeout.max(Duration::from_millis(200));
        let connector = match &config.target {
            RedisTarget::Single(url) => Connector::Single(
                match certs()? {
                    Some(c) => redis::Client::build_with_tls(url.as_str(), c),
                    None => redis::Client::open(url.as_str()),
                }
                .map_err(|e| e.to_string())?,
            ),
            RedisTarget::Cluster(seeds) => {
                let seeds = seeds
                    .iter()
                    .map(|s| s.as_str().into_connection_info().map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                let cluster = ClusterSeeds {
                    seeds,
                    known: Mutex::new(Vec::new()),
                    certs: certs()?,
                    connect_timeout,
                    response_timeout: config.timeout,
                };
                // Refused here, at start, rather than on every connect.
                cluster.client().map_err(|e| e.to_string())?;
                Connector::Cluster(cluster)
            }
            RedisTarget::Sentinel {
                master,
                sentinels,
                username,
                password,
                tls,
            } => {
                let mut node = redis::RedisConnectionInfo::default();
                node.username.clone_from(username);
                node.password.clone_from(password);
                let info = SentinelNodeConnectionInfo {
                    tls_mode: tls.then_some(redis::TlsMode::Secure),
                    redis_connection_info: Some(node),
                };
                let client = SentinelClient::build(
                    sentinels.iter().map(String::as_str).collect(),
                    master.clone(),
                    Some(info),
                    SentinelServerType::Master,
                )
                .map_err(|e| e.to_string())?;
                Connector::Sentinel(tokio::sync::Mutex::new(client))
            }
        };
        let this = Arc::new(Self {
            connector,
            name: config.describe(),
            conn: Mutex::new(None),
            connecting: Arc::new(AtomicBool::new(false)),
            timeout: config.timeout,
            breaker: Mutex::new(Breaker::new(
                config.breaker_failures,
                config.breaker_cooldown,
            )),
            metrics: RedisMetrics::new(registry).map_err(|e| format!("metrics: {e}"))?,
        });
        this.connect_in_background();
        Ok(this)
    }

    /// The Redis this is, for logs (no credentials).
    /// Whether a connection is held now.
    pub fn connected(&self) -> bool {
        self.metrics.connected.get() == 1
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether calls are being skipped (breaker open): shared state has
    /// degraded to each caller's local fallback.
    pub fn degraded(&self) -> bool {
        self.breaker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_open()
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(self.timeout.max(Duration::from_millis(200)))
            .set_response_timeout(self.timeout)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        match &self.connector {
            Connector::Single(client) => client
                .get_connection_manager_with_config(manager)
                .await
                .map(Conn::Node),
            Connector::Cluster(cluster) => {
                let mut conn = cluster.client()?.get_async_connection().await?;
                cluster.learn(&mut conn).await;
                Ok(Conn::Cluster(conn))
            }
            Connector::Sentinel(sentinel) => {
                let client = sentinel.lock().await.async_get_client().await?;
                client
                    .get_connection_manager_with_config(manager)
                    .await
                    .map(Conn::Node)
            }
        }
    }

    /// Connects once in the background; callers skip Redis until it is up.
    fn connect_in_background(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // The whole attempt (sentinel lookup included) within a bound.
            let bound = this.timeout.max(Duration::from_millis(200)) * 4;
            match tokio::time::timeout(bound, this.connect()).await {
                Ok(Ok(conn)) => {
                    *this.conn.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn);
                    this.metrics.connected.set(1);
                    this.metrics.connects.with_label_values(&["ok"]).inc();
                    tracing::info!(redis = %this.name, "connected to redis");
                }
                Ok(Err(e)) => this.connect_failed(&e.to_string()),
                Err(_) => this.connect_failed("timed out"),
            }
            this.connecting.store(false, Ordering::SeqCst);
        });
    }

    fn connect_failed(&self, why: &str) {
        self.metrics.errors.with_label_values(&["connect"]).inc();
        self.metrics.connects.with_label_values(&["failed"]).inc();
        tracing::warn!(redis = %self.name, error = why, "cannot connect to redis; local state only for now");
    }

    /// Runs one call under the breaker and the deadline; `None` when Redis is
    /// not there to answer (the caller falls back to local state).
    pub async fn call<T, F, Fut>(self: &Arc<Self>, what: &'static str, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let allowed = {
            let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
            b.allow(Instant::now())
        };
        if !allowed {
            return None;
        }
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(conn) = conn else {
            // Not connected yet: skip. Only a finished, failed connect counts
            // toward the breaker (so start-up under load does not open it).
            if !self.connecting.load(Ordering::SeqCst) {
                self.connect_in_background();
                self.failed("unavailable");
            }
            return None;
        };
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => {
                let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
                b.success();
                self.metrics.breaker.set(i64::from(b.is_open()));
                Some(v)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, what, "redis call failed");
                self.failed("error");
                None
            }
            Err(_) => {
                tracing::debug!(what, "redis call timed out");
                self.failed("timeout");
                None
            }
        }
    }

    fn failed(&self, kind: &'static str) {
        self.metrics.errors.with_label_values(&[kind]).inc();
        let mut b = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        b.failure(Instant::now());
        let open = b.is_open();
        self.metrics.breaker.set(i64::from(open));
        drop(b);
        // Behind Sentinel the master may have moved (a dead address, or a
        // demoted master answering READONLY): drop the connection so the next
        // call asks the sentinels again. A cluster connection recovers by
        // itself, except when it has lost every node and its seeds are dead
        // (redis-rs then retries only the seeds): once the breaker opens it
        // is made again from every node learned, not the seeds alone.
        let sentinel = matches!(self.connector, Connector::Sentinel(_));
        let cluster_stuck = matches!(self.connector, Connector::Cluster(_)) && open;
        if (sentinel || cluster_stuck) && kind != "unavailable" {
            let dropped = self
                .conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if dropped.is_some() {
                self.metrics.connected.set(0);
            }
        }
    }
}

/// Deletes a lock only while it still holds the caller's token.
const UNLOCK: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
"#;

/// A lock between replicas: `key` set to this replica's random token with a
/// TTL (`SET NX PX`), so one replica does a job (order a certificate, rotate
/// the ticket keys) while the others wait; released only while it still holds
/// the token (a compare-and-delete script), and expired by itself if the
/// holder dies.
pub struct Lock {
    redis: Arc<Redis>,
    key: String,
    token: String,
    unlock: redis::Script,
}

impl Lock {
    pub fn new(redis: Arc<Redis>, key: String) -> Self {
        Self {
            redis,
            key,
            token: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
            unlock: redis::Script::new(UNLOCK),
        }
    }

    pub fn redis(&self) -> &Arc<Redis> {
        &self.redis
    }

    /// Takes the lock for `ttl`: `Some(false)` when another replica holds it,
    /// `None` when Redis did not answer.
    pub async fn acquire(&self, ttl: Duration) -> Option<bool> {
        let (key, token) = (self.key.clone(), self.token.clone());
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.redis
            .call("lock", |mut c| async move {
                let set: Option<String> = redis::cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await?;
                Ok(set.is_some())
            })
            .await
    }

    /// Releases the lock if it is still ours; `false` when Redis did not
    /// answer (it then expires by itself).
    pub async fn release(&self) -> bool {
        let (key, token, script) = (self.key.clone(), self.token.clone(), &self.unlock);
        self.redis
            .call("unlock", |mut c| async move {
                script.key(key).arg(token).invoke_async::<i64>(&mut c).await
            })
            .await
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learned_node_is_reached_as_the_seed_is() {
        let seed = "rediss://user:secret@10.0.0.1:7000"
            .into_connection_info()
            .expect("seed");
        let node = like(&seed, "10.0.0.2".to_owned(), 7001).expect("node");
        assert!(
            matches!(&node.addr, ConnectionAddr::TcpTls { host, port: 7001, .. } if host == "10.0.0.2"),
            "{:?}",
            node.addr
        );
        assert_eq!(node.redis.username.as_deref(), Some("user"));
        assert_eq!(node.redis.password.as_deref(), Some("secret"));
        let plain = "redis://10.0.0.1:7000"
            .into_connection_info()
            .expect("seed");
        let node = like(&plain, "10.0.0.3".to_owned(), 7002).expect("node");
        assert_eq!(node.addr, ConnectionAddr::Tcp("10.0.0.3".to_owned(), 7002));
    }

    #[test]
    fn opens_after_threshold_and_probes_once_per_cooldown() {
        let t0 = Instant::now();
        let cool = Duration::from_secs(5);
        let mut b = Breaker::new(3, cool);
        assert!(b.allow(t0));
        b.failure(t0);
        b.failure(t0);
        assert!(!b.is_open());
        b.failure(t0);
        assert!(b.is_open());
        assert!(!b.allow(t0 + Duration::from_secs(1)));
        // One probe after the cool-down, then closed again until the next one.
        assert!(b.allow(t0 + cool));
        assert!(!b.allow(t0 + cool + Duration::from_millis(1)));
        b.failure(t0 + cool);
        assert!(!b.allow(t0 + cool + Duration::from_secs(1)));
        assert!(b.allow(t0 + cool * 3));
        b.success();
        assert!(!b.is_open());
        assert!(b.allow(t0 + cool * 3));
    }

    #[test]
    fn a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.failure(t0);
        b.success();
        b.failure(t0);
        assert!(!b.is_open());
    }
}

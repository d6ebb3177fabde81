//! The shared Redis layer against real topologies: a 3-master Redis Cluster (each
//! master with a replica) and a master/replica pair under three sentinels. Two
//! edges share the cache's L2 through it; a master is killed mid-load, and the
//! test checks that no client sees an error, that the failure shows in the
//! metrics, and that the edges follow the failover (what one edge writes after
//! it, the other reads from L2). Also a TLS-only redis-server with a password:
//! two edges share L2 through it (verifying it against the test CA), and an
//! edge with the wrong password serves every request without it. Every wait is
//! a condition with a deadline.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_tests::redis::{RedisCluster, RedisSentinel};
use edge_tests::scripted::{self, get, Reply, Scripted};
use edge_tests::{eventually, toml_str, Edge, EdgeConfig};

const DEADLINE: Duration = Duration::from_secs(20);
const KEYS: usize = 30;

/// Each answer numbered, fresh for ten minutes.
fn numbered() -> impl Fn(&scripted::Seen) -> Reply {
    let n = AtomicUsize::new(0);
    move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::ok(&[("cache-control", "max-age=600")], format!("#{i}"))
    }
}

/// An edge over `origin` with the cache on and `[redis]` as given.
async fn edge(origin: &Scripted, redis: &str) -> anyhow::Result<Edge> {
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .cache_setting("enabled", "true")
        .section(&format!(
            "[redis]\n{redis}\ntimeout = \"300ms\"\nbreaker_failures = 3\nbreaker_cooldown = \"200ms\"\n"
        ));
    let e = Edge::start(&config).await?;
    e.redis_connected(DEADLINE).await?;
    Ok(e)
}

/// Writes `KEYS` fresh paths through `writer`, then checks that `reader` (empty
/// L1 for them) serves every one from L2 without asking the origin
/// (`only-if-cached`, so a miss stores nothing). A write that Redis lost (the
/// first calls after a failover may fail: the request is still served, the
/// entry just not shared) means another round with fresh paths, until the
/// deadline: the check is that sharing works again, for keys on every slot.
async fn shared_through_l2(writer: &Edge, reader: &Edge, prefix: &str) -> anyhow::Result<()> {
    let end = tokio::time::Instant::now() + DEADLINE;
    let mut round = 0;
    loop {
        for i in 0..KEYS {
            let got = get(writer.http()?, &format!("/{prefix}/{round}/{i}"), &[]).await?;
            anyhow::ensure!(got.status == 200, "writer got {}", got.status);
        }
        let mut all = true;
        for i in 0..KEYS {
            let path = format!("/{prefix}/{round}/{i}");
            // The entry is written to Redis just after the answer: give it a
            // moment, then take a miss as lost and start a new round.
            let found = eventually(&path, Duration::from_secs(2), || async {
                let got = get(
                    reader.http()?,
                    &path,
                    &[("cache-control", "only-if-cached")],
                )
                .await?;
                Ok((got.cache_status() == "edge; hit; detail=l2").then_some(()))
            })
            .await;
            if found.is_err() {
                all = false;
                break;
            }
        }
        if all {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < end,
            "{prefix}: entries written on one edge never all reached the other through L2"
        );
        round += 1;
    }
}

/// Requests fresh paths on `edge` until stopped; counts answers other than 200.
fn load(
    edge: &Edge,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<(usize, usize)>> {
    let addr = edge.http()?;
    Ok(tokio::spawn(async move {
        let (mut done, mut bad) = (0, 0);
        while !stop.load(Ordering::SeqCst) {
            // A few repeated paths too, so L2 reads happen as well as writes.
            let path = format!("/load/{}", done % 200);
            match get(addr, &path, &[]).await {
                Ok(g) if g.status == 200 => {}
                _ => bad += 1,
            }
            done += 1;
        }
        (done, bad)
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_is_one_l2_for_two_edges_through_a_master_failover() -> anyhow::Result<()> {
    let mut cluster = RedisCluster::start(3).await?;
    let origin = Scripted::start(numbered()).await?;
    // Only one seed: the other masters and the replicas are discovered.
    let redis = format!("cluster = [{}]", toml_str(&cluster.seed()));
    let a = edge(&origin, &redis).await?;
    let b = edge(&origin, &redis).await?;

    shared_through_l2(&a, &b, "before").await?;
    let spread = cluster.keys_per_master().await?;
    assert!(
        spread.len() == 3 && spread.iter().all(|&n| n > 0),
        "entries on every master: {spread:?}"
    );

    // Kill the seed, a master, under load; its replica takes over its slots.
    // The seed is the only node the edges were given: once it is gone they
    // must reach the cluster through the nodes they learned from it.
    let stop = Arc::new(AtomicBool::new(false));
    let running = [load(&a, stop.clone())?, load(&b, stop.clone())?];
    let victim = cluster.seed_port();
    anyhow::ensure!(
        cluster.masters().await?.contains(&victim),
        "the seed is not a master: {:?}",
        cluster.roles().await
    );
    cluster.kill(victim);
    cluster.wait_ok().await?;
    let masters = eventually("the killed master's replica promoted", DEADLINE, || async {
        let m = cluster.masters().await?;
        Ok((m.len() == 3).then_some(m))
    })
    .await;
    anyhow::ensure!(
        masters.is_ok(),
        "{masters:?}; now: {:?} {:?}",
        cluster.masters().await,
        cluster.roles().await
    );
    shared_through_l2(&a, &b, "after").await?;
    stop.store(true, Ordering::SeqCst);
    for r in running {
        let (done, bad) = r.await?;
        assert_eq!(
            bad, 0,
            "{bad} of {done} requests failed during the failover"
        );
        assert!(done > 0);
    }

    // The outage was visible: calls to the dead master failed and were counted.
    let (_, page) = b.metric("proxy_redis_connected").await?;
    let errors: f64 = page
        .lines()
        .filter(|l| l.starts_with("proxy_redis_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        errors > 0.0,
        "no Redis error counted during the failover:\n{page}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_the_edges_follow_a_failover_to_the_new_master() -> anyhow::Result<()> {
    let mut setup = RedisSentinel::start().await?;
    let origin = Scripted::start(numbered()).await?;
    let nodes: Vec<String> = setup.sentinel_urls().iter().map(|u| toml_str(u)).collect();
    let redis = format!(
        "sentinel = {{ master = {}, nodes = [{}] }}",
        toml_str(RedisSentinel::MASTER),
        nodes.join(", ")
    );
    let a = edge(&origin, &redis).await?;
    let b = edge(&origin, &redis).await?;
    shared_through_l2(&a, &b, "before").await?;
    assert!(RedisSentinel::dbsize(setup.master_port()).await? >= KEYS);

    let stop = Arc::new(AtomicBool::new(false));
    let running = [load(&a, stop.clone())?, load(&b, stop.clone())?];
    let old = setup.master_port();
    setup.kill_master();
    eventually(
        "the sentinels promote the replica",
        Duration::from_secs(30),
        || async {
            Ok((setup.current_master().await.ok() == Some(setup.replica_port())).then_some(()))
        },
    )
    .await?;
    // Written by A after the failover, read by B from L2: both edges asked the
    // sentinels again and reached the new master.
    shared_through_l2(&a, &b, "after").await?;
    stop.store(true, Ordering::SeqCst);
    for r in running {
        let (done, bad) = r.await?;
        assert_eq!(
            bad, 0,
            "{bad} of {done} requests failed during the failover"
        );
    }
    assert_ne!(old, setup.replica_port());
    assert!(RedisSentinel::dbsize(setup.replica_port()).await? >= 2 * KEYS);

    let (reconnects, page) = a
        .metric("proxy_redis_connects_total{outcome=\"ok\"}")
        .await?;
    assert!(
        reconnects.unwrap_or(0.0) >= 2.0,
        "edge A should have connected twice (start, after the failover):\n{page}"
    );
    Ok(())
}

/// A redis-server speaking only TLS (the test CA's `localhost` leaf) and asking
/// for `password`; killed (this pid only) when dropped.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    async fn start(
        pki: &edge_tests::pki::Pki,
        ca: &std::path::Path,
        password: &str,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let leaf = pki.leaf();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&leaf.cert)
            .arg("--tls-key-file")
            .arg(&leaf.key)
            .arg("--tls-ca-cert-file")
            .arg(ca)
            .args(["--tls-auth-clients", "no", "--requirepass", password])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let redis = Self {
            child,
            port,
            _dir: dir,
        };
        eventually("redis-server answering PING over TLS", DEADLINE, || async {
            let out = tokio::process::Command::new("redis-cli")
                .args([
                    "--tls",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-a",
                    password,
                ])
                .arg("--cacert")
                .arg(ca)
                .args(["--no-auth-warning", "PING"])
                .output()
                .await?;
            Ok(String::from_utf8_lossy(&out.stdout)
                .contains("PONG")
                .then_some(()))
        })
        .await?;
        Ok(redis)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_password_is_shared_and_a_wrong_password_costs_no_request(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = edge_tests::pki::Pki::generate(dir.path())?;
    let ca = dir.path().join("ca.pem");
    let redis = TlsRedis::start(&pki, &ca, "s3cret-pw").await?;
    let origin = Scripted::start(numbered()).await?;
    let url = |pw: &str| format!("rediss://:{pw}@127.0.0.1:{}", redis.port);
    let tls = |pw: &str| {
        format!(
            "url = {}\ntls_ca = {}",
            toml_str(&url(pw)),
            toml_str(&ca.display().to_string())
        )
    };
    // Both edges verify the server against the test CA and authenticate.
    let a = edge(&origin, &tls("s3cret-pw")).await?;
    let b = edge(&origin, &tls("s3cret-pw")).await?;
    shared_through_l2(&a, &b, "tls").await?;

    // A wrong password: the edge never connects, and every request is still
    // answered (from the origin), with the failure in the metrics, not the logs of clients.
    let config = EdgeConfig::new(origin.url())
        .protocol("h1")
        .cache_setting("enabled", "true")
        .section(&format!(
            "[redis]\n{}\ntimeout = \"300ms\"\nbreaker_failures = 3\nbreaker_cooldown = \"200ms\"\n",
            tls("wrong")
        ));
    let wrong = Edge::start(&config).await?;
    for i in 0..10 {
        let got = get(wrong.http()?, &format!("/wrong/{i}"), &[]).await?;
        assert_eq!(got.status, 200, "request {i}");
    }
    eventually("the failed connect counted", DEADLINE, || async {
        let (failed, _) = wrong
            .metric("proxy_redis_connects_total{outcome=\"failed\"}")
            .await?;
        Ok(failed.is_some_and(|n| n >= 1.0).then_some(()))
    })
    .await?;
    assert_eq!(wrong.metric("proxy_redis_connected").await?.0, Some(0.0));
    Ok(())
}

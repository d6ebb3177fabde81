//! The independent HTTP cache test suite (npm `http-cache-tests`, the suite behind
//! cache-tests.fyi) run against edge: its origin server behind an edge with the
//! cache on, its client in front. `ops/test.sh` fetches the suite into
//! `target/cache-tests` (or point `CACHE_TESTS_DIR` at an unpacked copy).
//!
//! Every *required* test must pass, except the ones listed in [`KNOWN`], each with
//! the reason: either this snapshot of the suite (0.4.5, the one on npm) expects
//! what the current suite and RFC 9111 no longer do, or edge declines on purpose.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use edge_tests::edge::workspace_root;
use edge_tests::{process, Edge, Pki};
use tokio::process::Command;

/// Required tests edge does not pass, and why. Fixed ones are off this list, so
/// the test fails if one regresses: `age-parse-suffix` (`Age: 7200,0` counts
/// by its first member) and `partial-use-headers` (ranges cut from a stored 200).
/// 0.4.5 is the only version of the package on the npm registry (checked with
/// `npm view http-cache-tests versions`); the current suite is not published
/// there, so this snapshot is what runs.
const KNOWN: &[(&str, &str)] = &[
    // 0.4.5 wants an unparsable Age to make a response stale; the current suite
    // turned these into information-only checks that expect reuse, which is
    // what edge does (an invalid Age is ignored).
    ("age-parse-nonnumeric", "suite snapshot"),
    ("age-parse-negative", "suite snapshot"),
    ("age-parse-float", "suite snapshot"),
    ("age-parse-prefix-twoline", "suite snapshot"),
    ("age-parse-dup-0", "suite snapshot"),
    ("age-parse-dup-0-twoline", "suite snapshot"),
    ("age-parse-dup-old", "suite snapshot"),
    ("age-parse-parameter", "suite snapshot"),
    ("age-parse-numeric-parameter", "suite snapshot"),
    // The origin drops the connection and edge answers 502: 0.4.5 reads any
    // answer without the origin's counter header as "from cache"; the current
    // suite counts an error as the pass it is.
    ("stale-close-must-revalidate", "suite snapshot"),
    ("stale-close-proxy-revalidate", "suite snapshot"),
    ("stale-close-no-cache", "suite snapshot"),
    ("stale-close-s-maxage=2", "suite snapshot"),
    // 0.4.5 forbids a 304 to update these; RFC 9111 3.2 and the current suite
    // have the 304's fields replace the stored ones (edge does).
    (
        "304-etag-update-response-Content-Encoding",
        "suite snapshot",
    ),
    ("304-etag-update-response-Content-MD5", "suite snapshot"),
    ("304-etag-update-response-Content-Range", "suite snapshot"),
    // A 304 naming another ETag is not merged; edge fetches the full response
    // again, which this suite reports as a retry.
    ("304-etag-update-response-ETag", "suite snapshot"),
    // Responses with Set-Cookie are stored only on routes that allow it.
    ("headers-store-Set-Cookie", "by design"),
    ("304-etag-update-response-Set-Cookie", "by design"),
];

fn suite_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("CACHE_TESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/cache-tests/package"));
    anyhow::ensure!(
        dir.join("cli.mjs").is_file() && dir.join("node_modules/node-fetch").is_dir(),
        "the http-cache-tests suite is not at {}: run ops/test.sh (it fetches it) \
         or set CACHE_TESTS_DIR",
        dir.display()
    );
    Ok(dir)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_cache_tests_suite_passes_every_required_test() -> anyhow::Result<()> {
    let dir = suite_dir()?;
    let js = workspace_root().join("tests/js");
    let tmp = tempfile::tempdir()?;

    // The suite's origin, kept on loopback by our wrapper.
    let port = free_port()?;
    let mut origin = Command::new("node")
        .arg(js.join("loopback.mjs"))
        .arg("server/server.mjs")
        .current_dir(&dir)
        .env("npm_config_port", port.to_string())
        .env("npm_config_protocol", "http")
        .env("npm_config_pidfile", tmp.path().join("server.pid"))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the suite's server (node)")?;
    let origin_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    edge_tests::wait_for("the suite's server", Duration::from_secs(20), || {
        std::net::TcpStream::connect(origin_addr).ok()
    })
    .await?;

    // One endpoint that the suite makes misbehave on purpose (dropped
    // connections, 5xx): its breaker would answer 503 to the next tests, so it
    // stays closed here.
    // The route may store every final status, so the suite measures what RFC
    // 9111 allows, not edge's narrower default allow-list (`cache_statuses`).
    let every_status: Vec<String> = (200..=599).map(|s: u16| s.to_string()).collect();
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nhttp_listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [cache]\nenabled = true\n\
         [pools.origin]\nendpoints = [\"http://{origin_addr}\"]\nprotocol = \"h1\"\n\
         breaker_failures = 1000000\n\
         [[routes]]\npath_prefix = \"/\"\npool = \"origin\"\ncache_statuses = [{}]\n",
        every_status.join(", ")
    );
    let edge_dir = tempfile::tempdir()?;
    let pki = Pki::generate(edge_dir.path())?;
    let edge = Edge::start_with_toml(edge_dir, pki, &toml).await?;

    let kinds = process::run(
        "node",
        [
            js.join("cache-tests-kinds.mjs").display().to_string(),
            dir.display().to_string(),
        ],
        Duration::from_secs(30),
    )
    .await?;
    kinds.ensure_success("cache-tests-kinds.mjs")?;
    let kinds: BTreeMap<String, String> = serde_json::from_str(kinds.stdout.trim())?;

    let mut cli = Command::new("node");
    cli.arg("--no-warnings")
        .arg("cli.mjs")
        .current_dir(&dir)
        .env("npm_config_base", format!("http://{}", edge.http()?))
        .env("npm_config_id", "")
        .env("npm_package_config_id", "");
    let run = process::run_command(cli, Duration::from_secs(240)).await?;
    run.ensure_success("http-cache-tests cli")?;
    let results: BTreeMap<String, serde_json::Value> = serde_json::from_str(run.stdout.trim())
        .with_context(|| format!("cli output:\n{}", process::tail(&run.stdout)))?;
    origin.kill().await.ok();

    let mut counts: BTreeMap<(String, &str), usize> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut known_passing = Vec::new();
    for (id, kind) in &kinds {
        let outcome = match results.get(id) {
            Some(serde_json::Value::Bool(true)) => "pass",
            Some(serde_json::Value::Array(a))
                if a.first().and_then(|v| v.as_str()) == Some("Assertion") =>
            {
                "fail"
            }
            Some(_) => "setup",
            None => "missing",
        };
        *counts.entry((kind.clone(), outcome)).or_default() += 1;
        let known = KNOWN.iter().any(|(k, _)| k == id);
        if kind == "required" && outcome != "pass" && !known {
            unexpected.push(format!(
                "{id}: {}",
                results.get(id).map_or("missing".into(), |r| r.to_string())
            ));
        }
        if known && outcome == "pass" {
            known_passing.push(id.clone());
        }
    }
    eprintln!("http-cache-tests against edge: {counts:?}");
    let required_passed = counts
        .get(&("required".to_owned(), "pass"))
        .copied()
        .unwrap_or(0);
    assert!(
        required_passed >= 140,
        "the suite ran: {required_passed} required tests passed"
    );
    assert!(
        unexpected.is_empty(),
        "required tests failing:\n{}",
        unexpected.join("\n")
    );
    assert!(
        known_passing.is_empty(),
        "listed as known failures but passing now (take them off KNOWN): {known_passing:?}"
    );
    Ok(())
}

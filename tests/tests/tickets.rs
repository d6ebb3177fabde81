//! TLS session resumption across edges (`tls.ticket_keys`): two edges started
//! with the same key file resume each other's sessions over TCP with ALPN h2
//! (a rustls client with one resumption store, then a real h2 request), over
//! HTTP/1.1 (`openssl s_client -sess_out`/`-sess_in`, "Reused, TLSv1.3") and
//! over QUIC (aioquic with a saved session ticket, then an h3 request); an
//! edge with other keys does a full handshake and still answers 200; a reload
//! puts a new first key in front while the old one keeps decrypting; a bad
//! key file is refused with the key, the line and the reason; two edges on
//! one redis-server (`ticket_keys = "redis"`) resume each other's sessions,
//! before and after a rotation; and with Redis away an edge serves and
//! resumes on a key of its own.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edge_tests::clients::h3_requests_resuming;
use edge_tests::redis::Redis;
use edge_tests::scripted::get;
use edge_tests::{
    eventually, run_edge, toml_path, toml_str, wait_until, Edge, EdgeConfig, Origin, Pki,
};
use rustls::client::Resumption;
use rustls::pki_types::{pem::PemObject as _, CertificateDer, ServerName};
use rustls::HandshakeKind;
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);
const KEY_1: &str = "6b1d3f8a0c2e4a6b8d0f1a3c5e7a9b1d3f5a7c9e0b2d4f6a8c0e1b3d5f7a9c0e";
const KEY_2: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f0f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A key file holding `keys`, one per line, newest first.
fn key_file(dir: &Path, name: &str, keys: &[&str]) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("# session ticket keys\n{}\n", keys.join("\n")),
    )?;
    Ok(path)
}

/// `edge check -c TOML` on `config` written there: the exit code, and what it
/// printed (stdout then stderr).
async fn edge_check(toml: &Path, config: &str) -> anyhow::Result<(Option<i32>, String)> {
    std::fs::write(toml, config)?;
    let out = run_edge(
        ["check".as_ref(), "-c".as_ref(), toml.as_os_str()],
        DEADLINE,
    )
    .await?;
    Ok((out.code, format!("{}{}", out.stdout, out.stderr)))
}

/// An edge over `origin` serving `pki`'s certificate, with `[tls]` settings
/// `tls` and extra sections.
async fn edge(
    origin: &Origin,
    pki: &Pki,
    tls: &[(&str, String)],
    sections: &str,
) -> anyhow::Result<Edge> {
    let mut config = EdgeConfig::new(origin.url());
    for (k, v) in tls {
        config = config.tls_setting(k, v);
    }
    if !sections.is_empty() {
        config = config.section(sections);
    }
    Edge::start_with_pki(tempfile::tempdir()?, pki.clone(), &config).await
}

async fn with_key_file(origin: &Origin, pki: &Pki, file: &Path) -> anyhow::Result<Edge> {
    edge(origin, pki, &[("ticket_keys", toml_path(file))], "").await
}

/// A TLS 1.3 client config offering h2, trusting `pki`, with its own session
/// store: every connection made with it offers the last session it got.
fn h2_client(pki: &Pki) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca_cert)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = Resumption::in_memory_sessions(16);
    Ok(Arc::new(config))
}

/// One h2 GET / to `edge`'s TCP listener with `client`: whether the TLS
/// session resumed, and the status. The response is read whole, so the
/// tickets the edge sent after the handshake are in the client's store.
async fn h2_get(edge: &Edge, client: &Arc<rustls::ClientConfig>) -> anyhow::Result<(bool, u16)> {
    let tcp = TcpStream::connect(edge.https_addr).await?;
    let tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    anyhow::ensure!(conn.alpn_protocol() == Some(b"h2"), "ALPN was not h2");
    anyhow::ensure!(
        conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
        "not TLS 1.3"
    );
    let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
    let io = hyper_util::rt::TokioIo::new(tls);
    let (mut send, driver) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
    let driver = tokio::spawn(driver);
    let req = http::Request::get("https://localhost/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = tokio::time::timeout(DEADLINE, send.send_request(req)).await??;
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body()).await?;
    drop(send);
    driver.abort();
    Ok((resumed, status))
}

/// One HTTP/1.1 GET / over TLS 1.3 with `openssl s_client`, saving the session
/// to `out` or offering the one in `inp`: whether s_client reports it
/// `Reused, TLSv1.3`, and the response's status line.
async fn openssl_h1(
    edge: &Edge,
    pki: &Pki,
    inp: Option<&Path>,
    out: Option<&Path>,
) -> anyhow::Result<(bool, String)> {
    let mut cmd = format!(
        "printf 'GET / HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' | \
         openssl s_client -connect {} -servername localhost -tls1_3 -alpn http/1.1 \
         -CAfile '{}' -verify_return_error -ign_eof",
        edge.https_addr,
        pki.ca_cert.display()
    );
    if let Some(p) = inp {
        cmd.push_str(&format!(" -sess_in '{}'", p.display()));
    }
    if let Some(p) = out {
        cmd.push_str(&format!(" -sess_out '{}'", p.display()));
    }
    let got = edge_tests::process::run("sh", ["-c", cmd.as_str()], DEADLINE).await?;
    let reused = got.stdout.lines().any(|l| l.starts_with("Reused, TLSv1.3"));
    let new = got.stdout.lines().any(|l| l.starts_with("New, TLSv1.3"));
    anyhow::ensure!(
        reused || new,
        "no TLS 1.3 session line:\n{}{}",
        got.stdout,
        got.stderr
    );
    let status = got
        .stdout
        .lines()
        .find(|l| l.starts_with("HTTP/1.1 "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok((reused, status))
}

fn one_get() -> serde_json::Value {
    serde_json::json!([{ "path": "/" }])
}

/// `proxy_tls_tickets_total{outcome}` on `edge` (0 when not yet counted).
async fn tickets(edge: &Edge, outcome: &str) -> anyhow::Result<f64> {
    let series = format!("proxy_tls_tickets_total{{outcome=\"{outcome}\"}}");
    Ok(edge.metric(&series).await?.0.unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_one_edge_resumes_on_another_with_the_same_keys_over_h1_h2_and_h3(
) -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let keys = key_file(dir.path(), "keys", &[KEY_1])?;
    let a = with_key_file(&origin, &pki, &keys).await?;
    let b = with_key_file(&origin, &pki, &keys).await?;

    // h2: a full handshake on A, then A's session resumes on B.
    let client = h2_client(&pki)?;
    assert_eq!(h2_get(&a, &client).await?, (false, 200));
    assert_eq!(h2_get(&b, &client).await?, (true, 200), "A's session on B");
    // And B's new session back on A.
    assert_eq!(h2_get(&a, &client).await?, (true, 200), "B's session on A");

    // h1 with openssl: A's session (saved by s_client) resumes on B.
    let h1 = dir.path().join("h1.session");
    let (reused, status) = openssl_h1(&a, &pki, None, Some(&h1)).await?;
    assert_eq!((reused, status.as_str()), (false, "HTTP/1.1 200 OK"));
    let (reused, status) = openssl_h1(&b, &pki, Some(&h1), None).await?;
    assert_eq!(
        (reused, status.as_str()),
        (true, "HTTP/1.1 200 OK"),
        "A's session on B (h1)"
    );

    // h3: the ticket A gave over QUIC resumes on B.
    let session = dir.path().join("h3.session");
    let (resumed, statuses) = h3_requests_resuming(&a, &one_get(), None, Some(&session)).await?;
    assert_eq!((resumed, statuses), (false, vec![200]));
    let (resumed, statuses) = h3_requests_resuming(&b, &one_get(), Some(&session), None).await?;
    assert_eq!(
        (resumed, statuses),
        (true, vec![200]),
        "A's QUIC session on B"
    );

    assert!(tickets(&b, "resumed").await? >= 2.0);
    assert!(tickets(&a, "issued").await? >= 2.0);

    // GET /config names the file and how many keys it held, never a key.
    let got = get(a.admin()?, "/config", &[]).await?;
    let body = String::from_utf8_lossy(&got.body).into_owned();
    assert_eq!(got.status, 200, "{body}");
    let config: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        config["config"]["tls"]["ticket_keys"],
        keys.display().to_string()
    );
    assert_eq!(config["config"]["tls"]["ticket_key_count"], 1);
    assert_eq!(config["config"]["tls"]["ticket_rotation"], "12h");
    assert!(!body.contains(KEY_1), "a key in GET /config: {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_with_other_keys_does_a_full_handshake_and_still_serves() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let a = with_key_file(&origin, &pki, &key_file(dir.path(), "a", &[KEY_1])?).await?;
    let other = with_key_file(&origin, &pki, &key_file(dir.path(), "b", &[KEY_2])?).await?;

    let client = h2_client(&pki)?;
    assert_eq!(h2_get(&a, &client).await?, (false, 200));
    assert_eq!(
        h2_get(&other, &client).await?,
        (false, 200),
        "A's session on other keys"
    );

    let session = dir.path().join("h3.session");
    h3_requests_resuming(&a, &one_get(), None, Some(&session)).await?;
    let (resumed, statuses) =
        h3_requests_resuming(&other, &one_get(), Some(&session), None).await?;
    assert_eq!(
        (resumed, statuses),
        (false, vec![200]),
        "A's QUIC session on other keys"
    );

    assert!(tickets(&other, "unknown_key").await? >= 2.0);
    assert_eq!(tickets(&other, "resumed").await?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_puts_a_new_key_first_and_the_old_one_still_resumes() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let rotating = key_file(dir.path(), "rotating", &[KEY_1])?;
    let a = with_key_file(&origin, &pki, &rotating).await?;
    // B knows only the old key.
    let b = with_key_file(&origin, &pki, &key_file(dir.path(), "old", &[KEY_1])?).await?;

    let before = h2_client(&pki)?;
    assert_eq!(h2_get(&a, &before).await?, (false, 200));
    assert_eq!(h2_get(&b, &before).await?, (true, 200), "KEY_1 on B");

    // KEY_2 in front, KEY_1 kept for decryption; SIGHUP.
    key_file(dir.path(), "rotating", &[KEY_2, KEY_1])?;
    a.signal("HUP").await?;
    eventually("reload counted", DEADLINE, || async {
        let ok = a
            .metric("proxy_config_reloads_total{result=\"ok\"}")
            .await?
            .0;
        Ok((ok == Some(1.0)).then_some(()))
    })
    .await?;

    // A session made under KEY_1 before the reload still resumes on A.
    assert_eq!(
        h2_get(&a, &before).await?,
        (true, 200),
        "old key after reload"
    );
    // A session made now is under KEY_2, which B does not hold.
    let after = h2_client(&pki)?;
    assert_eq!(h2_get(&a, &after).await?, (false, 200));
    assert_eq!(h2_get(&b, &after).await?, (false, 200), "new key on B");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_ticket_keys_file_is_refused_with_its_key_line_and_reason() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let short = &KEY_1[..62];
    let not_hex = format!("{}zz", &KEY_1[..62]);
    let same_byte = "ab".repeat(32);
    let nine: Vec<String> = (0..9)
        .map(|i| format!("{:02x}{}", i, &KEY_1[2..]))
        .collect();
    let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
    let cases: [(&str, &[&str], &str); 6] = [
        ("short", &[KEY_1, short], "line 3: a key is 64 hex digits"),
        (
            "not-hex",
            &[not_hex.as_str()],
            "line 2: a key is 64 hex digits",
        ),
        (
            "same-byte",
            &[same_byte.as_str()],
            "line 2: a key of one repeated byte",
        ),
        (
            "twice",
            &[KEY_1, KEY_2, KEY_1],
            "line 4: the same key twice",
        ),
        ("empty", &[], "no key"),
        ("nine", &nine, "line 10: more than 8 keys"),
    ];
    for (name, keys, reason) in cases {
        let file = key_file(dir.path(), name, keys)?;
        let config = format!(
            "listen = \"127.0.0.1:0\"\n\n[tls]\nticket_keys = {}\n[[tls.certificates]]\ncert = {}\nkey = {}\n\n\
             [[routes]]\npool = \"default\"\n\n[pools.default]\nendpoints = [\"http://127.0.0.1:9\"]\n",
            toml_path(&file),
            toml_path(&pki.leaf().cert),
            toml_path(&pki.leaf().key),
        );
        let toml = dir.path().join(format!("{name}.toml"));
        let (code, printed) = edge_check(&toml, &config).await?;
        assert_eq!(code, Some(2), "{name}: {printed}");
        let line = format!("{}:4: tls.ticket_keys: {}", toml.display(), file.display());
        assert!(
            printed
                .lines()
                .any(|l| l.starts_with(&line) && l.contains(reason)),
            "{name}: no `{line} ... {reason}` in:\n{printed}"
        );
    }
    // "redis" without [redis]; a rotation without keys; a rotation past 7 days.
    let config = "listen = \"127.0.0.1:0\"\n\n[tls]\nticket_keys = \"redis\"\nticket_rotation = \"8d\"\n\n\
                  [[routes]]\npool = \"default\"\n\n[pools.default]\nendpoints = [\"http://127.0.0.1:9\"]\n";
    let toml = dir.path().join("redis.toml");
    let (_, printed) = edge_check(&toml, config).await?;
    let file = toml.display();
    for want in [
        format!("{file}:4: tls.ticket_keys: \"redis\" needs [redis]"),
        format!("{file}:5: tls.ticket_rotation: must be between 1s and 7d"),
    ] {
        assert!(printed.contains(&want), "no `{want}` in:\n{printed}");
    }
    let config = "listen = \"127.0.0.1:0\"\n\n[tls]\nticket_rotation = \"1h\"\n\n\
                  [[routes]]\npool = \"default\"\n\n[pools.default]\nendpoints = [\"http://127.0.0.1:9\"]\n";
    let (_, printed) = edge_check(&toml, config).await?;
    let want = format!("{file}:4: tls.ticket_rotation: only with ticket_keys");
    assert!(printed.contains(&want), "no `{want}` in:\n{printed}");
    // Shared tickets and 0-RTT: rustls takes early data only on single-use
    // sessions in the process, so the two together are refused.
    let keys = key_file(dir.path(), "with-early", &[KEY_1])?;
    let config = format!(
        "listen = \"127.0.0.1:0\"\n\n[tls]\nearly_data = true\nticket_keys = {}\n\n\
         [[routes]]\npool = \"default\"\n\n[pools.default]\nendpoints = [\"http://127.0.0.1:9\"]\n",
        toml_path(&keys)
    );
    let (code, printed) = edge_check(&toml, &config).await?;
    assert_eq!(code, Some(2), "{printed}");
    let want = format!("{file}:5: tls.ticket_keys: not with tls.early_data");
    assert!(printed.contains(&want), "no `{want}` in:\n{printed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_file_on_reload_is_refused_and_the_keys_keep_serving() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let keys = key_file(dir.path(), "keys", &[KEY_1])?;
    let a = with_key_file(&origin, &pki, &keys).await?;
    let client = h2_client(&pki)?;
    assert_eq!(h2_get(&a, &client).await?, (false, 200));

    std::fs::write(&keys, "not a key\n")?;
    a.signal("HUP").await?;
    wait_until("reload refused", DEADLINE, || {
        a.log()
            .lines()
            .any(|l| l.contains("reload refused") && l.contains("tls.ticket_keys"))
    })
    .await?;
    assert!(
        a.log().contains("line 1: a key is 64 hex digits"),
        "{}",
        a.log()
    );
    assert_eq!(
        h2_get(&a, &client).await?,
        (true, 200),
        "the running keys serve"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_sharing_keys_through_redis_resume_each_others_sessions() -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let tls = [("ticket_keys", toml_str("redis"))];
    let section = format!("[redis]\nurl = {}\n", toml_str(&redis.url()));
    let a = edge(&origin, &pki, &tls, &section).await?;
    let b = edge(&origin, &pki, &tls, &section).await?;
    for e in [&a, &b] {
        eventually("ticket keys read from redis", DEADLINE, || async {
            let shared = e.metric("proxy_tls_ticket_keys_shared").await?.0;
            Ok((shared == Some(1.0)).then_some(()))
        })
        .await?;
    }
    // One of them made the set: one rotation between them.
    let rotations = a
        .metric("proxy_tls_ticket_key_rotations_total")
        .await?
        .0
        .unwrap_or(0.0)
        + b.metric("proxy_tls_ticket_key_rotations_total")
            .await?
            .0
            .unwrap_or(0.0);
    assert_eq!(rotations, 1.0);

    let client = h2_client(&pki)?;
    assert_eq!(h2_get(&a, &client).await?, (false, 200));
    assert_eq!(h2_get(&b, &client).await?, (true, 200), "A's session on B");

    let session = dir.path().join("h3.session");
    h3_requests_resuming(&b, &one_get(), None, Some(&session)).await?;
    let (resumed, statuses) = h3_requests_resuming(&a, &one_get(), Some(&session), None).await?;
    assert_eq!(
        (resumed, statuses),
        (true, vec![200]),
        "B's QUIC session on A"
    );

    // The keys are in Redis, where the edges put them; not in GET /config.
    let keys = redis.keys().await?;
    assert!(keys.iter().any(|k| k == "edge:tls:ticket_keys"), "{keys:?}");
    Ok(())
}

/// The shared set as the edges wrote it: `v1 ROTATED_AT`, then next, current, previous.
const SHARED_KEYS: &str = "edge:tls:ticket_keys";

/// `proxy_tls_ticket_keys` on `edge` reaches `n`.
async fn holds_keys(edge: &Edge, n: f64) -> anyhow::Result<()> {
    eventually(&format!("{n} ticket keys held"), DEADLINE, || async {
        let held = edge.metric("proxy_tls_ticket_keys").await?.0;
        Ok((held == Some(n)).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_in_redis_keeps_the_previous_key_and_the_next_is_everywhere_first(
) -> anyhow::Result<()> {
    let redis = Redis::start().await?;
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    // Long enough that no rotation comes by itself while the test runs; the
    // replicas read the set every rotation/8 (here under 4 s).
    let tls = [
        ("ticket_keys", toml_str("redis")),
        ("ticket_rotation", toml_str("30s")),
    ];
    let section = format!("[redis]\nurl = {}\n", toml_str(&redis.url()));
    let a = edge(&origin, &pki, &tls, &section).await?;
    let b = edge(&origin, &pki, &tls, &section).await?;
    for e in [&a, &b] {
        holds_keys(e, 2.0).await?;
    }
    let first = redis.get(SHARED_KEYS).await?.expect("the shared set");
    let old: Vec<&str> = first.lines().skip(1).collect();
    assert_eq!(old.len(), 2, "{first}");

    let before = h2_client(&pki)?;
    assert_eq!(h2_get(&a, &before).await?, (false, 200));

    // Make the set due: the next read rotates it (one replica, under the lock).
    redis
        .set(SHARED_KEYS, &format!("v1 0\n{}\n", old.join("\n")))
        .await?;
    for e in [&a, &b] {
        holds_keys(e, 3.0).await?;
    }
    let rotated = redis.get(SHARED_KEYS).await?.expect("the shared set");
    let new: Vec<&str> = rotated.lines().skip(1).collect();
    assert_eq!(&new[1..], &old[..], "next became current, current previous");
    let mut rotations = 0.0;
    for e in [&a, &b] {
        rotations += e
            .metric("proxy_tls_ticket_key_rotations_total")
            .await?
            .0
            .unwrap_or(0.0);
    }
    assert_eq!(rotations, 2.0, "the first set, then one rotation");

    // The session from before the rotation (now under the previous key)
    // resumes on B; one made now (the old next key) too.
    assert_eq!(h2_get(&b, &before).await?, (true, 200), "previous key on B");
    let after = h2_client(&pki)?;
    assert_eq!(h2_get(&a, &after).await?, (false, 200));
    assert_eq!(h2_get(&b, &after).await?, (true, 200), "current key on B");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_away_an_edge_serves_and_resumes_on_its_own_key() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let tls = [("ticket_keys", toml_str("redis"))];
    let section = format!("[redis]\nurl = \"redis://127.0.0.1:{port}\"\ntimeout = \"200ms\"\n");
    let a = edge(&origin, &pki, &tls, &section).await?;

    let client = h2_client(&pki)?;
    assert_eq!(h2_get(&a, &client).await?, (false, 200));
    assert_eq!(
        h2_get(&a, &client).await?,
        (true, 200),
        "own key on the same edge"
    );
    let session = dir.path().join("h3.session");
    h3_requests_resuming(&a, &one_get(), None, Some(&session)).await?;
    let (resumed, statuses) = h3_requests_resuming(&a, &one_get(), Some(&session), None).await?;
    assert_eq!((resumed, statuses), (true, vec![200]));
    assert_eq!(a.metric("proxy_tls_ticket_keys_shared").await?.0, Some(0.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_an_edge_without_mtls_does_not_resume_past_one_that_requires_it(
) -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let keys = key_file(dir.path(), "keys", &[KEY_1])?;
    let open = with_key_file(&origin, &pki, &keys).await?;
    let mtls = format!("[tls.client_auth]\nca = {}\n", toml_path(&pki.ca_cert));
    let strict = edge(&origin, &pki, &[("ticket_keys", toml_path(&keys))], &mtls).await?;

    let client = h2_client(&pki)?;
    assert_eq!(h2_get(&open, &client).await?, (false, 200));
    // Resumed, the session would skip the certificate request: it must not
    // open there, and the client without a certificate is refused.
    let got = h2_get(&strict, &client).await;
    assert!(got.is_err(), "served without a client certificate: {got:?}");
    assert!(tickets(&strict, "invalid").await? >= 1.0);
    assert_eq!(tickets(&strict, "resumed").await?, 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_naming_another_key_source_waits_for_a_restart() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let first = key_file(dir.path(), "first", &[KEY_1])?;
    let other = key_file(dir.path(), "other", &[KEY_2])?;
    let a = with_key_file(&origin, &pki, &first).await?;
    let b = with_key_file(&origin, &pki, &first).await?;

    let toml = std::fs::read_to_string(&a.config_path)?;
    let moved = toml.replace(&toml_path(&first), &toml_path(&other));
    anyhow::ensure!(moved != toml, "ticket_keys not in the config:\n{toml}");
    std::fs::write(&a.config_path, moved)?;
    a.signal("HUP").await?;
    wait_until("restart pending logged", DEADLINE, || {
        a.log()
            .contains("reload: tls.ticket_keys changed; it takes effect on restart")
    })
    .await?;
    // A still encrypts under the file it started with: B (same file) resumes.
    let client = h2_client(&pki)?;
    assert_eq!(h2_get(&a, &client).await?, (false, 200));
    assert_eq!(h2_get(&b, &client).await?, (true, 200), "A kept its keys");
    Ok(())
}

/// Without `tls.ticket_keys`, one edge still resumes any number of sessions:
/// a client's session made before 300 other clients' handshakes resumes after
/// them, over TCP and over QUIC. (rustls's default, a stateful cache of 256
/// sessions that each handshake adds two to, had forgotten it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_keys_an_edge_resumes_sessions_past_any_cache_size() -> anyhow::Result<()> {
    let origin = Origin::start().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let edge = edge(&origin, &pki, &[], "").await?;
    let client = h2_client(&pki)?;
    assert_eq!(h2_get(&edge, &client).await?, (false, 200));
    let session = dir.path().join("h3.session");
    h3_requests_resuming(&edge, &one_get(), None, Some(&session)).await?;

    let mut others = (*h2_client(&pki)?).clone();
    others.resumption = Resumption::disabled();
    let others = tokio_rustls::TlsConnector::from(Arc::new(others));
    for i in 0..300 {
        let tcp = TcpStream::connect(edge.https_addr).await?;
        let mut tls = others
            .connect(ServerName::try_from("localhost")?, tcp)
            .await
            .map_err(|e| anyhow::anyhow!("other client {i}: {e}"))?;
        // Read what the edge sends after the handshake (its tickets) until the
        // close: the session is then surely made and stored, if it is stored.
        tokio::io::AsyncWriteExt::shutdown(&mut tls).await?;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(
            DEADLINE,
            tokio::io::AsyncReadExt::read_to_end(&mut tls, &mut sink),
        )
        .await;
    }

    assert_eq!(
        h2_get(&edge, &client).await?,
        (true, 200),
        "the first session resumes over TCP"
    );
    let (resumed, statuses) = h3_requests_resuming(&edge, &one_get(), Some(&session), None).await?;
    assert_eq!((resumed, statuses), (true, vec![200]), "and over QUIC");
    Ok(())
}

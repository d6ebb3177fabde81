//! Client certificates (`[tls.client_auth]`) through the real binary, on TCP
//! (h1, h2, by curl) and QUIC (h3, by aioquic) alike: `require` refuses a
//! handshake without a certificate from the configured CA; `optional` lets a
//! route ask for one (403 without); the verified certificate reaches the
//! origin in `x-forwarded-client-cert`, which a client can never forge.

use std::path::Path;

use edge_tests::scripted::{Reply, Scripted};
use edge_tests::{curl, h3_requests, h3_requests_as, tls_args, Edge, EdgeConfig, LeafFiles, Pki};

const XFCC: &str = "x-forwarded-client-cert";

/// An origin answering with the client certificate header it received (empty
/// when there was none).
async fn origin() -> anyhow::Result<Scripted> {
    Scripted::start(|seen| Reply::ok(&[], seen.header(XFCC).unwrap_or("").to_owned())).await
}

fn client_auth(pki: &Pki, mode: &str) -> String {
    format!(
        "[tls.client_auth]\nca = {}\nmode = \"{mode}\"\n",
        edge_tests::toml_path(&pki.ca_cert)
    )
}

/// curl to edge's TLS listener presenting `client` (or nothing), h2 or h1.
async fn curl_as(
    edge: &Edge,
    client: Option<&LeafFiles>,
    h2: bool,
    path: &str,
    extra: &[&str],
) -> anyhow::Result<edge_tests::CurlResponse> {
    let mut args = tls_args(edge);
    args.push(if h2 { "--http2" } else { "--http1.1" }.to_owned());
    if let Some(c) = client {
        args.extend([
            "--cert".to_owned(),
            c.cert.to_string_lossy().into_owned(),
            "--key".to_owned(),
            c.key.to_string_lossy().into_owned(),
        ]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(format!(
        "https://localhost:{}{path}",
        edge.https_addr.port()
    ));
    curl(&args).await
}

/// What edge must have sent for `client`: `Hash=<64 hex>;Subject="CN=<cn>";DNS=<cn>`.
fn assert_names(body: &[u8], cn: &str) {
    let v = String::from_utf8_lossy(body);
    let hash = v
        .strip_prefix("Hash=")
        .and_then(|r| r.split(';').next())
        .unwrap_or_default();
    assert!(
        hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{v}"
    );
    assert!(
        v.ends_with(&format!(";Subject=\"CN={cn}\";DNS={cn}")),
        "{v}"
    );
}

/// A certificate for `cn` from a CA edge does not trust.
fn stranger(dir: &Path, cn: &str) -> anyhow::Result<LeafFiles> {
    let sub = dir.join("stranger");
    std::fs::create_dir_all(&sub)?;
    Pki::generate(&sub)?.issue_client(&sub, "client", &[cn])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_admits_only_certificates_from_the_ca_on_tcp_and_quic() -> anyhow::Result<()> {
    let origin = origin().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let alice = pki.issue_client(dir.path(), "alice", &["alice.test"])?;
    let mallory = stranger(dir.path(), "mallory.test")?;
    let config = EdgeConfig::new(origin.url()).section(&client_auth(&pki, "require"));
    let edge = Edge::start_with_pki(dir, pki, &config).await?;

    for h2 in [false, true] {
        // The client's own header is replaced by what edge verified.
        let got = curl_as(
            &edge,
            Some(&alice),
            h2,
            "/",
            &["-H", "x-forwarded-client-cert: Hash=forged"],
        )
        .await?;
        assert_eq!(got.status, 200, "h2={h2}");
        assert_names(&got.body, "alice.test");
        // No certificate, or one from another CA: no handshake, nothing upstream.
        for who in [None, Some(&mallory)] {
            let refused = curl_as(&edge, who, h2, "/", &[]).await;
            assert!(
                refused.is_err(),
                "h2={h2} {:?}: {refused:?}",
                who.map(|w| &w.cert)
            );
        }
    }
    assert_eq!(
        origin.seen().len(),
        2,
        "only alice's requests reached the origin"
    );

    let spec =
        serde_json::json!([{ "method": "GET", "path": "/", "headers": [[XFCC, "Hash=forged"]] }]);
    let got = h3_requests_as(&edge, &alice, &spec).await?;
    assert_eq!(got[0]["status"], 200, "{got}");
    assert_names(
        got[0]["body"].as_str().unwrap_or_default().as_bytes(),
        "alice.test",
    );
    let refused = h3_requests(&edge, &spec).await;
    assert!(
        refused.as_ref().map_or(true, |r| r[0]["status"] != 200),
        "h3 without a certificate: {refused:?}"
    );
    assert_eq!(origin.seen().len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_lets_a_route_require_a_certificate() -> anyhow::Result<()> {
    let origin = origin().await?;
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let alice = pki.issue_client(dir.path(), "alice", &["alice.test"])?;
    let mallory = stranger(dir.path(), "mallory.test")?;
    let config = EdgeConfig::new(origin.url()).section(&client_auth(&pki, "optional"));
    // A private route ahead of the catch-all.
    let toml = config.to_toml(&pki).replacen(
        "\n[[routes]]\n",
        "\n[[routes]]\npath_prefix = \"/private\"\npool = \"default\"\nrequire_client_cert = true\n\n[[routes]]\n",
        1,
    );
    let edge = Edge::start_with_toml(dir, pki, &toml).await?;

    for h2 in [false, true] {
        let public = curl_as(
            &edge,
            None,
            h2,
            "/",
            &["-H", "x-forwarded-client-cert: Hash=forged"],
        )
        .await?;
        assert_eq!(public.status, 200, "h2={h2}");
        assert_eq!(public.body, b"", "a forged header is removed: h2={h2}");
        let private = curl_as(&edge, None, h2, "/private/x", &[]).await?;
        assert_eq!(private.status, 403, "h2={h2}");
        let admitted = curl_as(&edge, Some(&alice), h2, "/private/x", &[]).await?;
        assert_eq!(admitted.status, 200, "h2={h2}");
        assert_names(&admitted.body, "alice.test");
        // Optional is not "anything goes": a certificate edge cannot verify
        // fails the handshake.
        assert!(
            curl_as(&edge, Some(&mallory), h2, "/", &[]).await.is_err(),
            "h2={h2}"
        );
    }
    let private = serde_json::json!([{ "method": "GET", "path": "/private/x" }]);
    let got = h3_requests(&edge, &private).await?;
    assert_eq!(got[0]["status"], 403, "{got}");
    let got = h3_requests_as(&edge, &alice, &private).await?;
    assert_eq!(got[0]["status"], 200, "{got}");
    assert_names(
        got[0]["body"].as_str().unwrap_or_default().as_bytes(),
        "alice.test",
    );
    assert_eq!(
        origin.count("/private/x"),
        3,
        "only certified requests reached /private"
    );
    Ok(())
}

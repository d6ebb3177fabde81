//! Response compression (`compress` on a route): gzip, br and zstd chosen by
//! the client's Accept-Encoding, decoded by real clients (curl over h1 and h2,
//! aioquic over h3) to exactly the origin's bytes; what is never compressed;
//! Vary and ETag; streaming without holding a body; the cache's one copy.

use std::process::Stdio;
use std::time::Duration;

use edge_tests::origin::text;
use edge_tests::{
    assert_check_refuses, curl, tls_args, CurlResponse, Edge, EdgeConfig, Origin, Pki,
};
use tokio::io::AsyncReadExt as _;

/// Starts an origin and edge whose catch-all route has `route` added (TOML
/// lines such as `compress = ["zstd", "br", "gzip"]`).
async fn start(
    route: &str,
    configure: impl FnOnce(EdgeConfig) -> EdgeConfig,
) -> anyhow::Result<(Origin, Edge)> {
    let origin = Origin::start().await?;
    let config = configure(EdgeConfig::new(origin.url()));
    let dir = tempfile::tempdir()?;
    let pki = Pki::generate(dir.path())?;
    let toml = config.to_toml(&pki);
    let plain = "pool = \"default\"\n";
    anyhow::ensure!(toml.contains(plain), "no default route in:\n{toml}");
    let toml = toml.replacen(plain, &format!("{plain}{route}\n"), 1);
    let edge = Edge::start_with_toml(dir, pki, &toml).await?;
    Ok((origin, edge))
}

const ALL: &str = "compress = [\"zstd\", \"br\", \"gzip\"]";

/// GET `path` over plain HTTP/1.1 with `Accept-Encoding: accept` (none when
/// `None`); curl decodes whatever coding it was sent.
async fn get(
    edge: &Edge,
    path: &str,
    accept: Option<&str>,
    extra: &[&str],
) -> anyhow::Result<CurlResponse> {
    let url = format!("http://{}{path}", edge.http()?);
    let mut args: Vec<String> = vec!["--compressed".into()];
    match accept {
        Some(a) => args.extend(["-H".into(), format!("accept-encoding: {a}")]),
        // --compressed would offer its own list: take the header out.
        None => args.extend(["-H".into(), "accept-encoding:".into()]),
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.push(url);
    curl(&args).await
}

fn varies(r: &CurlResponse) -> bool {
    r.header_all("vary")
        .iter()
        .flat_map(|v| v.split(','))
        .any(|f| f.trim().eq_ignore_ascii_case("accept-encoding"))
}

async fn compressed_count(edge: &Edge, encoding: &str) -> anyhow::Result<f64> {
    let series = format!("proxy_compressed_responses_total{{encoding=\"{encoding}\"}}");
    Ok(edge.metric(&series).await?.0.unwrap_or(0.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_br_and_zstd_each_decode_to_the_origins_bytes() -> anyhow::Result<()> {
    let (_origin, edge) = start(ALL, |c| c).await?;
    let n = 200_000;
    for encoding in ["gzip", "br", "zstd"] {
        let r = get(&edge, &format!("/text/{n}"), Some(encoding), &[]).await?;
        assert_eq!(r.status, 200, "{encoding}: {}", r.log);
        assert_eq!(
            r.header("content-encoding"),
            Some(encoding),
            "{:?}",
            r.headers
        );
        assert_eq!(
            r.header("content-length"),
            None,
            "{encoding}: {:?}",
            r.headers
        );
        assert!(varies(&r), "{encoding}: {:?}", r.headers);
        assert!(
            r.body == text(n),
            "{encoding}: {} bytes decoded, not the origin's {n}",
            r.body.len()
        );
        // What crossed the wire is the compressed stream, far smaller.
        assert!(
            r.size_download < n / 2,
            "{encoding}: {} bytes on the wire",
            r.size_download
        );
        assert_eq!(compressed_count(&edge, encoding).await?, 1.0, "{encoding}");
    }
    let (bytes_in, page) = edge
        .metric("proxy_compression_bytes_total{encoding=\"gzip\",side=\"in\"}")
        .await?;
    assert_eq!(bytes_in, Some(n as f64), "{page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_q_values_choose_and_ties_go_to_the_routes_order() -> anyhow::Result<()> {
    let (_origin, edge) = start(ALL, |c| c).await?;
    let cases: [(Option<&str>, Option<&str>); 10] = [
        (Some("gzip, deflate, br, zstd"), Some("zstd")),
        (Some("gzip, br"), Some("br")),
        (Some("gzip;q=1, br;q=0.5"), Some("gzip")),
        (Some("br;q=0.2, gzip;q=0.8, zstd;q=0.5"), Some("gzip")),
        (Some("*"), Some("zstd")),
        (Some("zstd;q=0, *;q=0.5"), Some("br")),
        (Some("identity"), None),
        (Some("identity;q=0, deflate"), None),
        (Some("gzip;q=0"), None),
        (None, None),
    ];
    for (accept, expected) in cases {
        let r = get(&edge, "/text/5000", accept, &[]).await?;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-encoding"),
            expected,
            "Accept-Encoding {accept:?}"
        );
        assert!(
            r.body == text(5000),
            "Accept-Encoding {accept:?}: body differs"
        );
        // Whether or not this client got an encoding, the answer varies by it.
        assert!(varies(&r), "Accept-Encoding {accept:?}: {:?}", r.headers);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_own_order_and_list_are_kept() -> anyhow::Result<()> {
    let (_origin, edge) = start("compress = [\"gzip\", \"br\"]", |c| c).await?;
    let r = get(&edge, "/text/5000", Some("zstd, br, gzip"), &[]).await?;
    assert_eq!(
        r.header("content-encoding"),
        Some("gzip"),
        "{:?}",
        r.headers
    );
    let r = get(&edge, "/text/5000", Some("zstd"), &[]).await?;
    assert_eq!(r.header("content-encoding"), None, "{:?}", r.headers);
    assert!(r.body == text(5000));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_images_encoded_ranged_no_transform_head_and_206_pass_as_they_are(
) -> anyhow::Result<()> {
    let (_origin, edge) = start(ALL, |c| c).await?;
    // (path, extra curl arguments, whether the answer still varies by encoding)
    let cases: [(&str, &[&str], bool); 7] = [
        ("/text/1023", &[], false),
        ("/text/5000?type=image/png", &[], false),
        ("/text/5000?ce=identity", &[], false),
        ("/text/5000?cc=public,+no-transform", &[], false),
        ("/text/5000?status=206", &[], false),
        // The in-process origin ignores Range: its whole 200 comes back, and
        // a Range request is still never compressed.
        ("/text/5000", &["-H", "range: bytes=0-99"], true),
        ("/text/5000", &["-I"], true),
    ];
    for (path, extra, vary) in cases {
        let r = get(&edge, path, Some("gzip, br, zstd"), extra).await?;
        let ce = r.header_all("content-encoding");
        match path {
            p if p.contains("ce=identity") => assert_eq!(ce, ["identity"], "{path}"),
            _ => assert!(ce.is_empty(), "{path} {extra:?}: {:?}", r.headers),
        }
        assert_eq!(varies(&r), vary, "{path} {extra:?}: {:?}", r.headers);
        let n: u64 = path
            .trim_start_matches("/text/")
            .split('?')
            .next()
            .unwrap_or_default()
            .parse()?;
        if extra != ["-I"] {
            assert!(r.body == text(n), "{path} {extra:?}: body differs");
            assert_eq!(
                r.header("content-length"),
                Some(n.to_string().as_str()),
                "{path}"
            );
        }
    }
    for encoding in ["gzip", "br", "zstd"] {
        assert_eq!(compressed_count(&edge, encoding).await?, 0.0, "{encoding}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strong_etag_turns_weak_and_the_origins_vary_is_kept() -> anyhow::Result<()> {
    let (_origin, edge) = start(ALL, |c| c).await?;
    let path = "/text/5000?etag=%22v1%22&vary=origin";
    let r = get(&edge, path, Some("gzip"), &[]).await?;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("etag"), Some("W/\"v1\""), "{:?}", r.headers);
    assert!(
        r.header_all("vary").iter().any(|v| v.contains("origin")),
        "{:?}",
        r.headers
    );
    assert!(varies(&r));
    // Identity keeps the origin's strong validator.
    let r = get(&edge, path, Some("identity"), &[]).await?;
    assert_eq!(r.header("etag"), Some("\"v1\""), "{:?}", r.headers);
    Ok(())
}

/// Peak resident set size of `pid`, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    Ok(line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_40_mib_stream_of_unknown_length_compresses_without_being_held() -> anyhow::Result<()> {
    let (_origin, edge) = start(ALL, |c| c).await?;
    // Large beside an encoder's state (up to 3.7 MiB, and its allocation
    // varies by a few MiB from run to run): a held body shows as +40 MiB.
    let n: u64 = 40 << 20;
    // Warm up every encoder once, so the peak below is the big body's own.
    for encoding in ["gzip", "br", "zstd"] {
        get(&edge, "/text/2097152?chunked=1", Some(encoding), &[]).await?;
    }
    for encoding in ["gzip", "br", "zstd"] {
        let before = peak_rss_kib(edge.pid())?;
        let r = edge_tests::curl_timeout(
            &[
                "--compressed".to_owned(),
                "-H".to_owned(),
                format!("accept-encoding: {encoding}"),
                format!("http://{}/text/{n}?chunked=1", edge.http()?),
            ],
            Duration::from_secs(60),
        )
        .await?;
        assert_eq!(
            r.header("content-encoding"),
            Some(encoding),
            "{:?}",
            r.headers
        );
        assert!(
            r.body == text(n),
            "{encoding}: {} bytes decoded, not {n}",
            r.body.len()
        );
        let grew = peak_rss_kib(edge.pid())?.saturating_sub(before);
        eprintln!(
            "{encoding}: 40 MiB in, {} B out, peak RSS +{grew} KiB",
            r.size_download
        );
        // The body is 40 MiB; a held copy (either side) would show here.
        // An encoder's own state is 0.7 to 3.7 MiB (body/encode.rs); brotli's
        // peak moved by up to 6.4 MiB between runs over 10 MiB.
        assert!(
            grew < 16 * 1024,
            "{encoding}: peak RSS grew {grew} KiB for a 40 MiB body"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_are_flushed_as_they_come() -> anyhow::Result<()> {
    let (_origin, edge) = start(ALL, |c| c).await?;
    for encoding in ["gzip", "br", "zstd"] {
        // The origin sends three events and then holds the stream open: each
        // must reach the client decoded while the response is still going.
        let mut child = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-N",
                "-i",
                "--compressed",
                "--max-time",
                "30",
                "-H",
                &format!("accept-encoding: {encoding}"),
                &format!("http://{}/events/3", edge.http()?),
            ])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut seen = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&seen).contains("event 2 of the stream") {
                let n = out.read(&mut buf).await?;
                anyhow::ensure!(n > 0, "curl ended early");
                seen.extend_from_slice(&buf[..n]);
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "{encoding}: events held back; got {:?}",
                    String::from_utf8_lossy(&seen)
                )
            })??;
        let seen = String::from_utf8_lossy(&seen).to_ascii_lowercase();
        assert!(
            seen.contains(&format!("content-encoding: {encoding}")),
            "{seen}"
        );
        child.kill().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_h3_clients_get_compressed_bodies() -> anyhow::Result<()> {
    let (_origin, edge) = start(ALL, |c| c).await?;
    let n = 100_000;
    for encoding in ["gzip", "br", "zstd"] {
        let mut args = tls_args(&edge);
        args.extend([
            "--http2".to_owned(),
            "--compressed".to_owned(),
            "-H".to_owned(),
            format!("accept-encoding: {encoding}"),
            format!("{}/text/{n}", edge.https_origin()),
        ]);
        let r = curl(&args).await?;
        assert_eq!(r.http_version, "2");
        assert_eq!(
            r.header("content-encoding"),
            Some(encoding),
            "{:?}",
            r.headers
        );
        assert!(r.body == text(n), "h2 {encoding}: body differs");
    }
    let spec = serde_json::json!([{
        "method": "GET",
        "path": format!("/text/{n}"),
        "headers": [["accept-encoding", "gzip"]],
    }]);
    let results = edge_tests::h3_requests(&edge, &spec).await?;
    let r = &results[0];
    assert_eq!(r["status"], 200, "{r}");
    let headers = r["headers"].to_string().to_ascii_lowercase();
    assert!(
        headers.contains("\"content-encoding\",\"gzip\""),
        "{headers}"
    );
    let hex = r["body_hex"].as_str().unwrap_or_default();
    let raw: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<_, _>>()?;
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut decoded)?;
    assert!(
        decoded == text(n),
        "h3: {} bytes decoded from {}",
        decoded.len(),
        raw.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stored_copy_serves_every_encoding_from_the_cache() -> anyhow::Result<()> {
    let (origin, edge) = start(ALL, |c| c.cache_setting("enabled", "true")).await?;
    let path = "/text/50000?cc=max-age=60";
    let first = get(&edge, path, Some("gzip"), &[]).await?;
    assert_eq!(first.header("content-encoding"), Some("gzip"));
    assert_eq!(first.header("cache-status"), Some("edge; fwd=miss; stored"));
    edge_tests::eventually("the entry in L1", Duration::from_secs(10), || async {
        let r = get(&edge, path, Some("identity"), &[]).await?;
        Ok(r.header("cache-status")
            .is_some_and(|s| s.contains("hit"))
            .then_some(r))
    })
    .await
    .map(|r| assert!(r.body == text(50_000) && r.header("content-encoding").is_none()))?;
    let asked = origin.requests();
    for accept in ["br", "zstd", "gzip"] {
        let r = get(&edge, path, Some(accept), &[]).await?;
        assert_eq!(
            r.header("cache-status"),
            Some("edge; hit; detail=l1"),
            "{accept}"
        );
        assert_eq!(
            r.header("content-encoding"),
            Some(accept),
            "{accept}: {:?}",
            r.headers
        );
        assert!(r.body == text(50_000), "{accept}: body differs");
        assert!(varies(&r), "{accept}");
    }
    assert_eq!(
        origin.requests(),
        asked,
        "every hit came from the one stored copy"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_compress_and_refuses_an_unknown_encoding() -> anyhow::Result<()> {
    let (_origin, edge) = start(
        "compress = [\"br\", \"gzip\"]\ncompress_min_bytes = 2048\ncompress_types = [\"text/*\"]",
        |c| c,
    )
    .await?;
    let r = curl(&[format!("http://{}/config", edge.admin()?)]).await?;
    let c = r.json()?;
    let route = &c["config"]["routes"][0];
    assert_eq!(
        route["compress"],
        serde_json::json!(["br", "gzip"]),
        "{route}"
    );
    assert_eq!(route["compress_min_bytes"], 2048, "{route}");
    assert_eq!(
        route["compress_types"],
        serde_json::json!(["text/*"]),
        "{route}"
    );
    // The min and types apply: 2000 bytes stay as they are, JSON too.
    let r = get(&edge, "/text/2000", Some("gzip"), &[]).await?;
    assert_eq!(r.header("content-encoding"), None);
    let r = get(&edge, "/text/5000?type=application/json", Some("gzip"), &[]).await?;
    assert_eq!(r.header("content-encoding"), None);

    let toml = [
        "listen = \"127.0.0.1:0\"",             // 1
        "[[routes]]",                           // 2
        "pool = \"default\"",                   // 3
        "compress = [\"gzip\", \"deflate\"]",   // 4: unknown encoding
        "[[routes]]",                           // 5
        "path_prefix = \"/b\"",                 // 6
        "pool = \"default\"",                   // 7
        "compress_types = [\"text\"]",          // 8: not a type, and no compress
        "[pools.default]",                      // 9
        "endpoints = [\"http://127.0.0.1:9\"]", // 10
    ];
    let expected = [
        (4, "routes[0].compress", "\"deflate\" is not an encoding"),
        (
            8,
            "routes[1].compress_types",
            "\"text\" is not a media type",
        ),
    ];
    assert_check_refuses(&toml, &expected).await?;
    Ok(())
}

//! Real clients driven by the tests: curl (h1, h2, h2c), gtlsclient (h3), Python
//! scripts in `tests/py/` (aioquic, niquests) and raw TCP for malformed requests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::edge::Edge;
use crate::process::{self, tail, Finished};

/// Deadline for one ordinary request; clients get it as their own timeout too.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A response as curl saw it.
#[derive(Debug, Clone)]
pub struct CurlResponse {
    /// Status code (0 when no response arrived).
    pub status: u16,
    /// `1.1`, `2` or `3`, as curl's `%{http_version}`.
    pub http_version: String,
    /// Headers of the final response, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// Body (empty when it was sent to /dev/null).
    pub body: Vec<u8>,
    /// Body bytes received (`%{size_download}`).
    pub size_download: u64,
    /// Body bytes sent (`%{size_upload}`).
    pub size_upload: u64,
    /// curl's standard error: its error messages, and with `-v` its verbose log
    /// (TLS version, the server certificate's subject).
    pub log: String,
}

impl CurlResponse {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (lower-case).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", tail(&self.text())))
    }
}

/// curl arguments that trust the test CA and resolve `localhost` to edge's address.
pub fn tls_args(edge: &Edge) -> Vec<String> {
    vec![
        "--cacert".to_owned(),
        edge.pki.ca_cert.to_string_lossy().into_owned(),
        "--resolve".to_owned(),
        format!(
            "localhost:{}:{}",
            edge.https_addr.port(),
            edge.https_addr.ip()
        ),
    ]
}

/// Runs curl with `args` (URL included), keeping the body; 10 s limit.
pub async fn curl<S: AsRef<str>>(args: &[S]) -> anyhow::Result<CurlResponse> {
    curl_full(args, REQUEST_TIMEOUT, true).await
}

/// Runs curl with `args`, keeping the body, bounded by `timeout`.
pub async fn curl_timeout<S: AsRef<str>>(
    args: &[S],
    timeout: Duration,
) -> anyhow::Result<CurlResponse> {
    curl_full(args, timeout, true).await
}

/// Runs a long curl transfer whose body goes to /dev/null, bounded by `timeout`.
pub async fn curl_transfer<S: AsRef<str>>(
    args: &[S],
    timeout: Duration,
) -> anyhow::Result<CurlResponse> {
    curl_full(args, timeout, false).await
}

async fn curl_full<S: AsRef<str>>(
    args: &[S],
    timeout: Duration,
    keep_body: bool,
) -> anyhow::Result<CurlResponse> {
    let dir = tempfile::tempdir()?;
    let headers_path = dir.path().join("headers");
    let body_path = if keep_body {
        dir.path().join("body")
    } else {
        PathBuf::from("/dev/null")
    };
    let mut full: Vec<String> = vec![
        "-sS".to_owned(),
        "--max-time".to_owned(),
        timeout.as_secs().to_string(),
        "-D".to_owned(),
        headers_path.to_string_lossy().into_owned(),
        "-o".to_owned(),
        body_path.to_string_lossy().into_owned(),
        "-w".to_owned(),
        "%{json}".to_owned(),
    ];
    full.extend(args.iter().map(|a| a.as_ref().to_owned()));
    // curl stops itself at --max-time; the extra margin only catches a hung curl.
    let out = process::run("curl", &full, timeout + Duration::from_secs(5)).await?;
    out.ensure_success(&format!("curl {}", full.join(" ")))?;
    let stats: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("curl -w %{{json}} output: {}", out.stdout))?;
    let headers_text = std::fs::read_to_string(&headers_path).unwrap_or_default();
    let body = if keep_body {
        std::fs::read(&body_path).unwrap_or_default()
    } else {
        Vec::new()
    };
    Ok(CurlResponse {
        status: json_u64(&stats, "http_code") as u16,
        http_version: stats["http_version"].as_str().unwrap_or("").to_owned(),
        headers: parse_header_block(&headers_text),
        body,
        size_download: json_u64(&stats, "size_download"),
        size_upload: json_u64(&stats, "size_upload"),
        log: out.stderr,
    })
}

fn json_u64(value: &serde_json::Value, key: &str) -> u64 {
    value[key].as_u64().unwrap_or(0)
}

/// Parses the last header block of a `curl -D` dump (interim 1xx blocks come first).
fn parse_header_block(text: &str) -> Vec<(String, String)> {
    let last = text
        .split("\r\n\r\n")
        .filter(|block| !block.trim().is_empty())
        .last()
        .unwrap_or("");
    last.lines()
        .skip(1)
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        })
        .collect()
}

/// An HTTP/3 response as gtlsclient received it.
#[derive(Debug)]
pub struct H3Response {
    /// `:status`, when gtlsclient ran verbose (it prints headers only then).
    pub status: Option<u16>,
    /// Response headers (lower-case names), pseudo-headers excluded; verbose only.
    pub headers: Vec<(String, String)>,
    /// Bytes of body gtlsclient saved.
    pub body_len: u64,
    body_path: Option<PathBuf>,
    /// The process output.
    pub output: Finished,
    _download: tempfile::TempDir,
}

impl H3Response {
    /// The saved body (reads the whole file: for small responses).
    pub fn body(&self) -> anyhow::Result<Vec<u8>> {
        match &self.body_path {
            Some(path) => {
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))
            }
            None => Ok(Vec::new()),
        }
    }

    /// The saved body as text.
    pub fn text(&self) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&self.body()?).into_owned())
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request with `gtlsclient` to edge's QUIC listener; the body is saved to a
/// tempdir (`--download`), `extra` adds options (e.g. `-m POST`, `--data=FILE`).
///
/// `verbose` keeps gtlsclient's log, the only place it prints the status and
/// headers, minus frame and body dumps; without it `-q` silences everything, as
/// the per-packet log of a 1 GiB transfer would run to gigabytes.
///
/// gtlsclient has no option to name a CA: it goes on when verification fails, so
/// these tests do not check the handshake's trust, only HTTP/3 behaviour.
pub async fn gtlsclient(
    edge: &Edge,
    path: &str,
    extra: &[String],
    verbose: bool,
    timeout: Duration,
) -> anyhow::Result<H3Response> {
    let download = tempfile::tempdir_in(edge.dir.path())?;
    let port = edge.h3_addr.port().to_string();
    let mut args: Vec<String> = vec![
        "--exit-on-all-streams-close".to_owned(),
        format!("--timeout={}s", timeout.as_secs()),
        "--sni=localhost".to_owned(),
        format!("--download={}", download.path().display()),
    ];
    if verbose {
        args.extend(["--no-quic-dump".to_owned(), "--no-http-dump".to_owned()]);
    } else {
        args.push("-q".to_owned());
    }
    args.extend(extra.iter().cloned());
    args.push(edge.h3_addr.ip().to_string());
    args.push(port.clone());
    args.push(format!("https://localhost:{port}{path}"));
    let output = process::run("gtlsclient", &args, timeout + Duration::from_secs(5)).await?;
    output.ensure_success(&format!("gtlsclient {}", args.join(" ")))?;
    let (status, headers) = parse_gtlsclient_headers(&output.stderr);
    let body_path = std::fs::read_dir(download.path())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .next();
    let body_len = match &body_path {
        Some(path) => std::fs::metadata(path)?.len(),
        None => 0,
    };
    Ok(H3Response {
        status,
        headers,
        body_len,
        body_path,
        output,
        _download: download,
    })
}

/// Response headers from gtlsclient's log: `http: stream 0x0 [name: value]` lines.
fn parse_gtlsclient_headers(log: &str) -> (Option<u16>, Vec<(String, String)>) {
    let mut status = None;
    let mut headers = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("http: stream ") else {
            continue;
        };
        let Some(inner) = rest.split_once(" [").and_then(|(_, h)| h.strip_suffix(']')) else {
            continue;
        };
        let Some((name, value)) = inner.split_once(": ") else {
            continue;
        };
        if name == ":status" {
            status = value.parse().ok();
        } else if !name.starts_with(':') {
            headers.push((name.to_ascii_lowercase(), value.to_owned()));
        }
    }
    (status, headers)
}

/// A slow reader (`slowhttptest -X` style): a 4 KiB receive buffer, a GET of
/// `path`, and nothing read after.
pub async fn slow_reader(to: SocketAddr, path: &str) -> anyhow::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(to).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: edge.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

/// Absolute path of a script in `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// Runs `python3 tests/py/NAME args` and parses the JSON object on its last line.
pub async fn python_json<S: AsRef<str>>(
    name: &str,
    args: &[S],
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let mut full = vec![py_script(name).to_string_lossy().into_owned()];
    full.extend(args.iter().map(|a| a.as_ref().to_owned()));
    let python = process::python();
    let out = process::run(&python.to_string_lossy(), &full, timeout).await?;
    out.ensure_success(&format!("python3 {name}"))?;
    let last = out.stdout.lines().last().unwrap_or("");
    serde_json::from_str(last).with_context(|| {
        format!(
            "python3 {name} printed no JSON line:\n{}\n{}",
            out.stdout, out.stderr
        )
    })
}

/// Runs `tests/py/h3_requests.py` against edge: the requests of `spec`, one after
/// the other on one QUIC connection (aioquic), trusting the test CA.
pub async fn h3_requests(
    edge: &Edge,
    spec: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    run_h3_requests(edge, spec, &[]).await
}

/// Like [`h3_requests`], but the client sends `server_name` as SNI (and
/// `:authority`), checks the certificate only when `verify` is set, and reports it:
/// `{"peer_certificate": {"subject", "dns_names"}, "results": [...]}`.
pub async fn h3_requests_sni(
    edge: &Edge,
    server_name: &str,
    verify: bool,
    spec: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut extra = vec!["--server-name", server_name, "--peer-cert"];
    if !verify {
        extra.push("--insecure");
    }
    run_h3_requests(edge, spec, &extra).await
}

/// Like [`h3_requests`], presenting `client` as the client certificate (mTLS).
pub async fn h3_requests_as(
    edge: &Edge,
    client: &crate::LeafFiles,
    spec: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let cert = client.cert.to_string_lossy();
    let key = client.key.to_string_lossy();
    run_h3_requests(edge, spec, &["--client-cert", &cert, "--client-key", &key]).await
}

/// Like [`h3_requests`], with further `h3_requests.py` arguments (session
/// tickets and 0-RTT: `--session-out`, `--session-in`, `--early`, `--hold-finished`).
pub async fn h3_requests_with(
    edge: &Edge,
    spec: &serde_json::Value,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    run_h3_requests(edge, spec, extra).await
}

/// Like [`h3_requests`], with TLS session resumption: `session_in` offers the
/// session saved there, `session_out` saves the one the server gives. Answers
/// whether the session resumed, and each request's status.
pub async fn h3_requests_resuming(
    edge: &Edge,
    spec: &serde_json::Value,
    session_in: Option<&std::path::Path>,
    session_out: Option<&std::path::Path>,
) -> anyhow::Result<(bool, Vec<u64>)> {
    let mut extra = Vec::new();
    let (inp, out) = (
        session_in.map(|p| p.to_string_lossy().into_owned()),
        session_out.map(|p| p.to_string_lossy().into_owned()),
    );
    if let Some(p) = &inp {
        extra.extend(["--session-in", p.as_str()]);
    }
    if let Some(p) = &out {
        extra.extend(["--session-out", p.as_str()]);
    }
    anyhow::ensure!(!extra.is_empty(), "resuming needs a session file in or out");
    let got = run_h3_requests(edge, spec, &extra).await?;
    let resumed = got["handshake"]["session_resumed"]
        .as_bool()
        .ok_or_else(|| anyhow::anyhow!("no handshake.session_resumed in {got}"))?;
    let statuses = got["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["status"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    Ok((resumed, statuses))
}

/// `h3_requests.py` at edge's HTTP/3 address with the test CA, `spec` and `extra`.
async fn run_h3_requests(
    edge: &Edge,
    spec: &serde_json::Value,
    extra: &[&str],
) -> anyhow::Result<serde_json::Value> {
    python_json(
        "h3_requests.py",
        &h3_args(edge, spec, extra),
        PYTHON_TIMEOUT,
    )
    .await
}

fn h3_args(edge: &Edge, spec: &serde_json::Value, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--ca".into(),
        edge.pki.ca_cert.to_string_lossy().into_owned(),
        "--host".into(),
        edge.h3_addr.ip().to_string(),
        "--port".into(),
        edge.h3_addr.port().to_string(),
        "--spec".into(),
        spec.to_string(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// `tests/py/h3_requests.py --print-heads` against edge, read as it prints:
/// a line per response head as it arrives, then the results.
pub fn h3_requests_streaming(edge: &Edge, spec: &serde_json::Value) -> anyhow::Result<Streaming> {
    let mut args = vec![py_script("h3_requests.py").to_string_lossy().into_owned()];
    args.extend(h3_args(edge, spec, &["--print-heads"]));
    Streaming::spawn(&process::python().to_string_lossy(), &args)
}

/// A client whose standard output is read line by line as it comes, so a test
/// can act between one thing the client saw and the next (e.g. release an
/// origin's final response once a 103 arrived); killed on drop.
pub struct Streaming {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    name: String,
}

impl Streaming {
    pub fn spawn<S: AsRef<str>>(program: &str, args: &[S]) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(program)
            .args(args.iter().map(AsRef::as_ref))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        use tokio::io::AsyncBufReadExt as _;
        Ok(Self {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
            name: program.to_owned(),
        })
    }

    /// The lines printed up to and including the first one `done` accepts,
    /// within [`REQUEST_TIMEOUT`]; an error if the output ends first.
    pub async fn until(&mut self, done: impl Fn(&str) -> bool) -> anyhow::Result<Vec<String>> {
        let mut seen = Vec::new();
        let read = async {
            while let Some(line) = self.lines.next_line().await? {
                let last = done(&line);
                seen.push(line);
                if last {
                    return anyhow::Ok(true);
                }
            }
            Ok(false)
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
            Ok(Ok(true)) => Ok(seen),
            Ok(Ok(false)) => bail!("{} ended before the awaited line: {seen:?}", self.name),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!(
                "{} printed no awaited line within {REQUEST_TIMEOUT:?}: {seen:?}",
                self.name
            ),
        }
    }

    /// Every line still to come, once the client exits (within [`REQUEST_TIMEOUT`]).
    pub async fn rest(mut self) -> anyhow::Result<Vec<String>> {
        let mut seen = Vec::new();
        let read = async {
            while let Some(line) = self.lines.next_line().await? {
                seen.push(line);
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(REQUEST_TIMEOUT, read)
            .await
            .with_context(|| format!("{} did not finish: {seen:?}", self.name))??;
        let status = tokio::time::timeout(REQUEST_TIMEOUT, self.child.wait()).await??;
        anyhow::ensure!(
            status.success(),
            "{} failed ({status}): {seen:?}",
            self.name
        );
        Ok(seen)
    }
}

/// `openssl s_client` to `addr` over TLS 1.3 (SNI `localhost`, trusting `ca`)
/// with `extra` arguments (`-sess_out F`, `-sess_in F -early_data F`); what it
/// sends after the handshake is the file `stdin`. It stays until the server
/// closes (`-ign_eof`): a request should say `Connection: close`. Returns what
/// it printed (session details, "Early data was accepted", the response).
pub async fn s_client(
    addr: SocketAddr,
    ca: &Path,
    extra: &[&str],
    stdin: &Path,
) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg("exec openssl s_client \"$@\" < \"$S_CLIENT_STDIN\"")
        .arg("s_client")
        .args(["-connect", &addr.to_string(), "-servername", "localhost"])
        .args(["-tls1_3", "-ign_eof", "-CAfile"])
        .arg(ca)
        .args(extra)
        .env("S_CLIENT_STDIN", stdin);
    let out = process::run_command(command, REQUEST_TIMEOUT).await?;
    out.ensure_success("openssl s_client")?;
    Ok(out.stdout)
}

/// Bound on one Python client script.
pub const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `request` as-is over TCP and returns what comes back until the response
/// is complete (by Content-Length), the peer closes, or 10 s pass.
pub async fn raw_http(addr: SocketAddr, request: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            received.extend_from_slice(&buf[..n]);
            if response_complete(&received) {
                break;
            }
        }
        anyhow::Ok(String::from_utf8_lossy(&received).into_owned())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => bail!("no complete response from {addr} within {REQUEST_TIMEOUT:?}"),
    }
}

fn response_complete(received: &[u8]) -> bool {
    let text = String::from_utf8_lossy(received);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end]
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    match length {
        Some(length) => received.len() >= end + 4 + length,
        // Without a length the body runs to close (or is chunked): read until EOF.
        None => false,
    }
}

/// A server script of `tests/py/` (`NAME serve`) that prints `{"port": N}` on
/// its first line once listening on loopback; killed on drop.
pub struct PyServer {
    child: tokio::process::Child,
    name: &'static str,
    pub port: u16,
}

impl PyServer {
    pub async fn start(name: &'static str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        use tokio::io::AsyncBufReadExt as _;
        let mut child = tokio::process::Command::new(process::python())
            .arg(py_script(name))
            .arg("serve")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name} serve"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .with_context(|| format!("{name} printed no port within 20 s"))??;
        let port = serde_json::from_str::<serde_json::Value>(&line)
            .with_context(|| format!("{name} said {line:?}"))?["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .context("no port")?;
        Ok(Self { child, name, port })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        if let Err(e) = self.child.start_kill() {
            eprintln!("killing {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gtlsclient_response_headers_not_request_ones() {
        let log = "http: stream 0x0 submit request headers\n[:method: GET]\n[:path: /x]\n\
                   http: stream 0x0 response headers started\n\
                   http: stream 0x0 [:status: 431]\n\
                   http: stream 0x0 [x-request-id: abc]\n\
                   http: stream 0x0 headers ended\n";
        let (status, headers) = parse_gtlsclient_headers(log);
        assert_eq!(status, Some(431));
        assert_eq!(headers, [("x-request-id".to_owned(), "abc".to_owned())]);
    }

    #[test]
    fn parses_the_last_curl_header_block() {
        let dump =
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: b\r\nVia: 1.1 edge\r\n\r\n";
        assert_eq!(
            parse_header_block(dump),
            [
                ("x-a".to_owned(), "b".to_owned()),
                ("via".to_owned(), "1.1 edge".to_owned())
            ]
        );
    }
}

//! An HTTP/1.1 origin that records the exact bytes it receives and answers
//! every request with a fixed `200 raw`: the ground truth of what edge sent,
//! below any HTTP library's parsing (for smuggling and header tests).
//!
//! It frames requests itself (Content-Length or chunked, as edge should have
//! sent them) only to know when to answer; the record is the raw bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nraw";

/// The recording origin; stops when dropped.
pub struct RawOrigin {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl RawOrigin {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, log.clone()));
            }
        });
        Ok(Self {
            addr,
            received,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, for a pool's endpoints.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every byte received so far, on all connections, in arrival order.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Forgets what was received (between cases of a table).
    pub fn clear(&self) {
        if let Ok(mut r) = self.received.lock() {
            r.clear();
        }
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, log: Arc<Mutex<Vec<u8>>>) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        while let Some(end) = request_end(&pending) {
            pending.drain(..end);
            if stream.write_all(RESPONSE).await.is_err() {
                return;
            }
        }
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Ok(mut r) = log.lock() {
            r.extend_from_slice(&buf[..n]);
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Where the first complete request in `b` ends, if it is complete.
fn request_end(b: &[u8]) -> Option<usize> {
    let head = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&b[..head]).to_ascii_lowercase();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    if field("transfer-encoding:").is_some_and(|v| v.ends_with("chunked")) {
        return chunked_end(b, head);
    }
    let length: usize = field("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (b.len() >= head + length).then_some(head + length)
}

/// The end of a chunked body starting at `at` (trailers included).
fn chunked_end(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let line_end = at + b[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&b[at..line_end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim().to_owned();
        let size = usize::from_str_radix(&size_text, 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailers, then an empty line.
            let rest = &b[at..];
            if rest.starts_with(b"\r\n") {
                return Some(at + 2);
            }
            return rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| at + p + 4);
        }
        if b.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

//! The access log: one line per request, JSON or text, written by a thread of
//! its own so a request only formats its line and hands it over (a full queue
//! drops the line and counts it, it never blocks a request). The file is
//! reopened on SIGUSR1 (after logrotate moved it); stdout is the default.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::Body;
use crate::config::AccessFormat;

use upstream::BoxError;

/// Lines waiting for the writer at most; past it, lines are dropped (counted).
const QUEUE: usize = 65_536;
/// The writer flushes at least this often while lines come.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Where lines go, shared by every request and kept across reloads.
pub struct AccessLog {
    format: AccessFormat,
    tx: SyncSender<String>,
    reopen: Arc<AtomicBool>,
    dropped: prometheus::IntCounter,
}

/// One request's line, filled in as the phases learn things; written when the
/// response body has been sent (or abandoned).
#[derive(Default)]
pub struct Record {
    pub started: Option<SystemTime>,
    pub request_id: String,
    pub client: String,
    pub protocol: &'static str,
    pub tls: bool,
    pub method: String,
    pub host: String,
    pub path: String,
    pub user_agent: String,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Request head to response head.
    pub head_ms: f64,
    /// Request head to the response's last byte.
    pub duration_ms: f64,
    pub pool: String,
    pub endpoint: String,
    pub region: String,
    pub tries: u32,
    pub cache: String,
    /// The sticky decision (`kept`, `moved`, ...), when the pool is sticky.
    pub sticky: &'static str,
    /// The rate limit rule that refused the request, when one did.
    pub limited: String,
    /// Edge's own error kind, when the answer is edge's error page.
    pub error: &'static str,
    /// The response ended before all of it was sent (client gone, upstream cut).
    pub incomplete: bool,
}

impl AccessLog {
    /// Starts the writer thread for `file` (stdout when `None`).
    pub fn start(
        format: AccessFormat,
        file: Option<PathBuf>,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, String> {
        let dropped = prometheus::IntCounter::new(
            "proxy_access_log_dropped_total",
            "Access log lines dropped because the writer fell behind (queue full).",
        )
        .map_err(|e| e.to_string())?;
        registry
            .register(Box::new(dropped.clone()))
            .map_err(|e| e.to_string())?;
        let mut out = open(file.as_ref())?;
        let (tx, rx) = sync_channel::<String>(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&reopen);
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || loop {
                let got = rx.recv_timeout(FLUSH_EVERY);
                // Before the line: one that arrived after SIGUSR1 goes to the new file.
                if flag.swap(false, Ordering::AcqRel) {
                    let _ = out.flush();
                    match open(file.as_ref()) {
                        Ok(o) => out = o,
                        Err(e) => tracing::error!("access log: {e}; writing to the old file"),
                    }
                }
                match got {
                    Ok(line) => {
                        let _ = out.write_all(line.as_bytes());
                        // Whatever else is queued goes in the same write-out.
                        while let Ok(line) = rx.try_recv() {
                            let _ = out.write_all(line.as_bytes());
                        }
                        let _ = out.flush();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        let _ = out.flush();
                        return;
                    }
                }
            })
            .map_err(|e| format!("access log thread: {e}"))?;
        Ok(Arc::new(Self {
            format,
            tx,
            reopen,
            dropped,
        }))
    }

    /// Reopens the file before the next line (SIGUSR1).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Formats and queues one line.
    pub fn write(&self, r: &Record) {
        let line = match self.format {
            AccessFormat::Json => json(r),
            AccessFormat::Text => text(r),
            AccessFormat::Off => return,
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

type Sink = Box<dyn std::io::Write + Send>;

fn open(file: Option<&PathBuf>) -> Result<Sink, String> {
    Ok(match file {
        None => Box::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        )),
        Some(path) => Box::new(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        )),
    })
}

/// RFC 3339 in UTC with milliseconds.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `s` as the inside of a JSON string.
fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

fn json(r: &Record) -> String {
    let mut o = String::with_capacity(512);
    o.push('{');
    let mut first = true;
    let mut key = |o: &mut String, k: &str| {
        if !first {
            o.push(',');
        }
        first = false;
        o.push('"');
        o.push_str(k);
        o.push_str("\":");
    };
    let mut s = |o: &mut String, k: &str, v: &str| {
        key(o, k);
        o.push('"');
        escape_into(o, v);
        o.push('"');
    };
    s(
        &mut o,
        "time",
        &timestamp(r.started.unwrap_or_else(SystemTime::now)),
    );
    s(&mut o, "request_id", &r.request_id);
    s(&mut o, "client", &r.client);
    s(&mut o, "protocol", r.protocol);
    s(&mut o, "tls", if r.tls { "yes" } else { "no" });
    s(&mut o, "method", &r.method);
    s(&mut o, "host", &r.host);
    s(&mut o, "path", &r.path);
    s(&mut o, "user_agent", &r.user_agent);
    s(&mut o, "pool", &r.pool);
    s(&mut o, "endpoint", &r.endpoint);
    s(&mut o, "region", &r.region);
    s(&mut o, "cache", &r.cache);
    s(&mut o, "sticky", r.sticky);
    s(&mut o, "limited", &r.limited);
    s(&mut o, "error", r.error);
    let mut n = |o: &mut String, k: &str, v: &dyn std::fmt::Display| {
        key(o, k);
        let _ = write!(o, "{v}");
    };
    n(&mut o, "status", &r.status);
    n(&mut o, "request_bytes", &r.request_bytes);
    n(&mut o, "response_bytes", &r.response_bytes);
    n(&mut o, "head_ms", &format_args!("{:.3}", r.head_ms));
    n(&mut o, "duration_ms", &format_args!("{:.3}", r.duration_ms));
    n(&mut o, "tries", &r.tries);
    n(&mut o, "incomplete", &r.incomplete);
    o.push_str("}\n");
    o
}

/// nginx's combined format, then `key=value` pairs for what edge adds.
fn text(r: &Record) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    let quoted = |s: &str| {
        let mut o = String::with_capacity(s.len() + 2);
        o.push('"');
        escape_into(&mut o, s);
        o.push('"');
        o
    };
    let request = quoted(&format!("{} {} {}", r.method, r.path, r.protocol));
    let ua = quoted(&r.user_agent);
    let host = quoted(&r.host);
    format!(
        "{client} - - [{time}] {request} {status} {bytes} {host} {ua} id={id} req_bytes={rb} head_ms={head:.3} ms={ms:.3} pool={pool} endpoint={endpoint} region={region} tries={tries} cache={cache} sticky={sticky} limited={limited} error={error} tls={tls}{incomplete}\n",
        client = dash(&r.client),
        time = timestamp(r.started.unwrap_or_else(SystemTime::now)),
        status = r.status,
        bytes = r.response_bytes,
        id = dash(&r.request_id),
        rb = r.request_bytes,
        head = r.head_ms,
        ms = r.duration_ms,
        pool = dash(&r.pool),
        endpoint = dash(&r.endpoint),
        region = dash(&r.region),
        tries = r.tries,
        cache = dash(&r.cache.replace(' ', "")),
        sticky = dash(r.sticky),
        limited = dash(&r.limited),
        error = dash(r.error),
        tls = if r.tls { "yes" } else { "no" },
        incomplete = if r.incomplete { " incomplete" } else { "" },
    )
}

/// A response body that writes its request's line when it has been sent (or
/// dropped unfinished: the client went away, the upstream cut it).
pub struct Logged {
    inner: Body,
    record: Option<Record>,
    sink: Arc<AccessLog>,
    started: std::time::Instant,
    request_bytes: Option<Arc<AtomicU64>>,
}

impl Logged {
    pub fn new(
        inner: Body,
        record: Record,
        sink: Arc<AccessLog>,
        started: std::time::Instant,
        request_bytes: Option<Arc<AtomicU64>>,
    ) -> Self {
        Self {
            inner,
            record: Some(record),
            sink,
            started,
            request_bytes,
        }
    }

    fn finish(&mut self, complete: bool) {
        if let Some(mut r) = self.record.take() {
            r.duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
            r.incomplete = !complete;
            if let Some(c) = &self.request_bytes {
                r.request_bytes = c.load(Ordering::Relaxed);
            }
            self.sink.write(&r);
        }
    }
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(r)) = (frame.data_ref(), this.record.as_mut()) {
                    r.response_bytes += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(true);
                }
            }
            Poll::Ready(None) => this.finish(true),
            Poll::Ready(Some(Err(_))) => this.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_256_000_123);
        assert_eq!(timestamp(t), "2026-12-03T00:00:00.123Z");
        assert_eq!(
            timestamp(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
        // A leap day.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_hostile_path_cannot_break_the_json_line() {
        let r = Record {
            path: "/a\"b\\c\nd\u{1}".to_owned(),
            user_agent: "x\r\ny".to_owned(),
            status: 200,
            ..Record::default()
        };
        let line = json(&r);
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        assert!(line.contains(r#""path":"/a\"b\\c\nd\u0001""#), "{line}");
        assert!(line.contains(r#""user_agent":"x\r\ny""#), "{line}");
        let text = text(&r);
        assert_eq!(text.matches('\n').count(), 1, "{text}");
    }
}

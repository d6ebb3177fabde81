//! The access log: one line per request, JSON or text, written by a thread of
//! its own so a request only formats its line and hands it over (a full queue
//! drops the line and counts it, it never blocks a request). The file is
//! reopened on SIGUSR1 (after logrotate moved it); stdout is the default.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::Body;
use crate::config::AccessFormat;
use crate::text::{push_2, push_hex32, push_int, push_ip, push_ms3};

use upstream::BoxError;

/// Bytes of lines waiting for the writer at most; past it, lines are dropped
/// (counted) rather than held.
const MAX_PENDING: usize = 8 << 20;
/// The writer wakes this often and writes out whatever came meanwhile: requests
/// never wake it (no syscall per line), and a line is out within this long.
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// Where lines go, shared by every request and kept across reloads.
pub struct AccessLog {
    format: AccessFormat,
    pending: Arc<Mutex<Vec<u8>>>,
    reopen: Arc<AtomicBool>,
    dropped: prometheus::IntCounter,
    /// Bytes queued and bytes written so far, for `settle` at exit.
    queued: AtomicU64,
    written: Arc<AtomicU64>,
}

/// One request's line, filled in as the phases learn things; written when the
/// response body has been sent (or abandoned). Header values are kept as they
/// came (cheap clones), formatted only when the line is written.
#[derive(Default)]
pub struct Record {
    pub started: Option<SystemTime>,
    pub request_id: Option<HeaderValue>,
    /// The W3C trace id (continued from the client's `traceparent` or new).
    pub trace_id: Option<u128>,
    pub client: Option<IpAddr>,
    pub protocol: &'static str,
    pub tls: bool,
    pub method: http::Method,
    pub uri: http::Uri,
    /// The Host header, when the URI has no authority (HTTP/1.1).
    pub host: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Request head to response head, µs (logged as ms with three decimals).
    pub head_us: u64,
    /// Request head to the response's last byte, µs.
    pub duration_us: u64,
    pub pool: String,
    pub endpoint: Option<Arc<str>>,
    pub region: String,
    pub tries: u32,
    pub cache: Option<HeaderValue>,
    /// The sticky decision (`kept`, `moved`, ...), when the pool is sticky.
    pub sticky: &'static str,
    /// The rate limit rule that refused the request, when one did.
    pub limited: String,
    /// Edge's own error kind, when the answer is edge's error page.
    pub error: &'static str,
    /// The response ended before all of it was sent (client gone, upstream cut).
    pub incomplete: bool,
}

thread_local! {
    /// Each thread formats its lines here (no allocation per line once warm).
    static SCRATCH: std::cell::RefCell<String> = std::cell::RefCell::new(String::with_capacity(1024));
    /// The last second this thread stamped, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
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
            "Access log lines dropped because the writer fell behind (8 MiB pending).",
        )
        .map_err(|e| e.to_string())?;
        registry
            .register(Box::new(dropped.clone()))
            .map_err(|e| e.to_string())?;
        let mut out = open(file.as_ref())?;
        let pending = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
        let reopen = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (queue, flag, done) = (
            Arc::clone(&pending),
            Arc::clone(&reopen),
            Arc::clone(&written),
        );
        std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || {
                let mut batch = Vec::with_capacity(64 * 1024);
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    // Before the batch: lines that came after SIGUSR1 go to the new file.
                    if flag.swap(false, Ordering::AcqRel) {
                        let _ = out.flush();
                        match open(file.as_ref()) {
                            Ok(o) => out = o,
                            Err(e) => tracing::error!("access log: {e}; writing to the old file"),
                        }
                    }
                    std::mem::swap(&mut *lock(&queue), &mut batch);
                    if !batch.is_empty() {
                        let _ = out.write_all(&batch);
                        let _ = out.flush();
                        done.fetch_add(batch.len() as u64, Ordering::Release);
                        batch.clear();
                    }
                    // Only this thread and the log hold the queue: the log is gone.
                    if Arc::strong_count(&queue) == 1 {
                        return;
                    }
                }
            })
            .map_err(|e| format!("access log thread: {e}"))?;
        Ok(Arc::new(Self {
            format,
            pending,
            reopen,
            dropped,
            queued: AtomicU64::new(0),
            written,
        }))
    }

    /// Waits (at most `within`) until every line queued so far is written: at
    /// exit, so the last requests' lines are not lost.
    pub async fn settle(&self, within: Duration) {
        let target = self.queued.load(Ordering::Acquire);
        let end = tokio::time::Instant::now() + within;
        while self.written.load(Ordering::Acquire) < target && tokio::time::Instant::now() < end {
            tokio::time::sleep(FLUSH_EVERY / 2).await;
        }
    }

    /// Reopens the file before the next lines (SIGUSR1).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Formats one line and queues it for the writer.
    pub fn write(&self, r: &Record) {
        if self.format == AccessFormat::Off {
            return;
        }
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            match self.format {
                AccessFormat::Json => json(line, r),
                _ => text(line, r),
            }
            let mut pending = lock(&self.pending);
            if pending.len() + line.len() > MAX_PENDING {
                drop(pending);
                self.dropped.inc();
                return;
            }
            pending.extend_from_slice(line.as_bytes());
            self.queued.fetch_add(line.len() as u64, Ordering::Release);
        });
    }
}

/// `d` in whole microseconds, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Sink = Box<dyn std::io::Write + Send>;

fn open(file: Option<&PathBuf>) -> Result<Sink, String> {
    Ok(match file {
        None => Box::new(std::io::stdout()),
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
    })
}

/// Appends `t` as RFC 3339 in UTC with milliseconds. The date and time of
/// day are formatted once per second per thread; a line adds the milliseconds.
fn push_timestamp(out: &mut String, t: SystemTime) {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            *cached = secs;
            text.clear();
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, dd) = civil_from_days(i64::try_from(days).unwrap_or(0));
            let y = u32::try_from(y).unwrap_or(0);
            push_2(text, y / 100);
            push_2(text, y % 100);
            for (sep, n) in [('-', m), ('-', dd)] {
                text.push(sep);
                push_2(text, n);
            }
            let rem = u32::try_from(rem).unwrap_or(0);
            for (sep, n) in [('T', rem / 3600), (':', rem / 60 % 60), (':', rem % 60)] {
                text.push(sep);
                push_2(text, n);
            }
        }
        out.push_str(text);
    });
    out.push('.');
    let ms = d.subsec_millis();
    out.push(char::from(b'0' + (ms / 100) as u8));
    push_2(out, ms % 100);
    out.push('Z');
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

/// Header bytes as the inside of a JSON string: visible ASCII as is, anything
/// else (obs-text included) as `\u00XX` of the byte.
fn escape_bytes_into(out: &mut String, b: &[u8]) {
    // Most values need no escape at all: copied whole.
    if b.iter()
        .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    {
        if let Ok(s) = std::str::from_utf8(b) {
            out.push_str(s);
            return;
        }
    }
    match std::str::from_utf8(b) {
        Ok(s) if s.is_ascii() => escape_into(out, s),
        _ => {
            for &c in b {
                if c.is_ascii() {
                    escape_into(out, char::from(c).encode_utf8(&mut [0; 4]));
                } else {
                    let _ = write!(out, "\\u{:04x}", c);
                }
            }
        }
    }
}

fn value(v: Option<&HeaderValue>) -> &[u8] {
    v.map_or(&[], HeaderValue::as_bytes)
}

/// The host the request named: its URI's authority, else its Host header.
fn host(r: &Record) -> &[u8] {
    match r.uri.authority() {
        Some(a) => a.as_str().as_bytes(),
        None => value(r.host.as_ref()),
    }
}

fn path(r: &Record) -> &str {
    r.uri.path_and_query().map_or("", |p| p.as_str())
}

/// `key` (with its separators) and `v` in decimal.
fn int(o: &mut String, key: &str, v: u64) {
    o.push_str(key);
    push_int(o, v);
}

/// `key` and `us` as milliseconds with three decimals.
fn ms(o: &mut String, key: &str, us: u64) {
    o.push_str(key);
    push_ms3(o, us);
}

fn json(o: &mut String, r: &Record) {
    let started = r.started.unwrap_or_else(SystemTime::now);
    o.push_str("{\"time\":\"");
    push_timestamp(o, started);
    let s = |o: &mut String, k: &str, v: &[u8]| {
        o.push_str("\",\"");
        o.push_str(k);
        o.push_str("\":\"");
        escape_bytes_into(o, v);
    };
    s(o, "request_id", value(r.request_id.as_ref()));
    o.push_str("\",\"trace_id\":\"");
    if let Some(t) = r.trace_id {
        push_hex32(o, t);
    }
    o.push_str("\",\"client\":\"");
    if let Some(c) = r.client {
        push_ip(o, c);
    }
    s(o, "protocol", r.protocol.as_bytes());
    s(o, "tls", if r.tls { b"yes" } else { b"no" });
    s(o, "method", r.method.as_str().as_bytes());
    s(o, "host", host(r));
    s(o, "path", path(r).as_bytes());
    s(o, "user_agent", value(r.user_agent.as_ref()));
    s(o, "pool", r.pool.as_bytes());
    s(
        o,
        "endpoint",
        r.endpoint.as_deref().unwrap_or("").as_bytes(),
    );
    s(o, "region", r.region.as_bytes());
    s(o, "cache", value(r.cache.as_ref()));
    s(o, "sticky", r.sticky.as_bytes());
    s(o, "limited", r.limited.as_bytes());
    s(o, "error", r.error.as_bytes());
    int(o, "\",\"status\":", r.status.into());
    int(o, ",\"request_bytes\":", r.request_bytes);
    int(o, ",\"response_bytes\":", r.response_bytes);
    ms(o, ",\"head_ms\":", r.head_us);
    ms(o, ",\"duration_ms\":", r.duration_us);
    int(o, ",\"tries\":", r.tries.into());
    o.push_str(if r.incomplete {
        ",\"incomplete\":true}\n"
    } else {
        ",\"incomplete\":false}\n"
    });
}

/// nginx's combined format, then `key=value` pairs for what edge adds.
fn text(o: &mut String, r: &Record) {
    let started = r.started.unwrap_or_else(SystemTime::now);
    let dash = |o: &mut String, v: &[u8]| {
        if v.is_empty() {
            o.push('-');
        } else if !v.contains(&b' ') {
            escape_bytes_into(o, v);
        } else {
            // Escaped like JSON, so a value cannot split the line or a field.
            escape_bytes_into(
                o,
                &v.iter()
                    .map(|&b| if b == b' ' { b'_' } else { b })
                    .collect::<Vec<u8>>(),
            );
        }
    };
    match r.client {
        Some(c) => push_ip(o, c),
        None => o.push('-'),
    }
    o.push_str(" - - [");
    push_timestamp(o, started);
    o.push_str("] \"");
    o.push_str(r.method.as_str());
    o.push(' ');
    escape_bytes_into(o, path(r).as_bytes());
    o.push(' ');
    o.push_str(r.protocol);
    int(o, "\" ", r.status.into());
    int(o, " ", r.response_bytes);
    o.push_str(" \"");
    escape_bytes_into(o, host(r));
    o.push_str("\" \"");
    escape_bytes_into(o, value(r.user_agent.as_ref()));
    o.push_str("\" id=");
    dash(o, value(r.request_id.as_ref()));
    match r.trace_id {
        Some(t) => {
            o.push_str(" trace=");
            push_hex32(o, t);
        }
        None => o.push_str(" trace=-"),
    }
    int(o, " req_bytes=", r.request_bytes);
    ms(o, " head_ms=", r.head_us);
    ms(o, " ms=", r.duration_us);
    int(o, " tries=", r.tries.into());
    o.push_str(if r.tls {
        " tls=yes pool="
    } else {
        " tls=no pool="
    });
    dash(o, r.pool.as_bytes());
    o.push_str(" endpoint=");
    dash(o, r.endpoint.as_deref().unwrap_or("").as_bytes());
    o.push_str(" region=");
    dash(o, r.region.as_bytes());
    o.push_str(" cache=");
    dash(o, value(r.cache.as_ref()));
    o.push_str(" sticky=");
    dash(o, r.sticky.as_bytes());
    o.push_str(" limited=");
    dash(o, r.limited.as_bytes());
    o.push_str(" error=");
    dash(o, r.error.as_bytes());
    if r.incomplete {
        o.push_str(" incomplete");
    }
    o.push('\n');
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
            r.duration_us = micros(self.started.elapsed());
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

    fn stamp(t: SystemTime) -> String {
        let mut out = String::new();
        push_timestamp(&mut out, t);
        out
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_256_000_123);
        assert_eq!(stamp(t), "2026-12-03T00:00:00.123Z");
        // The same second again (the thread's cached date) and the next one.
        assert_eq!(
            stamp(t + Duration::from_millis(870)),
            "2026-12-03T00:00:00.993Z"
        );
        assert_eq!(
            stamp(t + Duration::from_millis(3_599_877)),
            "2026-12-03T01:00:00.000Z"
        );
        assert_eq!(stamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day, and the last millisecond of a year.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(stamp(t), "2000-02-29T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_798_761_599_999);
        assert_eq!(stamp(t), "2026-12-31T23:59:59.999Z");
    }

    /// A record with every field set, as the phases fill it in.
    fn full() -> Record {
        Record {
            started: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_256_000_123)),
            request_id: Some(HeaderValue::from_static("r-1")),
            trace_id: Some(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c),
            client: Some("192.0.2.7".parse().expect("ip")),
            protocol: "HTTP/2",
            tls: true,
            method: http::Method::POST,
            uri: "https://example.com/a/b?c=d".parse().expect("uri"),
            host: None,
            user_agent: Some(HeaderValue::from_static("curl/8.5.0")),
            status: 201,
            request_bytes: 12,
            response_bytes: 3_456,
            head_us: 1_005,
            duration_us: 23_050,
            pool: "api".to_owned(),
            endpoint: Some("10.0.0.2:8080".into()),
            region: "eu".to_owned(),
            tries: 2,
            cache: Some(HeaderValue::from_static("edge; fwd=miss")),
            sticky: "kept",
            limited: String::new(),
            error: "",
            incomplete: false,
        }
    }

    #[test]
    fn every_field_is_written_in_its_place() {
        let mut line = String::new();
        json(&mut line, &full());
        assert_eq!(
            line,
            concat!(
                r#"{"time":"2026-12-03T00:00:00.123Z","request_id":"r-1","#,
                r#""trace_id":"0af7651916cd43dd8448eb211c80319c","client":"192.0.2.7","#,
                r#""protocol":"HTTP/2","tls":"yes","method":"POST","host":"example.com","#,
                r#""path":"/a/b?c=d","user_agent":"curl/8.5.0","pool":"api","#,
                r#""endpoint":"10.0.0.2:8080","region":"eu","cache":"edge; fwd=miss","#,
                r#""sticky":"kept","limited":"","error":"","status":201,"request_bytes":12,"#,
                r#""response_bytes":3456,"head_ms":1.005,"duration_ms":23.050,"tries":2,"#,
                r#""incomplete":false}"#,
                "\n"
            )
        );
        let mut t = String::new();
        text(
            &mut t,
            &Record {
                incomplete: true,
                ..full()
            },
        );
        assert_eq!(
            t,
            concat!(
                r#"192.0.2.7 - - [2026-12-03T00:00:00.123Z] "POST /a/b?c=d HTTP/2" 201 3456 "#,
                r#""example.com" "curl/8.5.0" id=r-1 trace=0af7651916cd43dd8448eb211c80319c "#,
                "req_bytes=12 head_ms=1.005 ms=23.050 tries=2 tls=yes pool=api ",
                "endpoint=10.0.0.2:8080 region=eu cache=edge;_fwd=miss sticky=kept ",
                "limited=- error=- incomplete\n"
            )
        );
    }

    #[test]
    fn a_hostile_value_cannot_break_the_line() {
        let r = Record {
            uri: "/a%22b?q=x".parse().expect("uri"),
            user_agent: Some(HeaderValue::from_bytes(b"x\" \\ \t\xffy").expect("value")),
            status: 200,
            ..Record::default()
        };
        let mut line = String::new();
        json(&mut line, &r);
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        assert!(
            line.contains(r#""user_agent":"x\" \\ \t\u00ffy""#),
            "{line}"
        );
        let mut t = String::new();
        text(&mut t, &r);
        assert_eq!(t.matches('\n').count(), 1, "{t}");
        assert!(t.contains(r#""x\" \\ \t\u00ffy""#), "{t}");
    }
}

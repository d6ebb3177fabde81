//! The one error type of the request path, and the one place errors become responses.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::body::{Body, BodyError};
use crate::wire::REQUEST_ID;

/// What went wrong, as far as the client's answer is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed (bad framing, no or conflicting Host).
    BadRequest,
    /// The request's host is not served on this connection (SNI/Host mismatch).
    MisdirectedRequest,
    /// No route matches the host and path.
    NoRoute,
    /// The request body is larger than allowed.
    BodyTooLarge,
    /// The request's header section is larger than allowed.
    HeadersTooLarge,
    /// No connection could be opened to the backend.
    UpstreamConnect,
    /// The backend reset or broke the exchange.
    UpstreamFailed,
    /// The backend did not answer in time.
    UpstreamTimeout,
    /// The pool has no endpoint able to take the request (none, all down, breaker open).
    NoHealthyEndpoint,
    /// A bug or resource failure inside the edge.
    Internal,
    /// The client stopped sending its request body (idle, or below the minimum rate).
    RequestTimeout,
    /// The client went away (or reset its stream) before its request was done;
    /// the answer is never seen, the status is for logs and metrics (nginx's 499).
    ClientClosed,
    /// Edge itself is out of resources or shedding load (file descriptors,
    /// connection caps, requests in flight): no backend is at fault.
    Overloaded,
    /// The route needs a verified client certificate and the connection has none.
    ClientCertRequired,
    /// An unsafe method arrived in TLS early data, which an attacker can
    /// replay: the client is to send it again after the handshake (RFC 8470 5.2).
    TooEarly,
}

/// nginx's "client closed request": logged and counted, never sent.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// Whose fault an error is: for logs, metrics and alerting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

impl Side {
    /// Label for metrics and logs: `client`, `upstream` or `local` (edge's own).
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
            Side::Internal => "local",
        }
    }
}

impl ErrorKind {
    /// The status a client receives. Exhaustive on purpose: a new kind must choose.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorKind::UpstreamConnect => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::NoHealthyEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::ClientClosed => CLIENT_CLOSED_REQUEST,
            ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ClientCertRequired => StatusCode::FORBIDDEN,
            ErrorKind::TooEarly => StatusCode::TOO_EARLY,
        }
    }

    pub fn side(self) -> Side {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::MisdirectedRequest
            | ErrorKind::NoRoute
            | ErrorKind::BodyTooLarge
            | ErrorKind::HeadersTooLarge
            | ErrorKind::RequestTimeout
            | ErrorKind::ClientClosed
            | ErrorKind::ClientCertRequired
            | ErrorKind::TooEarly => Side::Client,
            ErrorKind::UpstreamConnect
            | ErrorKind::UpstreamFailed
            | ErrorKind::UpstreamTimeout
            | ErrorKind::NoHealthyEndpoint => Side::Upstream,
            ErrorKind::Internal | ErrorKind::Overloaded => Side::Internal,
        }
    }

    /// What happened, in words a client may read.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad request",
            ErrorKind::MisdirectedRequest => "this host is not served on this connection",
            ErrorKind::NoRoute => "no route for this host and path",
            ErrorKind::BodyTooLarge => "request body too large",
            ErrorKind::HeadersTooLarge => "request header section too large",
            ErrorKind::UpstreamConnect => "cannot connect to the backend",
            ErrorKind::UpstreamFailed => "the backend broke off the exchange",
            ErrorKind::UpstreamTimeout => "the backend did not answer in time",
            ErrorKind::NoHealthyEndpoint => "no backend available",
            ErrorKind::Internal => "internal error",
            ErrorKind::RequestTimeout => "request body not received in time",
            ErrorKind::ClientClosed => "client closed the request",
            ErrorKind::Overloaded => "edge is overloaded",
            ErrorKind::ClientCertRequired => "a client certificate is required",
            ErrorKind::TooEarly => "send this request again after the TLS handshake",
        }
    }

    /// Short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::MisdirectedRequest => "misdirected_request",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamFailed => "upstream_failed",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::NoHealthyEndpoint => "no_healthy_endpoint",
            ErrorKind::Internal => "internal",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::ClientClosed => "client_closed",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::ClientCertRequired => "client_cert_required",
            ErrorKind::TooEarly => "too_early",
        }
    }
}

/// A failed request: its kind, whether another try may succeed, and the cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProxyError {
    pub kind: ErrorKind,
    /// Safe to try again elsewhere (nothing reached a backend, or the method is idempotent).
    pub retryable: bool,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProxyError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            retryable: false,
            message: message.into(),
            source: None,
        }
    }

    pub fn side(&self) -> Side {
        self.kind.side()
    }

    /// The message shown to the client: the kind's own words, never backend internals.
    pub fn public_message(&self) -> &str {
        match self.kind.side() {
            Side::Client => &self.message,
            Side::Upstream | Side::Internal => self.kind.describe(),
        }
    }

    /// The small text page a client gets, carrying the request id and the
    /// W3C trace id.
    pub fn to_response(&self, request_id: &HeaderValue, trace_id: &str) -> Response<Body> {
        let status = self.kind.status();
        let text = format!(
            "{} {}: {}\nrequest id: {}\ntrace id: {trace_id}\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            self.public_message(),
            String::from_utf8_lossy(request_id.as_bytes()),
        );
        let mut resp = Response::new(Body::full(Bytes::from(text)));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(REQUEST_ID, request_id.clone());
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl ErrorKind {
    /// The gRPC status a gRPC client gets for this error (its codes, not HTTP's:
    /// grpc-go and grpcio retry on UNAVAILABLE, and read DEADLINE_EXCEEDED as a
    /// timeout). Exhaustive, like `status`.
    pub fn grpc_status(self) -> u8 {
        const CANCELLED: u8 = 1;
        const DEADLINE_EXCEEDED: u8 = 4;
        const RESOURCE_EXHAUSTED: u8 = GRPC_RESOURCE_EXHAUSTED;
        const PERMISSION_DENIED: u8 = 7;
        const UNIMPLEMENTED: u8 = 12;
        const INTERNAL: u8 = 13;
        const UNAVAILABLE: u8 = 14;
        match self {
            ErrorKind::BadRequest | ErrorKind::Internal => INTERNAL,
            ErrorKind::NoRoute => UNIMPLEMENTED,
            ErrorKind::BodyTooLarge | ErrorKind::HeadersTooLarge => RESOURCE_EXHAUSTED,
            ErrorKind::UpstreamTimeout | ErrorKind::RequestTimeout => DEADLINE_EXCEEDED,
            ErrorKind::ClientClosed => CANCELLED,
            ErrorKind::ClientCertRequired => PERMISSION_DENIED,
            ErrorKind::MisdirectedRequest
            | ErrorKind::UpstreamConnect
            | ErrorKind::UpstreamFailed
            | ErrorKind::NoHealthyEndpoint
            | ErrorKind::Overloaded
            | ErrorKind::TooEarly => UNAVAILABLE,
        }
    }
}

/// Whether a request is gRPC (`content-type: application/grpc` or `+proto`, ...).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim_start();
            v.len() >= 16
                && v.as_bytes()[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(v.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2): printable ASCII but `%` as is.
fn grpc_message(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("edge error"))
}

impl ProxyError {
    /// For a gRPC client: a trailers-only answer (HTTP 200, no body, the status
    /// in `grpc-status` and `grpc-message`), which every gRPC library reads as
    /// the call's status, where a text page would be a protocol error to it.
    pub fn to_grpc_response(&self, request_id: &HeaderValue) -> Response<Body> {
        let message = format!(
            "{} (edge, request id {})",
            self.public_message(),
            String::from_utf8_lossy(request_id.as_bytes())
        );
        let mut resp = grpc_trailers_only(self.kind.grpc_status(), &message);
        resp.headers_mut().insert(REQUEST_ID, request_id.clone());
        resp
    }
}

/// gRPC's RESOURCE_EXHAUSTED, for a rate limit's refusal.
pub const GRPC_RESOURCE_EXHAUSTED: u8 = 8;

/// A trailers-only gRPC answer: HTTP 200, no body, `grpc-status` and
/// `grpc-message` in the one HEADERS frame that ends the stream.
pub fn grpc_trailers_only(code: u8, message: &str) -> Response<Body> {
    // Empty, not an empty DATA frame: the HEADERS frame must end the stream.
    let mut resp = Response::new(Body::Empty);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(u16::from(code)));
    h.insert("grpc-message", grpc_message(message));
    resp
}

impl From<upstream::Error> for ProxyError {
    fn from(e: upstream::Error) -> Self {
        let kind = match &e {
            upstream::Error::Connect { .. }
            | upstream::Error::ConnectTimeout { .. }
            | upstream::Error::Tls { .. }
            | upstream::Error::Handshake { .. } => ErrorKind::UpstreamConnect,
            upstream::Error::Timeout { .. } | upstream::Error::Deadline { .. } => {
                ErrorKind::UpstreamTimeout
            }
            upstream::Error::Request { .. } | upstream::Error::Status { .. } => {
                ErrorKind::UpstreamFailed
            }
            upstream::Error::NoEndpoints { .. } => ErrorKind::NoHealthyEndpoint,
            upstream::Error::Overloaded { .. }
            | upstream::Error::TooManyConnects { .. }
            | upstream::Error::LocalResource { .. }
            | upstream::Error::QueueTimeout { .. }
            | upstream::Error::QueueFull { .. } => ErrorKind::Overloaded,
            upstream::Error::ClientBody { source, .. } => client_body_kind(source.as_ref()),
        };
        // The message is the kind's; the upstream error, kept as the source, says
        // which endpoint and why (logs print the chain).
        Self {
            kind,
            retryable: e.is_connect(),
            message: kind.describe().to_owned(),
            source: Some(Box::new(e)),
        }
    }
}

/// What a failed request body says about the client: a limit edge enforces, bad
/// framing (a malformed chunk: hyper reports invalid input), or else the client
/// went away (EOF before the end, a reset stream).
fn client_body_kind(e: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(limit) = e.downcast_ref::<BodyError>() {
            return match limit {
                BodyError::TooLarge { .. } => ErrorKind::BodyTooLarge,
                BodyError::Idle { .. } | BodyError::TooSlow { .. } => ErrorKind::RequestTimeout,
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            ) {
                return ErrorKind::BadRequest;
            }
        }
        next = e.source();
    }
    ErrorKind::ClientClosed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the kind -> status table: changing a client-visible status is a decision.
    #[test]
    fn grpc_errors_are_trailers_only_with_mapped_status() {
        let id = HeaderValue::from_static("req-1");
        let e = ProxyError::new(ErrorKind::NoHealthyEndpoint, "pool web: all down");
        let resp = e.to_grpc_response(&id);
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(
            h["grpc-message"],
            "no backend available (edge, request id req-1)"
        );
        assert_eq!(ErrorKind::UpstreamTimeout.grpc_status(), 4);
        assert_eq!(ErrorKind::BodyTooLarge.grpc_status(), 8);
        assert_eq!(ErrorKind::UpstreamConnect.grpc_status(), 14);
        assert_eq!(grpc_message("50% é"), "50%25 %C3%A9");
        let ct = |v: &'static str| {
            let mut m = http::HeaderMap::new();
            m.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            is_grpc(&m)
        };
        assert!(ct("application/grpc") && ct("application/grpc+proto"));
        assert!(!ct("application/grpc-web") && !ct("application/json"));
    }

    #[test]
    fn every_kind_has_its_status() {
        let table = [
            (ErrorKind::BadRequest, 400, Side::Client),
            (ErrorKind::MisdirectedRequest, 421, Side::Client),
            (ErrorKind::NoRoute, 404, Side::Client),
            (ErrorKind::BodyTooLarge, 413, Side::Client),
            (ErrorKind::HeadersTooLarge, 431, Side::Client),
            (ErrorKind::UpstreamConnect, 502, Side::Upstream),
            (ErrorKind::UpstreamFailed, 502, Side::Upstream),
            (ErrorKind::UpstreamTimeout, 504, Side::Upstream),
            (ErrorKind::NoHealthyEndpoint, 503, Side::Upstream),
            (ErrorKind::Internal, 500, Side::Internal),
            (ErrorKind::RequestTimeout, 408, Side::Client),
            (ErrorKind::ClientClosed, 499, Side::Client),
            (ErrorKind::Overloaded, 503, Side::Internal),
            (ErrorKind::ClientCertRequired, 403, Side::Client),
            (ErrorKind::TooEarly, 425, Side::Client),
        ];
        for (kind, status, side) in table {
            assert_eq!(kind.status().as_u16(), status, "{kind:?}");
            assert_eq!(kind.side(), side, "{kind:?}");
        }
    }

    #[test]
    fn error_page_names_the_request_id_and_hides_upstream_details() {
        let id = HeaderValue::from_static("abc-123");
        let err = ProxyError::new(
            ErrorKind::UpstreamConnect,
            "connect to http://10.1.2.3:80 failed",
        );
        let resp = err.to_response(&id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()[REQUEST_ID], "abc-123");
        let Body::Full(Some(text)) = resp.body() else {
            panic!("error pages have a full body");
        };
        let text = std::str::from_utf8(text).expect("utf-8");
        assert!(text.contains("abc-123"), "{text}");
        assert!(!text.contains("10.1.2.3"), "{text}");
    }

    #[test]
    fn body_failures_are_the_clients() {
        let body = |source: upstream::BoxError| {
            ProxyError::from(upstream::Error::ClientBody {
                endpoint: "http://10.0.0.1:80".to_owned(),
                source,
            })
        };
        let cases: [(upstream::BoxError, ErrorKind); 5] = [
            (
                Box::new(BodyError::TooLarge { limit: 1 }),
                ErrorKind::BodyTooLarge,
            ),
            (
                Box::new(BodyError::Idle {
                    after: std::time::Duration::from_secs(1),
                }),
                ErrorKind::RequestTimeout,
            ),
            (
                Box::new(BodyError::TooSlow { rate: 1 }),
                ErrorKind::RequestTimeout,
            ),
            (
                Box::new(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "invalid chunk size: overflow",
                )),
                ErrorKind::BadRequest,
            ),
            (
                Box::new(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                ErrorKind::ClientClosed,
            ),
        ];
        for (source, kind) in cases {
            let e = body(source);
            assert_eq!(e.kind, kind);
            assert_eq!(e.side(), Side::Client);
            assert!(!e.retryable);
        }
        let emfile = ProxyError::from(upstream::Error::LocalResource {
            endpoint: "http://10.0.0.1:80".to_owned(),
            source: std::io::Error::from_raw_os_error(24),
        });
        assert_eq!(
            (emfile.kind, emfile.side()),
            (ErrorKind::Overloaded, Side::Internal)
        );
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let id = HeaderValue::from_static("x");
        let resp = ProxyError::new(ErrorKind::NoHealthyEndpoint, "none")
            .to_response(&id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
    }
}

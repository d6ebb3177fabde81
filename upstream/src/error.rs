use std::time::Duration;

/// Why a request to a pool failed. Each variant names the endpoint it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection to the endpoint could not be opened.
    #[error("connect to {endpoint} failed")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// Opening the connection (TCP and TLS) took longer than the connect timeout.
    #[error("connect to {endpoint} timed out after {after:?}")]
    ConnectTimeout { endpoint: String, after: Duration },
    /// The TLS handshake with the endpoint failed.
    #[error("TLS handshake with {endpoint} failed")]
    Tls {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/1.1 or HTTP/2 handshake on a new connection failed.
    #[error("HTTP handshake with {endpoint} failed")]
    Handshake {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
    /// The endpoint did not send response headers within the response timeout.
    #[error("{endpoint} sent no response within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    /// The request failed after it was handed to a connection (reset, protocol error).
    #[error("request to {endpoint} failed")]
    Request {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
    /// The pool has no endpoint able to take the request (none, or every breaker open).
    #[error("pool {pool} has no available endpoint")]
    NoEndpoints { pool: String },
    /// The pool already has `limit` connects under way (a connect storm is shed,
    /// not queued).
    #[error("not connecting to {endpoint}: the pool has {limit} connects under way")]
    TooManyConnects { endpoint: String, limit: usize },
    /// The request's overall deadline passed, across all its tries.
    #[error("no response within the {after:?} request deadline")]
    Deadline { after: Duration },
    /// The pool already has `limit` requests in flight.
    #[error("pool {pool} is at its limit of {limit} requests in flight")]
    Overloaded { pool: String, limit: usize },
    /// The endpoint answered with a status configured as worth another try.
    #[error("{endpoint} answered {status}")]
    Status {
        endpoint: String,
        status: http::StatusCode,
    },
}

impl Error {
    /// True when the failure happened while opening a connection: nothing was sent.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::ConnectTimeout { .. }
                | Error::Tls { .. }
                | Error::Handshake { .. }
        )
    }
}

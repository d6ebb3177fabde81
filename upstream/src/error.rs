use std::time::Duration;

use crate::BoxError;

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
        /// hyper's error over HTTP/1.1 and HTTP/2, h3's over HTTP/3.
        #[source]
        source: BoxError,
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
    /// Reading the request body from the client failed while it was sent to the
    /// endpoint (client gone, bad framing, a body limit): the client's fault.
    #[error("the client's request body to {endpoint} failed")]
    ClientBody {
        endpoint: String,
        #[source]
        source: BoxError,
    },
    /// This process ran out of a resource (file descriptors, socket buffers,
    /// memory, local ports) while connecting: neither the endpoint's fault nor
    /// the client's.
    #[error("no local resources to connect to {endpoint}")]
    LocalResource {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    /// The endpoint is at its HTTP/1.1 connection cap and none came free in time.
    #[error("{endpoint} is at its limit of {limit} connections; none came free within {after:?}")]
    QueueTimeout {
        endpoint: String,
        limit: usize,
        after: Duration,
    },
    /// The endpoint is at its HTTP/1.1 connection cap and its wait queue is full.
    #[error(
        "{endpoint} is at its limit of {limit} connections and {queued} requests wait already"
    )]
    QueueFull {
        endpoint: String,
        limit: usize,
        queued: usize,
    },
}

/// Whose fault a failure is. Only [`Blame::Upstream`] failures feed breakers,
/// outlier ejection and the retry budget, and only they are tried again elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The client: its request body broke off, was malformed or broke a limit.
    Client,
    /// The endpoint (or the network to it).
    Upstream,
    /// This process: out of file descriptors or memory, or shedding load.
    Local,
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

    /// Whose fault the failure is.
    pub fn blame(&self) -> Blame {
        match self {
            Error::ClientBody { .. } => Blame::Client,
            Error::LocalResource { .. }
            | Error::TooManyConnects { .. }
            | Error::Overloaded { .. }
            | Error::QueueTimeout { .. }
            | Error::QueueFull { .. } => Blame::Local,
            Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::Tls { .. }
            | Error::Handshake { .. }
            | Error::Timeout { .. }
            | Error::Request { .. }
            | Error::NoEndpoints { .. }
            | Error::Deadline { .. }
            | Error::Status { .. } => Blame::Upstream,
        }
    }
}

/// Errors of the local machine rather than the peer: out of file descriptors
/// (EMFILE, ENFILE), socket buffers (ENOBUFS), memory (ENOMEM) or local ports
/// (EADDRNOTAVAIL).
pub(crate) fn is_local_resource(e: &std::io::Error) -> bool {
    const ENOMEM: i32 = 12;
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    const EADDRNOTAVAIL: i32 = 99;
    const ENOBUFS: i32 = 105;
    matches!(
        e.raw_os_error(),
        Some(ENOMEM | ENFILE | EMFILE | EADDRNOTAVAIL | ENOBUFS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_exhaustion_is_local() {
        for errno in [12, 23, 24, 99, 105] {
            assert!(is_local_resource(&std::io::Error::from_raw_os_error(errno)));
        }
        // Refused or unreachable: the endpoint (or its network).
        for errno in [111, 113, 110] {
            assert!(!is_local_resource(&std::io::Error::from_raw_os_error(
                errno
            )));
        }
    }
}

//! PROXY protocol (v1 text, v2 binary) ahead of TLS or HTTP on the TCP
//! listeners: a trusted load balancer names the client it accepted, and that
//! address becomes the connection's peer for everything after (forwarding
//! headers, geo, hashing, limits, the access log). Parsing is the `ppp` crate's;
//! this module decides whom to believe and bounds the read in time and size.
//!
//! From a peer outside `proxy_protocol.trusted` a header is a spoofing attempt:
//! the connection is closed and counted, never served.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::ProxyProtocol;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_PREFIX: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// A v1 line is at most 107 bytes with its CRLF (the spec's bound).
const V1_MAX: usize = 107;
/// A v2 header's fixed part: signature, version/command, family, length.
const V2_FIXED: usize = 16;

/// What the first bytes of a connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    V1,
    V2,
    /// Anything else: a TLS ClientHello, an HTTP request, an h2 preface.
    Other,
    /// A prefix of a PROXY signature so far: more bytes decide.
    Undecided,
}

fn classify(bytes: &[u8]) -> Start {
    let is_prefix = |sig: &[u8]| {
        let n = bytes.len().min(sig.len());
        bytes[..n] == sig[..n]
    };
    if bytes.len() >= V1_PREFIX.len() && bytes.starts_with(V1_PREFIX) {
        Start::V1
    } else if bytes.len() >= V2_PREFIX.len() && bytes.starts_with(V2_PREFIX) {
        Start::V2
    } else if is_prefix(V1_PREFIX) || is_prefix(V2_PREFIX) {
        Start::Undecided
    } else {
        Start::Other
    }
}

/// Why a connection is closed before it is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// A PROXY header from a peer that is not trusted.
    Untrusted,
    /// A trusted peer sent none, and `required` is set.
    Missing,
    Invalid,
    TooLarge,
    Timeout,
    /// The peer closed (or reset) before deciding: nothing to count.
    Closed,
}

impl Refused {
    /// The metric label; `None` for a close that is not a PROXY protocol matter.
    pub(super) fn label(self) -> Option<&'static str> {
        match self {
            Self::Untrusted => Some("untrusted"),
            Self::Missing => Some("missing"),
            Self::Invalid => Some("invalid"),
            Self::TooLarge => Some("too_large"),
            Self::Timeout => Some("timeout"),
            Self::Closed => None,
        }
    }
}

/// What a connection's PROXY header said about its client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Accepted {
    /// No header (none was due): the peer is the client.
    None,
    /// A header naming the client; `label` is the metric's result.
    Client { ip: IpAddr, label: &'static str },
    /// A header that names no client (v1 UNKNOWN, v2 LOCAL, a Unix socket):
    /// the load balancer's own connection, such as a health check.
    Local,
}

/// Reads the PROXY header, if the config asks for one from this peer, off the
/// front of `stream`, leaving the bytes after it for TLS or HTTP. Bounded by
/// `timeout` from now and by `max_header_bytes`.
pub(super) async fn read(
    stream: &mut TcpStream,
    peer: IpAddr,
    config: &ProxyProtocol,
    timeout: Duration,
) -> Result<Accepted, Refused> {
    let deadline = Instant::now() + timeout;
    let trusted = config.trusts(peer);
    let start = match tokio::time::timeout_at(deadline, sniff(stream)).await {
        Ok(start) => start?,
        // A silent client that claims to be no load balancer is merely idle.
        Err(_) if !trusted => return Err(Refused::Closed),
        Err(_) => return Err(Refused::Timeout),
    };
    match (trusted, start) {
        (false, Start::V1 | Start::V2) => Err(Refused::Untrusted),
        (true, Start::Other) if config.required => Err(Refused::Missing),
        (_, Start::Other | Start::Undecided) => Ok(Accepted::None),
        (true, Start::V1) => within(deadline, read_v1(stream)).await,
        (true, Start::V2) => within(deadline, read_v2(stream, config.max_header_bytes)).await,
    }
}

async fn within<F>(deadline: Instant, read: F) -> Result<Accepted, Refused>
where
    F: std::future::Future<Output = Result<Accepted, Refused>>,
{
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or(Err(Refused::Timeout))
}

/// Peeks until the first bytes tell a PROXY header from anything else. Data a
/// peek saw stays readable, so this polls briefly while a prefix is pending
/// (a few bytes at most: the longest signature is 12).
async fn sniff(stream: &TcpStream) -> Result<Start, Refused> {
    let mut buf = [0u8; 12];
    loop {
        let n = stream.peek(&mut buf).await.map_err(|_| Refused::Closed)?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        match classify(&buf[..n]) {
            Start::Undecided => tokio::time::sleep(Duration::from_millis(5)).await,
            decided => return Ok(decided),
        }
    }
}

/// Reads the v1 line byte by byte, so nothing after its CRLF is consumed.
async fn read_v1(stream: &mut TcpStream) -> Result<Accepted, Refused> {
    let mut line = Vec::with_capacity(V1_MAX);
    while !line.ends_with(b"\r\n") {
        if line.len() == V1_MAX {
            return Err(Refused::TooLarge);
        }
        let byte = stream.read_u8().await.map_err(|_| Refused::Closed)?;
        line.push(byte);
    }
    parse_v1(&line)
}

fn parse_v1(line: &[u8]) -> Result<Accepted, Refused> {
    let header = ppp::v1::Header::try_from(line).map_err(|_| Refused::Invalid)?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Accepted::Client {
            ip: a.source_address.into(),
            label: "v1",
        },
        ppp::v1::Addresses::Tcp6(a) => Accepted::Client {
            ip: a.source_address.into(),
            label: "v1",
        },
        ppp::v1::Addresses::Unknown => Accepted::Local,
    })
}

async fn read_v2(stream: &mut TcpStream, max: usize) -> Result<Accepted, Refused> {
    let mut header = vec![0u8; V2_FIXED];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|_| Refused::Closed)?;
    let len = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if V2_FIXED + len > max {
        return Err(Refused::TooLarge);
    }
    header.resize(V2_FIXED + len, 0);
    stream
        .read_exact(&mut header[V2_FIXED..])
        .await
        .map_err(|_| Refused::Closed)?;
    parse_v2(&header)
}

fn parse_v2(bytes: &[u8]) -> Result<Accepted, Refused> {
    use ppp::v2::{Addresses, Command};
    let header = ppp::v2::Header::try_from(bytes).map_err(|_| Refused::Invalid)?;
    // TLVs are not used, but a malformed list means a broken sender.
    if header.tlvs().any(|t| t.is_err()) {
        return Err(Refused::Invalid);
    }
    Ok(match (header.command, header.addresses) {
        (Command::Proxy, Addresses::IPv4(a)) => Accepted::Client {
            ip: a.source_address.into(),
            label: "v2",
        },
        (Command::Proxy, Addresses::IPv6(a)) => Accepted::Client {
            ip: a.source_address.into(),
            label: "v2",
        },
        (Command::Local, _) | (_, Addresses::Unspecified | Addresses::Unix(_)) => Accepted::Local,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_tells_headers_from_tls_and_http() {
        assert_eq!(classify(b"PROXY TCP4"), Start::V1);
        assert_eq!(classify(V2_PREFIX), Start::V2);
        assert_eq!(classify(b"PRO"), Start::Undecided);
        assert_eq!(classify(b"\r\n\r\n"), Start::Undecided);
        assert_eq!(classify(b"POST / HTTP/1.1"), Start::Other);
        assert_eq!(classify(b"PRI * HTTP/2.0"), Start::Other);
        assert_eq!(classify(&[0x16, 3, 1]), Start::Other);
        assert_eq!(classify(b"\r\nGET"), Start::Other);
    }

    #[test]
    fn v1_names_the_source() -> Result<(), Box<dyn std::error::Error>> {
        let got = parse_v1(b"PROXY TCP6 2001:db8::7 ::1 4000 443\r\n");
        let ip: IpAddr = "2001:db8::7".parse()?;
        assert_eq!(got, Ok(Accepted::Client { ip, label: "v1" }));
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(Accepted::Local));
        assert_eq!(parse_v1(b"PROXY TCP4 nope\r\n"), Err(Refused::Invalid));
        Ok(())
    }

    #[test]
    fn v2_names_the_source_and_local_does_not() -> Result<(), Box<dyn std::error::Error>> {
        let addrs: (std::net::SocketAddr, std::net::SocketAddr) =
            ("198.51.100.9:1234".parse()?, "127.0.0.1:443".parse()?);
        let proxy = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            addrs,
        )
        .write_tlv(ppp::v2::Type::Authority, b"example.com")?
        .build()?;
        let ip: IpAddr = "198.51.100.9".parse()?;
        assert_eq!(parse_v2(&proxy), Ok(Accepted::Client { ip, label: "v2" }));
        let local = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Local,
            ppp::v2::Protocol::Stream,
            addrs,
        )
        .build()?;
        assert_eq!(parse_v2(&local), Ok(Accepted::Local));
        assert_eq!(parse_v2(&proxy[..20]), Err(Refused::Invalid));
        Ok(())
    }
}

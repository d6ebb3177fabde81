use std::fmt;

use http::uri::{Authority, Scheme};
use http::Uri;

/// Where an endpoint listens: `http://host:port` (cleartext) or `https://host:port` (TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointAddr {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    authority: Authority,
}

/// Why an endpoint URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseEndpointError {
    /// Not a URI at all.
    #[error("not a URL: {0}")]
    Invalid(String),
    /// Only http:// and https:// are proxied to.
    #[error("scheme must be http or https")]
    Scheme,
    /// The URL has no host.
    #[error("missing host")]
    NoHost,
    /// A path other than `/`: pools forward the client's path unchanged.
    #[error("endpoint URLs carry no path or query (found {0:?})")]
    Path(String),
}

impl EndpointAddr {
    /// Parses `http://host[:port]` or `https://host[:port]`.
    pub fn parse(url: &str) -> Result<Self, ParseEndpointError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| ParseEndpointError::Invalid(e.to_string()))?;
        let tls = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => false,
            Some(s) if *s == Scheme::HTTPS => true,
            _ => return Err(ParseEndpointError::Scheme),
        };
        let host = uri.host().ok_or(ParseEndpointError::NoHost)?;
        if let Some(pq) = uri.path_and_query() {
            if pq.as_str() != "/" && !pq.as_str().is_empty() {
                return Err(ParseEndpointError::Path(pq.as_str().to_owned()));
            }
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let authority = authority
            .parse()
            .map_err(|e: http::uri::InvalidUri| ParseEndpointError::Invalid(e.to_string()))?;
        Ok(Self {
            tls,
            host,
            port,
            authority,
        })
    }

    /// `host:port`, as used to connect and for the upstream URI when none is given.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn scheme(&self) -> Scheme {
        if self.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_https_with_default_ports() {
        let a = EndpointAddr::parse("http://127.0.0.1:8080").expect("valid");
        assert!(!a.tls);
        assert_eq!(a.authority().as_str(), "127.0.0.1:8080");
        let b = EndpointAddr::parse("https://backend.internal").expect("valid");
        assert!(b.tls);
        assert_eq!(b.port, 443);
        assert_eq!(b.to_string(), "https://backend.internal:443");
        let c = EndpointAddr::parse("http://[::1]:81/").expect("valid");
        assert_eq!(c.host, "::1");
        assert_eq!(c.authority().as_str(), "[::1]:81");
    }

    #[test]
    fn refuses_what_cannot_be_an_endpoint() {
        assert_eq!(
            EndpointAddr::parse("ftp://x"),
            Err(ParseEndpointError::Scheme)
        );
        assert_eq!(
            EndpointAddr::parse("127.0.0.1:80"),
            Err(ParseEndpointError::Scheme)
        );
        assert!(matches!(
            EndpointAddr::parse("http://x/api"),
            Err(ParseEndpointError::Path(_))
        ));
        assert!(matches!(
            EndpointAddr::parse("http://a b"),
            Err(ParseEndpointError::Invalid(_))
        ));
    }
}

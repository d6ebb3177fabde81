//! `[tls]`: the handshake timeout, the certificates served by SNI, and client
//! certificates (mTLS) for the TCP and QUIC listeners alike.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

use super::existing_file;
use super::walk::{Cx, FromToml, Table};

/// The request header a verified client certificate goes upstream in
/// (Envoy's `x-forwarded-client-cert` format), unless told otherwise.
pub const CLIENT_CERT_HEADER: &str = "x-forwarded-client-cert";

#[derive(Clone, Debug)]
pub struct Tls {
    pub handshake_timeout: Duration,
    /// Served by SNI; the first is the default. Empty: a self-signed one is made at start.
    pub certificates: Vec<CertFiles>,
    /// Client certificates are asked for (verified against `ca`) when set.
    pub client_auth: Option<ClientAuth>,
    /// TLS 1.3 early data (0-RTT) on resumed TCP and QUIC connections: safe
    /// methods are forwarded with `Early-Data: 1`, others answered 425 (RFC 8470).
    pub early_data: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            certificates: Vec::new(),
            client_auth: None,
            early_data: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[tls.client_auth]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM bundle of the CAs a client certificate must chain to.
    pub ca: PathBuf,
    pub mode: ClientAuthMode,
    /// Carries the verified certificate upstream; edge owns it (a client's own
    /// is always removed).
    pub header: HeaderName,
}

/// `require`: no handshake without a valid client certificate. `optional`: a
/// client may present none (routes with `client_cert = "require"` then answer
/// 403), but one it presents must be valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuthMode {
    Require,
    Optional,
}

impl FromToml for ClientAuthMode {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match <String as FromToml>::from_toml(v)?.as_str() {
            "require" => Ok(Self::Require),
            "optional" => Ok(Self::Optional),
            other => Err(format!("{other:?} is not \"require\" or \"optional\"")),
        }
    }
}

pub(super) fn read_tls(cx: &mut Cx<'_>, root: &mut Table<'_>, base: &Path, d: Tls) -> Tls {
    let Some(mut t) = root.table(cx, "tls") else {
        return d;
    };
    let handshake_timeout = t.or(cx, "handshake_timeout", d.handshake_timeout);
    let early_data = t.or(cx, "early_data", d.early_data);
    let mut certificates = Vec::new();
    for mut c in t.tables(cx, "certificates") {
        let cert = existing_file(cx, &mut c, "cert", base);
        let key = existing_file(cx, &mut c, "key", base);
        if let (Some(cert), Some(key)) = (cert, key) {
            certificates.push(CertFiles { cert, key });
        }
        c.finish(cx);
    }
    let client_auth = t
        .table(cx, "client_auth")
        .and_then(|c| read_client_auth(cx, c, base));
    t.finish(cx);
    Tls {
        handshake_timeout,
        certificates,
        client_auth,
        early_data,
    }
}

fn read_client_auth(cx: &mut Cx<'_>, mut t: Table<'_>, base: &Path) -> Option<ClientAuth> {
    let ca = existing_file(cx, &mut t, "ca", base);
    let mode = t.or(cx, "mode", ClientAuthMode::Require);
    let name: String = t.or(cx, "header", CLIENT_CERT_HEADER.to_owned());
    let header = match HeaderName::from_bytes(name.as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            let line = t.line_of(cx, "header");
            cx.error(
                line,
                &t.path("header"),
                format!("{name:?} is not a header name"),
            );
            None
        }
    };
    t.finish(cx);
    Some(ClientAuth {
        ca: ca?,
        mode,
        header: header?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    const POOL: &str = "[pools.web]\nendpoints = [\"http://127.0.0.1:8081\"]\n";

    fn parse(dir: &Path, text: &str) -> Result<Config, super::super::ConfigErrors> {
        Config::parse(text, "edge.toml", Some(dir))
    }

    #[test]
    fn client_auth_is_read_with_its_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("clients.pem"), "").expect("write");
        let text = format!(
            "{POOL}\n[[routes]]\npath_prefix = \"/\"\npool = \"web\"\nrequire_client_cert = true\n\n[tls.client_auth]\nca = \"clients.pem\"\n"
        );
        let c = parse(dir.path(), &text).expect("valid");
        let auth = c.tls.client_auth.expect("client_auth");
        assert_eq!(auth.mode, ClientAuthMode::Require);
        assert_eq!(auth.header, CLIENT_CERT_HEADER);
        assert_eq!(auth.ca, dir.path().join("clients.pem"));
        assert!(c.routes[0].require_client_cert);
    }

    #[test]
    fn client_auth_mistakes_are_refused_with_key_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "{POOL}\n[[routes]]\npath_prefix = \"/\"\npool = \"web\"\nrequire_client_cert = true\n"
        );
        let e = parse(dir.path(), &text).expect_err("refused");
        let got: Vec<_> = e.errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(got, [(7, "routes[0].require_client_cert")], "{e}");
        assert!(e.errors[0].reason.contains("[tls.client_auth]"), "{e}");

        let text = format!(
            "{POOL}\n[tls.client_auth]\nca = \"missing.pem\"\nmode = \"sometimes\"\nheader = \"bad header\"\n"
        );
        let e = parse(dir.path(), &text).expect_err("refused");
        let got: Vec<_> = e.errors.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (5, "tls.client_auth.ca"),
                (6, "tls.client_auth.mode"),
                (7, "tls.client_auth.header")
            ],
            "{e}"
        );
        assert!(
            e.errors[1].reason.contains("\"require\" or \"optional\""),
            "{e}"
        );
    }
}

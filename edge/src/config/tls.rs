//! `[tls]`: the handshake timeout, the certificates served by SNI, client
//! certificates (mTLS) and the session ticket keys, for the TCP and QUIC
//! listeners alike.

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
    /// Where session ticket keys come from (`ticket_keys`).
    pub ticket_keys: TicketKeys,
    /// `ticket_rotation`: how long one key encrypts tickets (and the lifetime
    /// clients are told); edge rotates at this interval with `"redis"`.
    pub ticket_rotation: Duration,
    /// The line of `ticket_keys` (for cross-checks against `[redis]`).
    pub ticket_keys_line: usize,
}

/// The default `ticket_rotation`: a key encrypts for 12 hours and decrypts for
/// 12 more (24 h at most of a ticket's secrets behind one key).
pub const TICKET_ROTATION: Duration = Duration::from_secs(12 * 3600);
/// TLS 1.3 caps a ticket's lifetime at 7 days (RFC 8446 4.6.1).
const MAX_TICKET_ROTATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// A key file holds at most this many keys (the current one and those still
/// accepted): more is a file that is never pruned, which keeps old keys'
/// tickets decryptable forever.
const MAX_TICKET_KEYS: usize = 8;

/// `tls.ticket_keys`: where the keys that encrypt TLS session tickets come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TicketKeys {
    /// Unset: tickets under keys rustls makes in this process (rotated every
    /// 6 h; `tls::local_tickets`); a session resumes only on
    /// the edge that made it.
    Local,
    /// A file of keys, newest first: the first encrypts, every one decrypts.
    /// Read at start and on every reload.
    File { path: PathBuf, keys: Vec<TicketKey> },
    /// `"redis"`: a set in the shared Redis that one replica rotates every
    /// `ticket_rotation`, under a lock.
    Redis,
}

impl TicketKeys {
    /// What `GET /config` shows: the source, never a key.
    pub fn describe(&self) -> String {
        match self {
            Self::Local => "local".to_owned(),
            Self::File { path, .. } => path.display().to_string(),
            Self::Redis => "redis".to_owned(),
        }
    }
}

/// One 32-byte ticket key; its `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey(pub [u8; 32]);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

impl TicketKey {
    /// 64 hex digits (`openssl rand -hex 32`).
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(format!(
                "a key is 64 hex digits (32 bytes, e.g. `openssl rand -hex 32`), not {} characters",
                text.len()
            ));
        }
        let mut key = [0u8; 32];
        for (i, pair) in text.as_bytes().chunks(2).enumerate() {
            let hex = std::str::from_utf8(pair).ok();
            key[i] = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a key is 64 hex digits; this has a character that is not one")?;
        }
        if key.iter().all(|b| *b == key[0]) {
            return Err("a key of one repeated byte is not a secret".to_owned());
        }
        Ok(Self(key))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Reads a key file: one key per line (64 hex digits), newest first; blank
/// lines and `#` comments are skipped. The reason names the file's line.
fn read_ticket_keys(path: &Path) -> Result<Vec<TicketKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut keys: Vec<TicketKey> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{} line {}", path.display(), n + 1);
        let key = TicketKey::from_hex(line).map_err(|e| format!("{at}: {e}"))?;
        if keys.contains(&key) {
            return Err(format!("{at}: the same key twice"));
        }
        keys.push(key);
        if keys.len() > MAX_TICKET_KEYS {
            return Err(format!(
                "{at}: more than {MAX_TICKET_KEYS} keys (keep the current one and the few still accepted)"
            ));
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "{}: no key (one per line, 64 hex digits, newest first)",
            path.display()
        ));
    }
    Ok(keys)
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            certificates: Vec::new(),
            client_auth: None,
            early_data: false,
            ticket_keys: TicketKeys::Local,
            ticket_rotation: TICKET_ROTATION,
            ticket_keys_line: 0,
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
    let ticket_keys_line = t.line_of(cx, "ticket_keys");
    let ticket_keys = read_ticket_keys_key(cx, &mut t, base);
    let ticket_rotation = t.or(cx, "ticket_rotation", d.ticket_rotation);
    if !(Duration::from_secs(1)..=MAX_TICKET_ROTATION).contains(&ticket_rotation) {
        let line = t.line_of(cx, "ticket_rotation");
        cx.error(
            line,
            &t.path("ticket_rotation"),
            "must be between 1s and 7d (TLS 1.3 caps a ticket's lifetime at 7 days)",
        );
    }
    if t.has("ticket_rotation") && !t.has("ticket_keys") {
        let line = t.line_of(cx, "ticket_rotation");
        cx.error(
            line,
            &t.path("ticket_rotation"),
            "only with ticket_keys (a file, or \"redis\")",
        );
    }
    t.finish(cx);
    Tls {
        handshake_timeout,
        certificates,
        client_auth,
        early_data,
        ticket_keys,
        ticket_rotation,
        ticket_keys_line,
    }
}

/// `ticket_keys`: `"redis"`, or a key file (read and checked now, so a bad one
/// is refused with its line before anything starts or reloads).
fn read_ticket_keys_key(cx: &mut Cx<'_>, t: &mut Table<'_>, base: &Path) -> TicketKeys {
    let Some(value) = t.opt::<String>(cx, "ticket_keys") else {
        return TicketKeys::Local;
    };
    if value == "redis" {
        return TicketKeys::Redis;
    }
    let path = base.join(value);
    match read_ticket_keys(&path) {
        Ok(keys) => TicketKeys::File { path, keys },
        Err(reason) => {
            let line = t.line_of(cx, "ticket_keys");
            cx.error(line, &t.path("ticket_keys"), reason);
            TicketKeys::Local
        }
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

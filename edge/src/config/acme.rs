//! `[acme]`: certificates ordered from an ACME CA (RFC 8555) for a fixed list of
//! domains, answered by TLS-ALPN-01 on the TLS listener or HTTP-01 on the
//! plaintext one, stored on disk and renewed ahead of expiry.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::walk::{Cx, FromToml, Table};
use super::{existing_file, positive};

/// How the CA is shown that edge holds the names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737: a special certificate on the TLS listener for ALPN `acme-tls/1`.
    TlsAlpn01,
    /// RFC 8555 8.3: a token under `/.well-known/acme-challenge/` on plain HTTP.
    Http01,
}

impl FromToml for AcmeChallenge {
    fn from_toml(v: &toml_edit::Value) -> Result<Self, String> {
        match <String as FromToml>::from_toml(v)?.as_str() {
            "tls-alpn-01" => Ok(Self::TlsAlpn01),
            "http-01" => Ok(Self::Http01),
            other => Err(format!("{other:?} is not \"tls-alpn-01\" or \"http-01\"")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acme {
    /// The CA's directory URL (https).
    pub directory: String,
    /// Account contacts, `mailto:` URLs.
    pub contact: Vec<String>,
    /// The names on the one certificate ordered (the first is its default).
    pub domains: Vec<String>,
    pub challenge: AcmeChallenge,
    /// Where the account key and the certificate are kept across restarts.
    pub storage: PathBuf,
    /// PEM roots to trust for the directory's own TLS instead of the public ones
    /// (a private or test CA such as Pebble).
    pub ca: Option<PathBuf>,
    /// Renew when the certificate has less than this left (plus up to a tenth
    /// more of jitter, so replicas do not order at once).
    pub renew_before: Duration,
}

impl Acme {
    pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
}

pub(super) fn read_acme(
    cx: &mut Cx<'_>,
    root: &mut Table<'_>,
    base: &Path,
    state_dir: &Path,
    http_listen: bool,
) -> Option<Acme> {
    let mut t = root.table(cx, "acme")?;
    let directory = t.opt::<String>(cx, "directory").unwrap_or_default();
    if !directory.starts_with("https://") || directory.len() <= "https://".len() {
        let line = t.line_of(cx, "directory");
        let reason = if directory.is_empty() {
            "the CA's directory URL is required, like \"https://acme-v02.api.letsencrypt.org/directory\"".to_owned()
        } else {
            format!("{directory:?} is not an https:// URL")
        };
        cx.error(line, &t.path("directory"), reason);
    }
    let contact = t.or(cx, "contact", Vec::<String>::new());
    if let Some(bad) = contact.iter().find(|c| !c.starts_with("mailto:")) {
        let line = t.line_of(cx, "contact");
        let reason =
            format!("{bad:?}: a contact is a mailto: URL, like \"mailto:ops@example.com\"");
        cx.error(line, &t.path("contact"), reason);
    }
    let domains = t.or(cx, "domains", Vec::<String>::new());
    if let Some(reason) = domains_problem(&domains) {
        let line = t.line_of(cx, "domains");
        cx.error(line, &t.path("domains"), reason);
    }
    let challenge = t.or(cx, "challenge", AcmeChallenge::TlsAlpn01);
    if challenge == AcmeChallenge::Http01 && !http_listen {
        let line = t.line_of(cx, "challenge");
        let reason = "http-01 is answered on the plaintext listener: set http_listen (port 80)";
        cx.error(line, &t.path("challenge"), reason);
    }
    let storage = t
        .opt::<PathBuf>(cx, "storage")
        .map_or_else(|| state_dir.join("acme"), |p| base.join(p));
    if storage.exists() && !storage.is_dir() {
        let line = t.line_of(cx, "storage");
        let reason = format!("{} exists and is not a directory", storage.display());
        cx.error(line, &t.path("storage"), reason);
    }
    let ca = if t.line_of(cx, "ca") == t.line() {
        None
    } else {
        existing_file(cx, &mut t, "ca", base)
    };
    let renew_before = positive(cx, &mut t, "renew_before", Acme::DEFAULT_RENEW_BEFORE);
    t.finish(cx);
    Some(Acme {
        directory,
        contact,
        domains,
        challenge,
        storage,
        ca,
        renew_before,
    })
}

/// Why `domains` cannot be ordered, if it cannot.
fn domains_problem(domains: &[String]) -> Option<String> {
    if domains.is_empty() {
        return Some("at least one domain is required, like [\"example.com\"]".to_owned());
    }
    for d in domains {
        if d.starts_with("*.") {
            return Some(format!(
                "{d:?}: wildcard names need DNS-01, which edge does not answer"
            ));
        }
        let ok = rustls::pki_types::DnsName::try_from(d.as_str()).is_ok()
            && d.parse::<std::net::IpAddr>().is_err()
            && d.contains('.');
        if !ok {
            return Some(format!("{d:?} is not a DNS name"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::domains_problem;

    #[test]
    fn domains_must_be_dns_names() {
        let d =
            |s: &[&str]| domains_problem(&s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(d(&["example.com", "www.example.com"]), None);
        assert!(d(&[]).is_some());
        assert!(d(&["*.example.com"]).is_some_and(|r| r.contains("DNS-01")));
        assert!(d(&["127.0.0.1"]).is_some());
        assert!(d(&["exa mple.com"]).is_some());
        assert!(d(&["localhost"]).is_some());
    }
}

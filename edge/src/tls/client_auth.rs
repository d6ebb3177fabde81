//! Client certificates (mTLS, `[tls.client_auth]`): the verifier both the TCP
//! and the QUIC listener hand to rustls, and a verified certificate as the
//! value edge sends upstream (Envoy's `x-forwarded-client-cert` format, so
//! backends written for Envoy read it unchanged).

use std::fmt::Write as _;
use std::sync::Arc;

use http::HeaderValue;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use x509_parser::extensions::GeneralName;

use super::{load_roots, provider, TlsError};
use crate::config::{ClientAuth, ClientAuthMode};

/// Verifies client certificates against `auth.ca`. With `optional`, a client
/// may present none; one it presents must still chain to the CA.
pub fn client_verifier(auth: &ClientAuth) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_roots(&auth.ca)? {
        roots.add(cert)?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = match auth.mode {
        ClientAuthMode::Require => builder,
        ClientAuthMode::Optional => builder.allow_unauthenticated(),
    };
    Ok(builder.build()?)
}

/// The verified leaf (first of `chain`) as `Hash=<sha256 of the DER>;
/// Subject="<DN>"` followed by its `URI=` and `DNS=` names. `None` without a
/// certificate.
pub fn client_cert_value(chain: Option<&[CertificateDer<'_>]>) -> Option<HeaderValue> {
    let leaf = chain?.first()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    let mut out = String::from("Hash=");
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    // rustls verified it; should parsing still fail, the hash alone names it.
    if let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) {
        out.push_str(";Subject=");
        quoted(&mut out, &cert.subject().to_string());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                let (key, value) = match name {
                    GeneralName::URI(v) => ("URI", *v),
                    GeneralName::DNSName(v) => ("DNS", *v),
                    _ => continue,
                };
                let _ = write!(out, ";{key}=");
                quoted(&mut out, value);
            }
        }
    }
    HeaderValue::from_str(&out).ok()
}

/// `s` as an XFCC value: bare when plain, else quoted with `"` and `\`
/// escaped; anything not printable ASCII becomes `?` (a header value cannot
/// carry it, and a backend must not be handed control characters).
fn quoted(out: &mut String, s: &str) {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:/@".contains(&b));
    if plain {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, sans: &[&str]) -> CertificateDer<'static> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn names_the_leaf_by_hash_subject_and_names() {
        let leaf = cert("alice", &["alice.test"]);
        let v = client_cert_value(Some(std::slice::from_ref(&leaf))).expect("value");
        let v = v.to_str().expect("ascii");
        let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(v, format!("Hash={hex};Subject=\"CN=alice\";DNS=alice.test"));
    }

    #[test]
    fn quotes_what_could_break_the_field_and_drops_control_bytes() {
        let v = client_cert_value(Some(&[cert("a\"b;c=d\u{7}é", &[])])).expect("value");
        let v = v.to_str().expect("ascii");
        assert!(v.ends_with(r#";Subject="CN=a\"b;c=d??""#), "{v}");
    }

    #[test]
    fn nothing_without_a_certificate() {
        assert!(client_cert_value(None).is_none());
        assert!(client_cert_value(Some(&[])).is_none());
    }
}

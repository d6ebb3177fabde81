//! Certificates and the TLS configurations built on them. One resolver serves the
//! TCP listener (h1, h2) and the QUIC listener (h3): the same certificate answers
//! for a name whichever protocol the client speaks, and a reload swaps the set
//! behind it for both at once. Likewise one `Ticketer` (`tickets`) makes and
//! opens session tickets for both, when `tls.ticket_keys` is set.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::CertFiles;

mod client_auth;
mod tickets;
pub use client_auth::{client_cert_value, client_verifier};
pub use tickets::Ticketer;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A generated certificate or key could not be stored.
    #[error("cannot write {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file holds no certificate / no private key in PEM form.
    #[error("{path}: {what}")]
    Pem { path: String, what: &'static str },
    /// rustls refused the key or the configuration.
    #[error("TLS setup failed")]
    Rustls(#[from] rustls::Error),
    /// Generating the self-signed certificate failed.
    #[error("generating a self-signed certificate failed")]
    Generate(#[from] rcgen::Error),
    /// The client CA bundle cannot verify client certificates.
    #[error("client certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// One loaded set of certificates, swapped whole on reload.
struct CertSet {
    /// Counts swaps, so a connection can tell whether its handshake's set is
    /// still the one serving.
    generation: u32,
    certs: Vec<Arc<CertifiedKey>>,
    /// Each certificate's name in logs and metrics.
    names: Vec<String>,
    /// `certs[0]` is the ACME certificate, kept ahead of the files on reload.
    pinned: bool,
}

/// Picks a certificate by SNI; the first one answers when nothing matches. The
/// set behind it is swapped whole (`replace`), so new handshakes on TCP and QUIC
/// get new certificates at once while open connections keep theirs.
pub struct CertResolver {
    current: ArcSwap<CertSet>,
    /// Answers TLS-ALPN-01 (RFC 8737) handshakes while an ACME order is open.
    challenge: std::sync::OnceLock<Arc<dyn ResolvesServerCert>>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.current.load();
        write!(
            f,
            "CertResolver({} certificates, generation {})",
            set.certs.len(),
            set.generation
        )
    }
}

/// Certificates read from files (or generated), not yet serving, each with the
/// name it is known by in logs and metrics (its file).
#[derive(Clone)]
pub struct Loaded(Vec<Arc<CertifiedKey>>, Vec<String>);

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Loaded({} certificates)", self.0.len())
    }
}

impl Loaded {
    /// Reads every pair; any unreadable or mismatched file fails the whole set.
    pub fn read(files: &[CertFiles]) -> Result<Self, TlsError> {
        let certs = files
            .iter()
            .map(|f| load_pair(&f.cert, &f.key).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let names = files.iter().map(|f| f.cert.display().to_string()).collect();
        Ok(Self(certs, names))
    }

    /// One certificate and its key, from files.
    pub fn pair(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let name = cert.display().to_string();
        load_pair(cert, key).map(|c| Self(vec![Arc::new(c)], vec![name]))
    }

    /// Each certificate's name and notAfter (Unix seconds), where it parses.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        expiries(&self.0, &self.1)
    }

    /// A private key and its chain in one PEM text (as an ACME order stores
    /// them), known as `name`.
    pub fn from_pem_bundle(pem: &[u8], name: &str) -> Result<Self, TlsError> {
        let pem_err = |what| TlsError::Pem {
            path: name.to_owned(),
            what,
        };
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<_, _>>()
            .map_err(|_| pem_err("not a PEM certificate"))?;
        if chain.is_empty() {
            return Err(pem_err("no certificate found"));
        }
        let key = rustls_pemfile::private_key(&mut &pem[..])
            .map_err(|_| pem_err("not a PEM key"))?
            .ok_or_else(|| pem_err("no private key found"))?;
        let certified = CertifiedKey::new(chain, signing_key(&key)?);
        certified.keys_match()?;
        Ok(Self(vec![Arc::new(certified)], vec![name.to_owned()]))
    }

    /// Whether the first certificate is valid for every one of `names`.
    pub fn covers_all(&self, names: &[String]) -> bool {
        self.0.first().is_some_and(|c| {
            names.iter().all(|n| {
                rustls::pki_types::ServerName::try_from(n.as_str())
                    .is_ok_and(|name| valid_for(c, &name))
            })
        })
    }

    /// The first certificate's notAfter (Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        let der = self.0.first()?.end_entity_cert().ok()?;
        crate::cert_time::not_after(der)
    }

    /// A fresh self-signed certificate for `localhost` and 127.0.0.1 / ::1.
    pub fn self_signed() -> Result<Self, TlsError> {
        let names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let generated = rcgen::generate_simple_self_signed(names)?;
        let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der()).map_err(|what| {
            TlsError::Pem {
                path: "(generated)".to_owned(),
                what,
            }
        })?;
        let key = signing_key(&key)?;
        let cert = CertifiedKey::new(vec![generated.cert.der().clone()], key);
        Ok(Self(vec![Arc::new(cert)], vec!["(self-signed)".to_owned()]))
    }
}

impl CertResolver {
    pub fn new(loaded: Loaded) -> Self {
        let Loaded(certs, names) = loaded;
        Self {
            current: ArcSwap::from_pointee(CertSet {
                generation: 0,
                certs,
                names,
                pinned: false,
            }),
            challenge: std::sync::OnceLock::new(),
        }
    }

    /// Where TLS-ALPN-01 handshakes (ALPN `acme-tls/1` alone) are answered;
    /// set once, at start. Without it they get no certificate.
    pub fn answer_challenges_with(&self, challenge: Arc<dyn ResolvesServerCert>) {
        if self.challenge.set(challenge).is_err() {
            tracing::warn!("ACME challenge resolver set twice; the first is kept");
        }
    }

    /// Serves `loaded`'s certificate first (the ACME one: the default and the
    /// first match), ahead of the others, which stay; returns the new generation.
    pub fn pin_first(&self, loaded: Loaded) -> u32 {
        let old = self.current.rcu(|cur| {
            let skip = usize::from(cur.pinned);
            let mut certs = loaded.0.clone();
            let mut names = loaded.1.clone();
            certs.extend(cur.certs.iter().skip(skip).cloned());
            names.extend(cur.names.iter().skip(skip).cloned());
            CertSet {
                generation: cur.generation.wrapping_add(1),
                certs,
                names,
                pinned: true,
            }
        });
        old.generation.wrapping_add(1)
    }

    /// Each serving certificate's name and notAfter (Unix seconds).
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let set = self.current.load();
        expiries(&set.certs, &set.names)
    }

    pub fn load(files: &[CertFiles]) -> Result<Self, TlsError> {
        Loaded::read(files).map(Self::new)
    }

    /// Serves `loaded` from the next handshake on (behind a pinned ACME
    /// certificate, which stays); returns the new generation.
    pub fn replace(&self, loaded: Loaded) -> u32 {
        let old = self.current.rcu(|cur| {
            let pinned = cur.certs.first().filter(|_| cur.pinned);
            let mut certs: Vec<_> = pinned.cloned().into_iter().collect();
            let mut names: Vec<_> = cur.names.iter().take(certs.len()).cloned().collect();
            certs.extend(loaded.0.iter().cloned());
            names.extend(loaded.1.iter().cloned());
            CertSet {
                generation: cur.generation.wrapping_add(1),
                certs,
                names,
                pinned: cur.pinned,
            }
        });
        old.generation.wrapping_add(1)
    }
}

impl CertSet {
    /// The certificate answering `sni`: the first valid for the name, else the first.
    fn select(&self, sni: &str) -> Option<usize> {
        let name = DnsName::try_from(sni).ok()?.to_owned();
        let name = rustls::pki_types::ServerName::DnsName(name);
        self.certs.iter().position(|c| valid_for(c, &name))
    }

    /// Whether certificate `cert` is valid for `host` (a DNS name or an IP address).
    fn covers(&self, cert: usize, host: &str) -> bool {
        let Some(c) = self.certs.get(cert) else {
            return false;
        };
        match rustls::pki_types::ServerName::try_from(host) {
            Ok(name) => valid_for(c, &name),
            Err(_) => false,
        }
    }
}

fn expiries(certs: &[Arc<CertifiedKey>], names: &[String]) -> Vec<(String, i64)> {
    certs
        .iter()
        .zip(names)
        .filter_map(|(c, name)| {
            let der = c.end_entity_cert().ok()?;
            Some((name.clone(), crate::cert_time::not_after(der)?))
        })
        .collect()
}

fn valid_for(c: &CertifiedKey, name: &rustls::pki_types::ServerName<'_>) -> bool {
    c.end_entity_cert()
        .ok()
        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if is_acme_challenge(&hello) {
            return self.challenge.get()?.resolve(hello);
        }
        let set = self.current.load();
        let by_name = hello.server_name().and_then(|sni| set.select(sni));
        set.certs.get(by_name.unwrap_or(0)).cloned()
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737 4).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A validation handshake offers `acme-tls/1` and nothing else (RFC 8737 3).
fn is_acme_challenge(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protos| protos.next() == Some(ACME_TLS_ALPN) && protos.next().is_none())
}

/// The server name (SNI) a TLS connection asked for, as the pipeline needs it:
/// which certificate answered it, to tell whether a request's Host belongs on
/// this connection (RFC 9110 7.4: otherwise 421). Copy-sized: the resolver
/// lives as long as the process; the certificate set it refers to is named by
/// its generation, as a reload may swap it.
#[derive(Clone, Copy)]
pub struct Sni {
    certs: &'static CertResolver,
    /// The set the handshake was answered from.
    generation: u32,
    /// The certificate the handshake served (the default one when none is
    /// valid for the name).
    cert: u16,
    /// FNV-1a of the lower-case name: a Host equal to it is always in place.
    name: u64,
}

impl fmt::Debug for Sni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sni(cert {:?})", self.cert)
    }
}

impl Sni {
    pub fn new(certs: &'static CertResolver, sni: &str) -> Self {
        let set = certs.current.load();
        Self {
            certs,
            generation: set.generation,
            cert: set
                .select(sni)
                .and_then(|i| u16::try_from(i).ok())
                .unwrap_or(0),
            name: fnv1a(sni),
        }
    }

    /// Whether a request for `host` (lower case, no port) may be served on this
    /// connection: the host is the name asked for, or the certificate that
    /// answered that name is valid for it too (connection reuse, RFC 9110 4.3.3).
    /// A connection older than the serving certificates is held to its own name:
    /// the certificate it was shown is gone, so another host gets 421 and the
    /// client retries on a new connection (RFC 9110 15.5.20), which sees the new set.
    pub fn admits(&self, host: &str) -> bool {
        if fnv1a(host) == self.name {
            return true;
        }
        let set = self.certs.current.load();
        set.generation == self.generation && set.covers(usize::from(self.cert), host)
    }
}

/// Lower-cases as it hashes: SNI and Host compare without case.
fn fnv1a(s: &str) -> u64 {
    s.bytes()
        .map(|b| b.to_ascii_lowercase())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.display().to_string(),
            source,
        })
    };
    let pem_err = |p: &Path, what| TlsError::Pem {
        path: p.display().to_string(),
        what,
    };
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|_| pem_err(cert, "not a PEM certificate file"))?;
    if chain.is_empty() {
        return Err(pem_err(cert, "no certificate found"));
    }
    let key_der = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|_| pem_err(key, "not a PEM key file"))?
        .ok_or_else(|| pem_err(key, "no private key found"))?;
    let signing = signing_key(&key_der)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            pem_err(key, "private key does not match the certificate")
        }
        other => TlsError::Rustls(other),
    })?;
    Ok(certified)
}

/// Reads PEM certificates (a CA bundle) for upstream trust.
pub fn load_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem {
            path: path.display().to_string(),
            what: "not a PEM certificate file",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "no certificate found",
        });
    }
    Ok(certs)
}

/// A certificate's private key, loaded by the listeners' provider, so the
/// handshake's signature is made by it (with `aws-lc-rs`, AWS-LC's RSA and
/// ECDSA, not ring's).
fn signing_key(
    key: &rustls::pki_types::PrivateKeyDer<'_>,
) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
    provider().key_provider.load_private_key(key.clone_key())
}

/// The listeners' TLS provider: aws-lc-rs (the default `aws-lc-rs` feature,
/// see edge/Cargo.toml) or ring, its TLS 1.3 suites in edge's order, which
/// both listeners use instead of the client's (`ignore_client_order`).
///
/// OpenSSL and rustls clients list AES-256-GCM-SHA384 first, and its SHA-384
/// transcript hash and key schedule cost a full QUIC handshake 8 % more CPU
/// than AES-128-GCM-SHA256 (BENCHMARKS.md); OpenSSL lists ChaCha20 second,
/// which would cost every byte of a large response more than AES-GCM on a
/// server with AES instructions. So edge chooses: AES-128-GCM, which every
/// TLS 1.3 client implements (RFC 8446 9.1), then AES-256-GCM, ChaCha20 only
/// for clients offering neither. TLS 1.2 suites keep the provider's order.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = build_provider();
            // Stable: the TLS 1.2 suites, after these, keep their order.
            provider.cipher_suites.sort_by_key(|s| match s.suite() {
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 2,
                _ => 3,
            });
            Arc::new(provider)
        })
        .clone()
}

/// The build's provider, all its suites: aws-lc-rs or ring.
fn build_provider() -> rustls::crypto::CryptoProvider {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::default_provider();
    #[cfg(not(feature = "aws-lc-rs"))]
    rustls::crypto::ring::default_provider()
}

/// Makes the build's provider the process default, for libraries that build
/// their own rustls configs (redis's `rediss://` connections): with ring and
/// aws-lc-rs both compiled in, rustls cannot choose one itself and such a
/// config would panic. Call once at start-up; a second call changes nothing.
pub fn install_default_provider() {
    let _ = build_provider().install_default();
}

/// TLS 1.3 and 1.2 for the TCP listener, h2 preferred over http/1.1; with
/// `acme_alpn`, `acme-tls/1` too, for TLS-ALPN-01 validation (only a client
/// that offers it alone gets it: see `is_acme_challenge`).
/// `clients`: the client certificate verifier (`client_verifier`), when
/// `[tls.client_auth]` is set. `sessions`: how sessions resume.
pub fn tcp_config(
    resolver: Arc<CertResolver>,
    acme_alpn: bool,
    clients: Option<Arc<dyn ClientCertVerifier>>,
    sessions: &Sessions,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut cfg = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(resolver);
    cfg.ignore_client_order = true; // the order of `provider()`
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme_alpn {
        cfg.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    sessions.apply(&mut cfg, false)?;
    Ok(Arc::new(cfg))
}

/// How TLS 1.3 sessions resume, on both listeners.
pub enum Sessions {
    /// Stateless tickets: under the shared keys (`tls.ticket_keys`), or with
    /// `None` under [`local_tickets`].
    Tickets(Option<Arc<Ticketer>>),
    /// `tls.early_data`: single-use sessions in this process's cache, and
    /// 0-RTT accepted on them. rustls takes early data only so (never with
    /// stateless tickets, which a replayed ClientHello could use again), which
    /// is why the config refuses `ticket_keys` beside `early_data`.
    EarlyData,
}

/// Sessions the cache keeps with `tls.early_data` (two per full handshake; the
/// oldest go first): rustls's default of 256 resumed about a third of 50
/// busy clients' handshakes in the harness.
const EARLY_DATA_SESSIONS: usize = 16 * 1024;

impl Sessions {
    fn apply(&self, cfg: &mut rustls::ServerConfig, quic: bool) -> Result<(), TlsError> {
        match self {
            Self::Tickets(Some(t)) => cfg.ticketer = t.clone(),
            Self::Tickets(None) => cfg.ticketer = local_tickets()?,
            Self::EarlyData => {
                cfg.session_storage =
                    rustls::server::ServerSessionMemoryCache::new(EARLY_DATA_SESSIONS);
                allow_early_data(cfg, quic);
            }
        }
        Ok(())
    }
}

/// Session tickets without `tls.ticket_keys`: stateless tickets under keys
/// rustls makes in this process and rotates (every 6 hours, the previous one
/// still decrypting), one set for the TCP and QUIC listeners. Any number of
/// clients resume on this edge at no memory per session (rustls's default,
/// a stateful cache of 256 sessions, resumed about a third of 50 busy
/// clients' handshakes in the harness), and as with the cache no key exists
/// outside the process: a restart forgets them.
fn local_tickets() -> Result<Arc<dyn rustls::server::ProducesTickets>, TlsError> {
    static LOCAL: std::sync::OnceLock<Arc<dyn rustls::server::ProducesTickets>> =
        std::sync::OnceLock::new();
    if let Some(t) = LOCAL.get() {
        return Ok(t.clone());
    }
    let made = rustls::crypto::ring::Ticketer::new()?;
    Ok(LOCAL.get_or_init(|| made).clone())
}

/// TLS 1.3 only, ALPN h3, for QUIC. The same `sessions` as the TCP config: a
/// session from either resumes on the other.
pub fn quic_config(
    resolver: Arc<CertResolver>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
    sessions: &Sessions,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut cfg = match clients {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    }
    .with_cert_resolver(resolver);
    cfg.ignore_client_order = true; // the order of `provider()`
    cfg.alpn_protocols = vec![b"h3".to_vec()];
    sessions.apply(&mut cfg, true)?;
    Ok(cfg)
}

/// The early data a TCP client may send on a resumed TLS 1.3 connection: a
/// request head or a few, not a body (an unsafe method is refused anyway).
pub const TCP_EARLY_DATA: u32 = 16 * 1024;

/// Accepts TLS 1.3 early data (0-RTT) on resumed connections (`tls.early_data`):
/// `TCP_EARLY_DATA` bytes on TCP; on QUIC the stream limits bound it and RFC
/// 9001 4.6.1 requires the `0xffffffff` sentinel. The listeners mark what
/// arrives so (`Peer::early_data`) and the pipeline refuses unsafe methods.
///
/// rustls accepts early data only with stateful resumption (the session cache,
/// each ticket usable once: a replayed ClientHello finds it gone) and never with
/// a `ticketer` (stateless tickets): see [`Sessions::EarlyData`].
fn allow_early_data(cfg: &mut rustls::ServerConfig, quic: bool) {
    cfg.max_early_data_size = if quic { u32::MAX } else { TCP_EARLY_DATA };
}

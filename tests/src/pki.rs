//! Test-time certificates: a throwaway CA and a `localhost` leaf signed by it.
//!
//! Nothing is checked in: every test run generates fresh keys, so no test depends on
//! an expiry date or on a key that could leak into a real deployment.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// PEM files of a CA and of a leaf for `localhost`, 127.0.0.1 and ::1.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate clients are told to trust.
    pub ca_cert: PathBuf,
    /// The leaf certificate edge serves.
    pub leaf_cert: PathBuf,
    /// The leaf's private key (PKCS#8 PEM).
    pub leaf_key: PathBuf,
    /// The CA's certificate and key, kept to sign further leaves.
    ca: Arc<Ca>,
}

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PKCS#8 PEM).
    pub key: PathBuf,
}

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Ca(edge integration test CA)")
    }
}

impl Pki {
    /// Generates the CA and the leaf and writes them into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "edge integration test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let ca_cert = dir.join("ca.pem");
        write(&ca_cert, &ca.pem())?;
        let ca = Arc::new(Ca {
            cert: ca,
            key: ca_key,
        });

        let leaf = issue(
            &ca,
            dir,
            "leaf",
            &["localhost"],
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        Ok(Self {
            ca_cert,
            leaf_cert: leaf.cert,
            leaf_key: leaf.key,
            ca,
        })
    }

    /// Signs a leaf for the DNS names `names` (the first is also its common name)
    /// with this CA, written to `dir/STEM.pem` and `dir/STEM.key`.
    pub fn issue_leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> anyhow::Result<LeafFiles> {
        issue(
            &self.ca,
            dir,
            stem,
            names,
            &[],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// Signs a client certificate (mTLS) for `names` (the first is also its
    /// common name), written to `dir/STEM.pem` and `dir/STEM.key`.
    pub fn issue_client(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
    ) -> anyhow::Result<LeafFiles> {
        issue(
            &self.ca,
            dir,
            stem,
            names,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// The `localhost` leaf generated with the CA.
    pub fn leaf(&self) -> LeafFiles {
        LeafFiles {
            cert: self.leaf_cert.clone(),
            key: self.leaf_key.clone(),
        }
    }
}

fn issue(
    ca: &Ca,
    dir: &Path,
    stem: &str,
    names: &[&str],
    ips: &[IpAddr],
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<LeafFiles> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, *first);
    }
    params
        .subject_alt_names
        .extend(ips.iter().copied().map(SanType::IpAddress));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.cert, &ca.key)?;
    let files = LeafFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    };
    write(&files.cert, &cert.pem())?;
    write(&files.key, &key.serialize_pem())?;
    Ok(files)
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

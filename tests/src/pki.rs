//! Test-time certificates: a throwaway CA and a `localhost` leaf signed by it.
//!
//! Nothing is checked in: every test run generates fresh keys, so no test depends on
//! an expiry date or on a key that could leak into a real deployment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
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

        let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()])?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.subject_alt_names.extend([
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ]);
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;

        let pki = Self {
            ca_cert: dir.join("ca.pem"),
            leaf_cert: dir.join("leaf.pem"),
            leaf_key: dir.join("leaf.key"),
        };
        write(&pki.ca_cert, &ca.pem())?;
        write(&pki.leaf_cert, &leaf.pem())?;
        write(&pki.leaf_key, &leaf_key.serialize_pem())?;
        Ok(pki)
    }
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

//! The local CA for the no-certificate case: a CA and a `localhost` leaf it
//! signed, generated once into the state dir and read back on every start, so a
//! client told to trust the CA file (`curl --cacert`, a browser's trust store)
//! keeps trusting edge across restarts.
//!
//! Must not: overwrite a complete set, or leave a half-written one that a later
//! start would take for complete (the leaf certificate is written last, by rename).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::tls::{Loaded, TlsError};

/// The files under `<state_dir>/local-ca/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCa {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub leaf_cert: PathBuf,
    pub leaf_key: PathBuf,
}

impl LocalCa {
    pub fn in_state_dir(state_dir: &Path) -> Self {
        let dir = state_dir.join("local-ca");
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
            leaf_cert: dir.join("localhost.pem"),
            leaf_key: dir.join("localhost.key"),
        }
    }

    /// The stored leaf, or a new CA and leaf written first. `true` with it when
    /// they were generated now.
    pub fn load_or_create(&self) -> Result<(Loaded, bool), TlsError> {
        if self.leaf_cert.is_file() && self.ca_cert.is_file() {
            return Ok((Loaded::pair(&self.leaf_cert, &self.leaf_key)?, false));
        }
        self.generate()?;
        Ok((Loaded::pair(&self.leaf_cert, &self.leaf_key)?, true))
    }

    fn generate(&self) -> Result<(), TlsError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "edge local CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;

        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.subject_alt_names.extend([
            SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ]);
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate()?;
        let leaf = leaf.signed_by(&leaf_key, &ca, &ca_key)?;

        write_atomic(&self.ca_key, &ca_key.serialize_pem(), 0o600)?;
        write_atomic(&self.ca_cert, &ca.pem(), 0o644)?;
        write_atomic(&self.leaf_key, &leaf_key.serialize_pem(), 0o600)?;
        write_atomic(&self.leaf_cert, &leaf.pem(), 0o644)
    }
}

/// Writes `path` through a temporary sibling and a rename, so a reader sees the
/// old file or the whole new one.
fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_start_reads_the_same_ca_and_leaf() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = LocalCa::in_state_dir(dir.path());
        let (_, created) = ca.load_or_create()?;
        assert!(created);
        let first = std::fs::read(&ca.ca_cert)?;
        let (_, created) = ca.load_or_create()?;
        assert!(!created);
        assert_eq!(std::fs::read(&ca.ca_cert)?, first);
        Ok(())
    }
}

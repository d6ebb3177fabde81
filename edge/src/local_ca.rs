//! The local CA for the no-certificate case: a CA and a `localhost` leaf it
//! signed, generated once into the state dir and read back on every start, so a
//! client told to trust the CA file (`curl --cacert`, a browser's trust store)
//! keeps trusting edge across restarts.
//!
//! Must not: overwrite a complete set, or leave a half-written one that a later
//! start would take for complete: a set is written whole into a directory of its
//! own and renamed into place, so of two edges starting at once one set wins and
//! both serve it.

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
        let created = self.create()?;
        Ok((Loaded::pair(&self.leaf_cert, &self.leaf_key)?, created))
    }

    /// Generates a set beside the final directory and renames it into place;
    /// `false` when another process's set got there first (it is kept).
    fn create(&self) -> Result<bool, TlsError> {
        let dir = self.dir();
        let parent = dir.parent().unwrap_or(Path::new("."));
        let staging = parent.join(format!("local-ca.new-{}", std::process::id()));
        let staged = Self {
            ca_cert: staging.join("ca.pem"),
            ca_key: staging.join("ca.key"),
            leaf_cert: staging.join("localhost.pem"),
            leaf_key: staging.join("localhost.key"),
        };
        staged.generate()?;
        // An empty or partial directory left by a crash is replaced; a complete
        // one (another edge's) makes the rename fail and is used instead.
        if dir.is_dir() && !self.leaf_cert.is_file() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!("cannot remove the partial {}: {e}", dir.display());
            }
        }
        match std::fs::rename(&staging, &dir) {
            Ok(()) => Ok(true),
            Err(_) if self.leaf_cert.is_file() => {
                if let Err(e) = std::fs::remove_dir_all(&staging) {
                    tracing::warn!("cannot remove {}: {e}", staging.display());
                }
                Ok(false)
            }
            Err(source) => Err(TlsError::Write {
                path: dir.display().to_string(),
                source,
            }),
        }
    }

    fn dir(&self) -> PathBuf {
        self.leaf_cert
            .parent()
            .map_or_else(|| PathBuf::from("local-ca"), Path::to_path_buf)
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

    #[test]
    fn a_set_made_meanwhile_by_another_edge_wins() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = LocalCa::in_state_dir(dir.path());
        ca.load_or_create()?;
        let first = std::fs::read(&ca.ca_cert)?;
        // As if this process had found no set and generated while another wrote one.
        assert!(!ca.create()?);
        assert_eq!(std::fs::read(&ca.ca_cert)?, first);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("local-ca"))?.collect();
        assert_eq!(left.len(), 4, "no staging left inside");
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 1, "nor beside");
        Ok(())
    }
}

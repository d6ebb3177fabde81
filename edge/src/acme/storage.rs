//! Where an ACME account key and the certificate it ordered are kept across
//! restarts: two files in the storage directory, named by a digest of what they
//! belong to (the domains or contacts, and the directory URL), so a changed
//! `[acme]` never picks up a certificate for other names.
//!
//! Must not: leave a half-written file that a later start would take for
//! whole: every write goes to a temporary sibling that is then renamed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::config::Acme;

#[derive(Clone, Debug)]
pub struct Storage {
    /// Names the certificate (its domains and directory) here and in Redis.
    pub id: String,
    pub cert: PathBuf,
    pub account: PathBuf,
}

impl Storage {
    pub fn new(acme: &Acme) -> Self {
        let cert = digest(&acme.domains, &acme.directory);
        let account = digest(&acme.contact, &acme.directory);
        Self {
            id: cert.clone(),
            cert: acme.storage.join(format!("cert-{cert}.pem")),
            account: acme.storage.join(format!("account-{account}.key")),
        }
    }

    /// The stored file, `None` when there is none yet.
    pub fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `path` whole (owner-only: both files hold a private key).
    pub fn write(path: &Path, contents: &[u8]) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

/// 16 hex digits of SHA-256 over the items (NUL-separated) and the directory.
fn digest(items: &[String], directory: &str) -> String {
    let mut h = Sha256::new();
    for i in items {
        h.update(i.as_bytes());
        h.update([0]);
    }
    h.update(directory.as_bytes());
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_domains_or_directory_name_another_file() {
        let a = digest(&["a.test".to_owned()], "https://ca/dir");
        assert_eq!(a.len(), 16);
        assert_ne!(a, digest(&["b.test".to_owned()], "https://ca/dir"));
        assert_ne!(a, digest(&["a.test".to_owned()], "https://other/dir"));
        assert_ne!(
            digest(&["a.test".to_owned(), "b".to_owned()], ""),
            digest(&["a.testb".to_owned()], "")
        );
    }

    #[test]
    fn writes_whole_and_reads_back() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("sub/cert.pem");
        assert_eq!(Storage::read(&p)?, None);
        Storage::write(&p, b"one")?;
        Storage::write(&p, b"two")?;
        assert_eq!(Storage::read(&p)?, Some(b"two".to_vec()));
        assert_eq!(std::fs::read_dir(dir.path().join("sub"))?.count(), 1);
        Ok(())
    }
}

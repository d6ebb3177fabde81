//! A real Pebble ACME CA (Debian package `pebble`) on free loopback ports, for
//! edge's ACME tests. Its validation authority connects to the edge's own
//! ports (`httpPort` for HTTP-01, `tlsPort` for TLS-ALPN-01) at the address a
//! dnsmasq the test starts gives for the domains (every name under
//! [`DOMAIN`] is 127.0.0.1).
//!
//! Pebble's own listener uses a certificate from a test CA made here; clients of
//! the certificates it issues trust its root, fetched from the management port.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tempfile::TempDir;

use crate::dns::Dnsmasq;
use crate::pki::Pki;
use crate::process::tail;

/// Every name under this domain resolves to 127.0.0.1 for Pebble.
pub const DOMAIN: &str = "edge.test";

/// How long Pebble may take from spawn to serving its root.
const READY_DEADLINE: Duration = Duration::from_secs(15);

/// A Pebble child and the dnsmasq it resolves through; both killed (by pid) on drop.
#[derive(Debug)]
pub struct Pebble {
    dir: TempDir,
    child: Child,
    /// The ACME directory URL (`https://127.0.0.1:PORT/dir`).
    pub directory: String,
    /// The CA file that makes Pebble's own TLS trusted (`[acme] ca`).
    pub tls_ca: PathBuf,
    /// The root Pebble issues under, as PEM, for clients of edge.
    pub root: PathBuf,
    _dns: Dnsmasq,
}

/// A TCP port free on 127.0.0.1 when asked.
pub fn free_tcp_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` (the edge's listeners, on 127.0.0.1).
    pub async fn start(http_port: u16, tls_port: u16) -> Result<Self> {
        Self::start_issuing_for(http_port, tls_port, None).await
    }

    /// [`start`](Self::start), issuing certificates valid for `validity` (Pebble's
    /// default is 5 years), so that a test can see a renewal.
    pub async fn start_issuing_for(
        http_port: u16,
        tls_port: u16,
        validity: Option<Duration>,
    ) -> Result<Self> {
        let dns = Dnsmasq::start("", &format!("address=/{DOMAIN}/127.0.0.1\n")).await?;
        let dir = tempfile::tempdir()?;
        let pki = Pki::generate(dir.path())?;
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()?));
        let management = SocketAddr::from((Ipv4Addr::LOCALHOST, free_tcp_port()?));
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": pki.leaf_cert,
                "privateKey": pki.leaf_key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = v.as_secs().into();
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string())?;
        let log = std::fs::File::create(dir.path().join("pebble.log"))?;
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(dns.addr().to_string())
            // Validate at once, never reject a nonce on purpose, and validate
            // every order afresh (no authorization reuse between tests' orders).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting pebble (Debian package pebble)")?;
        let mut pebble = Self {
            root: dir.path().join("pebble-root.pem"),
            tls_ca: pki.ca_cert.clone(),
            directory: format!("https://{listen}/dir"),
            dir,
            child,
            _dns: dns,
        };
        pebble.fetch_root(management).await?;
        Ok(pebble)
    }

    /// Waits until the management port serves the issuing root and keeps it.
    async fn fetch_root(&mut self, management: SocketAddr) -> Result<()> {
        let url = format!("https://{management}/roots/0");
        let ca = self.tls_ca.to_string_lossy().into_owned();
        let end = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("pebble exited with {status}:\n{}", self.log());
            }
            let out = crate::curl(&["-sS", "--cacert", &ca, &url]).await;
            if let Ok(resp) = out {
                if resp.status == 200 && resp.text().contains("BEGIN CERTIFICATE") {
                    std::fs::write(&self.root, resp.text())?;
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= end {
                bail!(
                    "pebble served no root within {READY_DEADLINE:?}:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What Pebble has logged.
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default();
        tail(&text).to_owned()
    }

    /// The `[acme]` section for an edge ordering `domains` by `challenge`.
    pub fn acme_section(&self, domains: &[&str], challenge: &str) -> String {
        let domains: Vec<String> = domains.iter().map(|d| crate::toml_str(d)).collect();
        format!(
            "[acme]\ndirectory = {}\nca = {}\ncontact = [\"mailto:ops@{DOMAIN}\"]\n\
             domains = [{}]\nchallenge = {}\n",
            crate::toml_str(&self.directory),
            crate::toml_path(&self.tls_ca),
            domains.join(", "),
            crate::toml_str(challenge),
        )
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        eprintln!("--- pebble output ---\n{}", self.log());
        if let Err(e) = self.child.kill() {
            eprintln!("killing pebble pid {}: {e}", self.child.id());
        }
        if let Err(e) = self.child.wait() {
            eprintln!("reaping pebble pid {}: {e}", self.child.id());
        }
    }
}

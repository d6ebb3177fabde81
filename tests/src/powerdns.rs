//! A real PowerDNS authoritative server (Debian `pdns-server` with
//! `pdns-backend-lua2`) on a free loopback port, serving the zone of a lua2
//! backend script from its own temporary folder (no system service, no
//! `/etc/powerdns`), and a one-question A lookup to ask it with.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use tempfile::TempDir;

use crate::dns::free_udp_tcp_port;

/// How long pdns_server may take from spawn to answering on its port.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// A pdns_server child; killed (its pid only) and reaped on drop.
#[derive(Debug)]
pub struct PowerDns {
    dir: TempDir,
    port: u16,
    child: Child,
}

impl PowerDns {
    /// Starts pdns_server on `conf` (a `pdns.conf` text) with `script` as its
    /// lua2 backend. The keys that place it (script path, address, port,
    /// folders, daemon mode) are set here, replacing any in `conf`.
    pub async fn start(conf: &str, script: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let script_path = dir.path().join("edges.lua");
        std::fs::write(&script_path, script)?;
        let port = free_udp_tcp_port()?;
        let ours = [
            format!("lua2-filename={}", script_path.display()),
            "local-address=127.0.0.1".to_owned(),
            format!("local-port={port}"),
            format!("socket-dir={}", dir.path().display()),
            "daemon=no".to_owned(),
            "guardian=no".to_owned(),
            "write-pid=no".to_owned(),
            "disable-syslog=yes".to_owned(),
            // Info: the LUA health checks' verdicts are in the log.
            "loglevel=6".to_owned(),
            // No calls home from a test (it would also fail offline).
            "security-poll-suffix=".to_owned(),
        ];
        let key = |line: &str| line.split('=').next().unwrap_or("").trim().to_owned();
        let replaced: Vec<String> = ours.iter().map(|l| key(l)).collect();
        let mut lines: Vec<String> = conf
            .lines()
            .filter(|l| !replaced.contains(&key(l)))
            .map(str::to_owned)
            .collect();
        lines.extend(ours);
        std::fs::write(dir.path().join("pdns.conf"), lines.join("\n") + "\n")?;
        let log = std::fs::File::create(dir.path().join("pdns.log"))?;
        let child = Command::new("pdns_server")
            .arg(format!("--config-dir={}", dir.path().display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting pdns_server (Debian packages pdns-server, pdns-backend-lua2)")?;
        let mut pdns = Self { dir, port, child };
        let end = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = pdns.child.try_wait()? {
                bail!("pdns_server exited with {status}:\n{}", pdns.log());
            }
            if tokio::net::TcpStream::connect(pdns.addr()).await.is_ok() {
                return Ok(pdns);
            }
            if tokio::time::Instant::now() >= end {
                bail!(
                    "pdns_server not answering on {}:\n{}",
                    pdns.addr(),
                    pdns.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `127.0.0.1:PORT`, UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A file of its folder.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// What pdns_server logged (health check verdicts among it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("pdns.log")).unwrap_or_default()
    }

    /// The A records it answers for `name`, sorted.
    pub async fn a(&self, name: &str) -> Result<Vec<Ipv4Addr>> {
        query_a(self.addr(), name).await
    }
}

impl Drop for PowerDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One A question for `name` to `server` over UDP; the answer's addresses, sorted.
pub async fn query_a(server: SocketAddr, name: &str) -> Result<Vec<Ipv4Addr>> {
    let mut msg = Message::new();
    msg.set_id(next_id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(false)
        .add_query(Query::query(Name::from_ascii(name)?, RecordType::A));
    let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    socket.send_to(&msg.to_vec()?, server).await?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
        .await
        .with_context(|| format!("no answer from {server} for {name}"))??;
    let reply = Message::from_vec(&buf[..n])?;
    if reply.id() != msg.id() {
        bail!("answer id {} for question {}", reply.id(), msg.id());
    }
    if reply.response_code() != ResponseCode::NoError {
        bail!("{name}: {}", reply.response_code());
    }
    let mut addrs: Vec<Ipv4Addr> = reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    addrs.sort();
    Ok(addrs)
}

/// A query id that differs between calls (matched against the answer, not secret).
fn next_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

//! A real dnsmasq (Debian package `dnsmasq-base`) on a free loopback port, and the
//! pieces of an edge config that discover a pool's endpoints from it.
//!
//! dnsmasq rereads `--addn-hosts` on SIGHUP, so A/AAAA changes are a file write and a
//! SIGHUP ([`Dnsmasq::set_hosts`]). `srv-host=` and `txt-record=` lines live in
//! `--conf-file`, which dnsmasq reads only at start (SIGHUP leaves them as they
//! were), so those changes restart it on the same port ([`Dnsmasq::restart`]). Every
//! record is served with a 1 s TTL (`--local-ttl=1`, [`TTL`]), and
//! `--local=/internal/` makes unknown names under `internal` NXDOMAIN; names
//! elsewhere get REFUSED (there is no upstream server).

use std::fs::{self, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tempfile::TempDir;

use crate::edge::toml_str;

/// The TTL dnsmasq gives every record it serves.
pub const TTL: Duration = Duration::from_secs(1);

/// How long dnsmasq may take from spawn to accepting TCP on its port.
const READY_DEADLINE: Duration = Duration::from_secs(5);

/// A dnsmasq child serving a hosts file and a conf file from its own temporary
/// folder on 127.0.0.1 (UDP and TCP). Killed (its pid only) and reaped on drop.
#[derive(Debug)]
pub struct Dnsmasq {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq on a free port with these `--addn-hosts` (`IP NAME` lines) and
    /// `--conf-file` (e.g. [`srv_host`] lines) contents.
    pub async fn start(hosts: &str, conf: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        fs::write(dir.path().join("hosts"), hosts)?;
        fs::write(dir.path().join("dnsmasq.conf"), conf)?;
        let mut dns = Self {
            dir,
            port: 0,
            child: None,
        };
        // The port is free when picked but could be taken before dnsmasq binds it.
        let mut last = None;
        for _ in 0..5 {
            dns.port = free_udp_tcp_port()?;
            match dns.spawn().await {
                Ok(()) => return Ok(dns),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("dnsmasq never started")))
    }

    /// `127.0.0.1:PORT`, the nameserver address to configure.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A file in dnsmasq's folder (`hosts`, `dnsmasq.conf`, `dnsmasq.log`).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Whether the dnsmasq process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Runs dnsmasq on its port (again, after [`stop`](Self::stop)) and waits until
    /// it accepts TCP (its UDP socket is bound by then too).
    pub async fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("dnsmasq on port {} is already running", self.port);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("dnsmasq.log"))?;
        let child = Command::new("dnsmasq")
            .arg("--no-daemon")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg(format!("--port={}", self.port))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg(format!(
                "--conf-file={}",
                self.path("dnsmasq.conf").display()
            ))
            .arg(format!("--addn-hosts={}", self.path("hosts").display()))
            .arg("--local=/internal/")
            .arg(format!("--local-ttl={}", TTL.as_secs()))
            .arg("--pid-file=")
            // As root it would switch to `nobody`, who cannot read the 0700 temp folder
            // on SIGHUP; as any other user this changes nothing.
            .arg("--user=root")
            .arg("--log-queries")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dnsmasq (Debian package dnsmasq-base)")?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().transpose()) {
                self.child = None;
                bail!(
                    "dnsmasq on port {} exited with {:?}:\n{}",
                    self.port,
                    status,
                    self.log()
                );
            }
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                self.stop()?;
                bail!("dnsmasq on port {} not ready:\n{}", self.port, self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything dnsmasq logged (queries included).
    pub fn log(&self) -> String {
        fs::read_to_string(self.path("dnsmasq.log")).unwrap_or_default()
    }

    /// Process id of the running dnsmasq.
    pub fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("dnsmasq is not running")
    }

    /// Replaces the hosts file (whole, by rename) and has dnsmasq reread it (SIGHUP).
    pub fn set_hosts(&self, hosts: &str) -> Result<()> {
        let tmp = self.path("hosts.new");
        fs::write(&tmp, hosts)?;
        fs::rename(&tmp, self.path("hosts"))?;
        let pid = self.pid()?.to_string();
        let status = Command::new("kill").args(["-HUP", &pid]).status()?;
        if !status.success() {
            bail!("kill -HUP {pid} (dnsmasq): {status}");
        }
        Ok(())
    }

    /// Replaces both files and restarts dnsmasq on the same port: the way to change
    /// SRV and TXT records, which SIGHUP does not reload.
    pub async fn restart(&mut self, hosts: &str, conf: &str) -> Result<()> {
        self.stop()?;
        fs::write(self.path("hosts"), hosts)?;
        fs::write(self.path("dnsmasq.conf"), conf)?;
        self.spawn().await
    }

    /// Kills this dnsmasq (its pid only) and reaps it; its port stays reserved for
    /// [`spawn`](Self::spawn) only as far as nothing else takes it meanwhile.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping dnsmasq on port {}: {e}", self.port);
        }
    }
}

/// An `--addn-hosts` file giving `name` one A (or AAAA) record per address.
pub fn hosts(name: &str, addrs: &[IpAddr]) -> String {
    addrs.iter().map(|ip| format!("{ip} {name}\n")).collect()
}

/// A `--conf-file` line for one SRV record of `service` (e.g.
/// `_http._tcp.api.internal`) pointing at `target` (a name the hosts file gives an
/// address).
pub fn srv_host(service: &str, target: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("srv-host={service},{target},{port},{priority},{weight}\n")
}

/// A port free on 127.0.0.1 for both UDP and TCP, chosen by the OS. The UDP port the
/// OS picks can be in use by a TCP connection (the ephemeral ranges are shared), so
/// this asks again until both are free.
pub fn free_udp_tcp_port() -> Result<u16> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = udp.local_addr()?.port();
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    bail!("no port free for both UDP and TCP: last {last:?}")
}

/// A TCP port free on every one of `ips` (e.g. 127.0.0.11, .12 and .13: all of
/// 127/8 is loopback on Linux), for origins that DNS names by address only.
pub fn common_free_port(ips: &[IpAddr]) -> Result<u16> {
    let first = ips.first().context("no addresses")?;
    let mut last = None;
    for _ in 0..50 {
        let probe = TcpListener::bind((*first, 0))
            .with_context(|| format!("binding {first}:0 (is it a local address?)"))?;
        let port = probe.local_addr()?.port();
        let rest: std::io::Result<Vec<TcpListener>> = ips[1..]
            .iter()
            .map(|ip| TcpListener::bind((*ip, port)))
            .collect();
        match rest {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    bail!("no TCP port free on all of {ips:?}: last {last:?}")
}

/// The `dns = { ... }` inline table of a pool. Unset options are left out, so
/// edge's defaults apply.
#[derive(Debug, Clone, Default)]
pub struct DnsPool {
    /// `name` (required by edge; `None` renders a table without it).
    pub name: Option<String>,
    /// `kind`: `"a"` or `"srv"`.
    pub kind: Option<String>,
    /// `port` (for `kind = "a"`).
    pub port: Option<u16>,
    /// `tls`.
    pub tls: Option<bool>,
    /// `nameservers`.
    pub nameservers: Vec<SocketAddr>,
    /// `ttl_floor`, as a duration string (`"1s"`).
    pub ttl_floor: Option<String>,
    /// `ttl_ceiling`, as a duration string.
    pub ttl_ceiling: Option<String>,
    /// `timeout`, as a duration string.
    pub timeout: Option<String>,
}

impl DnsPool {
    /// A/AAAA records of `name`, endpoints on `port`, asking `nameserver`.
    pub fn address(name: &str, port: u16, nameserver: SocketAddr) -> Self {
        Self {
            name: Some(name.to_owned()),
            port: Some(port),
            nameservers: vec![nameserver],
            ..Self::default()
        }
    }

    /// SRV records of `name` (e.g. `_http._tcp.api.internal`), asking `nameserver`.
    pub fn srv(name: &str, nameserver: SocketAddr) -> Self {
        Self {
            name: Some(name.to_owned()),
            kind: Some("srv".to_owned()),
            nameservers: vec![nameserver],
            ..Self::default()
        }
    }

    /// Sets `timeout` (a duration string such as `"500ms"`).
    pub fn timeout(mut self, timeout: &str) -> Self {
        self.timeout = Some(timeout.to_owned());
        self
    }

    /// The inline table, e.g. `{ name = "api.internal", port = 8080, nameservers =
    /// ["127.0.0.1:5353"] }`.
    pub fn to_toml(&self) -> String {
        let mut keys = Vec::new();
        if let Some(name) = &self.name {
            keys.push(format!("name = {}", toml_str(name)));
        }
        if let Some(kind) = &self.kind {
            keys.push(format!("kind = {}", toml_str(kind)));
        }
        if let Some(port) = self.port {
            keys.push(format!("port = {port}"));
        }
        if let Some(tls) = self.tls {
            keys.push(format!("tls = {tls}"));
        }
        if !self.nameservers.is_empty() {
            let servers: Vec<String> = self
                .nameservers
                .iter()
                .map(|s| toml_str(&s.to_string()))
                .collect();
            keys.push(format!("nameservers = [{}]", servers.join(", ")));
        }
        for (key, value) in [
            ("ttl_floor", &self.ttl_floor),
            ("ttl_ceiling", &self.ttl_ceiling),
            ("timeout", &self.timeout),
        ] {
            if let Some(value) = value {
                keys.push(format!("{key} = {}", toml_str(value)));
            }
        }
        format!("{{ {} }}", keys.join(", "))
    }
}

/// `toml` (as [`EdgeConfig::to_toml`](crate::EdgeConfig::to_toml) renders it) with
/// the `endpoints = [...]` line of `[pools.POOL]` replaced by `dns = DNS`, or with
/// `dns = DNS` added after it when `keep_endpoints` (a config edge must refuse).
pub fn with_dns(toml: &str, pool: &str, dns: &DnsPool, keep_endpoints: bool) -> Result<String> {
    let header = format!("[pools.{pool}]");
    let mut out = String::with_capacity(toml.len() + 128);
    let mut in_pool = false;
    let mut done = false;
    for line in toml.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_pool = trimmed == header;
        }
        if in_pool && !done && trimmed.starts_with("endpoints") {
            if keep_endpoints {
                out.push_str(line);
                out.push('\n');
            }
            out.push_str(&format!("dns = {}\n", dns.to_toml()));
            done = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !done {
        bail!("no `endpoints` line under {header} in:\n{toml}");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_dns_pool_in_place_of_endpoints() -> Result<()> {
        let toml = "listen = \"127.0.0.1:0\"\n\n[pools.other]\nendpoints = [\"http://a:1\"]\n\n\
                    [pools.default]\nendpoints = [\"http://b:2\"]\nbalancer = \"round_robin\"\n";
        let dns = DnsPool::address("api.internal", 8080, "127.0.0.1:5353".parse()?);
        let want = "listen = \"127.0.0.1:0\"\n\n[pools.other]\nendpoints = [\"http://a:1\"]\n\n\
                    [pools.default]\ndns = { name = \"api.internal\", port = 8080, \
                    nameservers = [\"127.0.0.1:5353\"] }\nbalancer = \"round_robin\"\n";
        assert_eq!(with_dns(toml, "default", &dns, false)?, want);
        let both = with_dns(toml, "default", &dns, true)?;
        assert!(
            both.contains("endpoints = [\"http://b:2\"]\ndns = {"),
            "{both}"
        );
        assert!(with_dns(toml, "missing", &dns, false).is_err());

        let srv = DnsPool::srv("_http._tcp.api.internal", "127.0.0.1:53".parse()?).timeout("1s");
        assert_eq!(
            srv.to_toml(),
            "{ name = \"_http._tcp.api.internal\", kind = \"srv\", \
             nameservers = [\"127.0.0.1:53\"], timeout = \"1s\" }"
        );
        Ok(())
    }

    #[test]
    fn hosts_and_srv_lines() {
        let ips = [IpAddr::from([127, 0, 0, 11]), IpAddr::from([127, 0, 0, 12])];
        assert_eq!(
            hosts("api.internal", &ips),
            "127.0.0.11 api.internal\n127.0.0.12 api.internal\n"
        );
        assert_eq!(
            srv_host("_http._tcp.api.internal", "a.internal", 8080, 0, 3),
            "srv-host=_http._tcp.api.internal,a.internal,8080,0,3\n"
        );
    }
}

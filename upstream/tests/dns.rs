//! DNS discovery against a real dnsmasq (Debian package `dnsmasq-base`) on a free
//! loopback port, driven by the integration-test harness's
//! [`edge_tests::dns::Dnsmasq`].
//!
//! A/AAAA changes are a hosts file write and a SIGHUP (`set_hosts`); SRV and TXT
//! records live in dnsmasq's conf file, read only at start, so those changes restart
//! it on the same port (`restart`). Every record is served with a 1 s TTL ([`TTL`]),
//! and `--local=/internal/` makes unknown names under `internal` NXDOMAIN instead of
//! REFUSED.

use std::error::Error as StdError;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{bail, Result};
use edge_tests::dns::{Dnsmasq, TTL};
use edge_tests::wait_until;
use tokio::sync::watch::Receiver;
use upstream::discovery::{self, DiscoveryError, DnsConfig, RecordKind, Resolution};

fn config(dns: &Dnsmasq, name: &str, kind: RecordKind) -> DnsConfig {
    let mut cfg = match kind {
        RecordKind::Address => DnsConfig::address(name, 8080),
        RecordKind::Srv => DnsConfig::srv(name),
    };
    cfg.nameservers = vec![dns.addr()];
    cfg.ttl_floor = Duration::from_millis(200);
    cfg.timeout = Duration::from_millis(500);
    cfg
}

/// The endpoints as `url weight priority`.
fn endpoints(res: &Resolution) -> Vec<String> {
    res.endpoints
        .iter()
        .map(|d| format!("{} {} {}", d.addr, d.weight, d.priority))
        .collect()
}

/// Waits for a published (notified) endpoint set.
async fn wait_for_set(
    rx: &mut Receiver<Resolution>,
    want: &[&str],
    within: Duration,
) -> Result<()> {
    let reached = tokio::time::timeout(within, rx.wait_for(|r| endpoints(r) == want))
        .await
        .map(|r| r.map(|_| ()));
    match reached {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => bail!("the discovery task stopped"),
        Err(_) => bail!("no set {want:?} within {within:?}; have {:?}", rx.borrow()),
    }
}

/// An error and its causes, as one line.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

const API_11_12: &str = "127.0.0.11 api.internal\n127.0.0.12 api.internal\n";
const SET_11_12: [&str; 2] = ["http://127.0.0.11:8080 1 0", "http://127.0.0.12:8080 1 0"];

#[tokio::test]
async fn a_records_follow_the_hosts_file_on_sighup() -> Result<()> {
    let dns = Dnsmasq::start(API_11_12, "").await?;
    let mut rx = discovery::watch(config(&dns, "api.internal", RecordKind::Address)).await?;
    assert_eq!(endpoints(&rx.borrow_and_update()), SET_11_12);

    // Refreshes of an unchanged set update the age in place without waking anyone.
    let first = rx.borrow().refreshed_at;
    wait_until("a refresh", TTL * 3, || rx.borrow().refreshed_at > first).await?;
    assert!(!rx.has_changed()?, "woken for an unchanged set");
    assert_eq!(rx.borrow().failures, 0);

    dns.set_hosts("127.0.0.12 api.internal\n127.0.0.13 api.internal\n")?;
    let want = ["http://127.0.0.12:8080 1 0", "http://127.0.0.13:8080 1 0"];
    wait_for_set(&mut rx, &want, TTL + Duration::from_secs(1)).await?;
    assert_eq!(rx.borrow().failures, 0);
    Ok(())
}

#[tokio::test]
async fn aaaa_records_are_endpoints_too() -> Result<()> {
    let dns = Dnsmasq::start("127.0.0.11 api.internal\n::1 api.internal\n", "").await?;
    let mut cfg = config(&dns, "api.internal", RecordKind::Address);
    cfg.tls = true;
    let rx = discovery::watch(cfg).await?;
    assert_eq!(
        endpoints(&rx.borrow()),
        ["https://127.0.0.11:8080 1 0", "https://[::1]:8080 1 0"]
    );
    Ok(())
}

const SRV_HOSTS: &str = "127.0.0.21 a.internal\n127.0.0.22 b.internal\n";

#[tokio::test]
async fn srv_records_give_ports_weights_and_priorities() -> Result<()> {
    let mut dns = Dnsmasq::start(
        SRV_HOSTS,
        "srv-host=_http._tcp.api.internal,a.internal,8081,0,1\n\
         srv-host=_http._tcp.api.internal,b.internal,8082,0,3\n",
    )
    .await?;
    let mut rx = discovery::watch(config(&dns, "_http._tcp.api.internal", RecordKind::Srv)).await?;
    assert_eq!(
        endpoints(&rx.borrow_and_update()),
        ["http://127.0.0.21:8081 1 0", "http://127.0.0.22:8082 3 0"]
    );

    // SRV records change only with a restart (same port); the watcher follows.
    dns.restart(
        SRV_HOSTS,
        "srv-host=_http._tcp.api.internal,b.internal,9092,0,5\n\
         srv-host=_http._tcp.api.internal,a.internal,9091,1,1\n",
    )
    .await?;
    let want = ["http://127.0.0.22:9092 5 0", "http://127.0.0.21:9091 1 1"];
    wait_for_set(&mut rx, &want, TTL * 3).await?;
    Ok(())
}

#[tokio::test]
async fn a_dead_server_keeps_the_last_set_and_counts_failures() -> Result<()> {
    let mut dns = Dnsmasq::start(API_11_12, "").await?;
    let mut rx = discovery::watch(config(&dns, "api.internal", RecordKind::Address)).await?;
    rx.borrow_and_update();
    dns.stop()?;

    wait_until("a first failure", TTL * 3, || rx.borrow().failures >= 1).await?;
    let last_good = rx.borrow().refreshed_at;
    // Several retry periods (200 ms, 400 ms, 800 ms backoff, each with a timeout).
    wait_until("4 consecutive failures", Duration::from_secs(15), || {
        let res = rx.borrow();
        assert_eq!(endpoints(&res), SET_11_12, "the set changed while failing");
        res.failures >= 4
    })
    .await?;
    assert_eq!(rx.borrow().refreshed_at, last_good);
    assert!(!rx.has_changed()?, "woken while the set stayed");

    // Back on the same port: the next retry (backed off up to the 30 s cap) clears the
    // failure count.
    dns.spawn().await?;
    let retry = Duration::from_secs(30) + TTL * 2;
    wait_until("recovery", retry, || rx.borrow().failures == 0).await?;
    assert!(rx.borrow().refreshed_at > last_good);
    assert_eq!(endpoints(&rx.borrow()), SET_11_12);
    Ok(())
}

#[tokio::test]
async fn nxdomain_and_empty_answers_keep_a_non_empty_set() -> Result<()> {
    let mut dns = Dnsmasq::start(API_11_12, "").await?;
    let mut rx = discovery::watch(config(&dns, "api.internal", RecordKind::Address)).await?;
    rx.borrow_and_update();

    // NXDOMAIN: the name is gone from the hosts file.
    dns.set_hosts("127.0.0.99 other.internal\n")?;
    wait_until("2 NXDOMAIN answers", TTL * 5, || rx.borrow().failures >= 2).await?;
    assert_eq!(endpoints(&rx.borrow()), SET_11_12);

    // NODATA: the name exists (a TXT record) but has no A or AAAA. Lookups during the
    // restart fail too, so the server's log tells when two NODATA answers were given;
    // the first was applied before the second was asked.
    dns.restart(
        "127.0.0.99 other.internal\n",
        "txt-record=api.internal,\"no address\"\n",
    )
    .await?;
    wait_until("2 NODATA answers", TTL * 20, || {
        dns.log().matches("api.internal is NODATA-IPv4").count() >= 2
    })
    .await?;
    assert_eq!(endpoints(&rx.borrow()), SET_11_12);
    assert!(rx.borrow().failures >= 3);
    assert!(!rx.has_changed()?, "woken while the set stayed");

    // Records again: they replace the set and clear the failures, at the next retry,
    // which the failures so far may have backed off up to the 30 s cap.
    dns.restart("127.0.0.13 api.internal\n", "").await?;
    let retry = Duration::from_secs(30) + TTL * 2;
    wait_for_set(&mut rx, &["http://127.0.0.13:8080 1 0"], retry).await?;
    assert_eq!(rx.borrow().failures, 0);
    Ok(())
}

#[tokio::test]
async fn an_nxdomain_first_answer_starts_empty_and_fills_in() -> Result<()> {
    let dns = Dnsmasq::start("127.0.0.99 other.internal\n", "").await?;
    let mut rx = discovery::watch(config(&dns, "api.internal", RecordKind::Address)).await?;
    {
        let res = rx.borrow_and_update();
        assert!(res.endpoints.is_empty());
        assert_eq!(res.failures, 0);
    }
    dns.set_hosts(API_11_12)?;
    wait_for_set(&mut rx, &SET_11_12, TTL + Duration::from_secs(1)).await?;
    Ok(())
}

#[tokio::test]
async fn a_refused_first_lookup_is_an_error_naming_the_name_and_cause() -> Result<()> {
    // Outside --local=/internal/ and with no upstream, dnsmasq answers REFUSED.
    let dns = Dnsmasq::start(API_11_12, "").await?;
    let err = match discovery::watch(config(&dns, "api.elsewhere", RecordKind::Address)).await {
        Ok(_) => bail!("watch succeeded on a REFUSED answer"),
        Err(e) => e,
    };
    assert!(matches!(err, DiscoveryError::FirstLookup { .. }), "{err:?}");
    let text = chain(&err);
    assert!(text.contains("api.elsewhere"), "{text}");
    assert!(text.contains("Query Refused"), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_silent_server_on_the_first_lookup_is_an_error() -> Result<()> {
    // Bound, so nothing else answers there, but never read.
    let silent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let mut cfg = DnsConfig::address("api.internal", 8080);
    cfg.nameservers = vec![silent.local_addr()?];
    cfg.timeout = Duration::from_millis(300);
    let err = match discovery::watch(cfg).await {
        Ok(_) => bail!("watch succeeded with no answer"),
        Err(e) => e,
    };
    let text = chain(&err);
    assert!(matches!(err, DiscoveryError::FirstLookup { .. }), "{text}");
    assert!(text.contains("api.internal"), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_bad_config_is_refused_before_any_lookup() {
    let mut cfg = DnsConfig::address("api.internal", 8080);
    cfg.nameservers = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 9))];
    cfg.ttl_floor = Duration::from_secs(10);
    cfg.ttl_ceiling = Duration::from_secs(5);
    assert!(matches!(
        discovery::watch(cfg).await,
        Err(DiscoveryError::TtlBounds { .. })
    ));
    let mut cfg = DnsConfig::address("bad..name", 8080);
    cfg.nameservers = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 9))];
    assert!(matches!(
        discovery::watch(cfg).await,
        Err(DiscoveryError::Name { .. })
    ));
}

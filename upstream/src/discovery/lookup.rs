//! Asking the name servers: A and AAAA of a name, or its SRV records and then each
//! target's A and AAAA. Answers are classified here and nowhere else: records, no
//! records (NXDOMAIN or NODATA, an answer), or a failure (no usable answer).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::future::try_join_all;
use hickory_resolver::config::{
    NameServerConfig, NameServerConfigGroup, ResolveHosts, ResolverConfig,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{Name, ResolveError, Resolver, TokioResolver};

use super::{Discovered, DiscoveryError, DnsConfig, RecordKind};
use crate::{EndpointAddr, ParseEndpointError};

/// Why one lookup gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No answer came, or not a usable one (timeout, unreachable server, bad response).
    #[error("{record_type} lookup of {name} failed")]
    Query {
        name: String,
        record_type: &'static str,
        #[source]
        source: ResolveError,
    },
    /// The name server answered with an error code (SERVFAIL, REFUSED, ...).
    #[error("{record_type} lookup of {name}: the name server answered {code}")]
    ErrorCode {
        name: String,
        record_type: &'static str,
        code: ResponseCode,
        #[source]
        source: ResolveError,
    },
    /// An address from DNS did not make an endpoint URL (not expected for an IP and port).
    #[error("{addr} from DNS is not a valid endpoint")]
    Endpoint {
        addr: SocketAddr,
        #[source]
        source: ParseEndpointError,
    },
}

/// What one lookup found.
#[derive(Debug, Default)]
pub(super) struct Answer {
    /// The endpoints, unsorted; empty for NXDOMAIN and NODATA.
    pub(super) endpoints: Vec<Discovered>,
    /// The shortest TTL among the records used; `None` when there were none.
    pub(super) ttl: Option<Duration>,
    /// The response code when the name itself had no records (for logs).
    pub(super) negative: Option<&'static str>,
}

/// A resolver that asks `cfg.nameservers` over UDP and TCP, or the system's servers.
///
/// Nothing is cached: every refresh asks the servers, as its timing already follows
/// the TTLs.
pub(super) fn resolver(cfg: &DnsConfig) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|source| DiscoveryError::SystemConfig {
            name: cfg.name.clone(),
            source,
        })?
    } else {
        let mut servers = NameServerConfigGroup::with_capacity(cfg.nameservers.len() * 2);
        for &addr in &cfg.nameservers {
            servers.push(NameServerConfig::new(addr, Protocol::Udp));
            servers.push(NameServerConfig::new(addr, Protocol::Tcp));
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let mut builder = Resolver::builder_with_config(config, TokioConnectionProvider::default());
        // Only the configured servers decide: no /etc/hosts shortcut.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder
    };
    let opts = builder.options_mut();
    opts.timeout = cfg.timeout;
    opts.attempts = 1;
    opts.cache_size = 0;
    opts.try_tcp_on_error = true;
    Ok(builder.build())
}

/// One full lookup of `name` as `cfg` says.
pub(super) async fn resolve(
    dns: &TokioResolver,
    cfg: &DnsConfig,
    name: &Name,
) -> Result<Answer, LookupError> {
    dns.clear_cache();
    match cfg.kind {
        RecordKind::Address => {
            let found = addresses(dns, name).await?;
            let endpoints = found
                .ips
                .iter()
                .map(|&ip| discovered(cfg.tls, SocketAddr::new(ip, cfg.port), 1, 0))
                .collect::<Result<_, _>>()?;
            Ok(Answer {
                endpoints,
                ttl: found.ttl,
                negative: found.negative,
            })
        }
        RecordKind::Srv => srv(dns, cfg, name).await,
    }
}

/// SRV records, then the addresses of every target; a target without addresses is
/// skipped with a warning, a target whose lookup fails fails the whole lookup.
async fn srv(dns: &TokioResolver, cfg: &DnsConfig, name: &Name) -> Result<Answer, LookupError> {
    let lookup = match query(dns, name, RecordType::SRV).await? {
        Records::Found(lookup) => lookup,
        Records::None(code) => {
            return Ok(Answer {
                negative: Some(code.to_str()),
                ..Answer::default()
            })
        }
    };
    let mut ttl = min_ttl(&lookup, RecordType::SRV);
    let records: Vec<_> = lookup
        .records()
        .iter()
        .filter_map(|r| r.data().as_srv())
        // A target of "." means the service is deliberately not offered (RFC 2782).
        .filter(|srv| !srv.target().is_root())
        .collect();
    let mut targets: Vec<&Name> = records.iter().map(|srv| srv.target()).collect();
    targets.sort();
    targets.dedup();
    let resolved = try_join_all(targets.iter().map(|target| addresses(dns, target))).await?;
    let mut endpoints = Vec::new();
    for (target, found) in targets.iter().zip(&resolved) {
        if found.ips.is_empty() {
            tracing::warn!(
                name = %cfg.name,
                %target,
                "DNS discovery: SRV target has no A/AAAA records; skipped"
            );
            continue;
        }
        ttl = shortest(ttl, found.ttl);
        for srv in records.iter().filter(|srv| srv.target() == *target) {
            for &ip in &found.ips {
                let addr = SocketAddr::new(ip, srv.port());
                endpoints.push(discovered(
                    cfg.tls,
                    addr,
                    srv.weight().into(),
                    srv.priority(),
                )?);
            }
        }
    }
    Ok(Answer {
        endpoints,
        ttl,
        negative: None,
    })
}

/// The addresses of one name.
struct Addresses {
    ips: Vec<IpAddr>,
    ttl: Option<Duration>,
    negative: Option<&'static str>,
}

/// A and AAAA of `name`, asked together. Either failing fails both: a partial answer
/// must not shrink the set.
async fn addresses(dns: &TokioResolver, name: &Name) -> Result<Addresses, LookupError> {
    let (v4, v6) = tokio::join!(
        query(dns, name, RecordType::A),
        query(dns, name, RecordType::AAAA)
    );
    let mut found = Addresses {
        ips: Vec::new(),
        ttl: None,
        negative: None,
    };
    for (records, record_type) in [(v4?, RecordType::A), (v6?, RecordType::AAAA)] {
        match records {
            Records::Found(lookup) => {
                found.ttl = shortest(found.ttl, min_ttl(&lookup, record_type));
                found
                    .ips
                    .extend(lookup.records().iter().filter_map(|r| match r.data() {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                        _ => None,
                    }));
            }
            Records::None(code) => {
                found.negative = found.negative.or(Some(code.to_str()));
            }
        }
    }
    if !found.ips.is_empty() {
        found.negative = None;
    }
    Ok(found)
}

/// The answer to one query.
enum Records {
    /// At least one record.
    Found(Lookup),
    /// NXDOMAIN or NODATA: the name server's answer is "nothing".
    None(ResponseCode),
}

async fn query(
    dns: &TokioResolver,
    name: &Name,
    record_type: RecordType,
) -> Result<Records, LookupError> {
    match dns.lookup(name.clone(), record_type).await {
        Ok(lookup) if lookup.records().is_empty() => Ok(Records::None(ResponseCode::NoError)),
        Ok(lookup) => Ok(Records::Found(lookup)),
        Err(source) => {
            let code = source.proto().and_then(|p| match p.kind() {
                ProtoErrorKind::NoRecordsFound { response_code, .. } => Some(*response_code),
                _ => None,
            });
            match code {
                Some(code @ (ResponseCode::NXDomain | ResponseCode::NoError)) => {
                    Ok(Records::None(code))
                }
                Some(code) => Err(LookupError::ErrorCode {
                    name: name.to_string(),
                    record_type: record_type.into(),
                    code,
                    source,
                }),
                None => Err(LookupError::Query {
                    name: name.to_string(),
                    record_type: record_type.into(),
                    source,
                }),
            }
        }
    }
}

fn discovered(
    tls: bool,
    addr: SocketAddr,
    weight: u32,
    priority: u16,
) -> Result<Discovered, LookupError> {
    let scheme = if tls { "https" } else { "http" };
    let endpoint = EndpointAddr::parse(&format!("{scheme}://{addr}"))
        .map_err(|source| LookupError::Endpoint { addr, source })?;
    Ok(Discovered {
        addr: endpoint,
        weight,
        priority,
    })
}

/// The shortest TTL among the records of `record_type` in `lookup`.
fn min_ttl(lookup: &Lookup, record_type: RecordType) -> Option<Duration> {
    lookup
        .records()
        .iter()
        .filter(|r| r.record_type() == record_type)
        .map(|r| Duration::from_secs(r.ttl().into()))
        .min()
}

fn shortest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

//! `[proxy_protocol]`: which peers (an L4 load balancer in front) may name the
//! client with a PROXY protocol header (v1 text or v2 binary) on the TCP
//! listeners, and what a connection from such a peer must carry.

use ipnet::IpNet;

use super::at_least;
use super::walk::{Cx, Table};

/// PROXY protocol on `listen` (TCP) and `http_listen`. Off with no trusted peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// Peers whose PROXY header is believed; from any other peer a header is a
    /// protocol error and the connection is closed. Empty: PROXY protocol is off.
    pub trusted: Vec<IpNet>,
    /// A connection from a trusted peer without a header is closed (else it is
    /// served with the peer as the client).
    pub required: bool,
    /// A v2 header (16 bytes plus addresses and TLVs) longer than this is refused.
    pub max_header_bytes: usize,
}

/// A v2 header with the largest address block (two Unix paths): 16 + 216.
const MIN_HEADER_BYTES: usize = 232;
/// The v2 length field is 16 bits.
const MAX_HEADER_BYTES: usize = 16 + 65535;

impl Default for ProxyProtocol {
    fn default() -> Self {
        Self {
            trusted: Vec::new(),
            required: true,
            max_header_bytes: 1024,
        }
    }
}

impl ProxyProtocol {
    pub fn enabled(&self) -> bool {
        !self.trusted.is_empty()
    }

    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

pub(super) fn read_proxy_protocol(cx: &mut Cx<'_>, root: &mut Table<'_>) -> ProxyProtocol {
    let d = ProxyProtocol::default();
    let Some(mut t) = root.table(cx, "proxy_protocol") else {
        return d;
    };
    let trusted = t.or(cx, "trusted", d.trusted);
    let required = t.or(cx, "required", d.required);
    let max = at_least(
        cx,
        &mut t,
        "max_header_bytes",
        d.max_header_bytes,
        MIN_HEADER_BYTES,
    );
    let max_header_bytes = if max > MAX_HEADER_BYTES {
        let line = t.line_of(cx, "max_header_bytes");
        let reason = format!("must be at most {MAX_HEADER_BYTES} (a v2 header's limit)");
        cx.error(line, &t.path("max_header_bytes"), reason);
        d.max_header_bytes
    } else {
        max
    };
    t.finish(cx);
    ProxyProtocol {
        trusted,
        required,
        max_header_bytes,
    }
}

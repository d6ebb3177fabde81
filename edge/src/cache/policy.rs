//! HTTP caching rules (RFC 9111) as pure functions: what may be stored, for how
//! long it is fresh, how old it is, and whether a stored response may answer a
//! request. Times are whole seconds since the Unix epoch, passed in by the caller.

use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, DATE, ETAG, EXPIRES, LAST_MODIFIED, PRAGMA, SET_COOKIE, VARY,
};
use http::{HeaderMap, Method, StatusCode};

/// Heuristic freshness never exceeds a day, however old Last-Modified is.
const MAX_HEURISTIC: u64 = 86_400;

/// The directives of one Cache-Control field (request or response). Unknown
/// directives are ignored; the first of duplicated directives wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    /// `Some(None)`: any staleness is accepted.
    pub max_stale: Option<Option<u64>>,
    pub min_fresh: Option<u64>,
    /// Read from `CDN-Cache-Control` (RFC 9213), which then alone governs this
    /// cache: `Cache-Control` and `Expires` are ignored for storing and freshness.
    pub targeted: bool,
}

/// `Surrogate-Control` (W3C Edge Architecture): what CDN-Cache-Control replaced;
/// directives with a `;target` count only when the target is this cache's token.
pub const SURROGATE_CONTROL: http::HeaderName = http::HeaderName::from_static("surrogate-control");

/// `CDN-Cache-Control` (RFC 9213): cache directives for CDNs and reverse proxies.
pub const CDN_CACHE_CONTROL: http::HeaderName = http::HeaderName::from_static("cdn-cache-control");

impl CacheControl {
    /// Every Cache-Control line of `headers`; for a request without Cache-Control,
    /// `Pragma: no-cache` counts as `no-cache` (RFC 9111 5.4).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::parse_field(headers, &CACHE_CONTROL, None);
        if !headers.contains_key(CACHE_CONTROL) {
            let pragma_no_cache = headers
                .get_all(PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(split_list)
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"));
            cc.no_cache |= pragma_no_cache;
        }
        cc
    }

    /// The directives of every line of one Cache-Control-like field.
    /// With `target`, a directive may name the device it is for after a `;`:
    /// those for another device are skipped (Surrogate-Control).
    fn parse_field(headers: &HeaderMap, field: &http::HeaderName, target: Option<&str>) -> Self {
        let mut cc = CacheControl::default();
        let mut seen: Vec<String> = Vec::new();
        for line in headers.get_all(field) {
            let Ok(text) = line.to_str() else { continue };
            for mut part in split_list(text) {
                if let Some(ours) = target {
                    match part.rsplit_once(';') {
                        Some((directive, device)) if device.trim() == ours => part = directive,
                        Some(_) => continue,
                        None => {}
                    }
                }
                let (name, value) = match part.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (part.trim(), None),
                };
                let name = name.to_ascii_lowercase();
                if seen.contains(&name) {
                    continue;
                }
                cc.apply(&name, value);
                seen.push(name);
            }
        }
        cc
    }

    /// The directives that govern this cache for a response: a valid
    /// `CDN-Cache-Control` alone when there is one, else `Surrogate-Control`
    /// (the older, Cache-Control-syntax field for surrogates), else `Cache-Control`.
    pub fn response(resp: &HeaderMap) -> Self {
        Self::targeted(resp)
            .or_else(|| {
                resp.contains_key(&SURROGATE_CONTROL).then(|| Self {
                    targeted: true,
                    ..Self::parse_field(resp, &SURROGATE_CONTROL, Some(super::SURROGATE_TOKEN))
                })
            })
            .unwrap_or_else(|| Self::parse(resp))
    }

    /// `CDN-Cache-Control` when present and a valid Structured Fields dictionary
    /// whose known directives have the right types; `None` otherwise (an invalid
    /// field is ignored whole, RFC 9213 2.1).
    fn targeted(resp: &HeaderMap) -> Option<Self> {
        let mut lines = Vec::new();
        for line in resp.get_all(CDN_CACHE_CONTROL) {
            lines.push(line.to_str().ok()?);
        }
        if lines.is_empty() {
            return None;
        }
        let joined = lines.join(", ");
        let dict: sfv::Dictionary = sfv::Parser::new(&joined).parse().ok()?;
        let mut cc = CacheControl {
            targeted: true,
            ..CacheControl::default()
        };
        for (key, entry) in &dict {
            let sfv::ListEntry::Item(item) = entry else {
                continue;
            };
            let flag = || item.bare_item.as_boolean();
            let secs = || {
                let n = i64::from(item.bare_item.as_integer()?);
                Some(n.clamp(0, 1 << 31).unsigned_abs())
            };
            match key.as_str() {
                "no-store" => cc.no_store = flag()?,
                "no-cache" => cc.no_cache = flag()?,
                "private" => cc.private = flag()?,
                "public" => cc.public = flag()?,
                "must-revalidate" => cc.must_revalidate = flag()?,
                "proxy-revalidate" => cc.proxy_revalidate = flag()?,
                "max-age" => cc.max_age = Some(secs()?),
                "s-maxage" => cc.s_maxage = Some(secs()?),
                "stale-while-revalidate" => cc.stale_while_revalidate = Some(secs()?),
                "stale-if-error" => cc.stale_if_error = Some(secs()?),
                _ => {}
            }
        }
        Some(cc)
    }

    fn apply(&mut self, name: &str, value: Option<&str>) {
        // A delta-seconds that does not parse is read as 0: the response is stale
        // (RFC 9111 4.2.1 allows treating invalid freshness as stale).
        let secs = || value.map_or(0, delta_seconds);
        match name {
            "no-store" => self.no_store = true,
            "no-cache" => self.no_cache = true,
            "private" => self.private = true,
            "public" => self.public = true,
            "must-revalidate" => self.must_revalidate = true,
            "proxy-revalidate" => self.proxy_revalidate = true,
            "must-understand" => self.must_understand = true,
            "only-if-cached" => self.only_if_cached = true,
            "max-age" => self.max_age = Some(secs()),
            "s-maxage" => self.s_maxage = Some(secs()),
            "stale-while-revalidate" => self.stale_while_revalidate = Some(secs()),
            "stale-if-error" => self.stale_if_error = Some(secs()),
            "max-stale" => self.max_stale = Some(value.map(delta_seconds)),
            "min-fresh" => self.min_fresh = Some(secs()),
            _ => {}
        }
    }

    /// Freshness the origin stated (not heuristic).
    fn explicit(&self) -> bool {
        self.max_age.is_some() || self.s_maxage.is_some()
    }

    /// Stale responses may not be served without revalidation (RFC 9111 5.2.2.2,
    /// 5.2.2.8, 5.2.2.10: s-maxage implies proxy-revalidate).
    pub fn no_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some()
    }
}

/// Splits a comma-separated list, keeping commas inside quoted strings.
fn split_list(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// RFC 9111 1.2.2: digits only; too large saturates at 2^31.
fn delta_seconds(v: &str) -> u64 {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    v.parse::<u64>().unwrap_or(u64::MAX).min(1 << 31)
}

/// Statuses whose responses may be given heuristic freshness (RFC 9110 15.1).
fn heuristically_cacheable(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Final statuses this cache understands well enough to store (206 needs range
/// merging it does not do; 304 is a validation answer, not a representation).
/// Those that are not heuristically cacheable need explicit freshness.
fn understood(status: u16) -> bool {
    matches!(
        status,
        200 | 203
            | 204
            | 300
            | 301
            | 302
            | 303
            | 307
            | 308
            | 400
            | 403
            | 404
            | 405
            | 410
            | 414
            | 451
            | 500
            | 501
            | 502
            | 503
            | 504
    )
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    /// Neither fresh for any time nor revalidatable: storing it serves nobody.
    Useless,
}

/// Whether a shared cache may store `status`/`resp` as the answer to a request
/// with `method`/`req` (RFC 9111 3, 3.5).
pub fn storable(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    resp: &HeaderMap,
    allow_set_cookie: bool,
) -> Result<(), NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    let s = status.as_u16();
    let rcc = CacheControl::response(resp);
    let qcc = CacheControl::parse(req);
    // Final statuses only; 206 and 304 need understanding this cache lacks
    // (range merging, validation), and `must-understand` limits storing to
    // statuses it knows. Other unknown statuses may be stored when the origin
    // gave explicit freshness (heuristics never apply to them; below).
    if s < 200 || s == 206 || s == 304 || (rcc.must_understand && !understood(s)) {
        return Err(NotStored::Status);
    }
    // must-understand overrides no-store for statuses the cache understands.
    if (rcc.no_store && !rcc.must_understand) || qcc.no_store {
        return Err(NotStored::NoStore);
    }
    if rcc.private {
        return Err(NotStored::Private);
    }
    if req.contains_key(AUTHORIZATION)
        && !(rcc.public || rcc.s_maxage.is_some() || rcc.must_revalidate)
    {
        return Err(NotStored::Authorization);
    }
    if resp.contains_key(SET_COOKIE) && !allow_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if vary_names(resp).is_none() {
        return Err(NotStored::VaryStar);
    }
    let has_freshness =
        rcc.public || rcc.explicit() || (!rcc.targeted && resp.contains_key(EXPIRES));
    if !has_freshness && !heuristically_cacheable(s) {
        return Err(NotStored::Status);
    }
    let validators = resp.contains_key(ETAG) || resp.contains_key(LAST_MODIFIED);
    let stale_use = rcc.stale_while_revalidate.is_some() || rcc.stale_if_error.is_some();
    if freshness_lifetime(s, resp, 0) == 0 && !validators && !stale_use {
        return Err(NotStored::Useless);
    }
    Ok(())
}

/// The request header names a response varies on, lower-case and sorted;
/// `None` for `Vary: *`, which matches no later request.
pub fn vary_names(resp: &HeaderMap) -> Option<Vec<String>> {
    let mut names = Vec::new();
    for line in resp.get_all(VARY) {
        for name in line.to_str().unwrap_or("*").split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return None;
            }
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names.sort();
    Some(names)
}

/// The value a request has for a Vary-named header, normalised so that
/// insignificant whitespace and line splits compare equal.
pub fn vary_value(req: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<String> = req
        .get_all(name)
        .iter()
        .map(|v| {
            String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// An HTTP date as Unix seconds.
pub fn http_date(v: &http::HeaderValue) -> Option<u64> {
    let t = httpdate::parse_http_date(v.to_str().ok()?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs())
}

fn first_date(h: &HeaderMap, name: http::header::HeaderName) -> Option<Option<u64>> {
    h.get(name).map(http_date)
}

/// Freshness lifetime in seconds (RFC 9111 4.2.1), heuristic where 4.2.2 allows.
/// `response_time` stands in for a missing Date.
pub fn freshness_lifetime(status: u16, resp: &HeaderMap, response_time: u64) -> u64 {
    let cc = CacheControl::response(resp);
    if let Some(s) = cc.s_maxage {
        return s;
    }
    if let Some(m) = cc.max_age {
        return m;
    }
    if cc.targeted {
        // CDN-Cache-Control without a lifetime: nothing else counts.
        return 0;
    }
    let date = first_date(resp, DATE).flatten().unwrap_or(response_time);
    if resp.get_all(EXPIRES).iter().nth(1).is_some() {
        // Two Expires fields contradict each other: treat as already expired.
        return 0;
    }
    if let Some(expires) = first_date(resp, EXPIRES) {
        // An invalid Expires (e.g. "0") means already expired.
        return expires.map_or(0, |e| e.saturating_sub(date));
    }
    // Heuristic freshness: 10% of the time since Last-Modified (RFC 9111 4.2.2);
    // `public` makes other statuses storable, not heuristically fresh.
    if heuristically_cacheable(status) {
        if let Some(Some(lm)) = first_date(resp, LAST_MODIFIED) {
            return (date.saturating_sub(lm) / 10).min(MAX_HEURISTIC);
        }
    }
    0
}

/// What the cache knows of a stored response to judge its age.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Times {
    /// When the request that produced the response was sent.
    pub request_time: u64,
    /// When the response was received.
    pub response_time: u64,
}

/// current_age (RFC 9111 4.2.3).
pub fn current_age(resp: &HeaderMap, t: Times, now: u64) -> u64 {
    Freshness::of(0, resp, t.response_time).current_age(t, now)
}

/// The Age a response arrived with: a list (`7200, 0`, or several Age lines,
/// which are one list) counts by its first member (RFC 9111 5.1); an invalid
/// value is ignored (0).
fn age_value(resp: &HeaderMap) -> u64 {
    let Some(first) = resp.get(AGE) else { return 0 };
    let text = String::from_utf8_lossy(first.as_bytes());
    text.split(',')
        .next()
        .map_or(0, |m| delta_seconds(m.trim()))
}

/// What a stored response's own headers say about its age and freshness,
/// parsed once per entry rather than on every hit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freshness {
    pub cc: CacheControl,
    /// Freshness lifetime in seconds.
    pub lifetime: u64,
    /// Date, or the response time when it has none.
    date: u64,
    /// The Age it arrived with.
    age_value: u64,
}

impl Freshness {
    pub fn of(status: u16, resp: &HeaderMap, response_time: u64) -> Self {
        Self {
            cc: CacheControl::response(resp),
            lifetime: freshness_lifetime(status, resp, response_time),
            date: first_date(resp, DATE).flatten().unwrap_or(response_time),
            age_value: age_value(resp),
        }
    }

    /// current_age (RFC 9111 4.2.3).
    pub fn current_age(&self, t: Times, now: u64) -> u64 {
        let apparent_age = t.response_time.saturating_sub(self.date);
        let response_delay = t.response_time.saturating_sub(t.request_time);
        let corrected_age_value = self.age_value.saturating_add(response_delay);
        let corrected_initial_age = apparent_age.max(corrected_age_value);
        let resident_time = now.saturating_sub(t.response_time);
        corrected_initial_age.saturating_add(resident_time)
    }
}

/// How a stored response may answer a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Fresh and acceptable to the request.
    Fresh,
    /// Stale, but the request accepts it (`max-stale`).
    Stale,
    /// Stale within `stale-while-revalidate`: serve it and refresh in the background.
    StaleWhileRevalidate,
    /// Must be validated with the origin first.
    Revalidate,
}

/// The judgement of RFC 9111 4 (and 4.2.4, 5.2.1, RFC 5861) for one stored
/// response and one request.
pub fn decide(status: u16, resp: &HeaderMap, t: Times, req: &HeaderMap, now: u64) -> Use {
    Freshness::of(status, resp, t.response_time).decide(t, &CacheControl::parse(req), now)
}

impl Freshness {
    /// [`decide`] with the stored side parsed already and the request's
    /// Cache-Control `qcc`.
    pub fn decide(&self, t: Times, qcc: &CacheControl, now: u64) -> Use {
        let rcc = &self.cc;
        if rcc.no_cache || qcc.no_cache {
            return Use::Revalidate;
        }
        let age = self.current_age(t, now);
        let lifetime = self.lifetime;
        if qcc.max_age.is_some_and(|m| age > m) {
            return Use::Revalidate;
        }
        if qcc
            .min_fresh
            .is_some_and(|m| lifetime.saturating_sub(age) < m || age >= lifetime)
        {
            return Use::Revalidate;
        }
        if lifetime > age {
            return Use::Fresh;
        }
        if rcc.no_stale() {
            return Use::Revalidate;
        }
        let staleness = age - lifetime;
        match qcc.max_stale {
            Some(None) => return Use::Stale,
            Some(Some(n)) if staleness <= n => return Use::Stale,
            _ => {}
        }
        if rcc.stale_while_revalidate.is_some_and(|s| staleness <= s) {
            return Use::StaleWhileRevalidate;
        }
        Use::Revalidate
    }
}

/// Whether a stale response may stand in for an origin error (RFC 5861 4).
pub fn stale_if_error(status: u16, resp: &HeaderMap, t: Times, req: &HeaderMap, now: u64) -> bool {
    let rcc = CacheControl::response(resp);
    if rcc.no_stale() || rcc.no_cache {
        return false;
    }
    let age = current_age(resp, t, now);
    let lifetime = freshness_lifetime(status, resp, t.response_time);
    let staleness = age.saturating_sub(lifetime);
    let allowed = rcc
        .stale_if_error
        .max(CacheControl::parse(req).stale_if_error);
    allowed.is_some_and(|s| staleness <= s)
}

/// How long a layer should keep a response: while fresh, plus its stale
/// allowances, plus `keep_stale` when it has validators (a stale response with a
/// validator still saves a full fetch); never longer than `max`.
pub fn retention(
    status: u16,
    resp: &HeaderMap,
    t: Times,
    now: u64,
    keep_stale: u64,
    max: u64,
) -> u64 {
    let rcc = CacheControl::response(resp);
    let age = current_age(resp, t, now);
    let fresh_left = freshness_lifetime(status, resp, t.response_time).saturating_sub(age);
    let stale = rcc
        .stale_while_revalidate
        .unwrap_or(0)
        .max(rcc.stale_if_error.unwrap_or(0));
    let validators = resp.contains_key(ETAG) || resp.contains_key(LAST_MODIFIED);
    let keep = if validators { keep_stale } else { 0 };
    fresh_left
        .saturating_add(stale.max(keep))
        .clamp(1, max.max(1))
}

/// Methods that are not safe (RFC 9110 9.2.1) invalidate what is stored for their target.
pub fn invalidates(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests;

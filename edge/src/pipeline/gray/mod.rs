//! Gray release, the part of `route` that picks a split route's version and
//! the part of `respond` that feeds the rollback guard.
//!
//! Choice, first that applies: a rolled-back split sends everything to the
//! baseline; a trusted peer's version tag is kept (the next hop stays in the
//! caller's cohort); the first matching target rule; the weights — a hash
//! bucket of the cohort key when the split has one (the same on every edge,
//! nothing shared), else a spread of successive requests. The chosen tag
//! replaces whatever the request carried in the version header (and, with
//! `version_baggage`, in that W3C baggage member: a trusted peer's is honoured
//! after the header, the other members travel on untouched).
//!
//! A split's live state (weights in effect, the guard's window, rolled back
//! or not) outlives reloads, kept in `Store` by route name, while the route's
//! split stays the same; a changed split starts afresh. The admin API sets the
//! weights through `Store::set_weights`, which also resets the guard.

mod baggage;
mod guard;
mod steps;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Request, StatusCode};

use guard::{Decision, Window};
use steps::Steps;

use super::headers;
use crate::body::Body;
use crate::config::{self, Match, StickyKey};
use crate::locality::Geo;
use crate::metrics::Metrics;

/// One split route, built with the config.
pub struct Split {
    route: String,
    versions: Vec<Version>,
    key: Option<StickyKey>,
    targets: Vec<config::Target>,
    header: HeaderName,
    /// The baggage member carrying the tag too, when on.
    baggage: Option<String>,
    /// Spreads keyless requests over the weights.
    spread: AtomicU64,
    live: Arc<Live>,
}

struct Version {
    pool: usize,
    tag: HeaderValue,
    label: String,
}

/// A split's state: kept across reloads while its split is unchanged.
pub struct Live {
    split: config::Split,
    /// The weights in effect: the config's, or what the admin API set.
    weights: Vec<AtomicU32>,
    started: Instant,
    /// `Some` with a guard.
    window: Option<Mutex<Window>>,
    rolled_back: AtomicBool,
    /// Why the guard rolled the canary back, for the admin API.
    why: Mutex<Option<String>>,
    /// Progressive steps, when the split has them.
    steps: Option<Mutex<Steps>>,
    /// When the window was last judged (µs since `started`): at most once a
    /// millisecond, not on every answer.
    judged: AtomicU64,
}

/// The guards of every split route, by route name; outlives reloads.
#[derive(Default)]
pub struct Store(Mutex<HashMap<String, Arc<Live>>>);

/// A split as the admin API shows it.
pub struct View {
    /// (tag, pool, weight in effect) of each version, baseline first.
    pub versions: Vec<(String, String, u32)>,
    pub guarded: bool,
    pub rolled_back: bool,
    pub why: Option<String>,
    /// With progressive steps: the step in effect (from 1; 0 below the first)
    /// and how many there are.
    pub step: Option<(usize, usize)>,
}

/// What `route` chose, for `respond`.
#[derive(Clone, Copy)]
pub struct Chosen<'p> {
    split: &'p Split,
    version: usize,
}

impl Split {
    /// `pool_index` maps a pool name to its slot (config validation made sure it exists).
    pub fn new(
        route: &str,
        split: &config::Split,
        pool_index: impl Fn(&str) -> Option<usize>,
        store: &Store,
    ) -> Option<Self> {
        let mut versions = Vec::new();
        for v in &split.versions {
            versions.push(Version {
                pool: pool_index(&v.pool)?,
                tag: HeaderValue::from_str(&v.tag).ok()?,
                label: v.tag.clone(),
            });
        }
        let live = store.live(route, split);
        Some(Self {
            route: route.to_owned(),
            versions,
            key: split.key.clone(),
            targets: split.targets.clone(),
            header: HeaderName::from_bytes(split.header.as_bytes()).ok()?,
            baggage: split.baggage.clone(),
            spread: AtomicU64::new(0),
            live,
        })
    }

    /// Picks the request's version (see the module doc), sets its tag in the
    /// version header, and returns it with its pool's slot.
    pub fn choose(
        &self,
        req: &mut Request<Body>,
        client: IpAddr,
        from_trusted: bool,
        geo: Option<&Geo>,
    ) -> (Chosen<'_>, usize) {
        let version = self.pick(req, client, from_trusted, geo);
        let tag = &self.versions[version];
        req.headers_mut()
            .insert(self.header.clone(), tag.tag.clone());
        if let Some(key) = &self.baggage {
            baggage::set_member(req.headers_mut(), key, &tag.label);
        }
        let chosen = Chosen {
            split: self,
            version,
        };
        (chosen, self.versions[version].pool)
    }

    fn rolled_back(&self) -> bool {
        self.live.rolled_back.load(Ordering::Relaxed)
    }

    fn pick(&self, req: &Request<Body>, client: IpAddr, trusted: bool, geo: Option<&Geo>) -> usize {
        if self.rolled_back() {
            return 0;
        }
        let h = req.headers();
        if trusted {
            if let Some(v) = h.get(&self.header) {
                if let Some(i) = self.versions.iter().position(|x| x.tag == v) {
                    return i;
                }
            }
            let carried = self.baggage.as_deref().and_then(|k| baggage::member(h, k));
            if let Some(v) = carried {
                if let Some(i) = self.versions.iter().position(|x| x.label == v) {
                    return i;
                }
            }
        }
        let cohort = self.cohort(h, client);
        for t in &self.targets {
            let hit = match &t.when {
                Match::Header(name, value) => h
                    .get_all(name.as_str())
                    .iter()
                    .any(|v| v.as_bytes() == value.as_bytes()),
                Match::Cookie(name, value) => {
                    headers::cookie(h, name).is_some_and(|v| v == value.as_bytes())
                }
                Match::Region(region) => {
                    geo.is_some_and(|g| g.name(g.place(client).client) == region)
                }
                Match::Bucket(from, to) => cohort.is_some_and(|c| {
                    let b = (c % u64::from(config::BUCKETS)) as u8;
                    (*from..=*to).contains(&b)
                }),
            };
            if hit {
                return t.version;
            }
        }
        let weights = || self.live.weights.iter().map(|w| w.load(Ordering::Relaxed));
        let total = weights().map(u64::from).sum::<u64>().max(1);
        let point = match cohort {
            // Other bits than the bucket rules': weights and buckets stay independent.
            Some(c) => (c >> 16) % total,
            None => spread(self.spread.fetch_add(1, Ordering::Relaxed)) % total,
        };
        weighted(weights(), point)
    }

    /// The cohort key's stable hash: the same on every edge for the same user.
    fn cohort(&self, h: &http::HeaderMap, client: IpAddr) -> Option<u64> {
        let ip;
        let user: &[u8] = match self.key.as_ref()? {
            StickyKey::Header(name) => h.get(name.as_str())?.as_bytes(),
            StickyKey::ClientIp => {
                ip = match client {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                    IpAddr::V6(v6) => v6.octets(),
                };
                &ip
            }
            StickyKey::Cookie => return None,
        };
        Some(cohort_hash(&self.route, user))
    }
}

/// The version whose cumulative weight range holds `point` (`point` < the total).
fn weighted(weights: impl Iterator<Item = u32>, point: u64) -> usize {
    let mut upto = 0u64;
    let mut last = 0;
    for (i, w) in weights.enumerate() {
        upto += u64::from(w);
        if w > 0 {
            last = i;
        }
        if point < upto {
            return i;
        }
    }
    last
}

/// FNV-1a of route and user, then MurmurHash3's finalizer: stable across
/// processes and releases (no random seed), and well spread in the low bits.
pub fn cohort_hash(route: &str, user: &[u8]) -> u64 {
    let mut bytes = Vec::with_capacity(route.len() + 1 + user.len());
    bytes.extend_from_slice(route.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(user);
    spread(upstream::hash_ring::key(&bytes))
}

fn spread(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

impl Store {
    /// The route's state: the one it had when its split is unchanged, else a fresh one.
    fn live(&self, route: &str, split: &config::Split) -> Arc<Live> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kept) = map.get(route).filter(|k| k.split == *split) {
            return Arc::clone(kept);
        }
        let fresh = Arc::new(Live {
            split: split.clone(),
            weights: match &split.steps {
                Some((steps, _)) => {
                    let first = steps.first().copied().unwrap_or(100);
                    vec![AtomicU32::new(100 - first), AtomicU32::new(first)]
                }
                None => split
                    .versions
                    .iter()
                    .map(|v| AtomicU32::new(v.weight))
                    .collect(),
            },
            started: Instant::now(),
            window: split
                .guard
                .as_ref()
                .map(|g| Mutex::new(Window::new(g.clone(), split.versions.len()))),
            rolled_back: AtomicBool::new(false),
            why: Mutex::new(None),
            steps: split.steps.as_ref().map(|(steps, after)| {
                Mutex::new(Steps::new(steps.clone(), *after, Duration::ZERO))
            }),
            judged: AtomicU64::new(0),
        });
        if map.insert(route.to_owned(), Arc::clone(&fresh)).is_some() {
            tracing::info!(route, "split changed: its weights and guard start afresh");
        }
        fresh
    }

    /// The split route `route` as it runs now.
    pub fn view(&self, route: &str) -> Option<View> {
        let live = {
            let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.get(route)?)
        };
        let versions = live
            .split
            .versions
            .iter()
            .zip(&live.weights)
            .map(|(v, w)| (v.tag.clone(), v.pool.clone(), w.load(Ordering::Relaxed)))
            .collect();
        let why = live
            .why
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let step = live
            .steps
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).position());
        Some(View {
            versions,
            guarded: live.window.is_some(),
            rolled_back: live.rolled_back.load(Ordering::Relaxed),
            why,
            step,
        })
    }

    /// Sets the weights of `route`'s versions (by tag; versions not named keep
    /// theirs) and resets its guard: a fresh window, not rolled back.
    pub fn set_weights(
        &self,
        route: &str,
        weights: &[(String, u32)],
        m: &Metrics,
    ) -> Result<(), String> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let live = map
            .get(route)
            .ok_or_else(|| format!("no split route named {route:?}"))?;
        let tags: Vec<&str> = live.split.versions.iter().map(|v| v.tag.as_str()).collect();
        let mut next: Vec<u32> = live
            .weights
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        for (tag, w) in weights {
            let i = tags
                .iter()
                .position(|t| t == tag)
                .ok_or_else(|| format!("no version tagged {tag:?} (the split has {tags:?})"))?;
            next[i] = *w;
        }
        if next.iter().all(|w| *w == 0) {
            return Err("the weights would add up to 0".to_owned());
        }
        for (a, w) in live.weights.iter().zip(&next) {
            a.store(*w, Ordering::Relaxed);
        }
        if let Some(steps) = &live.steps {
            let canary = next.get(1).copied().unwrap_or(0);
            let mut steps = steps.lock().unwrap_or_else(PoisonError::into_inner);
            steps.set(canary, live.started.elapsed());
            m.canary_step(route, steps.position().0, canary);
        }
        if let Some(window) = &live.window {
            let g = live.split.guard.clone().unwrap_or_default();
            *window.lock().unwrap_or_else(PoisonError::into_inner) = Window::new(g, next.len());
            live.rolled_back.store(false, Ordering::Relaxed);
            *live.why.lock().unwrap_or_else(PoisonError::into_inner) = None;
            m.canary_state(route, false);
        }
        tracing::info!(route, weights = ?next, "split weights set by the admin API; the guard starts afresh");
        Ok(())
    }

    /// Forgets the guards of routes no longer split (after a reload).
    pub fn retain(&self, routes: &[&str]) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|name, _| routes.contains(&name.as_str()));
    }
}

impl Chosen<'_> {
    /// Counts the request by version and hands its answer to the guard: an
    /// error is a 5xx or an upstream failure (connect, reset, timeout).
    pub fn answered(&self, status: StatusCode, upstream_failed: bool, head: Duration, m: &Metrics) {
        let s = self.split;
        m.route_version(&s.route, &s.versions[self.version].label);
        let g = &s.live;
        let Some(window) = &g.window else { return };
        if g.rolled_back.load(Ordering::Relaxed) {
            m.canary_state(&s.route, true);
            return;
        }
        let now = g.started.elapsed();
        let error = upstream_failed || status.is_server_error();
        let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
        window.record(now, self.version, error, head);
        let us = now.as_micros() as u64;
        if us.saturating_sub(g.judged.load(Ordering::Relaxed)) < 1000 {
            return;
        }
        g.judged.store(us, Ordering::Relaxed);
        let decision = window.judge(now);
        drop(window);
        match decision {
            Decision::Breach { version, why } => {
                if !g.rolled_back.swap(true, Ordering::Relaxed) {
                    let tag = &s.versions[version].label;
                    tracing::warn!(route = %s.route, version = %tag, "canary rolled back: {why}; its weight is 0 until the split changes");
                    let why = format!("{tag}: {why}");
                    *g.why.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
                    m.canary_rollback(&s.route);
                }
            }
            clean => {
                m.canary_state(&s.route, false);
                self.step_up(&clean, now, m);
            }
        }
    }

    /// With progressive steps, moves the canary up when the guard has been
    /// clean long enough on the step in effect.
    fn step_up(&self, decision: &Decision, now: Duration, m: &Metrics) {
        let s = self.split;
        let Some(steps) = &s.live.steps else { return };
        let mut steps = steps.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = steps.judged(decision, now) {
            s.live.weights[0].store(100 - w, Ordering::Relaxed);
            s.live.weights[1].store(w, Ordering::Relaxed);
            let (at, of) = steps.position();
            tracing::info!(route = %s.route, step = at, of, weight = w, "canary clean for its step: moved up");
        }
        let weight = s.live.weights[1].load(Ordering::Relaxed);
        m.canary_step(&s.route, steps.position().0, weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_cover_their_share_of_points() {
        let w = [95u32, 5];
        assert_eq!(weighted(w.iter().copied(), 0), 0);
        assert_eq!(weighted(w.iter().copied(), 94), 0);
        assert_eq!(weighted(w.iter().copied(), 95), 1);
        assert_eq!(weighted(w.iter().copied(), 99), 1);
        // A zero weight never wins.
        assert_eq!(weighted([0u32, 10].into_iter(), 0), 1);
        assert_eq!(weighted([10u32, 0].into_iter(), 9), 0);
    }

    #[test]
    fn cohorts_are_stable_and_spread() {
        assert_eq!(cohort_hash("api", b"user-1"), cohort_hash("api", b"user-1"));
        assert_ne!(cohort_hash("api", b"user-1"), cohort_hash("web", b"user-1"));
        // Pinned value: a change here moves users between cohorts on upgrade.
        assert_eq!(cohort_hash("api", b"user-1"), 0xd45e_315b_7b67_68bd);
        let mut buckets = [0u32; 100];
        for i in 0..10_000 {
            buckets[(cohort_hash("api", format!("u{i}").as_bytes()) % 100) as usize] += 1;
        }
        assert!(buckets.iter().all(|b| (50..150).contains(b)), "{buckets:?}");
    }
}

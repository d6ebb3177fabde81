//! Composition: build the pipeline from config, bind every listener, run until a
//! signal, then drain.
//!
//! Long (past 700 lines): reload and its restart-only checks live beside
//! start, as both read the same shared state. The session ticket setup
//! (`build_tickets`, `ticket_context`, the Redis key loop's start) is the next
//! to move out, next to `tls::Sessions`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cache::Cache;
use crate::config::{self, Config};
use crate::listener::{self, admin, quic, tcp::TcpServer, BindError, Shared};
use crate::local_ca::LocalCa;
use crate::metrics::Metrics;
use crate::pipeline::Proxy;
use crate::shared::Redis;
use crate::start::StartError as Error;
use crate::tls::{self, CertResolver};

/// The shared Redis client, built once at start (a reload must not drop its
/// connection) and only when a feature that uses it is on; `[redis]` changes
/// need a restart.
fn build_redis(config: &Config, metrics: &Metrics) -> Result<Option<Arc<Redis>>, Error> {
    let Some(r) = &config.redis else {
        return Ok(None);
    };
    let global_limits = crate::pipeline::RateLimitRules::any_global(&config.rate_limits);
    let cache_l2 = config.cache.enabled && config.cache.l2;
    let shared_sticky = config.pools.iter().any(|p| {
        p.sticky
            .as_ref()
            .is_some_and(|s| s.shared && s.key != config::StickyKey::Cookie)
    });
    // Replicas share one ACME certificate and take turns ordering it.
    let shared_acme = config.acme.is_some();
    let shared_tickets = config.tls.ticket_keys == config::TicketKeys::Redis;
    if !(cache_l2 || global_limits || shared_sticky || shared_acme || shared_tickets) {
        tracing::info!(redis = %r.describe(), "redis configured but unused (no feature that shares state is on)");
        return Ok(None);
    }
    let redis = Redis::new(r, metrics.registry())
        .map_err(|e| Error::Setup(format!("redis {}: {e}", r.describe())))?;
    Ok(Some(redis))
}

/// The access log's writer, started once and kept across reloads (`[log]`
/// changes need a restart); `None` when it is off.
fn build_access_log(
    config: &Config,
    metrics: &Metrics,
) -> Result<Option<Arc<crate::access_log::AccessLog>>, Error> {
    use std::io::IsTerminal as _;
    let format = config
        .log
        .access
        .unwrap_or(if std::io::stdout().is_terminal() {
            config::AccessFormat::Text
        } else {
            config::AccessFormat::Json
        });
    if format == config::AccessFormat::Off {
        return Ok(None);
    }
    let log = crate::access_log::AccessLog::start(
        format,
        config.log.access_file.clone(),
        metrics.registry(),
    )
    .map_err(|e| Error::Setup(format!("access log: {e}")))?;
    Ok(Some(log))
}

/// The cache store, built once at start and kept across reloads (a reload must
/// not empty L1 or drop the Redis connection); `[cache]` changes need a restart.
fn build_cache(
    config: &Config,
    redis: Option<&Arc<Redis>>,
    metrics: &Metrics,
) -> Result<Option<Arc<Cache>>, Error> {
    if !config.cache.enabled {
        return Ok(None);
    }
    let l2 = redis.filter(|_| config.cache.l2).cloned();
    let layers = match &l2 {
        Some(r) => format!("L1 + L2 on {}", r.name()),
        None => "L1 only".to_owned(),
    };
    let cache = Cache::new(&config.cache, l2, metrics.registry())
        .map_err(|e| Error::Setup(format!("cache: {e}")))?;
    tracing::info!("cache enabled: {layers}");
    Ok(Some(cache))
}

/// The session ticket encrypter for `tls.ticket_keys` (`None` when unset:
/// in-process ticket keys, `tls::local_tickets`), and in Redis mode the loop
/// that keeps its keys in step with the other replicas', to be spawned.
fn build_tickets(
    config: &Config,
    redis: Option<&Arc<Redis>>,
    metrics: &Metrics,
) -> Result<Option<Tickets>, Error> {
    let metrics_err = |e: prometheus::Error| Error::Setup(format!("ticket metrics: {e}"));
    let lifetime = u32::try_from(config.tls.ticket_rotation.as_secs()).unwrap_or(u32::MAX);
    let context = ticket_context(config);
    let registry = metrics.registry();
    match &config.tls.ticket_keys {
        config::TicketKeys::Local => Ok(None),
        config::TicketKeys::File { path, keys } => {
            let t =
                tls::Ticketer::new(keys, 0, lifetime, context, registry).map_err(metrics_err)?;
            tracing::info!(
                "session tickets: {} keys from {}",
                keys.len(),
                path.display()
            );
            Ok(Some((t, None)))
        }
        config::TicketKeys::Redis => {
            let redis = redis
                .cloned()
                .ok_or_else(|| Error::Setup("tls.ticket_keys = \"redis\" needs [redis]".into()))?;
            // Our own key until the shared set is read (and while Redis is away).
            let t = tls::Ticketer::new(&[], 0, lifetime, context, registry).map_err(metrics_err)?;
            let first = t
                .random_key()
                .ok_or_else(|| Error::Setup("no randomness for a ticket key".into()))?;
            t.replace(std::slice::from_ref(&first), 0);
            let keys = crate::shared::tickets::SharedTicketKeys::new(
                redis,
                config.tls.ticket_rotation,
                registry,
            )
            .map_err(metrics_err)?;
            Ok(Some((t, Some((keys, first)))))
        }
    }
}

/// The Redis-shared ticket key loop and the key serving until it has read the set.
type SharedTickets = (crate::shared::tickets::SharedTicketKeys, config::TicketKey);
/// The encrypter, and in Redis mode the loop that feeds it.
type Tickets = (Arc<tls::Ticketer>, Option<SharedTickets>);

/// What a ticket is bound to besides its key: the client-certificate policy
/// (mode and CA bundle), so a session made where no certificate was asked for
/// does not resume on an edge that requires one (rustls leaves that to us).
fn ticket_context(config: &Config) -> Vec<u8> {
    use sha2::Digest as _;
    let Some(auth) = &config.tls.client_auth else {
        return b"client_auth=none".to_vec();
    };
    let mut context = format!("client_auth={:?};ca=", auth.mode).into_bytes();
    match std::fs::read(&auth.ca) {
        Ok(ca) => context.extend(sha2::Sha256::digest(ca)),
        Err(_) => context.extend(auth.ca.display().to_string().into_bytes()),
    }
    context
}

/// Produces a fresh config on SIGHUP: the file read again, with the same flags
/// applied on top.
pub type Reloader = Arc<dyn Fn() -> Result<Config, config::ConfigErrors> + Send + Sync>;

/// Runs the edge until SIGTERM or SIGINT, then drains. SIGHUP reloads through
/// `reload` (when the edge was started from a file).
pub async fn run(config: Config, reload: Option<Reloader>) -> Result<(), Error> {
    let proxy = Proxy::build(&config).await?;
    // Bind everything before serving anything, so a port in use fails cleanly.
    let tls_bound = config
        .listen
        .iter()
        .map(|a| listener::bind_tcp_udp(*a))
        .collect::<Result<Vec<_>, _>>()?;
    let http = config
        .http_listen
        .iter()
        .map(|a| listener::bind_tcp(*a))
        .collect::<Result<Vec<_>, _>>()?;
    let admin_listener = config.admin.map(listener::bind_tcp).transpose()?;

    // The resolver lives as long as the process (a reload swaps the certificates
    // inside it): the Arc is leaked so each TLS connection's SNI can refer to it
    // without a count (see `tls::Sni`).
    let certs = initial_certs(&config)?;
    let resolver: &'static Arc<CertResolver> =
        Box::leak(Box::new(Arc::new(CertResolver::new(certs))));

    let metrics = Metrics::new().map_err(|e| Error::Setup(format!("metrics: {e}")))?;
    let redis = build_redis(&config, &metrics)?;
    let tickets = build_tickets(&config, redis.as_ref(), &metrics)?;
    let acme = build_acme(&config, resolver, redis.clone(), &metrics)?;
    metrics.cert_expiries(&resolver.expiries());
    let cache = build_cache(&config, redis.as_ref(), &metrics)?;
    // Built even without rules, so a reload that adds some has counters (and
    // the Redis of start: a `global` rule added by reload without it counts locally).
    let limits = crate::pipeline::RateLimitStore::new(redis.clone(), metrics.registry())
        .map_err(|e| Error::Setup(format!("rate limits: {e}")))?;
    let access_log = build_access_log(&config, &metrics)?;
    let forecast = config
        .forecast
        .as_ref()
        .map(|f| crate::forecast::Forecast::new(f, metrics.registry()))
        .transpose()
        .map_err(|e| Error::Setup(format!("forecast metrics: {e}")))?;
    listener::slots::raise_nofile_limit();
    let upgrades = listener::upgrades::Upgrades::new(config.alt_svc.max_age, metrics.registry())
        .map_err(|e| Error::Setup(format!("metrics: {e}")))?;
    let (reload_requests, mut reload_asked) = tokio::sync::mpsc::channel(4);
    let mut listeners = Vec::new();
    for (tcp, _) in &tls_bound {
        let addr = local(tcp)?;
        listeners.extend([("https", addr), ("h3", addr)]);
    }
    for l in &http {
        listeners.push(("http", local(l)?));
    }
    if let Some(l) = &admin_listener {
        listeners.push(("admin", local(l)?));
    }
    let shared = Arc::new(Shared {
        proxy: ArcSwap::from_pointee(
            proxy
                .with_cache(cache.clone())
                .with_rate_limits(Some(limits))
                .with_redis(redis.clone())
                .with_access_log(access_log)
                .with_forecast(forecast.clone()),
        ),
        metrics,
        cache,
        draining: CancellationToken::new(),
        withdrawn: CancellationToken::new(),
        tasks: TaskTracker::new(),
        slots: listener::slots::Slots::new(&config),
        overload: listener::overload::Overload::new(config.limits.memory_high),
        upgrades,
        reload_requests,
        listeners,
        started: std::time::Instant::now(),
        loaded: ArcSwap::from_pointee(listener::Loaded {
            config: config.clone(),
            restart_pending: Vec::new(),
        }),
        config,
        certs: Some(resolver.as_ref()),
        tickets: tickets.as_ref().map(|(t, _)| t.clone()),
    });
    let tls_alpn = shared
        .config
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == config::AcmeChallenge::TlsAlpn01);
    let clients = match &shared.config.tls.client_auth {
        Some(auth) => Some(tls::client_verifier(auth)?),
        None => None,
    };
    // Both listeners resume sessions the same way: 0-RTT needs the
    // single-use session cache; otherwise stateless tickets.
    let sessions = if shared.config.tls.early_data {
        tls::Sessions::EarlyData
    } else {
        tls::Sessions::Tickets(shared.tickets.clone())
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::tcp_config(
        resolver.clone(),
        tls_alpn,
        clients.clone(),
        &sessions,
    )?);
    let mut loops = tokio::task::JoinSet::new();
    let mut endpoints = Vec::new();
    // Redirects go to the first TLS address's port.
    let mut https_port = None;
    for (tcp, udp) in tls_bound {
        let addr = local(&tcp)?;
        https_port.get_or_insert(addr.port());
        endpoints.push(quic::endpoint(
            udp,
            resolver.clone(),
            clients.clone(),
            &sessions,
            &shared,
        )?);
        let alt_svc = alt_svc(&shared.config, addr.port());
        let server = TcpServer::new(shared.clone(), Some(acceptor.clone()), alt_svc);
        loops.spawn(Arc::new(server).run(tokio_listener(tcp, addr)?));
        tracing::info!("listening kind=https addr={addr}");
        tracing::info!("listening kind=h3 addr={addr}");
    }
    loops.spawn(quic::run(endpoints, shared.clone()));
    for l in http {
        let addr = local(&l)?;
        // Plaintext answers advertise h3 on the first TLS address's port.
        let alt_svc = https_port.and_then(|p| alt_svc(&shared.config, p));
        let mut server = TcpServer::new(shared.clone(), None, alt_svc);
        if shared.config.http_mode == config::HttpMode::Redirect {
            server.redirect = https_port;
        }
        server.acme = acme.as_ref().map(|(m, _)| m.challenges.clone());
        let server = Arc::new(server);
        loops.spawn(server.clone().run(tokio_listener(l, addr)?));
        tracing::info!("listening kind=http addr={addr}");
        if server.redirect.is_some() {
            tracing::info!("http_mode redirect: plaintext requests get 308 to https");
        }
    }
    if let Some(l) = admin_listener {
        let addr = local(&l)?;
        loops.spawn(admin::run(tokio_listener(l, addr)?, shared.clone()));
        tracing::info!("listening kind=admin addr={addr}");
    }
    spawn_overload_guard(&shared);
    if let Some((ticketer, Some((keys, first)))) = tickets {
        let stop = shared.draining.clone();
        tokio::spawn(keys.run(first, move |k, i| ticketer.replace(k, i), stop));
        tracing::info!(
            "session tickets: keys shared through redis, rotated every {:?}",
            shared.config.tls.ticket_rotation
        );
    }
    if let Some(f) = forecast {
        let (pools, stop) = (shared.clone(), shared.draining.clone());
        tokio::spawn(f.run(move || pools.proxy.load().pools().to_vec(), stop));
        tracing::info!(
            "forecast on: request rate per pool in buckets of {:?}",
            shared
                .config
                .forecast
                .as_ref()
                .map(|f| f.interval)
                .unwrap_or_default()
        );
    }
    if let Some((manager, not_after)) = acme {
        let (shared, certs) = (shared.clone(), resolver.as_ref());
        let stop = shared.draining.clone();
        tokio::spawn(async move {
            let on_new = || shared.metrics.cert_expiries(&certs.expiries());
            manager.run(certs, not_after, on_new, stop).await;
        });
    }
    tracing::info!("edge ready");
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);

    wait_for_signals(&shared, reload.as_ref(), &mut reload_asked).await;
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    withdraw(&shared).await;
    let grace = shared.config.drain.grace;
    tracing::info!("draining: no new connections; open ones finish within {grace:?}");
    shared.metrics.set_drain_phase(2);
    shared.draining.cancel();
    while loops.join_next().await.is_some() {}
    shared.tasks.close();
    if tokio::time::timeout(grace, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain grace over; closing the remaining connections");
    }
    if let Some(log) = shared.proxy.load().access_log() {
        log.settle(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// The first step of leaving: `/healthz` answers 503 for `drain.delay` while
/// every listener still serves, so GeoDNS health checks and load balancers
/// take the edge out of rotation before it stops accepting. A second SIGTERM
/// or SIGINT cuts the wait short.
async fn withdraw(shared: &Shared) {
    use tokio::signal::unix::{signal, SignalKind};
    let delay = shared.config.drain.delay;
    if delay.is_zero() {
        return;
    }
    shared.withdrawn.cancel();
    shared.metrics.set_drain_phase(1);
    tracing::info!(
        "withdrawing: /healthz answers 503 for {delay:?} while traffic is still served; SIGTERM again to stop at once"
    );
    let again = async {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {},
                    _ = i.recv() => {},
                }
            }
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        () = again => tracing::info!("second signal: stopping now"),
    }
}

/// The ACME manager and the stored certificate's notAfter, if one was found.
type AcmeStart = (Arc<crate::acme::Manager>, Option<i64>);

/// The ACME manager when `[acme]` is on, with the stored certificate (if any)
/// already pinned in `resolver` and its notAfter; the resolver answers
/// TLS-ALPN-01 through it from now on.
fn build_acme(
    config: &Config,
    resolver: &CertResolver,
    redis: Option<Arc<Redis>>,
    metrics: &Metrics,
) -> Result<Option<AcmeStart>, Error> {
    let Some(acme) = &config.acme else {
        return Ok(None);
    };
    let manager = crate::acme::Manager::new(acme.clone(), redis, metrics.registry())
        .map_err(|e| Error::Setup(format!("acme metrics: {e}")))?;
    let manager = Arc::new(manager);
    resolver.answer_challenges_with(manager.challenges.clone());
    let stored = manager.stored();
    let not_after = stored.as_ref().and_then(tls::Loaded::not_after);
    if let Some(loaded) = stored {
        resolver.pin_first(loaded);
        tracing::info!(
            "acme: serving the stored certificate for {:?} from {}",
            acme.domains,
            acme.storage.display()
        );
    }
    Ok(Some((manager, not_after)))
}

/// The certificates to serve at start: the configured files, else the local
/// CA's leaf from the state dir (made on the first start), else, when the state
/// dir cannot be written, a throwaway self-signed one.
fn initial_certs(config: &Config) -> Result<tls::Loaded, Error> {
    if !config.tls.certificates.is_empty() {
        return Ok(tls::Loaded::read(&config.tls.certificates)?);
    }
    let local = LocalCa::in_state_dir(&config.state_dir);
    match local.load_or_create() {
        Ok((loaded, created)) => {
            let how = if created { "generated" } else { "kept" };
            tracing::info!(
                "no certificate configured: serving localhost from the local CA ({how}); \
                 trust {} (e.g. curl --cacert {})",
                local.ca_cert.display(),
                local.ca_cert.display()
            );
            Ok(loaded)
        }
        Err(e) => {
            let chain = crate::pipeline::error_chain(&e);
            tracing::warn!(
                "no certificate configured and no local CA in {}: {e}{chain}; \
                 serving a throwaway self-signed certificate",
                config.state_dir.display()
            );
            Ok(tls::Loaded::self_signed()?)
        }
    }
}

/// The certificates a reload serves, read afresh: the configured files (renewed
/// in place by whatever manages them), else the local CA's leaf.
fn read_certs(config: &Config) -> Result<tls::Loaded, tls::TlsError> {
    if config.tls.certificates.is_empty() {
        let local = LocalCa::in_state_dir(&config.state_dir);
        return local.load_or_create().map(|(loaded, _)| loaded);
    }
    tls::Loaded::read(&config.tls.certificates)
}

/// Watches RSS against `limits.memory_high` until draining starts (when set).
fn spawn_overload_guard(shared: &Arc<Shared>) {
    if shared.config.limits.memory_high.is_none() {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let stop = shared.draining.clone();
        shared.overload.run(&shared.metrics, stop).await;
    });
}

fn alt_svc(config: &Config, port: u16) -> Option<HeaderValue> {
    if !config.alt_svc.enabled {
        return None;
    }
    let value = format!("h3=\":{port}\"; ma={}", config.alt_svc.max_age.as_secs());
    HeaderValue::from_str(&value).ok()
}

fn local(l: &std::net::TcpListener) -> Result<SocketAddr, Error> {
    l.local_addr()
        .map_err(|e| Error::Setup(format!("local address: {e}")))
}

fn tokio_listener(
    l: std::net::TcpListener,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::from_std(l).map_err(|source| {
        Error::Bind(BindError {
            addr,
            transport: "tcp",
            source,
        })
    })
}

/// Returns on SIGTERM or SIGINT; reloads on every SIGHUP meanwhile.
async fn wait_for_signals(
    shared: &Shared,
    reload: Option<&Reloader>,
    asked: &mut tokio::sync::mpsc::Receiver<listener::ReloadRequest>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    );
    let (mut term, mut int, mut hup, mut usr1) = match signals {
        (Ok(t), Ok(i), Ok(h), Ok(u)) => (t, i, h, u),
        (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
            tracing::error!(error = %e, "cannot watch for signals; stop with SIGKILL");
            return std::future::pending::<()>().await;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                if reload_now(shared, reload).await.is_err() && reload.is_none() {
                    tracing::warn!("SIGHUP: started without a config file, nothing to reload");
                }
            }
            Some(reply) = asked.recv() => {
                tracing::info!("reload asked over the admin API");
                let _ = reply.send(reload_now(shared, reload).await);
            }
            _ = usr1.recv() => match shared.proxy.load().access_log() {
                Some(log) => {
                    log.reopen();
                    tracing::info!("SIGUSR1: reopening the access log");
                }
                None => tracing::info!("SIGUSR1: no access log to reopen"),
            },
        }
    }
}

/// One reload (SIGHUP or `POST /reload`), told to systemd around it.
async fn reload_now(shared: &Shared, reload: Option<&Reloader>) -> Result<(), String> {
    let Some(reload) = reload else {
        return Err("started without a config file: nothing to reload".to_owned());
    };
    let mut reloading = vec![sd_notify::NotifyState::Reloading];
    // systemd 253+ (Type=notify-reload) wants the time with it.
    reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
    notify_systemd(&reloading);
    let result = apply_reload(shared, reload).await;
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    result
}

/// Tells systemd (`Type=notify`, `$NOTIFY_SOCKET`) where edge is: ready,
/// reloading, stopping. Without the variable it does nothing.
fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("telling systemd the service state failed: {e}");
    }
}

/// Validates the new config whole, then swaps the pipeline; on any error the
/// running config keeps serving. Listener settings take effect on restart only.
/// Each refusal is logged and its reason returned (for `POST /reload`).
async fn apply_reload(shared: &Shared, reload: &Reloader) -> Result<(), String> {
    // Reading and checking the files (an .mmdb among them) is blocking work:
    // off the runtime, which may be a single thread serving traffic.
    let read = reload.clone();
    let config = match tokio::task::spawn_blocking(move || read()).await {
        Ok(Ok(c)) => c,
        Err(e) => {
            shared.metrics.reload(false);
            return Err(refused(format!(
                "reading the config failed: {e}; the running config keeps serving"
            )));
        }
        Ok(Err(errors)) => {
            shared.metrics.reload(false);
            for line in errors.to_string().lines() {
                tracing::error!("reload refused: {line}");
            }
            tracing::error!("reload refused: the running config keeps serving");
            return Err(format!("{errors}\nthe running config keeps serving"));
        }
    };
    let proxy = match Proxy::build(&config).await {
        Ok(p) => p
            .with_cache(shared.cache.clone())
            .with_rate_limits(shared.proxy.load().rate_limit_store())
            .with_redis(shared.proxy.load().redis())
            .with_access_log(shared.proxy.load().access_log())
            .with_forecast(shared.proxy.load().forecast())
            .with_gray(shared.proxy.load().gray_store()),
        Err(e) => {
            shared.metrics.reload(false);
            let chain = crate::pipeline::error_chain(&e);
            return Err(refused(format!(
                "{e}{chain}; the running config keeps serving"
            )));
        }
    };
    let certs =
        match tokio::task::spawn_blocking(move || read_certs(&config).map(|l| (l, config))).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                shared.metrics.reload(false);
                let chain = crate::pipeline::error_chain(&e);
                return Err(refused(format!(
                    "tls.certificates: {e}{chain}; \
                 the running config and certificates keep serving"
                )));
            }
            Err(e) => {
                shared.metrics.reload(false);
                return Err(refused(format!(
                    "reading the certificates failed: {e}; \
                 the running config and certificates keep serving"
                )));
            }
        };
    let (certs, config) = certs;
    let restart_pending = restart_only_changes(&shared.config, &config);
    for key in &restart_pending {
        tracing::warn!("reload: {key} changed; it takes effect on restart");
    }
    shared.proxy.store(Arc::new(proxy));
    shared.loaded.store(Arc::new(listener::Loaded {
        config,
        restart_pending,
    }));
    let generation = shared.certs.map(|c| c.replace(certs));
    if let Some(c) = shared.certs {
        shared.metrics.cert_expiries(&c.expiries());
    }
    // A key file read afresh (the config read it): a new first key encrypts
    // from the next handshake, and the keys still listed keep decrypting. Only
    // the file edge started with: another source waits for the restart.
    if let (
        Some(t),
        config::TicketKeys::File { path: started, .. },
        config::TicketKeys::File { path, keys },
    ) = (
        &shared.tickets,
        &shared.config.tls.ticket_keys,
        &shared.loaded.load().config.tls.ticket_keys,
    ) {
        if started == path {
            t.replace(keys, 0);
        }
    }
    shared.metrics.reload(true);
    tracing::info!(
        "config reloaded: routes, pools, trusted_proxies, rate limits and certificates replaced \
         (certificate generation {})",
        generation.unwrap_or(0)
    );
    Ok(())
}

/// Logs a refused reload's reason and gives it back.
fn refused(reason: String) -> String {
    tracing::error!("reload refused: {reason}");
    reason
}

/// Settings baked into listeners at start.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.listen != new.listen
        || old.http_listen != new.http_listen
        || old.http_mode != new.http_mode
        || old.admin != new.admin
    {
        changed.push("a listener address");
    }
    if old.proxy_protocol != new.proxy_protocol {
        changed.push("proxy_protocol");
    }
    if old.tls.handshake_timeout != new.tls.handshake_timeout {
        changed.push("tls.handshake_timeout");
    }
    if old.tls.client_auth != new.tls.client_auth {
        changed.push("tls.client_auth");
    }
    // The ticket keys' source and lifetime are set at start; a key file's
    // contents are re-read on every reload.
    let source = |t: &config::TicketKeys| match t {
        config::TicketKeys::Local => None,
        config::TicketKeys::File { path, .. } => Some(Some(path.clone())),
        config::TicketKeys::Redis => Some(None),
    };
    if source(&old.tls.ticket_keys) != source(&new.tls.ticket_keys)
        || old.tls.ticket_rotation != new.tls.ticket_rotation
    {
        changed.push("tls.ticket_keys");
    }
    if old.tls.early_data != new.tls.early_data {
        changed.push("tls.early_data");
    }
    if old.state_dir != new.state_dir {
        changed.push("state_dir");
    }
    if old.alt_svc != new.alt_svc {
        changed.push("alt_svc");
    }
    if old.client != new.client {
        changed.push("client");
    }
    if old.admin_token != new.admin_token {
        changed.push("admin_token_file");
    }
    if old.workers != new.workers {
        changed.push("workers");
    }
    if old.forecast != new.forecast {
        changed.push("forecast");
    }
    if old.cache != new.cache {
        changed.push("cache");
    }
    if old.redis != new.redis {
        changed.push("redis");
    }
    if old.limits != new.limits {
        changed.push("limits");
    }
    if old.acme != new.acme {
        changed.push("acme");
    }
    // Read from the start config: the QUIC endpoint's limits, the access log's
    // writer and the SIGTERM timings.
    if old.quic != new.quic {
        changed.push("quic");
    }
    if old.log != new.log {
        changed.push("log");
    }
    if old.drain != new.drain {
        changed.push("drain");
    }
    changed
}

//! The `edge` command: `edge run` and `edge check`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use edge::config::{CertFiles, Config, ConfigErrors, Pool, Route, DEFAULT_POOL};
use upstream::{EndpointAddr, Protocol};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "edge",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("EDGE_COMMIT"), ")"),
    about = "HTTP/3-first edge reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (from a config file, from flags, or both: flags win).
    Run(RunArgs),
    /// Validate a config file: prints every error with its key and line; exit 2 if any.
    Check {
        /// Config file (TOML) to validate, with everything it names (certificate
        /// and key files, CA bundles, the admin token file) read as `run` would.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Config file (TOML).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Backend URL (http:// or https://); repeat for several endpoints in one pool.
    #[arg(long = "upstream", value_name = "URL", value_parser = parse_endpoint)]
    upstream: Vec<EndpointAddr>,
    /// Protocol spoken to --upstream endpoints.
    #[arg(long = "upstream-protocol", value_enum, default_value = "h2")]
    upstream_protocol: ProtocolArg,
    /// TLS (h1, h2) on TCP and QUIC (h3) on UDP at this address [default: 0.0.0.0:8443].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Plaintext HTTP/1.1 and h2c at this address.
    #[arg(long = "http-listen", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Admin listener (/healthz, /metrics) [default: 127.0.0.1:9901].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Certificate chain (PEM); needs --key.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM); needs --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,
    /// Runtime worker threads [default: one per core]; 1 runs everything on one thread.
    #[arg(long, value_name = "N")]
    workers: Option<NonZeroUsize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    H1,
    H2,
}

fn parse_endpoint(s: &str) -> Result<EndpointAddr, String> {
    EndpointAddr::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // clap's own report on bad arguments: which argument, the allowed values,
    // a "similar argument" tip and the usage line; exit 2 (help and --version: 0).
    let cli = Cli::parse();
    edge::tls::install_default_provider();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edge: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => return report(&errors),
    };
    // Parsing succeeded; also load what start-up would load (certificate and key
    // contents, CA bundles) so `check` passing means `run` gets past them.
    let mut late = Vec::new();
    if let Err(e) = edge::tls::CertResolver::load(&config.tls.certificates) {
        late.push((
            "tls.certificates",
            e.to_string() + &edge::pipeline::error_chain(&e),
        ));
    }
    if let Some(ca) = config.acme.as_ref().and_then(|a| a.ca.as_ref()) {
        if let Err(e) = edge::tls::load_roots(ca) {
            late.push(("acme.ca", e.to_string() + &edge::pipeline::error_chain(&e)));
        }
    }
    for pool in &config.pools {
        if let Err(e) = edge::pipeline::build_pool(pool) {
            late.push(("pools", e.to_string() + &edge::pipeline::error_chain(&e)));
        }
    }
    if late.is_empty() {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    for (key, reason) in late {
        eprintln!("{}: {key}: {reason}", path.display());
    }
    ExitCode::from(2)
}

fn report(errors: &ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    eprintln!("{}: {} error(s)", errors.source, errors.errors.len());
    ExitCode::from(2)
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let load = if args.upstream.is_empty() {
        Config::load
    } else {
        Config::load_for_upstream_flags
    };
    let config = match &args.config {
        Some(path) => match load(path) {
            Ok(c) => c,
            Err(errors) => anyhow::bail!("invalid config:\n{errors}"),
        },
        None if args.upstream.is_empty() => {
            anyhow::bail!(
                "nothing to proxy to: give --upstream URL or -c FILE (see 'edge run --help')"
            )
        }
        None => Config::with_upstreams(Vec::new()),
    };
    let config = apply_flags(config, &args);
    let reload: Option<edge::server::Reloader> = args.config.clone().map(|path| {
        std::sync::Arc::new(move || load(&path).map(|c| apply_flags(c, &args)))
            as edge::server::Reloader
    });
    init_logging();
    // One worker is a current-thread runtime: the same tasks without the
    // work-stealing scheduler's bookkeeping, which a lone worker never uses.
    let mut runtime = match config.workers {
        Some(n) if n.get() == 1 => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.get());
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    runtime.enable_all();
    let runtime = runtime.build().context("starting the runtime")?;
    runtime.block_on(edge::server::run(config, reload))?;
    Ok(())
}

/// Flags override the file; `--upstream` replaces its pools and routes with one pool.
fn apply_flags(mut config: Config, args: &RunArgs) -> Config {
    if !args.upstream.is_empty() {
        let mut pool = Pool::new(DEFAULT_POOL, args.upstream.clone());
        pool.settings.protocol = match args.upstream_protocol {
            ProtocolArg::H1 => Protocol::H1,
            ProtocolArg::H2 => Protocol::H2,
        };
        config.pools = vec![pool];
        config.routes = vec![Route::catch_all(DEFAULT_POOL)];
    }
    if let Some(a) = args.listen {
        config.listen = vec![a];
    }
    if let Some(a) = args.http_listen {
        config.http_listen = vec![a];
    }
    if let Some(a) = args.admin {
        config.admin = Some(a);
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        config.tls.certificates = vec![CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        }];
    }
    if args.workers.is_some() {
        config.workers = args.workers;
    }
    config
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

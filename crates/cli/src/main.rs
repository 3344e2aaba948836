//! `switchyard`: serve | connect | doctor | monitor | bench | soak | reload.

mod admin;
mod bench;
mod connect;
mod diagnose;
mod dial;
mod doctor;
mod monitor;
mod proxy;
mod soak;
mod status_view;

/// mimalloc: fewer instructions per allocation than glibc on the handshake and message
/// paths, and less memory per idle connection (bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard_gateway::config::{
    App, CertificateSource, Config, ConfigError, ConfigSource, Overrides, TlsOverride,
};
use switchyard_gateway::{Gateway, Server};
use tracing::info;

/// `switchyard --version`: the package version and the git revision built
/// (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("SWITCHYARD_GIT_REVISION"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "switchyard",
    version = VERSION,
    about = "The HTTP protocol-upgrade mechanism done right: WebSocket server, client and tools"
)]
struct Cli {
    /// Worker threads of the async runtime (1 runs everything on the calling
    /// thread). Default: one per core.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Log format on stderr: `text` (human-readable) or `json` (one JSON
    /// object per line: timestamp, level, target, message and the event's
    /// fields at the top level, e.g. client, route, upstream, result, reason
    /// of each `upgrade attempt`). RUST_LOG still filters.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a configuration: the embedded default (a WebSocket echo on /echo
    /// and a page on /), or a file; flags override its keys.
    Serve(ServeArgs),
    /// Load-test a WebSocket echo endpoint (echo, handshake-rate and idle-memory modes).
    Bench(bench::BenchArgs),
    /// Open a WebSocket: interactive on a terminal, line per message in pipes.
    Connect(Box<connect::ConnectArgs>),
    /// Keep WebSockets open to targets; measure handshakes, ping round trips,
    /// availability and disconnects (live table, JSON lines, Prometheus).
    Monitor(Box<monitor::MonitorArgs>),
    /// Walk the path to a WebSocket endpoint (DNS, TCP, TLS, upgrade, HTTP/2,
    /// HTTP/3, ping, idle timeout) and say what is wrong and how to fix it.
    Doctor(doctor::DoctorArgs),
    /// Many WebSockets through an echo endpoint for a long time, every echo
    /// checked (loss, duplicates, order, corruption), with churn, redeploys
    /// followed, and the memory and descriptors of other processes watched.
    Soak(Box<soak::SoakArgs>),
    /// Make a running `switchyard serve --config` re-read its config file
    /// (new connections follow it; open tunnels stay as they are).
    Reload(ReloadArgs),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell)
    /// on stdout, e.g. `switchyard completions bash > /etc/bash_completion.d/switchyard`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// `switchyard serve`: every flag is a shorthand for a config key, applied on
/// top of the embedded default or of `--config FILE`.
#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (repeatable): `[[listener]] address`, each like
    /// the configuration's first listener. Default 127.0.0.1:8080.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Listen with TLS (ALPN h2 and http/1.1): https:// and wss://. Without
    /// --tls-cert/--tls-key, a self-signed certificate for localhost is
    /// generated at start and its SHA-256 fingerprint printed
    /// (`tls = { self_signed = true }`).
    #[arg(long)]
    tls: bool,
    /// Certificate chain (PEM, leaf first). Implies --tls unless --tls-upgrade
    /// (`tls = { cert = ..., key = ... }`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Private key of the certificate (PEM: PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Listen in cleartext but let clients switch a connection to TLS in
    /// place with `Upgrade: TLS/1.3` (RFC 2817): `tls = { ..., mode =
    /// "upgrade" }`. Uses --tls-cert/--tls-key or a self-signed certificate.
    #[arg(long, conflicts_with = "tls")]
    tls_upgrade: bool,
    /// Also serve the line-echo protocol (`Upgrade: lineecho/1`) on
    /// /lineecho (a route with `app = "lineecho"`).
    #[arg(long)]
    lineecho: bool,
    /// Do not speak HTTP/2 (`h2` left out of every listener's `protocols`):
    /// TLS offers ALPN http/1.1 only and the cleartext HTTP/2 preface is not
    /// recognized.
    #[arg(long)]
    no_http2: bool,
    /// Also serve WebSocket over HTTP/3 (RFC 9220) on UDP, same port and
    /// certificate as each TLS listener (`h3` in `protocols`); TCP responses
    /// advertise it with `Alt-Svc: h3=":PORT"; ma=86400`. Needs TLS.
    #[arg(long)]
    http3: bool,
    /// Drive the cleartext connections with io_uring instead of epoll
    /// (Linux; `[runtime] io_uring = true`): one `io_uring_enter` per batch
    /// of ready connections instead of a `recv` and a `send` per message.
    /// One ring per thread (with --threads N > 1, connections run on N io_uring
    /// worker threads); TLS connections too.
    #[arg(long)]
    io_uring: bool,
    /// The configuration file (listeners, routes, upstream groups, policies,
    /// [admin]; see docs/configuration.md). Without it, the embedded
    /// default (`serve --print-config` shows it).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Validate the effective configuration (the file or the embedded
    /// default, with the flags), print the result and exit: 0 valid, 1
    /// invalid (the error names the line and the key), 2 when a flag is the
    /// cause. Warnings (an admin listener beyond loopback without a token)
    /// go to stderr and do not change the exit status.
    #[arg(long, conflicts_with = "print_config")]
    check_config: bool,
    /// Print the effective configuration as TOML, every default written out,
    /// and exit. Given back with --config, it runs the same server.
    #[arg(long)]
    print_config: bool,
    /// Write the process id here (for `switchyard reload --pid-file`);
    /// removed at exit.
    #[arg(long, value_name = "FILE")]
    pid_file: Option<std::path::PathBuf>,
}

impl ServeArgs {
    /// The configuration these flags describe.
    fn source(&self, threads: Option<usize>) -> ConfigSource {
        let certificate = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => CertificateSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => CertificateSource::SelfSigned,
        };
        let tls = if self.tls_upgrade {
            Some(TlsOverride::Upgrade(certificate))
        } else if self.tls || self.tls_cert.is_some() {
            Some(TlsOverride::Listener(certificate))
        } else {
            None
        };
        let mut overrides = Overrides::new();
        overrides.listen = self.listen.clone();
        overrides.tls = tls;
        overrides.no_http2 = self.no_http2;
        overrides.http3 = self.http3;
        overrides.lineecho = self.lineecho;
        overrides.io_uring = self.io_uring;
        overrides.threads = threads;
        ConfigSource {
            file: self.config.clone(),
            overrides,
        }
    }
}

#[derive(clap::Args)]
struct ReloadArgs {
    /// Send SIGHUP to the process whose id is in this file (written by
    /// `serve --config ... --pid-file FILE`). The outcome is in its log.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "admin",
        conflicts_with = "admin"
    )]
    pid_file: Option<std::path::PathBuf>,
    /// Ask the admin listener (`[admin] address`) with `POST /reload`;
    /// prints the answer and exits 1 when the new config was rejected.
    #[arg(long, value_name = "ADDR:PORT")]
    admin: Option<SocketAddr>,
    /// With --admin: the file holding the admin bearer token (the server's
    /// `[admin] token_file`).
    #[arg(long, value_name = "FILE", requires = "admin")]
    token_file: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Bench(mut args) => {
            // The load generator runs its connections on its own threads (one current-thread
            // runtime each); the global --threads sets how many. The main runtime only waits.
            args.threads = cli.threads;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            return runtime.block_on(bench::run(args));
        }
        Command::Serve(args) => return serve_command(args, cli.threads, cli.log_format),
        Command::Completions { shell } => return print_completions(shell),
        command => Cli { command, ..cli },
    };
    init_logs(cli.log_format);
    let runtime = runtime(cli.threads).context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(_) | Command::Bench(_) | Command::Completions { .. } => Ok(()),
            Command::Reload(args) => std::process::exit(reload(args).await),
            // The exit status says how the connection ended (see connect.rs).
            Command::Connect(args) => std::process::exit(connect::run(*args).await),
            Command::Monitor(args) => std::process::exit(monitor::run(*args).await),
            // Exit status: 0 ok, 1 warnings, 2 failure.
            Command::Doctor(args) => std::process::exit(doctor::run(args).await),
            // Exit status: 0 the verdict passed, 1 it failed.
            Command::Soak(args) => std::process::exit(soak::run(*args).await?),
        }
    })
}

/// `switchyard completions SHELL`: the script on stdout. Built in memory
/// first: `clap_complete::generate` panics on a write error (a closed pipe).
fn print_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "switchyard", &mut script);
    std::io::Write::write_all(&mut std::io::stdout(), &script)
        .context("cannot write the completion script to stdout")
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        // One object per line, the event's fields beside "message" (not
        // nested under "fields"), so `jq .route` works.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// The async runtime: one thread, `n` worker threads, or one per core.
fn runtime(threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

/// `switchyard serve`: `--check-config` and `--print-config` answer and exit;
/// otherwise the server runs until SIGTERM / SIGINT. A configuration error
/// caused by a flag is a usage error (exit 2), one in the file exit 1.
fn serve_command(
    args: ServeArgs,
    threads: Option<usize>,
    log_format: LogFormat,
) -> anyhow::Result<()> {
    let source = args.source(threads);
    let cfg = match source.load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("error: {e}");
            let usage = matches!(e, ConfigError::Flags { .. });
            std::process::exit(if usage { 2 } else { 1 });
        }
    };
    if args.check_config {
        for w in cfg.warnings() {
            eprintln!("warning: {w}");
        }
        println!(
            "{}: configuration OK ({} listener(s), {} route(s), {} upstream group(s))",
            source.name(),
            cfg.listeners.len(),
            cfg.routes.len(),
            cfg.upstreams.len()
        );
        return Ok(());
    }
    if args.print_config {
        print!("{}", cfg.to_toml_string());
        return Ok(());
    }
    init_logs(log_format);
    let runtime = runtime(cfg.runtime.threads).context("cannot start the async runtime")?;
    runtime.block_on(serve(args, source, cfg))
}

/// Run `cfg` until SIGTERM / SIGINT (drain); SIGHUP reloads it.
async fn serve(args: ServeArgs, source: ConfigSource, cfg: Config) -> anyhow::Result<()> {
    let echo_path = cfg
        .routes
        .iter()
        .find(|r| r.host.is_none() && r.app == Some(App::Echo))
        .map(|r| r.path.clone());
    let gateway = Gateway::new(cfg, Some(source))?;
    let server = Server::bind(gateway.clone()).await?;
    let shutdown = shutdown_signal();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            let gw = gateway.clone();
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    info!("SIGHUP received: reloading the configuration");
                    // Gateway::reload logs the outcome (and the reason of a rejection).
                    let _ = gw.reload();
                }
            });
        }
        Err(e) => tracing::warn!("cannot watch SIGHUP ({e}); reload through the admin listener"),
    }
    if let Some(p) = &args.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the pid file {}", p.display()))?;
    }
    // Machine-readable lines on stdout for scripts and tests.
    let addresses = server.addresses();
    for a in &addresses {
        let (http, ws) = if a.tls {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        let mut notes: Vec<String> = Vec::new();
        if let Some(p) = &echo_path {
            notes.push(format!("WebSocket echo at {ws}://{}{p}", a.tcp));
        }
        if a.tls {
            notes.push("ALPN h2, http/1.1".into());
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        };
        println!("listening on {http}://{}{notes}", a.tcp);
    }
    for udp in addresses.iter().filter_map(|a| a.http3) {
        let echo = echo_path
            .as_ref()
            .map(|p| {
                format!(
                    " (WebSocket echo at wss://{udp}{p} over RFC 9220; advertised with Alt-Svc)"
                )
            })
            .unwrap_or_default();
        println!("HTTP/3 on udp://{udp}{echo}");
    }
    if let Some(fp) = server.self_signed_fingerprint() {
        println!(
            "self-signed certificate for {}; SHA-256 fingerprint {fp}",
            switchyard_gateway::tls::DEFAULT_SELF_SIGNED_NAMES.join(", ")
        );
    }
    if let Some(a) = server.admin_addr() {
        println!("admin on http://{a} (/metrics, /status, POST /reload)");
    }
    server.run(shutdown).await;
    if let Some(p) = &args.pid_file {
        let _ = std::fs::remove_file(p);
    }
    info!("bye");
    Ok(())
}

/// `switchyard reload`: 0 reloaded (or signal sent), 1 rejected or failed.
async fn reload(args: ReloadArgs) -> i32 {
    if let Some(addr) = args.admin {
        let answer = match admin::AdminClient::new(addr, args.token_file.as_deref()) {
            Ok(client) => client.request("POST", "/reload").await,
            Err(e) => Err(e),
        };
        return match answer {
            Ok(a) => {
                print!("{}", a.body);
                i32::from(a.status != 200)
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        };
    }
    let Some(pid_file) = args.pid_file else {
        eprintln!("error: give --pid-file FILE or --admin ADDR:PORT");
        return 1;
    };
    let pid = match std::fs::read_to_string(&pid_file)
        .map_err(|e| e.to_string())
        .and_then(|t| {
            t.trim()
                .parse::<u32>()
                .map_err(|e| format!("not a process id: {e}"))
        }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", pid_file.display());
            return 1;
        }
    };
    match std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
    {
        Ok(s) if s.success() => {
            println!(
                "SIGHUP sent to {pid}; the server's log says whether the new config was accepted"
            );
            0
        }
        Ok(_) | Err(_) => {
            eprintln!("error: cannot signal process {pid} (is switchyard still running?)");
            1
        }
    }
}

/// Completes on the first SIGINT or SIGTERM. The handlers are installed
/// when this is called (not when the future is first polled), so a signal
/// sent right after the "listening" line is never the default (killing) one.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = int.recv() => info!("SIGINT received"),
                    _ = term.recv() => info!("SIGTERM received"),
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!("cannot watch SIGTERM/SIGINT ({e}); only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

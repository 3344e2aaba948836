//! `switchyard`: serve | connect | monitor | bench (doctor comes next).

mod bench;
mod connect;
mod diagnose;
mod dial;
mod doctor;
mod monitor;
mod proxy;

/// mimalloc: fewer instructions per allocation than glibc on the handshake and message
/// paths, and less memory per idle connection (bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard_gateway::{ServeConfig, Server};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
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
    /// Serve the built-in apps: a WebSocket echo on /echo and a page on /.
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
    /// Make a running `switchyard serve --config` re-read its config file
    /// (new connections follow it; open tunnels stay as they are).
    Reload(ReloadArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (repeatable). Default 127.0.0.1:8080.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
    /// Listen with TLS (ALPN h2 and http/1.1): https:// and wss://. Without
    /// --tls-cert/--tls-key, a self-signed certificate for localhost is
    /// generated at start and its SHA-256 fingerprint printed.
    #[arg(long)]
    tls: bool,
    /// Certificate chain (PEM, leaf first). Implies --tls unless --tls-upgrade.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Private key of the certificate (PEM: PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Listen in cleartext but let clients switch a connection to TLS in
    /// place with `Upgrade: TLS/1.3` (RFC 2817). Uses --tls-cert/--tls-key
    /// or a self-signed certificate.
    #[arg(long, conflicts_with = "tls")]
    tls_upgrade: bool,
    /// Also serve the line-echo protocol (`Upgrade: lineecho/1`) on /lineecho.
    #[arg(long)]
    lineecho: bool,
    /// Do not speak HTTP/2: TLS offers ALPN http/1.1 only and the cleartext
    /// HTTP/2 preface is not recognized (WebSocket only via HTTP/1.1 Upgrade).
    #[arg(long)]
    no_http2: bool,
    /// Also serve WebSocket over HTTP/3 (RFC 9220) on UDP, same port and
    /// certificate as each TLS listener; TCP responses advertise it with
    /// `Alt-Svc: h3=":PORT"; ma=86400`. Needs --tls.
    #[arg(long)]
    http3: bool,
    /// Drive the cleartext connections with io_uring instead of epoll (Linux):
    /// one `io_uring_enter` per batch of ready connections instead of a `recv`
    /// and a `send` per message. Needs --threads 1 (one ring per thread); not
    /// with TLS (--tls, --tls-upgrade), which keeps epoll.
    #[arg(long, conflicts_with_all = ["tls", "tls_cert", "tls_upgrade"])]
    io_uring: bool,
    /// Run the reverse proxy described by this TOML file (listeners, routes,
    /// upstream groups, policies, [admin]); see docs/configuration.md.
    /// Without it, `serve` runs the embedded default (echo + index page).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "tls", "tls_cert", "tls_upgrade", "lineecho", "no_http2", "http3", "io_uring"])]
    config: Option<std::path::PathBuf>,
    /// Validate the configuration (--config FILE, or the embedded default),
    /// print the result and exit: 0 valid, 1 invalid (the error names the
    /// line and the key).
    #[arg(long)]
    check_config: bool,
    /// Write the process id here (for `switchyard reload --pid-file`);
    /// removed at exit.
    #[arg(long, value_name = "FILE", requires = "config")]
    pid_file: Option<std::path::PathBuf>,
}

/// Usage errors clap cannot express: `--http3` needs TLS listeners.
fn check_serve_args(args: &ServeArgs, threads: Option<usize>) {
    use clap::CommandFactory;
    if args.io_uring && threads != Some(1) {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--io-uring needs --threads 1: a ring belongs to one thread, and the tasks of \
                 a multi-thread runtime move between threads",
            )
            .exit();
    }
    if args.http3 && (args.tls_upgrade || !(args.tls || args.tls_cert.is_some())) {
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--http3 needs --tls: HTTP/3 runs over QUIC, which is always TLS, with the \
                 certificate of the TLS listeners (add --tls, optionally with --tls-cert/--tls-key; \
                 --tls-upgrade listeners are cleartext)",
            )
            .exit();
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        check_serve_args(args, cli.threads);
    }
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
        command => Cli { command, ..cli },
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        // One object per line, the event's fields beside "message" (not
        // nested under "fields"), so `jq .route` works.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let runtime = match cli.threads {
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
    .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) if args.check_config => std::process::exit(check_config(&args)),
            Command::Serve(args) if args.config.is_some() => serve_config(args).await,
            Command::Serve(args) => serve(args).await,
            Command::Reload(args) => std::process::exit(reload(args).await),
            Command::Bench(args) => bench::run(args).await,
            // The exit status says how the connection ended (see connect.rs).
            Command::Connect(args) => std::process::exit(connect::run(*args).await),
            Command::Monitor(args) => std::process::exit(monitor::run(*args).await),
            // Exit status: 0 ok, 1 warnings, 2 failure.
            Command::Doctor(args) => std::process::exit(doctor::run(args).await),
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use switchyard_gateway::{tls, TlsMode, TlsSettings};
    let mut cfg = ServeConfig::default();
    if !args.listen.is_empty() {
        cfg.listen = args.listen;
    }
    let mut fingerprint = None;
    if args.tls || args.tls_upgrade || args.tls_cert.is_some() {
        let (certs, key) = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => tls::load_pem(cert, key)?,
            _ => {
                let (certs, key) = tls::self_signed(&[])?;
                if let Some(c) = certs.first() {
                    fingerprint = Some(tls::fingerprint_sha256(c));
                }
                (certs, key)
            }
        };
        let mode = if args.tls_upgrade {
            TlsMode::Upgrade
        } else {
            TlsMode::Listener
        };
        cfg.tls = Some(TlsSettings { certs, key, mode });
    }
    cfg.http2.enabled = !args.no_http2;
    cfg.http3 = args.http3;
    cfg.io_uring = args.io_uring;
    if args.lineecho {
        cfg.extra_routes
            .push(switchyard_gateway::Route::upgrade_only(
                "/lineecho",
                switchyard_gateway::registry::Registry::new().with(std::sync::Arc::new(
                    switchyard_gateway::lineecho::LineEcho::new(),
                )),
            ));
    }
    let shutdown = shutdown_signal();
    let server = Server::bind(cfg).await?;
    for addr in server.local_addrs() {
        // Machine-readable lines on stdout for scripts and tests.
        if server.is_tls() {
            println!("listening on https://{addr} (WebSocket echo at wss://{addr}/echo; ALPN h2, http/1.1)");
        } else {
            println!("listening on http://{addr} (WebSocket echo at ws://{addr}/echo)");
        }
    }
    for addr in server.http3_addrs() {
        println!("HTTP/3 on udp://{addr} (WebSocket echo at wss://{addr}/echo over RFC 9220; advertised with Alt-Svc)");
    }
    if let Some(fp) = fingerprint {
        println!(
            "self-signed certificate for {}; SHA-256 fingerprint {fp}",
            tls::DEFAULT_SELF_SIGNED_NAMES.join(", ")
        );
    }
    server.run(shutdown).await;
    info!("bye");
    Ok(())
}

/// `serve --check-config`: 0 valid, 1 invalid.
fn check_config(args: &ServeArgs) -> i32 {
    use switchyard_gateway::config::Config;
    let result = match &args.config {
        Some(path) => Config::load(path).map(|c| (path.display().to_string(), c)),
        None => Ok((
            "the embedded default".to_string(),
            Config::embedded_default(),
        )),
    };
    match result {
        Ok((name, c)) => {
            println!(
                "{name}: configuration OK ({} listener(s), {} route(s), {} upstream group(s))",
                c.listeners.len(),
                c.routes.len(),
                c.upstreams.len()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `serve --config FILE`: the reverse proxy. SIGHUP reloads, SIGTERM and
/// SIGINT drain.
async fn serve_config(args: ServeArgs) -> anyhow::Result<()> {
    use switchyard_gateway::admin::GatewayServer;
    use switchyard_gateway::routing::Gateway;
    let path = args.config.clone().context("--config is required here")?;
    let gateway = Gateway::load(path)?;
    let server = GatewayServer::bind(gateway.clone()).await?;
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
    for (addr, tls) in server.local_addrs() {
        if tls {
            println!("listening on https://{addr}");
        } else {
            println!("listening on http://{addr}");
        }
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
        return match admin_reload(addr).await {
            Ok((ok, text)) => {
                print!("{text}");
                i32::from(!ok)
            }
            Err(e) => {
                eprintln!("error: cannot reach the admin listener at {addr}: {e}");
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

async fn admin_reload(addr: SocketAddr) -> std::io::Result<(bool, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        b"POST /reload HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 10 s")
        })??;
    let text = String::from_utf8_lossy(&buf);
    let ok = text.starts_with("HTTP/1.1 200");
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((ok, body))
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

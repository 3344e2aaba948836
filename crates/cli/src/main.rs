//! `switchyard`: serve | connect | monitor | bench (doctor comes next).

mod bench;
mod connect;
mod diagnose;
mod dial;
mod monitor;
mod proxy;

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
    #[command(subcommand)]
    command: Command,
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
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (repeatable). Default 127.0.0.1:8080.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,
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
        command => Cli { command, ..cli },
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
            Command::Serve(args) => serve(args).await,
            Command::Bench(args) => bench::run(args).await,
            // The exit status says how the connection ended (see connect.rs).
            Command::Connect(args) => std::process::exit(connect::run(*args).await),
            Command::Monitor(args) => std::process::exit(monitor::run(*args).await),
        }
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = ServeConfig::default();
    if !args.listen.is_empty() {
        cfg.listen = args.listen;
    }
    let shutdown = shutdown_signal()?;
    let server = Server::bind(cfg).await?;
    for addr in server.local_addrs() {
        // Machine-readable line on stdout for scripts and tests.
        println!("listening on http://{addr} (WebSocket echo at ws://{addr}/echo)");
    }
    server.run(shutdown).await;
    info!("bye");
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now (before the server announces
/// itself, so a signal sent right after the "listening" line is never lost to
/// the default action) and returns a future that completes on the first one.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => info!("SIGINT received"),
            _ = term.recv() => info!("SIGTERM received"),
        }
    })
}

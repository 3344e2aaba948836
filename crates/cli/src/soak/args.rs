//! The arguments of `switchyard soak`.

use std::path::PathBuf;
use std::time::Duration;
use switchyard_gateway::config::parse_flag_duration;

/// Arguments of `switchyard soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// An instance to connect to, ws://HOST:PORT[/PATH] (repeatable: the
    /// instances a redeploy moves between, tried in turn).
    #[arg(long = "url", required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// Request path (repeatable): client i uses the i-th modulo their count.
    /// Default: the path of the URL.
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// Concurrent connections (clients).
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: usize,
    /// How long the load runs.
    #[arg(short = 'd', long, value_name = "DURATION", default_value = "60s", value_parser = parse_flag_duration)]
    pub duration: Duration,
    /// Open the connections gradually over this long.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_flag_duration)]
    pub ramp_up: Duration,
    /// Messages per second over all connections (each client at an even
    /// pace; latency counts from when a message was due).
    #[arg(long, value_name = "MSGS_PER_S", default_value_t = 1000.0)]
    pub rate: f64,
    /// Largest message in bytes; sizes are log-uniform from 64 B up to it.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024)]
    pub max_size: usize,
    /// Messages a connection may have unanswered before its sending waits.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Share of the messages sent as binary, percent (the rest is text).
    #[arg(long, value_name = "PERCENT", default_value_t = 50)]
    pub binary: u8,
    /// Offer this subprotocol (repeatable, in preference order).
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Vec<String>,
    /// Share of the connections that offer permessage-deflate, percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 0)]
    pub deflate: u8,
    /// Connections closed cleanly and reopened per second, percent of all
    /// (each lives an exponentially distributed time of mean 100/CHURN s).
    #[arg(long, value_name = "PERCENT_PER_S", default_value_t = 0.0)]
    pub churn: f64,
    /// Processes to watch: NAME=PID or NAME=@PIDFILE (re-read every sample),
    /// comma-separated.
    #[arg(long, value_name = "LIST")]
    pub pids: Option<String>,
    /// After the load, how long the watched processes get to come back to
    /// their baseline.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_flag_duration)]
    pub settle: Duration,
    /// How far above its baseline a process's memory and descriptors may stay
    /// after the load, percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 5.0)]
    pub tolerance: f64,
    /// Memory above the baseline that passes whatever --tolerance says, MiB
    /// (for small baselines, whose few percent are allocator noise).
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    pub rss_slack: u64,
    /// After the load and the settle, run the same load twice more for this
    /// long (ramp-up included): each process must come back after the second
    /// within --tolerance of its level after the first (see above).
    #[arg(long, value_name = "DURATION", value_parser = parse_flag_duration)]
    pub leak_check: Option<Duration>,
    /// Count latencies of the load (not of the leak check) also under the
    /// label this file holds (read every second).
    #[arg(long, value_name = "FILE")]
    pub label_file: Option<PathBuf>,
    /// How long a client that is about to close waits for the echoes still
    /// in flight; what has not come back by then counts as lost. A hang
    /// guard, far above any latency of a working but loaded server.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_flag_duration)]
    pub drain_wait: Duration,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

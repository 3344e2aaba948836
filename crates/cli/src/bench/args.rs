//! The arguments of `switchyard bench`.

use std::time::Duration;

use crate::connect::ConnectTransport;
use switchyard_gateway::config::parse_flag_duration;

/// Arguments of `switchyard bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// WebSocket URL of an echo endpoint, e.g. ws://127.0.0.1:9001/echo or wss://...
    pub url: String,
    /// wss://: also trust this CA certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// wss://: accept any server certificate (self-signed benchmark servers).
    #[arg(long)]
    pub insecure: bool,
    /// WebSocket over HTTP/2 (RFC 8441 extended CONNECT), echo mode only.
    #[arg(long, conflicts_with_all = ["handshakes", "idle"])]
    pub http2: bool,
    /// Echo over a WebSocket (ws), or through a switchyard gateway's fallback sessions
    /// (one per connection; sse: read as an event stream, poll: by long polling; sends are
    /// numbered POSTs), with the library's session client; closed loop, or open loop with
    /// --rate.
    #[arg(
        long,
        value_enum,
        default_value_t = ConnectTransport::Ws,
        conflicts_with_all = ["http2", "handshakes", "idle", "ramp_up"]
    )]
    pub transport: ConnectTransport,
    /// With --http2: WebSockets (streams) per HTTP/2 connection; 1 opens one HTTP/2
    /// connection per WebSocket.
    #[arg(long, default_value_t = 1, requires = "http2")]
    pub streams: usize,
    /// Concurrent connections (in --handshakes mode: concurrent connect/handshake/close loops).
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: usize,
    /// Messages kept outstanding per connection; more than one are written in one batch.
    #[arg(short = 'n', long, default_value_t = 1)]
    pub in_flight: usize,
    /// Payload size of each message in bytes.
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Send binary messages instead of text (text payloads are ASCII).
    #[arg(long)]
    pub binary: bool,
    /// Measured time after the warm-up, e.g. "10s" or seconds (default 3s; in --idle
    /// mode: hold forever).
    #[arg(short = 'd', long, value_name = "DURATION", value_parser = parse_flag_duration)]
    pub duration: Option<Duration>,
    /// Warm-up time before measuring ("500ms", "2s", or seconds).
    #[arg(short = 'w', long, value_name = "DURATION", default_value = "1s", value_parser = parse_flag_duration)]
    pub warmup: Duration,
    /// Handshake-rate mode: connect, handshake, close, repeat.
    #[arg(long, conflicts_with = "idle")]
    pub handshakes: bool,
    /// Open this many idle connections, print `ready` and hold them until killed.
    #[arg(long, value_name = "N")]
    pub idle: Option<usize>,
    /// Load-generator threads (default: the CPUs this process may run on, so `taskset`
    /// decides). Set from the global `--threads` option of `switchyard`.
    #[arg(skip)]
    pub threads: Option<usize>,
    /// Print the result as one JSON object instead of the one-line summary.
    #[arg(long)]
    pub json: bool,
    /// Open loop at a fixed total rate (messages per second over all connections) instead of
    /// the closed loop; latency is measured from each message's scheduled send time, so a
    /// stalled server is not hidden (no coordinated omission). --in-flight is then unused.
    #[arg(long, value_name = "MSGS_PER_S", conflicts_with_all = ["handshakes", "idle"])]
    pub rate: Option<f64>,
    /// Open the connections gradually over this time ("5s", or seconds; the warm-up and the
    /// measured window start once they are all open).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_flag_duration)]
    pub ramp_up: Duration,
    /// Also write a self-contained HTML report (throughput and latency over time, summary).
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
}

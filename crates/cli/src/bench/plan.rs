//! What a run does: the mode, the target, the plan every worker reads, the measured window.

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::args::*;
use super::frame::{OP_BINARY, OP_TEXT};

/// In open-loop mode a message is timed from its scheduled send time, except for lateness up
/// to this much, which is the load generator's own timer resolution (tokio's timer wheel has
/// 1 ms ticks and wakes at the tick after a deadline), not a stalled server. Latency is thus
/// `reply - min(actual send, scheduled + TIMER_SLACK)`.
pub(super) const TIMER_SLACK: Duration = Duration::from_millis(2);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    Echo,
    Handshakes,
    Idle,
}

/// Where to connect and what to ask for.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) url: String,
    pub(super) tls: bool,
    pub(super) host_header: String,
    pub(super) authority: (String, u16),
    pub(super) path: String,
}

impl Target {
    pub(super) fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a valid URL; expected ws://HOST:PORT/PATH"))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => bail!("{url}: the URL must start with ws:// or wss://"),
        };
        let host = uri
            .host()
            .with_context(|| format!("{url}: the URL has no host"))?
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host_header = match uri.port_u16() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_string());
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Self {
            url: url.to_string(),
            tls,
            host_header,
            authority: (bare, port),
            path,
        })
    }
}

/// Everything the worker threads share, fixed before they start.
pub(super) struct Plan {
    pub(super) target: Target,
    pub(super) addr: SocketAddr,
    pub(super) connections: usize,
    pub(super) in_flight: usize,
    pub(super) size: usize,
    pub(super) binary: bool,
    pub(super) warmup: Duration,
    pub(super) duration: Option<Duration>,
    pub(super) idle: usize,
    pub(super) threads: usize,
    /// Open-loop rate in messages per second over all connections.
    pub(super) rate: Option<f64>,
    pub(super) ramp_up: Duration,
    /// Counters read by the progress bar.
    pub(super) live: Arc<super::progress::Live>,
    pub(super) payload: Vec<u8>,
    /// The upgrade request up to the `Sec-WebSocket-Key` value.
    pub(super) request_head: String,
    /// switchyard's client settings (TLS roots, no deflate) for wss and HTTP/2.
    pub(super) client: switchyard::ClientBuilder,
    /// The TLS configuration of wss connections (ALPN http/1.1).
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
    /// HTTP/2 streams per HTTP/2 connection; 0 = HTTP/1.1.
    pub(super) h2_streams: usize,
    /// Echo through fallback sessions read with this transport instead of WebSockets.
    pub(super) fallback: Option<switchyard::fallback::Transport>,
}

impl Plan {
    pub(super) async fn from_args(args: &BenchArgs, target: Target) -> anyhow::Result<Self> {
        let addr = tokio::net::lookup_host((target.authority.0.as_str(), target.authority.1))
            .await
            .with_context(|| format!("cannot resolve the host of {}", target.url))?
            .next()
            .with_context(|| format!("the host of {} resolves to no address", target.url))?;
        if args.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if args.in_flight == 0 {
            bail!("--in-flight must be at least 1");
        }
        let warmup = args.warmup;
        let ramp_up = args.ramp_up;
        if let Some(r) = args.rate {
            if !(r.is_finite() && r > 0.0) {
                bail!("--rate must be a number of messages per second > 0, got {r}");
            }
        }
        let duration = match (args.duration, args.idle) {
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(3)),
        };
        if args.idle.is_none() && duration.is_some_and(|d| d.is_zero()) {
            bail!("--duration must be more than 0 seconds");
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let work = args.idle.unwrap_or(args.connections).max(1);
        let threads = args.threads.unwrap_or(cpus).clamp(1, work);
        // ASCII payload, so that text messages are valid UTF-8 and easy to recognise.
        let payload: Vec<u8> = (0..args.size).map(|i| b'a' + (i % 26) as u8).collect();
        let mut client = switchyard::ClientBuilder::new().no_deflate();
        if let Some(ca) = &args.ca {
            client = client.add_ca_file(ca);
        }
        if args.insecure {
            client = client.danger_accept_invalid_certs();
        }
        let tls = if target.tls {
            Some(client.tls_config().context("cannot set up TLS")?)
        } else {
            None
        };
        if args.http2 && args.streams == 0 {
            bail!("--streams must be at least 1");
        }
        let h2_streams = if args.http2 { args.streams } else { 0 };
        let request_head = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
            target.path, target.host_header
        );
        Ok(Self {
            target,
            addr,
            connections: args.connections,
            in_flight: args.in_flight,
            size: args.size,
            binary: args.binary,
            warmup,
            duration,
            idle: args.idle.unwrap_or(0),
            threads,
            rate: args.rate,
            ramp_up,
            live: Arc::new(super::progress::Live::default()),
            payload,
            request_head,
            client,
            tls,
            h2_streams,
            fallback: args.transport.fallback(),
        })
    }

    pub(super) fn opcode(&self) -> u8 {
        if self.binary {
            OP_BINARY
        } else {
            OP_TEXT
        }
    }
}

/// Window shared by all threads: measuring starts at `start + warmup` and ends at `end`.
#[derive(Clone, Copy)]
pub(super) struct Window {
    /// Start of the run (connections start opening).
    pub(super) t0: Instant,
    pub(super) measure_from: Instant,
    pub(super) end: Instant,
}

/// The window of a run that starts at `t0`.
pub(super) fn window_from(plan: &Plan, t0: Instant) -> Window {
    let measure_from = t0 + plan.ramp_up + plan.warmup;
    let end = measure_from + plan.duration.unwrap_or(Duration::from_secs(3));
    Window {
        t0,
        measure_from,
        end,
    }
}

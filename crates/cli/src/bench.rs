//! `switchyard bench`: a WebSocket load generator.
//!
//! Modes:
//! - echo (default): `--connections` connections, each keeping `--in-flight` messages of
//!   `--size` bytes outstanding (closed loop). A reply is matched to its request in FIFO order;
//!   latency is measured from the time the request batch was written.
//! - `--handshakes`: every connection slot loops connect → upgrade request → 101 checked →
//!   close handshake → socket dropped, and the rate of completed cycles is reported.
//! - `--idle N`: open N idle WebSocket connections, print `ready` and hold them until killed
//!   (or for `--duration` seconds when it is given).
//! - `--rate N` (echo): open loop at N messages per second over all connections, each message
//!   timed from its scheduled send time (no coordinated omission; see [`TIMER_SLACK`]).
//!
//! `--ramp-up D` opens the connections (or starts the handshake loops) gradually over D seconds
//! before the warm-up. The result is a multi-line summary, or `--json`; `--html FILE` also
//! writes a self-contained report (`bench/report.rs`) from the JSON, whose per-second `series`
//! comes from one small histogram per second of the run. A progress bar (`bench/progress.rs`)
//! runs on stderr when it is a terminal. Errors are counted by kind ([`Fail`], [`error_kind`]).
//!
//! The generator must never be the bottleneck, so the client is hand-written: one write syscall
//! per batch of frames, one read syscall per batch of replies, one receive buffer per
//! connection. Plain `ws://` closed-loop echo runs (what measures a server's throughput) go
//! through `bench/raw.rs`: after the handshakes, ONE `mio` event loop per thread drives all of
//! its connections, with no task, waker or timer per message; the other modes run on raw tokio
//! `TcpStream`s. It still speaks WebSocket correctly: client frames are masked with a fresh key
//! per frame from a CSPRNG (ChaCha12), the 101 response and its `Sec-WebSocket-Accept` are
//! checked, and every echoed frame is parsed (FIN, opcode, length, mask bit, payload) so that
//! anything unexpected is counted as an error.
//!
//! Transports: `ws://` is cleartext TCP; `wss://` is TLS (switchyard's client TLS
//! configuration: system roots, `--ca`, `--insecure`; ALPN http/1.1) with the same
//! hand-written framing on top; `--http2` opens the WebSockets as RFC 8441 streams with
//! `switchyard::h2::H2Connection` (`--streams` per HTTP/2 connection; TLS with ALPN h2 for
//! `wss://`, prior knowledge for `ws://`), then frames each stream by hand like the others.
//!
//! Work runs on `--threads` OS threads (default: the CPUs this process may run on, so `taskset`
//! decides), each with its own current-thread tokio runtime; connections are dealt round-robin.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::{poll_fn, Future};
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};
use switchyard_gateway::config::parse_flag_duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use hdrhistogram::Histogram;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

mod progress;
mod raw;
pub(crate) mod report;

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

/// Runs the benchmark described by `args` and prints its result on stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    let plan = Plan::from_args(&args, target).await?;
    let plan = Arc::new(plan);
    let mode = if args.idle.is_some() {
        Mode::Idle
    } else if args.handshakes {
        Mode::Handshakes
    } else {
        Mode::Echo
    };
    match mode {
        Mode::Idle => run_idle(plan, args.json).await,
        Mode::Echo | Mode::Handshakes => {
            let report = if std::io::stderr().is_terminal() {
                let phases = progress::Phases {
                    ramp_up: plan.ramp_up,
                    warmup: plan.warmup,
                    duration: plan.duration.unwrap_or_default(),
                };
                let unit = if mode == Mode::Echo {
                    "msgs"
                } else {
                    "handshakes"
                };
                let work = run_threads(plan.clone(), mode);
                let bar = progress::show(&plan.live, phases, unit);
                let r = tokio::select! {
                    r = work => r,
                    () = bar => unreachable_bar(),
                };
                progress::clear();
                r?
            } else {
                run_threads(plan.clone(), mode).await?
            };
            let summary = summary_json(&plan, mode, &report);
            if let Some(path) = &args.html {
                std::fs::write(path, report::html(&summary)).with_context(|| {
                    format!("cannot write the HTML report to {}", path.display())
                })?;
            }
            if args.json {
                println!("{summary}");
            } else {
                print!("{}", summary_text(&summary));
            }
            if report.completed == 0 {
                bail!(
                    "no {} completed against {} ({} errors{}); is an echo server listening there?",
                    if mode == Mode::Echo {
                        "message"
                    } else {
                        "handshake"
                    },
                    plan.target.url,
                    report.errors,
                    report
                        .first_error
                        .as_deref()
                        .map(|e| format!(", first: {e}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Echo,
    Handshakes,
    Idle,
}

/// Where to connect and what to ask for.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    tls: bool,
    host_header: String,
    authority: (String, u16),
    path: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
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
struct Plan {
    target: Target,
    addr: SocketAddr,
    connections: usize,
    in_flight: usize,
    size: usize,
    binary: bool,
    warmup: Duration,
    duration: Option<Duration>,
    idle: usize,
    threads: usize,
    /// Open-loop rate in messages per second over all connections.
    rate: Option<f64>,
    ramp_up: Duration,
    /// Counters read by the progress bar.
    live: Arc<progress::Live>,
    payload: Vec<u8>,
    /// The upgrade request up to the `Sec-WebSocket-Key` value.
    request_head: String,
    /// switchyard's client settings (TLS roots, no deflate) for wss and HTTP/2.
    client: switchyard::ClientBuilder,
    /// The TLS configuration of wss connections (ALPN http/1.1).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// HTTP/2 streams per HTTP/2 connection; 0 = HTTP/1.1.
    h2_streams: usize,
}

impl Plan {
    async fn from_args(args: &BenchArgs, target: Target) -> anyhow::Result<Self> {
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
            live: Arc::new(progress::Live::default()),
            payload,
            request_head,
            client,
            tls,
            h2_streams,
        })
    }

    fn opcode(&self) -> u8 {
        if self.binary {
            OP_BINARY
        } else {
            OP_TEXT
        }
    }
}

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Largest server frame header: 2 bytes + 8 bytes of length (server frames are unmasked).
const MAX_HEADER: usize = 10;
/// Largest upgrade response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// In open-loop mode a message is timed from its scheduled send time, except for lateness up
/// to this much, which is the load generator's own timer resolution (tokio's timer wheel has
/// 1 ms ticks and wakes at the tick after a deadline), not a stalled server. Latency is thus
/// `reply - min(actual send, scheduled + TIMER_SLACK)`.
const TIMER_SLACK: Duration = Duration::from_millis(2);
/// Open loop: most bytes queued for one connection's socket before sending waits.
const MAX_PENDING_WRITE: usize = 4 * 1024 * 1024;
/// Largest control frame payload (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// Results of one worker thread, or of all of them merged.
struct Report {
    /// Echoed messages or completed handshake cycles inside the measured window.
    completed: u64,
    /// Echoed messages or completed cycles over the whole run, warm-up included (for the
    /// server CPU per message that bench/run.sh computes from the server's CPU time).
    total: u64,
    errors: u64,
    first_error: Option<String>,
    /// Latency in nanoseconds.
    latency: Histogram<u64>,
    measured: Duration,
    /// CPU time of this process divided by wall time and threads over the whole run, so
    /// that a saturated load generator (near 1.0) is visible.
    client_cpu: Option<f64>,
    /// CPU seconds this process used over the whole run (all threads).
    client_cpu_seconds: Option<f64>,
    /// How busy each CPU of the machine was during the measured window (0..1), from
    /// `/proc/stat`: everything but idle and iowait, so the kernel's work for other
    /// processes' packets (softirq) counts too.
    cpu_busy: Option<BTreeMap<usize, f64>>,
    /// Errors counted by kind (see [`Fail::kind`] and [`error_kind`]).
    errors_by_kind: BTreeMap<String, u64>,
    /// One bucket per second since the start of the run (ramp-up and warm-up included).
    series: Vec<Bucket>,
    /// Start of the run (second 0 of `series`), once known.
    origin: Option<Instant>,
    /// Counters shared with the progress bar.
    live: Option<Arc<progress::Live>>,
}

/// Results of one second of the run.
struct Bucket {
    completed: u64,
    errors: u64,
    /// Latency in nanoseconds (2 significant digits: enough for a plot, small).
    latency: Histogram<u64>,
}

impl Bucket {
    fn new() -> Self {
        let mut latency = Histogram::new(2).unwrap_or_else(|_| unreachable_histogram());
        latency.auto(true);
        Self {
            completed: 0,
            errors: 0,
            latency,
        }
    }
}

impl Report {
    fn new() -> Self {
        Self {
            completed: 0,
            total: 0,
            errors: 0,
            first_error: None,
            latency: new_histogram(),
            measured: Duration::ZERO,
            client_cpu: None,
            client_cpu_seconds: None,
            cpu_busy: None,
            errors_by_kind: BTreeMap::new(),
            series: Vec::new(),
            origin: None,
            live: None,
        }
    }

    /// The bucket of the second `at` falls in, if the run has started.
    fn bucket(&mut self, at: Instant) -> Option<&mut Bucket> {
        let origin = self.origin?;
        // Bounded by the length of the run (ramp-up + warm-up + duration + grace).
        let i = usize::try_from(at.saturating_duration_since(origin).as_secs()).ok()?;
        if i >= self.series.len() {
            self.series.resize_with(i + 1, Bucket::new);
        }
        self.series.get_mut(i)
    }

    /// Counts one echoed message or completed handshake that took `latency`, finished `at`.
    fn complete(&mut self, at: Instant, latency: Duration, window: &Window) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.complete_all(at, &[ns], window);
    }

    /// Counts several messages that all finished `at`, with these latencies in nanoseconds:
    /// the window test and the per-second bucket are looked up once for the whole batch.
    fn complete_all(&mut self, at: Instant, latencies_ns: &[u64], window: &Window) {
        let n = latencies_ns.len() as u64;
        self.total += n;
        if at >= window.measure_from && at < window.end {
            self.completed += n;
            for &ns in latencies_ns {
                let _ = self.latency.record(ns);
            }
        }
        if let Some(b) = self.bucket(at) {
            b.completed += n;
            for &ns in latencies_ns {
                let _ = b.latency.record(ns);
            }
        }
    }

    /// Counts an error of kind `kind`; `what` describes it (kept for the first one).
    fn error_of(&mut self, kind: &str, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
        match self.errors_by_kind.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.errors_by_kind.insert(kind.to_string(), 1);
            }
        }
        if let Some(b) = self.bucket(Instant::now()) {
            b.errors += 1;
        }
        if let Some(live) = &self.live {
            live.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `e`, classified by [`error_kind`].
    fn fail(&mut self, e: &anyhow::Error) {
        self.error_of(&error_kind(e), || format!("{e:#}"));
    }

    fn merge(&mut self, other: Report) {
        self.completed += other.completed;
        self.total += other.total;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        // Both histograms have the same bounds and auto-resize, so `add` cannot fail.
        let _ = self.latency.add(&other.latency);
        self.measured = self.measured.max(other.measured);
        for (k, n) in other.errors_by_kind {
            *self.errors_by_kind.entry(k).or_insert(0) += n;
        }
        if self.series.len() < other.series.len() {
            self.series.resize_with(other.series.len(), Bucket::new);
        }
        for (mine, theirs) in self.series.iter_mut().zip(other.series) {
            mine.completed += theirs.completed;
            mine.errors += theirs.errors;
            let _ = mine.latency.add(&theirs.latency);
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 1 hour, 3 significant digits; auto-resize so no record is ever lost.
    let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable_histogram());
    h.auto(true);
    h
}

#[cold]
fn unreachable_histogram() -> Histogram<u64> {
    // `Histogram::new(3)` only fails for more than 5 significant digits.
    unreachable!("a 3-significant-digit histogram is always valid")
}

/// Why a connection or a cycle failed, for the errors-by-kind count.
#[derive(Debug, thiserror::Error)]
enum Fail {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the server answered {status:?} instead of \"HTTP/1.1 101 Switching Protocols\"")]
    Status { code: Option<u16>, status: String },
    #[error("{0}")]
    BadHandshake(String),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    ClosedEarly(String),
}

impl Fail {
    fn kind(&self) -> String {
        match self {
            Fail::Connect { source, .. } => match source.kind() {
                std::io::ErrorKind::ConnectionRefused => "connect_refused".into(),
                std::io::ErrorKind::TimedOut => "connect_timeout".into(),
                _ => "connect_failed".into(),
            },
            Fail::Status { code: Some(c), .. } => format!("handshake_status_{c}"),
            Fail::Status { code: None, .. } => "handshake_status".into(),
            Fail::BadHandshake(_) => "handshake_invalid".into(),
            Fail::Protocol(_) => "protocol_error".into(),
            Fail::ClosedEarly(_) => "closed_early".into(),
        }
    }
}

/// The kind of an error: a [`Fail`] anywhere in its chain, else the kind of an I/O error.
fn error_kind(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Fail>() {
            return f.kind();
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "reset",
                K::UnexpectedEof => "closed_early",
                K::TimedOut => "timeout",
                _ => "io",
            }
            .into();
        }
    }
    "other".into()
}

/// Window shared by all threads: measuring starts at `start + warmup` and ends at `end`.
#[derive(Clone, Copy)]
struct Window {
    /// Start of the run (connections start opening).
    t0: Instant,
    measure_from: Instant,
    end: Instant,
}

/// The window of a run that starts at `t0`.
fn window_from(plan: &Plan, t0: Instant) -> Window {
    let measure_from = t0 + plan.ramp_up + plan.warmup;
    let end = measure_from + plan.duration.unwrap_or(Duration::from_secs(3));
    Window {
        t0,
        measure_from,
        end,
    }
}

/// User + system CPU seconds used by this process so far (Linux `/proc/self/stat`).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: f64 = f.next()?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI tokio supports.
    Some((utime + stime) / 100.0)
}

/// Busy and total clock ticks of each CPU (`/proc/stat`; busy is all but idle and iowait).
fn cpu_ticks() -> Option<BTreeMap<usize, (u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    Some(parse_cpu_ticks(&stat))
}

fn parse_cpu_ticks(stat: &str) -> BTreeMap<usize, (u64, u64)> {
    let mut out = BTreeMap::new();
    for line in stat.lines() {
        let mut f = line.split_ascii_whitespace();
        let Some(cpu) = f.next().and_then(|n| n.strip_prefix("cpu")) else {
            continue;
        };
        let Ok(cpu) = cpu.parse::<usize>() else {
            continue; // the "cpu" line sums all of them
        };
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let v: Vec<u64> = f.take(8).filter_map(|x| x.parse().ok()).collect();
        if v.len() == 8 {
            let total: u64 = v.iter().sum();
            out.insert(cpu, (total - v[3] - v[4], total));
        }
    }
    out
}

/// Per CPU, the busy fraction between two `cpu_ticks` readings.
fn cpu_busy_between(
    a: &BTreeMap<usize, (u64, u64)>,
    b: &BTreeMap<usize, (u64, u64)>,
) -> BTreeMap<usize, f64> {
    b.iter()
        .filter_map(|(cpu, &(busy1, total1))| {
            let &(busy0, total0) = a.get(cpu)?;
            let total = total1.checked_sub(total0).filter(|&t| t > 0)?;
            Some((*cpu, busy1.saturating_sub(busy0) as f64 / total as f64))
        })
        .collect()
}

/// Reads `/proc/stat` when the measured window opens and when it closes (the window is
/// known once the first thread sets `start`). Gives up, with `None`, as soon as `done`
/// is dropped: a run that ends early is not held up.
fn sample_cpu_busy(
    plan: Arc<Plan>,
    start: Arc<OnceLock<Instant>>,
    done: std::sync::mpsc::Receiver<()>,
) -> Option<BTreeMap<usize, f64>> {
    let wait_until = |at: Instant| -> bool {
        // false: the run is over (the sender was dropped) before `at`.
        let left = at.saturating_duration_since(Instant::now());
        left.is_zero()
            || matches!(
                done.recv_timeout(left),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            )
    };
    let t0 = loop {
        if let Some(t0) = start.get() {
            break *t0;
        }
        if !wait_until(Instant::now() + Duration::from_millis(5)) {
            return None;
        }
    };
    let window = window_from(&plan, t0);
    if !wait_until(window.measure_from) {
        return None;
    }
    let a = cpu_ticks()?;
    if !wait_until(window.end) {
        return None;
    }
    Some(cpu_busy_between(&a, &cpu_ticks()?))
}

async fn run_threads(plan: Arc<Plan>, mode: Mode) -> anyhow::Result<Report> {
    let wall = Instant::now();
    let cpu0 = process_cpu_seconds();
    let barrier = Arc::new(Barrier::new(plan.threads));
    let start: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let (done, done_rx) = std::sync::mpsc::channel::<()>();
    let sampler = {
        let (plan, start) = (plan.clone(), start.clone());
        std::thread::Builder::new()
            .name("bench-cpu".into())
            .spawn(move || sample_cpu_busy(plan, start, done_rx))
            .context("cannot start the CPU sampling thread")?
    };
    let mut handles = Vec::with_capacity(plan.threads);
    for t in 0..plan.threads {
        let plan = plan.clone();
        let barrier = barrier.clone();
        let start = start.clone();
        let handle = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || worker_thread(plan, mode, t, barrier, start))
            .context("cannot start a load-generator thread")?;
        handles.push(handle);
    }
    let joined = tokio::task::spawn_blocking(move || {
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    })
    .await
    .context("the load-generator threads could not be joined")?;
    drop(done);
    let cpu_busy = sampler.join().ok().flatten();
    let mut total = Report::new();
    total.cpu_busy = cpu_busy;
    for r in joined {
        match r {
            Ok(Ok(rep)) => total.merge(rep),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("a load-generator thread panicked"),
        }
    }
    if let (Some(a), Some(b)) = (cpu0, process_cpu_seconds()) {
        let secs = wall.elapsed().as_secs_f64().max(1e-9);
        total.client_cpu = Some((b - a) / secs / plan.threads as f64);
        total.client_cpu_seconds = Some(b - a);
    }
    Ok(total)
}

fn worker_thread(
    plan: Arc<Plan>,
    mode: Mode,
    index: usize,
    barrier: Arc<Barrier>,
    start: Arc<OnceLock<Instant>>,
) -> anyhow::Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime for a load-generator thread")?;
    if mode == Mode::Echo && raw::eligible(&plan) {
        // Plain ws:// closed loop: the event loop of bench/raw.rs.
        return raw::worker(&plan, index, &rt, &barrier, &start);
    }
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let slots: Vec<usize> = (index..plan.connections).step_by(plan.threads).collect();
        let mut first = Report::new();
        first.live = Some(plan.live.clone());
        let report = Rc::new(RefCell::new(first));
        // HTTP/2 streams are opened up front (several share one connection).
        let ramp = !plan.ramp_up.is_zero() && plan.h2_streams == 0;
        let mut conns = Vec::new();
        if mode == Mode::Echo && plan.h2_streams > 0 {
            // HTTP/2: `h2_streams` WebSockets per connection, opened before the window.
            for chunk in slots.chunks(plan.h2_streams) {
                let opened = open_h2_streams(&plan, chunk.len()).await;
                for c in opened {
                    match c {
                        Ok((s, early)) => conns.push(EchoConn::on(s, early, &plan, Rng::new())),
                        Err(e) => report.borrow_mut().fail(&e),
                    }
                }
            }
        } else if mode == Mode::Echo && !ramp {
            // Connect everything first, outside the measured window.
            let opened =
                futures_util::future::join_all(slots.iter().map(|_| EchoConn::open(&plan))).await;
            for c in opened {
                match c {
                    Ok(c) => conns.push(c),
                    Err(e) => report.borrow_mut().fail(&e),
                }
            }
        }
        barrier.wait();
        let t0 = *start.get_or_init(Instant::now);
        report.borrow_mut().origin = Some(t0);
        let _ = plan.live.started.set(t0);
        let window = window_from(&plan, t0);
        // With --ramp-up, slot i starts at t0 + ramp_up * i / connections.
        let start_of = |i: usize| {
            t0 + plan
                .ramp_up
                .mul_f64(i as f64 / plan.connections.max(1) as f64)
        };
        let mut tasks = Vec::new();
        match mode {
            Mode::Echo => {
                let mut pre = conns.into_iter();
                for &i in &slots {
                    let report = report.clone();
                    let plan = plan.clone();
                    let ready = if ramp { None } else { pre.next() };
                    if !ramp && ready.is_none() {
                        continue;
                    }
                    let at = start_of(i);
                    tasks.push(tokio::task::spawn_local(async move {
                        let c = match ready {
                            Some(c) => c,
                            None => {
                                tokio::time::sleep_until(at.into()).await;
                                match EchoConn::open(&plan).await {
                                    Ok(c) => c,
                                    Err(e) => return report.borrow_mut().fail(&e),
                                }
                            }
                        };
                        let grace = window.end + Duration::from_secs(2);
                        let work = async {
                            match plan.rate {
                                Some(rate) => c.run_rate(&plan, i, rate, window, &report).await,
                                None => c.run(&plan, window, &report).await,
                            }
                        };
                        match tokio::time::timeout_at(grace.into(), work).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => report.borrow_mut().fail(&e),
                            Err(_) => report.borrow_mut().error_of("timeout", || {
                                "a reply did not arrive within 2 s after the end of the run".into()
                            }),
                        }
                    }));
                }
            }
            Mode::Handshakes => {
                for &i in &slots {
                    let report = report.clone();
                    let plan = plan.clone();
                    let at = start_of(i);
                    tasks.push(tokio::task::spawn_local(async move {
                        tokio::time::sleep_until(at.into()).await;
                        handshake_loop(&plan, window, &report).await;
                    }));
                }
            }
            Mode::Idle => {}
        }
        for t in tasks {
            let _ = t.await;
        }
        let mut rep = report.replace(Report::new());
        rep.measured = window.end.saturating_duration_since(window.measure_from);
        rep.live = None;
        Ok(rep)
    })
}

/// Masking keys and handshake keys: a CSPRNG (`rand`'s `StdRng`, ChaCha12) seeded once per
/// connection from the thread's OS-seeded generator, so that masks are unpredictable as
/// RFC 6455 §5.3 asks, at a few nanoseconds per key.
struct Rng(rand::rngs::StdRng);

impl Rng {
    fn new() -> Self {
        use rand::SeedableRng as _;
        Rng(rand::rngs::StdRng::from_rng(&mut rand::rng()))
    }

    fn next(&mut self) -> u64 {
        use rand::Rng as _;
        self.0.random()
    }
}

/// Appends one masked client frame to `out`.
fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let len = payload.len();
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `buf` with the repeating 4-byte `mask`, eight bytes at a time.
fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ m8).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, hence of 4: the mask phase is 0 again.
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
}

/// A parsed server frame header.
#[derive(Debug, PartialEq, Eq)]
struct FrameHead {
    fin: bool,
    rsv: u8,
    opcode: u8,
    masked: bool,
    header_len: usize,
    payload_len: u64,
}

/// Parses a frame header at the start of `buf`; `None` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Option<FrameHead> {
    let (&b0, rest) = buf.split_first()?;
    let &b1 = rest.first()?;
    let (header_len, payload_len) = match b1 & 0x7F {
        126 => {
            let b = buf.get(2..4)?;
            (4, u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (10, u64::from_be_bytes(b))
        }
        n => (2, u64::from(n)),
    };
    let masked = b1 & 0x80 != 0;
    Some(FrameHead {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        masked,
        header_len: header_len + if masked { 4 } else { 0 },
        payload_len,
    })
}

/// The next complete server frame in `buf[*pos..len]`, checked to be unmasked, final and
/// without RSV bits; advances `*pos` past it and returns its header and the payload's range
/// in `buf`. `None` when more bytes are needed; an error for a frame larger than `buf` can
/// hold (bigger than `largest` expected) or a malformed one.
fn next_frame(
    buf: &[u8],
    pos: &mut usize,
    len: usize,
    largest: usize,
) -> Result<Option<(FrameHead, std::ops::Range<usize>)>, Fail> {
    let avail = &buf[*pos..len];
    let Some(head) = parse_head(avail) else {
        return Ok(None);
    };
    let total = head.header_len as u64 + head.payload_len;
    if total > avail.len() as u64 {
        if total > buf.len() as u64 {
            return Err(Fail::Protocol(format!(
                "the server sent a {} byte frame; the largest expected is {largest}",
                head.payload_len
            )));
        }
        return Ok(None);
    }
    let start = *pos + head.header_len;
    *pos += total as usize;
    if head.masked || head.rsv != 0 || !head.fin {
        return Err(Fail::Protocol(format!(
            "bad server frame: fin={} rsv={} masked={} (servers must send \
             unmasked, unfragmented frames without extensions here)",
            head.fin, head.rsv, head.masked
        )));
    }
    Ok(Some((head, start..*pos)))
}

/// Sends the upgrade request on `stream` and checks the 101 response. Returns the bytes read
/// after the response head (the start of the frame stream).
async fn handshake(stream: &mut Stream, plan: &Plan, rng: &mut Rng) -> anyhow::Result<Vec<u8>> {
    let mut raw_key = [0u8; 16];
    raw_key[..8].copy_from_slice(&rng.next().to_ne_bytes());
    raw_key[8..].copy_from_slice(&rng.next().to_ne_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(raw_key);
    let mut req = String::with_capacity(plan.request_head.len() + 32);
    req.push_str(&plan.request_head);
    req.push_str(&key);
    req.push_str("\r\n\r\n");
    // Flushed: a TLS stream keeps what the socket did not take at once until a flush
    // (or the next write, which would never come: the server waits for the request).
    stream
        .write_all(req.as_bytes())
        .await
        .context("cannot send the upgrade request")?;
    stream
        .flush()
        .await
        .context("cannot send the upgrade request")?;
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        if let Some(p) = find_head_end(&buf) {
            break p;
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(Fail::BadHandshake(format!(
                "the upgrade response head is larger than {MAX_RESPONSE_HEAD} bytes"
            ))
            .into());
        }
        buf.reserve(512);
        let n = stream
            .read_buf(&mut buf)
            .await
            .context("cannot read the upgrade response")?;
        if n == 0 {
            return Err(Fail::ClosedEarly(
                "the server closed the connection before answering the upgrade request".into(),
            )
            .into());
        }
    };
    check_upgrade_response(&buf[..head_end], &key)?;
    Ok(buf.split_off(head_end))
}

/// Index just past the blank line ending an HTTP head, if it is in `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The `Sec-WebSocket-Accept` value for `key` (RFC 6455 §4.2.2), computed here rather than
/// with switchyard's own code so that the benchmark checks the server independently.
fn expected_accept(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Checks a response head: status 101, `Upgrade: websocket`, the right accept value, and no
/// extension (none was offered).
fn check_upgrade_response(head: &[u8], key: &str) -> anyhow::Result<()> {
    let bad = |m: String| -> anyhow::Error { Fail::BadHandshake(m).into() };
    let Ok(text) = std::str::from_utf8(head) else {
        return Err(bad("the upgrade response head is not UTF-8".into()));
    };
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" || code != "101" {
        return Err(Fail::Status {
            code: code.parse().ok(),
            status: status.to_string(),
        }
        .into());
    }
    let mut upgrade_ok = false;
    let mut accept = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!(
                "malformed header line {line:?} in the upgrade response"
            )));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ok = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            return Err(bad(format!(
                "the server accepted extension {value:?} that was not offered"
            )));
        }
    }
    if !upgrade_ok {
        return Err(bad(
            "the 101 response has no \"Upgrade: websocket\" header".into()
        ));
    }
    let want = expected_accept(key);
    match accept {
        Some(a) if a == want => Ok(()),
        Some(a) => Err(bad(format!(
            "Sec-WebSocket-Accept is {a:?}, expected {want:?}"
        ))),
        None => Err(bad(
            "the 101 response has no Sec-WebSocket-Accept header".into()
        )),
    }
}

/// The transport under the hand-written framing.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An HTTP/2 stream after the extended CONNECT.
    Other(Box<dyn crate::dial::Io>),
}

impl Stream {
    /// Reset instead of FIN + TIME_WAIT when dropped (see the callers).
    fn set_zero_linger(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_zero_linger(),
            Stream::Tls(s) => s.get_ref().0.set_zero_linger(),
            Stream::Other(_) => Ok(()),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Tls($s) => $e,
            Stream::Other($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

async fn connect(plan: &Plan) -> anyhow::Result<Stream> {
    let s = TcpStream::connect(plan.addr)
        .await
        .map_err(|source| Fail::Connect {
            addr: plan.addr,
            source,
        })?;
    s.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    let Some(tls) = &plan.tls else {
        return Ok(Stream::Tcp(s));
    };
    let name = rustls::pki_types::ServerName::try_from(plan.target.authority.0.clone())
        .with_context(|| {
            format!(
                "{}: the host is not a valid TLS server name",
                plan.target.url
            )
        })?;
    let s = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, s)
        .await
        .with_context(|| format!("TLS handshake with {} failed", plan.addr))?;
    Ok(Stream::Tls(Box::new(s)))
}

/// Opens `n` WebSockets as streams of one HTTP/2 connection (RFC 8441) and hands over
/// their byte streams (the extended CONNECT and its 200 were checked by switchyard).
async fn open_h2_streams(plan: &Plan, n: usize) -> Vec<anyhow::Result<(Stream, Vec<u8>)>> {
    let conn = match switchyard::h2::H2Connection::connect(&plan.target.url, &plan.client).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot open the HTTP/2 connection: {e}");
            return (0..n).map(|_| Err(anyhow::anyhow!(msg.clone()))).collect();
        }
    };
    let opens = (0..n).map(|_| async {
        let (ws, _) = conn
            .websocket(&plan.target.path, &plan.client)
            .await
            .context("extended CONNECT failed")?;
        if ws.negotiated().deflate.is_some() {
            bail!("the server negotiated permessage-deflate, which was not offered");
        }
        Ok((Stream::Other(Box::new(ws.into_inner())), Vec::new()))
    });
    futures_util::future::join_all(opens).await
}

/// One echo connection, after its handshake.
struct EchoConn {
    stream: Stream,
    rng: Rng,
    /// Received bytes: `rbuf[rpos..rlen]` is unparsed.
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    sent: VecDeque<Instant>,
}

impl EchoConn {
    async fn open(plan: &Plan) -> anyhow::Result<Self> {
        let mut rng = Rng::new();
        let mut stream = connect(plan).await?;
        let early = handshake(&mut stream, plan, &mut rng).await?;
        Ok(Self::on(stream, early, plan, rng))
    }

    fn on(stream: Stream, early: Vec<u8>, plan: &Plan, rng: Rng) -> Self {
        // Room for a whole batch of replies, so that one read usually takes them all.
        let frame = plan.size + MAX_HEADER;
        let cap = (frame * plan.in_flight)
            .clamp(16 * 1024, 4 * 1024 * 1024)
            .max(frame * 2);
        let mut rbuf = vec![0u8; cap.max(early.len())];
        rbuf[..early.len()].copy_from_slice(&early);
        Self {
            stream,
            rng,
            rlen: early.len(),
            rbuf,
            rpos: 0,
            wbuf: Vec::with_capacity((frame + 4) * plan.in_flight),
            wpos: 0,
            sent: VecDeque::with_capacity(plan.in_flight),
        }
    }

    fn queue_messages(&mut self, plan: &Plan, n: usize, now: Instant) {
        for _ in 0..n {
            let mask = (self.rng.next() as u32).to_ne_bytes();
            push_frame(&mut self.wbuf, plan.opcode(), &plan.payload, mask);
            self.sent.push_back(now);
        }
    }

    /// Closed loop until `window.end`, then a close handshake.
    async fn run(
        mut self,
        plan: &Plan,
        window: Window,
        report: &RefCell<Report>,
    ) -> anyhow::Result<()> {
        self.queue_messages(plan, plan.in_flight, Instant::now());
        loop {
            let Some(n) = self.io(None).await? else {
                continue;
            };
            let now = Instant::now();
            let replies = self.take_replies(plan, n, now, window, report)?;
            if now >= window.end {
                // The measured window is over: replies still outstanding do not count.
                break;
            } else if replies > 0 {
                self.queue_messages(plan, replies, now);
            }
        }
        self.close().await;
        Ok(())
    }

    /// Open loop: this connection's share of `rate` messages per second, each sent at its
    /// scheduled time (late if the socket is blocked, but still timed from the schedule),
    /// until `window.end`, then a close handshake.
    async fn run_rate(
        mut self,
        plan: &Plan,
        slot: usize,
        rate: f64,
        window: Window,
        report: &RefCell<Report>,
    ) -> anyhow::Result<()> {
        let per_conn = rate / plan.connections as f64;
        let interval = Duration::from_secs_f64(1.0 / per_conn).max(Duration::from_nanos(1));
        // Spread the connections' schedules over one interval so that the total is smooth.
        let first =
            Instant::now().max(window.t0) + interval.mul_f64(slot as f64 / plan.connections as f64);
        let mut next = first;
        let sleep = tokio::time::sleep_until(next.into());
        tokio::pin!(sleep);
        loop {
            let read = self.io(Some(sleep.as_mut())).await?;
            let now = Instant::now();
            if let Some(n) = read {
                self.take_replies(plan, n, now, window, report)?;
            }
            if now >= window.end {
                break;
            }
            if next <= now {
                // Queue every message whose time has come, each stamped with its schedule
                // (forgiving the timer's own lateness, up to TIMER_SLACK).
                // At most MAX_PENDING_WRITE bytes wait for the socket: a target slower than
                // the rate delays the rest (still timed from their schedule) instead of
                // filling memory.
                while next <= now && next < window.end && self.wbuf.len() < MAX_PENDING_WRITE {
                    let mask = (self.rng.next() as u32).to_ne_bytes();
                    push_frame(&mut self.wbuf, plan.opcode(), &plan.payload, mask);
                    self.sent.push_back(now.min(next + TIMER_SLACK));
                    next += interval;
                }
                let wake = if self.wbuf.len() >= MAX_PENDING_WRITE {
                    // Backlogged: look again in a millisecond rather than spin.
                    now + Duration::from_millis(1)
                } else {
                    next.min(window.end)
                };
                sleep.as_mut().reset(wake.into());
            }
        }
        self.close().await;
        Ok(())
    }

    /// Accounts for `n` bytes just read: parses every complete frame, answers pings, checks
    /// the echoes and counts them. Returns the number of echoes.
    fn take_replies(
        &mut self,
        plan: &Plan,
        n: usize,
        now: Instant,
        window: Window,
        report: &RefCell<Report>,
    ) -> anyhow::Result<usize> {
        if n == 0 {
            return Err(Fail::ClosedEarly(
                "the server closed the TCP connection in the middle of the run".into(),
            )
            .into());
        }
        self.rlen += n;
        let mut replies = 0usize;
        let mut r = report.borrow_mut();
        // Parse every complete frame in the buffer.
        loop {
            let largest = plan.size.max(MAX_CONTROL);
            let Some((head, range)) = next_frame(&self.rbuf, &mut self.rpos, self.rlen, largest)?
            else {
                break;
            };
            let payload = &self.rbuf[range];
            match head.opcode {
                op if op == plan.opcode() => {
                    if payload != plan.payload.as_slice() {
                        return Err(Fail::Protocol(format!(
                            "echoed payload differs from the one sent ({} bytes back, {} sent)",
                            payload.len(),
                            plan.size
                        ))
                        .into());
                    }
                    let Some(sent_at) = self.sent.pop_front() else {
                        return Err(Fail::Protocol(
                            "the server echoed more messages than were sent".into(),
                        )
                        .into());
                    };
                    r.complete(now, now.saturating_duration_since(sent_at), &window);
                    replies += 1;
                }
                OP_PING => {
                    let payload = payload.to_vec();
                    let mask = (self.rng.next() as u32).to_ne_bytes();
                    push_frame(&mut self.wbuf, OP_PONG, &payload, mask);
                }
                OP_PONG => {}
                OP_CLOSE => {
                    return Err(Fail::ClosedEarly(
                        "the server sent a close frame in the middle of the run".into(),
                    )
                    .into())
                }
                op => {
                    return Err(Fail::Protocol(format!(
                        "the server sent opcode {op:#x}; expected {:#x} echoes",
                        plan.opcode()
                    ))
                    .into())
                }
            }
        }
        if replies > 0 {
            if let Some(live) = &r.live {
                live.done.fetch_add(replies as u64, Ordering::Relaxed);
            }
        }
        // Compact: move a partial frame to the front.
        if self.rpos == self.rlen {
            self.rpos = 0;
            self.rlen = 0;
        } else if self.rpos > 0 && self.rbuf.len() - self.rlen < MAX_HEADER + plan.size {
            self.rbuf.copy_within(self.rpos..self.rlen, 0);
            self.rlen -= self.rpos;
            self.rpos = 0;
        }
        Ok(replies)
    }

    /// Writes pending output and reads once, concurrently (so a large batch cannot deadlock
    /// against a server that is itself blocked writing replies). Returns the bytes read.
    /// With a `timer`, returns `None` as soon as it has fired (`Some(0)` is end of stream).
    async fn io(
        &mut self,
        mut timer: Option<Pin<&mut tokio::time::Sleep>>,
    ) -> anyhow::Result<Option<usize>> {
        let Self {
            stream,
            rbuf,
            rlen,
            wbuf,
            wpos,
            ..
        } = self;
        let n = poll_fn(|cx| {
            while *wpos < wbuf.len() {
                match Pin::new(&mut *stream).poll_write(cx, &wbuf[*wpos..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::Error::from(
                            std::io::ErrorKind::WriteZero,
                        )))
                    }
                    Poll::Ready(Ok(n)) => *wpos += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if *wpos == wbuf.len() {
                wbuf.clear();
                *wpos = 0;
            }
            // What a TLS stream buffered goes out now, not with the next batch (which
            // waits for these replies). Nothing to do on TCP.
            if let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            if let Some(t) = timer.as_mut() {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(None));
                }
            }
            let mut rb = ReadBuf::new(&mut rbuf[*rlen..]);
            match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(rb.filled().len()))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
        .context("connection error during the run")?;
        Ok(n)
    }

    /// Sends a close frame and waits briefly for the server to end the connection.
    async fn close(mut self) {
        let mut frame = Vec::with_capacity(8);
        let mask = (self.rng.next() as u32).to_ne_bytes();
        push_frame(&mut frame, OP_CLOSE, &1000u16.to_be_bytes(), mask);
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            self.stream.write_all(&frame).await?;
            self.stream.flush().await?;
            let mut sink = [0u8; 4096];
            while self.stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    }
}

/// Connect → upgrade → close handshake, repeated until the end of the window.
async fn handshake_loop(plan: &Plan, window: Window, report: &RefCell<Report>) {
    let mut rng = Rng::new();
    loop {
        let started = Instant::now();
        if started >= window.end {
            return;
        }
        match handshake_cycle(plan, &mut rng).await {
            Ok(()) => {
                let now = Instant::now();
                let mut r = report.borrow_mut();
                r.complete(now, now.saturating_duration_since(started), &window);
                if let Some(live) = &r.live {
                    live.done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                report.borrow_mut().fail(&e);
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn handshake_cycle(plan: &Plan, rng: &mut Rng) -> anyhow::Result<()> {
    let mut stream = connect(plan).await?;
    let early = handshake(&mut stream, plan, rng).await?;
    let mut frame = Vec::with_capacity(8);
    let mask = (rng.next() as u32).to_ne_bytes();
    push_frame(&mut frame, OP_CLOSE, &1000u16.to_be_bytes(), mask);
    stream
        .write_all(&frame)
        .await
        .context("cannot send the close frame")?;
    stream
        .flush()
        .await
        .context("cannot send the close frame")?;
    // Wait for the server's close frame (or its FIN).
    let mut buf = early;
    loop {
        if let Some(head) = parse_head(&buf) {
            if head.opcode == OP_CLOSE {
                break;
            }
            return Err(Fail::Protocol(format!(
                "expected the server's close frame after the handshake, got opcode {:#x}",
                head.opcode
            ))
            .into());
        }
        if buf.len() > MAX_HEADER + MAX_CONTROL {
            return Err(Fail::Protocol(
                "the server sent more than a close frame after the handshake".into(),
            )
            .into());
        }
        buf.reserve(64);
        let n = stream
            .read_buf(&mut buf)
            .await
            .context("cannot read the server's close frame")?;
        if n == 0 {
            break;
        }
    }
    // The close handshake is done: reset instead of leaving a TIME_WAIT socket behind, so
    // that tens of thousands of cycles do not exhaust the ephemeral ports.
    let _ = stream.set_zero_linger();
    Ok(())
}

/// Opens `plan.idle` connections, prints `ready` and holds them.
async fn run_idle(plan: Arc<Plan>, json: bool) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let started = Instant::now();
    let mut errors = 0u64;
    let mut first_error = None;
    let mut held = Vec::with_capacity(plan.idle);
    let opens = futures_util::stream::iter(0..plan.idle)
        .map(|_| {
            let plan = plan.clone();
            async move {
                let mut rng = Rng::new();
                let mut s = connect(&plan).await?;
                handshake(&mut s, &plan, &mut rng).await?;
                // When the holder is killed, reset instead of leaving thousands of
                // TIME_WAIT sockets that would eat the ephemeral ports of the next run.
                let _ = s.set_zero_linger();
                Ok::<_, anyhow::Error>(s)
            }
        })
        .buffer_unordered(256);
    futures_util::pin_mut!(opens);
    while let Some(r) = opens.next().await {
        match r {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "idle",
                "url": plan.target.url,
                "ready": held.len(),
                "errors": errors,
                "first_error": first_error,
                "open_seconds": secs,
            })
        );
    } else {
        println!(
            "ready: {} idle connections to {} open in {:.2} s, {} errors{}",
            held.len(),
            plan.target.url,
            secs,
            errors,
            first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
    }
    if held.is_empty() && plan.idle > 0 {
        bail!("no idle connection could be opened to {}", plan.target.url);
    }
    match plan.duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending::<()>().await,
    }
    drop(held);
    Ok(())
}

#[cold]
fn unreachable_bar() -> anyhow::Result<Report> {
    // `progress::show` loops forever; the select above only ends through the run.
    unreachable!("the progress bar never completes")
}

/// Nanoseconds to microseconds at quantile `q` (0 for an empty histogram).
fn quantile_us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The result as the JSON object `--json` prints and `--html` plots. The fields bench/run.sh
/// and bench/report.py read (msgs_per_s / handshakes_per_s, mb_per_s, p50_us, p99_us, errors,
/// client_cpu, client_cpu_seconds, messages_total / handshakes_total) keep their meaning.
fn summary_json(plan: &Plan, mode: Mode, r: &Report) -> serde_json::Value {
    use serde_json::json;
    let secs = r.measured.as_secs_f64().max(1e-9);
    let rate = r.completed as f64 / secs;
    let max = if r.latency.is_empty() {
        0.0
    } else {
        r.latency.max() as f64 / 1000.0
    };
    // Buckets up to the end of the measured window (the closing grace is left out); the
    // last one may be shorter than a second.
    let run_len = (plan.ramp_up + plan.warmup + plan.duration.unwrap_or_default()).as_secs_f64();
    let series: Vec<serde_json::Value> = r
        .series
        .iter()
        .enumerate()
        .take_while(|(t, _)| (*t as f64) < run_len)
        .map(|(t, b)| {
            let span = (run_len - t as f64).clamp(1e-3, 1.0);
            json!({
                "t": t,
                "span": span,
                "completed": b.completed,
                "per_s": b.completed as f64 / span,
                "errors": b.errors,
                "p50_us": quantile_us(&b.latency, 0.5),
                "p99_us": quantile_us(&b.latency, 0.99),
            })
        })
        .collect();
    let mut v = json!({
        "mode": if mode == Mode::Echo { "echo" } else { "handshakes" },
        "url": plan.target.url,
        "connections": plan.connections,
        "threads": plan.threads,
        "http2_streams": plan.h2_streams,
        "ramp_up": plan.ramp_up.as_secs_f64(),
        "warmup": plan.warmup.as_secs_f64(),
        "seconds": secs,
        "client_cpu": r.client_cpu,
        "client_cpu_seconds": r.client_cpu_seconds,
        "cpu_busy": r.cpu_busy,
        "p50_us": quantile_us(&r.latency, 0.5),
        "p90_us": quantile_us(&r.latency, 0.9),
        "p99_us": quantile_us(&r.latency, 0.99),
        "p999_us": quantile_us(&r.latency, 0.999),
        "max_us": max,
        "errors": r.errors,
        "errors_by_kind": r.errors_by_kind,
        "first_error": r.first_error,
        "series": series,
    });
    let extra = match mode {
        Mode::Echo => json!({
            "loop": if plan.rate.is_some() { "open" } else { "closed" },
            "rate": plan.rate,
            "in_flight": plan.in_flight,
            "size": plan.size,
            "binary": plan.binary,
            "messages": r.completed,
            "messages_total": r.total,
            "msgs_per_s": rate,
            "mb_per_s": rate * plan.size as f64 / 1e6,
        }),
        Mode::Handshakes | Mode::Idle => json!({
            "handshakes": r.completed,
            "handshakes_total": r.total,
            "handshakes_per_s": rate,
        }),
    };
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// The human summary, several lines, from the JSON summary.
fn summary_text(s: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    let u = |k: &str| s[k].as_u64().unwrap_or(0);
    let mut out = String::new();
    let echo = s["mode"] == "echo";
    let _ = writeln!(out, "switchyard bench {}", s["url"].as_str().unwrap_or(""));
    let mut ramp = if f("ramp_up") > 0.0 {
        format!(", {:.1} s ramp-up", f("ramp_up"))
    } else {
        String::new()
    };
    if u("http2_streams") > 0 {
        ramp.push_str(&format!(
            ", over HTTP/2 ({} WebSocket streams per TCP connection)",
            u("http2_streams")
        ));
    }
    if echo {
        let how = match s["rate"].as_f64() {
            Some(r) => format!("open loop at {r:.0} msgs/s"),
            None => format!("closed loop, {} in flight each", u("in_flight")),
        };
        let _ = writeln!(
            out,
            "  setup      {} connections, {how}, {} B {} messages{ramp}",
            u("connections"),
            u("size"),
            if s["binary"] == true {
                "binary"
            } else {
                "text"
            },
        );
    } else {
        let _ = writeln!(
            out,
            "  setup      {} concurrent connect/upgrade/close loops{ramp}",
            u("connections")
        );
    }
    let _ = writeln!(
        out,
        "  measured   {:.2} s after {:.1} s warm-up, {} load-generator thread(s){}",
        f("seconds"),
        f("warmup"),
        u("threads"),
        s["client_cpu"]
            .as_f64()
            .map(|c| format!(" at {:.0}% CPU", c * 100.0))
            .unwrap_or_default()
    );
    if let Some(cpus) = s["cpu_busy"].as_object().filter(|m| !m.is_empty()) {
        // Loopback runs: the kernel's receive work for each packet lands on the sender's
        // CPU, so a CPU can be full while no process there shows 100%.
        let busy: Vec<String> = cpus
            .iter()
            .map(|(cpu, b)| format!("cpu{cpu} {:.0}%", b.as_f64().unwrap_or(0.0) * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "  CPUs busy  {} (all processes and the kernel)",
            busy.join(", ")
        );
    }
    if echo {
        let _ = writeln!(
            out,
            "  messages   {} echoed, {:.0} msgs/s, {:.2} MB/s each way",
            u("messages"),
            f("msgs_per_s"),
            f("mb_per_s")
        );
    } else {
        let _ = writeln!(
            out,
            "  handshakes {} completed, {:.0} handshakes/s",
            u("handshakes"),
            f("handshakes_per_s")
        );
    }
    let completed = if echo { u("messages") } else { u("handshakes") };
    if completed == 0 {
        let _ = writeln!(out, "  latency    - (nothing completed)");
    } else {
        let _ = writeln!(
            out,
            "  latency    p50 {} | p90 {} | p99 {} | p99.9 {} | max {}",
            us(f("p50_us")),
            us(f("p90_us")),
            us(f("p99_us")),
            us(f("p999_us")),
            us(f("max_us"))
        );
    }
    let kinds = s["errors_by_kind"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if u("errors") == 0 {
        let _ = writeln!(out, "  errors     0");
    } else {
        let _ = writeln!(out, "  errors     {}: {kinds}", u("errors"));
        if let Some(e) = s["first_error"].as_str() {
            let _ = writeln!(out, "             first: {e}");
        }
    }
    out
}

/// Microseconds, readable: "85 us", "1.25 ms", "2.10 s".
pub(crate) fn us(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} ms", v / 1e3)
    } else {
        format!("{v:.0} us")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_busy_counts_all_but_idle_and_iowait_per_cpu() {
        let before = "cpu  300 0 300 900 10 0 100 0 0 0\n\
                      cpu0 100 0 100 500 10 0 50 0 0 0\n\
                      cpu1 200 0 200 400 0 0 50 0 0 0\n\
                      intr 12345\n";
        let after = "cpu  999 0 999 999 99 0 999 0 0 0\n\
                     cpu0 110 0 150 500 50 0 90 0 0 0\n\
                     cpu1 200 0 200 500 0 0 50 0 0 0\n\
                     cpu2 1 2 3 4 5 6 7 8 0 0\n";
        let a = parse_cpu_ticks(before);
        let b = parse_cpu_ticks(after);
        // The "cpu" total line and other lines are not CPUs.
        assert_eq!(a.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(a[&0], (250, 760));
        let busy = cpu_busy_between(&a, &b);
        // cpu0: +10 user +50 system +40 softirq busy, +40 iowait idle: 100 of 140.
        assert!((busy[&0] - 100.0 / 140.0).abs() < 1e-9, "{busy:?}");
        // cpu1: only idle time went by.
        assert_eq!(busy[&1], 0.0);
        // cpu2 appeared in the second reading only: no figure for it.
        assert!(!busy.contains_key(&2));
        // No time went by: no figure rather than a division by zero.
        assert!(cpu_busy_between(&a, &a).is_empty());
    }

    #[test]
    fn accept_value_matches_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            expected_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masked_frame_round_trips_and_has_right_header() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut out = Vec::new();
            push_frame(&mut out, OP_BINARY, &payload, mask);
            let head = parse_head(&out).expect("complete header");
            assert!(head.fin && head.masked && head.rsv == 0);
            assert_eq!(head.opcode, OP_BINARY);
            assert_eq!(head.payload_len, len as u64);
            let ext = match len {
                0..=125 => 0,
                126..=65535 => 2,
                _ => 8,
            };
            assert_eq!(head.header_len, 2 + ext + 4);
            assert_eq!(&out[2 + ext..2 + ext + 4], &mask);
            let mut body = out[head.header_len..].to_vec();
            assert_eq!(body.len(), len);
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn mask_matches_bytewise_definition() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            let mut a: Vec<u8> = (0..len as u8).collect();
            let b: Vec<u8> = a.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]).collect();
            apply_mask(&mut a, mask);
            assert_eq!(a, b, "len {len}");
        }
    }

    #[test]
    fn parse_head_needs_whole_header() {
        assert_eq!(parse_head(&[]), None);
        assert_eq!(parse_head(&[0x81]), None);
        assert_eq!(parse_head(&[0x82, 126, 0x01]), None);
        assert_eq!(parse_head(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0]), None);
        let h = parse_head(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]).expect("complete");
        assert_eq!(h.payload_len, 65536);
        assert_eq!(h.header_len, 10);
        let h = parse_head(&[0x01, 3]).expect("complete");
        assert!(!h.fin);
        assert_eq!(h.opcode, OP_TEXT);
    }

    #[test]
    fn response_checks() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        check_upgrade_response(ok.as_bytes(), key).expect("valid 101");
        let wrong_status = ok.replace("101 Switching Protocols", "200 OK");
        let e = check_upgrade_response(wrong_status.as_bytes(), key).unwrap_err();
        assert!(e.to_string().contains("200 OK"), "{e}");
        let wrong_accept = ok.replace("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "AAAA");
        let e = check_upgrade_response(wrong_accept.as_bytes(), key).unwrap_err();
        assert!(e.to_string().contains("Sec-WebSocket-Accept"), "{e}");
        let no_upgrade = ok.replace("Upgrade: websocket\r\n", "");
        assert!(check_upgrade_response(no_upgrade.as_bytes(), key).is_err());
        let ext = ok.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        );
        assert!(check_upgrade_response(ext.as_bytes(), key).is_err());
        assert_eq!(find_head_end(ok.as_bytes()), Some(ok.len()));
        assert_eq!(find_head_end(b"HTTP/1.1 101\r\n"), None);
    }

    #[test]
    fn target_parsing() {
        let t = Target::parse("ws://127.0.0.1:9001/echo?x=1").expect("valid");
        assert_eq!(t.authority, ("127.0.0.1".to_string(), 9001));
        assert_eq!(t.path, "/echo?x=1");
        assert_eq!(t.host_header, "127.0.0.1:9001");
        let t = Target::parse("ws://localhost").expect("valid");
        assert_eq!(t.authority.1, 80);
        assert_eq!(t.path, "/");
        let t = Target::parse("wss://localhost/").expect("valid");
        assert!(t.tls);
        assert_eq!(t.authority.1, 443);
        assert!(Target::parse("http://localhost/").is_err());
    }

    /// End to end against a tiny in-test echo server speaking just enough WebSocket.
    /// A short echo run over `ws://`: 4 connections, 3 binary messages of 300 bytes in flight.
    fn echo_args(url: &str) -> BenchArgs {
        BenchArgs {
            url: url.to_owned(),
            connections: 4,
            in_flight: 3,
            size: 300,
            binary: true,
            duration: Some(Duration::from_millis(300)),
            warmup: Duration::ZERO,
            handshakes: false,
            idle: None,
            threads: Some(2),
            json: true,
            rate: None,
            ramp_up: Duration::ZERO,
            html: None,
            ca: None,
            insecure: false,
            http2: false,
            streams: 1,
        }
    }

    #[tokio::test]
    async fn echo_and_handshake_modes_against_a_local_server() {
        let addr = spawn_test_echo_server().await;
        let url = format!("ws://{addr}/echo");
        let base = BenchArgs {
            warmup: Duration::from_millis(50),
            ..echo_args(&url)
        };
        let plan = Arc::new(
            Plan::from_args(&base, Target::parse(&url).expect("url"))
                .await
                .expect("plan"),
        );
        let r = run_threads(plan, Mode::Echo).await.expect("echo run");
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        assert!(r.completed > 0);
        assert!(!r.latency.is_empty());

        let hs = BenchArgs {
            handshakes: true,
            ..base
        };
        let plan = Arc::new(
            Plan::from_args(&hs, Target::parse(&url).expect("url"))
                .await
                .expect("plan"),
        );
        let r = run_threads(plan, Mode::Handshakes)
            .await
            .expect("handshake run");
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        assert!(r.completed > 0);
    }

    #[tokio::test]
    async fn wrong_echo_is_counted_as_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Some(_) = test_accept(&mut s).await else {
                        return;
                    };
                    // Answer every message with a text frame "no".
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&[0x81, 2, b'n', b'o']).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let url = format!("ws://{addr}/");
        let args = BenchArgs {
            url: url.clone(),
            connections: 2,
            in_flight: 1,
            size: 16,
            binary: false,
            duration: Some(Duration::from_millis(200)),
            warmup: Duration::ZERO,
            handshakes: false,
            idle: None,
            threads: Some(1),
            json: false,
            rate: None,
            ramp_up: Duration::ZERO,
            html: None,
            ca: None,
            insecure: false,
            http2: false,
            streams: 1,
        };
        let plan = Arc::new(
            Plan::from_args(&args, Target::parse(&url).expect("url"))
                .await
                .expect("plan"),
        );
        let r = run_threads(plan, Mode::Echo).await.expect("run");
        assert_eq!(r.completed, 0);
        assert_eq!(r.errors, 2);
        assert!(
            r.first_error
                .as_deref()
                .unwrap_or("")
                .contains("payload differs"),
            "{:?}",
            r.first_error
        );
    }

    #[tokio::test]
    async fn refused_upgrade_is_counted_with_its_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        let url = format!("ws://{addr}/");
        let args = BenchArgs {
            url: url.clone(),
            connections: 2,
            in_flight: 1,
            size: 16,
            binary: false,
            duration: Some(Duration::from_millis(100)),
            warmup: Duration::ZERO,
            handshakes: true,
            idle: None,
            threads: Some(1),
            json: false,
            rate: None,
            ramp_up: Duration::ZERO,
            html: None,
            ca: None,
            insecure: false,
            http2: false,
            streams: 1,
        };
        let plan = Arc::new(
            Plan::from_args(&args, Target::parse(&url).expect("url"))
                .await
                .expect("plan"),
        );
        let r = run_threads(plan, Mode::Handshakes).await.expect("run");
        assert_eq!(r.completed, 0);
        assert!(r.errors >= 2, "{}", r.errors);
        let first = r.first_error.unwrap_or_default();
        assert!(first.contains("HTTP/1.1 426 Upgrade Required"), "{first}");
        // And `run` itself reports failure when nothing completed.
        assert!(run(args).await.is_err());
    }

    #[tokio::test]
    async fn idle_mode_opens_and_holds_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(test_echo_server(s));
            }
        });
        let url = format!("ws://{addr}/");
        let args = BenchArgs {
            url,
            connections: 1,
            in_flight: 1,
            size: 16,
            binary: false,
            duration: Some(Duration::from_millis(50)),
            warmup: Duration::ZERO,
            handshakes: false,
            idle: Some(20),
            threads: None,
            json: true,
            rate: None,
            ramp_up: Duration::ZERO,
            html: None,
            ca: None,
            insecure: false,
            http2: false,
            streams: 1,
        };
        run(args).await.expect("idle run");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 20);
    }

    /// The gateway (TLS, HTTP/2 with extended CONNECT) on a free port.
    async fn gateway_tls() -> SocketAddr {
        use switchyard_gateway::config::{CertificateSource, Config, Overrides, TlsOverride};
        let mut flags = Overrides::new();
        flags.listen = vec!["127.0.0.1:0".parse().expect("addr")];
        flags.tls = Some(TlsOverride::Listener(CertificateSource::SelfSigned));
        let cfg = flags.apply(Config::embedded_default()).expect("config");
        let gateway = switchyard_gateway::Gateway::new(cfg, None).expect("gateway");
        let server = switchyard_gateway::Server::bind(gateway)
            .await
            .expect("bind");
        let addr = server.addresses()[0].tcp;
        tokio::spawn(server.run(std::future::pending()));
        addr
    }

    fn tls_args(url: &str, http2: bool, streams: usize) -> BenchArgs {
        BenchArgs {
            url: url.to_owned(),
            ca: None,
            insecure: true,
            http2,
            streams,
            connections: 6,
            in_flight: 2,
            size: 100,
            binary: false,
            duration: Some(Duration::from_millis(300)),
            warmup: Duration::from_millis(50),
            handshakes: false,
            idle: None,
            threads: Some(1),
            json: true,
            rate: None,
            ramp_up: Duration::ZERO,
            html: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echo_over_wss_and_http2_streams() {
        let addr = gateway_tls().await;
        let url = format!("wss://localhost:{}/echo", addr.port());
        for (http2, streams) in [(false, 1), (true, 3), (true, 1)] {
            let args = tls_args(&url, http2, streams);
            let plan = Arc::new(
                Plan::from_args(&args, Target::parse(&url).expect("url"))
                    .await
                    .expect("plan"),
            );
            assert_eq!(plan.h2_streams, if http2 { streams } else { 0 });
            let r = run_threads(plan, Mode::Echo).await.expect("echo run");
            assert_eq!(r.errors, 0, "http2={http2}: {:?}", r.first_error);
            assert!(r.completed > 0, "http2={http2}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wss_without_trust_fails_the_tls_handshake() {
        let addr = gateway_tls().await;
        let url = format!("wss://localhost:{}/echo", addr.port());
        let args = BenchArgs {
            insecure: false,
            ..tls_args(&url, false, 1)
        };
        let plan = Arc::new(
            Plan::from_args(&args, Target::parse(&url).expect("url"))
                .await
                .expect("plan"),
        );
        let r = run_threads(plan, Mode::Echo).await.expect("run");
        assert_eq!(r.completed, 0);
        assert!(
            r.first_error
                .as_deref()
                .is_some_and(|e| e.contains("TLS handshake")),
            "{:?}",
            r.first_error
        );
    }

    /// A stream that sends only when flushed, like TLS with what the socket did not take
    /// at once (rare on loopback, so a TLS test would not show it).
    struct SendsOnFlush {
        inner: TcpStream,
        out: Vec<u8>,
    }

    impl AsyncRead for SendsOnFlush {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for SendsOnFlush {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.out.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            let Self { inner, out } = &mut *self;
            while !out.is_empty() {
                let n = std::task::ready!(Pin::new(&mut *inner).poll_write(cx, out))?;
                out.drain(..n);
            }
            Pin::new(inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::task::ready!(self.as_mut().poll_flush(cx))?;
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// The upgrade request, the messages and the close frame reach a server through a
    /// stream that sends only on flush (`switchyard bench` over wss once waited 10 s for
    /// a 408 that way: its request sat in rustls).
    #[tokio::test]
    async fn writes_are_flushed_for_streams_that_buffer() {
        let addr = spawn_test_echo_server().await;
        let url = format!("ws://{addr}/echo");
        let args = BenchArgs {
            connections: 1,
            in_flight: 1,
            threads: Some(1),
            ..echo_args(&url)
        };
        let plan = Plan::from_args(&args, Target::parse(&url).expect("url"))
            .await
            .expect("plan");
        let inner = TcpStream::connect(addr).await.expect("connect");
        let mut stream = Stream::Other(Box::new(SendsOnFlush {
            inner,
            out: Vec::new(),
        }));
        let mut rng = Rng::new();
        let early = tokio::time::timeout(
            Duration::from_secs(2),
            handshake(&mut stream, &plan, &mut rng),
        )
        .await
        .expect("no 101: the upgrade request was never sent")
        .expect("handshake");
        let mut conn = EchoConn::on(stream, early, &plan, rng);
        conn.queue_messages(&plan, 1, Instant::now());
        let mut got = 0;
        while got < 300 + 4 {
            let n = tokio::time::timeout(Duration::from_secs(2), conn.io(None))
                .await
                .expect("no echo: the message was never sent")
                .expect("io")
                .expect("no timer");
            assert!(n > 0, "the server closed the connection");
            got += n;
        }
        // The close frame goes out too: the test server echoes it and ends.
        let start = Instant::now();
        conn.close().await;
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "no close reply"
        );
    }

    /// Reads the upgrade request and answers 101; returns the bytes after the request head.
    async fn test_accept(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let end = loop {
            if let Some(p) = find_head_end(&buf) {
                break p;
            }
            buf.reserve(1024);
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        };
        let head = std::str::from_utf8(&buf[..end]).ok()?;
        let key = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))?
            .to_string();
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            expected_accept(&key)
        );
        s.write_all(resp.as_bytes()).await.ok()?;
        Some(buf.split_off(end))
    }

    /// [`test_echo_server`] on a local port, for the rest of the test.
    async fn spawn_test_echo_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(test_echo_server(s));
            }
        });
        addr
    }

    async fn test_echo_server(mut s: TcpStream) {
        let Some(mut buf) = test_accept(&mut s).await else {
            return;
        };
        loop {
            while let Some(h) = parse_head(&buf) {
                let total = h.header_len + h.payload_len as usize;
                if buf.len() < total {
                    break;
                }
                let mask: [u8; 4] = buf[h.header_len - 4..h.header_len]
                    .try_into()
                    .expect("mask");
                let mut payload = buf[h.header_len..total].to_vec();
                apply_mask(&mut payload, mask);
                buf.drain(..total);
                let mut out = vec![0x80 | h.opcode];
                match payload.len() {
                    n if n < 126 => out.push(n as u8),
                    n if n <= 65535 => {
                        out.push(126);
                        out.extend_from_slice(&(n as u16).to_be_bytes());
                    }
                    n => {
                        out.push(127);
                        out.extend_from_slice(&(n as u64).to_be_bytes());
                    }
                }
                out.extend_from_slice(&payload);
                if s.write_all(&out).await.is_err() {
                    return;
                }
                if h.opcode == OP_CLOSE {
                    return;
                }
            }
            buf.reserve(64 * 1024);
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

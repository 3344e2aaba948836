//! `switchyard monitor URL... [--interval D] [--listen ADDR]`: keep a
//! WebSocket open to each target and measure it. (`switchyard monitor
//! --admin ADDR` shows a gateway's own view instead: [`crate::status_view`].)
//!
//! For each target: the handshake time of every connection (TCP, proxy, TLS
//! and the upgrade to 101), the round trip of a ping sent every `--interval`
//! (a pong that does not come within `--ping-timeout` ends the connection,
//! recorded with the code `timeout`), the availability (time connected /
//! time monitored), and every disconnect with its close code (the server's
//! close code, `1005` for a close frame without one, `1006` when the
//! connection was dropped without a close frame). A lost or refused
//! connection is retried after 250 ms, doubling up to `--max-backoff`.
//!
//! Output: a live table when stdout is a terminal; otherwise (or with
//! `--json`) one JSON object per line and per event:
//!
//! | event | fields besides `time`, `target`, `event`, `up`, `availability` |
//! |-------|------|
//! | `connected` | `handshake_ms`, `subprotocol` (or null), `transport` (`HTTP/1.1`, `HTTP/2`, `HTTP/3`), `connection` (its number) |
//! | `ping` | `rtt_ms` |
//! | `disconnected` | `code` (number, or `"timeout"`), `reason`, `connected_for_s` |
//! | `connect_failed` | `error` (the diagnosis), `attempt` (failures in a row), `retry_in_ms` |
//!
//! With `--listen ADDR`, `GET /metrics` answers Prometheus text:
//! `switchyard_monitor_up`, `_availability_ratio`, `_handshake_seconds` (last),
//! `_ping_rtt_seconds` (histogram), `_disconnects_total{code}`,
//! `_connect_attempts_total`, `_connect_failures_total`, all labelled `target`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use switchyard_gateway::config::parse_flag_duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use switchyard::{CloseCode, Limits, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::connect::rfc3339;
use crate::diagnose::diagnose_dial;
use crate::dial::{ConnOpts, Dialer};

const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Upper bounds of the RTT histogram buckets, in seconds.
pub const RTT_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    /// The WebSocket URLs to watch (ws://, wss://).
    #[arg(
        required_unless_present = "admin",
        conflicts_with = "admin",
        value_name = "URL"
    )]
    pub urls: Vec<String>,
    /// Instead of URLs: show the gateway's live table from its admin
    /// listener (`[admin] address`, GET /status.json), refreshed every
    /// --interval.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: Option<SocketAddr>,
    /// With --admin: the file holding the admin bearer token (the server's
    /// `[admin] token_file`).
    #[arg(long, value_name = "FILE", requires = "admin")]
    pub token_file: Option<std::path::PathBuf>,
    /// With --admin: print the table once and exit (for scripts).
    #[arg(long, requires = "admin")]
    pub once: bool,
    /// Send a ping this often on each connection (with --admin: refresh
    /// this often).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_flag_duration)]
    pub interval: Duration,
    /// A pong that does not come within this ends the connection.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_flag_duration)]
    pub ping_timeout: Duration,
    /// Longest delay between reconnect attempts.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_flag_duration)]
    pub max_backoff: Duration,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// JSON lines even when stdout is a terminal.
    #[arg(long)]
    pub json: bool,
    /// Stop after this long (default: run until interrupted).
    #[arg(long, value_name = "DURATION", value_parser = parse_flag_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub conn: ConnOpts,
}

/// A Prometheus-style histogram with fixed buckets.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last slot is +Inf.
    counts: [u64; RTT_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn observe(&mut self, secs: f64) {
        let i = RTT_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(RTT_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// What we know about one target.
#[derive(Debug)]
pub struct TargetStats {
    pub url: String,
    pub up: bool,
    started: Instant,
    /// When `up` last changed.
    since: Instant,
    /// Time connected, not counting the current stretch.
    up_total: Duration,
    pub attempts: u64,
    pub failures: u64,
    pub connections: u64,
    pub last_handshake: Option<Duration>,
    pub last_rtt: Option<Duration>,
    pub rtt: Histogram,
    /// Disconnects by code ("1011", "1006", "timeout"...).
    pub disconnects: BTreeMap<String, u64>,
    pub last_error: Option<String>,
}

impl TargetStats {
    pub fn new(url: &str, now: Instant) -> Self {
        TargetStats {
            url: url.to_owned(),
            up: false,
            started: now,
            since: now,
            up_total: Duration::ZERO,
            attempts: 0,
            failures: 0,
            connections: 0,
            last_handshake: None,
            last_rtt: None,
            rtt: Histogram::default(),
            disconnects: BTreeMap::new(),
            last_error: None,
        }
    }

    fn set_up(&mut self, up: bool, now: Instant) {
        if self.up && !up {
            self.up_total += now.saturating_duration_since(self.since);
        }
        if self.up != up {
            self.since = now;
        }
        self.up = up;
    }

    /// Time connected / time monitored, in [0, 1].
    pub fn availability(&self, now: Instant) -> f64 {
        let total = now.saturating_duration_since(self.started).as_secs_f64();
        if total <= 0.0 {
            return if self.up { 1.0 } else { 0.0 };
        }
        let mut up = self.up_total;
        if self.up {
            up += now.saturating_duration_since(self.since);
        }
        (up.as_secs_f64() / total).clamp(0.0, 1.0)
    }
}

type Shared = Arc<Vec<Mutex<TargetStats>>>;

fn lock(m: &Mutex<TargetStats>) -> MutexGuard<'_, TargetStats> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prometheus label value escaping (backslash, quote, newline).
pub fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition of every target.
pub fn render_metrics(targets: &[&TargetStats], now: Instant) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
    };
    family(
        &mut o,
        "switchyard_monitor_up",
        "gauge",
        "Whether the WebSocket to the target is open (1) or not (0).",
    );
    for t in targets {
        let _ = writeln!(
            o,
            "switchyard_monitor_up{{target=\"{}\"}} {}",
            escape_label(&t.url),
            u8::from(t.up)
        );
    }
    family(
        &mut o,
        "switchyard_monitor_availability_ratio",
        "gauge",
        "Time connected divided by time monitored.",
    );
    for t in targets {
        let _ = writeln!(
            o,
            "switchyard_monitor_availability_ratio{{target=\"{}\"}} {}",
            escape_label(&t.url),
            t.availability(now)
        );
    }
    family(
        &mut o,
        "switchyard_monitor_handshake_seconds",
        "gauge",
        "Time to open the last connection: TCP, proxy, TLS and the upgrade to 101.",
    );
    for t in targets {
        if let Some(h) = t.last_handshake {
            let _ = writeln!(
                o,
                "switchyard_monitor_handshake_seconds{{target=\"{}\"}} {}",
                escape_label(&t.url),
                h.as_secs_f64()
            );
        }
    }
    family(
        &mut o,
        "switchyard_monitor_ping_rtt_seconds",
        "histogram",
        "Round trip of a WebSocket ping to its pong.",
    );
    for t in targets {
        let l = escape_label(&t.url);
        let mut cum = 0;
        for (i, b) in RTT_BUCKETS.iter().enumerate() {
            cum += t.rtt.counts[i];
            let _ = writeln!(
                o,
                "switchyard_monitor_ping_rtt_seconds_bucket{{target=\"{l}\",le=\"{b}\"}} {cum}"
            );
        }
        let _ = writeln!(
            o,
            "switchyard_monitor_ping_rtt_seconds_bucket{{target=\"{l}\",le=\"+Inf\"}} {}",
            t.rtt.count
        );
        let _ = writeln!(
            o,
            "switchyard_monitor_ping_rtt_seconds_sum{{target=\"{l}\"}} {}",
            t.rtt.sum
        );
        let _ = writeln!(
            o,
            "switchyard_monitor_ping_rtt_seconds_count{{target=\"{l}\"}} {}",
            t.rtt.count
        );
    }
    family(
        &mut o,
        "switchyard_monitor_disconnects_total",
        "counter",
        "Connections that ended, by close code (1006: dropped without a close frame; timeout: no pong).",
    );
    for t in targets {
        for (code, n) in &t.disconnects {
            let _ = writeln!(
                o,
                "switchyard_monitor_disconnects_total{{target=\"{}\",code=\"{}\"}} {n}",
                escape_label(&t.url),
                escape_label(code)
            );
        }
    }
    family(
        &mut o,
        "switchyard_monitor_connect_attempts_total",
        "counter",
        "Attempts to open a connection.",
    );
    for t in targets {
        let _ = writeln!(
            o,
            "switchyard_monitor_connect_attempts_total{{target=\"{}\"}} {}",
            escape_label(&t.url),
            t.attempts
        );
    }
    family(
        &mut o,
        "switchyard_monitor_connect_failures_total",
        "counter",
        "Attempts that failed before the WebSocket was open.",
    );
    for t in targets {
        let _ = writeln!(
            o,
            "switchyard_monitor_connect_failures_total{{target=\"{}\"}} {}",
            escape_label(&t.url),
            t.failures
        );
    }
    o
}

/// Where events go.
#[derive(Clone, Copy)]
struct Sink {
    json: bool,
}

impl Sink {
    fn event(&self, stats: &TargetStats, now: Instant, event: &str, mut fields: serde_json::Value) {
        if !self.json {
            return;
        }
        if let Some(obj) = fields.as_object_mut() {
            obj.insert("time".into(), json!(rfc3339(SystemTime::now())));
            obj.insert("target".into(), json!(stats.url));
            obj.insert("event".into(), json!(event));
            obj.insert("up".into(), json!(stats.up));
            obj.insert(
                "availability".into(),
                json!((stats.availability(now) * 1e6).round() / 1e6),
            );
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{fields}");
        let _ = out.flush();
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Keep one target connected forever.
async fn watch(dialer: Dialer, slot: Arc<Vec<Mutex<TargetStats>>>, i: usize, args: Arc<Knobs>) {
    let Some(cell) = slot.get(i) else { return };
    let mut backoff = FIRST_BACKOFF;
    let mut failures_in_row: u64 = 0;
    loop {
        lock(cell).attempts += 1;
        let dialed = dialer.dial(None).await;
        let now = Instant::now();
        let d = match dialed {
            Err(e) => {
                failures_in_row += 1;
                let diag = diagnose_dial(&e, &dialer.target.url);
                {
                    let mut s = lock(cell);
                    s.failures += 1;
                    s.last_error = Some(diag.summary.clone());
                    args.sink.event(
                        &s,
                        now,
                        "connect_failed",
                        json!({
                            "error": diag.to_string(),
                            "attempt": failures_in_row,
                            "retry_in_ms": backoff.as_millis() as u64,
                        }),
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(args.max_backoff.max(FIRST_BACKOFF));
                continue;
            }
            Ok(d) => d,
        };
        failures_in_row = 0;
        backoff = FIRST_BACKOFF;
        {
            let mut s = lock(cell);
            s.connections += 1;
            s.last_handshake = Some(d.timings.total);
            s.set_up(true, now);
            let conn_no = s.connections;
            args.sink.event(
                &s,
                now,
                "connected",
                json!({
                    "handshake_ms": ms(d.timings.total),
                    "subprotocol": d.ws.negotiated().subprotocol,
                    "transport": d.ws.transport(),
                    "connection": conn_no,
                }),
            );
        }
        let connected_at = Instant::now();
        let (code, reason) = crate::with_ws!(d.ws, ws => ping_loop(ws, cell, &args).await);
        let now = Instant::now();
        {
            let mut s = lock(cell);
            s.set_up(false, now);
            *s.disconnects.entry(code.clone()).or_insert(0) += 1;
            s.last_error = Some(if reason.is_empty() {
                format!("closed with {code}")
            } else {
                format!("closed with {code}: {reason}")
            });
            let code_json = code
                .parse::<u16>()
                .map(|c| json!(c))
                .unwrap_or_else(|_| json!(code));
            args.sink.event(
                &s,
                now,
                "disconnected",
                json!({
                    "code": code_json,
                    "reason": reason,
                    "connected_for_s": (now - connected_at).as_secs_f64(),
                }),
            );
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Ping every interval until the connection ends; returns its close code and reason.
async fn ping_loop<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut ws: switchyard::WebSocket<S>,
    cell: &Mutex<TargetStats>,
    args: &Knobs,
) -> (String, String) {
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    let mut outstanding: Option<(Bytes, Instant)> = None;
    let mut peer_close: Option<(String, String)> = None;
    let far = Duration::from_secs(365 * 86_400);
    loop {
        let pong_deadline = outstanding
            .as_ref()
            .map_or(Instant::now() + far, |(_, at)| *at + args.ping_timeout);
        tokio::select! {
            _ = ticker.tick(), if outstanding.is_none() && peer_close.is_none() => {
                seq += 1;
                let payload = Bytes::from(format!("switchyard-monitor {seq}"));
                outstanding = Some((payload.clone(), Instant::now()));
                if let Err(e) = ws.send(Message::Ping(payload)).await {
                    return ("1006".into(), crate::diagnose::diagnose_drop(&e));
                }
            }
            _ = tokio::time::sleep_until(pong_deadline.into()), if outstanding.is_some() => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    ws.close(CloseCode::INTERNAL_ERROR, "pong timeout"),
                ).await;
                return ("timeout".into(), format!("no pong within {:?}", args.ping_timeout));
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Pong(p))) => {
                    if let Some((want, at)) = &outstanding {
                        if *want == p {
                            let rtt = at.elapsed();
                            outstanding = None;
                            let now = Instant::now();
                            let mut s = lock(cell);
                            s.last_rtt = Some(rtt);
                            s.rtt.observe(rtt.as_secs_f64());
                            args.sink.event(&s, now, "ping", json!({ "rtt_ms": ms(rtt) }));
                        }
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    peer_close = Some(match f {
                        Some(f) => (f.code.0.to_string(), f.reason),
                        None => ("1005".into(), String::new()),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let code = e
                        .close_code()
                        .map_or_else(|| "1006".to_owned(), |c| c.0.to_string());
                    return (code, crate::diagnose::diagnose_drop(&e));
                }
                None => {
                    return peer_close.unwrap_or_else(|| {
                        ("1006".into(), "dropped without a close frame".into())
                    });
                }
            },
        }
    }
}

struct Knobs {
    interval: Duration,
    ping_timeout: Duration,
    max_backoff: Duration,
    sink: Sink,
}

/// Answer `GET /metrics` with the Prometheus text, anything else with 404/405.
async fn serve_metrics(listener: TcpListener, shared: Shared) {
    loop {
        let s = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(s, shared)).await;
        });
    }
}

async fn answer(mut s: TcpStream, shared: Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 8192 {
            return respond(&mut s, "431 Request Header Fields Too Large", "").await;
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = {
                let guards: Vec<_> = shared.iter().map(lock).collect();
                let refs: Vec<&TargetStats> = guards.iter().map(|g| &**g).collect();
                render_metrics(&refs, Instant::now())
            };
            respond(&mut s, "200 OK", &body).await
        }
        (_, "/metrics") => respond(&mut s, "405 Method Not Allowed", "use GET\n").await,
        _ => respond(&mut s, "404 Not Found", "metrics are at /metrics\n").await,
    }
}

async fn respond(s: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
    )
}

/// The live table (one screen).
pub fn render_table(targets: &[&TargetStats], now: Instant, interval: Duration) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "switchyard monitor — {} target(s), ping every {:?}    {}",
        targets.len(),
        interval,
        rfc3339(SystemTime::now())
    );
    let w = targets
        .iter()
        .map(|t| t.url.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        o,
        "{:w$}  {:5}  {:>7}  {:>10}  {:>10}  {:>10}  {:6}  {:18}  LAST ERROR",
        "TARGET", "STATE", "AVAIL", "HANDSHAKE", "RTT", "RTT AVG", "CONNS", "DISCONNECTS"
    );
    for t in targets {
        let disc = if t.disconnects.is_empty() {
            "-".to_owned()
        } else {
            t.disconnects
                .iter()
                .map(|(c, n)| format!("{c}×{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let state = if t.up {
            "\x1b[32mup\x1b[0m   "
        } else {
            "\x1b[31mdown\x1b[0m "
        };
        let _ = writeln!(
            o,
            "{:w$}  {state}  {:>6.2}%  {:>10}  {:>10}  {:>10}  {:6}  {:18}  {}",
            t.url,
            t.availability(now) * 100.0,
            fmt_ms(t.last_handshake),
            fmt_ms(t.last_rtt),
            fmt_ms(t.rtt.mean().map(Duration::from_secs_f64)),
            t.connections,
            disc,
            t.last_error.as_deref().unwrap_or("")
        );
    }
    o
}

/// Run `monitor`; returns the exit status (0, or 2 for bad arguments).
pub async fn run(args: MonitorArgs) -> i32 {
    if let Some(addr) = args.admin {
        return crate::status_view::run(addr, args.token_file.as_deref(), args.once, args.interval)
            .await;
    }
    let json_mode = args.json || !std::io::stdout().is_terminal();
    let limits = Limits::default();
    let mut dialers = Vec::new();
    for url in &args.urls {
        match args.conn.dialer(url, limits.clone()) {
            Ok(d) => dialers.push(d),
            Err(e) => {
                eprintln!("error: {}", diagnose_dial(&e, url));
                return 2;
            }
        }
    }
    let now = Instant::now();
    let shared: Shared = Arc::new(
        args.urls
            .iter()
            .map(|u| Mutex::new(TargetStats::new(u, now)))
            .collect(),
    );
    if let Some(addr) = args.listen {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                let local = l.local_addr().map_or(addr, |a| a);
                eprintln!("metrics on http://{local}/metrics");
                tokio::spawn(serve_metrics(l, shared.clone()));
            }
            Err(e) => {
                eprintln!("error: cannot listen on {addr} for metrics: {e} (another process on the port? try 127.0.0.1:0)");
                return 1;
            }
        }
    }
    let knobs = Arc::new(Knobs {
        interval: args.interval,
        ping_timeout: args.ping_timeout,
        max_backoff: args.max_backoff,
        sink: Sink { json: json_mode },
    });
    for (i, d) in dialers.into_iter().enumerate() {
        tokio::spawn(watch(d, shared.clone(), i, knobs.clone()));
    }
    let table = async {
        if json_mode {
            return std::future::pending::<()>().await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let screen = {
                let guards: Vec<_> = shared.iter().map(lock).collect();
                let refs: Vec<&TargetStats> = guards.iter().map(|g| &**g).collect();
                render_table(&refs, Instant::now(), args.interval)
            };
            let mut out = std::io::stdout().lock();
            // Home, clear to the end of the screen, draw.
            let _ = write!(out, "\x1b[H\x1b[J{screen}");
            let _ = out.flush();
        }
    };
    match args.duration {
        Some(d) => {
            let _ = tokio::time::timeout(d, table).await;
        }
        None => {
            tokio::select! {
                _ = table => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_text() {
        let now = Instant::now();
        let mut t = TargetStats::new("ws://a\"b/", now);
        t.rtt.observe(0.0004);
        t.rtt.observe(0.003);
        t.rtt.observe(20.0);
        let text = render_metrics(&[&t], now);
        assert!(text.contains(
            "switchyard_monitor_ping_rtt_seconds_bucket{target=\"ws://a\\\"b/\",le=\"0.0005\"} 1\n"
        ), "{text}");
        assert!(text.contains("le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 3\n"), "{text}");
        assert!(
            text.contains("switchyard_monitor_ping_rtt_seconds_count{target=\"ws://a\\\"b/\"} 3\n")
        );
        assert!(text.contains("switchyard_monitor_up{target=\"ws://a\\\"b/\"} 0\n"));
    }

    #[test]
    fn availability_counts_only_connected_time() {
        let t0 = Instant::now();
        let mut t = TargetStats::new("x", t0);
        t.set_up(true, t0 + Duration::from_secs(1));
        t.set_up(false, t0 + Duration::from_secs(3));
        let a = t.availability(t0 + Duration::from_secs(4));
        assert!((a - 0.5).abs() < 1e-9, "{a}");
        t.set_up(true, t0 + Duration::from_secs(4));
        let a = t.availability(t0 + Duration::from_secs(8));
        assert!((a - 0.75).abs() < 1e-9, "{a}");
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }

    #[test]
    fn table_shows_codes_and_state() {
        let now = Instant::now();
        let mut t = TargetStats::new("ws://h/", now);
        t.disconnects.insert("1011".into(), 2);
        let s = render_table(&[&t], now, Duration::from_secs(5));
        assert!(s.contains("1011×2"), "{s}");
        assert!(s.contains("down"), "{s}");
    }
}

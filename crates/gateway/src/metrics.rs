//! The gateway's Prometheus text registry: counters, gauges and
//! histograms kept with atomics and short-lived locks, rendered by
//! [`Metrics::render`] in the text exposition format (version 0.0.4).
//!
//! No crate: the set of series is fixed and small, and the label sets are
//! bounded by the configuration (routes, upstream groups, backends) plus a
//! fixed list of results and reasons, so a map under a mutex per family is
//! enough and the peer cannot make it grow.
//!
//! | family | type | labels |
//! |---|---|---|
//! | `switchyard_open_connections` | gauge | `route`, `protocol` (h1/h2/h3), `transport` |
//! | `switchyard_upgrade_attempts_total` | counter | `route`, `result`, `reason` |
//! | `switchyard_closes_total` | counter | `route`, `by`, `why`, `code` |
//! | `switchyard_tunnel_bytes_total` | counter | `route`, `direction` |
//! | `switchyard_tunnel_messages_total` | counter | `route`, `direction` |
//! | `switchyard_tunnel_spliced_bytes_total` | counter | `route`, `direction` |
//! | `switchyard_handshake_duration_seconds` | histogram | `route`, `protocol` |
//! | `switchyard_ping_rtt_seconds` | histogram | `route`, `side` |
//! | `switchyard_tunnel_duration_seconds` | histogram | `route` |
//! | `switchyard_upstream_healthy` | gauge | `upstream`, `backend` |

use crate::sync::lock;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::failures::FailureLog;
use crate::outcome::Blame;
use switchyard::proto::HttpVersion;

/// What a switched connection carries: the `transport` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// A WebSocket (HTTP/1.1 upgrade, or extended CONNECT over HTTP/2 or
    /// HTTP/3).
    WebSocket,
    /// Any other upgrade token the route allows (`lineecho/1`...).
    Upgrade,
}

impl Transport {
    /// The transport of a connection switched to `token`.
    pub fn of_token(token: &str) -> Self {
        if token.eq_ignore_ascii_case("websocket") {
            Transport::WebSocket
        } else {
            Transport::Upgrade
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::Upgrade => "upgrade",
        }
    }
}

/// Why a switched connection ended: the `why` label of
/// `switchyard_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CloseWhy {
    /// A close frame (its code is the `code` label).
    CloseFrame,
    /// The transport ended without a close frame (EOF, reset), or a
    /// protocol without close frames ended.
    Eof,
    /// Nothing arrived for the route's idle timeout.
    Idle,
    /// The peer did not answer a ping in time.
    PongTimeout,
    /// The gateway shut down (drain).
    Drain,
    /// The peer exceeded a limit (message or line size).
    Limit,
    /// The peer broke its protocol.
    ProtocolError,
    /// Reading or writing failed.
    IoError,
}

impl CloseWhy {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseWhy::CloseFrame => "close_frame",
            CloseWhy::Eof => "eof",
            CloseWhy::Idle => "idle",
            CloseWhy::PongTimeout => "pong_timeout",
            CloseWhy::Drain => "drain",
            CloseWhy::Limit => "limit",
            CloseWhy::ProtocolError => "protocol_error",
            CloseWhy::IoError => "io_error",
        }
    }
}

/// Why the gateway closed a peer that broke a rule, from the close code it
/// sent: 1009 (message too big) is a limit, anything else the protocol.
pub fn violation(code: u16) -> CloseWhy {
    if code == 1009 {
        CloseWhy::Limit
    } else {
        CloseWhy::ProtocolError
    }
}

/// How one switched connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// Who ended it: the client, the upstream, or the gateway (idle,
    /// drain, a peer's violation).
    pub by: Blame,
    /// Why.
    pub why: CloseWhy,
    /// The WebSocket close code sent or received, if any.
    pub code: Option<u16>,
}

impl Close {
    /// The `code` label: the registered codes as themselves, the
    /// application ranges as `3xxx` / `4xxx` (bounded: a peer picks any
    /// number), `none` without a close frame.
    pub fn code_label(&self) -> &'static str {
        const KNOWN: [&str; 16] = [
            "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010",
            "1011", "1012", "1013", "1014", "1015",
        ];
        match self.code {
            None => "none",
            Some(c @ 1000..=1015) => KNOWN[usize::from(c - 1000)],
            Some(3000..=3999) => "3xxx",
            Some(4000..=4999) => "4xxx",
            Some(_) => "invalid",
        }
    }
}

/// Direction of tunnel traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// From the client to the upstream.
    ClientToUpstream,
    /// From the upstream to the client.
    UpstreamToClient,
}

impl Direction {
    /// Both directions, in label order.
    pub const BOTH: [Direction; 2] = [Direction::ClientToUpstream, Direction::UpstreamToClient];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToUpstream => "client_to_upstream",
            Direction::UpstreamToClient => "upstream_to_client",
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::ClientToUpstream => 0,
            Direction::UpstreamToClient => 1,
        }
    }
}

/// The `route` label of what no configured route matched (and of the
/// connection-level switches, RFC 2817 TLS): one fixed value, so that a
/// client picking paths cannot add series.
pub const NO_ROUTE: &str = "-";

/// Which peer a ping went to: the `side` label of
/// `switchyard_ping_rtt_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingSide {
    /// The client (a tunnel's client side, or a built-in app's peer).
    Client,
    /// A proxied route's upstream.
    Upstream,
}

impl PingSide {
    /// Both sides, in label order.
    pub const BOTH: [PingSide; 2] = [PingSide::Client, PingSide::Upstream];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PingSide::Client => "client",
            PingSide::Upstream => "upstream",
        }
    }

    fn index(self) -> usize {
        match self {
            PingSide::Client => 0,
            PingSide::Upstream => 1,
        }
    }
}

/// What the connections of one route relayed, counted while they relay,
/// and the round trips of the pings the gateway sent on them. Every switched
/// connection of the route (a tunnel of either mode, a built-in app) holds
/// the same `Arc` ([`Metrics::route`]) and adds to it once per batch of
/// reads: relaxed atomics, no lock, no map lookup per message.
///
/// Bytes are what a transparent tunnel copied, or the payload of the
/// messages a frame-aware tunnel or an app relayed. For a built-in app the
/// app is the "upstream": `client_to_upstream` is what it received.
#[derive(Debug)]
pub struct RouteMetrics {
    bytes: [AtomicU64; 2],
    messages: [AtomicU64; 2],
    ping_rtt: [Histogram; 2],
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics {
            bytes: Default::default(),
            messages: Default::default(),
            ping_rtt: [Histogram::new(RTT_BOUNDS), Histogram::new(RTT_BOUNDS)],
        }
    }
}

impl RouteMetrics {
    /// Count `messages` (0 for a transparent tunnel) and `bytes` relayed in
    /// `dir`.
    pub fn relayed(&self, dir: Direction, messages: u64, bytes: u64) {
        let i = dir.index();
        if messages > 0 {
            if let Some(m) = self.messages.get(i) {
                m.fetch_add(messages, Ordering::Relaxed);
            }
        }
        if bytes > 0 {
            if let Some(b) = self.bytes.get(i) {
                b.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }

    /// Bytes counted in `dir`.
    pub fn bytes(&self, dir: Direction) -> u64 {
        self.bytes
            .get(dir.index())
            .map_or(0, |b| b.load(Ordering::Relaxed))
    }

    /// Messages counted in `dir`.
    pub fn messages(&self, dir: Direction) -> u64 {
        self.messages
            .get(dir.index())
            .map_or(0, |m| m.load(Ordering::Relaxed))
    }

    /// Record the round trip of a ping the gateway sent to `side`.
    pub fn observe_ping_rtt(&self, side: PingSide, rtt: Duration) {
        if let Some(h) = self.ping_rtt.get(side.index()) {
            h.observe(rtt);
        }
    }

    /// The ping round trips toward `side`.
    pub fn ping_rtt(&self, side: PingSide) -> &Histogram {
        // Indexed by an enum of two: always in range.
        &self.ping_rtt[side.index()]
    }
}

/// A histogram with fixed upper bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, plus +Inf last (not cumulative; summed when rendered).
    buckets: Vec<AtomicU64>,
    /// Sum in microseconds.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// Bounds of the ping round-trip histogram, seconds.
pub const RTT_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Bounds of the handshake duration histogram, seconds: an app answers in
/// microseconds, a proxied route waits for its upstream's connect and 101.
pub const HANDSHAKE_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Bounds of the tunnel duration histogram, seconds.
pub const DURATION_BOUNDS: &[f64] = &[
    0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

impl Histogram {
    /// An empty histogram with these bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = self
            .bounds
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(idx) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The upper bound of the bucket holding the `q` quantile (0 to 1), in
    /// seconds, as Prometheus' `histogram_quantile` would bound it; `None`
    /// without observations or when it lies beyond the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // The rank of the quantile, at least the first observation.
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut cumulative = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            if cumulative >= rank {
                return self.bounds.get(i).copied();
            }
        }
        None
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let mut cumulative = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(v) => format!("{v}"),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

/// Escape a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// One family's series, by route first and then by its other labels:
/// counting on a route finds its series by `&str`, so only a route's first
/// series copies its label (every handshake counts in several families).
/// Iterates in label order, like one map keyed by all the labels.
#[derive(Debug)]
struct ByRoute<K, V>(BTreeMap<String, BTreeMap<K, V>>);

impl<K, V> Default for ByRoute<K, V> {
    fn default() -> Self {
        ByRoute(BTreeMap::new())
    }
}

impl<K: Ord, V> ByRoute<K, V> {
    /// Apply `f` to the series of `route` and `key`, made by `new` first
    /// when there is none.
    fn update<R>(
        &mut self,
        route: &str,
        key: K,
        new: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let routes = &mut self.0;
        let series = match routes.get_mut(route) {
            Some(s) => s,
            None => routes.entry(route.to_owned()).or_default(),
        };
        f(series.entry(key).or_insert_with(new))
    }

    /// The series of `route` and `key`, if any.
    fn get(&self, route: &str, key: &K) -> Option<&V> {
        self.0.get(route)?.get(key)
    }

    /// The series of `route`.
    fn route(&self, route: &str) -> impl Iterator<Item = (&K, &V)> {
        self.0.get(route).into_iter().flatten()
    }

    /// Every series, in label order.
    fn iter(&self) -> impl Iterator<Item = (&str, &K, &V)> {
        self.0
            .iter()
            .flat_map(|(r, series)| series.iter().map(move |(k, v)| (r.as_str(), k, v)))
    }
}

/// The proxy's metrics. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    open: Mutex<ByRoute<OpenKey, i64>>,
    upgrades: Mutex<ByRoute<UpgradeKey, u64>>,
    closes: Mutex<ByRoute<CloseKey, u64>>,
    failures: FailureLog,
    routes: Mutex<BTreeMap<String, Arc<RouteMetrics>>>,
    spliced: Mutex<ByRoute<Direction, u64>>,
    handshakes: Mutex<ByRoute<HttpVersion, Arc<Histogram>>>,
    durations: Mutex<ByRoute<(), Arc<Histogram>>>,
    health: Mutex<BTreeMap<(String, String), bool>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// protocol, transport (after the route).
type OpenKey = (HttpVersion, Transport);
/// by, why, code (after the route).
type CloseKey = (&'static str, CloseWhy, &'static str);
/// result, reason (after the route).
type UpgradeKey = (&'static str, &'static str);

/// Decrements the open-connection gauge it incremented when dropped.
#[derive(Debug)]
pub struct OpenGuard {
    metrics: Arc<Metrics>,
    route: String,
    key: OpenKey,
}

impl OpenGuard {
    /// The connection ended this way: count it in
    /// `switchyard_closes_total` (and leave the gauge).
    pub fn closed(self, close: Close) {
        self.metrics.count_close(&self.route, close);
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        lock(&self.metrics.open).update(&self.route, self.key, || 0, |v| *v -= 1);
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Metrics {
            open: Mutex::default(),
            upgrades: Mutex::default(),
            closes: Mutex::default(),
            failures: FailureLog::default(),
            routes: Mutex::default(),
            spliced: Mutex::default(),
            handshakes: Mutex::default(),
            durations: Mutex::default(),
            health: Mutex::default(),
        }
    }

    /// Count an open connection on `route` over `protocol` carrying
    /// `transport` until the guard is dropped.
    pub fn open_connection(
        self: &Arc<Self>,
        route: &str,
        protocol: HttpVersion,
        transport: Transport,
    ) -> OpenGuard {
        let key = (protocol, transport);
        lock(&self.open).update(route, key, || 0, |v| *v += 1);
        OpenGuard {
            metrics: self.clone(),
            route: route.to_owned(),
            key,
        }
    }

    /// Open connections now on `route` over `protocol` ("h1", "h2", "h3"),
    /// every transport.
    pub fn open_connections(&self, route: &str, protocol: &str) -> i64 {
        lock(&self.open)
            .route(route)
            .filter(|((p, _), _)| p.label() == protocol)
            .map(|(_, n)| *n)
            .sum()
    }

    fn count_close(&self, route: &str, close: Close) {
        let key = (close.by.label(), close.why, close.code_label());
        lock(&self.closes).update(route, key, || 0, |n| *n += 1);
    }

    /// Closes counted on `route` by `by` for `why`.
    pub fn closes(&self, route: &str, by: Blame, why: CloseWhy) -> u64 {
        lock(&self.closes)
            .route(route)
            .filter(|((b, w, _), _)| *b == by.label() && *w == why)
            .map(|(_, n)| *n)
            .sum()
    }

    /// The recent refused and failed attempts, explained.
    pub fn failures(&self) -> &FailureLog {
        &self.failures
    }

    /// Count one upgrade attempt on `route` (a configured route's label,
    /// or [`NO_ROUTE`]). `result` and `reason` are fixed strings (see
    /// [`crate::proxy::ProxyOutcome::labels`]).
    pub fn upgrade_attempt(&self, route: &str, result: &'static str, reason: &'static str) {
        lock(&self.upgrades).update(route, (result, reason), || 0, |n| *n += 1);
    }

    /// Upgrade attempts counted with this result and reason, every route.
    pub fn upgrade_attempts(&self, result: &str, reason: &str) -> u64 {
        lock(&self.upgrades)
            .iter()
            .filter(|(_, (r, why), _)| *r == result && *why == reason)
            .map(|(_, _, n)| *n)
            .sum()
    }

    /// The live counters of `route`, created on first use: take it once per
    /// connection and count through it ([`RouteMetrics`]).
    pub fn route(&self, route: &str) -> Arc<RouteMetrics> {
        let mut routes = lock(&self.routes);
        if let Some(r) = routes.get(route) {
            return r.clone();
        }
        let r = Arc::new(RouteMetrics::default());
        routes.insert(route.to_string(), r.clone());
        r
    }

    fn route_if_seen(&self, route: &str) -> Option<Arc<RouteMetrics>> {
        lock(&self.routes).get(route).cloned()
    }

    /// Add bytes a transparent tunnel moved with splice(2) (a part of what
    /// [`RouteMetrics::relayed`] counts).
    pub fn add_spliced(&self, route: &str, dir: Direction, n: u64) {
        if n > 0 {
            lock(&self.spliced).update(route, dir, || 0, |v| *v += n);
        }
    }

    /// Spliced bytes counted for `route` in `dir`.
    pub fn spliced(&self, route: &str, dir: Direction) -> u64 {
        lock(&self.spliced).get(route, &dir).copied().unwrap_or(0)
    }

    /// Bytes counted for `route` in `dir`.
    pub fn bytes(&self, route: &str, dir: Direction) -> u64 {
        self.route_if_seen(route).map_or(0, |r| r.bytes(dir))
    }

    /// Messages counted for `route` in `dir`.
    pub fn messages(&self, route: &str, dir: Direction) -> u64 {
        self.route_if_seen(route).map_or(0, |r| r.messages(dir))
    }

    /// Ping round trips recorded on `route` toward `side`.
    pub fn ping_rtt_count(&self, route: &str, side: PingSide) -> u64 {
        self.route_if_seen(route)
            .map_or(0, |r| r.ping_rtt(side).count())
    }

    /// Record how long a switch on `route` over `protocol` took, from the
    /// dispatcher's decision to the switch (101, or 200 for an extended
    /// CONNECT): for a proxied route that includes the upstream's connect
    /// and answer.
    pub fn observe_handshake(&self, route: &str, protocol: HttpVersion, d: Duration) {
        let new = || Arc::new(Histogram::new(HANDSHAKE_BOUNDS));
        let h = lock(&self.handshakes).update(route, protocol, new, |h| h.clone());
        h.observe(d);
    }

    /// Handshakes recorded on `route` over `protocol`.
    pub fn handshakes(&self, route: &str, protocol: HttpVersion) -> u64 {
        lock(&self.handshakes)
            .get(route, &protocol)
            .map_or(0, |h| h.count())
    }

    /// The handshake histograms of `route`, one per protocol seen.
    pub fn handshake_histograms(&self, route: &str) -> Vec<(HttpVersion, Arc<Histogram>)> {
        lock(&self.handshakes)
            .route(route)
            .map(|(p, h)| (*p, h.clone()))
            .collect()
    }

    /// Open connections now on `route`, per protocol and transport seen.
    pub fn open_on(&self, route: &str) -> Vec<(HttpVersion, Transport, i64)> {
        lock(&self.open)
            .route(route)
            .map(|((p, t), n)| (*p, *t, *n))
            .collect()
    }

    /// Every upgrade attempt count, by route, result and reason.
    pub fn upgrade_counts(&self) -> Vec<(String, &'static str, &'static str, u64)> {
        lock(&self.upgrades)
            .iter()
            .map(|(route, (result, reason), n)| (route.to_owned(), *result, *reason, *n))
            .collect()
    }

    /// Record how long a tunnel on `route` lasted.
    pub fn observe_tunnel(&self, route: &str, d: Duration) {
        let new = || Arc::new(Histogram::new(DURATION_BOUNDS));
        let h = lock(&self.durations).update(route, (), new, |h| h.clone());
        h.observe(d);
    }

    /// Set the health of one backend of an upstream group.
    pub fn set_upstream_health(&self, upstream: &str, backend: &str, healthy: bool) {
        lock(&self.health).insert((upstream.to_string(), backend.to_string()), healthy);
    }

    /// The health of every backend reported so far: (upstream, backend,
    /// healthy).
    pub fn upstream_health(&self) -> Vec<(String, String, bool)> {
        lock(&self.health)
            .iter()
            .map(|((u, b), h)| (u.clone(), b.clone(), *h))
            .collect()
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str(
            "# HELP switchyard_open_connections Open switched connections (apps and proxied).\n",
        );
        out.push_str("# TYPE switchyard_open_connections gauge\n");
        for (route, (proto, transport), v) in lock(&self.open).iter() {
            let _ = writeln!(
                out,
                "switchyard_open_connections{{route=\"{}\",protocol=\"{}\",transport=\"{}\"}} {v}",
                escape(route),
                proto.label(),
                transport.as_str()
            );
        }
        out.push_str(
            "# HELP switchyard_closes_total Switched connections ended, by who ended them, why and the close code.\n",
        );
        out.push_str("# TYPE switchyard_closes_total counter\n");
        for (route, (by, why, code), v) in lock(&self.closes).iter() {
            let _ = writeln!(
                out,
                "switchyard_closes_total{{route=\"{}\",by=\"{by}\",why=\"{}\",code=\"{code}\"}} {v}",
                escape(route),
                why.as_str()
            );
        }
        out.push_str(
            "# HELP switchyard_upgrade_attempts_total Upgrade attempts by route, result and reason.\n",
        );
        out.push_str("# TYPE switchyard_upgrade_attempts_total counter\n");
        for (route, (result, reason), v) in lock(&self.upgrades).iter() {
            let _ = writeln!(
                out,
                "switchyard_upgrade_attempts_total{{route=\"{}\",result=\"{result}\",reason=\"{reason}\"}} {v}",
                escape(route)
            );
        }
        // A snapshot of the handles: the counters are read without the lock.
        let routes: Vec<(String, Arc<RouteMetrics>)> = lock(&self.routes)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        type Read = fn(&RouteMetrics, Direction) -> u64;
        for (family, help, read) in [
            (
                "switchyard_tunnel_bytes_total",
                "Bytes relayed by switched connections (tunnels and built-in apps), counted while they relay.",
                RouteMetrics::bytes as Read,
            ),
            (
                "switchyard_tunnel_messages_total",
                "Messages relayed (WebSocket messages of frame-aware tunnels and built-in apps, lines of lineecho/1), counted while they relay.",
                RouteMetrics::messages as Read,
            ),
        ] {
            let _ = writeln!(out, "# HELP {family} {help}");
            let _ = writeln!(out, "# TYPE {family} counter");
            for (route, r) in &routes {
                for dir in Direction::BOTH {
                    let _ = writeln!(
                        out,
                        "{family}{{route=\"{}\",direction=\"{}\"}} {}",
                        escape(route),
                        dir.as_str(),
                        read(r, dir)
                    );
                }
            }
        }
        out.push_str("# HELP switchyard_tunnel_spliced_bytes_total Bytes of switchyard_tunnel_bytes_total that transparent tunnels moved with splice(2).\n");
        out.push_str("# TYPE switchyard_tunnel_spliced_bytes_total counter\n");
        for (route, dir, v) in lock(&self.spliced).iter() {
            let _ = writeln!(
                out,
                "switchyard_tunnel_spliced_bytes_total{{route=\"{}\",direction=\"{}\"}} {v}",
                escape(route),
                dir.as_str()
            );
        }
        out.push_str(
            "# HELP switchyard_ping_rtt_seconds Round trips of the pings the gateway sent (tunnels' probes, built-in apps' heartbeat).\n",
        );
        out.push_str("# TYPE switchyard_ping_rtt_seconds histogram\n");
        for (route, r) in &routes {
            for side in PingSide::BOTH {
                r.ping_rtt(side).render(
                    "switchyard_ping_rtt_seconds",
                    &format!("route=\"{}\",side=\"{}\"", escape(route), side.as_str()),
                    &mut out,
                );
            }
        }
        out.push_str(
            "# HELP switchyard_handshake_duration_seconds From the routing decision to the switch (101, or 200 for an extended CONNECT), upstream included.\n",
        );
        out.push_str("# TYPE switchyard_handshake_duration_seconds histogram\n");
        for (route, protocol, h) in lock(&self.handshakes).iter() {
            h.render(
                "switchyard_handshake_duration_seconds",
                &format!(
                    "route=\"{}\",protocol=\"{}\"",
                    escape(route),
                    protocol.label()
                ),
                &mut out,
            );
        }
        out.push_str("# HELP switchyard_tunnel_duration_seconds How long tunnels lasted.\n");
        out.push_str("# TYPE switchyard_tunnel_duration_seconds histogram\n");
        for (route, (), h) in lock(&self.durations).iter() {
            h.render(
                "switchyard_tunnel_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
                &mut out,
            );
        }
        out.push_str("# HELP switchyard_upstream_healthy 1 when the backend is in rotation.\n");
        out.push_str("# TYPE switchyard_upstream_healthy gauge\n");
        for ((up, backend), healthy) in lock(&self.health).iter() {
            let _ = writeln!(
                out,
                "switchyard_upstream_healthy{{upstream=\"{}\",backend=\"{}\"}} {}",
                escape(up),
                escape(backend),
                u8::from(*healthy)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_gauge_follows_guards() {
        let m = Arc::new(Metrics::new());
        let a = m.open_connection("chat", HttpVersion::Http1, Transport::WebSocket);
        let b = m.open_connection("chat", HttpVersion::Http1, Transport::Upgrade);
        let c = m.open_connection("chat", HttpVersion::Http2, Transport::WebSocket);
        assert_eq!(m.open_connections("chat", "h1"), 2);
        a.closed(Close {
            by: Blame::Client,
            why: CloseWhy::CloseFrame,
            code: Some(4321),
        });
        assert_eq!(m.open_connections("chat", "h1"), 1);
        let text = m.render();
        assert!(
            text.contains("switchyard_open_connections{route=\"chat\",protocol=\"h1\",transport=\"websocket\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_open_connections{route=\"chat\",protocol=\"h1\",transport=\"upgrade\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_closes_total{route=\"chat\",by=\"client\",why=\"close_frame\",code=\"4xxx\"} 1"),
            "{text}"
        );
        drop((b, c));
        assert_eq!(m.open_connections("chat", "h2"), 0);
        assert_eq!(m.closes("chat", Blame::Client, CloseWhy::CloseFrame), 1);
    }

    #[test]
    fn close_codes_are_bounded_labels() {
        let label = |code| {
            Close {
                by: Blame::Gateway,
                why: CloseWhy::Idle,
                code,
            }
            .code_label()
        };
        assert_eq!(label(Some(1000)), "1000");
        assert_eq!(label(Some(1015)), "1015");
        assert_eq!(label(Some(3999)), "3xxx");
        assert_eq!(label(Some(4000)), "4xxx");
        assert_eq!(label(Some(2000)), "invalid");
        assert_eq!(label(Some(999)), "invalid");
        assert_eq!(label(None), "none");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3));
        let mut s = String::new();
        h.render("x", "", &mut s);
        assert!(s.contains("x_bucket{le=\"0.01\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"0.1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count 3\n"), "{s}");
        assert!(s.contains("x_sum 3.055\n"), "{s}");
    }

    #[test]
    fn quantile_bounds_follow_the_buckets() {
        let h = Histogram::new(&[0.01, 0.1, 1.0]);
        assert_eq!(h.quantile_bound(0.5), None);
        for ms in [5, 6, 7, 50, 2000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.quantile_bound(0.5), Some(0.01));
        assert_eq!(h.quantile_bound(0.8), Some(0.1));
        assert_eq!(h.quantile_bound(0.99), None, "beyond the last bound");
        assert_eq!(h.quantile_bound(0.0), Some(0.01));
    }

    #[test]
    fn counters_and_labels_render_escaped() {
        let m = Metrics::new();
        m.upgrade_attempt("r", "refused", "upstream_status");
        m.upgrade_attempt(NO_ROUTE, "refused", "upstream_status");
        m.route("a\"b").relayed(Direction::ClientToUpstream, 0, 10);
        let r = m.route("r");
        r.relayed(Direction::UpstreamToClient, 3, 30);
        r.relayed(Direction::UpstreamToClient, 1, 5);
        m.set_upstream_health("chat", "ws://10.0.0.1:1", false);
        r.observe_ping_rtt(PingSide::Upstream, Duration::from_millis(2));
        m.observe_tunnel("r", Duration::from_secs(2));
        m.observe_handshake("r", HttpVersion::Http2, Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("switchyard_handshake_duration_seconds_bucket{route=\"r\",protocol=\"h2\",le=\"0.0025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_handshake_duration_seconds_bucket{route=\"r\",protocol=\"h2\",le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert_eq!(m.handshakes("r", HttpVersion::Http2), 1);
        assert_eq!(m.handshakes("r", HttpVersion::Http1), 0);
        assert!(text.contains(
            "switchyard_upgrade_attempts_total{route=\"r\",result=\"refused\",reason=\"upstream_status\"} 1"
        ));
        assert!(text.contains(
            "switchyard_upgrade_attempts_total{route=\"-\",result=\"refused\",reason=\"upstream_status\"} 1"
        ));
        assert!(text.contains(
            "switchyard_tunnel_bytes_total{route=\"a\\\"b\",direction=\"client_to_upstream\"} 10"
        ), "{text}");
        assert!(text.contains(
            "switchyard_tunnel_messages_total{route=\"r\",direction=\"upstream_to_client\"} 4"
        ));
        assert!(text.contains(
            "switchyard_tunnel_bytes_total{route=\"r\",direction=\"upstream_to_client\"} 35"
        ));
        assert_eq!(m.bytes("r", Direction::UpstreamToClient), 35);
        assert_eq!(m.messages("r", Direction::ClientToUpstream), 0);
        assert!(text.contains(
            "switchyard_upstream_healthy{upstream=\"chat\",backend=\"ws://10.0.0.1:1\"} 0"
        ));
        assert!(text.contains("switchyard_ping_rtt_seconds_count{route=\"r\",side=\"upstream\"} 1"));
        assert!(text.contains("switchyard_ping_rtt_seconds_count{route=\"r\",side=\"client\"} 0"));
        assert_eq!(m.ping_rtt_count("r", PingSide::Upstream), 1);
        assert!(
            text.contains("switchyard_tunnel_duration_seconds_bucket{route=\"r\",le=\"10\"} 1"),
            "{text}"
        );
        assert_eq!(m.upgrade_attempts("refused", "upstream_status"), 2);
    }
}

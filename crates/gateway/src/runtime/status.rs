//! `GET /status.json`: the live state of the gateway for scripts, the
//! `/status` page and `switchyard monitor --admin`, built from the metrics
//! registry and the live configuration at each request.
//!
//! ```json
//! {
//!   "generation": 1, "reloads": 0, "reload_error": null, "draining": false,
//!   "live_connections": 1,
//!   "routes": [{
//!     "route": "/echo", "target": "app echo",
//!     "open": [{"protocol": "h1", "transport": "websocket", "connections": 1}],
//!     "sessions": [{"transport": "sse", "sessions": 0}],
//!     "handshakes": [{"protocol": "h1", "count": 1, "p50_seconds": 0.0005, "p99_seconds": 0.0005}],
//!     "ping_rtt": [{"side": "client", "count": 4, "p50_seconds": 0.001, "p99_seconds": 0.005},
//!                  {"side": "upstream", "count": 0, "p50_seconds": null, "p99_seconds": null}],
//!     "upgrade_attempts": 3, "upgrade_success_ratio": 0.33,
//!     "messages_total": 20, "bytes_total": 640
//!   }],
//!   "upgrades": [{"route": "/echo", "result": "refused", "reason": "origin", "count": 2}],
//!   "upgrade_success_ratio": 0.33,
//!   "top_failure_reasons": [{"reason": "origin", "count": 2,
//!     "explanation": "Origin https://x.example not in allowed_origins: ..."}],
//!   "upstreams": [{"upstream": "chat", "backend": "ws://10.0.0.1:8080/", "healthy": true}],
//!   "connections": [{"route": "/echo", "client": "127.0.0.1:50312", "target": "app echo",
//!     "protocol": "h1", "age_seconds": 3.2, "bytes_in": 320, "bytes_out": 322}],
//!   "history": {"interval_seconds": 10, "routes": [{"route": "/echo",
//!     "points": [{"at_unix": 1796000000, "messages_per_second": 2.0, "bytes_per_second": 64.0}]}]},
//!   "cluster": {"node_id": "gw-1", "fallback_sessions": 3}
//! }
//! ```
//!
//! `p50_seconds` and `p99_seconds` are the upper bounds of the histogram
//! buckets that hold them (`switchyard_handshake_duration_seconds`,
//! `switchyard_ping_rtt_seconds`), `null` without observations or beyond
//! the last bound; `ping_rtt` counts the pings the gateway sent on the
//! route (a tunnel's probes to either side, a built-in app's heartbeat).
//! `messages_total` and `bytes_total`: both directions, tunnels, built-in
//! apps and fallback sessions, since start, counted while they relay
//! ([`crate::metrics::RouteMetrics`]). `upgrade_success_ratio`:
//! switched attempts over all attempts since start, `null` before the
//! first; per route, and over every route at the top (which also counts
//! the attempts no route matched, `upgrades` with the route `-`).
//! `top_failure_reasons`: at most five, most frequent first, every refused
//! or failed attempt since start, with the explanation of the latest one
//! still in the ring (`/status/failures` has them all). `upstreams`: the
//! backends whose health was checked. `connections`: at most
//! [`CONNECTIONS_LISTED`] (`live_connections` counts them all).
//! `history`: per route, the rates over each [`SAMPLE_INTERVAL`] of the
//! last 15 minutes ([`super::history`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::config::RouteTarget;
use crate::live::Gateway;
use crate::metrics::{Direction, Histogram, PingSide};

use super::history::{RouteRates, Totals, TrafficHistory, SAMPLE_INTERVAL};

/// How many failure reasons the report lists.
const TOP_REASONS: usize = 5;

/// How many live connections the report lists (the rest are counted).
pub(crate) const CONNECTIONS_LISTED: usize = 100;

/// The whole report.
#[derive(Debug, Serialize)]
pub(crate) struct StatusReport {
    generation: u64,
    reloads: u64,
    reload_error: Option<String>,
    draining: bool,
    live_connections: usize,
    routes: Vec<RouteStatus>,
    upgrades: Vec<UpgradeCount>,
    upgrade_success_ratio: Option<f64>,
    top_failure_reasons: Vec<ReasonCount>,
    upstreams: Vec<BackendHealth>,
    connections: Vec<ConnectionStatus>,
    history: History,
    cluster: Option<ClusterStatus>,
}

/// With `[cluster]`: this instance and the cluster's session count.
#[derive(Debug, Serialize)]
struct ClusterStatus {
    node_id: String,
    /// Across every instance, at the last count (`null` while unknown);
    /// this instance's own are the routes' `sessions`.
    fallback_sessions: Option<u64>,
}

#[derive(Debug, Serialize)]
struct RouteStatus {
    route: String,
    target: String,
    open: Vec<OpenCount>,
    sessions: Vec<SessionCount>,
    handshakes: Vec<HandshakeLatency>,
    ping_rtt: Vec<PingLatency>,
    upgrade_attempts: u64,
    upgrade_success_ratio: Option<f64>,
    messages_total: u64,
    bytes_total: u64,
}

#[derive(Debug, Serialize)]
struct OpenCount {
    protocol: &'static str,
    transport: &'static str,
    connections: i64,
}

#[derive(Debug, Serialize)]
struct SessionCount {
    transport: &'static str,
    sessions: i64,
}

/// The count and bucket bounds of a latency histogram.
#[derive(Debug, Serialize)]
struct Latency {
    count: u64,
    p50_seconds: Option<f64>,
    p99_seconds: Option<f64>,
}

impl Latency {
    fn of(h: &Histogram) -> Latency {
        Latency {
            count: h.count(),
            p50_seconds: h.quantile_bound(0.5),
            p99_seconds: h.quantile_bound(0.99),
        }
    }
}

#[derive(Debug, Serialize)]
struct HandshakeLatency {
    protocol: &'static str,
    #[serde(flatten)]
    latency: Latency,
}

#[derive(Debug, Serialize)]
struct PingLatency {
    side: &'static str,
    #[serde(flatten)]
    latency: Latency,
}

#[derive(Debug, Serialize)]
struct UpgradeCount {
    route: String,
    result: &'static str,
    reason: &'static str,
    count: u64,
}

#[derive(Debug, Serialize)]
struct ReasonCount {
    reason: &'static str,
    count: u64,
    explanation: Option<String>,
}

#[derive(Debug, Serialize)]
struct BackendHealth {
    upstream: String,
    backend: String,
    healthy: bool,
}

#[derive(Debug, Serialize)]
struct ConnectionStatus {
    route: String,
    client: SocketAddr,
    target: String,
    protocol: &'static str,
    age_seconds: f64,
    bytes_in: u64,
    bytes_out: u64,
}

#[derive(Debug, Serialize)]
struct History {
    interval_seconds: u64,
    routes: Vec<RouteRates>,
}

/// What `route` relayed since start: tunnels (the gateway's registry) and
/// fallback sessions, both directions.
pub(crate) fn route_totals(gw: &Gateway, route: &str) -> Totals {
    let metrics = gw.metrics();
    let sessions = gw.sessions().metrics();
    let mut totals = Totals::default();
    for dir in Direction::BOTH {
        totals.messages += metrics.messages(route, dir) + sessions.messages(route, dir);
        totals.bytes += metrics.bytes(route, dir) + sessions.bytes(route, dir);
    }
    totals
}

/// The totals of every configured route, for [`TrafficHistory::record`].
pub(crate) fn all_route_totals(gw: &Gateway) -> BTreeMap<String, Totals> {
    gw.live()
        .routes
        .iter()
        .map(|e| (e.label.clone(), route_totals(gw, &e.label)))
        .collect()
}

/// Attempts and the share of them that switched, `None` without attempts.
fn success<'a>(upgrades: impl Iterator<Item = &'a UpgradeCount>) -> (u64, Option<f64>) {
    let (mut attempts, mut switched) = (0u64, 0u64);
    for u in upgrades {
        attempts += u.count;
        if u.result == "switched" {
            switched += u.count;
        }
    }
    let ratio = (attempts > 0).then(|| switched as f64 / attempts as f64);
    (attempts, ratio)
}

impl StatusReport {
    /// The state of `gw` now, with the rates of `history`.
    pub(crate) fn of(gw: &Gateway, history: &TrafficHistory) -> StatusReport {
        let live = gw.live();
        let metrics = gw.metrics();
        let sessions = gw.sessions().metrics();
        let upgrades: Vec<UpgradeCount> = metrics
            .upgrade_counts()
            .into_iter()
            .map(|(route, result, reason, count)| UpgradeCount {
                route,
                result,
                reason,
                count,
            })
            .collect();
        let routes = live
            .routes
            .iter()
            .map(|entry| {
                let totals = route_totals(gw, &entry.label);
                let counters = metrics.route(&entry.label);
                let (upgrade_attempts, upgrade_success_ratio) =
                    success(upgrades.iter().filter(|u| u.route == entry.label));
                RouteStatus {
                    route: entry.label.clone(),
                    target: match entry.config.target() {
                        RouteTarget::Upstream(u) => format!("upstream {u}"),
                        RouteTarget::App(a) => format!("app {}", a.as_str()),
                    },
                    open: metrics
                        .open_on(&entry.label)
                        .into_iter()
                        .map(|(p, t, n)| OpenCount {
                            protocol: p.label(),
                            transport: t.as_str(),
                            connections: n,
                        })
                        .collect(),
                    sessions: sessions
                        .open_on(&entry.label)
                        .into_iter()
                        .map(|(transport, sessions)| SessionCount {
                            transport,
                            sessions,
                        })
                        .collect(),
                    handshakes: metrics
                        .handshake_histograms(&entry.label)
                        .into_iter()
                        .map(|(p, h)| HandshakeLatency {
                            protocol: p.label(),
                            latency: Latency::of(&h),
                        })
                        .collect(),
                    ping_rtt: PingSide::BOTH
                        .into_iter()
                        .map(|side| PingLatency {
                            side: side.as_str(),
                            latency: Latency::of(counters.ping_rtt(side)),
                        })
                        .collect(),
                    upgrade_attempts,
                    upgrade_success_ratio,
                    messages_total: totals.messages,
                    bytes_total: totals.bytes,
                }
            })
            .collect();
        let recent = metrics.failures().recent();
        let mut reasons: Vec<ReasonCount> = metrics
            .failures()
            .counts()
            .into_iter()
            .map(|(reason, count)| ReasonCount {
                reason,
                count,
                explanation: recent
                    .iter()
                    .rev()
                    .find(|f| f.reason == reason)
                    .map(|f| f.explanation.clone()),
            })
            .collect();
        reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(b.reason)));
        reasons.truncate(TOP_REASONS);
        let (_, upgrade_success_ratio) = success(upgrades.iter());
        let conns = gw.connections().snapshot();
        StatusReport {
            generation: live.generation,
            reloads: gw.reload_count(),
            reload_error: gw.reload_error(),
            draining: gw.is_draining(),
            live_connections: conns.len(),
            routes,
            upgrades,
            upgrade_success_ratio,
            top_failure_reasons: reasons,
            upstreams: metrics
                .upstream_health()
                .into_iter()
                .map(|(upstream, backend, healthy)| BackendHealth {
                    upstream,
                    backend,
                    healthy,
                })
                .collect(),
            connections: conns
                .into_iter()
                .take(CONNECTIONS_LISTED)
                .map(|c| ConnectionStatus {
                    route: c.info.tag.route.clone(),
                    client: c.info.client,
                    target: c.info.tag.target.clone(),
                    protocol: c.info.protocol.label(),
                    age_seconds: c.age.as_secs_f64(),
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                })
                .collect(),
            history: History {
                interval_seconds: SAMPLE_INTERVAL.as_secs(),
                routes: history.rates(),
            },
            cluster: gw.census().map(|c| ClusterStatus {
                node_id: c.node_id().to_owned(),
                fallback_sessions: c.sessions(),
            }),
        }
    }

    /// The JSON text.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

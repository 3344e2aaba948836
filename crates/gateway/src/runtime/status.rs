//! `GET /status.json`: the live state of the gateway for scripts, the
//! `/status` page and `switchyard monitor --admin`, built from the metrics
//! registry and the live configuration at each request.
//!
//! ```json
//! {
//!   "generation": 1, "reloads": 0, "live_connections": 1,
//!   "routes": [{
//!     "route": "/echo", "target": "app echo",
//!     "open": [{"protocol": "h1", "transport": "websocket", "connections": 1}],
//!     "handshakes": [{"protocol": "h1", "count": 1, "p50_seconds": 0.0005, "p99_seconds": 0.0005}]
//!   }],
//!   "upgrades": [{"result": "refused", "reason": "origin", "count": 2}],
//!   "top_failure_reasons": [{"reason": "origin", "count": 2}]
//! }
//! ```
//!
//! `p50_seconds` and `p99_seconds` are the upper bounds of the histogram
//! buckets that hold them (`switchyard_handshake_duration_seconds`), `null`
//! when beyond the last bound. `top_failure_reasons`: at most five, most
//! frequent first, every refused or failed attempt since start
//! (`/status/failures` has them all, with the recent attempts explained).

use serde::Serialize;

use crate::config::RouteTarget;
use crate::live::Gateway;

/// How many failure reasons the report lists.
const TOP_REASONS: usize = 5;

/// The whole report.
#[derive(Debug, Serialize)]
pub(crate) struct StatusReport {
    generation: u64,
    reloads: u64,
    live_connections: usize,
    routes: Vec<RouteStatus>,
    upgrades: Vec<UpgradeCount>,
    top_failure_reasons: Vec<ReasonCount>,
}

#[derive(Debug, Serialize)]
struct RouteStatus {
    route: String,
    target: String,
    open: Vec<OpenCount>,
    handshakes: Vec<HandshakeLatency>,
}

#[derive(Debug, Serialize)]
struct OpenCount {
    protocol: &'static str,
    transport: &'static str,
    connections: i64,
}

#[derive(Debug, Serialize)]
struct HandshakeLatency {
    protocol: &'static str,
    count: u64,
    p50_seconds: Option<f64>,
    p99_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
struct UpgradeCount {
    result: &'static str,
    reason: &'static str,
    count: u64,
}

#[derive(Debug, Serialize)]
struct ReasonCount {
    reason: &'static str,
    count: u64,
}

impl StatusReport {
    /// The state of `gw` now.
    pub(crate) fn of(gw: &Gateway) -> StatusReport {
        let live = gw.live();
        let metrics = gw.metrics();
        let routes = live
            .routes
            .iter()
            .map(|entry| RouteStatus {
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
                handshakes: metrics
                    .handshake_histograms(&entry.label)
                    .into_iter()
                    .map(|(p, h)| HandshakeLatency {
                        protocol: p.label(),
                        count: h.count(),
                        p50_seconds: h.quantile_bound(0.5),
                        p99_seconds: h.quantile_bound(0.99),
                    })
                    .collect(),
            })
            .collect();
        let mut reasons: Vec<ReasonCount> = metrics
            .failures()
            .counts()
            .into_iter()
            .map(|(reason, count)| ReasonCount { reason, count })
            .collect();
        reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(b.reason)));
        reasons.truncate(TOP_REASONS);
        StatusReport {
            generation: live.generation,
            reloads: gw.reload_count(),
            live_connections: gw.connections().len(),
            routes,
            upgrades: metrics
                .upgrade_counts()
                .into_iter()
                .map(|(result, reason, count)| UpgradeCount {
                    result,
                    reason,
                    count,
                })
                .collect(),
            top_failure_reasons: reasons,
        }
    }

    /// The JSON text.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

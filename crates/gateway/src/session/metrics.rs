//! Metrics of the fallback sessions, in the Prometheus text format of
//! [`crate::metrics`] (same label conventions; the labels are
//! bounded by the configured routes and fixed lists of reasons).
//!
//! | family | type | labels |
//! |---|---|---|
//! | `switchyard_fallback_sessions_open` | gauge | `route`, `transport` (`sse`, `poll`, `-` when not announced) |
//! | `switchyard_fallback_messages_total` | counter | `route`, `direction` |
//! | `switchyard_fallback_bytes_total` | counter | `route`, `direction` |
//! | `switchyard_fallback_resumes_total` | counter | `route`, `transport` (a reader that replays messages already given out) |
//! | `switchyard_fallback_window_closes_total` | counter | `route` (sessions ended because a resume asked for messages out of the replay window) |
//! | `switchyard_fallback_session_ends_total` | counter | `route`, `reason` |
//! | `switchyard_fallback_refused_total` | counter | `reason` (every request answered with an error status) |
//! | `switchyard_fallback_requests_total` | counter | `route`, `action` (`open`, `sse`, `poll`, `send`, `close`: the session requests this instance served, whichever instance owns the session) |
//! | `switchyard_fallback_memory_used_bytes` | gauge | - (the in-memory store's buffers, with the store's figure: [`super::Sessions::render_metrics`]) |
//!
//! Messages and bytes are counted per batch while the sessions relay them
//! (whatever their backend: a proxied one or the built-in echo).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use crate::metrics::Direction;
use crate::sync::lock;

type Counter<K> = Mutex<BTreeMap<K, u64>>;

/// The registry. Share it in an `Arc`.
#[derive(Debug, Default)]
pub struct SessionMetrics {
    open: Mutex<BTreeMap<(String, &'static str), i64>>,
    messages: Counter<(String, Direction)>,
    bytes: Counter<(String, Direction)>,
    resumes: Counter<(String, &'static str)>,
    window_closes: Counter<String>,
    ends: Counter<(String, &'static str)>,
    requests: Counter<(String, &'static str)>,
    refused: Counter<&'static str>,
}

fn add<K: Ord>(m: &Counter<K>, key: K, n: u64) {
    if n > 0 {
        *lock(m).entry(key).or_insert(0) += n;
    }
}

fn get<K: Ord>(m: &Counter<K>, key: &K) -> u64 {
    lock(m).get(key).copied().unwrap_or(0)
}

/// Counts one open session until dropped.
#[derive(Debug)]
pub struct OpenSession {
    metrics: Arc<SessionMetrics>,
    key: (String, &'static str),
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        if let Some(v) = lock(&self.metrics.open).get_mut(&self.key) {
            *v -= 1;
        }
    }
}

impl SessionMetrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count a session open on `route` read with `transport` until the
    /// guard is dropped.
    pub fn open_session(self: &Arc<Self>, route: &str, transport: &'static str) -> OpenSession {
        let key = (route.to_string(), transport);
        *lock(&self.open).entry(key.clone()).or_insert(0) += 1;
        OpenSession {
            metrics: self.clone(),
            key,
        }
    }

    /// Sessions open now on `route` with `transport`.
    pub fn open_sessions(&self, route: &str, transport: &'static str) -> i64 {
        lock(&self.open)
            .get(&(route.to_string(), transport))
            .copied()
            .unwrap_or(0)
    }

    /// Sessions open now on `route`, per transport seen.
    pub fn open_on(&self, route: &str) -> Vec<(&'static str, i64)> {
        lock(&self.open)
            .iter()
            .filter(|((r, _), _)| r == route)
            .map(|((_, t), n)| (*t, *n))
            .collect()
    }

    /// Count messages and their payload bytes relayed in `dir`.
    pub fn relayed(&self, route: &str, dir: Direction, messages: u64, bytes: u64) {
        add(&self.messages, (route.to_string(), dir), messages);
        add(&self.bytes, (route.to_string(), dir), bytes);
    }

    /// Messages relayed on `route` in `dir`.
    pub fn messages(&self, route: &str, dir: Direction) -> u64 {
        get(&self.messages, &(route.to_string(), dir))
    }

    /// Payload bytes relayed on `route` in `dir`.
    pub fn bytes(&self, route: &str, dir: Direction) -> u64 {
        get(&self.bytes, &(route.to_string(), dir))
    }

    /// Count a reader that replays messages.
    pub fn resume(&self, route: &str, transport: &'static str) {
        add(&self.resumes, (route.to_string(), transport), 1);
    }

    /// Resumes counted on `route` with `transport`.
    pub fn resumes(&self, route: &str, transport: &'static str) -> u64 {
        get(&self.resumes, &(route.to_string(), transport))
    }

    /// Count a session ended because the replay window was exceeded.
    pub fn window_close(&self, route: &str) {
        add(&self.window_closes, route.to_string(), 1);
    }

    /// Window closes counted on `route`.
    pub fn window_closes(&self, route: &str) -> u64 {
        get(&self.window_closes, &route.to_string())
    }

    /// Count a session end.
    pub fn session_end(&self, route: &str, reason: &'static str) {
        add(&self.ends, (route.to_string(), reason), 1);
    }

    /// Session ends counted on `route` for `reason`.
    pub fn session_ends(&self, route: &str, reason: &'static str) -> u64 {
        get(&self.ends, &(route.to_string(), reason))
    }

    /// Count a session request (`action`) on `route` served here.
    pub fn request(&self, route: &str, action: &'static str) {
        add(&self.requests, (route.to_string(), action), 1);
    }

    /// Session requests with `action` served here on `route`.
    pub fn requests(&self, route: &str, action: &'static str) -> u64 {
        get(&self.requests, &(route.to_string(), action))
    }

    /// Count a request answered with an error.
    pub fn refused(&self, reason: &'static str) {
        add(&self.refused, reason, 1);
    }

    /// Requests refused for `reason`.
    pub fn refusals(&self, reason: &'static str) -> u64 {
        get(&self.refused, &reason)
    }

    /// The Prometheus text of every family.
    pub fn render(&self) -> String {
        let esc = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let mut out = String::with_capacity(1024);
        let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        };
        let route_and =
            |route: &str, k: &str, v: &str| format!("route=\"{}\",{k}=\"{v}\"", esc(route));
        family(
            "switchyard_fallback_sessions_open",
            "gauge",
            "Open fallback sessions by route and transport.",
            lock(&self.open)
                .iter()
                .map(|((r, t), v)| (route_and(r, "transport", t), v.to_string()))
                .collect(),
        );
        for (name, help, map) in [
            (
                "switchyard_fallback_messages_total",
                "Messages relayed by fallback sessions.",
                &self.messages,
            ),
            (
                "switchyard_fallback_bytes_total",
                "Payload bytes relayed by fallback sessions.",
                &self.bytes,
            ),
        ] {
            let rows = lock(map)
                .iter()
                .map(|((r, d), v)| (route_and(r, "direction", d.as_str()), v.to_string()))
                .collect();
            family(name, "counter", help, rows);
        }
        family(
            "switchyard_fallback_resumes_total",
            "counter",
            "Readers that replayed messages already given out (a resume after a lost response).",
            lock(&self.resumes)
                .iter()
                .map(|((r, t), v)| (route_and(r, "transport", t), v.to_string()))
                .collect(),
        );
        family(
            "switchyard_fallback_window_closes_total",
            "counter",
            "Sessions ended because a resume asked for messages out of the replay window.",
            lock(&self.window_closes)
                .iter()
                .map(|(r, v)| (format!("route=\"{}\"", esc(r)), v.to_string()))
                .collect(),
        );
        family(
            "switchyard_fallback_session_ends_total",
            "counter",
            "Fallback sessions ended, by reason.",
            lock(&self.ends)
                .iter()
                .map(|((r, why), v)| (route_and(r, "reason", why), v.to_string()))
                .collect(),
        );
        family(
            "switchyard_fallback_requests_total",
            "counter",
            "Fallback session requests served by this instance, by action.",
            lock(&self.requests)
                .iter()
                .map(|((r, a), v)| (route_and(r, "action", a), v.to_string()))
                .collect(),
        );
        family(
            "switchyard_fallback_refused_total",
            "counter",
            "Fallback session requests answered with an error status, by reason.",
            lock(&self.refused)
                .iter()
                .map(|(why, v)| (format!("reason=\"{why}\""), v.to_string()))
                .collect(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Arc::new(SessionMetrics::new());
        let g = m.open_session("a\"b", "sse");
        assert_eq!(m.open_sessions("a\"b", "sse"), 1);
        m.relayed("r", Direction::UpstreamToClient, 2, 10);
        m.resume("r", "poll");
        m.window_close("r");
        m.session_end("r", "idle");
        m.refused("token");
        m.request("r", "send");
        m.request("r", "send");
        assert_eq!(m.requests("r", "send"), 2);
        let text = m.render();
        for line in [
            "switchyard_fallback_sessions_open{route=\"a\\\"b\",transport=\"sse\"} 1",
            "switchyard_fallback_messages_total{route=\"r\",direction=\"upstream_to_client\"} 2",
            "switchyard_fallback_bytes_total{route=\"r\",direction=\"upstream_to_client\"} 10",
            "switchyard_fallback_resumes_total{route=\"r\",transport=\"poll\"} 1",
            "switchyard_fallback_window_closes_total{route=\"r\"} 1",
            "switchyard_fallback_session_ends_total{route=\"r\",reason=\"idle\"} 1",
            "switchyard_fallback_refused_total{reason=\"token\"} 1",
            "switchyard_fallback_requests_total{route=\"r\",action=\"send\"} 2",
            "# TYPE switchyard_fallback_sessions_open gauge",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        drop(g);
        assert_eq!(m.open_sessions("a\"b", "sse"), 0);
    }
}

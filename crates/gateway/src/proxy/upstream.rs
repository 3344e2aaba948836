//! Upstream groups: backend choice (round robin or least connections),
//! passive health (N failed attempts in a row -> skipped for T), active
//! health checks (a WebSocket handshake, or a TCP connect, to each backend
//! every interval), and connecting with a deadline over TCP or TLS.
//!
//! The caller retries on the next backend ([`Group::attempt_order`]) as long
//! as nothing was sent to the client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::ServerName;
use switchyard::client::MaybeTlsStream;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{ActiveHealth, Backend, Balance, Upstream};

use crate::metrics::Metrics;

/// Why a backend could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("cannot connect to {backend}: {source}; is the backend running and reachable?")]
    Tcp {
        /// The backend URL.
        backend: String,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// TCP or TLS did not complete within the connect timeout.
    #[error("connecting to {backend} took longer than {timeout:?} (connect_timeout)")]
    Timeout {
        /// The backend URL.
        backend: String,
        /// The deadline.
        timeout: Duration,
    },
    /// TLS failed (certificate, protocol) or the host is not a TLS name.
    #[error("TLS with {backend} failed: {why}; check its certificate and the gateway's CA roots")]
    Tls {
        /// The backend URL.
        backend: String,
        /// What failed.
        why: String,
    },
}

/// One backend with its live state.
#[derive(Debug)]
pub struct BackendState {
    /// The configured backend.
    pub backend: Backend,
    /// Its URL as text, for logs and outcomes: formatted once, not per
    /// attempt.
    pub name: String,
    /// Open tunnels (for least connections).
    active: AtomicUsize,
    /// Consecutive failed attempts.
    fails: AtomicU32,
    /// Skipped by passive health until then.
    down_until: Mutex<Option<Instant>>,
    /// The last active check failed.
    check_failed: AtomicBool,
}

impl BackendState {
    fn new(backend: Backend) -> Self {
        BackendState {
            name: backend.url.to_string(),
            backend,
            active: AtomicUsize::new(0),
            fails: AtomicU32::new(0),
            down_until: Mutex::new(None),
            check_failed: AtomicBool::new(false),
        }
    }

    /// Open tunnels to this backend now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether passive and active health allow it now.
    pub fn is_healthy(&self) -> bool {
        if self.check_failed.load(Ordering::Relaxed) {
            return false;
        }
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        !matches!(*down, Some(t) if Instant::now() < t)
    }
}

/// A tunnel's hold on a backend (least-connections count); released on drop.
#[derive(Debug)]
pub struct BackendLease {
    state: Arc<BackendState>,
}

impl BackendLease {
    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.state.backend
    }
}

impl Drop for BackendLease {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One upstream group.
#[derive(Debug)]
pub struct Group {
    /// The configuration.
    pub config: Upstream,
    backends: Vec<Arc<BackendState>>,
    next: AtomicUsize,
    tls: Arc<rustls::ClientConfig>,
    metrics: Option<Arc<Metrics>>,
}

impl Group {
    /// A group with the default TLS configuration for `wss://` backends
    /// (system roots, webpki fallback).
    pub fn new(config: Upstream) -> Result<Self, switchyard::Error> {
        let tls = switchyard::ClientBuilder::new().tls_config()?;
        Ok(Self::with_tls(config, tls))
    }

    /// A group with this TLS configuration for `wss://` backends.
    pub fn with_tls(config: Upstream, tls: Arc<rustls::ClientConfig>) -> Self {
        let backends = config
            .servers
            .iter()
            .cloned()
            .map(|b| Arc::new(BackendState::new(b)))
            .collect();
        Group {
            config,
            backends,
            next: AtomicUsize::new(0),
            tls,
            metrics: None,
        }
    }

    /// Report health changes to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        for b in &self.backends {
            metrics.set_upstream_health(&self.config.name, &b.name, true);
        }
        self.metrics = Some(metrics);
        self
    }

    /// The backends and their state.
    pub fn backends(&self) -> &[Arc<BackendState>] {
        &self.backends
    }

    /// Backends to try for one request, best first: at most `retries + 1`
    /// of them, healthy ones in balance order; when none is healthy, all of
    /// them (a group that is entirely down still gets a chance).
    pub fn attempt_order(&self) -> Vec<Arc<BackendState>> {
        let n = self.backends.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let rotated: Vec<Arc<BackendState>> = (0..n)
            .filter_map(|i| self.backends.get((start + i) % n).cloned())
            .collect();
        let mut healthy: Vec<Arc<BackendState>> =
            rotated.iter().filter(|b| b.is_healthy()).cloned().collect();
        if healthy.is_empty() {
            healthy = rotated;
        }
        if self.config.balance == Balance::LeastConnections {
            // Stable: ties keep the round-robin rotation.
            healthy.sort_by_key(|b| b.active());
        }
        let max = usize::try_from(self.config.retries)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        healthy.truncate(max);
        healthy
    }

    /// Count a tunnel on `state` until the lease is dropped.
    pub fn lease(&self, state: &Arc<BackendState>) -> BackendLease {
        state.active.fetch_add(1, Ordering::Relaxed);
        BackendLease {
            state: state.clone(),
        }
    }

    /// Passive health: an attempt on `state` succeeded.
    pub fn record_success(&self, state: &BackendState) {
        state.fails.store(0, Ordering::Relaxed);
        // The guard ends with this statement: `report` locks `down_until`
        // again (through `is_healthy`), and std's Mutex is not reentrant.
        let was_down = state
            .down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some();
        if was_down {
            self.report(state);
        }
    }

    /// Passive health: an attempt on `state` failed (connect error, timeout,
    /// no valid answer). After `max_fails` in a row it is skipped for
    /// `fail_timeout`.
    pub fn record_failure(&self, state: &BackendState) {
        let passive = &self.config.health.passive;
        if passive.max_fails == 0 {
            return;
        }
        let fails = state
            .fails
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if fails >= passive.max_fails {
            state.fails.store(0, Ordering::Relaxed);
            *state.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Instant::now() + passive.fail_timeout);
            tracing::warn!(
                upstream = %self.config.name,
                backend = %state.backend.url,
                skipped_for = ?passive.fail_timeout,
                "backend failed {fails} attempts in a row; skipping it"
            );
            self.report(state);
        }
    }

    fn report(&self, state: &BackendState) {
        if let Some(m) = &self.metrics {
            m.set_upstream_health(&self.config.name, &state.name, state.is_healthy());
        }
    }

    /// Connect to a backend (TCP, then TLS for `wss://`) within
    /// `connect_timeout`.
    pub async fn connect(&self, backend: &Backend) -> Result<MaybeTlsStream, ConnectError> {
        connect_backend(backend, &self.tls, self.config.connect_timeout).await
    }

    /// Run one active check of every backend now; returns how many are up.
    pub async fn check_all(&self, check: &ActiveHealth) -> usize {
        let mut up = 0;
        for b in &self.backends {
            let ok = check_backend(&b.backend, &self.tls, check).await;
            let was = b.check_failed.swap(!ok, Ordering::Relaxed);
            if was == ok {
                tracing::info!(upstream = %self.config.name, backend = %b.backend.url, healthy = ok, "active health check changed state");
                self.report(b);
            }
            up += usize::from(ok);
        }
        up
    }

    /// Spawn the active health checker (when `health.active` is set); it
    /// stops when the returned handle is aborted or the group is dropped.
    pub fn spawn_health_checks(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let check = self.config.health.active.clone()?;
        let weak = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(check.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(group) = weak.upgrade() else { return };
                group.check_all(&check).await;
            }
        }))
    }
}

/// TCP (+ TLS) to `backend` within `timeout`.
pub async fn connect_backend(
    backend: &Backend,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<MaybeTlsStream, ConnectError> {
    // Only errors name the backend: nothing formatted on a good connect.
    let name = || backend.url.to_string();
    let fut = async {
        let tcp = match backend.socket_addr() {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect(backend.authority()).await,
        }
        .map_err(|source| ConnectError::Tcp {
            backend: name(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        if !backend.is_tls() {
            return Ok(MaybeTlsStream::Plain(tcp));
        }
        let host = backend.bare_host().to_string();
        let server_name = ServerName::try_from(host).map_err(|e| ConnectError::Tls {
            backend: name(),
            why: e.to_string(),
        })?;
        let s = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(|e| ConnectError::Tls {
                backend: name(),
                why: e.to_string(),
            })?;
        Ok(MaybeTlsStream::Tls(Box::new(s)))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout {
            backend: name(),
            timeout,
        }),
    }
}

/// One active check: a WebSocket handshake to `check.path` (any 101 with a
/// valid accept passes), within `check.timeout`. A path of `"tcp"` (no
/// leading slash) checks only that a TCP (+TLS) connection opens.
pub async fn check_backend(
    backend: &Backend,
    tls: &Arc<rustls::ClientConfig>,
    check: &ActiveHealth,
) -> bool {
    let fut = async {
        let Ok(stream) = connect_backend(backend, tls, check.timeout).await else {
            return false;
        };
        if check.path == "tcp" {
            return true;
        }
        let scheme = if backend.is_tls() { "wss" } else { "ws" };
        let url = format!("{scheme}://{}{}", backend.authority(), check.path);
        let builder = switchyard::ClientBuilder::new().no_deflate();
        match switchyard::client::client_handshake(stream, &url, &builder).await {
            Ok((mut ws, _)) => {
                let _ = ws
                    .close(switchyard::CloseCode::GOING_AWAY, "health check")
                    .await;
                true
            }
            Err(_) => false,
        }
    };
    tokio::time::timeout(check.timeout, fut)
        .await
        .unwrap_or(false)
}

/// Every upstream group of a configuration, by name.
#[derive(Debug, Default)]
pub struct Upstreams {
    groups: HashMap<String, Arc<Group>>,
}

impl Upstreams {
    /// Groups for every `[[upstream]]`.
    pub fn from_config(
        upstreams: &[Upstream],
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, switchyard::Error> {
        let tls = switchyard::ClientBuilder::new().tls_config()?;
        Ok(Self::from_config_with_tls(upstreams, tls, metrics))
    }

    /// Same, with a given TLS configuration for `wss://` backends.
    pub fn from_config_with_tls(
        upstreams: &[Upstream],
        tls: Arc<rustls::ClientConfig>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let groups = upstreams
            .iter()
            .map(|u| {
                let mut g = Group::with_tls(u.clone(), tls.clone());
                if let Some(m) = &metrics {
                    g = g.with_metrics(m.clone());
                }
                (u.name.clone(), Arc::new(g))
            })
            .collect();
        Upstreams { groups }
    }

    /// The group of that name.
    pub fn get(&self, name: &str) -> Option<&Arc<Group>> {
        self.groups.get(name)
    }

    /// Start the active health checks of every group that has them.
    pub fn spawn_health_checks(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.groups
            .values()
            .filter_map(|g| g.spawn_health_checks())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Health, PassiveHealth};

    fn upstream(n: usize, balance: Balance, retries: u32) -> Upstream {
        Upstream {
            name: "g".into(),
            servers: (0..n)
                .map(|i| Backend {
                    url: format!("ws://127.0.0.1:{}", 1000 + i).parse().unwrap(),
                })
                .collect(),
            balance,
            connect_timeout: Duration::from_secs(1),
            retries,
            health: Health {
                passive: PassiveHealth {
                    max_fails: 2,
                    fail_timeout: Duration::from_secs(60),
                },
                active: None,
            },
        }
    }

    fn tls() -> Arc<rustls::ClientConfig> {
        switchyard::ClientBuilder::new().tls_config().unwrap()
    }

    fn port(b: &Arc<BackendState>) -> u16 {
        b.backend.url.port_u16().unwrap()
    }

    #[test]
    fn round_robin_rotates() {
        let g = Group::with_tls(upstream(3, Balance::RoundRobin, 0), tls());
        let firsts: Vec<u16> = (0..6).map(|_| port(&g.attempt_order()[0])).collect();
        assert_eq!(firsts, vec![1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[test]
    fn retries_bound_the_attempts() {
        let g = Group::with_tls(upstream(3, Balance::RoundRobin, 1), tls());
        assert_eq!(g.attempt_order().len(), 2);
        let g = Group::with_tls(upstream(3, Balance::RoundRobin, 10), tls());
        assert_eq!(g.attempt_order().len(), 3);
    }

    #[test]
    fn least_connections_prefers_the_idle_backend() {
        let g = Group::with_tls(upstream(3, Balance::LeastConnections, 0), tls());
        let b = g.backends().to_vec();
        let _l1 = g.lease(&b[0]);
        let _l2 = g.lease(&b[0]);
        let l3 = g.lease(&b[1]);
        for _ in 0..3 {
            assert_eq!(port(&g.attempt_order()[0]), 1002);
        }
        let _l4 = g.lease(&b[2]);
        let _l5 = g.lease(&b[2]);
        assert_eq!(port(&g.attempt_order()[0]), 1001);
        drop(l3);
        assert_eq!(b[1].active(), 0);
        assert_eq!(port(&g.attempt_order()[0]), 1001);
    }

    #[test]
    fn passive_health_skips_after_max_fails() {
        let g = Group::with_tls(upstream(2, Balance::RoundRobin, 5), tls());
        let b = g.backends().to_vec();
        g.record_failure(&b[0]);
        assert!(b[0].is_healthy(), "one failure is not enough");
        g.record_success(&b[0]);
        g.record_failure(&b[0]);
        assert!(b[0].is_healthy(), "success reset the count");
        g.record_failure(&b[0]);
        assert!(!b[0].is_healthy());
        for _ in 0..4 {
            let order = g.attempt_order();
            assert_eq!(order.len(), 1);
            assert_eq!(port(&order[0]), 1001);
        }
        // All down: everything is tried anyway.
        g.record_failure(&b[1]);
        g.record_failure(&b[1]);
        assert_eq!(g.attempt_order().len(), 2);
        g.record_success(&b[0]);
        assert!(b[0].is_healthy());
    }

    #[test]
    fn a_backend_back_from_passive_health_is_reported_healthy() {
        let metrics = Arc::new(Metrics::new());
        let g = Arc::new(
            Group::with_tls(upstream(1, Balance::RoundRobin, 0), tls())
                .with_metrics(metrics.clone()),
        );
        let b = g.backends()[0].clone();
        let gauge = |m: &Metrics| {
            m.render()
                .lines()
                .find(|l| l.starts_with("switchyard_upstream_healthy{"))
                .map(|l| l.ends_with(" 1"))
        };
        g.record_failure(&b);
        g.record_failure(&b);
        assert_eq!(gauge(&metrics), Some(false));
        // On its own thread: a success that deadlocks (a lock held across
        // the report) fails here instead of hanging the test.
        let (done, finished) = std::sync::mpsc::channel();
        let (g2, b2) = (g.clone(), b.clone());
        std::thread::spawn(move || {
            g2.record_success(&b2);
            let _ = done.send(());
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(30)).is_ok(),
            "record_success did not return"
        );
        assert!(b.is_healthy());
        assert_eq!(gauge(&metrics), Some(true));
    }

    #[tokio::test]
    async fn passive_health_expires() {
        let mut u = upstream(1, Balance::RoundRobin, 0);
        u.health.passive.fail_timeout = Duration::from_millis(50);
        let g = Group::with_tls(u, tls());
        let b = g.backends()[0].clone();
        g.record_failure(&b);
        g.record_failure(&b);
        assert!(!b.is_healthy());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(b.is_healthy());
    }

    #[test]
    fn max_fails_zero_disables_passive_health() {
        let mut u = upstream(1, Balance::RoundRobin, 0);
        u.health.passive.max_fails = 0;
        let g = Group::with_tls(u, tls());
        let b = g.backends()[0].clone();
        for _ in 0..10 {
            g.record_failure(&b);
        }
        assert!(b.is_healthy());
    }
}

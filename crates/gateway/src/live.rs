//! The running configuration: a [`Config`] turned into routes ready to
//! serve, swapped whole by a reload.
//!
//! [`Gateway`] holds the live generation ([`Live`]) behind one
//! `RwLock<Arc<Live>>`. Each request takes one `Arc` clone of it (no lock
//! held while serving). A reload builds a complete new [`Live`] first and
//! swaps it in only when it is valid: new requests follow the new routes,
//! every open connection keeps the [`RouteEntry`] (and with it the upstream
//! groups of its generation) it started with until it ends, so a reload
//! never touches an open connection. The metrics registry, the connection
//! caps and the live-connection table are kept across reloads.
//!
//! Listeners follow a reload too, through the [`ListenerControl`] the
//! runtime installs: added listeners start, removed ones stop accepting
//! (their open connections go on), and TLS certificate and key files are
//! read again for the listeners that stay. What a reload does NOT change:
//! the admin listener's address, `[cluster]`, `[runtime]`, `[http1]`, `[http2]` and the head limits
//! of listeners that stay (restart to change them; a reload that changes
//! `[admin] address` logs a warning and applies the rest). The admin token is
//! read again: a reload rotates it.
//!
//! Drain and transparent tunnels: a transparent tunnel copies bytes without
//! knowing frame boundaries, so it cannot inject a close frame. On a
//! gateway every WebSocket route therefore runs frame-aware unless its
//! policy says `tunnel = "transparent"` explicitly (`"auto"` means frames
//! for websocket here): on SIGTERM both sides of every proxied WebSocket get
//! close 1001. A route with `tunnel = "transparent"` (and every non-WebSocket
//! token) is cut at drain (TCP FIN after the drain starts: the client sees
//! the connection end, without a close frame).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use switchyard::server::AcceptConfig;
use tracing::{info, warn};

use crate::admission::ConnectionLimiter;
use crate::apps::AppSettings;
use crate::census::SessionCensus;
use crate::cluster::ClusterNode;
use crate::config::{App, Config, ConfigError, ConfigSource, Route, RouteTarget, TunnelSetting};
use crate::metrics::Metrics;
use crate::proxy::{self, ProxyContext};
use crate::session::{SessionMetrics, Sessions};
use crate::tracking::{ConnTable, RouteTag};
use crate::upgrade::Registry;

/// Why a (re)load failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The config file is invalid (the message names the line and key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `[cluster]` could not be set up.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The upstream groups could not be built (TLS roots...).
    #[error("cannot set up the upstream groups: {0}")]
    Upstreams(#[from] switchyard::Error),
    /// There is no file to reload from (the gateway runs an in-memory config).
    #[error("no config file to reload from: start with `switchyard serve --config FILE`")]
    NoFile,
    /// The listeners of the new config cannot be applied (a port that
    /// cannot be bound, a certificate that cannot be loaded...).
    #[error("{0}")]
    Listeners(String),
}

/// Applies the `[[listener]]` part of a config to the running listeners.
/// Set by the runtime that runs the listeners.
pub trait ListenerControl: Send + Sync {
    /// Get ready to move from the running listeners to those of `new`:
    /// bind the added ones, load the certificates of the TLS ones. Nothing
    /// visible changes yet. `Err` (the reason) rejects the whole reload; the
    /// returned commit applies it (start the added listeners, stop accepting
    /// on the removed ones, swap the certificates) and cannot fail.
    fn prepare(&self, new: &Config) -> Result<Box<dyn FnOnce() + Send>, String>;
}

impl std::fmt::Debug for dyn ListenerControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenerControl")
    }
}

/// One route of a generation, ready to serve: its configuration, its
/// metrics label, and what serves it. A decision of the dispatcher holds
/// an `Arc` of it for as long as the request or connection lives.
#[derive(Debug)]
pub struct RouteEntry {
    /// The route as configured (policy included).
    pub config: Route,
    /// The metrics label: `host/path`, or the path alone.
    pub label: String,
    /// What serves the route.
    pub target: Target,
    /// The label and target that `/status` shows for its connections.
    pub tag: Arc<RouteTag>,
    /// The generation's upstream groups, metrics, caps and `[limits]`.
    pub ctx: Arc<ProxyContext>,
}

/// What serves a route.
#[derive(Debug)]
pub enum Target {
    /// The upstream group named in the route (see [`crate::proxy`]).
    Upstream,
    /// A built-in application.
    App(AppEntry),
}

/// A built-in application on one route, with the route's policy applied.
#[derive(Debug)]
pub struct AppEntry {
    /// Which app.
    pub app: App,
    /// Its Upgrade handlers (HTTP/1.1), one per protocol it speaks.
    pub handlers: Registry,
    /// The WebSocket handshake and limits (the route's `max_message_size`
    /// and heartbeat over `[limits]`), for apps that speak WebSocket.
    pub websocket: Option<Arc<AcceptConfig>>,
    /// Idle timeout and drain grace.
    pub settings: AppSettings,
}

impl RouteEntry {
    /// The route as the proxy takes it.
    pub fn proxy(&self) -> proxy::ProxyRoute<'_> {
        proxy::ProxyRoute {
            config: &self.config,
            label: &self.label,
            ctx: &self.ctx,
        }
    }

    /// The app serving this route, if it is one.
    pub fn app(&self) -> Option<&AppEntry> {
        match &self.target {
            Target::App(a) => Some(a),
            Target::Upstream => None,
        }
    }
}

/// One generation of the configuration.
#[derive(Debug)]
pub struct Live {
    /// The validated config (routes with the gateway's tunnel default).
    pub config: Config,
    /// The routes, in the order of `config.routes`.
    pub routes: Vec<Arc<RouteEntry>>,
    /// Upstream groups, metrics and caps of this generation.
    pub ctx: Arc<ProxyContext>,
    /// Generation number (1 at start, +1 per successful reload).
    pub generation: u64,
    health_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        for t in &self.health_tasks {
            t.abort();
        }
    }
}

impl Live {
    /// The entry of `route`, one of `self.config.routes`.
    pub fn entry_of(&self, route: &Route) -> Option<&Arc<RouteEntry>> {
        let i = self
            .config
            .routes
            .iter()
            .position(|r| std::ptr::eq(r, route))?;
        self.routes.get(i)
    }
}

/// The running gateway (shared by every listener).
#[derive(Debug)]
pub struct Gateway {
    live: RwLock<Arc<Live>>,
    source: Option<ConfigSource>,
    metrics: Arc<Metrics>,
    limiter: ConnectionLimiter,
    connections: ConnTable,
    reloads: AtomicU64,
    /// Why the last reload was rejected (`None` once one succeeds).
    reload_error: Mutex<Option<String>>,
    /// Set when shutdown starts: no new connections, the open ones close.
    draining: AtomicBool,
    listeners: Mutex<Option<Arc<dyn ListenerControl>>>,
    /// One reload at a time (SIGHUP and POST /reload may race).
    reloading: Mutex<()>,
    /// Fallback sessions, kept across reloads (each keeps the settings it
    /// was opened with).
    sessions: Sessions,
    census: Option<SessionCensus>,
}

/// Fallback sessions one gateway holds at once; more opens get 503 with
/// `Retry-After`.
pub const MAX_FALLBACK_SESSIONS: usize = 10_000;

/// The gateway's reading of `tunnel = "auto"`: frames for WebSocket, so a
/// drain can close every proxied WebSocket with 1001 (see the module docs).
fn gateway_defaults(mut cfg: Config) -> Config {
    for r in &mut cfg.routes {
        if r.policy.tunnel == TunnelSetting::Auto {
            r.policy.tunnel = TunnelSetting::Frames;
        }
    }
    cfg
}

impl Gateway {
    /// A gateway running `cfg`; `source` is what `reload` reads again (a
    /// file and the command line's overrides).
    pub fn new(cfg: Config, source: Option<ConfigSource>) -> Result<Arc<Gateway>, GatewayError> {
        let metrics = Arc::new(Metrics::new());
        let live = Self::build(cfg, &metrics, 1)?;
        let cluster = live
            .config
            .cluster
            .as_ref()
            .map(ClusterNode::start)
            .transpose()?;
        let limiter = match &cluster {
            None => ConnectionLimiter::new(),
            Some(node) => ConnectionLimiter::shared(node.caps.clone()),
        };
        let sessions = match &cluster {
            None => Sessions::in_memory(MAX_FALLBACK_SESSIONS, live.config.fallback.memory),
            Some(node) => Sessions::new(
                node.session_store(),
                MAX_FALLBACK_SESSIONS,
                Arc::new(SessionMetrics::new()),
            ),
        };
        let census = cluster.map(|node| node.census(sessions.clone()));
        Ok(Arc::new(Gateway {
            live: RwLock::new(Arc::new(live)),
            source,
            metrics,
            limiter,
            connections: ConnTable::default(),
            reloads: AtomicU64::new(0),
            reload_error: Mutex::new(None),
            draining: AtomicBool::new(false),
            listeners: Mutex::new(None),
            reloading: Mutex::new(()),
            sessions,
            census,
        }))
    }

    /// Reads `path` and starts a gateway on it.
    pub fn load(path: PathBuf) -> Result<Arc<Gateway>, GatewayError> {
        Self::from_source(ConfigSource::file(path))
    }

    /// Loads `source` and starts a gateway on it.
    pub fn from_source(source: ConfigSource) -> Result<Arc<Gateway>, GatewayError> {
        let cfg = source.load()?;
        Self::new(cfg, Some(source))
    }

    fn build(cfg: Config, metrics: &Arc<Metrics>, generation: u64) -> Result<Live, GatewayError> {
        let cfg = gateway_defaults(cfg);
        let ctx = Arc::new(ProxyContext::from_config(&cfg, metrics.clone())?);
        let health_tasks = if tokio::runtime::Handle::try_current().is_ok() {
            ctx.upstreams.spawn_health_checks()
        } else {
            Vec::new()
        };
        let routes = cfg
            .routes
            .iter()
            .map(|r| Arc::new(route_entry(r, &cfg, &ctx)))
            .collect();
        Ok(Live {
            config: cfg,
            routes,
            ctx,
            generation,
            health_tasks,
        })
    }

    /// The fallback sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The cluster's session count (with `[cluster]`).
    pub fn census(&self) -> Option<&SessionCensus> {
        self.census.as_ref()
    }

    /// The current generation (one `Arc` clone).
    pub fn live(&self) -> Arc<Live> {
        match self.live.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The connection caps (kept across reloads).
    pub fn limiter(&self) -> &ConnectionLimiter {
        &self.limiter
    }

    /// The live connections (for `/status`).
    pub fn connections(&self) -> &ConnTable {
        &self.connections
    }

    /// Successful reloads so far.
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Re-read the config file (the command line's overrides on top) and
    /// apply it to new connections. On error the old config stays in force
    /// and the error is returned (and logged).
    pub fn reload(&self) -> Result<u64, GatewayError> {
        let result = match self.source.as_ref().filter(|s| s.file.is_some()) {
            None => Err(GatewayError::NoFile),
            Some(s) => s
                .load()
                .map_err(GatewayError::from)
                .and_then(|cfg| self.apply(cfg)),
        };
        match &result {
            Ok(g) => info!(generation = g, "configuration reloaded"),
            Err(e) => warn!("reload rejected, the previous configuration stays in force: {e}"),
        }
        *self.reload_error.lock().unwrap_or_else(|p| p.into_inner()) =
            result.as_ref().err().map(ToString::to_string);
        result
    }

    /// Why the last reload was rejected, if it was (for `/status.json`).
    pub fn reload_error(&self) -> Option<String> {
        self.reload_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Mark the gateway as draining (shutdown started).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Set (or clear) what applies `[[listener]]` changes on reload;
    /// without one, a reload leaves the listeners as they are.
    pub fn set_listener_control(&self, control: Option<Arc<dyn ListenerControl>>) {
        match self.listeners.lock() {
            Ok(mut g) => *g = control,
            Err(p) => *p.into_inner() = control,
        }
    }

    /// Apply an already parsed config: routes, upstream groups, policies
    /// and `[limits]` to new connections, and (with a [`ListenerControl`])
    /// the listeners: added ones start, removed ones stop accepting, TLS
    /// certificates are read again. Anything that fails rejects the whole
    /// config; the old one stays.
    pub fn apply(&self, cfg: Config) -> Result<u64, GatewayError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.live();
        if cfg.admin.as_ref().map(|a| a.address) != old.config.admin.as_ref().map(|a| a.address) {
            warn!("[admin] address is bound at start: restart switchyard to change it; applying the rest");
        }
        if cfg.cluster != old.config.cluster {
            warn!(
                "[cluster] is set up at start: restart switchyard to change it; applying the rest"
            );
        }
        let live = Self::build(cfg, &self.metrics, old.generation + 1)?;
        let control = match self.listeners.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let commit = match &control {
            Some(c) => Some(c.prepare(&live.config).map_err(GatewayError::Listeners)?),
            None => None,
        };
        let generation = live.generation;
        match self.live.write() {
            Ok(mut g) => *g = Arc::new(live),
            Err(p) => *p.into_inner() = Arc::new(live),
        }
        if let Some(commit) = commit {
            commit();
        }
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(generation)
    }

    /// What shutdown waits with the current configuration
    /// ([`Config::drain_timeout`]).
    pub fn drain_timeout(&self) -> Duration {
        self.live().config.drain_timeout()
    }
}

/// The live form of one route of `cfg`.
fn route_entry(route: &Route, cfg: &Config, ctx: &Arc<ProxyContext>) -> RouteEntry {
    let policy = &route.policy;
    let target = match route.target() {
        RouteTarget::Upstream(_) => Target::Upstream,
        RouteTarget::App(app) => {
            let settings = AppSettings {
                idle_timeout: policy.idle_timeout,
                drain_timeout: policy.drain_timeout,
            };
            let websocket = app.upgrade_tokens().contains(&"websocket").then(|| {
                let mut limits = cfg.limits.clone();
                if let Some(m) = policy.max_message_size {
                    limits.max_message_size = m;
                    limits.max_frame_size = limits.max_frame_size.min(m.max(125));
                }
                limits.ping_interval = policy.ping_interval;
                limits.pong_timeout = policy.pong_timeout;
                let mut accept = AcceptConfig::default();
                accept.limits = limits;
                accept.handshake.deflate = Some(Default::default());
                Arc::new(accept)
            });
            let handlers = crate::upgrade::app_handlers(app, websocket.as_ref(), &settings);
            Target::App(AppEntry {
                app,
                handlers,
                websocket,
                settings,
            })
        }
    };
    let label = proxy::route_label(route);
    let served_by = match &target {
        Target::App(a) => format!("app {}", a.app.as_str()),
        Target::Upstream => format!("upstream {}", route.upstream.as_deref().unwrap_or_default()),
    };
    RouteEntry {
        config: route.clone(),
        tag: Arc::new(RouteTag {
            route: label.clone(),
            target: served_by,
        }),
        label,
        target,
        ctx: ctx.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::from_toml_str(text, "t.toml").unwrap()
    }

    const BASE: &str = "[[listener]]\naddress = \"127.0.0.1:1\"\n\
        [[upstream]]\nname = \"a\"\nservers = [\"ws://127.0.0.1:9\"]\n\
        [[route]]\npath = \"/ws\"\nupstream = \"a\"\n\
        [[route]]\npath = \"/echo\"\napp = \"echo\"\n";

    #[tokio::test]
    async fn reload_swaps_the_generation_and_keeps_the_old_one_alive() {
        let gw = Gateway::new(cfg(BASE), None).unwrap();
        let live = gw.live();
        assert_eq!(live.routes.len(), 2);
        assert!(matches!(live.routes[0].target, Target::Upstream));
        assert!(matches!(&live.routes[1].target, Target::App(a) if a.app == App::Echo));
        // auto becomes frames on a gateway
        assert_eq!(live.config.routes[0].policy.tunnel, TunnelSetting::Frames);
        let swapped = BASE.replace("path = \"/ws\"", "path = \"/other\"");
        assert_eq!(gw.apply(cfg(&swapped)).unwrap(), 2);
        let new = gw.live();
        assert_eq!(new.routes[0].config.path, "/other");
        // the old generation is intact for whoever holds it
        assert_eq!(live.routes[0].config.path, "/ws");
        assert_eq!(gw.reload_count(), 1);
    }

    #[tokio::test]
    async fn app_routes_carry_their_policy() {
        let gw = Gateway::new(
            cfg(&format!(
                "[limits]\nmax_write_buffer = \"64KiB\"\nclose_timeout = \"2s\"\n\
                 {BASE}[route.policy]\nmax_message_size = \"1KiB\"\nping_interval = \"3s\"\n\
                 pong_timeout = \"2s\"\nidle_timeout = \"9s\"\ndrain_timeout = \"4s\"\n"
            )),
            None,
        )
        .unwrap();
        let live = gw.live();
        let app = live.routes[1].app().unwrap();
        let ws = app.websocket.as_ref().unwrap();
        assert_eq!(ws.limits.max_message_size, 1024);
        assert_eq!(ws.limits.max_frame_size, 1024);
        assert_eq!(ws.limits.ping_interval, Some(Duration::from_secs(3)));
        assert_eq!(ws.limits.pong_timeout, Duration::from_secs(2));
        // What the policy does not set comes from [limits].
        assert_eq!(ws.limits.max_write_buffer, 64 << 10);
        assert_eq!(ws.limits.close_timeout, Duration::from_secs(2));
        assert_eq!(app.settings.idle_timeout, Duration::from_secs(9));
        assert_eq!(app.settings.drain_timeout, Duration::from_secs(4));
        assert!(app.handlers.speaks("websocket"));
    }

    #[tokio::test]
    async fn reload_without_file_is_refused_and_keeps_the_config() {
        let gw = Gateway::new(cfg(BASE), None).unwrap();
        assert!(matches!(gw.reload(), Err(GatewayError::NoFile)));
        assert_eq!(gw.live().generation, 1);
    }

    #[tokio::test]
    async fn broken_file_on_reload_keeps_the_old_config() {
        let dir = std::env::temp_dir().join(format!("sy-gw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("g.toml");
        std::fs::write(&file, BASE).unwrap();
        let gw = Gateway::load(file.clone()).unwrap();
        std::fs::write(&file, format!("{BASE}bogus = 1\n")).unwrap();
        let err = gw.reload().unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        assert_eq!(gw.live().generation, 1);
        std::fs::write(&file, BASE.replace("/ws", "/w2")).unwrap();
        assert_eq!(gw.reload().unwrap(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn explicit_transparent_is_kept() {
        let c = gateway_defaults(cfg(&BASE.replace(
            "upstream = \"a\"\n",
            "upstream = \"a\"\n[route.policy]\ntunnel = \"transparent\"\n",
        )));
        assert_eq!(c.routes[0].policy.tunnel, TunnelSetting::Transparent);
    }
}

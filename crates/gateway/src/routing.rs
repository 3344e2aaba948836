//! The gateway: a [`Config`] turned into a running reverse proxy.
//!
//! [`Gateway`] holds the *live* configuration (routes, upstream groups,
//! policies) behind one `RwLock<Arc<Live>>`. Each request takes one `Arc`
//! clone of it (no lock held while serving) and routes with
//! [`Config::route_for`] (O(routes)). A reload builds a complete new
//! [`Live`] first and swaps it in only when it is valid: new connections
//! follow the new routes, every open tunnel keeps the `Live` (and its
//! upstream groups) it started with until it ends, so a reload never
//! touches an open connection. The metrics registry, the connection caps
//! and the live-connection table are kept across reloads.
//!
//! What a reload does NOT change: listener addresses, TLS certificates,
//! the admin listener (they are bound once at start; restart to change
//! them). A reload that changes them logs a warning and applies the rest.
//!
//! Drain and transparent tunnels: a transparent tunnel copies bytes without
//! knowing frame boundaries, so it cannot inject a close frame. On a
//! gateway every WebSocket route therefore runs frame-aware unless its
//! policy says `tunnel = "transparent"` explicitly (`"auto"` means frames
//! for websocket here): on SIGTERM both sides of every proxied WebSocket get
//! close 1001. A route with `tunnel = "transparent"` (and every non-WebSocket
//! token) is cut at drain (TCP FIN after the drain starts: the client sees
//! the connection end, without a close frame).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::BytesMut;
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{App, Config, ConfigError, RouteTarget, TunnelSetting};
use crate::proxy::{self, ClientInfo, ConnectionLimiter, Metrics, ProxyContext};

/// Why a (re)load failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The config file is invalid (the message names the line and key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The upstream groups could not be built (TLS roots...).
    #[error("cannot set up the upstream groups: {0}")]
    Upstreams(#[from] switchyard::Error),
    /// There is no file to reload from (the gateway runs an in-memory config).
    #[error("no config file to reload from: start with `switchyard serve --config FILE`")]
    NoFile,
}

/// One generation of the configuration.
#[derive(Debug)]
pub struct Live {
    /// The validated config (routes with the gateway's tunnel default).
    pub config: Config,
    /// Upstream groups, metrics and caps for this generation.
    pub ctx: ProxyContext,
    /// The metrics label of each route, by index in `config.routes`.
    pub labels: Vec<String>,
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

/// A live proxied connection, for `/status`.
#[derive(Debug)]
pub struct ConnEntry {
    /// The client's address.
    pub client: SocketAddr,
    /// The route label.
    pub route: String,
    /// The upstream group.
    pub upstream: String,
    /// `h1` / `h2` / `h3`.
    pub protocol: &'static str,
    /// When the request arrived.
    pub since: Instant,
    /// Bytes from the client so far.
    pub bytes_in: Arc<AtomicU64>,
    /// Bytes to the client so far.
    pub bytes_out: Arc<AtomicU64>,
}

/// What the front does with a request.
pub enum Dispatch {
    /// The route is an upstream group: call [`Gateway::proxy_h1`].
    Proxy(usize),
    /// A built-in app.
    App(App),
    /// No route matches: 404.
    NotFound,
}

/// The running gateway (shared by every listener).
#[derive(Debug)]
pub struct Gateway {
    live: RwLock<Arc<Live>>,
    path: Option<PathBuf>,
    metrics: Arc<Metrics>,
    limiter: ConnectionLimiter,
    next_conn: AtomicU64,
    conns: Mutex<HashMap<u64, ConnEntry>>,
    reloads: AtomicU64,
}

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
    /// A gateway running `cfg`; `path` is the file `reload` re-reads.
    pub fn new(cfg: Config, path: Option<PathBuf>) -> Result<Arc<Gateway>, GatewayError> {
        let metrics = Arc::new(Metrics::new());
        let limiter = ConnectionLimiter::new();
        let live = Self::build(cfg, &metrics, &limiter, 1)?;
        Ok(Arc::new(Gateway {
            live: RwLock::new(Arc::new(live)),
            path,
            metrics,
            limiter,
            next_conn: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            reloads: AtomicU64::new(0),
        }))
    }

    /// Reads `path` and starts a gateway on it.
    pub fn load(path: PathBuf) -> Result<Arc<Gateway>, GatewayError> {
        let cfg = Config::load(&path)?;
        Self::new(cfg, Some(path))
    }

    fn build(
        cfg: Config,
        metrics: &Arc<Metrics>,
        limiter: &ConnectionLimiter,
        generation: u64,
    ) -> Result<Live, GatewayError> {
        let cfg = gateway_defaults(cfg);
        let ctx = ProxyContext::from_config(&cfg, metrics.clone(), limiter.clone())?;
        let health_tasks = if tokio::runtime::Handle::try_current().is_ok() {
            ctx.upstreams.spawn_health_checks()
        } else {
            Vec::new()
        };
        let labels = cfg.routes.iter().map(proxy::route_label).collect();
        Ok(Live {
            config: cfg,
            ctx,
            labels,
            generation,
            health_tasks,
        })
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

    /// Successful reloads so far.
    pub fn reload_count(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Re-read the config file and apply it to new connections. On error
    /// the old config stays in force and the error is returned (and logged).
    pub fn reload(&self) -> Result<u64, GatewayError> {
        let result = match &self.path {
            None => Err(GatewayError::NoFile),
            Some(p) => Config::load(p)
                .map_err(GatewayError::from)
                .and_then(|cfg| self.apply(cfg)),
        };
        match &result {
            Ok(g) => info!(generation = g, "configuration reloaded"),
            Err(e) => warn!("reload rejected, the previous configuration stays in force: {e}"),
        }
        result
    }

    /// Apply an already parsed config to new connections.
    pub fn apply(&self, cfg: Config) -> Result<u64, GatewayError> {
        let old = self.live();
        if cfg.listeners != old.config.listeners || cfg.admin != old.config.admin {
            warn!("listeners and [admin] are bound at start: restart switchyard to change them; applying the rest");
        }
        let live = Self::build(cfg, &self.metrics, &self.limiter, old.generation + 1)?;
        let generation = live.generation;
        match self.live.write() {
            Ok(mut g) => *g = Arc::new(live),
            Err(p) => *p.into_inner() = Arc::new(live),
        }
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(generation)
    }

    /// Which route of `live` serves `req`.
    pub fn dispatch(live: &Live, req: &Request<()>) -> Dispatch {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host());
        let path = req.uri().path();
        let Some((i, route)) = live.config.route_for(host, path).and_then(|r| {
            live.config
                .routes
                .iter()
                .position(|x| std::ptr::eq(x, r))
                .map(|i| (i, r))
        }) else {
            return Dispatch::NotFound;
        };
        match route.target() {
            RouteTarget::Upstream(_) => Dispatch::Proxy(i),
            RouteTarget::App(a) => Dispatch::App(a),
        }
    }

    /// Proxy an HTTP/1.1 request on route `index` of `live`.
    #[allow(clippy::too_many_arguments)]
    pub async fn proxy_h1<C>(
        &self,
        live: &Live,
        index: usize,
        client: C,
        req: Request<()>,
        leftover: BytesMut,
        client_info: ClientInfo,
        stop: watch::Receiver<bool>,
    ) -> proxy::ProxyOutcome
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let route = &live.config.routes[index.min(live.config.routes.len().saturating_sub(1))];
        let label = &live.labels[index.min(live.labels.len().saturating_sub(1))];
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let bytes_in = Arc::new(AtomicU64::new(0));
        let bytes_out = Arc::new(AtomicU64::new(0));
        self.track(
            id,
            ConnEntry {
                client: client_info.addr,
                route: label.clone(),
                upstream: route.upstream.clone().unwrap_or_default(),
                protocol: "h1",
                since: Instant::now(),
                bytes_in: bytes_in.clone(),
                bytes_out: bytes_out.clone(),
            },
        );
        let _untrack = Untrack(self, id);
        let client = Counting {
            inner: client,
            read: bytes_in,
            written: bytes_out,
        };
        proxy::proxy_h1(
            client,
            req,
            leftover,
            client_info,
            route,
            label,
            &live.ctx,
            stopped(stop),
        )
        .await
    }

    fn track(&self, id: u64, e: ConnEntry) {
        if let Ok(mut m) = self.conns.lock() {
            m.insert(id, e);
        }
    }

    /// Snapshot of the live proxied connections: (route, client, upstream,
    /// protocol, age in seconds, bytes in, bytes out), sorted by route.
    pub fn connections(&self) -> Vec<(String, SocketAddr, String, &'static str, f64, u64, u64)> {
        let mut v: Vec<_> = match self.conns.lock() {
            Ok(m) => m
                .values()
                .map(|e| {
                    (
                        e.route.clone(),
                        e.client,
                        e.upstream.clone(),
                        e.protocol,
                        e.since.elapsed().as_secs_f64(),
                        e.bytes_in.load(Ordering::Relaxed),
                        e.bytes_out.load(Ordering::Relaxed),
                    )
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        v
    }

    /// The longest drain timeout of the routes (what shutdown waits).
    pub fn drain_timeout(&self) -> std::time::Duration {
        self.live()
            .config
            .routes
            .iter()
            .map(|r| r.policy.drain_timeout)
            .max()
            .unwrap_or(std::time::Duration::from_secs(2))
    }
}

struct Untrack<'a>(&'a Gateway, u64);
impl Drop for Untrack<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.0.conns.lock() {
            m.remove(&self.1);
        }
    }
}

/// What [`route_h1`] decided. Not boxed: it lives on the stack for one
/// request and the connection moves through it without a copy on the heap.
#[allow(clippy::large_enum_variant)]
pub(crate) enum H1Route {
    /// The request was proxied; the connection is finished.
    Done,
    /// Served by the front: the built-in route at this path (None: 404).
    Local(
        crate::io::Prefixed<crate::io::ServerIo>,
        Request<()>,
        Option<&'static str>,
    ),
}

/// The HTTP/1.1 front's hook: route `req` with the gateway; proxy it, or
/// hand it back with the built-in path that serves its app.
pub(crate) async fn route_h1(
    gw: &Gateway,
    _shared: &crate::server::Shared,
    conn: crate::io::Prefixed<crate::io::ServerIo>,
    req: Request<()>,
    ctx: &crate::server::ConnCtx,
) -> H1Route {
    let live = gw.live();
    match Gateway::dispatch(&live, &req) {
        Dispatch::Proxy(i) => {
            let tls = conn.get_ref().is_tls();
            let addr = peer_addr(conn.get_ref());
            let (leftover, io) = conn.into_parts();
            let info = ClientInfo { addr, tls };
            gw.proxy_h1(&live, i, io, req, leftover, info, ctx.stop.clone())
                .await;
            H1Route::Done
        }
        Dispatch::App(App::Echo) => H1Route::Local(conn, req, Some("/echo")),
        Dispatch::App(App::Index) => H1Route::Local(conn, req, Some("/")),
        Dispatch::NotFound => H1Route::Local(conn, req, None),
    }
}

fn peer_addr(io: &crate::io::ServerIo) -> SocketAddr {
    let tcp = match io {
        crate::io::ServerIo::Plain(t) => t,
        crate::io::ServerIo::Tls(t) => t.get_ref().0,
    };
    tcp.peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Counts bytes through a client stream (one relaxed atomic add per I/O
/// call, no allocation) for `/status`.
struct Counting<C> {
    inner: C,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl<C: AsyncRead + Unpin> AsyncRead for Counting<C> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Counting<C> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
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

    fn req(path: &str) -> Request<()> {
        Request::get(path).header("host", "x").body(()).unwrap()
    }

    #[tokio::test]
    async fn dispatch_by_prefix_and_reload_swaps_routes() {
        let gw = Gateway::new(cfg(BASE), None).unwrap();
        let live = gw.live();
        assert!(matches!(
            Gateway::dispatch(&live, &req("/ws/x")),
            Dispatch::Proxy(0)
        ));
        assert!(matches!(
            Gateway::dispatch(&live, &req("/echo")),
            Dispatch::App(App::Echo)
        ));
        assert!(matches!(
            Gateway::dispatch(&live, &req("/nope")),
            Dispatch::NotFound
        ));
        // auto becomes frames on a gateway
        assert_eq!(live.config.routes[0].policy.tunnel, TunnelSetting::Frames);
        let swapped = BASE.replace("path = \"/ws\"", "path = \"/other\"");
        assert_eq!(gw.apply(cfg(&swapped)).unwrap(), 2);
        let new = gw.live();
        assert!(matches!(
            Gateway::dispatch(&new, &req("/ws")),
            Dispatch::NotFound
        ));
        assert!(matches!(
            Gateway::dispatch(&new, &req("/other")),
            Dispatch::Proxy(0)
        ));
        // the old generation still routes as before for whoever holds it
        assert!(matches!(
            Gateway::dispatch(&live, &req("/ws")),
            Dispatch::Proxy(0)
        ));
        assert_eq!(gw.reload_count(), 1);
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
        let c = gateway_defaults(cfg(&format!(
            "{BASE}[route.policy]\ntunnel = \"transparent\"\n"
        )));
        assert_eq!(c.routes[1].policy.tunnel, TunnelSetting::Transparent);
        assert_eq!(c.routes[0].policy.tunnel, TunnelSetting::Frames);
    }
}

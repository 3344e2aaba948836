//! Listeners, routes, connection tracking and graceful shutdown.
//!
//! Each accepted TCP connection gets one task and one tracing span with its
//! id. A TLS listener runs the TLS handshake first (ALPN `h2` goes to the
//! HTTP/2 server of [`crate::h2`], anything else to HTTP/1.1); a cleartext
//! listener looks at the first bytes: the HTTP/2 prior-knowledge preface goes
//! to HTTP/2, anything else to the HTTP/1.1 loop of [`crate::http1`].
//!
//! Default routes (what `switchyard serve` runs):
//!
//! | request                              | answer                                  |
//! |--------------------------------------|-----------------------------------------|
//! | `GET /echo` with a WebSocket upgrade | 101, then the echo app                  |
//! | `GET /echo` without one              | 426, `Upgrade: websocket`               |
//! | `GET /` (or `HEAD /`)                | 200, the index page                     |
//! | `/` or `/echo` with another method   | 405 with `Allow`                        |
//! | anything else                        | 404                                     |

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use switchyard::proto::deflate::DeflateConfig;
use switchyard::server::AcceptConfig;
use switchyard::Limits;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn, Instrument};

use crate::io::ServerIo;
use crate::registry::{ConnInfo, Registry, UpgradeProtocol};
use crate::tls::{self, TlsError};
use crate::tls_upgrade::TlsUpgrade;
use crate::websocket::WebSocketEcho;

/// What `switchyard serve` runs without a config file.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen. Default `127.0.0.1:8080`.
    pub listen: Vec<SocketAddr>,
    /// Per-connection limits (head caps and deadline, frame and message sizes...).
    pub limits: Limits,
    /// permessage-deflate when the client offers it. Default on.
    pub deflate: Option<DeflateConfig>,
    /// How long shutdown waits for the closing handshakes after sending 1001.
    pub shutdown_grace: Duration,
    /// HTTP/1.1 keep-alive and request bodies.
    pub http1: Http1Settings,
    /// The HTTP/2 server (TLS with ALPN `h2`, or prior knowledge on cleartext).
    pub http2: Http2Settings,
    /// A certificate: TLS listeners, or RFC 2817 upgrades on cleartext ones.
    pub tls: Option<TlsSettings>,
    /// Routes served besides the default `/`, `/index.html` and `/echo`; an
    /// extra route on one of those paths replaces the default one.
    pub extra_routes: Vec<Route>,
    /// Also serve WebSocket over HTTP/3 (RFC 9220) on UDP, same port and
    /// certificate as each TLS listener, advertised with `Alt-Svc` on the TCP
    /// responses. Needs `tls` in [`TlsMode::Listener`]. Default off.
    pub http3: bool,
    /// The reverse proxy of `serve --config` ([`crate::routing`]): when set,
    /// its routes (host + path prefix) decide first; app routes fall back to
    /// the built-in `/echo` and `/` handlers.
    pub gateway: Option<Arc<crate::routing::Gateway>>,
    /// Let the response carry the ACK of the request (Linux: `TCP_QUICKACK` off on the
    /// listeners, inherited by every accepted socket). Without it the kernel acknowledges
    /// a new connection's first request with a bare ACK at once, one packet for nothing
    /// since the answer (101, 426, the TLS ServerHello...) follows within microseconds.
    /// When the answer takes longer the kernel sends the ACK anyway after its delayed-ACK
    /// time (40 ms): a client that splits its request head into two writes without
    /// `TCP_NODELAY` waits that long once. HAProxy's `tcp-smart-accept`, also on by
    /// default. Default on.
    pub ack_with_response: bool,
    /// Drive cleartext connections with io_uring instead of epoll (Linux;
    /// [`crate::uring`]): fewer system calls per message. Used only where it can
    /// be: a current-thread runtime (one ring per thread), a kernel that allows
    /// io_uring, no certificate (TLS listeners and RFC 2817 upgrades keep epoll);
    /// elsewhere the server logs why and uses epoll. The transparent proxy tunnel's
    /// `splice` needs a plain socket, so proxied connections copy instead. Default off.
    pub io_uring: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            limits: Limits::default(),
            deflate: Some(DeflateConfig::default()),
            shutdown_grace: Duration::from_secs(2),
            http1: Http1Settings::default(),
            http2: Http2Settings::default(),
            tls: None,
            extra_routes: Vec::new(),
            http3: false,
            gateway: None,
            ack_with_response: true,
            io_uring: false,
        }
    }
}

/// HTTP/1.1 connection settings.
#[derive(Debug, Clone)]
pub struct Http1Settings {
    /// How long an idle keep-alive connection waits for its next request
    /// before it is closed. Once a byte arrives, the head deadline
    /// (`Limits::handshake_timeout`) applies. Default 60 s.
    pub idle_timeout: Duration,
    /// Largest request body (`Content-Length`) read and discarded; larger
    /// gets 413 and the connection is closed. Default 1 MiB.
    pub max_request_body: usize,
}

impl Default for Http1Settings {
    fn default() -> Self {
        Http1Settings {
            idle_timeout: Duration::from_secs(60),
            max_request_body: 1 << 20,
        }
    }
}

/// HTTP/2 server limits, all set explicitly (see the README limits table).
#[derive(Debug, Clone)]
pub struct Http2Settings {
    /// Serve HTTP/2 at all (ALPN `h2`, cleartext prior knowledge). Default on.
    pub enabled: bool,
    /// Send SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441). Sent only when
    /// this is on *and* a route serves WebSocket. Default on.
    pub enable_connect_protocol: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS. Default 256.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE; also bounds CONTINUATION floods.
    /// Default 16 KiB, like the HTTP/1.1 head cap.
    pub max_header_list_size: u32,
    /// Streams reset by the client before we answered, kept at once (rapid
    /// reset, CVE-2023-44487); more is a GOAWAY. Default 20.
    pub max_pending_accept_reset_streams: usize,
    /// Streams we reset because of client errors before the connection gets
    /// a GOAWAY. Default 1024.
    pub max_local_error_reset_streams: usize,
    /// HTTP/2 PING interval on an idle connection. Default 30 s.
    pub keep_alive_interval: Duration,
    /// How long to wait for the PING ack before closing. Default 20 s.
    pub keep_alive_timeout: Duration,
    /// Bytes buffered per stream for sending. Default 1 MiB.
    pub max_send_buf_size: usize,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            enabled: true,
            enable_connect_protocol: true,
            max_concurrent_streams: 256,
            max_header_list_size: 16 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(20),
            max_send_buf_size: 1 << 20,
        }
    }
}

/// How the server uses its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Every listener speaks TLS from the first byte (`serve --tls`), ALPN
    /// `h2` and `http/1.1`.
    Listener,
    /// Listeners are cleartext; `Upgrade: TLS/1.3` (RFC 2817) switches a
    /// connection to TLS in place.
    Upgrade,
}

/// A certificate chain, its key, and how to use them.
#[derive(Debug)]
pub struct TlsSettings {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub mode: TlsMode,
}

impl Clone for TlsSettings {
    fn clone(&self) -> Self {
        TlsSettings {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            mode: self.mode,
        }
    }
}

/// A page served with GET and HEAD.
#[derive(Debug, Clone)]
pub struct Page {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// One path and what it serves.
#[derive(Debug, Clone)]
pub struct Route {
    /// Exact path (no query).
    pub path: String,
    /// The page, if any. A route without one requires an upgrade: requests
    /// that select none of `protocols` get 426 listing them.
    pub page: Option<Page>,
    /// Upgrade protocols this route switches to.
    pub protocols: Registry,
    /// Only served over TLS: cleartext requests get 426 with
    /// `Upgrade: TLS/1.3, HTTP/1.1` (RFC 2817).
    pub tls_only: bool,
}

impl Route {
    /// A page at `path`.
    pub fn page(path: &str, page: Page) -> Self {
        Route {
            path: path.to_owned(),
            page: Some(page),
            protocols: Registry::new(),
            tls_only: false,
        }
    }

    /// A resource that speaks only the given protocols (426 otherwise).
    pub fn upgrade_only(path: &str, protocols: Registry) -> Self {
        Route {
            path: path.to_owned(),
            page: None,
            protocols,
            tls_only: false,
        }
    }

    /// Mark as TLS-only.
    pub fn tls_only(mut self) -> Self {
        self.tls_only = true;
        self
    }

    /// Whether `protocols` holds a handler for `name` (any version).
    pub fn speaks(&self, name: &str) -> bool {
        self.protocols.speaks(name)
    }
}

/// The index page at `/`.
pub fn index_page() -> Page {
    Page {
        content_type: "text/html; charset=utf-8",
        body: crate::apps::INDEX_HTML,
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source} (is another process using the port? try --listen 127.0.0.1:0)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no address to listen on")]
    NoListener,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("HTTP/3 needs TLS listeners: turn on TLS (serve --tls) to serve HTTP/3")]
    Http3NeedsTls,
    #[error(
        "cannot serve HTTP/3 on UDP {addr}: {reason} (is another process using the UDP port?)"
    )]
    Http3 { addr: SocketAddr, reason: String },
}

/// Bound listeners, ready to run.
pub struct Server {
    listeners: Vec<TcpListener>,
    /// QUIC endpoints (HTTP/3), one per listener, same port; empty without `http3`.
    h3_endpoints: Vec<quinn::Endpoint>,
    shared: Arc<Shared>,
    handle: ServerHandle,
}

/// Controls a [`Server`] from outside while it runs (a reload): stop
/// accepting, replace the certificate.
#[derive(Clone)]
pub struct ServerHandle {
    closed: Arc<watch::Sender<bool>>,
    endpoints: Vec<quinn::Endpoint>,
    cert: Option<Arc<tls::ReloadableCert>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("closed", &*self.closed.borrow())
            .field("http3", &!self.endpoints.is_empty())
            .field("tls", &self.cert.is_some())
            .finish()
    }
}

impl ServerHandle {
    /// Stop accepting new connections: the TCP listeners are closed (new
    /// connections are refused) and the QUIC endpoints take no new
    /// connection. Open connections go on until they end (or until the
    /// server's shutdown drains them).
    pub fn stop_accepting(&self) {
        self.closed.send_replace(true);
        for e in &self.endpoints {
            e.set_server_config(None);
        }
    }

    /// Whether [`ServerHandle::stop_accepting`] was called.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// The certificate of a TLS listener (TCP and QUIC): replacing its pair
    /// changes what new handshakes get.
    pub fn certificate(&self) -> Option<&Arc<tls::ReloadableCert>> {
        self.cert.as_ref()
    }
}

/// Everything connection tasks share (read-only).
pub(crate) struct Shared {
    pub(crate) accept: Arc<AcceptConfig>,
    pub(crate) grace: Duration,
    next_id: AtomicU64,
    pub(crate) routes: Vec<Route>,
    /// Protocols available on every path (RFC 2817 TLS).
    pub(crate) conn_protocols: Registry,
    /// The TLS acceptor of TLS listeners.
    pub(crate) tls_listener: Option<TlsAcceptor>,
    pub(crate) has_certificate: bool,
    pub(crate) http1: Http1Settings,
    pub(crate) http2: Http2Settings,
    pub(crate) gateway: Option<Arc<crate::routing::Gateway>>,
    /// [`ServeConfig::io_uring`], where it applies (no certificate).
    pub(crate) io_uring: bool,
}

impl Shared {
    pub(crate) fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.path == path)
    }

    pub(crate) fn conn_info(&self, tls: bool) -> ConnInfo {
        ConnInfo {
            tls,
            has_certificate: self.has_certificate,
        }
    }
}

/// Per-connection handles: the shutdown signal and the liveness token that
/// `Server::run` waits for.
#[derive(Clone)]
pub(crate) struct ConnCtx {
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) alive: mpsc::Sender<()>,
    /// `Alt-Svc` for this listener's TCP responses when it also serves HTTP/3.
    pub(crate) alt_svc: Option<http::HeaderValue>,
}

impl Server {
    /// Bind every listen address (port 0 picks a free port).
    pub async fn bind(cfg: ServeConfig) -> Result<Server, ServeError> {
        Self::bind_now(cfg)
    }

    /// [`Server::bind`] without waiting (the sockets are bound
    /// synchronously); needs a tokio runtime context.
    pub fn bind_now(cfg: ServeConfig) -> Result<Server, ServeError> {
        if cfg.listen.is_empty() {
            return Err(ServeError::NoListener);
        }
        let accept = Arc::new(
            AcceptConfig::default()
                .limits(cfg.limits.clone())
                .handshake(
                    switchyard::proto::handshake::ServerConfig::default()
                        .deflate(cfg.deflate.clone()),
                ),
        );
        let mut conn_protocols = Registry::new();
        let mut tls_listener = None;
        let mut cert = None;
        if let Some(t) = &cfg.tls {
            match t.mode {
                TlsMode::Listener => {
                    let alpn: &[&[u8]] = if cfg.http2.enabled {
                        tls::ALPN_H2_HTTP11
                    } else {
                        &[b"http/1.1"]
                    };
                    // One replaceable pair for TCP and QUIC (reload).
                    let c = tls::ReloadableCert::new(t.certs.clone(), t.key.clone_key())?;
                    let sc = tls::server_config_reloadable(c.clone(), alpn)?;
                    tls_listener = Some(TlsAcceptor::from(sc));
                    cert = Some(c);
                }
                TlsMode::Upgrade => {
                    let sc =
                        tls::server_config(t.certs.clone(), t.key.clone_key(), &[b"http/1.1"])?;
                    let up: Arc<dyn UpgradeProtocol> =
                        Arc::new(TlsUpgrade::new(sc, cfg.limits.handshake_timeout));
                    conn_protocols.push(up);
                }
            }
        }
        let mut routes = cfg.extra_routes.clone();
        let ws: Arc<dyn UpgradeProtocol> = Arc::new(WebSocketEcho::new(accept.clone()));
        for default in [
            Route::page("/", index_page()),
            Route::page("/index.html", index_page()),
            Route::upgrade_only("/echo", Registry::new().with(ws)),
        ] {
            // An extra route on the same path replaces the default one.
            if !routes.iter().any(|r| r.path == default.path) {
                routes.push(default);
            }
        }

        // SETTINGS_ENABLE_CONNECT_PROTOCOL only where WebSocket is served.
        let mut http2 = cfg.http2;
        http2.enable_connect_protocol &= routes.iter().any(|r| r.speaks("websocket"));

        let mut listeners = Vec::with_capacity(cfg.listen.len());
        for addr in &cfg.listen {
            let bind = |addr: &SocketAddr| -> std::io::Result<TcpListener> {
                // std's bind sets SO_REUSEADDR like tokio's; non-blocking for tokio.
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                if cfg.ack_with_response {
                    if let Err(e) = delay_first_ack(&l) {
                        warn!("{addr}: TCP_QUICKACK off failed ({e}); requests get a bare ACK");
                    }
                }
                TcpListener::from_std(l)
            };
            let l = bind(addr).map_err(|source| ServeError::Bind {
                addr: *addr,
                source,
            })?;
            listeners.push(l);
        }
        let mut h3_endpoints = Vec::new();
        if cfg.http3 {
            let Some(c) = cert.as_ref().filter(|_| {
                cfg.tls
                    .as_ref()
                    .is_some_and(|t| t.mode == TlsMode::Listener)
            }) else {
                return Err(ServeError::Http3NeedsTls);
            };
            let addrs: Vec<SocketAddr> = listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect();
            h3_endpoints = crate::h3::bind(&addrs, c.clone())?;
        }
        let (closed, _) = watch::channel(false);
        let handle = ServerHandle {
            closed: Arc::new(closed),
            endpoints: h3_endpoints.clone(),
            cert,
        };
        Ok(Server {
            handle,
            listeners,
            h3_endpoints,
            shared: Arc::new(Shared {
                accept,
                grace: cfg.shutdown_grace,
                next_id: AtomicU64::new(1),
                routes,
                conn_protocols,
                has_certificate: cfg.tls.is_some(),
                tls_listener,
                http1: cfg.http1,
                http2,
                gateway: cfg.gateway,
                io_uring: cfg.io_uring && cfg.tls.is_none(),
            }),
        })
    }

    /// The addresses actually bound.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The UDP addresses serving HTTP/3 (empty without `http3`).
    pub fn http3_addrs(&self) -> Vec<SocketAddr> {
        self.h3_endpoints
            .iter()
            .filter_map(|e| e.local_addr().ok())
            .collect()
    }

    /// Whether the listeners speak TLS (`https://`, `wss://`).
    pub fn is_tls(&self) -> bool {
        self.shared.tls_listener.is_some()
    }

    /// A handle to stop accepting or replace the certificate while it runs.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serve until `shutdown` completes; then stop accepting, close every open
    /// WebSocket with 1001, wait up to the grace period for the closing
    /// handshakes, and return.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a clone of `alive`; when all are gone,
        // `done.recv()` returns None.
        let (alive, mut done) = mpsc::channel::<()>(1);
        let mut accept_tasks = Vec::new();
        let h3_ports: Vec<u16> = self
            .h3_endpoints
            .iter()
            .filter_map(|e| e.local_addr().ok().map(|a| a.port()))
            .collect();
        for listener in self.listeners {
            let shared = self.shared.clone();
            let port = listener.local_addr().ok().map(|a| a.port());
            let ctx = ConnCtx {
                stop: stop_rx.clone(),
                alive: alive.clone(),
                alt_svc: port
                    .filter(|p| h3_ports.contains(p))
                    .map(crate::h3::alt_svc_for),
            };
            let closed = self.handle.closed.subscribe();
            accept_tasks.push(tokio::spawn(accept_loop(listener, shared, ctx, closed)));
        }
        for endpoint in self.h3_endpoints {
            let ctx = ConnCtx {
                stop: stop_rx.clone(),
                alive: alive.clone(),
                alt_svc: None,
            };
            let shared = self.shared.clone();
            accept_tasks.push(tokio::spawn(crate::h3::serve(endpoint, shared, ctx)));
        }
        drop(alive);
        shutdown.await;
        info!("shutting down: closing open WebSockets with 1001");
        let _ = stop_tx.send(true);
        for t in accept_tasks {
            let _ = t.await;
        }
        // Connection tasks bound themselves by the grace period; this bound is
        // a safety net for a task stuck elsewhere (e.g. a slow HTTP client).
        let limit = self.shared.grace + Duration::from_secs(1);
        if tokio::time::timeout(limit, done.recv()).await.is_err() {
            warn!("some connections did not finish within {limit:?}; exiting anyway");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    ctx: ConnCtx,
    mut closed: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    let listener = match Acceptor::new(listener, &shared) {
        Ok(l) => l,
        Err(e) => {
            warn!(
                ?local,
                "cannot take the listener off epoll for io_uring: {e}"
            );
            return;
        }
    };
    info!(?local, io_uring = listener.is_uring(), "listening");
    let mut stop = ctx.stop.clone();
    loop {
        if *closed.borrow_and_update() {
            // Removed by a reload: dropping the listener refuses new
            // connections; the open ones go on.
            info!(?local, "no longer accepting (listener removed by a reload)");
            return;
        }
        tokio::select! {
            res = listener.accept() => match res {
                Ok((io, peer)) => {
                    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("conn", id, %peer);
                    let shared = shared.clone();
                    let ctx = ctx.clone();
                    let http = Box::pin(connection(io, shared.clone(), ctx));
                    let task = crate::http1::ConnectionTask::new(http, shared);
                    tokio::spawn(task.instrument(span));
                }
                // EMFILE and friends: log, back off briefly, keep serving.
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
            Ok(()) = closed.changed() => {}
        }
    }
}

/// A listener: tokio's, or (with [`ServeConfig::io_uring`]) one whose
/// connections go to this thread's io_uring without ever joining epoll.
enum Acceptor {
    Tokio(TcpListener),
    #[cfg(target_os = "linux")]
    Uring(tokio::io::unix::AsyncFd<std::net::TcpListener>),
}

impl Acceptor {
    fn new(listener: TcpListener, shared: &Shared) -> std::io::Result<Acceptor> {
        #[cfg(target_os = "linux")]
        if shared.io_uring {
            let current_thread = tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::CurrentThread;
            if !current_thread {
                warn!("io_uring needs a current-thread runtime (--threads 1); using epoll");
            } else if crate::uring::available() {
                let std = listener.into_std()?;
                // SAFETY: the AsyncFd owns the listener, whose descriptor stays open
                // and the same until the AsyncFd is dropped.
                return match unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        std,
                        tokio::io::Interest::READABLE,
                    )
                } {
                    Ok(fd) => Ok(Acceptor::Uring(fd)),
                    Err(e) => {
                        let (l, e) = e.into_parts();
                        warn!("io_uring listener: {e}; using epoll");
                        Ok(Acceptor::Tokio(TcpListener::from_std(l)?))
                    }
                };
            }
        }
        let _ = shared;
        Ok(Acceptor::Tokio(listener))
    }

    fn is_uring(&self) -> bool {
        !matches!(self, Acceptor::Tokio(_))
    }

    async fn accept(&self) -> std::io::Result<(ServerIo, SocketAddr)> {
        match self {
            Acceptor::Tokio(l) => l.accept().await.map(|(s, p)| (ServerIo::Plain(s), p)),
            #[cfg(target_os = "linux")]
            Acceptor::Uring(l) => {
                let (s, peer) = loop {
                    let mut ready = l.readable().await?;
                    if let Ok(r) = ready.try_io(|l| l.get_ref().accept()) {
                        break r?;
                    }
                };
                let _ = s.set_nodelay(true);
                match crate::uring::UringStream::new(s) {
                    Ok(u) => Ok((ServerIo::Uring(u), peer)),
                    Err(s) => {
                        s.set_nonblocking(true)?;
                        Ok((ServerIo::Plain(TcpStream::from_std(s)?), peer))
                    }
                }
            }
        }
    }
}

/// `TCP_QUICKACK` off on a listener ([`ServeConfig::ack_with_response`]).
#[cfg(target_os = "linux")]
fn delay_first_ack(l: &std::net::TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let off: libc::c_int = 0;
    // SAFETY: a valid socket descriptor, and a pointer to an int with its size.
    let r = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn delay_first_ack(_: &std::net::TcpListener) -> std::io::Result<()> {
    Ok(())
}

/// One accepted connection up to its switch of protocols (or its end),
/// boxed by the accept loop and run by [`crate::http1::ConnectionTask`],
/// which then runs the session in the same task after this is freed.
///
/// The TLS path is boxed again: a cleartext HTTP/1.1 connection should not
/// carry a rustls handshake inline.
async fn connection(
    io: ServerIo,
    shared: Arc<Shared>,
    ctx: ConnCtx,
) -> Option<crate::http1::Upgraded> {
    match io {
        ServerIo::Plain(stream) => {
            let _ = stream.set_nodelay(true);
            if shared.tls_listener.is_some() {
                Box::pin(tls_connection(stream, &shared, ctx)).await
            } else {
                crate::http1::serve_cleartext(ServerIo::Plain(stream), &shared, ctx).await
            }
        }
        io => crate::http1::serve_cleartext(io, &shared, ctx).await,
    }
}

async fn tls_connection(
    stream: TcpStream,
    shared: &Arc<Shared>,
    ctx: ConnCtx,
) -> Option<crate::http1::Upgraded> {
    let acceptor = shared.tls_listener.as_ref()?;
    let limit = shared.accept.limits.handshake_timeout;
    let tls = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => ServerIo::Tls(Box::new(tls)),
        Ok(Err(e)) => {
            info!("TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            info!("TLS handshake took longer than {limit:?}");
            return None;
        }
    };
    if shared.http2.enabled && tls.alpn() == Some(b"h2") {
        crate::h2::serve(tls, bytes::BytesMut::new(), shared.clone(), ctx).await;
        None
    } else {
        crate::http1::serve(tls, bytes::BytesMut::new(), shared, ctx).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn connection_task_is_small() {
        // Every connection's task, alive as long as its WebSocket (idle
        // memory per connection): the handshake part is boxed and freed at
        // the switch, so the task holds the session's box and context.
        // Measured: 88 (an async fn doing the same: 776).
        let task = std::mem::size_of::<crate::http1::ConnectionTask>();
        assert!(task <= 104, "the connection task is {task} bytes");
    }
}

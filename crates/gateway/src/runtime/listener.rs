//! One `[[listener]]`: the TCP socket (and, with `h3`, the QUIC endpoint
//! on the same port), the accept loop, and the front its connections get.
//!
//! Each accepted TCP connection gets one task and one tracing span with its
//! id. A TLS listener runs the TLS handshake first (ALPN `h2` goes to the
//! HTTP/2 front, anything else to HTTP/1.1); a cleartext listener looks at
//! the first bytes: the HTTP/2 prior-knowledge preface goes to HTTP/2 (when
//! the listener serves `h2`), anything else to HTTP/1.1.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn, Instrument};

use crate::config::{Config, Listener, RouteTarget, TlsMode};
use crate::dispatch::Dispatcher;
use crate::front::task::ConnectionTask;
use crate::front::{h1, h2, h3, ConnCtx, Front, Http2Settings, Upgraded};
use crate::io::ServerIo;
use crate::tls::{self, ReloadableCert, TlsError};
use crate::upgrade::tls::TlsUpgrade;
use crate::upgrade::{Registry, UpgradeProtocol};
use switchyard::proto::HttpVersion;

use super::certificates::Certificates;
use super::error::ServeError;

/// A bound listener, ready to run.
pub(crate) struct BoundListener {
    tcp: TcpListener,
    /// The QUIC endpoint on the same port (`h3`).
    quic: Option<quinn::Endpoint>,
    front: Arc<Front>,
    /// The acceptor of a TLS listener (`mode = "listener"`).
    tls: Option<TlsAcceptor>,
    io_uring: bool,
    handle: ListenerHandle,
}

/// Controls a running listener from outside (a reload): stop accepting,
/// replace the certificate.
#[derive(Clone)]
pub(crate) struct ListenerHandle {
    closed: Arc<watch::Sender<bool>>,
    endpoint: Option<quinn::Endpoint>,
    cert: Option<Arc<ReloadableCert>>,
}

impl ListenerHandle {
    /// Stop accepting new connections: the TCP listener is closed (new
    /// connections are refused) and the QUIC endpoint takes no new
    /// connection. Open connections go on until they end (or until the
    /// shutdown drains them).
    pub(crate) fn stop_accepting(&self) {
        self.closed.send_replace(true);
        if let Some(e) = &self.endpoint {
            e.set_server_config(None);
        }
    }

    /// The certificate of a TLS listener (TCP and QUIC): replacing its pair
    /// changes what new handshakes get.
    pub(crate) fn certificate(&self) -> Option<&Arc<ReloadableCert>> {
        self.cert.as_ref()
    }
}

impl BoundListener {
    /// Bind `listener` of `cfg` (port 0 picks a free port); needs a tokio
    /// runtime context. `certs` provides the self-signed certificate.
    pub(crate) fn bind(
        cfg: &Config,
        listener: &Listener,
        dispatcher: &Dispatcher,
        certs: &Certificates,
    ) -> Result<BoundListener, ServeError> {
        let addr = listener.address;
        let h2_enabled = listener.protocols.contains(&HttpVersion::Http2);
        let mut conn_protocols = Registry::new();
        let mut tls_acceptor = None;
        let mut cert = None;
        if let Some(t) = &listener.tls {
            let (chain, key) = certs
                .load(&t.certificate)
                .map_err(|source| ServeError::Tls { addr, source })?;
            match t.mode {
                TlsMode::Listener => {
                    let alpn: &[&[u8]] = if h2_enabled {
                        tls::ALPN_H2_HTTP11
                    } else {
                        &[b"http/1.1"]
                    };
                    // One replaceable pair for TCP and QUIC (reload).
                    let c = ReloadableCert::new(chain, key)
                        .map_err(|source| ServeError::Tls { addr, source })?;
                    let sc = tls::server_config_reloadable(c.clone(), alpn)
                        .map_err(|source| ServeError::Tls { addr, source })?;
                    tls_acceptor = Some(TlsAcceptor::from(sc));
                    cert = Some(c);
                }
                TlsMode::Upgrade => {
                    let sc = tls::server_config(chain, key, &[b"http/1.1"])
                        .map_err(|source| ServeError::Tls { addr, source })?;
                    let up: Arc<dyn UpgradeProtocol> =
                        Arc::new(TlsUpgrade::new(sc, cfg.limits.handshake_timeout));
                    conn_protocols.push(up);
                }
            }
        }
        let tcp = bind_tcp(addr, listener.ack_with_response)
            .map_err(|source| ServeError::Bind { addr, source })?;
        let bound = tcp.local_addr().unwrap_or(addr);
        let quic = match (&cert, listener.protocols.contains(&HttpVersion::Http3)) {
            (Some(c), true) => Some(bind_quic(bound, c.clone())?),
            (None, true) => return Err(ServeError::Http3NeedsTls { addr }),
            (_, false) => None,
        };
        // SETTINGS_ENABLE_CONNECT_PROTOCOL only where WebSocket is served.
        let serves_websocket = cfg.routes.iter().any(|r| {
            r.policy.upgrade_allowed("websocket")
                && match r.target() {
                    RouteTarget::Upstream(_) => true,
                    RouteTarget::App(a) => a.upgrade_tokens().contains(&"websocket"),
                }
        });
        let http2 = h2_enabled
            .then(|| Http2Settings::new(cfg.http2.enable_connect_protocol && serves_websocket));
        let alt_svc = quic.as_ref().map(|_| switchyard::h3::alt_svc(bound.port()));
        let front = Arc::new(Front {
            dispatcher: dispatcher.clone(),
            limits: cfg.limits.clone(),
            http1: cfg.http1.clone(),
            http2,
            conn_protocols,
            has_certificate: listener.tls.is_some(),
            grace: cfg.drain_timeout(),
            alt_svc,
            next_id: AtomicU64::new(1),
        });
        let (closed, _) = watch::channel(false);
        let handle = ListenerHandle {
            closed: Arc::new(closed),
            endpoint: quic.clone(),
            cert,
        };
        Ok(BoundListener {
            tcp,
            quic,
            front,
            io_uring: cfg.runtime.io_uring,
            tls: tls_acceptor,
            handle,
        })
    }

    /// The address actually bound.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr().ok()
    }

    /// The UDP address serving HTTP/3, if any.
    pub(crate) fn http3_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Whether the listener speaks TLS from the first byte.
    pub(crate) fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A handle to stop accepting or replace the certificate while it runs.
    pub(crate) fn handle(&self) -> ListenerHandle {
        self.handle.clone()
    }

    /// Serve until `stop` turns true; then stop accepting, let every open
    /// connection close (WebSockets with 1001) for up to the grace period,
    /// and return.
    pub(crate) async fn run(self, stop: watch::Receiver<bool>) {
        // Every connection task holds a clone of `alive`; when all are gone,
        // `done.recv()` returns None.
        let (alive, mut done) = mpsc::channel::<()>(1);
        let ctx = ConnCtx {
            stop: stop.clone(),
            alive,
        };
        let grace = self.front.grace;
        let mut tasks = Vec::new();
        if let Some(endpoint) = self.quic {
            tasks.push(tokio::spawn(h3::serve(
                endpoint,
                self.front.clone(),
                ctx.clone(),
            )));
        }
        let accept = Accept {
            front: self.front,
            tls: self.tls,
            io_uring: self.io_uring,
            ctx,
        };
        let closed = self.handle.closed.subscribe();
        tasks.push(tokio::spawn(accept.run(self.tcp, closed)));
        for t in tasks {
            let _ = t.await;
        }
        // Connection tasks bound themselves by the grace period; this bound is
        // a safety net for a task stuck elsewhere (e.g. a slow HTTP client).
        let limit = grace + Duration::from_secs(1);
        if tokio::time::timeout(limit, done.recv()).await.is_err() {
            warn!("some connections did not finish within {limit:?}; exiting anyway");
        }
    }
}

fn bind_tcp(addr: SocketAddr, ack_with_response: bool) -> std::io::Result<TcpListener> {
    // std's bind sets SO_REUSEADDR like tokio's; non-blocking for tokio.
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    if ack_with_response {
        if let Err(e) = delay_first_ack(&l) {
            warn!("{addr}: TCP_QUICKACK off failed ({e}); requests get a bare ACK");
        }
    }
    TcpListener::from_std(l)
}

/// The QUIC endpoint on the TCP listener's address, same IP and port, with
/// the listener's (replaceable) certificate.
fn bind_quic(addr: SocketAddr, cert: Arc<ReloadableCert>) -> Result<quinn::Endpoint, ServeError> {
    let sc = tls::server_config_reloadable(cert, &[b"h3"])
        .map_err(|source: TlsError| ServeError::Tls { addr, source })?;
    switchyard::h3::bind_endpoint(addr, &sc).map_err(|e| ServeError::Http3 {
        addr,
        reason: e.to_string(),
    })
}

/// What the accept loop hands every connection.
struct Accept {
    front: Arc<Front>,
    tls: Option<TlsAcceptor>,
    io_uring: bool,
    ctx: ConnCtx,
}

impl Accept {
    async fn run(self, listener: TcpListener, mut closed: watch::Receiver<bool>) {
        let local = listener.local_addr().ok();
        let listener = match Acceptor::new(listener, self.io_uring) {
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
        let this = Arc::new(self);
        let mut stop = this.ctx.stop.clone();
        // One future for the whole loop, not two new watch waiters per
        // accepted connection.
        let halt = async {
            tokio::select! {
                _ = stop.changed() => Halt::Stop,
                () = removed(&mut closed) => Halt::Removed,
            }
        };
        tokio::pin!(halt);
        loop {
            tokio::select! {
                biased;
                halt = &mut halt => {
                    if let Halt::Removed = halt {
                        // Removed by a reload: dropping the listener refuses
                        // new connections; the open ones go on.
                        info!(?local, "no longer accepting (listener removed by a reload)");
                    }
                    return;
                }
                res = listener.accept() => match res {
                    Ok((incoming, peer)) => {
                        let id = this.front.connection_id();
                        let span = tracing::info_span!("conn", id, %peer);
                        match incoming {
                            Incoming::Here(io) => spawn_connection(io, peer, this.clone(), span),
                            #[cfg(target_os = "linux")]
                            Incoming::Worker(stream, workers) => {
                                let this = this.clone();
                                workers.run(Box::new(move || match uring_io(stream) {
                                    Ok(io) => spawn_connection(io, peer, this, span),
                                    Err(e) => warn!(parent: &span, "cannot take the connection: {e}"),
                                }));
                            }
                        }
                    }
                    // EMFILE and friends: log, back off briefly, keep serving.
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
}

/// Why the accept loop ends.
enum Halt {
    /// The server stops.
    Stop,
    /// A reload removed the listener.
    Removed,
}

/// Resolves once `closed` is true (never if its sender is gone first).
async fn removed(closed: &mut watch::Receiver<bool>) {
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        if closed.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// The connection's task, on this thread's runtime.
fn spawn_connection(io: ServerIo, peer: SocketAddr, accept: Arc<Accept>, span: tracing::Span) {
    let front = accept.front.clone();
    let http = Box::pin(connection(io, peer, accept));
    tokio::spawn(ConnectionTask::new(http, front).instrument(span));
}

/// An accepted connection, and where its task is to run.
enum Incoming {
    /// On the accepting runtime.
    Here(ServerIo),
    /// On an io_uring worker thread (the accepting runtime has several threads).
    #[cfg(target_os = "linux")]
    Worker(
        std::net::TcpStream,
        &'static super::uring_workers::UringWorkers,
    ),
}

/// A listener: tokio's, or (with `[runtime] io_uring`) one whose connections
/// go to an io_uring without ever joining epoll: this thread's ring on a
/// current-thread runtime, else the worker threads' rings.
enum Acceptor {
    Tokio(TcpListener),
    #[cfg(target_os = "linux")]
    Uring {
        listener: tokio::io::unix::AsyncFd<std::net::TcpListener>,
        /// None: this thread's ring.
        workers: Option<&'static super::uring_workers::UringWorkers>,
    },
}

impl Acceptor {
    fn new(listener: TcpListener, io_uring: bool) -> std::io::Result<Acceptor> {
        #[cfg(target_os = "linux")]
        if io_uring {
            let handle = tokio::runtime::Handle::current();
            let workers = match handle.runtime_flavor() {
                tokio::runtime::RuntimeFlavor::CurrentThread => None,
                _ => {
                    let threads = handle.metrics().num_workers();
                    match super::uring_workers::UringWorkers::get(threads) {
                        Some(w) => Some(w),
                        None => return Ok(Acceptor::Tokio(listener)),
                    }
                }
            };
            if workers.is_some() || crate::io::uring::available() {
                let std = listener.into_std()?;
                // SAFETY: the AsyncFd owns the listener, whose descriptor stays open
                // and the same until the AsyncFd is dropped.
                return match unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        std,
                        tokio::io::Interest::READABLE,
                    )
                } {
                    Ok(listener) => Ok(Acceptor::Uring { listener, workers }),
                    Err(e) => {
                        let (l, e) = e.into_parts();
                        warn!("io_uring listener: {e}; using epoll");
                        Ok(Acceptor::Tokio(TcpListener::from_std(l)?))
                    }
                };
            }
        }
        let _ = io_uring;
        Ok(Acceptor::Tokio(listener))
    }

    fn is_uring(&self) -> bool {
        !matches!(self, Acceptor::Tokio(_))
    }

    async fn accept(&self) -> std::io::Result<(Incoming, SocketAddr)> {
        match self {
            Acceptor::Tokio(l) => l
                .accept()
                .await
                .map(|(s, p)| (Incoming::Here(ServerIo::Plain(s)), p)),
            #[cfg(target_os = "linux")]
            Acceptor::Uring { listener, workers } => {
                let (s, peer) = loop {
                    let mut ready = listener.readable().await?;
                    if let Ok(r) = ready.try_io(|l| l.get_ref().accept()) {
                        break r?;
                    }
                };
                let _ = s.set_nodelay(true);
                match workers {
                    Some(w) => Ok((Incoming::Worker(s, w), peer)),
                    None => Ok((Incoming::Here(uring_io(s)?), peer)),
                }
            }
        }
    }
}

/// An accepted socket on this thread's ring, or on epoll when the ring cannot
/// take it.
#[cfg(target_os = "linux")]
fn uring_io(s: std::net::TcpStream) -> std::io::Result<ServerIo> {
    match crate::io::uring::UringStream::new(s) {
        Ok(u) => Ok(ServerIo::Uring(u)),
        Err(s) => {
            s.set_nonblocking(true)?;
            Ok(ServerIo::Plain(TcpStream::from_std(s)?))
        }
    }
}

/// `TCP_QUICKACK` off on a listener (`ack_with_response`).
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
/// boxed by the accept loop and run by [`ConnectionTask`], which then runs
/// the session in the same task after this is freed.
///
/// The TLS path is boxed again: a cleartext HTTP/1.1 connection should not
/// carry a rustls handshake inline.
async fn connection(io: ServerIo, peer: SocketAddr, accept: Arc<Accept>) -> Option<Upgraded> {
    let ctx = accept.ctx.clone();
    if let ServerIo::Plain(stream) = &io {
        let _ = stream.set_nodelay(true);
    }
    match &accept.tls {
        Some(acceptor) => Box::pin(tls_connection(io, acceptor, peer, &accept.front, ctx)).await,
        None => h1::serve_cleartext(io, peer, &accept.front, ctx).await,
    }
}

async fn tls_connection(
    stream: ServerIo,
    acceptor: &TlsAcceptor,
    peer: SocketAddr,
    front: &Arc<Front>,
    ctx: ConnCtx,
) -> Option<Upgraded> {
    let limit = front.limits.handshake_timeout;
    let tls = match tokio::time::timeout(limit, stream.accept_tls(acceptor)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!("TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            info!("TLS handshake took longer than {limit:?}");
            return None;
        }
    };
    if front.http2.is_some() && tls.alpn() == Some(b"h2") {
        h2::serve(tls, bytes::BytesMut::new(), peer, front.clone(), ctx).await;
        None
    } else {
        let deadline = tokio::time::Instant::now() + front.limits.handshake_timeout;
        h1::serve(tls, bytes::BytesMut::new(), deadline, peer, front, ctx).await
    }
}

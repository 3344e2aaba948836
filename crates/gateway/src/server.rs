//! Listeners, the HTTP/1.1 front of every connection, routing and graceful
//! shutdown.
//!
//! Each accepted TCP connection gets one task and one tracing span with its id.
//! The request head is read by the sans-IO parser with its caps (431) and the
//! whole-head deadline (408); a malformed head gets 400. Routes:
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

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use switchyard::proto::deflate::DeflateConfig;
use switchyard::proto::{head, upgrade};
use switchyard::server::{accept_request, read_request_head, AcceptConfig};
use switchyard::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};

use crate::apps::{self, EchoEnd};

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
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            limits: Limits::default(),
            deflate: Some(DeflateConfig::default()),
            shutdown_grace: Duration::from_secs(2),
        }
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
}

/// Bound listeners, ready to run.
pub struct Server {
    listeners: Vec<TcpListener>,
    shared: Arc<Shared>,
}

struct Shared {
    accept: AcceptConfig,
    grace: Duration,
    next_id: AtomicU64,
}

impl Server {
    /// Bind every listen address (port 0 picks a free port).
    pub async fn bind(cfg: ServeConfig) -> Result<Server, ServeError> {
        if cfg.listen.is_empty() {
            return Err(ServeError::NoListener);
        }
        let mut listeners = Vec::with_capacity(cfg.listen.len());
        for addr in &cfg.listen {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: *addr,
                    source,
                })?;
            listeners.push(l);
        }
        let accept = AcceptConfig {
            limits: cfg.limits.clone(),
            handshake: switchyard::proto::handshake::ServerConfig {
                deflate: cfg.deflate.clone(),
                ..Default::default()
            },
        };
        Ok(Server {
            listeners,
            shared: Arc::new(Shared {
                accept,
                grace: cfg.shutdown_grace,
                next_id: AtomicU64::new(1),
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

    /// Serve until `shutdown` completes; then stop accepting, close every open
    /// WebSocket with 1001, wait up to the grace period for the closing
    /// handshakes, and return.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every connection task holds a clone of `alive`; when all are gone,
        // `done.recv()` returns None.
        let (alive, mut done) = mpsc::channel::<()>(1);
        let mut accept_tasks = Vec::new();
        for listener in self.listeners {
            let shared = self.shared.clone();
            let stop_rx = stop_rx.clone();
            let alive = alive.clone();
            accept_tasks.push(tokio::spawn(accept_loop(listener, shared, stop_rx, alive)));
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
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
) {
    let local = listener.local_addr().ok();
    info!(?local, "listening");
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                    let span = tracing::info_span!("conn", id, %peer);
                    let shared = shared.clone();
                    let stop = stop.clone();
                    let alive = alive.clone();
                    tokio::spawn(async move {
                        handle(stream, &shared, stop).await;
                        drop(alive);
                    }.instrument(span));
                }
                // EMFILE and friends: log, back off briefly, keep serving.
                Err(e) => {
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared, stop: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let limits = &shared.accept.limits;
    let (req, leftover) = match read_request_head(&mut stream, limits).await {
        Ok(r) => r,
        Err(e) => {
            match e.http_status() {
                Some(status) => {
                    info!(%status, "bad request head: {e}");
                    respond(&mut stream, status, &HeaderMap::new(), &format!("{e}\n")).await;
                }
                None => info!("connection ended before a request head: {e}"),
            }
            return;
        }
    };
    let path = req.uri().path();
    match path {
        "/echo" => {
            if req.method() != Method::GET {
                return method_not_allowed(&mut stream, req.method()).await;
            }
            let wants_ws = matches!(upgrade::upgrade_offer(&req), Ok(Some(ref offer))
                if offer.iter().any(|t| t.name.eq_ignore_ascii_case("websocket")));
            if !wants_ws {
                info!("GET /echo without a WebSocket upgrade: 426");
                let resp = upgrade::upgrade_required(&["websocket"]);
                respond(
                    &mut stream,
                    StatusCode::UPGRADE_REQUIRED,
                    resp.headers(),
                    "This resource speaks WebSocket only: send Upgrade: websocket and Connection: Upgrade.\n",
                )
                .await;
                return;
            }
            match accept_request(stream, &req, leftover, &shared.accept).await {
                Ok(ws) => {
                    info!(subprotocol = ?ws.subprotocol(), "upgraded to websocket on /echo");
                    match apps::echo(ws, stop, shared.grace).await {
                        EchoEnd::PeerClosed(frame) => info!(?frame, "websocket closed by peer"),
                        EchoEnd::Shutdown => info!("websocket closed with 1001 (shutdown)"),
                        EchoEnd::Failed(e) => info!("websocket failed: {e}"),
                    }
                }
                // accept_request already answered with the precise status.
                Err(e) => info!("websocket handshake refused: {e}"),
            }
        }
        "/" | "/index.html" => match *req.method() {
            Method::GET | Method::HEAD => {
                let mut h = HeaderMap::new();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                // HEAD gets the same headers; the body is not sent.
                let body = if req.method() == Method::HEAD {
                    ""
                } else {
                    apps::INDEX_HTML
                };
                respond(&mut stream, StatusCode::OK, &h, body).await;
            }
            ref m => method_not_allowed(&mut stream, m).await,
        },
        _ => {
            info!(path, "404");
            respond(
                &mut stream,
                StatusCode::NOT_FOUND,
                &HeaderMap::new(),
                "not found: try /echo or /\n",
            )
            .await;
        }
    }
}

async fn method_not_allowed(stream: &mut TcpStream, method: &Method) {
    info!(%method, "405");
    let mut h = HeaderMap::new();
    h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    respond(
        stream,
        StatusCode::METHOD_NOT_ALLOWED,
        &h,
        "method not allowed\n",
    )
    .await;
}

/// Write a complete response with `Content-Length` and `Connection: close`,
/// then close the socket without losing the response: shut down our side and
/// drain what the client is still sending (bounded in bytes and time), so the
/// kernel does not answer its late bytes with a reset that discards our answer.
async fn respond(stream: &mut TcpStream, status: StatusCode, extra: &HeaderMap, body: &str) {
    let mut resp = http::Response::new(());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (name, value) in extra {
        h.insert(name, value.clone());
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    // Keep tokens the caller put in Connection (e.g. `Upgrade` on a 426).
    let connection = match extra.get(header::CONNECTION).and_then(|v| v.to_str().ok()) {
        Some(tokens) => HeaderValue::from_str(&format!("{tokens}, close"))
            .unwrap_or(HeaderValue::from_static("close")),
        None => HeaderValue::from_static("close"),
    };
    h.insert(header::CONNECTION, connection);
    let mut bytes = Vec::with_capacity(256 + body.len());
    head::write_response_head(&resp, &mut bytes);
    bytes.extend_from_slice(body.as_bytes());
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0usize;
        while total < (64 << 10) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

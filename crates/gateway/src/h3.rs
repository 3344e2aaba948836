//! WebSocket over HTTP/3 (RFC 9220) for `switchyard serve --tls --http3`.
//!
//! Each TLS listener gets a QUIC endpoint on the same port (UDP), with the
//! same certificate and ALPN `h3`. Extended CONNECT `:protocol websocket` on
//! a route that serves WebSocket runs the same echo app as HTTP/1.1 and
//! HTTP/2 ([`crate::apps::echo`]); a known route without WebSocket gets 501,
//! an unknown path 404, other requests what `switchyard::h3` answers (404
//! for GET/HEAD, 405, 501 for other `:protocol` values).
//!
//! With `serve --config`, an extended CONNECT on a route whose target is an
//! upstream group is handed to the proxy before any of that
//! ([`crate::routing::route_h3`]): a real HTTP/1.1 upgrade upstream, 200
//! back (or the same error statuses as HTTP/2: 403, 429, 503, 502...), then
//! the tunnel between the QUIC stream and the upstream TCP connection.
//!
//! The TCP responses of those listeners carry `Alt-Svc: h3=":PORT"; ma=86400`
//! (see [`alt_svc_for`]).
//!
//! Shutdown: the stop signal starts the drain (new QUIC connections refused,
//! a GOAWAY on every connection so that clients open no new request there);
//! every HTTP/3 WebSocket is closed with 1001 by the echo app (the same
//! watch as the others); only when they are all closed (or the grace period
//! is over) is the QUIC endpoint closed with H3_NO_ERROR.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, StatusCode};
use switchyard::h3::H3Server;
use tokio::sync::watch;
use tracing::{info, Instrument};

use crate::server::{ConnCtx, ServeError, Shared};

/// The `Alt-Svc` value advertising HTTP/3 on UDP `port`.
pub fn alt_svc_for(port: u16) -> HeaderValue {
    switchyard::h3::alt_svc(port)
}

/// Bind one QUIC endpoint per TCP listener address, same IP and port, with
/// the listener's (replaceable) certificate.
pub(crate) fn bind(
    addrs: &[SocketAddr],
    cert: Arc<crate::tls::ReloadableCert>,
) -> Result<Vec<quinn::Endpoint>, ServeError> {
    let sc = crate::tls::server_config_reloadable(cert, &[b"h3"])?;
    addrs
        .iter()
        .map(|addr| {
            switchyard::h3::bind_endpoint(*addr, &sc).map_err(|e| ServeError::Http3 {
                addr: *addr,
                reason: e.to_string(),
            })
        })
        .collect()
}

/// What the route hook answers for a WebSocket request (the front's own
/// echo): with `serve --config`, the gateway's routes decide (an `echo` app
/// route is served, an `index` route gets 501, no route 404; proxied routes
/// never get here, the tunnel hook took them); without, the built-in paths.
pub(crate) fn check_route(
    shared: &Shared,
    req: &http::Request<()>,
) -> Result<(), (StatusCode, String)> {
    let path = req.uri().path();
    if let Some(gw) = &shared.gateway {
        let mut head = http::Request::new(());
        *head.uri_mut() = req.uri().clone();
        *head.headers_mut() = req.headers().clone();
        if let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            head.headers_mut().entry(http::header::HOST).or_insert(v);
        }
        return match crate::routing::Gateway::dispatch(&gw.live(), &head) {
            crate::routing::Dispatch::App(crate::config::App::Echo) => Ok(()),
            crate::routing::Dispatch::NotFound => {
                Err((StatusCode::NOT_FOUND, format!("no route for {path}\n")))
            }
            _ => Err((
                StatusCode::NOT_IMPLEMENTED,
                format!("the route of {path} does not serve WebSocket over extended CONNECT\n"),
            )),
        };
    }
    match shared.route(path) {
        None => Err((
            StatusCode::NOT_FOUND,
            "not found: try /echo\n".to_owned(),
        )),
        Some(r) if !r.speaks("websocket") => Err((
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "this server does not speak \"websocket\" over extended CONNECT on {path}; only on its WebSocket routes\n"
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Decrements the count of open HTTP/3 WebSockets when dropped.
struct Live(Arc<watch::Sender<usize>>);

impl Live {
    fn new(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Live(count)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Serve HTTP/3 on `endpoint` until the server stops (see the module docs).
pub(crate) async fn serve(endpoint: quinn::Endpoint, shared: Arc<Shared>, ctx: ConnCtx) {
    let local = endpoint.local_addr().ok();
    info!(?local, "listening (HTTP/3, UDP)");
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let route_shared = shared.clone();
    // Draining starts with the stop signal: GOAWAY on every connection, no
    // new ones; what is open is closed with 1001 below.
    let mut server = H3Server::new((*shared.accept).clone())
        .route(move |req| check_route(&route_shared, req))
        .drain_on(ctx.stop.clone());
    if let Some(gw) = shared.gateway.clone() {
        // serve --config: an extended CONNECT on a proxied route goes
        // upstream (a real HTTP/1.1 upgrade, 200 back, then the tunnel).
        let tunnel_ctx = ctx.clone();
        let tunnel_count = count_tx.clone();
        server = server.tunnel(move |req| {
            let count = tunnel_count.clone();
            crate::routing::route_h3(&gw, req, &tunnel_ctx, move || Live::new(count))
        });
    }

    let cb_ctx = ctx.clone();
    let grace = shared.grace;
    let on_websocket = move |req: http::Request<()>, ws| {
        let live = Live::new(count_tx.clone());
        let stop = cb_ctx.stop.clone();
        let alive = cb_ctx.alive.clone();
        let peer = req.extensions().get::<SocketAddr>().copied();
        let span = tracing::info_span!("h3", peer = ?peer, path = req.uri().path());
        tokio::spawn(
            async move {
                let _alive = alive;
                let _live = live;
                info!("websocket over HTTP/3 (RFC 9220)");
                crate::websocket::log_end(crate::apps::echo(ws, stop, grace).await);
            }
            .instrument(span),
        );
    };

    let mut stop = ctx.stop.clone();
    let shutdown = async move {
        if !*stop.borrow() {
            let _ = stop.changed().await;
        }
        // The echo tasks and proxied tunnels send 1001 and wait up to
        // `grace` for the replies; close the QUIC connections only after that.
        let limit = grace + Duration::from_secs(1);
        let _ = tokio::time::timeout(limit, count_rx.wait_for(|n| *n == 0)).await;
    };
    server.serve(endpoint, on_websocket, shutdown).await;
}

//! The HTTP/2 front (hyper 1), WebSocket over extended CONNECT (RFC 8441).
//!
//! Reached by ALPN `h2` on TLS listeners, or by the prior-knowledge preface
//! on cleartext ones. Every limit of [`super::Http2Settings`] is set explicitly;
//! SETTINGS_ENABLE_CONNECT_PROTOCOL is sent only when
//! `[http2] enable_connect_protocol` is on and a route serves WebSocket.
//!
//! | request                                              | answer                 |
//! |------------------------------------------------------|------------------------|
//! | CONNECT `:protocol websocket` on an echo route        | 200, then the echo app (handshake refusals: bad version 400 + `sec-websocket-version: 13`, extensions 400) |
//! | CONNECT `:protocol websocket` on a proxied route      | a real HTTP/1.1 upgrade upstream, 200, then the tunnel |
//! | CONNECT with a `:protocol` the route does not switch to | 501                  |
//! | CONNECT without `:protocol` (a proxy CONNECT)         | 405                    |
//! | GET / HEAD of a page                                 | 200                    |
//! | another request on a route that only switches        | 400 (use extended CONNECT) |
//! | a plain request on a proxied route                   | 501 (only WebSockets are proxied over HTTP/2) |
//! | a refusal of the route's policy                      | its status (403, 429, 503...) |
//! | unknown path                                         | 404                    |
//!
//! `Upgrade`, `Connection` and the other connection-specific fields make an
//! HTTP/2 request malformed; the h2 codec refuses such a stream
//! (RST_STREAM PROTOCOL_ERROR) before it reaches this service. The codec
//! also refuses a CONNECT that carries `:path` without `:protocol` (RFC
//! 9113 §8.5).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::ALLOW;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tracing::{info, Instrument};

use super::answer::{client_script, for_method, page, refusal, text, Body};
use super::context::{not_found_body, stopped, ConnCtx, Front};
use super::h1_proxy;
use super::session as front_session;
use crate::apps::echo;
use crate::config::App;
use crate::dispatch::RequestHead;
use crate::dispatch::{AppTicket, Decision, ProxyTicket};
use crate::io::{Prefixed, ServerIo};
use crate::metrics::Transport;
use crate::proxy::{self, ClientInfo, ProxiedConnect};
use crate::session::SessionBody;
use crate::tracking::Counting;
use crate::upgrade::websocket::handshake_refusal;
use switchyard::proto::HttpVersion;

/// Serve HTTP/2 on `io`; `buf` holds bytes already read (the preface).
pub(crate) async fn serve(
    io: ServerIo,
    buf: BytesMut,
    peer: SocketAddr,
    front: Arc<Front>,
    ctx: ConnCtx,
) {
    let Some(settings) = front.http2.clone() else {
        return;
    };
    let tls = io.is_tls();
    let svc_front = front.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let (front, ctx) = (svc_front.clone(), svc_ctx.clone());
        async move {
            let method = req.method().clone();
            let mut resp = match respond(req, peer, tls, &front, &ctx).await {
                Answer::Now(r) => for_method(&method, r).map(Either::Left),
                Answer::Later(rx) => match rx.await {
                    Ok(r) => r.map(|_| Body::new(Bytes::new())),
                    Err(_) => text(
                        StatusCode::BAD_GATEWAY,
                        "the proxy ended before answering\n",
                    ),
                }
                .map(Either::Left),
                // Its event stream is one more stream of the connection.
                Answer::Session(r) => for_method(&method, r.await).map(Either::Right),
            };
            if let Some(v) = front.alt_svc.clone() {
                resp.headers_mut().insert(http::header::ALT_SVC, v);
            }
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = settings
        .builder()
        .serve_connection(TokioIo::new(Prefixed::new(buf, io)), svc);
    tokio::pin!(conn);
    let mut stop = ctx.stop.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                info!("HTTP/2 connection ended: {e}");
            }
            return;
        }
        _ = stop.changed() => {}
    }
    // GOAWAY, then let open streams (WebSockets closing with 1001) finish.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(front.grace + Duration::from_secs(1), conn).await;
}

/// A response now, once the proxy has heard from the upstream, or a
/// fallback session's answer.
enum Answer {
    Now(Response<Body>),
    Later(tokio::sync::oneshot::Receiver<Response<()>>),
    Session(Pin<Box<dyn Future<Output = Response<SessionBody>> + Send>>),
}

/// The head of `req`, without its body.
fn head_of(req: &Request<Incoming>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    head
}

async fn respond(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    tls: bool,
    front: &Arc<Front>,
    ctx: &ConnCtx,
) -> Answer {
    let connect_protocol = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_owned());
    if req.method() == Method::CONNECT && connect_protocol.is_none() {
        // A classic CONNECT (authority-form, no :path): we are not a proxy.
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "this server is not a forward proxy: CONNECT is only for WebSocket, with \
             :protocol websocket (RFC 8441)\n",
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Answer::Now(r);
    }
    let head = RequestHead::multiplexed(
        head_of(&req),
        peer,
        tls,
        HttpVersion::Http2,
        connect_protocol,
    );
    let decision = front.dispatcher.decide(&head, front.connection(tls));
    let decision = front.dispatcher.confirm(decision, &head).await;
    if let Decision::Session(ticket) = decision {
        let sessions = front.dispatcher.gateway().sessions().clone();
        let client = ClientInfo { addr: peer, tls };
        let stop = ctx.stop.clone();
        return Answer::Session(Box::pin(async move {
            front_session::serve(&sessions, req, ticket, client, stop).await
        }));
    }
    Answer::Now(match decision {
        Decision::NotFound => text(StatusCode::NOT_FOUND, not_found_body(head.path())),
        Decision::Refuse(r) => refusal(&r),
        Decision::App(ticket) => app(&mut req, ticket, front, peer, ctx),
        Decision::Proxy(ticket) => {
            let Some(connect_protocol) = head.connect_protocol else {
                return Answer::Now(text(
                    StatusCode::NOT_IMPLEMENTED,
                    "only WebSockets are proxied over HTTP/2 (extended CONNECT with \
                     :protocol websocket, RFC 8441)\n",
                ));
            };
            let request = ProxiedConnect {
                head: head.request,
                connect_protocol,
                client: ClientInfo { addr: peer, tls },
                protocol: HttpVersion::Http2,
            };
            return proxy(&mut req, request, ticket, front, ctx);
        }
        Decision::SwitchConnection(_) => text(
            StatusCode::BAD_REQUEST,
            "HTTP/2 connections do not switch protocols\n",
        ),
        Decision::ClientScript => client_script(head.request.method()),
        // Answered above.
        Decision::Session(_) => text(StatusCode::INTERNAL_SERVER_ERROR, ""),
    })
}

/// A built-in app: the page, or a WebSocket on the stream.
fn app(
    req: &mut Request<Incoming>,
    ticket: AppTicket,
    front: &Front,
    peer: SocketAddr,
    ctx: &ConnCtx,
) -> Response<Body> {
    let decided = Instant::now();
    let AppTicket {
        route,
        switch,
        permit,
    } = ticket;
    let Some(app) = route.app() else {
        return text(StatusCode::NOT_FOUND, not_found_body(req.uri().path()));
    };
    let Some(accept) = app.websocket.as_ref().filter(|_| switch.is_some()) else {
        if app.app != App::Index {
            return text(StatusCode::NOT_FOUND, not_found_body(req.uri().path()));
        }
        return page(req.method());
    };
    match switchyard::h2::accept(req, accept) {
        Ok((response, upgrade)) => {
            let stop = ctx.stop.clone();
            let alive = ctx.alive.clone();
            let settings = app.settings.clone();
            front.switched(&route.label, HttpVersion::Http2, decided);
            let live = front.live_app(
                &route,
                peer,
                HttpVersion::Http2,
                Transport::WebSocket,
                permit,
            );
            tokio::spawn(
                async move {
                    let _alive = alive;
                    match upgrade.await {
                        Ok(ws) => {
                            info!(subprotocol = ?ws.subprotocol(), "websocket over HTTP/2 (RFC 8441)");
                            let counters = Some(live.counters().clone());
                            let end = echo::echo(ws, stop, settings, counters).await;
                            echo::record_end(end, Some(live));
                        }
                        Err(e) => info!("HTTP/2 stream not handed over: {e}"),
                    }
                }
                .in_current_span(),
            );
            response
        }
        Err(rej) => {
            let r = handshake_refusal(&rej);
            front
                .dispatcher
                .refused(peer, &route.label, HttpVersion::Http2, req.headers(), &r);
            refusal(&r)
        }
    }
}

/// An extended CONNECT on a proxied route: a real HTTP/1.1 upgrade upstream
/// in a task of its own; the stream's answer once the upstream has spoken.
fn proxy(
    req: &mut Request<Incoming>,
    request: ProxiedConnect,
    ticket: ProxyTicket,
    front: &Front,
    ctx: &ConnCtx,
) -> Answer {
    let ProxyTicket { route, permit } = ticket;
    let on_upgrade = hyper::upgrade::on(req);
    let (tx, rx) = tokio::sync::oneshot::channel::<Response<()>>();
    let tracked = h1_proxy::track(
        front.dispatcher.gateway().connections(),
        &route,
        request.client.addr,
        HttpVersion::Http2,
    );
    let counters = tracked.counters().clone();
    let respond = move |resp: Response<()>| async move {
        let ok = resp.status().is_success();
        let _ = tx.send(resp);
        if !ok {
            return Err(std::io::Error::other("refused"));
        }
        on_upgrade
            .await
            .map(|u| Counting::new(TokioIo::new(u), counters))
            .map_err(std::io::Error::other)
    };
    let stop = ctx.stop.clone();
    let alive = ctx.alive.clone();
    tokio::spawn(
        async move {
            let _alive = alive;
            let _tracked = tracked;
            proxy::proxy_extended_connect(request, route.proxy(), permit, respond, stopped(stop))
                .await;
        }
        .in_current_span(),
    );
    Answer::Later(rx)
}

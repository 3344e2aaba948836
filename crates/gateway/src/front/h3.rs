//! The HTTP/3 front: every request on the QUIC endpoint of a TLS listener
//! (same port, UDP, same certificate, ALPN `h3`) goes to the dispatcher.
//!
//! * An extended CONNECT (RFC 9220): an echo route gets a 200 and the same
//!   echo app as HTTP/1.1 and HTTP/2 (same handshake checks,
//!   permessage-deflate, the route's limits); a proxied route gets a real
//!   HTTP/1.1 upgrade upstream, 200 back, then the tunnel between the QUIC
//!   stream and the upstream connection.
//! * A plain request: a fallback session request is served with its body
//!   read from the stream and its answer streamed back (an event stream is
//!   one request stream among the POSTs); the index page and the browser
//!   client as on HTTP/2; a route that only switches answers the
//!   dispatcher's 400 (use extended CONNECT); a proxied route 501 (only
//!   WebSockets are proxied).
//! * A refusal gets its status and its reason as the body (403, 429, 503,
//!   404, 501...); a malformed request what `switchyard::h3` answers (a
//!   stream reset).
//!
//! Shutdown: the stop signal starts the drain (new QUIC connections refused,
//! a GOAWAY on every connection so that clients open no new request there);
//! every HTTP/3 WebSocket is closed with 1001 by the echo app or the tunnel
//! (the same watch as the others), every session's event stream ends with
//! its `close` event; only when they are all done (or the grace period is
//! over) is the QUIC endpoint closed with H3_NO_ERROR.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;
use switchyard::h3::{H3Server, H3Stream, PendingStream, RequestHandler};
use switchyard::proto::extended_connect::ExtendedConnect;
use switchyard::proto::handshake::Negotiated;
use switchyard::proto::{Connection, Role};
use switchyard::server::AcceptConfig;
use switchyard::WebSocket;
use tokio::sync::watch;
use tracing::{info, Instrument};

use super::answer::{self, client_script, for_method, page, refusal, text};
use super::context::{not_found_body, stopped, ConnCtx, Front};
use super::h1_proxy;
use super::session as front_session;
use crate::apps::echo;
use crate::config::App;
use crate::dispatch::RequestHead;
use crate::dispatch::{AppTicket, Decision, ProxyTicket, SessionTicket};
use crate::metrics::Transport;
use crate::outcome::Refusal;
use crate::proxy::{self, ClientInfo, ProxiedConnect};
use crate::tracking::Counting;
use crate::upgrade::websocket::handshake_refusal;
use switchyard::proto::HttpVersion;

/// Counts the open HTTP/3 WebSockets (echoes and tunnels) and session
/// requests, so that shutdown closes the QUIC endpoint only after their
/// closing handshakes and last events.
struct Open(Arc<watch::Sender<usize>>);

impl Open {
    fn new(count: &Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Serve HTTP/3 on `endpoint` until the server stops (see the module docs).
pub(crate) async fn serve(endpoint: quinn::Endpoint, front: Arc<Front>, ctx: ConnCtx) {
    let local = endpoint.local_addr().ok();
    info!(?local, "listening (HTTP/3, UDP)");
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let count = Arc::new(count_tx);
    let mut accept = AcceptConfig::default();
    accept.limits = front.limits.clone();
    let hook_front = front.clone();
    let hook_ctx = ctx.clone();
    // Every request is decided by the dispatcher (the request hook takes
    // them all); the server's own WebSocket handling never runs.
    let server = H3Server::new(accept)
        .drain_on(ctx.stop.clone())
        .route(|_| {
            Err((
                StatusCode::NOT_FOUND,
                "no route serves this request\n".into(),
            ))
        })
        .requests(move |req| Some(take(req, &hook_front, &hook_ctx, &count)));
    let mut stop = ctx.stop.clone();
    let grace = front.grace;
    let shutdown = async move {
        if !*stop.borrow() {
            let _ = stop.changed().await;
        }
        // The echo tasks and proxied tunnels send 1001 and wait up to
        // `grace` for the replies; close the QUIC connections only after that.
        let limit = grace + Duration::from_secs(1);
        let _ = tokio::time::timeout(limit, count_rx.wait_for(|n| *n == 0)).await;
    };
    server.serve(endpoint, |_, _| {}, shutdown).await;
}

/// The handler of one request: decided now, answered in a task of its own.
fn take(
    req: &Request<()>,
    front: &Arc<Front>,
    ctx: &ConnCtx,
    count: &Arc<watch::Sender<usize>>,
) -> RequestHandler {
    let peer = req
        .extensions()
        .get::<SocketAddr>()
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let connect_protocol = req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_owned());
    let mut head_req = Request::new(());
    *head_req.version_mut() = Version::HTTP_3;
    *head_req.method_mut() = req.method().clone();
    *head_req.uri_mut() = req.uri().clone();
    *head_req.headers_mut() = req.headers().clone();
    let head = RequestHead::multiplexed(head_req, peer, true, HttpVersion::Http3, connect_protocol);
    let decision = front.dispatcher.decide(&head, front.connection(true));
    let front = front.clone();
    let ctx = ctx.clone();
    let count = count.clone();
    let span = tracing::info_span!("h3", %peer, path = head.path());
    Box::new(move |_req: Request<()>, pending: PendingStream| {
        let task = async move {
            let _alive = ctx.alive.clone();
            match front.dispatcher.confirm(decision, &head).await {
                Decision::App(ticket) if ticket.switch.is_some() => {
                    let _open = Open::new(&count);
                    app(head, pending, ticket, &front, ctx.stop.clone()).await
                }
                Decision::Proxy(ticket) => {
                    let Some(connect_protocol) = head.connect_protocol else {
                        let resp = for_method(head.request.method(), proxy_plain());
                        return answer(pending, resp).await;
                    };
                    let _open = Open::new(&count);
                    let request = ProxiedConnect {
                        head: head.request,
                        connect_protocol,
                        client: ClientInfo {
                            addr: peer,
                            tls: true,
                        },
                        protocol: HttpVersion::Http3,
                    };
                    proxy(request, pending, ticket, &front, ctx.stop.clone()).await
                }
                Decision::Session(ticket) => {
                    let _open = Open::new(&count);
                    session(head, pending, ticket, &front, ctx.stop.clone()).await
                }
                other => {
                    let resp = for_method(head.request.method(), plain(other, &head));
                    answer(pending, resp).await
                }
            }
        };
        tokio::spawn(task.instrument(span));
    })
}

/// The answer to a decision that switches nothing.
fn plain(decision: Decision, head: &RequestHead) -> Response<answer::Body> {
    let method = head.request.method();
    match decision {
        Decision::Refuse(r) => refusal(&r),
        Decision::ClientScript => client_script(method),
        Decision::App(ticket) if ticket.route.app().is_some_and(|a| a.app == App::Index) => {
            page(method)
        }
        Decision::SwitchConnection(_) => text(
            StatusCode::BAD_REQUEST,
            "HTTP/3 connections do not switch protocols\n",
        ),
        // Not found, or an app without a page.
        _ => text(StatusCode::NOT_FOUND, not_found_body(head.path())),
    }
}

/// A plain request on a proxied route.
fn proxy_plain() -> Response<answer::Body> {
    text(
        StatusCode::NOT_IMPLEMENTED,
        "only WebSockets are proxied over HTTP/3 (extended CONNECT with :protocol \
         websocket, RFC 9220)\n",
    )
}

/// Send a whole answer on the request stream.
async fn answer(pending: PendingStream, response: Response<Full<Bytes>>) {
    let (_body, responder) = pending.into_exchange();
    if let Err(e) = responder.send(response).await {
        info!("HTTP/3 answer not sent: {e}");
    }
}

/// A fallback session request: its body read from the stream, its answer
/// (an event stream, a held poll) streamed back.
async fn session(
    head: RequestHead,
    pending: PendingStream,
    ticket: SessionTicket,
    front: &Front,
    stop: watch::Receiver<bool>,
) {
    let (body, responder) = pending.into_exchange();
    let (parts, ()) = head.request.into_parts();
    let method = parts.method.clone();
    let client = ClientInfo {
        addr: head.peer,
        tls: true,
    };
    let sessions = front.dispatcher.gateway().sessions();
    let response = front_session::serve(
        sessions,
        Request::from_parts(parts, body),
        ticket,
        client,
        stop,
    )
    .await;
    if let Err(e) = responder.send(for_method(&method, response)).await {
        info!("HTTP/3 session answer ended early: {e}");
    }
}

/// The WebSocket checks of an extended CONNECT (RFC 9220 uses RFC 8441's)
/// with the route's handshake settings: the 200 to send and the connection
/// for what was agreed.
fn accept_websocket(
    head: &RequestHead,
    accept: &AcceptConfig,
) -> Result<(Response<()>, Connection, Negotiated), Refusal> {
    let negotiation =
        ExtendedConnect::from_request(&head.request, head.connect_protocol.as_deref())
            .accept_websocket(&accept.handshake)
            .map_err(|rej| handshake_refusal(&rej))?;
    let conn = Connection::negotiated(
        Role::Server,
        accept.limits.clone(),
        &negotiation.negotiated,
        accept.handshake.deflate.as_ref(),
    );
    let mut response = Response::new(());
    *response.headers_mut() = negotiation.headers;
    Ok((response, conn, negotiation.negotiated))
}

/// The echo on an HTTP/3 stream.
async fn app(
    head: RequestHead,
    pending: PendingStream,
    ticket: AppTicket,
    front: &Front,
    stop: watch::Receiver<bool>,
) {
    let decided = Instant::now();
    let AppTicket { route, permit, .. } = ticket;
    let Some((app, accept)) = route
        .app()
        .and_then(|a| a.websocket.as_ref().map(|w| (a, w)))
    else {
        let why = "this app does not speak WebSocket\n";
        return answer(pending, text(StatusCode::NOT_IMPLEMENTED, why)).await;
    };
    let (response, conn, negotiated) = match accept_websocket(&head, accept) {
        Ok(a) => a,
        Err(r) => {
            front.dispatcher.refused(
                head.peer,
                &route.label,
                HttpVersion::Http3,
                head.request.headers(),
                &r,
            );
            return answer(pending, refusal(&r)).await;
        }
    };
    let stream: H3Stream = match pending.respond(response).await {
        Ok(s) => s,
        Err(e) => return info!("HTTP/3 stream not handed over: {e}"),
    };
    front.switched(&route.label, HttpVersion::Http3, decided);
    let ws = WebSocket::from_raw(stream, conn, &[]).with_negotiated(negotiated);
    let live = front.live_app(
        &route,
        head.peer,
        HttpVersion::Http3,
        Transport::WebSocket,
        permit,
    );
    info!("websocket over HTTP/3 (RFC 9220)");
    let counters = Some(live.counters().clone());
    let end = echo::echo(ws, stop, app.settings.clone(), counters).await;
    echo::record_end(end, Some(live));
}

/// A proxied extended CONNECT on an HTTP/3 stream.
async fn proxy(
    request: ProxiedConnect,
    pending: PendingStream,
    ticket: ProxyTicket,
    front: &Front,
    stop: watch::Receiver<bool>,
) {
    let ProxyTicket { route, permit } = ticket;
    let tracked = h1_proxy::track(
        front.dispatcher.gateway().connections(),
        &route,
        request.client.addr,
        HttpVersion::Http3,
    );
    let counters = tracked.counters().clone();
    let respond = move |resp: Response<()>| async move {
        pending
            .respond(resp)
            .await
            .map(|s| Counting::new(s, counters))
    };
    proxy::proxy_extended_connect(request, route.proxy(), permit, respond, stopped(stop)).await;
}

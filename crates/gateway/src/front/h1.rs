//! The HTTP/1.1 front: keep-alive, pipelining, request bodies, and the
//! Upgrade switch (RFC 9110 §7.8).
//!
//! Per request: read the head (caps: 431, deadline: 408, malformed: 400),
//! read and discard the body, `Content-Length` or chunked (over the limit:
//! 413; malformed chunked framing: 400), ask the dispatcher, then carry the
//! decision out: a `101` and the protocol's session, the app's page, the
//! proxy, a refusal, or 404. Bytes read past a head stay buffered for the
//! next request or for the new protocol. `Connection: close`, HTTP/1.0
//! without `keep-alive`, errors that leave the stream unusable and server
//! shutdown close the connection after the response; an idle connection is
//! closed after `[http1] idle_timeout`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Version};
use switchyard::proto::{head, HttpVersion};
use switchyard::server::read_request_head_buffered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use super::context::{not_found_body, ConnCtx, Front, Upgraded};
use super::h1_body::read_body;
use super::h1_body::{
    body_length, discard_body, expects_continue, wants_keep_alive, BodyCaps, BodyError, BodyLen,
};
use super::h1_proxy;
use super::h1_stream::{write_streamed, Streamed};
use super::session as front_session;
use crate::apps::index::{self, PageAnswer};
use crate::dispatch::RequestHead;
use crate::dispatch::{AppTicket, Decision, Selection, SessionTicket};
use crate::io::{Prefixed, ServerIo};
use crate::metrics::Transport;
use crate::outcome::Refusal;
use crate::proxy::ClientInfo;
use crate::session;
use crate::tracking::LiveApp;
use crate::upgrade::SessionCtx;
use http_body_util::Full;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type Conn = Prefixed<ServerIo>;

/// A cleartext connection: HTTP/2 with prior knowledge if it starts with
/// the preface (and the listener serves HTTP/2), HTTP/1.1 otherwise.
pub(crate) async fn serve_cleartext(
    io: ServerIo,
    peer: SocketAddr,
    front: &Arc<Front>,
    ctx: ConnCtx,
) -> Option<Upgraded> {
    // One deadline from the first byte awaited to the end of the first
    // head, for the preface check and the head alike: one timer, not two.
    let limit = front.limits.handshake_timeout;
    let deadline = tokio::time::Instant::now() + limit;
    if front.http2.is_none() {
        return serve(io, BytesMut::new(), deadline, peer, front, ctx).await;
    }
    let mut conn = Prefixed::new(BytesMut::with_capacity(4096), io);
    while conn.prefix().len() < H2_PREFACE.len() && H2_PREFACE.starts_with(conn.prefix()) {
        match tokio::time::timeout_at(deadline, conn.fill()).await {
            Err(_) => {
                let msg = format!(
                    "the request head did not arrive within {limit:?}; send the whole head at once\n"
                );
                respond_close(
                    &mut conn,
                    StatusCode::REQUEST_TIMEOUT,
                    &HeaderMap::new(),
                    &msg,
                )
                .await;
                return None;
            }
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => {}
        }
    }
    let (buf, io) = conn.into_parts();
    if buf.starts_with(H2_PREFACE) {
        debug!("HTTP/2 prior knowledge");
        // Boxed: the HTTP/2 server is large and must not sit in every
        // HTTP/1.1 connection's future (idle memory per connection).
        Box::pin(super::h2::serve(io, buf, peer, front.clone(), ctx)).await;
        None
    } else {
        serve(io, buf, deadline, peer, front, ctx).await
    }
}

/// Serve HTTP/1.1 requests on `io` until the connection ends or switches
/// protocols; `buf` holds bytes already read from it, and the first request
/// head must be complete by `deadline`.
///
/// A switch returns the session instead of running it: the connection's
/// task ([`super::task::ConnectionTask`]) runs it after dropping this
/// future, so the HTTP/1.1 state (KiBs: head parsing, routing, responses)
/// is freed at the switch instead of living as long as the session (idle
/// memory per WebSocket), without a second task per connection (handshake
/// rate).
pub(crate) async fn serve(
    io: ServerIo,
    buf: BytesMut,
    deadline: tokio::time::Instant,
    peer: SocketAddr,
    front: &Arc<Front>,
    ctx: ConnCtx,
) -> Option<Upgraded> {
    let mut upgraded = None;
    let conn = Prefixed::new(buf, io);
    serve_loop(conn, None, Some(deadline), peer, front, ctx, &mut upgraded).await;
    upgraded
}

/// [`serve`] on a connection that already carried requests, first
/// answering `pending` if there is one (after an RFC 2817 switch to TLS).
pub(crate) async fn serve_from(
    conn: Conn,
    pending: Option<Request<()>>,
    peer: SocketAddr,
    front: &Arc<Front>,
    ctx: ConnCtx,
) -> Option<Upgraded> {
    let mut upgraded = None;
    serve_loop(conn, pending, None, peer, front, ctx, &mut upgraded).await;
    upgraded
}

/// What the loop does after one request.
enum Next {
    /// Read the next request.
    KeepGoing,
    /// The connection is finished (or handed over).
    Stop,
}

/// [`serve`]'s and [`serve_from`]'s loop: `pending` is answered first;
/// `fresh` is the deadline of a new connection's first head, which is read
/// without waiting for the connection to be idle first. A switch leaves its
/// session in `upgraded`.
async fn serve_loop(
    mut conn: Conn,
    mut pending: Option<Request<()>>,
    mut fresh: Option<tokio::time::Instant>,
    peer: SocketAddr,
    front: &Arc<Front>,
    mut ctx: ConnCtx,
    upgraded: &mut Option<Upgraded>,
) {
    let limits = &front.limits;
    loop {
        let (req, body_read) = match pending.take() {
            Some(r) => (r, true),
            None => {
                let fresh = fresh.take();
                if fresh.is_none() && conn.prefix().is_empty() {
                    tokio::select! {
                        r = tokio::time::timeout(front.http1.idle_timeout, conn.fill()) => match r {
                            Err(_) => {
                                debug!("idle keep-alive connection closed");
                                return close_gracefully(&mut conn).await;
                            }
                            Ok(Ok(0)) | Ok(Err(_)) => return,
                            Ok(Ok(_)) => {}
                        },
                        _ = ctx.stop.changed() => return close_gracefully(&mut conn).await,
                    }
                }
                let deadline =
                    fresh.unwrap_or_else(|| tokio::time::Instant::now() + limits.handshake_timeout);
                // Parsed in the connection's buffer: the bytes after the head
                // stay there for the next request or the new protocol.
                let (buf, io) = conn.parts_mut();
                match read_request_head_buffered(io, buf, limits, deadline).await {
                    Ok(req) => (req, false),
                    Err(e) => {
                        match e.http_status() {
                            Some(status) => {
                                info!(%status, "bad request head: {e}");
                                respond_close(
                                    &mut conn,
                                    status,
                                    &HeaderMap::new(),
                                    &format!("{e}\n"),
                                )
                                .await;
                            }
                            None => debug!("connection ended before a request head: {e}"),
                        }
                        return;
                    }
                }
            }
        };
        let keep_alive = wants_keep_alive(&req);
        let tls = conn.get_ref().is_tls();
        let head = RequestHead::h1(req, peer, tls);
        let decision = front.dispatcher.decide(&head, front.connection(tls));
        let decision = front.dispatcher.confirm(decision, &head).await;
        let req = head.request;
        // A session request's body is its message (`None`: over the route's
        // limit, left unread); any other body is discarded.
        let mut session_body = Some(Bytes::new());
        if !body_read {
            // A session request's body is bounded by its route's
            // `fallback_max_body` alone (`session_read`), whatever
            // `max_request_body` says of bodies that are discarded.
            let max_body = match &decision {
                Decision::Session(_) => usize::MAX,
                _ => front.http1.max_request_body,
            };
            match body_length(&req, max_body) {
                Ok(BodyLen::Length(0)) => {}
                Ok(body) => {
                    // RFC 9110 §10.1.1: the client waits for this before sending the body.
                    if expects_continue(&req) && conn.prefix().is_empty() {
                        if conn
                            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                        let _ = conn.flush().await;
                    }
                    let caps = BodyCaps {
                        max_body: front.http1.max_request_body as u64,
                        max_trailer: limits.max_head_bytes,
                        deadline: limits.handshake_timeout,
                    };
                    let read = match (&decision, body) {
                        (Decision::Session(t), BodyLen::Length(n)) => {
                            match session_read(&mut conn, t, n, caps.deadline).await {
                                Ok(b) => {
                                    session_body = b;
                                    Ok(())
                                }
                                Err(e) => Err(BodyError::Io(e)),
                            }
                        }
                        (Decision::Session(_), BodyLen::Chunked) => Err(BodyError::Refused(
                            StatusCode::LENGTH_REQUIRED,
                            "send fallback session requests with a Content-Length".into(),
                        )),
                        _ => discard_body(&mut conn, body, caps).await,
                    };
                    match read {
                        Ok(()) => {}
                        Err(BodyError::Io(e)) => {
                            return info!("request body not received: {e}");
                        }
                        Err(BodyError::Refused(status, why)) => {
                            info!(%status, "request body refused: {why}");
                            let msg = format!("{why}\n");
                            return respond_close(&mut conn, status, &HeaderMap::new(), &msg).await;
                        }
                    }
                }
                Err((status, msg)) => {
                    info!(%status, "{msg}");
                    return respond_close(&mut conn, status, &HeaderMap::new(), msg).await;
                }
            }
        }

        let answer = match decision {
            Decision::NotFound if req.method() == Method::OPTIONS && req.uri() == "*" => {
                Answer::text(StatusCode::OK, "").with(ALLOW, "GET, HEAD, OPTIONS")
            }
            Decision::NotFound => {
                debug!(path = req.uri().path(), "404");
                Answer::text(StatusCode::NOT_FOUND, not_found_body(req.uri().path()))
            }
            Decision::Refuse(r) if r.status == StatusCode::BAD_REQUEST => {
                return respond_refusal(&mut conn, &r).await;
            }
            Decision::Refuse(r) => Answer::refusal(&r),
            Decision::App(AppTicket {
                switch: None,
                route,
                ..
            }) => match route.app().map(|a| a.app) {
                Some(crate::config::App::Index) => page(&req),
                _ => Answer::text(StatusCode::NOT_FOUND, not_found_body(req.uri().path())),
            },
            Decision::App(AppTicket {
                switch: Some(selection),
                permit,
                route,
            }) => {
                let decided = Instant::now();
                let transport = Transport::of_token(&selection.token.name);
                let live = front.live_app(&route, peer, HttpVersion::Http1, transport, permit);
                let attempt = Attempt {
                    peer,
                    route: &route.label,
                    tls,
                    decided,
                };
                let Some(u) = switch(conn, &req, selection, Some(live), front, ctx, attempt).await
                else {
                    return;
                };
                *upgraded = Some(u);
                return;
            }
            Decision::SwitchConnection(selection) => {
                let attempt = Attempt {
                    peer,
                    route: crate::metrics::NO_ROUTE,
                    tls,
                    decided: Instant::now(),
                };
                let Some(u) = switch(conn, &req, selection, None, front, ctx, attempt).await else {
                    return;
                };
                *upgraded = Some(u);
                return;
            }
            Decision::ClientScript => Answer {
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                content_type: session::CLIENT_JS_TYPE,
                body: Cow::Borrowed(session::CLIENT_JS),
            },
            Decision::Session(ticket) => {
                // A body over the route's limit was not read: the answer is
                // 413 and the connection closes.
                let (body, keep) = match session_body.take() {
                    Some(b) => (b, keep_alive),
                    None => (Bytes::new(), false),
                };
                let client = ClientInfo { addr: peer, tls };
                let sessions = front.dispatcher.gateway().sessions();
                let req = req.map(|()| Full::new(body));
                let version = req.version();
                let resp = front_session::serve(sessions, req, ticket, client, ctx.stop.clone());
                let resp = resp.await;
                let keep = keep && !*ctx.stop.borrow();
                let alt_svc = front.alt_svc.as_ref();
                match write_streamed(&mut conn, resp, alt_svc, version, keep).await {
                    Streamed::Complete => continue,
                    Streamed::Close => return close_gracefully(&mut conn).await,
                }
            }
            Decision::Proxy(ticket) => {
                // Boxed: the proxy's future is large and must not sit in every
                // connection's future (idle memory per connection).
                let conns = front.dispatcher.gateway().connections();
                Box::pin(h1_proxy::proxy(conn, req, peer, ticket, &ctx, conns)).await;
                return;
            }
        };
        match write(&mut conn, &answer, &req, keep_alive, front, &ctx).await {
            Next::KeepGoing => {}
            Next::Stop => return,
        }
    }
}

/// Who asks to switch, where: for the failures ring when the handler
/// refuses.
struct Attempt<'a> {
    peer: SocketAddr,
    route: &'a str,
    tls: bool,
    /// When the dispatcher decided: the start of the handshake's duration.
    decided: Instant,
}

/// The body of a session request: read when within the route's
/// `fallback_max_body`, `None` when over it (not read: the session side
/// answers 413 from the declared length).
async fn session_read(
    conn: &mut Conn,
    ticket: &SessionTicket,
    n: u64,
    deadline: Duration,
) -> std::io::Result<Option<Bytes>> {
    if n > ticket.route.config.policy.fallback_max_body as u64 {
        return Ok(None);
    }
    read_body(conn, n, deadline).await.map(Some)
}

/// Switch protocols: the handler's checks, the `101`, then the session
/// (returned for the connection's task to run; `None` when the switch was
/// refused or the connection failed). `live` lives as long as the session
/// (the route's connection slot).
async fn switch(
    mut conn: Conn,
    req: &Request<()>,
    selection: Selection,
    live: Option<Box<LiveApp>>,
    front: &Front,
    ctx: ConnCtx,
    attempt: Attempt<'_>,
) -> Option<Upgraded> {
    let tls = attempt.tls;
    let Selection { handler, token } = selection;
    if !handler.accepts_early_data() && !conn.prefix().is_empty() {
        info!(%token, "bytes pipelined after an upgrade request that forbids them: refused");
        let msg = format!(
            "bytes were sent after the request to switch to {token}, before the switch; \
             they are never served: wait for the 101 before sending anything\n"
        );
        respond_close(&mut conn, StatusCode::BAD_REQUEST, &HeaderMap::new(), &msg).await;
        return None;
    }
    let info = front.connection(tls).info;
    let accepted = match handler.prepare(req, &token, &info) {
        Ok(a) => a,
        Err(refusal) => {
            front.dispatcher.refused(
                attempt.peer,
                attempt.route,
                HttpVersion::Http1,
                req.headers(),
                &refusal,
            );
            respond_refusal(&mut conn, &refusal).await;
            return None;
        }
    };
    let mut out = Vec::with_capacity(256);
    head::write_response_head(&accepted.response, &mut out);
    if conn.write_all(&out).await.is_err() || conn.flush().await.is_err() {
        return None;
    }
    front.switched(attempt.route, HttpVersion::Http1, attempt.decided);
    info!(%token, path = req.uri().path(), "switching protocols");
    // Nothing of the request, the response head or this loop is needed
    // while the session runs, which may be for days: the connection's task
    // runs it after this future is dropped.
    let (leftover, io) = conn.into_parts();
    let sctx = SessionCtx {
        shutdown: ctx.stop.clone(),
        live,
    };
    let session = accepted.session.run(io, leftover, sctx);
    Some(Upgraded { session, ctx })
}

/// The index page (or its 405).
fn page(req: &Request<()>) -> Answer {
    match PageAnswer::for_method(req.method()) {
        PageAnswer::Page => Answer {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            content_type: index::CONTENT_TYPE,
            body: Cow::Borrowed(index::INDEX_HTML),
        },
        PageAnswer::MethodNotAllowed => {
            info!(method = %req.method(), "405");
            Answer::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
                .with(ALLOW, "GET, HEAD")
        }
    }
}

/// Write `answer` to `req`; keep the connection when the client wants it
/// and the server is not stopping.
async fn write(
    conn: &mut Conn,
    answer: &Answer,
    req: &Request<()>,
    keep_alive: bool,
    front: &Front,
    ctx: &ConnCtx,
) -> Next {
    // Every answer here is a complete, well-framed response: keep going.
    let keep = keep_alive && !*ctx.stop.borrow();
    let mut out = Vec::with_capacity(256 + answer.body.len());
    write_answer(
        &mut out,
        answer,
        front.alt_svc.as_ref(),
        req.method() == Method::HEAD,
        keep,
        req.version(),
    );
    if conn.write_all(&out).await.is_err() || conn.flush().await.is_err() {
        return Next::Stop;
    }
    debug!(status = %answer.status, path = req.uri().path(), "answered");
    if !keep {
        close_gracefully(conn).await;
        return Next::Stop;
    }
    Next::KeepGoing
}

/// A complete response without an upgrade.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    content_type: &'static str,
    body: Cow<'static, str>,
}

impl Answer {
    fn text(status: StatusCode, body: impl Into<Cow<'static, str>>) -> Self {
        Answer {
            status,
            headers: HeaderMap::new(),
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn with(mut self, name: http::HeaderName, value: &'static str) -> Self {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }

    /// A refusal answered on a connection that goes on.
    fn refusal(r: &Refusal) -> Self {
        Answer {
            status: r.status,
            headers: r.headers(),
            content_type: "text/plain; charset=utf-8",
            body: Cow::Owned(format!("{}\n", r.detail)),
        }
    }
}

/// Serialize `a` into `out`. The `Connection` header says `close` or, for
/// HTTP/1.0, `keep-alive`; tokens the answer already has (`Upgrade`) stay.
fn write_answer(
    out: &mut Vec<u8>,
    a: &Answer,
    alt_svc: Option<&HeaderValue>,
    head_only: bool,
    keep: bool,
    version: Version,
) {
    let mut headers = a.headers.clone();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(a.body.len()));
    if let Some(v) = alt_svc {
        headers.insert(http::header::ALT_SVC, v.clone());
    }
    let extra = match (keep, version) {
        (false, _) => Some("close"),
        (true, Version::HTTP_10) => Some("keep-alive"),
        (true, _) => None,
    };
    if let Some(extra) = extra {
        let value = match headers.get(CONNECTION).and_then(|v| v.to_str().ok()) {
            Some(c) => format!("{c}, {extra}"),
            None => extra.to_owned(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(CONNECTION, v);
        }
    }
    let mut resp = http::Response::new(());
    *resp.status_mut() = a.status;
    *resp.headers_mut() = headers;
    head::write_response_head(&resp, out);
    if !head_only {
        out.extend_from_slice(a.body.as_bytes());
    }
}

/// Write a refusal with `Connection: close`, then close.
async fn respond_refusal(conn: &mut Conn, r: &Refusal) {
    let _ = conn.write_all(&r.to_bytes()).await;
    close_gracefully(conn).await;
}

/// Write a complete response with `Connection: close`, then close.
async fn respond_close(conn: &mut Conn, status: StatusCode, extra: &HeaderMap, body: &str) {
    let bytes = head::simple_response(status, extra, body);
    let _ = conn.write_all(&bytes).await;
    close_gracefully(conn).await;
}

/// Close without losing the response: shut down our side and drain what the
/// client is still sending (bounded in bytes and time), so the kernel does
/// not answer its late bytes with a reset that discards our answer.
async fn close_gracefully(conn: &mut Conn) {
    let _ = conn.flush().await;
    let _ = conn.shutdown().await;
    let drain = async {
        // On the heap: an array here would sit in every connection's future
        // (idle memory per connection), though it is needed only at the end.
        let mut buf = vec![0u8; 4096];
        let mut total = 0usize;
        while total < (64 << 10) {
            match conn.get_mut().read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_answers_have_the_get_length_and_no_body() {
        let a = Answer::text(StatusCode::OK, "hello");
        let mut get = Vec::new();
        write_answer(&mut get, &a, None, false, true, Version::HTTP_11);
        let mut head = Vec::new();
        write_answer(&mut head, &a, None, true, true, Version::HTTP_11);
        let get = String::from_utf8(get).unwrap();
        let head = String::from_utf8(head).unwrap();
        assert!(get.ends_with("\r\n\r\nhello"), "{get}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert!(head.contains("content-length: 5\r\n"), "{head}");
        assert_eq!(get.strip_suffix("hello"), Some(head.as_str()));
    }

    #[test]
    fn connection_header_combines_upgrade_and_close() {
        let a = Answer::text(StatusCode::UPGRADE_REQUIRED, "")
            .with(http::header::UPGRADE, "websocket")
            .with(CONNECTION, "Upgrade");
        let mut out = Vec::new();
        write_answer(&mut out, &a, None, false, false, Version::HTTP_11);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("\r\nconnection: Upgrade, close\r\n"), "{s}");
        let mut out = Vec::new();
        write_answer(
            &mut out,
            &Answer::text(StatusCode::OK, ""),
            None,
            false,
            true,
            Version::HTTP_10,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("\r\nconnection: keep-alive\r\n"), "{s}");
    }
}

//! The HTTP/1.1 connection loop: keep-alive, pipelining, request bodies, and
//! the generic Upgrade dispatch of [`crate::registry`].
//!
//! Per request: read the head (caps: 431, deadline: 408, malformed: 400),
//! read and discard the body, `Content-Length` or chunked (over the limit:
//! 413; malformed chunked framing: 400), choose an Upgrade protocol (the first of
//! the client's tokens that the route or the connection supports), else
//! answer the route. Bytes read past a head stay buffered for the next
//! request or for the new protocol. `Connection: close`, HTTP/1.0 without
//! `keep-alive`, every error status and server shutdown close the connection
//! after the response; an idle connection is closed after
//! [`crate::server::Http1Settings::idle_timeout`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, StatusCode, Version};
use switchyard::proto::chunked::{ChunkedDecoder, ChunkedError};
use switchyard::proto::head;
use switchyard::proto::upgrade::connection_has;
use switchyard::server::read_request_head;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use crate::io::{Prefixed, ServerIo};
use crate::registry::{select, BoxFuture, Registry, Selection, SessionCtx, SessionEnd};
use crate::server::{ConnCtx, Route, Shared};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type Conn = Prefixed<ServerIo>;

/// A connection that switched protocols: the session to run in the
/// connection's task, and the context it holds (the liveness token).
pub(crate) struct Upgraded {
    session: BoxFuture<SessionEnd>,
    ctx: ConnCtx,
}

/// A cleartext connection: HTTP/2 with prior knowledge if it starts with
/// the preface, HTTP/1.1 otherwise.
pub(crate) async fn serve_cleartext(
    io: ServerIo,
    shared: &Arc<Shared>,
    ctx: ConnCtx,
) -> Option<Upgraded> {
    if !shared.http2.enabled {
        return serve(io, BytesMut::new(), shared, ctx).await;
    }
    let mut conn = Prefixed::new(BytesMut::with_capacity(4096), io);
    let limit = shared.accept.limits.handshake_timeout;
    let deadline = tokio::time::Instant::now() + limit;
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
        // Boxed: see server::connection (idle memory of HTTP/1.1 connections).
        Box::pin(crate::h2::serve(io, buf, shared.clone(), ctx)).await;
        None
    } else {
        serve(io, buf, shared, ctx).await
    }
}

/// Serve HTTP/1.1 requests on `io` until the connection ends or switches
/// protocols; `buf` holds bytes already read from it.
///
/// A switch returns the session instead of running it: [`ConnectionTask`]
/// runs it after dropping this future, so the HTTP/1.1 state
/// (KiBs: head parsing, routing, responses) is freed at the switch instead
/// of living as long as the session (idle memory per WebSocket), without a
/// second task per connection (handshake rate).
pub(crate) async fn serve(
    io: ServerIo,
    buf: BytesMut,
    shared: &Arc<Shared>,
    ctx: ConnCtx,
) -> Option<Upgraded> {
    serve_from(Prefixed::new(buf, io), None, true, shared, ctx).await
}

/// The future of one connection's task: first the boxed handshake part
/// (TLS, HTTP/2, the HTTP/1.1 loop: KiBs), then, once that switched
/// protocols and was freed, the session in the same task, and so on if the
/// session hands the connection back to HTTP/1.1 (RFC 2817).
///
/// Written by hand: an `async fn` doing the same keeps argument and
/// match slots alive across its awaits (776 bytes measured) where this is
/// the session's box and context (idle memory per WebSocket); and one task
/// per connection instead of a second one spawned at the switch (handshake
/// rate).
pub(crate) struct ConnectionTask {
    shared: Arc<Shared>,
    state: TaskState,
}

type HttpPart = Pin<Box<dyn Future<Output = Option<Upgraded>> + Send>>;

enum TaskState {
    Http(HttpPart),
    Session(Upgraded),
    Done,
}

impl ConnectionTask {
    pub(crate) fn new(http: HttpPart, shared: Arc<Shared>) -> Self {
        ConnectionTask {
            shared,
            state: TaskState::Http(http),
        }
    }
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            match &mut this.state {
                TaskState::Http(http) => match http.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(upgraded)) => this.state = TaskState::Session(upgraded),
                    Poll::Ready(None) => this.state = TaskState::Done,
                },
                TaskState::Session(upgraded) => {
                    let Poll::Ready(end) = upgraded.session.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    let TaskState::Session(Upgraded { ctx, .. }) =
                        std::mem::replace(&mut this.state, TaskState::Done)
                    else {
                        return Poll::Ready(());
                    };
                    if let SessionEnd::ContinueHttp { io, pending } = end {
                        this.state =
                            TaskState::Http(serve_boxed(io, pending, this.shared.clone(), ctx));
                    }
                }
                TaskState::Done => return Poll::Ready(()),
            }
        }
    }
}

/// The HTTP/1.1 loop after an RFC 2817 switch, boxed with an explicit
/// `Send` type, for [`ConnectionTask`].
fn serve_boxed(
    io: ServerIo,
    pending: Option<Request<()>>,
    shared: Arc<Shared>,
    ctx: ConnCtx,
) -> HttpPart {
    Box::pin(async move {
        let conn = Prefixed::new(BytesMut::new(), io);
        serve_from(conn, pending, false, &shared, ctx).await
    })
}

async fn serve_from(
    conn: Conn,
    pending: Option<Request<()>>,
    first: bool,
    shared: &Arc<Shared>,
    ctx: ConnCtx,
) -> Option<Upgraded> {
    let mut upgraded = None;
    serve_loop(conn, pending, first, shared, ctx, &mut upgraded).await;
    upgraded
}

/// [`serve_from`]'s loop; a switch leaves its session in `upgraded`.
async fn serve_loop(
    mut conn: Conn,
    mut pending: Option<Request<()>>,
    mut first: bool,
    shared: &Arc<Shared>,
    mut ctx: ConnCtx,
    upgraded: &mut Option<Upgraded>,
) {
    let limits = &shared.accept.limits;
    let mut out = Vec::with_capacity(512);
    loop {
        let (mut req, body_read) = match pending.take() {
            Some(r) => (r, true),
            None => {
                if !first && conn.prefix().is_empty() {
                    tokio::select! {
                        r = tokio::time::timeout(shared.http1.idle_timeout, conn.fill()) => match r {
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
                first = false;
                match read_request_head(&mut conn, limits).await {
                    Ok((req, leftover)) => {
                        if !leftover.is_empty() {
                            let rest = conn.prefix_mut().split();
                            let mut all = leftover;
                            all.unsplit(rest);
                            *conn.prefix_mut() = all;
                        }
                        (req, false)
                    }
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
        if !body_read {
            match body_length(&req, shared.http1.max_request_body) {
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
                        max_body: shared.http1.max_request_body as u64,
                        max_trailer: limits.max_head_bytes,
                        deadline: limits.handshake_timeout,
                    };
                    match discard_body(&mut conn, body, caps).await {
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

        let info = shared.conn_info(conn.get_ref().is_tls());
        let route = match &shared.gateway {
            None => shared.route(req.uri().path()),
            // Boxed: the proxy's future is large and must not sit in every
            // connection's future (idle memory per connection).
            Some(gw) => match Box::pin(crate::routing::route_h1(gw, shared, conn, req, &ctx)).await
            {
                crate::routing::H1Route::Done => return,
                crate::routing::H1Route::Local(c, r, path) => {
                    conn = c;
                    req = r;
                    path.and_then(|p| shared.route(p))
                }
            },
        };
        let empty = Registry::new();
        // A TLS-only route switches to nothing but TLS on a cleartext connection.
        let route_protocols = match route {
            Some(r) if !r.tls_only || info.tls => &r.protocols,
            _ => &empty,
        };
        match select(&req, &[route_protocols, &shared.conn_protocols], &info) {
            Err(e) => {
                info!("hostile Upgrade header: {e}");
                return respond_close(&mut conn, e.status(), &HeaderMap::new(), &format!("{e}\n"))
                    .await;
            }
            Ok(Selection::Protocol(protocol, token)) => {
                if !protocol.accepts_early_data() && !conn.prefix().is_empty() {
                    info!(%token, "bytes pipelined after an upgrade request that forbids them: refused");
                    let msg = format!(
                        "bytes were sent after the request to switch to {token}, before the switch; \
                         they are never served: wait for the 101 before sending anything\n"
                    );
                    return respond_close(
                        &mut conn,
                        StatusCode::BAD_REQUEST,
                        &HeaderMap::new(),
                        &msg,
                    )
                    .await;
                }
                match protocol.prepare(&req, &token, &info) {
                    Err(refusal) => {
                        return respond_close(
                            &mut conn,
                            refusal.status,
                            &refusal.headers,
                            &refusal.body,
                        )
                        .await;
                    }
                    Ok(switch) => {
                        out.clear();
                        head::write_response_head(&switch.response, &mut out);
                        if conn.write_all(&out).await.is_err() || conn.flush().await.is_err() {
                            return;
                        }
                        info!(%token, path = req.uri().path(), "switching protocols");
                        // Nothing of the request, the response head or this
                        // loop is needed while the session runs, which may be
                        // for days: it gets a task of its own and this one ends.
                        let (leftover, io) = conn.into_parts();
                        let sctx = SessionCtx {
                            shutdown: ctx.stop.clone(),
                            grace: shared.grace,
                        };
                        let session = switch.session.run(io, leftover, sctx);
                        *upgraded = Some(Upgraded { session, ctx });
                        return;
                    }
                }
            }
            Ok(Selection::None) => {}
        }

        let mut answer = answer(&req, route, info.tls);
        if let Some(v) = ctx.alt_svc.as_ref().and_then(|v| v.to_str().ok()) {
            answer = answer.with("alt-svc", v);
        }
        // Every answer here is a complete, well-framed response: keep going.
        let keep = keep_alive && !*ctx.stop.borrow();
        out.clear();
        write_answer(
            &mut out,
            &answer,
            req.method() == Method::HEAD,
            keep,
            req.version(),
        );
        if conn.write_all(&out).await.is_err() || conn.flush().await.is_err() {
            return;
        }
        debug!(status = %answer.status, path = req.uri().path(), "answered");
        if !keep {
            return close_gracefully(&mut conn).await;
        }
    }
}

/// Whether the client wants the connection kept after this request.
fn wants_keep_alive(req: &Request<()>) -> bool {
    match req.version() {
        Version::HTTP_11 => !connection_has(req.headers(), "close"),
        Version::HTTP_10 => connection_has(req.headers(), "keep-alive"),
        _ => false,
    }
}

/// `Expect: 100-continue` on an HTTP/1.1 request.
fn expects_continue(req: &Request<()>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLen {
    /// `Content-Length` bytes (0: no body).
    Length(u64),
    /// The chunked coding (the head parser already refused every other
    /// `Transfer-Encoding` framing, and `Content-Length` with it: RFC 9112 §6.1).
    Chunked,
}

/// The body to discard, or the status refusing it.
fn body_length(req: &Request<()>, max: usize) -> Result<BodyLen, (StatusCode, &'static str)> {
    if req.headers().contains_key(TRANSFER_ENCODING) {
        return Ok(BodyLen::Chunked);
    }
    let mut len: Option<u64> = None;
    for v in req.headers().get_all(CONTENT_LENGTH) {
        let b = v.as_bytes();
        let ok = !b.is_empty() && b.len() <= 19 && b.iter().all(u8::is_ascii_digit);
        let n = match std::str::from_utf8(b)
            .ok()
            .filter(|_| ok)
            .and_then(|s| s.parse().ok())
        {
            Some(n) => n,
            None => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "Content-Length must be one decimal number\n",
                ))
            }
        };
        if len.is_some_and(|l| l != n) {
            return Err((
                StatusCode::BAD_REQUEST,
                "several different Content-Length values; send exactly one\n",
            ));
        }
        len = Some(n);
    }
    let n = len.unwrap_or(0);
    if n > max as u64 {
        return Err(too_large());
    }
    Ok(BodyLen::Length(n))
}

fn too_large() -> (StatusCode, &'static str) {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        "the request body is larger than this server accepts\n",
    )
}

/// Why a request body could not be discarded.
enum BodyError {
    /// The connection failed, ended or timed out: nothing to answer.
    Io(std::io::Error),
    /// Malformed chunked framing (400) or over the limit (413).
    Refused(StatusCode, String),
}

/// The bounds of [`discard_body`].
struct BodyCaps {
    /// Data bytes of a chunked body.
    max_body: u64,
    /// Bytes of a chunked body's trailer fields (the head's cap).
    max_trailer: usize,
    /// For the whole body.
    deadline: Duration,
}

/// Read and drop the body (buffered bytes first) within `caps.deadline`:
/// exactly `n` bytes, or a chunked body up to its end. Bytes after the body
/// stay buffered for the next request.
async fn discard_body(conn: &mut Conn, body: BodyLen, caps: BodyCaps) -> Result<(), BodyError> {
    let read = async {
        // On the heap, only when a body comes: an array would be part of
        // every connection's future (idle memory per connection).
        let mut scratch = Vec::new();
        match body {
            BodyLen::Length(mut n) => {
                let buffered = conn
                    .prefix()
                    .len()
                    .min(usize::try_from(n).unwrap_or(usize::MAX));
                conn.prefix_mut().advance(buffered);
                n -= buffered as u64;
                while n > 0 {
                    scratch.resize(8192, 0);
                    let want = scratch.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    let got = conn.get_mut().read(&mut scratch[..want]).await?;
                    if got == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    n -= got as u64;
                }
                Ok(Ok(()))
            }
            BodyLen::Chunked => {
                let mut dec = ChunkedDecoder::new(caps.max_body, caps.max_trailer);
                let done = match dec.feed(conn.prefix()) {
                    Ok(p) => {
                        conn.prefix_mut().advance(p.consumed);
                        p.done
                    }
                    Err(e) => return Ok(Err(e)),
                };
                if !done {
                    scratch.resize(8192, 0);
                }
                while !dec.is_done() {
                    let got = conn.get_mut().read(&mut scratch).await?;
                    if got == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    match dec.feed(&scratch[..got]) {
                        // What follows the body is the next request's.
                        Ok(p) => conn
                            .prefix_mut()
                            .extend_from_slice(&scratch[p.consumed..got]),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Ok(Ok(()))
            }
        }
    };
    match tokio::time::timeout(caps.deadline, read).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(ChunkedError::TooLarge { .. }))) => {
            let (status, msg) = too_large();
            Err(BodyError::Refused(status, msg.trim_end().to_owned()))
        }
        Ok(Ok(Err(e))) => Err(BodyError::Refused(
            StatusCode::BAD_REQUEST,
            format!("malformed chunked request body: {e}"),
        )),
        Ok(Err(e)) => Err(BodyError::Io(e)),
        Err(_) => Err(BodyError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

/// A complete response without an upgrade.
struct Answer {
    status: StatusCode,
    headers: Vec<(&'static str, String)>,
    content_type: &'static str,
    body: std::borrow::Cow<'static, str>,
}

impl Answer {
    fn text(status: StatusCode, body: &'static str) -> Self {
        Answer {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

fn answer(req: &Request<()>, route: Option<&Route>, tls: bool) -> Answer {
    if req.method() == Method::OPTIONS && req.uri() == "*" {
        return Answer::text(StatusCode::OK, "").with("allow", "GET, HEAD, OPTIONS");
    }
    let Some(route) = route else {
        info!(path = req.uri().path(), "404");
        return Answer::text(StatusCode::NOT_FOUND, "not found: try /echo or /\n");
    };
    if route.tls_only && !tls {
        return Answer::text(
            StatusCode::UPGRADE_REQUIRED,
            "this resource is served over TLS only: send Upgrade: TLS/1.3 with \
             Connection: Upgrade (RFC 2817), or use https://\n",
        )
        .with("upgrade", "TLS/1.3, HTTP/1.1")
        .with("connection", "Upgrade");
    }
    match &route.page {
        Some(page) => match *req.method() {
            Method::GET | Method::HEAD => Answer {
                status: StatusCode::OK,
                headers: Vec::new(),
                content_type: page.content_type,
                body: page.body.into(),
            },
            _ => {
                info!(method = %req.method(), "405");
                Answer::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
                    .with("allow", "GET, HEAD")
            }
        },
        None if req.method() != Method::GET => {
            info!(method = %req.method(), "405");
            Answer::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
                .with("allow", "GET")
        }
        None => {
            let tokens = route.protocols.advertised();
            info!(
                path = req.uri().path(),
                ?tokens,
                "no acceptable upgrade: 426"
            );
            let mut a = Answer::text(StatusCode::UPGRADE_REQUIRED, "");
            a.body = format!(
                "This resource speaks {} only: send Upgrade: {} and Connection: Upgrade.\n",
                tokens.join(" or "),
                tokens.first().map(String::as_str).unwrap_or("")
            )
            .into();
            a.with("upgrade", tokens.join(", "))
                .with("connection", "Upgrade")
        }
    }
}

/// Serialize `a` into `out`. The `Connection` header says `close` or, for
/// HTTP/1.0, `keep-alive`; tokens the answer already has (`Upgrade`) stay.
fn write_answer(out: &mut Vec<u8>, a: &Answer, head_only: bool, keep: bool, version: Version) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
        a.status.as_u16(),
        a.status.canonical_reason().unwrap_or(""),
        a.content_type,
        a.body.len()
    );
    let mut connection: Option<&str> = None;
    for (name, value) in &a.headers {
        if *name == "connection" {
            connection = Some(value);
            continue;
        }
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let extra = match (keep, version) {
        (false, _) => Some("close"),
        (true, Version::HTTP_10) => Some("keep-alive"),
        (true, _) => None,
    };
    match (connection, extra) {
        (Some(c), Some(e)) => {
            let _ = write!(out, "connection: {c}, {e}\r\n");
        }
        (Some(c), None) | (None, Some(c)) => {
            let _ = write!(out, "connection: {c}\r\n");
        }
        (None, None) => {}
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(a.body.as_bytes());
    }
}

/// Write a complete response with `Connection: close`, then close.
async fn respond_close(conn: &mut Conn, status: StatusCode, extra: &HeaderMap, body: &str) {
    let mut h = extra.clone();
    // Keep tokens the caller put in Connection (e.g. `Upgrade` on a 426).
    let connection = match extra
        .get(http::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
    {
        Some(tokens) => format!("{tokens}, close"),
        None => "close".to_owned(),
    };
    if let Ok(v) = http::HeaderValue::from_str(&connection) {
        h.insert(http::header::CONNECTION, v);
    }
    let bytes = head::simple_response(status, &h, body);
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
    use http::HeaderValue;

    fn req_with(headers: &[(&str, &str)], version: Version) -> Request<()> {
        let mut r = Request::new(());
        *r.version_mut() = version;
        for (n, v) in headers {
            r.headers_mut().append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    #[test]
    fn keep_alive_rules() {
        assert!(wants_keep_alive(&req_with(&[], Version::HTTP_11)));
        assert!(!wants_keep_alive(&req_with(
            &[("connection", "Close")],
            Version::HTTP_11
        )));
        assert!(!wants_keep_alive(&req_with(&[], Version::HTTP_10)));
        assert!(wants_keep_alive(&req_with(
            &[("connection", "keep-alive")],
            Version::HTTP_10
        )));
    }

    #[test]
    fn body_length_rules() {
        let max = 1 << 20;
        assert_eq!(
            body_length(&req_with(&[], Version::HTTP_11), max),
            Ok(BodyLen::Length(0))
        );
        assert_eq!(
            body_length(
                &req_with(&[("content-length", "12")], Version::HTTP_11),
                max
            ),
            Ok(BodyLen::Length(12))
        );
        let same = req_with(
            &[("content-length", "3"), ("content-length", "3")],
            Version::HTTP_11,
        );
        assert_eq!(body_length(&same, max), Ok(BodyLen::Length(3)));
        let status = |h: &[(&str, &str)]| {
            body_length(&req_with(h, Version::HTTP_11), max)
                .unwrap_err()
                .0
        };
        assert_eq!(
            status(&[("content-length", "3"), ("content-length", "4")]),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(&[("content-length", "-1")]), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(&[("content-length", "1, 1")]),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&[("content-length", "99999999999999999999")]),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&[("content-length", "1048577")]),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            body_length(
                &req_with(&[("transfer-encoding", "chunked")], Version::HTTP_11),
                max
            ),
            Ok(BodyLen::Chunked)
        );
        assert_eq!(
            body_length(
                &req_with(&[("content-length", "1048576")], Version::HTTP_11),
                max
            ),
            Ok(BodyLen::Length(1 << 20))
        );
    }

    #[test]
    fn head_answers_have_the_get_length_and_no_body() {
        let a = Answer::text(StatusCode::OK, "hello");
        let mut get = Vec::new();
        write_answer(&mut get, &a, false, true, Version::HTTP_11);
        let mut head = Vec::new();
        write_answer(&mut head, &a, true, true, Version::HTTP_11);
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
            .with("upgrade", "websocket")
            .with("connection", "Upgrade");
        let mut out = Vec::new();
        write_answer(&mut out, &a, false, false, Version::HTTP_11);
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("\r\nconnection: Upgrade, close\r\n"), "{s}");
        let mut out = Vec::new();
        write_answer(
            &mut out,
            &Answer::text(StatusCode::OK, ""),
            false,
            true,
            Version::HTTP_10,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("\r\nconnection: keep-alive\r\n"), "{s}");
    }
}

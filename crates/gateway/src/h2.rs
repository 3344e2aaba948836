//! The HTTP/2 server (hyper 1) with WebSocket over extended CONNECT (RFC 8441).
//!
//! Reached by ALPN `h2` on TLS listeners, or by the prior-knowledge preface
//! on cleartext ones. Every limit of [`Http2Settings`] is set explicitly;
//! SETTINGS_ENABLE_CONNECT_PROTOCOL is sent only when
//! [`Http2Settings::enable_connect_protocol`] is on.
//!
//! | request                                              | answer                 |
//! |------------------------------------------------------|------------------------|
//! | CONNECT `:protocol websocket` on a WebSocket route    | 200, then the echo app (refusals of `switchyard::h2::accept`: bad version 400 + `sec-websocket-version: 13`, Origin 403, extensions 400) |
//! | CONNECT with another `:protocol`                     | 501                    |
//! | CONNECT without `:protocol` on a WebSocket route      | 400 (*)                |
//! | CONNECT without `:protocol` elsewhere (a proxy CONNECT) | 405                  |
//! | GET / HEAD of a page                                 | 200                    |
//! | GET of an upgrade-only route                         | 400 (use CONNECT)      |
//! | unknown path                                         | 404                    |
//!
//! (*) The h2 codec already refuses a CONNECT that carries `:path` without
//! `:protocol` (RST_STREAM PROTOCOL_ERROR, RFC 9113 §8.5), so the 400 is a
//! second line of defence.
//!
//! `Upgrade`, `Connection` and the other connection-specific fields make an
//! HTTP/2 request malformed; the h2 codec refuses such a stream
//! (RST_STREAM PROTOCOL_ERROR) before it reaches this service.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, UPGRADE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use switchyard::proto::handshake::Rejection;
use tracing::{info, Instrument};

use crate::io::{Prefixed, ServerIo};
use crate::server::{ConnCtx, Http2Settings, Shared};

type Body = Full<Bytes>;

/// The hyper builder with every limit of `s` set.
pub fn builder(s: &Http2Settings) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(s.max_concurrent_streams)
        .max_header_list_size(s.max_header_list_size)
        .max_pending_accept_reset_streams(s.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(s.max_local_error_reset_streams)
        .keep_alive_interval(s.keep_alive_interval)
        .keep_alive_timeout(s.keep_alive_timeout)
        .max_send_buf_size(s.max_send_buf_size);
    if s.enable_connect_protocol {
        b.enable_connect_protocol();
    }
    b
}

/// Serve HTTP/2 on `io`; `buf` holds bytes already read (the preface).
pub(crate) async fn serve(io: ServerIo, buf: BytesMut, shared: Arc<Shared>, ctx: ConnCtx) {
    let tls = io.is_tls();
    let svc_shared = shared.clone();
    let svc_ctx = ctx.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let mut resp = respond(req, &svc_shared, &svc_ctx, tls);
        if let Some(v) = &svc_ctx.alt_svc {
            resp.headers_mut().insert(http::header::ALT_SVC, v.clone());
        }
        async move { Ok::<_, Infallible>(resp) }
    });
    let conn = builder(&shared.http2).serve_connection(TokioIo::new(Prefixed::new(buf, io)), svc);
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
    let _ = tokio::time::timeout(shared.grace + Duration::from_secs(1), conn).await;
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn respond(
    mut req: Request<Incoming>,
    shared: &Arc<Shared>,
    ctx: &ConnCtx,
    tls: bool,
) -> Response<Body> {
    let path = req.uri().path();
    let is_plain_connect =
        req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_none();
    if is_plain_connect && !shared.route(path).is_some_and(|r| r.speaks("websocket")) {
        // A classic CONNECT (authority-form, no :path): we are not a proxy.
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "this server is not a proxy: CONNECT is only for WebSocket, with :protocol websocket (RFC 8441)\n",
        );
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let Some(route) = shared.route(path) else {
        return text(StatusCode::NOT_FOUND, "not found: try /echo or /\n");
    };
    if route.tls_only && !tls {
        return text(
            StatusCode::FORBIDDEN,
            "this resource is served over TLS only: use https://\n",
        );
    }
    let serves_ws = route.speaks("websocket");
    if req.method() == Method::CONNECT {
        let protocol = req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .map(|p| p.as_str().to_owned());
        return match protocol {
            Some(p) if p.eq_ignore_ascii_case("websocket") && serves_ws => {
                websocket(&mut req, shared, ctx)
            }
            Some(p) => {
                info!(protocol = %p, "extended CONNECT for an unsupported protocol: 501");
                text(
                    StatusCode::NOT_IMPLEMENTED,
                    format!("this server does not speak {p:?} over extended CONNECT on {path}; only websocket on its WebSocket routes\n"),
                )
            }
            None if serves_ws => text(
                StatusCode::BAD_REQUEST,
                "CONNECT on a WebSocket resource needs :protocol websocket (RFC 8441 extended CONNECT)\n",
            ),
            None => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                r.headers_mut()
                    .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                r
            }
        };
    }
    match &route.page {
        Some(page) if req.method() == Method::GET || req.method() == Method::HEAD => {
            let body = if req.method() == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from_static(page.body.as_bytes())
            };
            let mut r = Response::new(Full::new(body));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(page.content_type));
            r.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(page.body.len()));
            r
        }
        Some(_) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
        None => text(
            StatusCode::BAD_REQUEST,
            "this resource must be opened with a protocol switch; over HTTP/2 that is an \
             extended CONNECT (:method CONNECT, :protocol websocket, RFC 8441) on a WebSocket \
             resource\n",
        ),
    }
}

/// The refusal as an HTTP/2 response: connection-specific fields removed.
fn rejection(rej: &Rejection) -> Response<Body> {
    let mut r = text(rej.response.status(), format!("{}\n", rej.error));
    for (name, value) in rej.response.headers() {
        if name != CONNECTION && name != UPGRADE && name != CONTENT_LENGTH && name != CONTENT_TYPE {
            r.headers_mut().insert(name, value.clone());
        }
    }
    r
}

/// RFC 8441: `switchyard::h2::accept` checks the extended CONNECT (version
/// 13, origin, subprotocol, extensions) and builds the 200; the echo app then
/// runs on the stream in its own task, tracked for the shutdown drain.
fn websocket(req: &mut Request<Incoming>, shared: &Arc<Shared>, ctx: &ConnCtx) -> Response<Body> {
    match switchyard::h2::accept(req, &shared.accept) {
        Ok((response, upgrade)) => {
            let stop = ctx.stop.clone();
            let alive = ctx.alive.clone();
            let grace = shared.grace;
            tokio::spawn(
                async move {
                    let _alive = alive;
                    match upgrade.await {
                        Ok(ws) => {
                            info!(subprotocol = ?ws.subprotocol(), "websocket over HTTP/2 (RFC 8441)");
                            crate::websocket::log_end(crate::apps::echo(ws, stop, grace).await);
                        }
                        Err(e) => info!("HTTP/2 stream not handed over: {e}"),
                    }
                }
                .in_current_span(),
            );
            response.map(|_| Full::new(Bytes::new()))
        }
        Err(rej) => {
            info!(status = %rej.response.status(), "extended CONNECT refused: {}", rej.error);
            rejection(&rej)
        }
    }
}

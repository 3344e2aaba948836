//! Server side: read the upgrade request, answer 101 (or the refusal), and
//! hand over a [`WebSocket`]. Raw streams ([`accept`]) and hyper 1 services
//! over HTTP/1.1 or HTTP/2 ([`upgrade`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use switchyard_proto::extended_connect::ExtendedConnect;
use switchyard_proto::handshake::{self, Negotiated, Rejection, ServerConfig};
use switchyard_proto::head::{self, RequestParser};
use switchyard_proto::{Connection, Limits, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::Error;
use crate::websocket::WebSocket;

/// How much a single read of the request head may take at once.
const HEAD_READ_CHUNK: usize = 4096;

/// Server settings: the handshake policy and the connection limits.
/// `AcceptConfig::default()` accepts any origin, no subprotocol, no
/// compression, with [`Limits::default`]; change it with the setters.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AcceptConfig {
    /// Subprotocols, permessage-deflate and origin policy.
    pub handshake: ServerConfig,
    /// Sizes and deadlines of each connection.
    pub limits: Limits,
}

impl AcceptConfig {
    /// Settings with this handshake policy and these limits.
    pub fn new(handshake: ServerConfig, limits: Limits) -> Self {
        AcceptConfig { handshake, limits }
    }

    /// Set [`AcceptConfig::handshake`].
    #[must_use]
    pub fn handshake(mut self, handshake: ServerConfig) -> Self {
        self.handshake = handshake;
        self
    }

    /// Set [`AcceptConfig::limits`].
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }
}

/// Read an HTTP/1.1 request head, within `limits.handshake_timeout` for the
/// whole head. Returns the request and the bytes read past the head (they
/// belong to whatever follows: keep them).
///
/// On error, [`Error::http_status`] tells what to answer (400, 408, 431).
pub async fn read_request_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    limits: &Limits,
) -> Result<(Request<()>, BytesMut), Error> {
    let mut buf = BytesMut::with_capacity(HEAD_READ_CHUNK);
    let deadline = tokio::time::Instant::now() + limits.handshake_timeout;
    let req = read_request_head_buffered(stream, &mut buf, limits, deadline).await?;
    Ok((req, buf))
}

/// [`read_request_head`] for a caller that owns the connection's read
/// buffer: the bytes already in `buf` are parsed first, more are read into
/// it, and on success the head is gone from `buf` while the bytes after it
/// stay. The head is parsed where it was read (no second buffer) and the
/// whole head must arrive before `deadline` (else [`Error::HeadTimeout`],
/// which names `limits.handshake_timeout`), so a caller that already waited
/// for the first bytes under a deadline keeps that one timer.
pub async fn read_request_head_buffered<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: &Limits,
    deadline: tokio::time::Instant,
) -> Result<Request<()>, Error> {
    let read = read_head_into(stream, buf, RequestParser::new(limits));
    match tokio::time::timeout_at(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(Error::HeadTimeout {
            limit: limits.handshake_timeout,
        }),
    }
}

async fn read_head_into<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    mut parser: RequestParser,
) -> Result<Request<()>, Error> {
    loop {
        if !buf.is_empty() {
            if let Some((req, used)) = parser.feed(buf)? {
                buf.advance(used.min(buf.len()));
                return Ok(req);
            }
            // The parser keeps its own copy of a partial head.
            buf.clear();
        }
        buf.reserve(HEAD_READ_CHUNK);
        if stream.read_buf(buf).await? == 0 {
            return Err(Error::HeadEof {
                got: parser.bytes_seen(),
            });
        }
    }
}

/// Write a small plain-text response (`Connection: close`).
async fn write_simple<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: StatusCode,
    extra: &HeaderMap,
    body: &str,
) -> Result<(), Error> {
    let bytes = head::simple_response(status, extra, body);
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// Headers of a rejection that `simple_response` does not set itself.
fn rejection_extra_headers(resp: &http::Response<()>) -> HeaderMap {
    let mut extra = resp.headers().clone();
    for h in [
        http::header::CONTENT_LENGTH,
        http::header::CONTENT_TYPE,
        http::header::CONNECTION,
    ] {
        extra.remove(h);
    }
    extra
}

/// The server's connection for what a handshake agreed to.
pub(crate) fn server_connection(negotiated: &Negotiated, cfg: &AcceptConfig) -> Connection {
    Connection::negotiated(
        Role::Server,
        cfg.limits.clone(),
        negotiated,
        cfg.handshake.deflate.as_ref(),
    )
}

/// Answer an upgrade request already read: 101 and a [`WebSocket`], or the
/// refusal (400, 403, 426...) with a body naming the reason, then
/// `Err(Error::Handshake)`.
pub async fn accept_request<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    req: &Request<()>,
    leftover: BytesMut,
    cfg: &AcceptConfig,
) -> Result<WebSocket<S>, Error> {
    match handshake::server_accept(req, &cfg.handshake) {
        Ok(accepted) => {
            let mut out = Vec::with_capacity(256);
            head::write_response_head(&accepted.response, &mut out);
            stream.write_all(&out).await?;
            stream.flush().await?;
            let conn = server_connection(&accepted.negotiated, cfg);
            Ok(WebSocket::from_raw(stream, conn, &leftover).with_negotiated(accepted.negotiated))
        }
        Err(rej) => {
            tracing::debug!(status = rej.response.status().as_u16(), error = %rej.error, "websocket upgrade refused");
            let extra = rejection_extra_headers(&rej.response);
            let body = format!("{}\n", rej.error);
            let _ = write_simple(&mut stream, rej.response.status(), &extra, &body).await;
            let _ = stream.shutdown().await;
            Err(Error::Handshake(rej.error))
        }
    }
}

/// Read the request head and accept the WebSocket. A bad or slow head is
/// answered (400, 408, 431) before the error is returned.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    cfg: &AcceptConfig,
) -> Result<WebSocket<S>, Error> {
    match read_request_head(&mut stream, &cfg.limits).await {
        Ok((req, leftover)) => accept_request(stream, &req, leftover, cfg).await,
        Err(e) => {
            if let Some(status) = e.http_status() {
                tracing::debug!(status = status.as_u16(), error = %e, "bad request head");
                let body = format!("{e}\n");
                let _ = write_simple(&mut stream, status, &HeaderMap::new(), &body).await;
                let _ = stream.shutdown().await;
            }
            Err(e)
        }
    }
}

/// The body of every response [`upgrade`] and [`rejection_response`] give
/// to hyper: empty for the 101 (HTTP/1.1) or 200 (HTTP/2), the reason in
/// plain text for a refusal. One type, so a service needs no `Either`.
pub type UpgradeBody = Full<Bytes>;

/// The response to send for a refused upgrade in a hyper service: the
/// status and headers of the [`Rejection`] and its reason as the body.
pub fn rejection_response(rej: &Rejection) -> hyper::Response<UpgradeBody> {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(format!("{}\n", rej.error))));
    *resp.status_mut() = rej.response.status();
    *resp.headers_mut() = rejection_extra_headers(&rej.response);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Accept a WebSocket inside a hyper 1 service, over HTTP/1.1 (a `GET` with
/// `Upgrade: websocket`, answered 101) or HTTP/2 (an RFC 8441 extended
/// CONNECT, answered 200), by the request's version.
///
/// Returns the response to give back to hyper, and a future that resolves
/// to the WebSocket once hyper has sent it and handed over the connection
/// (or the stream). On a refused request, answer with
/// [`rejection_response`]: the [`Rejection`] has the status (400, 403, 426,
/// 501...) and the reason.
///
/// hyper must hand the connection over: serve HTTP/1.1 connections
/// `with_upgrades()`, and HTTP/2 ones with `enable_connect_protocol()`
/// ([`crate::h2::server_builder`] does).
///
/// ```no_run
/// use futures_util::{SinkExt, StreamExt};
/// use switchyard::server::{rejection_response, upgrade, AcceptConfig, UpgradeBody};
///
/// async fn service(
///     mut req: hyper::Request<hyper::body::Incoming>,
/// ) -> Result<hyper::Response<UpgradeBody>, std::convert::Infallible> {
///     Ok(match upgrade(&mut req, &AcceptConfig::default()) {
///         Ok((response, websocket)) => {
///             tokio::spawn(async move {
///                 let Ok(mut ws) = websocket.await else { return };
///                 while let Some(Ok(msg)) = ws.next().await {
///                     if msg.is_data() && ws.send(msg).await.is_err() {
///                         break;
///                     }
///                 }
///             });
///             response
///         }
///         Err(refusal) => rejection_response(&refusal),
///     })
/// }
/// ```
#[allow(clippy::result_large_err)]
pub fn upgrade<B>(
    req: &mut hyper::Request<B>,
    cfg: &AcceptConfig,
) -> Result<(hyper::Response<UpgradeBody>, UpgradeFut), Rejection> {
    if req.version() == http::Version::HTTP_2 {
        return accept_extended_connect(req, cfg);
    }
    let accepted = handshake::server_accept(req, &cfg.handshake)?;
    let conn = server_connection(&accepted.negotiated, cfg);
    let (parts, ()) = accepted.response.into_parts();
    let response = hyper::Response::from_parts(parts, Full::default());
    let fut = UpgradeFut::new(hyper::upgrade::on(req), conn, accepted.negotiated);
    Ok((response, fut))
}

/// Accept an RFC 8441 extended CONNECT (the checks of
/// [`ExtendedConnect::accept_websocket`]): the 200 and the future of the
/// WebSocket on the stream. Any other request, HTTP/1.1 included, is refused.
#[allow(clippy::result_large_err)]
pub(crate) fn accept_extended_connect<B>(
    req: &mut hyper::Request<B>,
    cfg: &AcceptConfig,
) -> Result<(hyper::Response<UpgradeBody>, UpgradeFut), Rejection> {
    let protocol = req.extensions().get::<hyper::ext::Protocol>();
    let negotiation = ExtendedConnect::from_request(req, protocol.map(|p| p.as_str()))
        .accept_websocket(&cfg.handshake)?;
    let conn = server_connection(&negotiation.negotiated, cfg);
    let mut response = hyper::Response::new(Full::default());
    *response.headers_mut() = negotiation.headers;
    let fut = UpgradeFut::new(hyper::upgrade::on(req), conn, negotiation.negotiated);
    Ok((response, fut))
}

/// Resolves to the WebSocket once hyper hands over the upgraded connection.
pub struct UpgradeFut {
    on_upgrade: hyper::upgrade::OnUpgrade,
    conn: Option<(Connection, Negotiated)>,
}

impl UpgradeFut {
    /// A future handing `conn` the stream hyper upgrades (HTTP/1.1 101 or an
    /// HTTP/2 extended CONNECT answered 200).
    pub(crate) fn new(
        on_upgrade: hyper::upgrade::OnUpgrade,
        conn: Connection,
        negotiated: Negotiated,
    ) -> Self {
        UpgradeFut {
            on_upgrade,
            conn: Some((conn, negotiated)),
        }
    }
}

impl std::fmt::Debug for UpgradeFut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeFut").finish_non_exhaustive()
    }
}

impl Future for UpgradeFut {
    type Output = Result<WebSocket<TokioIo<hyper::upgrade::Upgraded>>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let upgraded = ready!(Pin::new(&mut self.on_upgrade).poll(cx)).map_err(|e| {
            Error::Io(std::io::Error::other(format!(
                "hyper did not hand over the upgraded connection ({e}); \
                 serve the connection with `.with_upgrades()`"
            )))
        })?;
        let Some((conn, negotiated)) = self.conn.take() else {
            return Poll::Ready(Err(Error::Closed));
        };
        let ws = WebSocket::from_raw(TokioIo::new(upgraded), conn, &[]).with_negotiated(negotiated);
        Poll::Ready(Ok(ws))
    }
}

//! The HTTP/3 server side: a quinn endpoint answering extended CONNECT
//! `:protocol websocket` (RFC 9220) with 200 and a [`WebSocket`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use switchyard_proto::handshake::{HandshakeError, ServerNegotiation};
use tokio::sync::watch;

use super::connection::{self, close_with, open_control, run_uni_streams};
use super::frame::{self, FrameReader, ReadFrame};
use super::head::{parse_request, RequestHead};
use super::message::{send_head, H3Body, H3Responder};
use super::qpack;
use super::stream::{DataReader, H3Stream};
use crate::error::{H3Error, H3ProtocolError};
use crate::server::{server_connection, AcceptConfig};
use crate::websocket::WebSocket;

/// QUIC connections one [`serve`] call keeps at once; more are refused
/// (QUIC CONNECTION_REFUSED) until some close.
pub const MAX_CONNECTIONS: usize = 10_000;

/// The `Alt-Svc` value a TCP listener sends to advertise HTTP/3 on the same
/// host at UDP `port` (RFC 7838, RFC 9114 §3.1.1): `h3=":PORT"; ma=86400`.
pub fn alt_svc(port: u16) -> http::HeaderValue {
    http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("clear"))
}

/// Bind a UDP socket on `addr` and make it an HTTP/3 endpoint with `tls`
/// (the same certificate as the TCP listener). The config is cloned and its
/// ALPN set to `h3`; it must allow TLS 1.3 (QUIC requires it).
pub fn bind_endpoint(
    addr: SocketAddr,
    tls: &rustls::ServerConfig,
) -> Result<quinn::Endpoint, H3Error> {
    let mut tls = tls.clone();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| {
        H3Error::Config(format!(
            "the TLS configuration cannot be used for QUIC: {e}"
        ))
    })?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(connection::transport_config(false)));
    quinn::Endpoint::server(cfg, addr).map_err(|e| H3Error::Bind { addr, source: e })
}

/// What the callback gets for each accepted WebSocket: the extended CONNECT
/// request (method CONNECT, `https://authority/path` URI, headers, version
/// HTTP/3, the peer's `SocketAddr` and the `:protocol` as a
/// `hyper::ext::Protocol` in its extensions) and the WebSocket (server role, negotiated subprotocol and
/// permessage-deflate already applied).
pub type OnWebSocket = Arc<dyn Fn(Request<()>, WebSocket<H3Stream>) + Send + Sync>;

/// Decides, after the WebSocket checks and before the 200, whether a
/// request is served: `Err((status, body))` refuses it (e.g. 404 for a path
/// without a WebSocket endpoint, 403 for a policy). It sees the same
/// [`Request`] the WebSocket callback would get.
pub type Route = Arc<dyn Fn(&Request<()>) -> Result<(), (StatusCode, String)> + Send + Sync>;

/// Takes a request before the server's own handling: every well-formed
/// request (an extended CONNECT with any `:protocol`, or a request with
/// `:scheme` and `:path`) is offered. `Some(handler)` gets the request and
/// the [`PendingStream`] (nothing answered yet), `None` lets the server
/// handle it as usual. A gateway uses it to dispatch every request itself:
/// a reverse proxy hands an extended CONNECT's bytes to an upstream, a
/// plain request is answered with [`PendingStream::into_exchange`].
pub type RequestHook = Arc<dyn Fn(&Request<()>) -> Option<RequestHandler> + Send + Sync>;

/// What a [`RequestHook`] returns to take a request: it is called once,
/// with the request and its stream.
pub type RequestHandler = Box<dyn FnOnce(Request<()>, PendingStream) + Send>;

/// A request stream taken by a [`RequestHook`], before any answer was
/// sent.
pub struct PendingStream {
    send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    keep: Arc<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for PendingStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingStream")
            .field("stream", &self.send.id())
            .finish_non_exhaustive()
    }
}

impl PendingStream {
    /// For a request that is not an extended CONNECT: its body and the
    /// sender of its response (any status, a streamed body).
    pub fn into_exchange(self) -> (H3Body, H3Responder) {
        let PendingStream { send, reader, keep } = self;
        let body = H3Body::new(
            DataReader::new(reader.inner, reader.buf),
            Some(keep.clone()),
        );
        (body, H3Responder::new(send, Some(keep)))
    }

    /// For an extended CONNECT: send `response` (its status and header
    /// fields, which must not be connection-specific). A 2xx returns the stream's bytes (DATA frames)
    /// as an [`H3Stream`]; any other status finishes the stream and returns
    /// an error (`ConnectionRefused`) once the answer has left.
    pub async fn respond(mut self, response: http::Response<()>) -> std::io::Result<H3Stream> {
        let status = response.status();
        if !status.is_success() {
            refuse(
                &mut self.send,
                &mut self.reader.inner,
                status,
                response.headers(),
                "",
            )
            .await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                format!("extended CONNECT answered {status}"),
            ));
        }
        send_head(&mut self.send, status, response.headers(), b"")
            .await
            .map_err(std::io::Error::from)?;
        let leftover = std::mem::replace(&mut self.reader.buf, BytesMut::new());
        Ok(H3Stream::new(
            self.send,
            self.reader.inner,
            leftover,
            Some(self.keep),
        ))
    }
}

/// An HTTP/3 WebSocket server's settings: the handshake policy and limits,
/// the connection cap, and optional [`Route`] and [`RequestHook`] hooks.
#[derive(Clone)]
pub struct H3Server {
    cfg: AcceptConfig,
    max_connections: usize,
    route: Option<Route>,
    requests: Option<RequestHook>,
    drain: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for H3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Server")
            .field("cfg", &self.cfg)
            .field("max_connections", &self.max_connections)
            .field("route", &self.route.is_some())
            .field("requests", &self.requests.is_some())
            .field("drain", &self.drain.is_some())
            .finish()
    }
}

struct Ctx {
    cfg: AcceptConfig,
    route: Option<Route>,
    requests: Option<RequestHook>,
    cb: OnWebSocket,
    drain: Option<watch::Receiver<bool>>,
}

impl H3Server {
    /// `cfg` as for HTTP/1.1 ([`AcceptConfig`]), [`MAX_CONNECTIONS`], no route hook.
    pub fn new(cfg: AcceptConfig) -> Self {
        H3Server {
            cfg,
            max_connections: MAX_CONNECTIONS,
            route: None,
            requests: None,
            drain: None,
        }
    }

    /// Start draining when `drain` turns true (before `shutdown` resolves):
    /// new QUIC connections are refused, and every connection gets a GOAWAY
    /// (RFC 9114 §5.2) naming the first request stream it will not serve;
    /// requests on later streams are reset with H3_REQUEST_REJECTED, so the
    /// client knows they were not processed and may retry elsewhere. What is
    /// already open goes on until `shutdown`.
    pub fn drain_on(mut self, drain: watch::Receiver<bool>) -> Self {
        self.drain = Some(drain);
        self
    }

    /// Cap on simultaneous QUIC connections; more are refused.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Accept or refuse each WebSocket request before answering 200.
    pub fn route(
        mut self,
        f: impl Fn(&Request<()>) -> Result<(), (StatusCode, String)> + Send + Sync + 'static,
    ) -> Self {
        self.route = Some(Arc::new(f));
        self
    }

    /// Offer every well-formed request to `f` first, before the server's
    /// own handling: see [`RequestHook`].
    pub fn requests(
        mut self,
        f: impl Fn(&Request<()>) -> Option<RequestHandler> + Send + Sync + 'static,
    ) -> Self {
        self.requests = Some(Arc::new(f));
        self
    }

    /// Serve HTTP/3 on `endpoint` until `shutdown` resolves.
    ///
    /// * extended CONNECT with `:protocol websocket`: validated like RFC 8441
    ///   (`Sec-WebSocket-Version: 13` else 400 with `Sec-WebSocket-Version: 13`;
    ///   origin policy 403; malformed extensions 400; subprotocol and
    ///   permessage-deflate from `cfg.handshake`), then the [`Route`] hook if
    ///   set (its refusal is answered instead), answered 200, and handed to
    ///   `on_websocket`, which should spawn a task to run it;
    /// * another `:protocol`: 501; CONNECT without `:protocol`: 405;
    /// * GET / HEAD: 404 (this listener only serves WebSockets); other methods: 405;
    /// * malformed requests (RFC 9114 §4.1.2): stream reset with H3_MESSAGE_ERROR.
    ///
    /// At most [`H3Server::max_connections`] QUIC connections at once (more
    /// are refused).
    ///
    /// On shutdown the endpoint stops accepting and closes every connection with
    /// H3_NO_ERROR, waiting at most `cfg.limits.close_timeout` for the peers.
    /// WebSockets still open end without a close frame (the client sees the
    /// connection closed): to close them with 1001 first, keep track of them in
    /// the callback and close them before resolving `shutdown`.
    pub async fn serve<F>(
        self,
        endpoint: quinn::Endpoint,
        on_websocket: F,
        shutdown: impl Future<Output = ()>,
    ) where
        F: Fn(Request<()>, WebSocket<H3Stream>) + Send + Sync + 'static,
    {
        let max_connections = self.max_connections;
        let close_timeout = self.cfg.limits.close_timeout;
        let mut drain = self.drain.clone();
        let ctx = Arc::new(Ctx {
            cfg: self.cfg,
            route: self.route,
            requests: self.requests,
            cb: Arc::new(on_websocket),
            drain: self.drain,
        });
        let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = drain_started(drain.as_mut()) => {
                    // No new connections: the ones open drain until `shutdown`.
                    endpoint.set_server_config(None);
                    shutdown.as_mut().await;
                    break;
                }
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::warn!(
                            "refusing an HTTP/3 connection from {}: {max_connections} open",
                            incoming.remote_address()
                        );
                        incoming.refuse();
                        continue;
                    };
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        match incoming.await {
                            Ok(conn) => {
                                if let Err(e) = serve_connection(conn, ctx).await {
                                    tracing::debug!("HTTP/3 connection ended: {e}");
                                }
                            }
                            Err(e) => tracing::debug!("QUIC handshake failed: {e}"),
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        endpoint.close(
            quinn::VarInt::from_u32(frame::H3_NO_ERROR),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(close_timeout, endpoint.wait_idle()).await;
    }
}

/// [`H3Server::serve`] with `cfg` and the defaults (see there).
pub async fn serve<F>(
    endpoint: quinn::Endpoint,
    cfg: AcceptConfig,
    on_websocket: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Request<()>, WebSocket<H3Stream>) + Send + Sync + 'static,
{
    H3Server::new(cfg)
        .serve(endpoint, on_websocket, shutdown)
        .await
}

/// [`serve`] with another cap than [`MAX_CONNECTIONS`] on simultaneous
/// QUIC connections.
pub async fn serve_with_max_connections<F>(
    endpoint: quinn::Endpoint,
    cfg: AcceptConfig,
    max_connections: usize,
    on_websocket: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Request<()>, WebSocket<H3Stream>) + Send + Sync + 'static,
{
    H3Server::new(cfg)
        .max_connections(max_connections)
        .serve(endpoint, on_websocket, shutdown)
        .await
}

async fn serve_connection(conn: quinn::Connection, ctx: Arc<Ctx>) -> Result<(), H3Error> {
    let control = open_control(&conn, ctx.cfg.limits.max_head_bytes, true).await?;
    let control = Arc::new(tokio::sync::Mutex::new(control));
    // Shared by every stream: dropping the last one closes our control stream.
    let keep: Arc<dyn std::any::Any + Send + Sync> = control.clone();
    tokio::spawn(run_uni_streams(conn.clone(), false, |_| {}));
    let mut drain = ctx.drain.clone();
    // The first request stream ID not accepted yet, and the GOAWAY sent.
    let mut next_id = 0u64;
    let mut goaway: Option<u64> = None;
    loop {
        // Once the GOAWAY is out, only requests are awaited.
        let watch = drain.as_mut().filter(|_| goaway.is_none());
        let accepted = tokio::select! {
            a = conn.accept_bi() => a,
            () = drain_started(watch) => {
                // RFC 9114 §5.2: no request from this ID on will be served;
                // those below it (already accepted or in flight) still are.
                let id = next_id;
                goaway = Some(id);
                let mut c = control.lock().await;
                if c.write_all(&frame::goaway(id)).await.is_err() {
                    return Ok(());
                }
                tracing::debug!("HTTP/3 GOAWAY {id} sent: draining");
                continue;
            }
        };
        let (mut send, mut recv) = match accepted {
            Ok(s) => s,
            Err(quinn::ConnectionError::ApplicationClosed(_))
            | Err(quinn::ConnectionError::LocallyClosed) => return Ok(()),
            Err(e) => return Err(H3Error::Connection(e)),
        };
        let id = stream_id(&send);
        next_id = next_id.max(id + 4);
        if goaway.is_some_and(|g| id >= g) {
            let code = quinn::VarInt::from_u32(frame::H3_REQUEST_REJECTED);
            let _ = send.reset(code);
            let _ = recv.stop(code);
            continue;
        }
        let ctx = ctx.clone();
        let keep = keep.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            handle_request(conn, send, recv, ctx, keep).await;
        });
    }
}

/// Resolves when `drain` turns true; never without one (or once its sender
/// is gone without draining).
async fn drain_started(drain: Option<&mut watch::Receiver<bool>>) {
    if let Some(d) = drain {
        if d.wait_for(|v| *v).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// The QUIC stream ID of a client-initiated bidirectional stream.
fn stream_id(send: &quinn::SendStream) -> u64 {
    u64::from(quinn::VarInt::from(send.id()))
}

/// Why a request stream is answered the way it is.
enum Outcome {
    Respond {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    },
    Reset(H3ProtocolError),
    /// Connection-level error (e.g. a DATA frame before HEADERS).
    Close(H3ProtocolError),
}

fn respond(status: StatusCode, body: impl Into<String>) -> Outcome {
    Outcome::Respond {
        status,
        headers: HeaderMap::new(),
        body: body.into(),
    }
}

async fn read_request_head(
    reader: &mut FrameReader<quinn::RecvStream>,
    cfg: &AcceptConfig,
) -> Result<RequestHead, Outcome> {
    let max = cfg.limits.max_head_bytes;
    let block = match reader.next_frame(max, frame::is_defined_type).await {
        Ok(ReadFrame::Frame {
            ty: frame::HEADERS,
            payload,
        }) => payload,
        Ok(ReadFrame::Frame { ty, .. }) => {
            return Err(Outcome::Close(H3ProtocolError::new(
                frame::H3_FRAME_UNEXPECTED,
                format!("frame type 0x{ty:x} before the request HEADERS"),
            )))
        }
        Ok(ReadFrame::End) => {
            return Err(Outcome::Reset(H3ProtocolError::new(
                frame::H3_REQUEST_INCOMPLETE,
                "request stream ended before HEADERS",
            )))
        }
        Err(e) if e.code == frame::H3_EXCESSIVE_LOAD => {
            return Err(respond(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request header section over {max} bytes (Limits::max_head_bytes)\n"),
            ))
        }
        Err(e) => return Err(Outcome::Reset(e)),
    };
    let fields = match qpack::decode(&block, max, cfg.limits.max_headers) {
        Ok(f) => f,
        Err(e @ qpack::QpackError::TooLarge { .. })
        | Err(e @ qpack::QpackError::TooMany { .. }) => {
            return Err(respond(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("{e} (Limits::max_head_bytes / max_headers)\n"),
            ))
        }
        Err(e) => {
            return Err(Outcome::Close(H3ProtocolError::new(
                frame::QPACK_DECOMPRESSION_FAILED,
                e.to_string(),
            )))
        }
    };
    parse_request(fields)
        .map_err(|why| Outcome::Reset(H3ProtocolError::new(frame::H3_MESSAGE_ERROR, why)))
}

/// Decide what to do with a request head: a WebSocket (the negotiation to
/// apply) or an answer. A request with `:protocol` is an extended CONNECT,
/// checked by [`accept_websocket`]; one it finds malformed
/// is reset (RFC 9114 §4.1.2). Other requests are not served here.
///
/// [`accept_websocket`]: switchyard_proto::extended_connect::ExtendedConnect::accept_websocket
fn route(head: &RequestHead, cfg: &AcceptConfig) -> Result<ServerNegotiation, Outcome> {
    let malformed = |why: &str| Outcome::Reset(H3ProtocolError::new(frame::H3_MESSAGE_ERROR, why));
    if head.protocol.is_some() {
        return head
            .extended_connect()
            .accept_websocket(&cfg.handshake)
            .map_err(|rej| match rej.error {
                HandshakeError::ExtendedConnect(_) => malformed(&rej.error.to_string()),
                error => {
                    let (parts, ()) = rej.response.into_parts();
                    Outcome::Respond {
                        status: parts.status,
                        headers: parts.headers,
                        body: format!("{error}\n"),
                    }
                }
            });
    }
    match head.method {
        Method::CONNECT => {
            if head.scheme.is_some() || head.path.is_some() {
                return Err(malformed(
                    "CONNECT without :protocol must not have :scheme or :path",
                ));
            }
            Err(respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT tunnels are not served here; a WebSocket needs extended CONNECT \
                 with :protocol websocket (RFC 9220)\n",
            ))
        }
        Method::GET | Method::HEAD => {
            if head.scheme.is_none() || head.path.is_none() {
                return Err(malformed("request without :scheme or :path"));
            }
            Err(respond(
                StatusCode::NOT_FOUND,
                "this HTTP/3 listener only serves WebSockets (extended CONNECT with \
                 :protocol websocket, RFC 9220)\n",
            ))
        }
        _ => Err(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "only extended CONNECT (WebSocket, RFC 9220) is served here\n",
        )),
    }
}

async fn refuse(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) {
    if send_head(send, status, headers, body.as_bytes())
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
    // We do not read a refused request's body.
    let _ = recv.stop(quinn::VarInt::from_u32(frame::H3_NO_ERROR));
    // Let the response leave before the stream handles drop.
    let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
}

/// Whether a request may be offered to the [`RequestHook`]: an extended
/// CONNECT that passes RFC 8441's checks, or a request other than CONNECT
/// with `:scheme` and `:path` (RFC 9114 §4.3.1). Others are answered by
/// [`route`].
fn well_formed(head: &RequestHead) -> bool {
    if head.protocol.is_some() {
        return head.extended_connect().check().is_ok();
    }
    head.method != Method::CONNECT && head.scheme.is_some() && head.path.is_some()
}

fn to_request(head: &RequestHead, peer: std::net::SocketAddr) -> Request<()> {
    let uri = Uri::builder()
        .scheme(head.scheme.as_deref().unwrap_or("https"))
        .authority(head.authority.as_deref().unwrap_or("localhost"))
        .path_and_query(head.path.as_deref().unwrap_or("/"))
        .build()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let mut req = Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_3;
    *req.headers_mut() = head.headers.clone();
    req.extensions_mut().insert(peer);
    if let Some(p) = &head.protocol {
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from(p.as_str()));
    }
    req
}

async fn handle_request(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    ctx: Arc<Ctx>,
    keep: Arc<dyn std::any::Any + Send + Sync>,
) {
    let cfg = &ctx.cfg;
    let mut reader = FrameReader::new(recv);
    let head = match tokio::time::timeout(
        cfg.limits.handshake_timeout,
        read_request_head(&mut reader, cfg),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Outcome::Reset(H3ProtocolError::new(
            frame::H3_REQUEST_INCOMPLETE,
            "request HEADERS did not arrive within Limits::handshake_timeout",
        ))),
    };
    if let (Ok(h), Some(hook)) = (&head, &ctx.requests) {
        if well_formed(h) {
            let req = to_request(h, conn.remote_address());
            if let Some(handler) = hook(&req) {
                handler(req, PendingStream { send, reader, keep });
                return;
            }
        }
    }
    let decision = head.and_then(|h| route(&h, cfg).map(|n| (h, n)));
    match decision {
        Ok((head, negotiation)) => {
            let req = to_request(&head, conn.remote_address());
            if let Some(hook) = &ctx.route {
                if let Err((status, body)) = hook(&req) {
                    let body = if body.ends_with('\n') || body.is_empty() {
                        body
                    } else {
                        format!("{body}\n")
                    };
                    refuse(
                        &mut send,
                        &mut reader.inner,
                        status,
                        &HeaderMap::new(),
                        &body,
                    )
                    .await;
                    return;
                }
            }
            if send_head(&mut send, StatusCode::OK, &negotiation.headers, b"")
                .await
                .is_err()
            {
                return;
            }
            let wsconn = server_connection(&negotiation.negotiated, cfg);
            let leftover = std::mem::replace(&mut reader.buf, BytesMut::new());
            let stream = H3Stream::new(send, reader.inner, leftover, Some(keep));
            let ws =
                WebSocket::from_raw(stream, wsconn, &[]).with_negotiated(negotiation.negotiated);
            (ctx.cb)(req, ws);
        }
        Err(Outcome::Respond {
            status,
            headers,
            body,
        }) => refuse(&mut send, &mut reader.inner, status, &headers, &body).await,
        Err(Outcome::Reset(e)) => {
            tracing::debug!("HTTP/3 request stream reset: {e}");
            let _ = send.reset(quinn::VarInt::from_u32(e.code));
            let _ = reader.inner.stop(quinn::VarInt::from_u32(e.code));
        }
        Err(Outcome::Close(e)) => {
            tracing::debug!("HTTP/3 connection error: {e}");
            close_with(&conn, &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_svc_names_the_udp_port() {
        assert_eq!(alt_svc(4433), "h3=\":4433\"; ma=86400");
    }
}

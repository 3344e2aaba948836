//! WebSocket over HTTP/2 (RFC 8441, extended CONNECT).
//!
//! * Server: [`server_builder`] is the hardened hyper HTTP/2 builder (it
//!   sends `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1` when asked, and sets the
//!   flood limits explicitly); [`accept`] answers an extended CONNECT inside
//!   the hyper service ([`crate::server::upgrade`] covers HTTP/1.1 and HTTP/2).
//! * Client: [`H2Connection`] is one HTTP/2 connection (TLS with ALPN `h2`,
//!   or cleartext with prior knowledge) that carries many WebSockets, one per
//!   stream; [`connect_h2`] opens one WebSocket on a fresh connection.
//!
//! The WebSocket on a stream is the same [`WebSocket`] state machine as over
//! HTTP/1.1, with the same limits, subprotocols and permessage-deflate.
//!
//! # HTTP/2 limits (both roles)
//!
//! | setting                                   | value                      | why |
//! |-------------------------------------------|----------------------------|-----|
//! | initial stream window                     | [`STREAM_WINDOW`] (256 KiB) | one slow WebSocket holds at most this much of the peer's data |
//! | initial connection window                 | [`CONNECTION_WINDOW`] (4 MiB) | 16 stalled streams before the others slow down |
//! | max concurrent streams (server)           | [`MAX_CONCURRENT_STREAMS`] (256) | WebSockets per connection |
//! | max header list size                      | `Limits::max_head_bytes`   | same bound as the HTTP/1.1 head; bounds CONTINUATION floods (h2 answers GOAWAY ENHANCE_YOUR_CALM past it) |
//! | max pending-accept reset streams (server) | [`MAX_PENDING_ACCEPT_RESETS`] (20) | rapid reset (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM |
//! | max local error reset streams             | [`MAX_LOCAL_ERROR_RESETS`] (256) | streams we reset for the peer's errors ("MadeYouReset"): GOAWAY ENHANCE_YOUR_CALM |
//! | max send buffer per stream                | [`MAX_SEND_BUF`] (256 KiB) | bounded queued output per stream |
//! | keep-alive PING (server)                  | every 30 s, 20 s timeout   | dead peers are dropped |

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use switchyard_proto::handshake::{self, HandshakeError, Rejection};
use switchyard_proto::{Connection, Limits, Role};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::client::{tls_error, ClientBuilder, MaybeTlsStream, Target};
use crate::error::{Deadline, Error, H2Error};
use crate::server::{accept_extended_connect, AcceptConfig, UpgradeBody, UpgradeFut};
use crate::websocket::WebSocket;

/// Initial flow-control window of each stream (both roles).
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// Initial flow-control window of the whole connection (both roles).
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Streams (WebSockets) a server lets one connection open at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams the peer may open and reset before we accept them (rapid reset).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams we may reset because of the peer's errors before GOAWAY.
pub const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Output queued per stream before the writer waits.
pub const MAX_SEND_BUF: usize = 256 * 1024;

/// The client's WebSocket on an HTTP/2 stream.
pub type H2WebSocket = WebSocket<H2Stream>;

/// Resolves to the server's [`WebSocket`] once hyper hands over the stream.
pub type H2UpgradeFut = UpgradeFut;

// ---------------------------------------------------------------- server

/// The hardened hyper HTTP/2 server builder (see the module's limit table).
/// `websocket`: send `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1` (only on
/// listeners that serve WebSocket). `limits.max_head_bytes` bounds the
/// header list (the HPACK-decoded request head).
pub fn server_builder(
    websocket: bool,
    limits: &Limits,
) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(header_list_limit(limits))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
        .max_send_buf_size(MAX_SEND_BUF)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    if websocket {
        b.enable_connect_protocol();
    }
    b
}

fn header_list_limit(limits: &Limits) -> u32 {
    u32::try_from(limits.max_head_bytes.max(1024)).unwrap_or(u32::MAX)
}

/// Accept a WebSocket over an HTTP/2 extended CONNECT (RFC 8441) inside a
/// hyper service served by [`server_builder`]`(true, ..)`: the HTTP/2 half
/// of [`crate::server::upgrade`], for a service that serves HTTP/2 only and
/// refuses anything else (an HTTP/1.1 request included) with a 400.
///
/// Returns the 200 response to give back to hyper and a future that resolves
/// to the WebSocket on the stream. The request is checked by
/// [`ExtendedConnect::accept_websocket`](switchyard_proto::extended_connect::ExtendedConnect::accept_websocket) (its module has the table of
/// refusals: 400 for a malformed extended CONNECT or a bad
/// `Sec-WebSocket-Version`, 501 for another `:protocol`, 403 / 400 for the
/// origin and extensions); answer a refusal with
/// [`crate::server::rejection_response`].
///
/// `Upgrade`/`Connection` headers make an HTTP/2 request malformed; hyper
/// (h2) resets such streams before the service sees them.
#[allow(clippy::result_large_err)]
pub fn accept<B>(
    req: &mut hyper::Request<B>,
    cfg: &AcceptConfig,
) -> Result<(hyper::Response<UpgradeBody>, H2UpgradeFut), Rejection> {
    accept_extended_connect(req, cfg)
}

// ---------------------------------------------------------------- client

/// One HTTP/2 connection that carries many WebSockets (one per stream).
/// Cheap to clone: clones share the connection. The connection lives while a
/// clone or a WebSocket on it does.
#[derive(Clone)]
pub struct H2Connection {
    send: SendRequest<Empty<Bytes>>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    settings: watch::Receiver<Settings>,
}

/// What the driver task has seen of the server's SETTINGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settings {
    Pending,
    Received { connect_protocol: bool },
    Closed,
}

impl std::fmt::Debug for H2Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Connection")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("closed", &self.send.is_closed())
            .finish()
    }
}

impl H2Connection {
    /// Open an HTTP/2 connection to the host of a `wss://` (TLS, ALPN `h2`)
    /// or `ws://` (cleartext, prior knowledge) URL, and wait for the server's
    /// SETTINGS, all within `Limits::handshake_timeout`. Fails when the
    /// server does not enable extended CONNECT (RFC 8441).
    pub async fn connect(url: &str, builder: &ClientBuilder) -> Result<H2Connection, Error> {
        let target = Target::parse(url)?;
        let timeout = builder.get_limits().handshake_timeout;
        Deadline::OpeningHandshake
            .bound(timeout, Self::connect_inner(url, &target, builder))
            .await
    }

    async fn connect_inner(
        url: &str,
        target: &Target,
        builder: &ClientBuilder,
    ) -> Result<H2Connection, Error> {
        let authority = target.uri.authority().cloned().ok_or_else(|| Error::Url {
            url: url.to_owned(),
            why: "missing host",
        })?;
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        tcp.set_nodelay(true)?;
        let (io, scheme) = if target.tls {
            let mut cfg = (*builder.tls_config()?).clone();
            cfg.alpn_protocols = vec![b"h2".to_vec()];
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
            let name = ServerName::try_from(target.host.clone()).map_err(|_| Error::Url {
                url: url.to_owned(),
                why: "the host is not a valid DNS name or IP address for TLS",
            })?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| tls_error(&target.host, e))
                .map_err(|e| match e {
                    Error::Tls {
                        host,
                        source:
                            rustls::Error::AlertReceived(
                                rustls::AlertDescription::NoApplicationProtocol,
                            ),
                    } => H2Error::NoAlpnH2 {
                        host,
                        chosen: "none: it refused h2 with a no_application_protocol alert".into(),
                    }
                    .into(),
                    other => other,
                })?;
            let io = MaybeTlsStream::Tls(Box::new(tls));
            if io.alpn_protocol() != Some(b"h2".as_slice()) {
                let chosen = match io.alpn_protocol() {
                    None => "no protocol".to_owned(),
                    Some(p) => format!("{:?}", String::from_utf8_lossy(p)),
                };
                return Err(H2Error::NoAlpnH2 {
                    host: target.host.clone(),
                    chosen,
                }
                .into());
            }
            (io, http::uri::Scheme::HTTPS)
        } else {
            (MaybeTlsStream::Plain(tcp), http::uri::Scheme::HTTP)
        };
        Self::start(io, scheme, authority, builder).await
    }

    /// Start HTTP/2 on a connection that is already open: TLS on which ALPN
    /// chose `h2` (see [`crate::auto`]) for a `wss://` URL, or cleartext
    /// (prior knowledge) for `ws://`. Waits for the server's SETTINGS and
    /// fails with [`H2Error::NoConnectProtocol`] when they do not enable
    /// extended CONNECT; all within `Limits::handshake_timeout`.
    pub async fn handshake<I>(
        io: I,
        url: &str,
        builder: &ClientBuilder,
    ) -> Result<H2Connection, Error>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let target = Target::parse(url)?;
        let authority = target.uri.authority().cloned().ok_or_else(|| Error::Url {
            url: url.to_owned(),
            why: "missing host",
        })?;
        let scheme = if target.tls {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        let timeout = builder.get_limits().handshake_timeout;
        Deadline::OpeningHandshake
            .bound(timeout, Self::start(io, scheme, authority, builder))
            .await
    }

    async fn start<I>(
        io: I,
        scheme: http::uri::Scheme,
        authority: http::uri::Authority,
        builder: &ClientBuilder,
    ) -> Result<H2Connection, Error>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let limits = builder.get_limits();
        let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .adaptive_window(false)
            .max_header_list_size(header_list_limit(limits))
            .max_send_buf_size(MAX_SEND_BUF)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESETS)
            // No stream may open before the server's SETTINGS arrive: that is
            // how we see them arrive (see `wait_for_settings`).
            .initial_max_send_streams(0);
        let (send, conn) = b
            .handshake::<_, Empty<Bytes>>(TokioIo::new(io))
            .await
            .map_err(|source| H2Error::Connection {
                authority: authority.to_string(),
                source,
            })?;
        let (settings_tx, settings) = watch::channel(Settings::Pending);
        let auth = authority.to_string();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            // hyper applies the server's SETTINGS in a task of its own and
            // wakes nobody: look at them on a short backoff until they are
            // there. Until the first SETTINGS the stream budget is 0
            // (`initial_max_send_streams(0)`); after it, it is the server's
            // SETTINGS_MAX_CONCURRENT_STREAMS (unlimited when absent).
            let mut pause = Duration::from_micros(100);
            let res = loop {
                tokio::select! {
                    r = conn.as_mut() => break r,
                    _ = tokio::time::sleep(pause) => {}
                }
                if conn.current_max_send_streams() > 0 {
                    let _ = settings_tx.send(Settings::Received {
                        connect_protocol: conn.is_extended_connect_protocol_enabled(),
                    });
                    break conn.as_mut().await;
                }
                pause = (pause * 2).min(Duration::from_millis(10));
            };
            settings_tx.send_if_modified(|s| {
                let changed = *s == Settings::Pending;
                if changed {
                    *s = Settings::Closed;
                }
                changed
            });
            if let Err(e) = res {
                tracing::debug!(authority = %auth, error = %e, "HTTP/2 connection ended");
            }
        });
        let h2 = H2Connection {
            send,
            scheme,
            authority,
            settings,
        };
        h2.wait_for_settings().await?;
        Ok(h2)
    }

    /// Wait until the server's first SETTINGS frame has been applied, then
    /// check SETTINGS_ENABLE_CONNECT_PROTOCOL.
    async fn wait_for_settings(&self) -> Result<(), Error> {
        let mut rx = self.settings.clone();
        // The sender lives as long as the driver task; it sets `Closed`
        // before it goes, so a dropped sender also means closed.
        let _ = rx.wait_for(|s| *s != Settings::Pending).await;
        self.check_connect_protocol()
    }

    fn check_connect_protocol(&self) -> Result<(), Error> {
        let authority = self.authority.to_string();
        match *self.settings.borrow() {
            Settings::Received {
                connect_protocol: true,
            } => Ok(()),
            Settings::Received {
                connect_protocol: false,
            } => Err(H2Error::NoConnectProtocol { authority }.into()),
            Settings::Pending | Settings::Closed => {
                Err(H2Error::ClosedBeforeSettings { authority }.into())
            }
        }
    }

    /// The HTTP version of this connection (for reporting).
    pub fn version(&self) -> Version {
        Version::HTTP_2
    }

    /// `true` once the connection is closed (no new WebSocket can open).
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// Open a WebSocket on a new stream: extended CONNECT to
    /// `path_and_query` (e.g. `/chat?room=1`) with `builder`'s subprotocols,
    /// deflate offer, origin and headers; expects 200, within
    /// `Limits::handshake_timeout`. The response's version is HTTP/2.
    pub async fn websocket(
        &self,
        path_and_query: &str,
        builder: &ClientBuilder,
    ) -> Result<(H2WebSocket, Response<()>), Error> {
        let timeout = builder.get_limits().handshake_timeout;
        Deadline::OpeningHandshake
            .bound(timeout, self.websocket_inner(path_and_query, builder))
            .await
    }

    async fn websocket_inner(
        &self,
        path_and_query: &str,
        builder: &ClientBuilder,
    ) -> Result<(H2WebSocket, Response<()>), Error> {
        let hs_cfg = builder.handshake_config();
        let (headers, host) = handshake::extended_connect_headers(hs_cfg)?;
        let pq = if path_and_query.is_empty() {
            "/"
        } else {
            path_and_query
        };
        let authority = match host {
            Some(h) => h
                .to_str()
                .ok()
                .and_then(|h| h.parse().ok())
                .ok_or_else(|| {
                    HandshakeError::Config(format!(
                        "the Host header {h:?} is not a valid :authority for HTTP/2"
                    ))
                })?,
            None => self.authority.clone(),
        };
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(authority)
            .path_and_query(pq)
            .build()
            .map_err(|_| HandshakeError::BadUri(pq.to_owned()))?;
        let uri_text = uri.to_string();
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = headers;
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));

        self.check_connect_protocol()?;
        let mut send = self.send.clone();
        send.ready().await.map_err(|source| H2Error::Connection {
            authority: self.authority.to_string(),
            source,
        })?;
        let mut resp = send
            .send_request(req)
            .await
            .map_err(|source| H2Error::Request {
                uri: uri_text.clone(),
                source,
            })?;
        if resp.status() != StatusCode::OK {
            let (parts, _body) = resp.into_parts();
            let status = parts.status;
            return Err(H2Error::Refused {
                uri: uri_text,
                status,
                hint: crate::refusal::hint(status, switchyard_proto::HttpVersion::Http2),
                response: Box::new(Response::from_parts(parts, ())),
            }
            .into());
        }
        let negotiated = handshake::client_negotiate(resp.headers(), hs_cfg)?;
        let upgraded = hyper::upgrade::on(&mut resp)
            .await
            .map_err(H2Error::Upgrade)?;
        let (parts, _body) = resp.into_parts();
        let conn = Connection::negotiated(
            Role::Client,
            builder.get_limits().clone(),
            &negotiated,
            hs_cfg.deflate.as_ref(),
        );
        let stream = H2Stream {
            io: TokioIo::new(upgraded),
        };
        let ws = WebSocket::from_raw(stream, conn, &[]).with_negotiated(negotiated);
        Ok((ws, Response::from_parts(parts, ())))
    }
}

/// The client's end of a WebSocket's HTTP/2 stream: hyper's upgraded stream,
/// except that a reset without error is not a failure.
///
/// A server that has sent its whole response (for a WebSocket: its close
/// frame, then END_STREAM) may reset the stream with NO_ERROR to stop the
/// rest of the request, and the client must not take that as a failure
/// (RFC 9113 §8.1). Servers do so when they drop a closed WebSocket before
/// the client's END_STREAM arrived (the switchyard server does). hyper
/// reports that reset as the error of the next write, flush or shutdown, even
/// when all that was written before it had gone out: the flush of our close
/// frame, if still waiting, would fail a clean close. Here the reset ends our
/// sending without error: flush and shutdown succeed (a write still fails),
/// and reading yields all the server sent, then the end.
#[derive(Debug)]
pub struct H2Stream {
    io: TokioIo<Upgraded>,
}

/// Whether a write error of hyper's upgraded stream is the peer's
/// RST_STREAM with NO_ERROR.
fn is_reset_without_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<hyper::Error>())
        .and_then(std::error::Error::source)
        .and_then(|e| e.downcast_ref::<::h2::Error>())
        .and_then(::h2::Error::reason)
        == Some(::h2::Reason::NO_ERROR)
}

/// `Ok` for the server's reset without error, any other error as it is.
fn finished_unless_failed(r: Poll<std::io::Result<()>>) -> Poll<std::io::Result<()>> {
    match r {
        Poll::Ready(Err(e)) if is_reset_without_error(&e) => Poll::Ready(Ok(())),
        other => other,
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        finished_unless_failed(Pin::new(&mut self.io).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        finished_unless_failed(Pin::new(&mut self.io).poll_shutdown(cx))
    }
}

/// Open one WebSocket over HTTP/2 on a new connection (see
/// [`H2Connection`]): `wss://` negotiates `h2` by ALPN, `ws://` uses HTTP/2
/// with prior knowledge. The response's `version()` is `HTTP/2`.
pub async fn connect_h2(
    url: &str,
    builder: &ClientBuilder,
) -> Result<(H2WebSocket, Response<()>), Error> {
    let target = Target::parse(url)?;
    let pq = target
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let conn = H2Connection::connect(url, builder).await?;
    conn.websocket(&pq, builder).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::SEC_WEBSOCKET_VERSION;
    use http::HeaderValue;
    use switchyard_proto::ServerConfig;

    fn h2_request(method: Method, protocol: Option<&'static str>) -> hyper::Request<()> {
        let mut req = hyper::Request::new(());
        *req.method_mut() = method;
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = "https://example.com/chat".parse().unwrap();
        req.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        if let Some(p) = protocol {
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static(p));
        }
        req
    }

    fn status_of(mut req: hyper::Request<()>) -> StatusCode {
        match accept(&mut req, &AcceptConfig::default()) {
            Ok((resp, _)) => resp.status(),
            Err(rej) => rej.response.status(),
        }
    }

    #[test]
    fn extended_connect_websocket_is_accepted_in_any_case() {
        assert_eq!(
            status_of(h2_request(Method::CONNECT, Some("websocket"))),
            StatusCode::OK
        );
        assert_eq!(
            status_of(h2_request(Method::CONNECT, Some("WebSocket"))),
            StatusCode::OK
        );
    }

    #[test]
    fn other_protocol_is_501() {
        let mut req = h2_request(Method::CONNECT, Some("connect-udp"));
        let rej = accept(&mut req, &AcceptConfig::default()).unwrap_err();
        assert_eq!(rej.response.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(
            rej.error,
            HandshakeError::UnsupportedProtocol("connect-udp".into())
        );
    }

    #[test]
    fn connect_without_protocol_and_wrong_method_are_400() {
        assert_eq!(
            status_of(h2_request(Method::CONNECT, None)),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(h2_request(Method::GET, None)),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(h2_request(Method::POST, Some("websocket"))),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn http1_request_is_400() {
        let mut req = h2_request(Method::CONNECT, Some("websocket"));
        *req.version_mut() = Version::HTTP_11;
        assert_eq!(status_of(req), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn negotiation_headers_are_in_the_200() {
        let cfg = AcceptConfig::default().handshake(ServerConfig::default().subprotocols(["chat"]));
        let mut req = h2_request(Method::CONNECT, Some("websocket"));
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        let (resp, _) = accept(&mut req, &cfg).unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    }

    #[test]
    fn header_list_limit_follows_head_limit() {
        let l = Limits::default().max_head_bytes(8192);
        assert_eq!(header_list_limit(&l), 8192);
        let tiny = Limits::default().max_head_bytes(10);
        assert_eq!(header_list_limit(&tiny), 1024);
    }
}

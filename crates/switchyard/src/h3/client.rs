//! The HTTP/3 client side: one QUIC connection ([`H3Connection`]) carrying
//! any number of WebSockets, each an extended CONNECT `:protocol websocket`
//! (RFC 9220) on its own request stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::Response;
use switchyard_proto::handshake::{client_negotiate, extended_connect_headers};
use switchyard_proto::{Connection, Role};
use tokio::sync::watch;

use super::connection::{self, ControlEvent};
use super::frame::{self, FrameReader, PeerSettings, ReadFrame};
use super::message::H3Body;
use super::stream::{DataReader, H3Stream};
use super::{head, qpack};
use crate::client::ClientBuilder;
use crate::error::{Deadline, Error, H3Error, H3ProtocolError};
use crate::websocket::WebSocket;

/// What keeps a client connection's HTTP/3 machinery alive: the endpoint
/// and our control stream. The [`H3Connection`] and every [`H3Stream`] hold
/// it; when the last of them goes, the connection is closed (H3_NO_ERROR),
/// which also ends the background task reading the server's streams.
struct ClientGuts {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
    control: std::sync::Mutex<Option<quinn::SendStream>>,
}

impl Drop for ClientGuts {
    fn drop(&mut self) {
        self.conn
            .close(quinn::VarInt::from_u32(frame::H3_NO_ERROR), b"client done");
    }
}

/// One HTTP/3 connection to a server, carrying any number of WebSockets
/// (each on its own request stream; QUIC flow control is per stream, so a
/// slow reader on one does not stall the others).
pub struct H3Connection {
    conn: quinn::Connection,
    guts: Arc<ClientGuts>,
    settings: watch::Receiver<Option<PeerSettings>>,
    /// The stream ID of the server's last GOAWAY.
    goaway: watch::Receiver<Option<u64>>,
    builder: ClientBuilder,
    authority: String,
    scheme_https: bool,
}

impl std::fmt::Debug for H3Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Connection")
            .field("remote", &self.conn.remote_address())
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

/// A parsed `wss://` URL.
struct H3Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<H3Target, Error> {
    let bad = |why| Error::Url {
        url: url.to_owned(),
        why,
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("not a valid URI"))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("wss") || s.eq_ignore_ascii_case("https") => {}
        Some(s) if s.eq_ignore_ascii_case("ws") => {
            return Err(bad("HTTP/3 always uses TLS: use wss://"))
        }
        _ => return Err(bad("the scheme must be wss:// for HTTP/3")),
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("missing host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let authority = match uri.port_u16() {
        Some(p) if p != 443 => format!("{host}:{p}"),
        _ => host.to_string(),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let path = if path.is_empty() { "/" } else { path }.to_string();
    Ok(H3Target {
        host,
        port,
        authority,
        path,
    })
}

impl H3Connection {
    /// Open a QUIC connection to the host and port of `url` (`wss://`), with
    /// `builder`'s TLS roots (ALPN `h3`), limits and handshake options, and
    /// wait for the server's SETTINGS. Within `Limits::handshake_timeout`.
    pub async fn connect(url: &str, builder: &ClientBuilder) -> Result<H3Connection, Error> {
        let target = parse_url(url)?;
        let timeout = builder.get_limits().handshake_timeout;
        Deadline::OpeningHandshake
            .bound(timeout, Self::connect_inner(url, &target, builder))
            .await
    }

    async fn connect_inner(
        url: &str,
        target: &H3Target,
        builder: &ClientBuilder,
    ) -> Result<H3Connection, Error> {
        let addr = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await?
            .next()
            .ok_or_else(|| Error::Url {
                url: url.to_owned(),
                why: "the host name resolved to no address",
            })?;
        let mut tls = (*builder.tls_config()?).clone();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        tls.enable_early_data = false;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| {
            H3Error::Config(format!(
                "the TLS client configuration cannot be used for QUIC: {e}"
            ))
        })?;
        let mut qcfg = quinn::ClientConfig::new(Arc::new(crypto));
        qcfg.transport_config(Arc::new(connection::transport_config(true)));
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|e| H3Error::Bind {
            addr: bind,
            source: e,
        })?;
        let connecting = endpoint
            .connect_with(qcfg, addr, &target.host)
            .map_err(H3Error::from)?;
        let conn = connecting.await.map_err(|e| match e {
            quinn::ConnectionError::TransportError(ref t)
                if t.code.to_string().contains("crypto") || t.reason.contains("certificate") =>
            {
                Error::Io(std::io::Error::other(format!(
                    "TLS with {} over QUIC failed: {e}. For a self-signed certificate add its CA \
                     with ClientBuilder::add_ca_file",
                    target.host
                )))
            }
            other => H3Error::Connection(other).into(),
        })?;
        // From here on, any failure (or the caller's timeout dropping this
        // future) drops `guts`, which closes the connection.
        let guts = Arc::new(ClientGuts {
            conn: conn.clone(),
            _endpoint: endpoint,
            control: std::sync::Mutex::new(None),
        });
        let control =
            connection::open_control(&conn, builder.get_limits().max_head_bytes, false).await?;
        if let Ok(mut slot) = guts.control.lock() {
            *slot = Some(control);
        }
        let (tx, mut settings) = watch::channel(None);
        let (goaway_tx, goaway) = watch::channel(None);
        tokio::spawn(connection::run_uni_streams(
            conn.clone(),
            true,
            move |e| match e {
                ControlEvent::Settings(s) => {
                    let _ = tx.send(Some(s));
                }
                ControlEvent::GoAway(id) => {
                    let _ = goaway_tx.send(Some(id));
                }
            },
        ));
        if settings.wait_for(Option::is_some).await.is_err() {
            // The reader ended first: the connection failed.
            let reason = conn.close_reason();
            return Err(match reason {
                Some(e) => H3Error::Connection(e).into(),
                None => H3Error::NoSettings.into(),
            });
        }
        Ok(H3Connection {
            conn,
            guts,
            settings,
            goaway,
            builder: builder.clone(),
            authority: target.authority.clone(),
            scheme_https: true,
        })
    }

    /// The stream ID of the server's GOAWAY (RFC 9114 §5.2), once it sent
    /// one: the server is shutting down, and no new WebSocket can be opened
    /// on this connection (open a new connection to get another).
    pub fn going_away(&self) -> Option<u64> {
        *self.goaway.borrow()
    }

    /// The server's SETTINGS, once received.
    pub fn peer_settings(&self) -> Option<PeerSettings> {
        *self.settings.borrow()
    }

    /// The server's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The underlying QUIC connection.
    pub fn quic(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Close the connection (every WebSocket on it ends) with H3_NO_ERROR.
    pub fn close(&self) {
        self.conn.close(
            quinn::VarInt::from_u32(frame::H3_NO_ERROR),
            b"client closing",
        );
    }

    /// Open a WebSocket on `path` (e.g. `/chat?room=1`) with an extended
    /// CONNECT. A non-2xx answer is [`Error::UpgradeRefused`]; a bad
    /// subprotocol or extension answer is [`Error::Handshake`].
    pub async fn websocket(
        &self,
        path: &str,
    ) -> Result<(WebSocket<H3Stream>, Response<()>), Error> {
        let timeout = self.builder.get_limits().handshake_timeout;
        Deadline::OpeningHandshake
            .bound(timeout, self.websocket_inner(path))
            .await
    }

    async fn websocket_inner(
        &self,
        path: &str,
    ) -> Result<(WebSocket<H3Stream>, Response<()>), Error> {
        let cfg = self.builder.handshake_config();
        let (headers, authority) = extended_connect_headers(cfg)?;
        let authority = authority.map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned());
        let (stream, response) = self
            .extended_connect_inner("websocket", authority.as_deref(), path, &headers)
            .await?;
        let negotiated = client_negotiate(response.headers(), cfg)?;
        let conn = Connection::negotiated(
            Role::Client,
            self.builder.get_limits().clone(),
            &negotiated,
            cfg.deflate.as_ref(),
        );
        let ws = WebSocket::from_raw(stream, conn, &[]).with_negotiated(negotiated);
        Ok((ws, response))
    }

    /// A raw extended CONNECT (RFC 8441 §4 / RFC 9220) for any `:protocol`,
    /// with `headers` as they are: the 2xx response and the request stream.
    /// A non-2xx answer is [`Error::UpgradeRefused`]. Within
    /// `Limits::handshake_timeout`. [`H3Connection::websocket`] is this with
    /// `:protocol websocket` and the WebSocket headers.
    pub async fn extended_connect(
        &self,
        protocol: &str,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<(H3Stream, Response<()>), Error> {
        let timeout = self.builder.get_limits().handshake_timeout;
        Deadline::OpeningHandshake
            .bound(
                timeout,
                self.extended_connect_inner(protocol, None, path, headers),
            )
            .await
    }

    async fn extended_connect_inner(
        &self,
        protocol: &str,
        authority: Option<&str>,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<(H3Stream, Response<()>), Error> {
        // RFC 9220 §3: extended CONNECT only after the server's SETTINGS
        // said it supports it.
        let mut rx = self.settings.clone();
        let settings = match rx.wait_for(Option::is_some).await {
            Ok(s) => (*s).unwrap_or_default(),
            Err(_) => return Err(H3Error::NoSettings.into()),
        };
        if !settings.enable_connect_protocol {
            return Err(H3Error::NoExtendedConnect.into());
        }
        if let Some(id) = self.going_away() {
            return Err(H3Error::GoingAway(id).into());
        }
        let authority = authority.unwrap_or(&self.authority);
        let path = if path.is_empty() { "/" } else { path };
        let scheme: &[u8] = if self.scheme_https { b"https" } else { b"http" };
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"CONNECT"),
            (b":protocol", protocol.as_bytes()),
            (b":scheme", scheme),
            (b":authority", authority.as_bytes()),
            (b":path", path.as_bytes()),
        ];
        fields.extend(
            headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        );
        let mut out = Vec::new();
        frame::encode_frame(&mut out, frame::HEADERS, &qpack::encode(fields));

        let (mut send, recv) = self.conn.open_bi().await.map_err(H3Error::from)?;
        send.write_all(&out)
            .await
            .map_err(|e| Error::Io(e.into()))?;
        let mut reader = FrameReader::new(recv);
        let (status, resp_headers) = self.read_response_head(&mut reader).await?;
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = http::Version::HTTP_3;
        *response.headers_mut() = resp_headers;

        if !status.is_success() {
            let body_preview = read_preview(&mut reader, 512).await;
            return Err(Error::UpgradeRefused {
                status,
                hint: crate::refusal::hint(status, switchyard_proto::HttpVersion::Http3),
                response: Box::new(response),
                body_preview,
            });
        }
        let leftover = std::mem::replace(&mut reader.buf, BytesMut::new());
        let keep: Arc<dyn std::any::Any + Send + Sync> = self.guts.clone();
        Ok((
            H3Stream::new(send, reader.inner, leftover, Some(keep)),
            response,
        ))
    }

    /// Read the final response's HEADERS on a request stream (1xx skipped).
    async fn read_response_head(
        &self,
        reader: &mut FrameReader<quinn::RecvStream>,
    ) -> Result<(http::StatusCode, http::HeaderMap), Error> {
        let limits = self.builder.get_limits();
        let known = |t: u64| t == frame::HEADERS || t == frame::DATA || t == frame::PUSH_PROMISE;
        loop {
            let block = match reader.next_frame(limits.max_head_bytes, known).await {
                Ok(ReadFrame::Frame {
                    ty: frame::HEADERS,
                    payload,
                }) => payload,
                Ok(ReadFrame::Frame { ty, .. }) => {
                    let e = H3ProtocolError::new(
                        frame::H3_FRAME_UNEXPECTED,
                        format!("frame type 0x{ty:x} before the response HEADERS"),
                    );
                    connection::close_with(&self.conn, &e);
                    return Err(H3Error::from(e).into());
                }
                Ok(ReadFrame::End) => {
                    return Err(H3Error::from(H3ProtocolError::new(
                        frame::H3_REQUEST_INCOMPLETE,
                        "the server ended the stream without a response",
                    ))
                    .into())
                }
                Err(e) => return Err(H3Error::from(e).into()),
            };
            let fields =
                qpack::decode(&block, limits.max_head_bytes, limits.max_headers).map_err(|e| {
                    H3Error::from(H3ProtocolError::new(
                        frame::QPACK_DECOMPRESSION_FAILED,
                        e.to_string(),
                    ))
                })?;
            let (status, h) = head::parse_response(fields)
                .map_err(|why| H3Error::from(H3ProtocolError::new(frame::H3_MESSAGE_ERROR, why)))?;
            // 1xx are interim: the final response follows.
            if status.is_informational() {
                continue;
            }
            return Ok((status, h));
        }
    }

    /// Send a plain request (any method but CONNECT; the URI's path and
    /// query are `:path`, `:authority` is the connection's) with its whole
    /// body, and return the response as soon as its head arrives; its body
    /// streams in as the server sends it (an event stream, say). Any status
    /// is a response. The head within `Limits::handshake_timeout`.
    pub async fn send_request(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<Response<H3Body>, Error> {
        let timeout = self.builder.get_limits().handshake_timeout;
        Deadline::OpeningHandshake
            .bound(timeout, self.send_request_inner(request))
            .await
    }

    async fn send_request_inner(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<Response<H3Body>, Error> {
        if let Some(id) = self.going_away() {
            return Err(H3Error::GoingAway(id).into());
        }
        let (parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let scheme: &[u8] = if self.scheme_https { b"https" } else { b"http" };
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", parts.method.as_str().as_bytes()),
            (b":scheme", scheme),
            (b":authority", self.authority.as_bytes()),
            (b":path", path.as_bytes()),
        ];
        fields.extend(
            parts
                .headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        );
        let mut out = Vec::new();
        frame::encode_frame(&mut out, frame::HEADERS, &qpack::encode(fields));
        if !body.is_empty() {
            frame::encode_frame(&mut out, frame::DATA, &body);
        }
        let (mut send, recv) = self.conn.open_bi().await.map_err(H3Error::from)?;
        send.write_all(&out)
            .await
            .map_err(|e| Error::Io(e.into()))?;
        // The request is complete; the stream stays open for the response.
        let _ = send.finish();
        let mut reader = FrameReader::new(recv);
        let (status, headers) = self.read_response_head(&mut reader).await?;
        let mut response = Response::new(H3Body::new(
            DataReader::new(reader.inner, reader.buf),
            Some(self.guts.clone()),
        ));
        *response.status_mut() = status;
        *response.version_mut() = http::Version::HTTP_3;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// The start of a refusal's body (DATA frames), for the error message.
async fn read_preview(reader: &mut FrameReader<quinn::RecvStream>, max: usize) -> String {
    let mut body = Vec::new();
    let fut = async {
        while body.len() < max {
            match reader.next_frame(64 * 1024, |t| t == frame::DATA).await {
                Ok(ReadFrame::Frame { payload, .. }) => {
                    let n = payload.len().min(max - body.len());
                    body.extend_from_slice(&payload[..n]);
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), fut).await;
    String::from_utf8_lossy(&body).into_owned()
}

/// Open a WebSocket over HTTP/3 to a `wss://` URL: one QUIC connection, one
/// extended CONNECT. To open several WebSockets on one connection use
/// [`H3Connection`].
pub async fn connect_h3(
    url: &str,
    builder: &ClientBuilder,
) -> Result<(WebSocket<H3Stream>, Response<()>), Error> {
    let target = parse_url(url)?;
    let conn = H3Connection::connect(url, builder).await?;
    conn.websocket(&target.path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("wss://localhost:4433/chat?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("localhost", 4433));
        assert_eq!(t.authority, "localhost:4433");
        assert_eq!(t.path, "/chat?x=1");
        let t = parse_url("wss://[::1]/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 443, "[::1]")
        );
        assert!(matches!(
            parse_url("ws://localhost/"),
            Err(Error::Url { .. })
        ));
        assert!(matches!(
            parse_url("http://localhost/"),
            Err(Error::Url { .. })
        ));
        assert!(matches!(parse_url("wss:///x"), Err(Error::Url { .. })));
    }
}

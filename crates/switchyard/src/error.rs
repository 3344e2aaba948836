//! The errors of the async layer: [`Error`], and the HTTP/2 and HTTP/3
//! errors it carries. Every module of the crate reports through these; this
//! module depends on none of them.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Response, StatusCode};
use switchyard_proto::handshake::HandshakeError;
use switchyard_proto::head::HeadError;
use switchyard_proto::{ProtocolError, SendError};

/// Everything that can go wrong on a WebSocket, from TCP to the closing handshake.
///
/// Messages say what happened, why, and what to try next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed (connection reset, broken pipe, DNS, refused...).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The peer violated RFC 6455 (or closed TCP without a close frame: code
    /// 1006). Our close frame with the code was sent if the transport allowed.
    #[error("WebSocket connection failed: {0}")]
    Protocol(#[from] ProtocolError),

    /// The opening handshake was refused or the answer was invalid.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(#[from] HandshakeError),

    /// The HTTP head could not be parsed or exceeded a limit.
    #[error("malformed HTTP head: {0}")]
    Head(#[from] HeadError),

    /// The request head did not arrive within `Limits::handshake_timeout`.
    #[error(
        "the request head did not arrive within {limit:?} (Limits::handshake_timeout); \
         the client is too slow or is not speaking HTTP"
    )]
    HeadTimeout {
        /// `Limits::handshake_timeout`.
        limit: Duration,
    },

    /// The peer closed the transport in the middle of the HTTP head.
    #[error(
        "the peer closed the connection after {got} bytes, before the end of the HTTP head; \
         it is probably not an HTTP/WebSocket peer, or something in between cut the connection"
    )]
    HeadEof {
        /// Bytes of the head that arrived.
        got: usize,
    },

    /// The server answered the upgrade request with something other than 101.
    #[error("server answered {status} instead of 101 Switching Protocols — {hint}")]
    UpgradeRefused {
        /// The status it answered.
        status: StatusCode,
        /// The full response head, for diagnostics.
        response: Box<http::Response<()>>,
        /// The first bytes of the body that arrived with the head (lossy UTF-8).
        body_preview: String,
        /// What the status usually means and what to do.
        hint: &'static str,
    },

    /// The connection is closed (or closing); nothing more can be sent.
    #[error("the WebSocket is closed; no more messages can be sent")]
    Closed,

    /// A message could not be queued (e.g. a control frame payload over 125 bytes).
    #[error("cannot send: {0}")]
    Send(SendError),

    /// A deadline of [`Limits`](switchyard_proto::Limits) passed: which one
    /// is the [`Deadline`].
    #[error(
        "timed out waiting for the {0} (Limits::{limit}); the peer is gone or too slow",
        limit = .0.limit()
    )]
    Timeout(Deadline),

    /// TLS failed (certificate verification, protocol).
    #[error(
        "TLS with {host} failed: {source}. If the server uses a self-signed or private-CA \
         certificate, add the CA with ClientBuilder::add_ca_file; \
         danger_accept_invalid_certs() is for tests only"
    )]
    Tls {
        /// The server name we verified against.
        host: String,
        /// What rustls reported.
        source: rustls::Error,
    },

    /// The TLS configuration could not be built (CA file unreadable, no roots).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),

    /// The URL cannot be used for a WebSocket.
    #[error("invalid WebSocket URL {url:?}: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },

    /// WebSocket over HTTP/2 (RFC 8441) failed: see [`H2Error`].
    #[error("WebSocket over HTTP/2: {0}")]
    H2(#[from] H2Error),

    /// WebSocket over HTTP/3 (RFC 9220) failed: see [`H3Error`].
    #[error("WebSocket over HTTP/3: {0}")]
    H3(#[from] H3Error),
}

impl Error {
    /// The HTTP status a server should answer with, when the error happened
    /// before the WebSocket was established: 400 (malformed), 408 (head
    /// timeout), 431 (head too large). `None` when no answer makes sense.
    pub fn http_status(&self) -> Option<StatusCode> {
        match self {
            Error::Head(e) => Some(e.status()),
            Error::HeadTimeout { .. } => Some(StatusCode::REQUEST_TIMEOUT),
            _ => None,
        }
    }

    /// The close code, for errors that ended an established connection.
    pub fn close_code(&self) -> Option<switchyard_proto::CloseCode> {
        match self {
            Error::Protocol(e) => Some(e.code),
            Error::Timeout(Deadline::Pong) => Some(switchyard_proto::CloseCode::INTERNAL_ERROR),
            _ => None,
        }
    }
}

/// Which deadline passed, in [`Error::Timeout`]. `Display` names what was
/// awaited ("pong", "opening handshake", "closing handshake").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deadline {
    /// The connection and the opening handshake (client), within
    /// `Limits::handshake_timeout`.
    OpeningHandshake,
    /// The peer's pong to our heartbeat ping, within `Limits::pong_timeout`.
    /// The connection was closed with 1011.
    Pong,
    /// The peer's close frame after ours, within `Limits::close_timeout`.
    ClosingHandshake,
}

impl Deadline {
    /// `fut`'s result, or `Error::Timeout(self)` when it takes longer than
    /// `limit`.
    pub(crate) async fn bound<T>(
        self,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(limit, fut)
            .await
            .unwrap_or(Err(Error::Timeout(self)))
    }

    /// The [`Limits`](switchyard_proto::Limits) field that sets it.
    pub fn limit(self) -> &'static str {
        match self {
            Deadline::OpeningHandshake => "handshake_timeout",
            Deadline::Pong => "pong_timeout",
            Deadline::ClosingHandshake => "close_timeout",
        }
    }
}

impl std::fmt::Display for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Deadline::OpeningHandshake => "opening handshake",
            Deadline::Pong => "pong",
            Deadline::ClosingHandshake => "closing handshake",
        })
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Closed => Error::Closed,
            other => Error::Send(other),
        }
    }
}

/// Why WebSocket over HTTP/2 failed. Messages say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum H2Error {
    /// The TLS server did not choose `h2` by ALPN.
    #[error(
        "the TLS server at {host} did not select HTTP/2 by ALPN (it chose {chosen}); it does \
         not speak HTTP/2 on this port, so connect over HTTP/1.1 instead"
    )]
    NoAlpnH2 {
        /// The server's host.
        host: String,
        /// What it chose instead (or "no ALPN").
        chosen: String,
    },

    /// The server's SETTINGS did not enable extended CONNECT.
    #[error(
        "the server at {authority} speaks HTTP/2 but did not send \
         SETTINGS_ENABLE_CONNECT_PROTOCOL = 1, so it does not accept WebSockets over HTTP/2 \
         (RFC 8441); connect over HTTP/1.1, or enable extended CONNECT on the server \
         (hyper: http2::Builder::enable_connect_protocol)"
    )]
    NoConnectProtocol {
        /// The server's `host:port`.
        authority: String,
    },

    /// The HTTP/2 connection could not be set up or was lost.
    #[error("the HTTP/2 connection to {authority} failed: {source}")]
    Connection {
        /// The server's `host:port`.
        authority: String,
        /// What hyper reported.
        source: hyper::Error,
    },

    /// The connection closed before the server's SETTINGS arrived.
    #[error("the server at {authority} closed the HTTP/2 connection before sending its SETTINGS; it is probably not an HTTP/2 server (for ws:// the server must accept HTTP/2 with prior knowledge)")]
    ClosedBeforeSettings {
        /// The server's `host:port`.
        authority: String,
    },

    /// The extended CONNECT was not answered (stream reset, connection lost).
    #[error("the extended CONNECT to {uri} failed: {source}")]
    Request {
        /// The request's URI.
        uri: String,
        /// What hyper reported.
        source: hyper::Error,
    },

    /// The server answered something else than 200.
    #[error(
        "the server answered {status} to the extended CONNECT for {uri} instead of 200 — {hint}"
    )]
    Refused {
        /// The request's URI.
        uri: String,
        /// The status it answered.
        status: StatusCode,
        /// What the status usually means and what to do.
        hint: &'static str,
        /// The full response head, for diagnostics.
        response: Box<Response<()>>,
    },

    /// The server answered 200 but hyper did not hand over the stream.
    #[error(
        "the server accepted the WebSocket but the HTTP/2 stream could not be taken over: {0}"
    )]
    Upgrade(hyper::Error),
}

/// Errors of the HTTP/3 layer. They reach [`crate::h3::connect_h3`] callers as
/// [`Error::Io`] with this as the inner error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum H3Error {
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr} for HTTP/3: {source}; is the port free (UDP)?")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the system refused.
        source: std::io::Error,
    },
    /// The TLS configuration cannot be used for QUIC.
    #[error("HTTP/3 configuration: {0}")]
    Config(String),
    /// The QUIC connection failed or was closed.
    #[error("QUIC connection failed: {0}; is an HTTP/3 server listening on that UDP port?")]
    Connection(#[from] quinn::ConnectionError),
    /// The QUIC connection could not be started.
    #[error("QUIC connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The peer broke an HTTP/3 rule.
    #[error(transparent)]
    Protocol(#[from] H3ProtocolError),
    /// The server's SETTINGS do not enable extended CONNECT.
    #[error(
        "the server does not allow extended CONNECT (no SETTINGS_ENABLE_CONNECT_PROTOCOL = 1): \
         it cannot carry WebSocket over HTTP/3; use HTTP/2 or HTTP/1.1"
    )]
    NoExtendedConnect,
    /// The connection ended before the server's SETTINGS.
    #[error("the server did not send its HTTP/3 SETTINGS in time")]
    NoSettings,
    /// The server is shutting down (GOAWAY with this stream ID).
    #[error(
        "the server sent GOAWAY (stream {0}): it is shutting down and takes no new request on \
         this connection; open a new connection"
    )]
    GoingAway(u64),
    /// A stream failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// An HTTP/3 error to close a connection or reset a stream with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/3 error 0x{code:x}: {reason}")]
pub struct H3ProtocolError {
    /// The HTTP/3 (RFC 9114 §8.1) or QPACK error code.
    pub code: u32,
    /// What happened.
    pub reason: String,
}

impl H3ProtocolError {
    pub(crate) fn new(code: u32, reason: impl Into<String>) -> Self {
        H3ProtocolError {
            code,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_for_head_errors() {
        assert_eq!(
            Error::HeadTimeout {
                limit: Duration::from_secs(1)
            }
            .http_status(),
            Some(StatusCode::REQUEST_TIMEOUT)
        );
        assert_eq!(Error::Closed.http_status(), None);
        assert_eq!(Error::HeadEof { got: 3 }.http_status(), None);
    }

    #[test]
    fn only_the_pong_deadline_has_a_close_code() {
        assert_eq!(
            Error::Timeout(Deadline::Pong).close_code(),
            Some(switchyard_proto::CloseCode::INTERNAL_ERROR)
        );
        for d in [Deadline::OpeningHandshake, Deadline::ClosingHandshake] {
            assert_eq!(Error::Timeout(d).close_code(), None, "{d}");
        }
    }

    #[test]
    fn timeout_messages_name_what_was_awaited() {
        assert_eq!(
            Error::Timeout(Deadline::Pong).to_string(),
            "timed out waiting for the pong (Limits::pong_timeout); the peer is gone or too slow"
        );
        assert_eq!(Deadline::OpeningHandshake.to_string(), "opening handshake");
        assert!(Error::Timeout(Deadline::ClosingHandshake)
            .to_string()
            .contains("closing handshake (Limits::close_timeout)"));
    }

    #[test]
    fn send_error_closed_maps_to_closed() {
        assert!(matches!(Error::from(SendError::Closed), Error::Closed));
        assert!(matches!(
            Error::from(SendError::ControlTooLong(200)),
            Error::Send(SendError::ControlTooLong(200))
        ));
    }
}

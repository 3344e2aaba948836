//! The one error type of the async layer.

use std::time::Duration;

use http::StatusCode;
use switchyard_proto::handshake::HandshakeError;
use switchyard_proto::head::HeadError;
use switchyard_proto::{ProtocolError, SendError};

/// Everything that can go wrong on a WebSocket, from TCP to the closing handshake.
///
/// Messages say what happened, why, and what to try next.
#[derive(Debug, thiserror::Error)]
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
    HeadTimeout { limit: Duration },

    /// The peer closed the transport in the middle of the HTTP head.
    #[error(
        "the peer closed the connection after {got} bytes, before the end of the HTTP head; \
         it is probably not an HTTP/WebSocket peer, or something in between cut the connection"
    )]
    HeadEof { got: usize },

    /// The server answered the upgrade request with something other than 101.
    #[error("server answered {status} instead of 101 Switching Protocols — {hint}")]
    UpgradeRefused {
        status: StatusCode,
        /// The full response head, for diagnostics.
        response: Box<http::Response<()>>,
        /// The first bytes of the body that arrived with the head (lossy UTF-8).
        body_preview: String,
        hint: &'static str,
    },

    /// The connection is closed (or closing); nothing more can be sent.
    #[error("the WebSocket is closed; no more messages can be sent")]
    Closed,

    /// A message could not be queued (e.g. a control frame payload over 125 bytes).
    #[error("cannot send: {0}")]
    Send(SendError),

    /// A deadline passed: "pong" (the peer did not answer a ping within
    /// `Limits::pong_timeout`), "closing handshake" (`Limits::close_timeout`),
    /// "opening handshake" (`Limits::handshake_timeout`).
    #[error("timed out waiting for the {0}; the peer is gone or too slow (see Limits)")]
    Timeout(&'static str),

    /// TLS failed (certificate verification, protocol).
    #[error(
        "TLS with {host} failed: {source}. If the server uses a self-signed or private-CA \
         certificate, add the CA with ClientBuilder::add_ca_file; \
         danger_accept_invalid_certs() is for tests only"
    )]
    Tls { host: String, source: rustls::Error },

    /// The TLS configuration could not be built (CA file unreadable, no roots).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),

    /// The URL cannot be used for a WebSocket.
    #[error("invalid WebSocket URL {url:?}: {why}")]
    Url { url: String, why: &'static str },

    /// WebSocket over HTTP/2 (RFC 8441) failed: see [`crate::h2::H2Error`].
    #[error("WebSocket over HTTP/2: {0}")]
    H2(#[from] crate::h2::H2Error),
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
            Error::Timeout("pong") => Some(switchyard_proto::CloseCode::INTERNAL_ERROR),
            _ => None,
        }
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
    fn send_error_closed_maps_to_closed() {
        assert!(matches!(Error::from(SendError::Closed), Error::Closed));
        assert!(matches!(
            Error::from(SendError::ControlTooLong(200)),
            Error::Send(SendError::ControlTooLong(200))
        ));
    }
}

//! The WebSocket opening handshake (RFC 6455 §4), server and client roles.
//!
//! STUB: API fixed, bodies to be written.

use std::sync::Arc;

use http::{HeaderMap, Request, Response, StatusCode, Uri};

use crate::deflate::{DeflateConfig, DeflateParams};

/// RFC 6455 §1.3.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `base64(sha1(key + GUID))`.
pub fn accept_key(_key: &[u8]) -> String {
    todo!()
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 bytes from a CSPRNG.
pub fn generate_key() -> String {
    todo!()
}

/// Who may open a WebSocket, by `Origin`.
#[derive(Clone, Default)]
pub enum OriginPolicy {
    /// Any origin, and requests without `Origin` (non-browser clients).
    #[default]
    Any,
    /// Only these origins (exact, case-insensitive ASCII); others get 403.
    /// Requests without `Origin` are allowed (they do not come from a browser).
    AllowList(Vec<String>),
    /// A hook: `Some(origin)` or `None` when absent; `false` gets 403.
    Custom(Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>),
}

impl std::fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OriginPolicy::Any => f.write_str("Any"),
            OriginPolicy::AllowList(l) => f.debug_tuple("AllowList").field(l).finish(),
            OriginPolicy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// Server handshake settings.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Subprotocols we speak, in our order of preference... the server picks the
    /// first of the *client's* list that is in this list.
    pub subprotocols: Vec<String>,
    /// Accept permessage-deflate when offered.
    pub deflate: Option<DeflateConfig>,
    pub origin: OriginPolicy,
}

/// What the server agreed to.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The complete 101 response to send.
    pub response: Response<()>,
    pub subprotocol: Option<String>,
    pub deflate: Option<DeflateParams>,
}

/// Why a handshake failed, in either role. Messages say what happened and what to do.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("method {0} is not GET")]
    Method(String),
    #[error("HTTP version {0:?} cannot upgrade; HTTP/1.1 is required")]
    Version(http::Version),
    #[error("request has a body (Content-Length or Transfer-Encoding); a WebSocket handshake must not")]
    Body,
    #[error("missing `Upgrade: websocket`")]
    NoUpgrade,
    #[error("`Connection` does not contain the `upgrade` token")]
    NoConnectionUpgrade,
    #[error("missing Sec-WebSocket-Key")]
    NoKey,
    #[error("Sec-WebSocket-Key {0:?} is not base64 of exactly 16 bytes")]
    BadKey(String),
    #[error("unsupported Sec-WebSocket-Version {0:?}; only 13 is supported")]
    BadVersion(String),
    #[error("Origin {0:?} is not allowed")]
    Origin(String),
    #[error("{0}")]
    Extensions(String),
    #[error("server answered {status} instead of 101 Switching Protocols")]
    Status { status: StatusCode },
    #[error("Sec-WebSocket-Accept is {got:?}, expected {expected:?} (computed from our key)")]
    BadAccept { expected: String, got: String },
    #[error("server chose subprotocol {0:?}, which we did not offer")]
    BadSubprotocol(String),
}

/// A refused request: the response to send and why.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub response: Response<()>,
    pub error: HandshakeError,
}

/// Validate an upgrade request and build the 101. Errors: 400 (malformed),
/// 403 (origin), 426 with `Sec-WebSocket-Version: 13` (version), 405? no: a
/// non-GET is 400... see the implementation table.
#[allow(clippy::result_large_err)]
pub fn server_accept(_req: &Request<()>, _cfg: &ServerConfig) -> Result<Accepted, Rejection> {
    todo!()
}

/// Client handshake settings.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    pub subprotocols: Vec<String>,
    pub deflate: Option<DeflateConfig>,
    pub origin: Option<String>,
    /// Extra headers sent as they are (e.g. Authorization).
    pub headers: HeaderMap,
}

/// A client handshake in flight.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    pub request: Request<()>,
    pub key: String,
    cfg: ClientConfig,
}

/// What the client and server agreed on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    pub subprotocol: Option<String>,
    pub deflate: Option<DeflateParams>,
}

impl ClientHandshake {
    /// Build the GET request for `uri` (ws:// or wss://; `Host` from it).
    pub fn new(_uri: &Uri, _cfg: ClientConfig) -> Self {
        todo!()
    }
    /// Check the server's response.
    pub fn verify(&self, _resp: &Response<()>) -> Result<Negotiated, HandshakeError> {
        let _ = &self.cfg;
        todo!()
    }
}

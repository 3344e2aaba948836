//! The WebSocket opening handshake (RFC 6455 §4), server and client roles.
//!
//! # Server: what each refusal answers
//!
//! | check (in this order)                                   | error                  | status | extra headers |
//! |---------------------------------------------------------|------------------------|--------|---------------|
//! | method is `GET`                                         | `Method`               | 400    | |
//! | version is HTTP/1.1                                     | `Version`              | 400    | |
//! | no body (`Content-Length` > 0, any `Transfer-Encoding`) | `Body`                 | 400    | |
//! | `Upgrade` holds the token `websocket`                   | `NoUpgrade`            | 426    | `Upgrade: websocket`, `Connection: Upgrade` |
//! | `Connection` holds the token `upgrade`                  | `NoConnectionUpgrade`  | 426    | `Upgrade: websocket`, `Connection: Upgrade` |
//! | one `Sec-WebSocket-Key`                                 | `NoKey` / `BadKey`     | 400    | |
//! | ... that is base64 (24 chars, padded) of 16 bytes       | `BadKey`               | 400    | |
//! | one `Sec-WebSocket-Version: 13`                         | `BadVersion`           | 426    | `Sec-WebSocket-Version: 13`, `Upgrade: websocket`, `Connection: Upgrade` |
//! | `Origin` allowed by [`OriginPolicy`]                    | `Origin`               | 403    | |
//! | `Sec-WebSocket-Extensions` well-formed                  | `Extensions`           | 400    | |
//!
//! A non-GET method gets 400 rather than 405: the request is a malformed
//! WebSocket handshake (RFC 6455 §4.2.1 requires GET), not a resource that
//! exists with other methods. A request without `Upgrade` / `Connection:
//! upgrade` is "not a WebSocket request", so it gets 426 telling the client
//! which protocol this resource needs.
//!
//! [`Rejection::response`] carries only the status line and headers. The
//! async layer serializes it with `Content-Length` and a short `text/plain`
//! body naming the error ([`HandshakeError`]'s `Display`), then closes.
//!
//! The origin, subprotocol and extension part is shared with HTTP/2 and
//! HTTP/3 (RFC 8441 / RFC 9220 extended CONNECT) through [`server_negotiate`];
//! the checks before it are in [`crate::extended_connect`]. Clients on
//! HTTP/2 and HTTP/3 build their headers with [`extended_connect_headers`]
//! and check the 200 with [`client_negotiate`].

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::header::{
    CONNECTION, CONTENT_LENGTH, HOST, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING, UPGRADE,
};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use sha1::{Digest, Sha1};

use crate::deflate::{client_accept, client_offer, negotiate_server, DeflateConfig, DeflateParams};
use crate::extensions::parse_extensions;
use crate::upgrade::{connection_has, header_tokens, switching_protocols, upgrade_required};

/// RFC 6455 §1.3.
pub const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `base64(sha1(key + GUID))`.
pub fn accept_key(key: &[u8]) -> String {
    String::from_utf8_lossy(&accept_key_bytes(key)).into_owned()
}

/// [`accept_key`] without allocating: base64 of a SHA-1 digest is 28 bytes.
pub fn accept_key_bytes(key: &[u8]) -> [u8; 28] {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    let mut out = [0u8; 28];
    // 20 bytes always encode to exactly 28 base64 characters.
    let _ = STANDARD.encode_slice(h.finalize(), &mut out);
    out
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 bytes from a CSPRNG
/// (`rand`'s thread-local ChaCha generator, seeded from the OS).
pub fn generate_key() -> String {
    let bytes: [u8; 16] = rand::random();
    STANDARD.encode(bytes)
}

/// An origin hook: gets `Some(origin)` or `None` when absent; `false` refuses.
pub type OriginCheck = Arc<dyn Fn(Option<&str>) -> bool + Send + Sync>;

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
    Custom(OriginCheck),
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

/// Server handshake settings. Build with [`ServerConfig::default`] and the
/// setters: `ServerConfig::default().subprotocols(["chat"])`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Subprotocols we speak. The server picks the first of the *client's*
    /// list that is in this one: the client's order of preference wins.
    pub subprotocols: Vec<String>,
    /// Accept permessage-deflate when offered, with these settings. Default:
    /// `None` (never compress).
    pub deflate: Option<DeflateConfig>,
    /// Who may connect, by `Origin`. Default: anyone.
    pub origin: OriginPolicy,
}

impl ServerConfig {
    /// Set [`ServerConfig::subprotocols`].
    #[must_use]
    pub fn subprotocols<I, T>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }
}

crate::setters!(ServerConfig {
    deflate: Option<DeflateConfig>,
    origin: OriginPolicy,
});

/// What the server agreed to.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The complete 101 response to send.
    pub response: Response<()>,
    /// The subprotocol and permessage-deflate parameters it says.
    pub negotiated: Negotiated,
}

/// Why a handshake failed, in either role. Messages say what happened and what to do.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Server: the request is not a GET.
    #[error("method {0} cannot open a WebSocket; the handshake must be a GET (RFC 6455 §4.1)")]
    Method(String),
    /// Server: the request is not HTTP/1.1.
    #[error("HTTP version {0:?} cannot upgrade; HTTP/1.1 is required")]
    Version(http::Version),
    /// Server: the request has a body.
    #[error(
        "request has a body (Content-Length or Transfer-Encoding); a WebSocket handshake must not"
    )]
    Body,
    /// Either role: no `websocket` token in `Upgrade`.
    #[error("missing `Upgrade: websocket`: this is not a WebSocket handshake (a proxy may have dropped the hop-by-hop Upgrade header)")]
    NoUpgrade,
    /// Either role: no `upgrade` token in `Connection`.
    #[error("`Connection` does not contain the `upgrade` token (a proxy may have rewritten it; Upgrade is hop-by-hop)")]
    NoConnectionUpgrade,
    /// Server: no `Sec-WebSocket-Key`.
    #[error("missing Sec-WebSocket-Key; a WebSocket client must send 16 random bytes in base64")]
    NoKey,
    /// Server: a key that is not base64 of 16 bytes, or several keys.
    #[error("Sec-WebSocket-Key {0:?} is not base64 of exactly 16 bytes")]
    BadKey(String),
    /// Server: `Sec-WebSocket-Version` is not exactly one `13`.
    #[error("unsupported Sec-WebSocket-Version {0:?}; only 13 is supported")]
    BadVersion(String),
    /// Server: the [`OriginPolicy`] refused the `Origin`.
    #[error("Origin {0:?} is not allowed")]
    Origin(String),
    /// Either role: a malformed `Sec-WebSocket-Extensions`, or (client) an
    /// extension answer we did not offer or cannot accept.
    #[error("{0}")]
    Extensions(String),
    /// Client: the server answered something else than 101.
    #[error("server answered {status} instead of 101 Switching Protocols")]
    Status {
        /// The status it answered.
        status: StatusCode,
    },
    /// Client: `Sec-WebSocket-Accept` does not match our key.
    #[error("Sec-WebSocket-Accept is {got:?}, expected {expected:?} (computed from our key)")]
    BadAccept {
        /// The value computed from our key.
        expected: String,
        /// The value the server sent.
        got: String,
    },
    /// Client: the server chose a subprotocol we did not offer (or several).
    #[error("server chose subprotocol {0:?}, which we did not offer")]
    BadSubprotocol(String),
    /// Client: the 101 has no `Sec-WebSocket-Accept`.
    #[error("server's 101 response has no Sec-WebSocket-Accept; it is not a WebSocket server (or a proxy answered)")]
    NoAccept,
    /// Client: the URI is not `ws://` or `wss://` with a host.
    #[error("cannot open a WebSocket to {0}; use a ws:// or wss:// URI with a host")]
    BadUri(String),
    /// Client: a setting cannot be sent (a subprotocol that is not a token,
    /// an origin that is not a header value).
    #[error("invalid client handshake setting: {0}")]
    Config(String),
    /// An HTTP/2 or HTTP/3 extended CONNECT (RFC 8441 / RFC 9220) that is
    /// malformed: not CONNECT, no `:protocol`, a missing pseudo-header. 400
    /// (see [`crate::extended_connect`]).
    #[error("malformed extended CONNECT (RFC 8441 / RFC 9220): {0}")]
    ExtendedConnect(String),
    /// An extended CONNECT for a protocol other than `websocket`. 501.
    #[error(
        "extended CONNECT for protocol {0:?}: only \"websocket\" is served here \
         (RFC 8441 / RFC 9220)"
    )]
    UnsupportedProtocol(String),
}

impl HandshakeError {
    /// The status a server answers this error with (see the module table).
    /// Client-side errors map to 400; a server never sends them.
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::NoUpgrade
            | HandshakeError::NoConnectionUpgrade
            | HandshakeError::BadVersion(_) => StatusCode::UPGRADE_REQUIRED,
            HandshakeError::Origin(_) => StatusCode::FORBIDDEN,
            HandshakeError::UnsupportedProtocol(_) => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The headers-only refusal a server sends for this error: the status of
    /// [`HandshakeError::status`] and, for 426, `Upgrade: websocket` and
    /// `Connection: Upgrade` (plus `Sec-WebSocket-Version: 13` for a bad version).
    pub fn response(&self) -> Response<()> {
        let status = self.status();
        let mut resp = if status == StatusCode::UPGRADE_REQUIRED {
            upgrade_required(&["websocket"])
        } else {
            let mut r = Response::new(());
            *r.status_mut() = status;
            r
        };
        if matches!(self, HandshakeError::BadVersion(_)) {
            resp.headers_mut()
                .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        }
        resp
    }
}

/// A refused request: the response to send and why.
///
/// `response` holds the status and headers only; the async layer adds a short
/// `text/plain` body naming `error` when it serializes it.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The status and headers to answer with.
    pub response: Response<()>,
    /// Why.
    pub error: HandshakeError,
}

impl From<HandshakeError> for Rejection {
    fn from(error: HandshakeError) -> Self {
        Rejection {
            response: error.response(),
            error,
        }
    }
}

/// What [`server_negotiate`] agreed to, with the response headers that say so.
#[derive(Debug, Clone, Default)]
pub struct ServerNegotiation {
    /// The subprotocol and permessage-deflate parameters agreed to.
    pub negotiated: Negotiated,
    /// `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` to add to the
    /// success response (101 for HTTP/1.1, 200 for HTTP/2 and HTTP/3).
    pub headers: HeaderMap,
}

/// Every line of `name` joined with ", " (for error messages).
pub(crate) fn joined(headers: &HeaderMap, name: &HeaderName) -> String {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_origin(headers: &HeaderMap, policy: &OriginPolicy) -> Result<(), HandshakeError> {
    if matches!(policy, OriginPolicy::Any) {
        return Ok(());
    }
    let mut lines = headers.get_all(ORIGIN).iter();
    let first = lines.next();
    if lines.next().is_some() {
        // Browsers send exactly one; several cannot be judged safely.
        return Err(HandshakeError::Origin(joined(headers, &ORIGIN)));
    }
    let origin = match first {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            HandshakeError::Origin(String::from_utf8_lossy(v.as_bytes()).into_owned())
        })?),
    };
    let allowed = match (policy, origin) {
        (OriginPolicy::Any, _) => true,
        (OriginPolicy::AllowList(_), None) => true,
        (OriginPolicy::AllowList(list), Some(o)) => list.iter().any(|a| a.eq_ignore_ascii_case(o)),
        (OriginPolicy::Custom(f), o) => f(o),
    };
    if allowed {
        Ok(())
    } else {
        Err(HandshakeError::Origin(origin.unwrap_or("").to_string()))
    }
}

/// The version-independent part of a server handshake: origin policy (403),
/// subprotocol choice (the first of the client's `Sec-WebSocket-Protocol`
/// list, over all lines, that `cfg.subprotocols` holds) and extensions
/// (malformed: 400; permessage-deflate negotiated with `cfg.deflate`).
/// HTTP/2 and HTTP/3 extended CONNECT servers call this directly;
/// [`server_accept`] calls it after the HTTP/1.1 checks.
pub fn server_negotiate(
    headers: &HeaderMap,
    cfg: &ServerConfig,
) -> Result<ServerNegotiation, HandshakeError> {
    check_origin(headers, &cfg.origin)?;

    let offers = parse_extensions(
        headers
            .get_all(SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(|v| v.as_bytes()),
    )
    .map_err(|e| HandshakeError::Extensions(e.to_string()))?;

    let mut out = ServerNegotiation::default();
    let subprotocol = header_tokens(headers, &SEC_WEBSOCKET_PROTOCOL)
        .find(|p| cfg.subprotocols.iter().any(|ours| ours == p));
    if let Some(p) = subprotocol {
        // It equals one of our configured names and is a client token, so
        // it is a valid header value; skip it rather than panic if not.
        if let Ok(v) = HeaderValue::from_str(p) {
            out.headers.insert(SEC_WEBSOCKET_PROTOCOL, v);
            out.negotiated.subprotocol = Some(p.to_string());
        }
    }
    if let Some(dcfg) = &cfg.deflate {
        if let Some((params, value)) = negotiate_server(&offers, dcfg) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                out.headers.insert(SEC_WEBSOCKET_EXTENSIONS, v);
                out.negotiated.deflate = Some(params);
            }
        }
    }
    Ok(out)
}

/// The one `Sec-WebSocket-Key`, validated: 24 characters of padded standard
/// base64 decoding to exactly 16 bytes.
fn check_key(headers: &HeaderMap) -> Result<&HeaderValue, HandshakeError> {
    let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
    let key = keys.next().ok_or(HandshakeError::NoKey)?;
    let bad = || HandshakeError::BadKey(joined(headers, &SEC_WEBSOCKET_KEY));
    if keys.next().is_some() || key.len() != 24 {
        return Err(bad());
    }
    // 24 base64 characters decode to at most 18 bytes: no allocation.
    let mut raw = [0u8; 18];
    match STANDARD.decode_slice(key.as_bytes(), &mut raw) {
        Ok(16) => Ok(key),
        _ => Err(bad()),
    }
}

fn has_websocket_token(headers: &HeaderMap) -> bool {
    header_tokens(headers, &UPGRADE).any(|t| t.eq_ignore_ascii_case("websocket"))
}

fn check_request<B>(req: &Request<B>) -> Result<&HeaderValue, HandshakeError> {
    if req.method() != Method::GET {
        return Err(HandshakeError::Method(req.method().to_string()));
    }
    if req.version() != Version::HTTP_11 {
        return Err(HandshakeError::Version(req.version()));
    }
    let h = req.headers();
    let body = h.contains_key(TRANSFER_ENCODING)
        || h.get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if body {
        return Err(HandshakeError::Body);
    }
    if !has_websocket_token(h) {
        return Err(HandshakeError::NoUpgrade);
    }
    if !connection_has(h, "upgrade") {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    let key = check_key(h)?;
    let mut versions = h.get_all(SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes() == b"13" => {}
        _ => {
            return Err(HandshakeError::BadVersion(joined(
                h,
                &SEC_WEBSOCKET_VERSION,
            )))
        }
    }
    Ok(key)
}

/// Validate an upgrade request and build the 101. Every refusal, with its
/// status and headers, is in the module table. Only the head of `req` is
/// read (a hyper request with its body works as well as a `Request<()>`).
#[allow(clippy::result_large_err)]
pub fn server_accept<B>(req: &Request<B>, cfg: &ServerConfig) -> Result<Accepted, Rejection> {
    let key = check_request(req)?;
    let negotiation = server_negotiate(req.headers(), cfg)?;
    let mut response = switching_protocols("websocket");
    let headers = response.headers_mut();
    // Base64 is always a valid header value.
    if let Ok(v) = HeaderValue::from_bytes(&accept_key_bytes(key.as_bytes())) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    headers.extend(negotiation.headers);
    Ok(Accepted {
        response,
        negotiated: negotiation.negotiated,
    })
}

/// Client handshake settings. Build with [`ClientConfig::default`] and the
/// setters, like [`ServerConfig`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Subprotocols to offer, in our order of preference.
    pub subprotocols: Vec<String>,
    /// Offer permessage-deflate with these settings.
    pub deflate: Option<DeflateConfig>,
    /// The `Origin` to send.
    pub origin: Option<String>,
    /// Extra headers sent as they are (e.g. Authorization). A `Host` here
    /// replaces the one taken from the URI; the headers the handshake itself
    /// sets (`Upgrade`, `Connection`, `Sec-WebSocket-*`) are ignored here.
    pub headers: HeaderMap,
}

impl ClientConfig {
    /// Set [`ClientConfig::subprotocols`].
    #[must_use]
    pub fn subprotocols<I, T>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }
}

crate::setters!(ClientConfig {
    deflate: Option<DeflateConfig>,
    origin: Option<String>,
    headers: HeaderMap,
});

/// A client handshake in flight.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    /// The GET request to send.
    pub request: Request<()>,
    /// Our `Sec-WebSocket-Key` (the answer's `Sec-WebSocket-Accept` is
    /// computed from it).
    pub key: String,
    cfg: ClientConfig,
}

/// What the client and server agreed on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// The subprotocol chosen by the server, if any.
    pub subprotocol: Option<String>,
    /// The permessage-deflate parameters, if the extension is on.
    pub deflate: Option<DeflateParams>,
}

/// Headers [`ClientHandshake::new`] sets itself and never takes from
/// `ClientConfig::headers`.
const OWNED_BY_HANDSHAKE: [HeaderName; 7] = [
    UPGRADE,
    CONNECTION,
    SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION,
    SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_EXTENSIONS,
];

impl ClientHandshake {
    /// Build the GET request for `uri` (ws:// or wss://; `Host` from it, with
    /// the port only when it is not the scheme's default).
    ///
    /// Fails with `BadUri` for another scheme or no host, and with `Config`
    /// when the origin or a subprotocol cannot be a header value.
    pub fn new(uri: &Uri, cfg: ClientConfig) -> Result<Self, HandshakeError> {
        let bad_uri = || HandshakeError::BadUri(uri.to_string());
        let default_port = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("ws") => 80,
            Some(s) if s.eq_ignore_ascii_case("wss") => 443,
            _ => return Err(bad_uri()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad_uri)?;
        let host = match uri.port_u16() {
            Some(p) if p != default_port => format!("{host}:{p}"),
            _ => host.to_string(),
        };
        let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let target = if target.is_empty() { "/" } else { target };

        let mut request = Request::new(());
        *request.method_mut() = Method::GET;
        *request.version_mut() = Version::HTTP_11;
        *request.uri_mut() = target.parse::<Uri>().map_err(|_| bad_uri())?;

        let key = generate_key();
        let h = request.headers_mut();
        let value = |what: &str, s: &str| {
            HeaderValue::from_str(s).map_err(|_| {
                HandshakeError::Config(format!("{what} {s:?} is not a valid header value"))
            })
        };
        h.insert(HOST, HeaderValue::from_str(&host).map_err(|_| bad_uri())?);
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(SEC_WEBSOCKET_KEY, value("key", &key)?);
        add_common_headers(h, &cfg)?;
        Ok(ClientHandshake { request, key, cfg })
    }

    /// Check the server's response.
    pub fn verify(&self, resp: &Response<()>) -> Result<Negotiated, HandshakeError> {
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(HandshakeError::Status {
                status: resp.status(),
            });
        }
        let h = resp.headers();
        if !has_websocket_token(h) {
            return Err(HandshakeError::NoUpgrade);
        }
        if !connection_has(h, "upgrade") {
            return Err(HandshakeError::NoConnectionUpgrade);
        }
        let expected = accept_key(self.key.as_bytes());
        let mut accepts = h.get_all(SEC_WEBSOCKET_ACCEPT).iter();
        match (accepts.next(), accepts.next()) {
            (None, _) => return Err(HandshakeError::NoAccept),
            (Some(v), None) if v.as_bytes() == expected.as_bytes() => {}
            _ => {
                return Err(HandshakeError::BadAccept {
                    expected,
                    got: joined(h, &SEC_WEBSOCKET_ACCEPT),
                });
            }
        }

        client_negotiate(h, &self.cfg)
    }
}

/// The handshake headers shared by every HTTP version: `Sec-WebSocket-Version`,
/// `Origin`, `Sec-WebSocket-Protocol`, `Sec-WebSocket-Extensions` and the
/// extra headers of `cfg` (a `Host` there replaces the one in `h`).
fn add_common_headers(h: &mut HeaderMap, cfg: &ClientConfig) -> Result<(), HandshakeError> {
    let value = |what: &str, s: &str| {
        HeaderValue::from_str(s).map_err(|_| {
            HandshakeError::Config(format!("{what} {s:?} is not a valid header value"))
        })
    };
    h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    if let Some(o) = &cfg.origin {
        h.insert(ORIGIN, value("origin", o)?);
    }
    if !cfg.subprotocols.is_empty() {
        if let Some(bad) = cfg
            .subprotocols
            .iter()
            .find(|p| !crate::extensions::is_token(p))
        {
            return Err(HandshakeError::Config(format!(
                "subprotocol {bad:?} is not an HTTP token (letters, digits and !#$%&'*+-.^_`|~)"
            )));
        }
        h.insert(
            SEC_WEBSOCKET_PROTOCOL,
            value("subprotocol list", &cfg.subprotocols.join(", "))?,
        );
    }
    if let Some(d) = &cfg.deflate {
        h.insert(
            SEC_WEBSOCKET_EXTENSIONS,
            value("extension offer", &client_offer(d))?,
        );
    }
    let mut host_replaced = false;
    for (name, v) in &cfg.headers {
        if OWNED_BY_HANDSHAKE.contains(name) {
            continue;
        }
        if name == HOST && !host_replaced {
            h.remove(HOST);
            host_replaced = true;
        }
        h.append(name.clone(), v.clone());
    }
    Ok(())
}

/// The headers of an HTTP/2 or HTTP/3 extended CONNECT for a WebSocket
/// (RFC 8441 §5 / RFC 9220): `Sec-WebSocket-Version: 13`, origin,
/// subprotocols, the permessage-deflate offer and `cfg.headers`, without
/// `Sec-WebSocket-Key` (HTTP/2 has none) and without the hop-by-hop headers
/// HTTP/2 forbids. A `Host` in `cfg.headers` is returned as the authority
/// to use instead of the URI's (`:authority`), not as a header.
pub fn extended_connect_headers(
    cfg: &ClientConfig,
) -> Result<(HeaderMap, Option<HeaderValue>), HandshakeError> {
    let mut h = HeaderMap::new();
    add_common_headers(&mut h, cfg)?;
    let authority = h.remove(HOST);
    for name in ["keep-alive", "proxy-connection", "transfer-encoding", "te"] {
        h.remove(name);
    }
    Ok((h, authority))
}

/// The version-independent part of checking a server's answer: the
/// subprotocol (at most one, one we offered) and the extensions (at most
/// permessage-deflate, with parameters we accept). HTTP/2 and HTTP/3 clients
/// call this on the 200 response; [`ClientHandshake::verify`] calls it after
/// the HTTP/1.1 checks.
pub fn client_negotiate(h: &HeaderMap, cfg: &ClientConfig) -> Result<Negotiated, HandshakeError> {
    let mut negotiated = Negotiated::default();
    let mut protocols = h.get_all(SEC_WEBSOCKET_PROTOCOL).iter();
    match (protocols.next(), protocols.next()) {
        (None, _) => {}
        (Some(v), None) => match cfg
            .subprotocols
            .iter()
            .find(|p| p.as_bytes() == v.as_bytes())
        {
            Some(p) => negotiated.subprotocol = Some(p.clone()),
            None => {
                return Err(HandshakeError::BadSubprotocol(joined(
                    h,
                    &SEC_WEBSOCKET_PROTOCOL,
                )))
            }
        },
        _ => {
            return Err(HandshakeError::BadSubprotocol(joined(
                h,
                &SEC_WEBSOCKET_PROTOCOL,
            )))
        }
    }

    let exts = parse_extensions(
        h.get_all(SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(|v| v.as_bytes()),
    )
    .map_err(|e| HandshakeError::Extensions(format!("server's response: {e}")))?;
    match (exts.as_slice(), &cfg.deflate) {
        ([], _) => {}
        ([one], Some(dcfg)) => {
            let params = client_accept(one, dcfg).map_err(HandshakeError::Extensions)?;
            negotiated.deflate = Some(params);
        }
        ([one], None) => {
            return Err(HandshakeError::Extensions(format!(
                "server accepted extension {:?}, but we offered no extensions",
                one.name
            )))
        }
        (many, _) => {
            return Err(HandshakeError::Extensions(format!(
                "server accepted {} extensions, but we offered at most one (permessage-deflate)",
                many.len()
            )))
        }
    }
    Ok(negotiated)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn req() -> http::request::Builder {
        Request::builder()
            .method("GET")
            .uri("/chat")
            .version(Version::HTTP_11)
            .header("Host", "example.com")
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Key", KEY)
            .header("Sec-WebSocket-Version", "13")
    }

    fn build(b: http::request::Builder) -> Request<()> {
        b.body(()).unwrap()
    }

    /// The request of `req()` with header `name` removed.
    fn without(name: &str) -> Request<()> {
        let mut r = build(req());
        r.headers_mut().remove(name);
        r
    }

    fn rejected(r: &Request<()>, cfg: &ServerConfig) -> Rejection {
        server_accept(r, cfg).unwrap_err()
    }

    fn hdr<'a>(resp: &'a Response<()>, name: &str) -> Vec<&'a str> {
        resp.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    fn assert_426_websocket(rej: &Rejection) {
        assert_eq!(rej.response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(hdr(&rej.response, "upgrade"), ["websocket"]);
        assert_eq!(hdr(&rej.response, "connection"), ["Upgrade"]);
    }

    #[test]
    fn rfc6455_sample_key() {
        assert_eq!(accept_key(KEY.as_bytes()), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn generated_keys_are_16_random_bytes() {
        let a = generate_key();
        let b = generate_key();
        assert_eq!(a.len(), 24);
        assert_eq!(STANDARD.decode(&a).unwrap().len(), 16);
        assert_ne!(a, b);
    }

    #[test]
    fn accepts_minimal_request() {
        let acc = server_accept(&build(req()), &ServerConfig::default()).unwrap();
        let r = &acc.response;
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(hdr(r, "upgrade"), ["websocket"]);
        assert_eq!(hdr(r, "connection"), ["Upgrade"]);
        assert_eq!(
            hdr(r, "sec-websocket-accept"),
            ["s3pPLMBiTxaQ9kYGzzhZRbK+xOo="]
        );
        assert!(r.headers().get("sec-websocket-protocol").is_none());
        assert!(r.headers().get("sec-websocket-extensions").is_none());
        assert_eq!(acc.negotiated, Negotiated::default());
    }

    #[test]
    fn tokens_are_case_insensitive_and_may_span_lines() {
        let r = Request::builder()
            .method("GET")
            .uri("/")
            .header("Upgrade", "h2c, WebSocket")
            .header("Connection", "keep-alive")
            .header("Connection", "x, UPGRADE")
            .header("Sec-WebSocket-Key", KEY)
            .header("Sec-WebSocket-Version", "13")
            .body(())
            .unwrap();
        assert!(server_accept(&r, &ServerConfig::default()).is_ok());
    }

    #[test]
    fn non_get_is_400() {
        let rej = rejected(&build(req().method("POST")), &ServerConfig::default());
        assert_eq!(rej.error, HandshakeError::Method("POST".into()));
        assert_eq!(rej.response.status(), StatusCode::BAD_REQUEST);
        assert!(rej.response.headers().is_empty());
    }

    #[test]
    fn http10_is_400() {
        let rej = rejected(
            &build(req().version(Version::HTTP_10)),
            &ServerConfig::default(),
        );
        assert_eq!(rej.error, HandshakeError::Version(Version::HTTP_10));
        assert_eq!(rej.response.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn body_is_400() {
        for (name, value) in [
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "x"),
        ] {
            let rej = rejected(&build(req().header(name, value)), &ServerConfig::default());
            assert_eq!(rej.error, HandshakeError::Body, "{name}: {value}");
            assert_eq!(rej.response.status(), StatusCode::BAD_REQUEST);
        }
        // Content-Length: 0 is no body.
        assert!(server_accept(
            &build(req().header("content-length", "0")),
            &ServerConfig::default()
        )
        .is_ok());
    }

    #[test]
    fn missing_upgrade_is_426() {
        let rej = rejected(&without("upgrade"), &ServerConfig::default());
        assert_eq!(rej.error, HandshakeError::NoUpgrade);
        assert_426_websocket(&rej);
        let mut r = without("upgrade");
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(
            rejected(&r, &ServerConfig::default()).error,
            HandshakeError::NoUpgrade
        );
    }

    #[test]
    fn missing_connection_upgrade_is_426() {
        let rej = rejected(&without("connection"), &ServerConfig::default());
        assert_eq!(rej.error, HandshakeError::NoConnectionUpgrade);
        assert_426_websocket(&rej);
        let mut r = without("connection");
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("keep-alive, upgraded"));
        assert_eq!(
            rejected(&r, &ServerConfig::default()).error,
            HandshakeError::NoConnectionUpgrade
        );
    }

    #[test]
    fn key_rules_are_400() {
        let rej = rejected(&without("sec-websocket-key"), &ServerConfig::default());
        assert_eq!(rej.error, HandshakeError::NoKey);
        assert_eq!(rej.response.status(), StatusCode::BAD_REQUEST);
        for bad in [
            "dGhlIHNhbXBsZSBub25jZQ",       // no padding
            "dGhlIHNhbXBsZSBub25jZQ==AA",   // too long
            "dGhlIHNhbXBsZSBub25jZR==",     // non-canonical trailing bits
            "dGhlIHNhbXBsZSBub25jZQ=a",     // bad padding
            "dGhlIHNhbXBsZSBub25j!Q==",     // bad alphabet
            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=", // 20 bytes
            "",
        ] {
            let mut r = without("sec-websocket-key");
            r.headers_mut()
                .insert(SEC_WEBSOCKET_KEY, HeaderValue::from_str(bad).unwrap());
            let rej = rejected(&r, &ServerConfig::default());
            assert_eq!(rej.error, HandshakeError::BadKey(bad.into()), "{bad}");
            assert_eq!(rej.response.status(), StatusCode::BAD_REQUEST);
        }
        let rej = rejected(
            &build(req().header("sec-websocket-key", KEY)),
            &ServerConfig::default(),
        );
        assert_eq!(rej.error, HandshakeError::BadKey(format!("{KEY}, {KEY}")));
    }

    #[test]
    fn version_rules_are_426_with_version_header() {
        let cases: Vec<(Request<()>, &str)> = vec![
            (without("sec-websocket-version"), ""),
            (build(req().header("sec-websocket-version", "13")), "13, 13"),
            (
                {
                    let mut r = without("sec-websocket-version");
                    r.headers_mut()
                        .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
                    r
                },
                "8",
            ),
            (
                {
                    let mut r = without("sec-websocket-version");
                    r.headers_mut()
                        .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13, 8"));
                    r
                },
                "13, 8",
            ),
        ];
        for (r, got) in cases {
            let rej = rejected(&r, &ServerConfig::default());
            assert_eq!(rej.error, HandshakeError::BadVersion(got.into()));
            assert_426_websocket(&rej);
            assert_eq!(hdr(&rej.response, "sec-websocket-version"), ["13"]);
        }
    }

    #[test]
    fn origin_policy_is_403() {
        let allow = ServerConfig {
            origin: OriginPolicy::AllowList(vec!["https://Example.com".into()]),
            ..Default::default()
        };
        assert!(server_accept(
            &build(req().header("origin", "https://example.COM")),
            &allow
        )
        .is_ok());
        assert!(server_accept(&build(req()), &allow).is_ok()); // no Origin: not a browser
        let rej = rejected(
            &build(req().header("origin", "https://evil.example")),
            &allow,
        );
        assert_eq!(
            rej.error,
            HandshakeError::Origin("https://evil.example".into())
        );
        assert_eq!(rej.response.status(), StatusCode::FORBIDDEN);
        assert!(rej.response.headers().is_empty());
        let two = build(
            req()
                .header("origin", "https://example.com")
                .header("origin", "https://evil.example"),
        );
        assert_eq!(
            rejected(&two, &allow).response.status(),
            StatusCode::FORBIDDEN
        );

        let custom = ServerConfig {
            origin: OriginPolicy::Custom(Arc::new(|o| o.is_some_and(|o| o.ends_with(".good")))),
            ..Default::default()
        };
        assert!(server_accept(&build(req().header("origin", "https://a.good")), &custom).is_ok());
        let rej = rejected(&build(req()), &custom);
        assert_eq!(rej.error, HandshakeError::Origin(String::new()));
        assert_eq!(rej.response.status(), StatusCode::FORBIDDEN);
        // A non-UTF-8 Origin cannot be on a list: 403.
        let mut r = build(req());
        r.headers_mut().insert(
            ORIGIN,
            HeaderValue::from_bytes(b"https://\xe9.example").unwrap(),
        );
        assert_eq!(
            rejected(&r, &allow).response.status(),
            StatusCode::FORBIDDEN
        );
        // Any accepts everything, even odd or repeated values.
        assert!(server_accept(&r, &ServerConfig::default()).is_ok());
        assert!(server_accept(&two, &ServerConfig::default()).is_ok());
        assert!(server_accept(
            &build(req().header("origin", "null")),
            &ServerConfig::default()
        )
        .is_ok());
    }

    #[test]
    fn subprotocol_is_first_of_clients_list_we_speak() {
        let cfg = ServerConfig {
            subprotocols: vec!["chat".into(), "superchat".into()],
            ..Default::default()
        };
        let r = build(
            req()
                .header("sec-websocket-protocol", "v2.x, superchat")
                .header("sec-websocket-protocol", "chat"),
        );
        let acc = server_accept(&r, &cfg).unwrap();
        assert_eq!(acc.negotiated.subprotocol.as_deref(), Some("superchat"));
        assert_eq!(hdr(&acc.response, "sec-websocket-protocol"), ["superchat"]);
        let r = build(req().header("sec-websocket-protocol", "other"));
        let acc = server_accept(&r, &cfg).unwrap();
        assert_eq!(acc.negotiated.subprotocol, None);
        assert!(acc
            .response
            .headers()
            .get("sec-websocket-protocol")
            .is_none());
    }

    #[test]
    fn extensions_negotiated_and_malformed_is_400() {
        let cfg = ServerConfig {
            deflate: Some(DeflateConfig::default()),
            ..Default::default()
        };
        let r = build(req().header(
            "sec-websocket-extensions",
            "x-foo, permessage-deflate; client_max_window_bits",
        ));
        let acc = server_accept(&r, &cfg).unwrap();
        assert_eq!(
            hdr(&acc.response, "sec-websocket-extensions"),
            ["permessage-deflate; client_max_window_bits=15"]
        );
        assert_eq!(
            acc.negotiated.deflate.map(|p| p.client_max_window_bits),
            Some(15)
        );
        // Without deflate configured: ignored.
        let acc = server_accept(&r, &ServerConfig::default()).unwrap();
        assert!(acc
            .response
            .headers()
            .get("sec-websocket-extensions")
            .is_none());
        assert_eq!(acc.negotiated.deflate, None);
        // Malformed: 400 even when we would not use it.
        let bad = build(req().header("sec-websocket-extensions", "permessage-deflate; =1"));
        for c in [&cfg, &ServerConfig::default()] {
            let rej = rejected(&bad, c);
            assert!(
                matches!(rej.error, HandshakeError::Extensions(_)),
                "{:?}",
                rej.error
            );
            assert_eq!(rej.response.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn server_negotiate_works_without_http1_headers() {
        let mut h = HeaderMap::new();
        h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat"));
        h.append(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate"),
        );
        let cfg = ServerConfig {
            subprotocols: vec!["chat".into()],
            deflate: Some(DeflateConfig::default()),
            ..Default::default()
        };
        let n = server_negotiate(&h, &cfg).unwrap();
        assert_eq!(n.negotiated.subprotocol.as_deref(), Some("chat"));
        assert!(n.negotiated.deflate.is_some());
        assert_eq!(
            n.headers.get(SEC_WEBSOCKET_EXTENSIONS).unwrap(),
            "permessage-deflate"
        );
        let cfg = ServerConfig {
            origin: OriginPolicy::AllowList(vec!["a".into()]),
            ..Default::default()
        };
        h.append(ORIGIN, HeaderValue::from_static("b"));
        assert_eq!(
            server_negotiate(&h, &cfg).unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
    }

    // ---- client ----

    fn client(uri: &str, cfg: ClientConfig) -> ClientHandshake {
        ClientHandshake::new(&uri.parse().unwrap(), cfg).unwrap()
    }

    #[test]
    fn client_request_shape() {
        let mut extra = HeaderMap::new();
        extra.insert("authorization", HeaderValue::from_static("Bearer t"));
        extra.insert("sec-websocket-key", HeaderValue::from_static("ignored"));
        let cfg = ClientConfig {
            subprotocols: vec!["chat".into(), "v2".into()],
            deflate: Some(DeflateConfig::default()),
            origin: Some("https://example.com".into()),
            headers: extra,
        };
        let c = client("wss://example.com:8443/path?q=1", cfg);
        let r = &c.request;
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(r.uri(), "/path?q=1");
        let h = |n: &str| {
            r.headers()
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(h("host"), ["example.com:8443"]);
        assert_eq!(h("upgrade"), ["websocket"]);
        assert_eq!(h("connection"), ["Upgrade"]);
        assert_eq!(h("sec-websocket-key"), [c.key.as_str()]);
        assert_eq!(STANDARD.decode(&c.key).unwrap().len(), 16);
        assert_eq!(h("sec-websocket-version"), ["13"]);
        assert_eq!(h("origin"), ["https://example.com"]);
        assert_eq!(h("sec-websocket-protocol"), ["chat, v2"]);
        assert_eq!(
            h("sec-websocket-extensions"),
            ["permessage-deflate; client_max_window_bits, \
              permessage-deflate; client_no_context_takeover; client_max_window_bits"]
        );
        assert_eq!(h("authorization"), ["Bearer t"]);
        // Our own request passes our own server.
        let cfg = ServerConfig {
            subprotocols: vec!["v2".into()],
            deflate: Some(DeflateConfig::default()),
            ..Default::default()
        };
        let acc = server_accept(r, &cfg).unwrap();
        let n = c.verify(&acc.response).unwrap();
        assert_eq!(n.subprotocol.as_deref(), Some("v2"));
        assert_eq!(n.deflate, acc.negotiated.deflate);
    }

    #[test]
    fn client_host_and_target_rules() {
        let host = |u: &str| {
            client(u, ClientConfig::default()).request.headers()["host"]
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(host("ws://example.com:80/"), "example.com");
        assert_eq!(host("wss://example.com:443/"), "example.com");
        assert_eq!(host("ws://example.com:443/"), "example.com:443");
        assert_eq!(host("ws://[::1]:9000/"), "[::1]:9000");
        assert_eq!(
            client("ws://example.com", ClientConfig::default())
                .request
                .uri(),
            "/"
        );
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("virtual.example"));
        let c = client(
            "ws://127.0.0.1:9000/",
            ClientConfig {
                headers,
                ..Default::default()
            },
        );
        assert_eq!(
            c.request.headers().get_all(HOST).iter().collect::<Vec<_>>(),
            ["virtual.example"]
        );
        assert_ne!(
            generate_key(),
            client("ws://a/", ClientConfig::default()).key
        );
    }

    #[test]
    fn client_rejects_bad_uri_and_config() {
        for u in ["http://example.com/", "/relative", "example.com:80"] {
            let uri: Uri = u.parse().unwrap();
            assert_eq!(
                ClientHandshake::new(&uri, ClientConfig::default()).unwrap_err(),
                HandshakeError::BadUri(uri.to_string())
            );
        }
        let cfg = ClientConfig {
            subprotocols: vec!["a b".into()],
            ..Default::default()
        };
        assert!(matches!(
            ClientHandshake::new(&"ws://a/".parse().unwrap(), cfg),
            Err(HandshakeError::Config(_))
        ));
        let cfg = ClientConfig {
            origin: Some("bad\norigin".into()),
            ..Default::default()
        };
        assert!(matches!(
            ClientHandshake::new(&"ws://a/".parse().unwrap(), cfg),
            Err(HandshakeError::Config(_))
        ));
    }

    fn response_for(c: &ClientHandshake) -> http::response::Builder {
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", accept_key(c.key.as_bytes()))
    }

    #[test]
    fn client_verify_errors() {
        let c = client(
            "ws://a/",
            ClientConfig {
                subprotocols: vec!["chat".into()],
                ..Default::default()
            },
        );
        assert_eq!(
            c.verify(&response_for(&c).body(()).unwrap()).unwrap(),
            Negotiated::default()
        );

        let r = Response::builder().status(200).body(()).unwrap();
        assert_eq!(
            c.verify(&r).unwrap_err(),
            HandshakeError::Status {
                status: StatusCode::OK
            }
        );

        let mut r = response_for(&c).body(()).unwrap();
        r.headers_mut().remove(UPGRADE);
        assert_eq!(c.verify(&r).unwrap_err(), HandshakeError::NoUpgrade);

        let mut r = response_for(&c).body(()).unwrap();
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(
            c.verify(&r).unwrap_err(),
            HandshakeError::NoConnectionUpgrade
        );

        let mut r = response_for(&c).body(()).unwrap();
        r.headers_mut().remove(SEC_WEBSOCKET_ACCEPT);
        assert_eq!(c.verify(&r).unwrap_err(), HandshakeError::NoAccept);

        let mut r = response_for(&c).body(()).unwrap();
        r.headers_mut().insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        );
        assert_eq!(
            c.verify(&r).unwrap_err(),
            HandshakeError::BadAccept {
                expected: accept_key(c.key.as_bytes()),
                got: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );

        let r = response_for(&c)
            .header("sec-websocket-protocol", "other")
            .body(())
            .unwrap();
        assert_eq!(
            c.verify(&r).unwrap_err(),
            HandshakeError::BadSubprotocol("other".into())
        );
        let r = response_for(&c)
            .header("sec-websocket-protocol", "chat")
            .header("sec-websocket-protocol", "chat")
            .body(())
            .unwrap();
        assert_eq!(
            c.verify(&r).unwrap_err(),
            HandshakeError::BadSubprotocol("chat, chat".into())
        );
        let r = response_for(&c)
            .header("sec-websocket-protocol", "chat")
            .body(())
            .unwrap();
        assert_eq!(c.verify(&r).unwrap().subprotocol.as_deref(), Some("chat"));

        // No subprotocol offered: any choice is an error.
        let c2 = client("ws://a/", ClientConfig::default());
        let r = response_for(&c2)
            .header("sec-websocket-protocol", "chat")
            .body(())
            .unwrap();
        assert_eq!(
            c2.verify(&r).unwrap_err(),
            HandshakeError::BadSubprotocol("chat".into())
        );
    }

    #[test]
    fn client_verify_extension_errors() {
        // Nothing offered: any extension is an error.
        let c = client("ws://a/", ClientConfig::default());
        let r = response_for(&c)
            .header("sec-websocket-extensions", "permessage-deflate")
            .body(())
            .unwrap();
        assert!(
            matches!(c.verify(&r).unwrap_err(), HandshakeError::Extensions(m) if m.contains("offered no extensions"))
        );

        let c = client(
            "ws://a/",
            ClientConfig {
                deflate: Some(DeflateConfig::default()),
                ..Default::default()
            },
        );
        let ok = response_for(&c)
            .header(
                "sec-websocket-extensions",
                "permessage-deflate; server_max_window_bits=10",
            )
            .body(())
            .unwrap();
        assert_eq!(
            c.verify(&ok)
                .unwrap()
                .deflate
                .map(|p| p.server_max_window_bits),
            Some(10)
        );
        for (value, want) in [
            ("x-foo", "only offered permessage-deflate"),
            (
                "permessage-deflate, permessage-deflate",
                "offered at most one",
            ),
            (
                "permessage-deflate; bogus",
                "unknown permessage-deflate parameter",
            ),
            (
                "permessage-deflate; client_max_window_bits",
                "needs a value",
            ),
            ("permessage-deflate;", "malformed Sec-WebSocket-Extensions"),
        ] {
            let r = response_for(&c)
                .header("sec-websocket-extensions", value)
                .body(())
                .unwrap();
            match c.verify(&r).unwrap_err() {
                HandshakeError::Extensions(m) => assert!(m.contains(want), "{value}: {m}"),
                e => panic!("{value}: {e:?}"),
            }
        }
    }

    #[test]
    fn error_messages_explain() {
        assert!(HandshakeError::Method("POST".into())
            .to_string()
            .contains("must be a GET"));
        assert!(HandshakeError::NoUpgrade.to_string().contains("proxy"));
    }

    #[test]
    fn extended_connect_headers_have_no_key_nor_hop_by_hop() {
        let mut extra = HeaderMap::new();
        extra.insert("authorization", HeaderValue::from_static("Bearer x"));
        extra.insert("host", HeaderValue::from_static("other.example:8443"));
        extra.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        extra.insert("te", HeaderValue::from_static("gzip"));
        extra.insert("upgrade", HeaderValue::from_static("h2c"));
        let cfg = ClientConfig {
            subprotocols: vec!["chat".into(), "superchat".into()],
            deflate: Some(DeflateConfig::default()),
            origin: Some("https://example.com".into()),
            headers: extra,
        };
        let (h, authority) = extended_connect_headers(&cfg).unwrap();
        assert_eq!(authority.unwrap(), "other.example:8443");
        assert_eq!(h["sec-websocket-version"], "13");
        assert_eq!(h["origin"], "https://example.com");
        assert_eq!(h["sec-websocket-protocol"], "chat, superchat");
        assert_eq!(
            h["sec-websocket-extensions"],
            client_offer(&DeflateConfig::default()).as_str()
        );
        assert_eq!(h["authorization"], "Bearer x");
        for absent in [
            "host",
            "sec-websocket-key",
            "upgrade",
            "connection",
            "keep-alive",
            "te",
        ] {
            assert!(!h.contains_key(absent), "{absent} must not be sent over h2");
        }
        let (_, authority) = extended_connect_headers(&ClientConfig::default()).unwrap();
        assert!(authority.is_none());
    }

    #[test]
    fn client_negotiate_checks_subprotocol_and_extensions() {
        let cfg = ClientConfig {
            subprotocols: vec!["chat".into()],
            deflate: Some(DeflateConfig::default()),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        assert_eq!(client_negotiate(&h, &cfg).unwrap(), Negotiated::default());
        h.insert("sec-websocket-protocol", HeaderValue::from_static("chat"));
        h.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate"),
        );
        let n = client_negotiate(&h, &cfg).unwrap();
        assert_eq!(n.subprotocol.as_deref(), Some("chat"));
        assert!(n.deflate.is_some());
        h.insert("sec-websocket-protocol", HeaderValue::from_static("other"));
        assert_eq!(
            client_negotiate(&h, &cfg).unwrap_err(),
            HandshakeError::BadSubprotocol("other".into())
        );
        h.remove("sec-websocket-protocol");
        h.insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("x-foo"),
        );
        let no_deflate = ClientConfig::default();
        assert!(matches!(
            client_negotiate(&h, &no_deflate),
            Err(HandshakeError::Extensions(_))
        ));
    }

    #[test]
    fn extended_connect_errors_have_their_status() {
        let r: Rejection = HandshakeError::UnsupportedProtocol("h3-tunnel".into()).into();
        assert_eq!(r.response.status(), StatusCode::NOT_IMPLEMENTED);
        assert!(r.response.headers().is_empty());
        let r: Rejection = HandshakeError::ExtendedConnect("no :protocol".into()).into();
        assert_eq!(r.response.status(), StatusCode::BAD_REQUEST);
        assert!(r.error.to_string().contains("RFC 8441"));
    }
}

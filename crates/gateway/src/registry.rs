//! The generic HTTP/1.1 Upgrade mechanism (RFC 9110 §7.8) as a registry of
//! protocol handlers keyed by token.
//!
//! A handler ([`UpgradeProtocol`]) names the tokens it speaks (`name` or
//! `name/version`, compared case-insensitively), checks a request in
//! [`UpgradeProtocol::prepare`] and returns the `101` to send with a
//! [`Session`] that takes the connection over once the 101 is written. The
//! HTTP layer never knows which protocol it switched to.
//!
//! Selection ([`select`]) takes the first token in the *client's* `Upgrade`
//! list that a handler of the route supports. `h2c` is never selected nor
//! advertised (RFC 9113 §3.1 removed the h2c upgrade; `HTTP2-Settings` is
//! ignored). A request whose `Connection` lacks `upgrade`, or an HTTP/1.0
//! request, offers nothing ([`upgrade_offer`] returns `None`) and is answered
//! normally.
//!
//! See `lineecho.rs` for the smallest complete handler.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{HeaderMap, Request, Response, StatusCode};
use switchyard::proto::upgrade::{upgrade_offer, ProtocolToken, UpgradeError};
use tokio::sync::watch;

use crate::io::ServerIo;

/// A boxed future; one per upgraded connection, never per message.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A protocol a connection can switch to with `101 Switching Protocols`.
pub trait UpgradeProtocol: Send + Sync + 'static {
    /// The tokens this handler answers to, e.g. `websocket` or `TLS/1.3`.
    fn tokens(&self) -> &[ProtocolToken];

    /// Whether bytes the client sent right after the request head may belong
    /// to the new protocol (they are handed to [`Session::run`]). `false` for
    /// protocols where such bytes are an attack, like RFC 2817 TLS: the
    /// connection is then refused with 400 and closed, never served.
    fn accepts_early_data(&self) -> bool {
        true
    }

    /// Whether the protocol may be used on this connection (e.g. RFC 2817 TLS
    /// only on cleartext connections of a server with a certificate).
    fn available(&self, conn: &ConnInfo) -> bool {
        let _ = conn;
        true
    }

    /// Check `req` (which selected `token`) and build the switch: the `101`
    /// to write and the session that runs after it. A refusal is answered as
    /// is and the connection is closed.
    // A refusal is the cold path, built once per refused request: not boxed.
    #[allow(clippy::result_large_err)]
    fn prepare(
        &self,
        req: &Request<()>,
        token: &ProtocolToken,
        conn: &ConnInfo,
    ) -> Result<Switch, Refusal>;
}

/// What a handler agreed to: the `101` response and what runs after it.
pub struct Switch {
    /// Sent as is (it must be a 101 naming the selected token in `Upgrade`).
    pub response: Response<()>,
    /// Takes the connection over once the 101 is on the wire.
    pub session: Box<dyn Session>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("response", &self.response)
            .finish_non_exhaustive()
    }
}

/// The new protocol on an upgraded connection.
pub trait Session: Send + 'static {
    /// Run the protocol on `io`. `leftover` holds the bytes the client sent
    /// after the request head (they belong to the new protocol). Stop
    /// politely when `ctx.shutdown` turns true.
    fn run(
        self: Box<Self>,
        io: ServerIo,
        leftover: BytesMut,
        ctx: SessionCtx,
    ) -> BoxFuture<SessionEnd>;
}

/// Per-connection facts a handler may look at.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The connection is already TLS.
    pub tls: bool,
    /// The server has a certificate (so RFC 2817 TLS can be offered).
    pub has_certificate: bool,
}

/// What a session gets besides its bytes.
#[derive(Debug, Clone)]
pub struct SessionCtx {
    /// Turns true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// How long a polite close may take on shutdown.
    pub grace: Duration,
}

/// How a session ended.
// Returned once per upgraded connection; boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum SessionEnd {
    /// The connection is finished; the server drops it.
    Done,
    /// Continue serving HTTP/1.1 on `io` (e.g. after RFC 2817 switched the
    /// connection to TLS), first answering `pending` (the request that asked
    /// for the switch, its Upgrade consumed) if there is one.
    ContinueHttp {
        io: ServerIo,
        pending: Option<Request<()>>,
    },
}

impl std::fmt::Debug for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Done => f.write_str("Done"),
            SessionEnd::ContinueHttp { pending, .. } => f
                .debug_struct("ContinueHttp")
                .field("pending", pending)
                .finish_non_exhaustive(),
        }
    }
}

/// A refused switch: answered as is, then the connection is closed.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    /// Extra headers (e.g. `Sec-WebSocket-Version: 13` on a 426).
    pub headers: HeaderMap,
    /// A plain-text body saying why and what to do.
    pub body: String,
}

/// The handlers a route (or the whole server) offers.
#[derive(Clone, Default)]
pub struct Registry {
    protocols: Vec<Arc<dyn UpgradeProtocol>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.protocols
                    .iter()
                    .flat_map(|p| p.tokens().iter().map(|t| t.to_string())),
            )
            .finish()
    }
}

/// The outcome of [`select`].
pub enum Selection<'a> {
    /// No `Upgrade` offer counts, or none is supported: answer normally.
    None,
    /// The first supported token of the client's list, and its handler.
    Protocol(&'a Arc<dyn UpgradeProtocol>, ProtocolToken),
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Add a handler (later ones lose ties on the same token).
    pub fn with(mut self, protocol: Arc<dyn UpgradeProtocol>) -> Self {
        self.protocols.push(protocol);
        self
    }

    /// Add a handler.
    pub fn push(&mut self, protocol: Arc<dyn UpgradeProtocol>) {
        self.protocols.push(protocol);
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.protocols.is_empty()
    }

    /// Every advertised token, in registration order (`h2c` never).
    pub fn advertised(&self) -> Vec<String> {
        self.protocols
            .iter()
            .flat_map(|p| p.tokens().iter())
            .filter(|t| !t.is("h2c"))
            .map(|t| t.to_string())
            .collect()
    }

    /// Whether a handler speaks protocol `name` (any version, case-insensitive).
    pub fn speaks(&self, name: &str) -> bool {
        self.protocols
            .iter()
            .any(|p| p.tokens().iter().any(|t| t.is(name)))
    }

    /// The handler for one offered token, if any (never for `h2c`).
    pub fn find(
        &self,
        token: &ProtocolToken,
        conn: &ConnInfo,
    ) -> Option<&Arc<dyn UpgradeProtocol>> {
        if token.is("h2c") {
            return None;
        }
        self.protocols
            .iter()
            .find(|p| p.available(conn) && p.tokens().iter().any(|t| t.matches(token)))
    }
}

/// Choose the protocol for `req` among `registries` (searched in order for
/// each offered token). Returns `Err` (answer 400) on a hostile `Upgrade`
/// header (too many tokens, a token too long, a malformed one).
pub fn select<'a>(
    req: &Request<()>,
    registries: &[&'a Registry],
    conn: &ConnInfo,
) -> Result<Selection<'a>, UpgradeError> {
    let Some(offer) = upgrade_offer(req)? else {
        return Ok(Selection::None);
    };
    for token in offer {
        for reg in registries {
            if let Some(p) = reg.find(&token, conn) {
                return Ok(Selection::Protocol(p, token));
            }
        }
    }
    Ok(Selection::None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONNECTION, UPGRADE};
    use http::{HeaderValue, Version};

    struct Fake(Vec<ProtocolToken>);

    impl UpgradeProtocol for Fake {
        fn tokens(&self) -> &[ProtocolToken] {
            &self.0
        }
        fn prepare(
            &self,
            _: &Request<()>,
            _: &ProtocolToken,
            _: &ConnInfo,
        ) -> Result<Switch, Refusal> {
            Err(Refusal {
                status: StatusCode::IM_A_TEAPOT,
                headers: HeaderMap::new(),
                body: String::new(),
            })
        }
    }

    fn fake(tokens: &[&str]) -> Arc<dyn UpgradeProtocol> {
        Arc::new(Fake(
            tokens
                .iter()
                .filter_map(|t| ProtocolToken::parse(t))
                .collect(),
        ))
    }

    fn req(upgrade: &str, connection: &str, version: Version) -> Request<()> {
        let mut r = Request::new(());
        *r.version_mut() = version;
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_str(upgrade).unwrap());
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_str(connection).unwrap());
        r
    }

    const PLAIN: ConnInfo = ConnInfo {
        tls: false,
        has_certificate: false,
    };

    fn chosen(sel: Selection<'_>) -> Option<String> {
        match sel {
            Selection::None => None,
            Selection::Protocol(_, t) => Some(t.to_string()),
        }
    }

    #[test]
    fn the_clients_order_wins() {
        let reg = Registry::new()
            .with(fake(&["websocket"]))
            .with(fake(&["lineecho/1"]));
        let r = req("lineecho/1, websocket", "upgrade", Version::HTTP_11);
        assert_eq!(
            chosen(select(&r, &[&reg], &PLAIN).unwrap()).as_deref(),
            Some("lineecho/1")
        );
        let r = req("WebSocket, lineecho/1", "Upgrade", Version::HTTP_11);
        assert_eq!(
            chosen(select(&r, &[&reg], &PLAIN).unwrap()).as_deref(),
            Some("WebSocket")
        );
    }

    #[test]
    fn versions_must_match() {
        let reg = Registry::new().with(fake(&["lineecho/1"]));
        let r = req("lineecho/2, lineecho", "upgrade", Version::HTTP_11);
        assert!(chosen(select(&r, &[&reg], &PLAIN).unwrap()).is_none());
    }

    #[test]
    fn h2c_is_never_selected_nor_advertised() {
        let reg = Registry::new().with(fake(&["h2c", "websocket"]));
        assert_eq!(reg.advertised(), ["websocket"]);
        let r = req("h2c", "Upgrade, HTTP2-Settings", Version::HTTP_11);
        assert!(chosen(select(&r, &[&reg], &PLAIN).unwrap()).is_none());
        let r = req("h2c, websocket", "Upgrade", Version::HTTP_11);
        assert_eq!(
            chosen(select(&r, &[&reg], &PLAIN).unwrap()).as_deref(),
            Some("websocket")
        );
    }

    #[test]
    fn no_connection_upgrade_or_http10_offers_nothing() {
        let reg = Registry::new().with(fake(&["websocket"]));
        let r = req("websocket", "keep-alive", Version::HTTP_11);
        assert!(chosen(select(&r, &[&reg], &PLAIN).unwrap()).is_none());
        let r = req("websocket", "upgrade", Version::HTTP_10);
        assert!(chosen(select(&r, &[&reg], &PLAIN).unwrap()).is_none());
    }

    #[test]
    fn hostile_upgrade_headers_are_errors() {
        let reg = Registry::new().with(fake(&["websocket"]));
        let many = vec!["x"; 1000].join(", ");
        let r = req(&many, "upgrade", Version::HTTP_11);
        assert!(select(&r, &[&reg], &PLAIN).is_err());
        let long = "a".repeat(10 * 1024);
        let r = req(&long, "upgrade", Version::HTTP_11);
        assert!(select(&r, &[&reg], &PLAIN).is_err());
    }

    #[test]
    fn unavailable_handlers_are_skipped() {
        struct Never(Vec<ProtocolToken>);
        impl UpgradeProtocol for Never {
            fn tokens(&self) -> &[ProtocolToken] {
                &self.0
            }
            fn available(&self, _: &ConnInfo) -> bool {
                false
            }
            fn prepare(
                &self,
                _: &Request<()>,
                _: &ProtocolToken,
                _: &ConnInfo,
            ) -> Result<Switch, Refusal> {
                unreachable!("never available")
            }
        }
        let reg = Registry::new().with(Arc::new(Never(vec![
            ProtocolToken::parse("TLS/1.3").unwrap()
        ])));
        let r = req("TLS/1.3", "upgrade", Version::HTTP_11);
        assert!(chosen(select(&r, &[&reg], &PLAIN).unwrap()).is_none());
    }
}

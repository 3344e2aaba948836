//! A protocol a connection switches to: the handler's side
//! ([`UpgradeProtocol`]) and what runs after the `101` ([`Session`]).

use std::future::Future;
use std::pin::Pin;

use bytes::BytesMut;
use http::{Request, Response};
use switchyard::proto::upgrade::ProtocolToken;
use tokio::sync::watch;

use crate::io::ServerIo;
use crate::outcome::Refusal;
use crate::tracking::LiveApp;

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
#[derive(Debug)]
pub struct SessionCtx {
    /// Turns true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// A built-in app's registration (slot, `/status` entry, gauge): held
    /// as long as the session runs, told how it ended. `None` for a switch
    /// of the connection itself (RFC 2817).
    pub live: Option<Box<LiveApp>>,
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
        /// The connection, now in the new protocol (TLS).
        io: ServerIo,
        /// The request that asked for the switch, to answer first.
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

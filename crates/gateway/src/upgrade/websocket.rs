//! WebSocket (RFC 6455) as one [`UpgradeProtocol`] among others: the
//! handshake checks of `switchyard::proto::handshake` with the route's
//! limits, then the echo app.

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::FutureExt;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::Request;
use switchyard::proto::handshake::{self, Negotiated};
use switchyard::proto::upgrade::ProtocolToken;
use switchyard::proto::{Connection, Role};
use switchyard::server::AcceptConfig;
use switchyard::{Limits, WebSocket};
use tracing::info;

use super::protocol::{
    BoxFuture, ConnInfo, Session, SessionCtx, SessionEnd, Switch, UpgradeProtocol,
};
use crate::apps::echo::{self, record_end};
use crate::apps::AppSettings;
use crate::io::ServerIo;
use crate::outcome::{Reason, Refusal};

/// The `websocket` token running the echo app.
#[derive(Debug)]
pub struct WebSocketEcho {
    tokens: [ProtocolToken; 1],
    cfg: Arc<AcceptConfig>,
    /// `cfg.limits`, shared by every connection instead of copied into each.
    limits: Arc<Limits>,
    settings: AppSettings,
}

impl WebSocketEcho {
    /// The handler, with the handshake policy and limits of `cfg` and the
    /// route's idle timeout and drain grace.
    pub fn new(cfg: Arc<AcceptConfig>, settings: AppSettings) -> Self {
        WebSocketEcho {
            tokens: [ProtocolToken {
                name: "websocket".into(),
                version: None,
            }],
            limits: Arc::new(cfg.limits.clone()),
            cfg,
            settings,
        }
    }
}

impl UpgradeProtocol for WebSocketEcho {
    fn tokens(&self) -> &[ProtocolToken] {
        &self.tokens
    }

    fn prepare(
        &self,
        req: &Request<()>,
        _token: &ProtocolToken,
        _conn: &ConnInfo,
    ) -> Result<Switch, Refusal> {
        match handshake::server_accept(req, &self.cfg.handshake) {
            Ok(accepted) => Ok(Switch {
                response: accepted.response,
                session: Box::new(EchoSession {
                    negotiated: accepted.negotiated,
                    cfg: self.cfg.clone(),
                    limits: self.limits.clone(),
                    settings: self.settings.clone(),
                }),
            }),
            Err(rej) => Err(handshake_refusal(&rej)),
        }
    }
}

/// A refused WebSocket handshake as the gateway's refusal (the status and
/// headers the handshake chose, `Sec-WebSocket-Version: 13` on a 426...).
pub(crate) fn handshake_refusal(rej: &handshake::Rejection) -> Refusal {
    let mut r = Refusal::new(
        rej.response.status(),
        Reason::Handshake,
        rej.error.to_string(),
    );
    for (name, value) in rej.response.headers() {
        if name != CONTENT_LENGTH && name != CONTENT_TYPE && name != CONNECTION {
            r = r.with_header(name.clone(), value.clone());
        }
    }
    info!(status = %r.status, "websocket handshake refused: {}", r.detail);
    r
}

struct EchoSession {
    negotiated: Negotiated,
    cfg: Arc<AcceptConfig>,
    limits: Arc<Limits>,
    settings: AppSettings,
}

impl Session for EchoSession {
    fn run(
        self: Box<Self>,
        io: ServerIo,
        leftover: BytesMut,
        ctx: SessionCtx,
    ) -> BoxFuture<SessionEnd> {
        // Everything is set up here, before the future is built, so that the
        // future (which lives as long as the connection) holds only the echo
        // state: not this session, the leftover buffer or the context.
        let EchoSession {
            negotiated,
            cfg,
            limits,
            settings,
        } = *self;
        let conn = Connection::negotiated(
            Role::Server,
            limits,
            &negotiated,
            cfg.handshake.deflate.as_ref(),
        );
        drop(cfg);
        let ws = WebSocket::from_raw(io, conn, &leftover).with_negotiated(negotiated);
        // The bytes are copied; the buffer they came in (the head's read
        // buffer, KiBs of capacity) must not live as long as the session.
        drop(leftover);
        info!(subprotocol = ?ws.subprotocol(), "upgraded to websocket");
        let SessionCtx { shutdown, live } = ctx;
        let counters = live.as_ref().map(|l| l.counters().clone());
        let echo = echo::echo(ws, shutdown, settings, counters);
        // `map`, not an `async` block: a block would store the echo future
        // twice (once captured, once being awaited).
        Box::pin(echo.map(move |end| {
            record_end(end, live);
            SessionEnd::Done
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echo_session_future_is_small() {
        // Boxed once per WebSocket and alive as long as it (idle memory):
        // the echo state only, not stored twice by an `async` block.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let cfg = Arc::new(AcceptConfig::default());
        let session = Box::new(EchoSession {
            negotiated: Negotiated::default(),
            limits: Arc::new(cfg.limits.clone()),
            cfg,
            settings: AppSettings::default(),
        });
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let ctx = SessionCtx {
            shutdown,
            live: None,
        };
        let fut = session.run(ServerIo::Plain(server), BytesMut::new(), ctx);
        let size = std::mem::size_of_val(&*fut);
        assert!(size <= 704, "echo session future is {size} bytes");
    }
}

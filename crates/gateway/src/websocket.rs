//! WebSocket (RFC 6455) as one [`UpgradeProtocol`] among others: the
//! handshake checks of `switchyard::proto::handshake`, then the echo app.

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::FutureExt;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::Request;
use switchyard::proto::deflate::PerMessageDeflate;
use switchyard::proto::handshake::{self, Negotiated};
use switchyard::proto::upgrade::ProtocolToken;
use switchyard::proto::{Connection, Role};
use switchyard::server::AcceptConfig;
use switchyard::{Limits, WebSocket};
use tracing::info;

use crate::apps::{self, EchoEnd};
use crate::io::ServerIo;
use crate::registry::{
    BoxFuture, ConnInfo, Refusal, Session, SessionCtx, SessionEnd, Switch, UpgradeProtocol,
};

/// The `websocket` token running the echo app.
pub struct WebSocketEcho {
    tokens: [ProtocolToken; 1],
    cfg: Arc<AcceptConfig>,
    /// `cfg.limits`, shared by every connection instead of copied into each.
    limits: Arc<Limits>,
}

impl WebSocketEcho {
    /// The handler, with the handshake policy and limits of `cfg`.
    pub fn new(cfg: Arc<AcceptConfig>) -> Self {
        WebSocketEcho {
            tokens: [ProtocolToken {
                name: "websocket".into(),
                version: None,
            }],
            limits: Arc::new(cfg.limits.clone()),
            cfg,
        }
    }
}

/// Build the proto connection for what the handshake agreed to.
pub(crate) fn server_connection(
    negotiated: &Negotiated,
    cfg: &AcceptConfig,
    limits: Arc<Limits>,
) -> Connection {
    let mut conn = Connection::new(Role::Server, limits);
    if let Some(params) = negotiated.deflate {
        let dcfg = cfg.handshake.deflate.clone().unwrap_or_default();
        conn = conn.with_deflate(PerMessageDeflate::new(Role::Server, params, &dcfg));
    }
    conn
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
                }),
            }),
            Err(rej) => {
                let mut headers = rej.response.headers().clone();
                for h in [CONTENT_LENGTH, CONTENT_TYPE, CONNECTION] {
                    headers.remove(h);
                }
                info!(status = %rej.response.status(), "websocket handshake refused: {}", rej.error);
                Err(Refusal {
                    status: rej.response.status(),
                    headers,
                    body: format!("{}\n", rej.error),
                })
            }
        }
    }
}

struct EchoSession {
    negotiated: Negotiated,
    cfg: Arc<AcceptConfig>,
    limits: Arc<Limits>,
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
        } = *self;
        let conn = server_connection(&negotiated, &cfg, limits);
        drop(cfg);
        let ws = WebSocket::from_raw(io, conn, &leftover).with_negotiated(negotiated);
        // The bytes are copied; the buffer they came in (the head's read
        // buffer, KiBs of capacity) must not live as long as the session.
        drop(leftover);
        info!(subprotocol = ?ws.subprotocol(), "upgraded to websocket");
        let echo = apps::echo(ws, ctx.shutdown, ctx.grace);
        // `map`, not an `async` block: a block would store the echo future
        // twice (once captured, once being awaited).
        Box::pin(echo.map(|end| {
            log_end(end);
            SessionEnd::Done
        }))
    }
}

pub(crate) fn log_end(end: EchoEnd) {
    match end {
        EchoEnd::PeerClosed(frame) => info!(?frame, "websocket closed by peer"),
        EchoEnd::Shutdown => info!("websocket closed with 1001 (shutdown)"),
        EchoEnd::Failed(e) => info!("websocket failed: {e}"),
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
        });
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let ctx = SessionCtx {
            shutdown,
            grace: std::time::Duration::from_secs(1),
        };
        let fut = session.run(ServerIo::Plain(server), BytesMut::new(), ctx);
        let size = std::mem::size_of_val(&*fut);
        assert!(size <= 512, "echo session future is {size} bytes");
    }
}

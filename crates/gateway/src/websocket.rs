//! WebSocket (RFC 6455) as one [`UpgradeProtocol`] among others: the
//! handshake checks of `switchyard::proto::handshake`, then the echo app.

use std::sync::Arc;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::Request;
use switchyard::proto::deflate::PerMessageDeflate;
use switchyard::proto::handshake::{self, Negotiated};
use switchyard::proto::upgrade::ProtocolToken;
use switchyard::proto::{Connection, Role};
use switchyard::server::AcceptConfig;
use switchyard::WebSocket;
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
}

impl WebSocketEcho {
    /// The handler, with the handshake policy and limits of `cfg`.
    pub fn new(cfg: Arc<AcceptConfig>) -> Self {
        WebSocketEcho {
            tokens: [ProtocolToken {
                name: "websocket".into(),
                version: None,
            }],
            cfg,
        }
    }
}

/// Build the proto connection for what the handshake agreed to.
pub(crate) fn server_connection(negotiated: &Negotiated, cfg: &AcceptConfig) -> Connection {
    let mut conn = Connection::new(Role::Server, cfg.limits.clone());
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
            Ok(accepted) => {
                let negotiated = Negotiated {
                    subprotocol: accepted.subprotocol,
                    deflate: accepted.deflate,
                };
                Ok(Switch {
                    response: accepted.response,
                    session: Box::new(EchoSession {
                        negotiated,
                        cfg: self.cfg.clone(),
                    }),
                })
            }
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
}

impl Session for EchoSession {
    fn run(
        self: Box<Self>,
        io: ServerIo,
        leftover: BytesMut,
        ctx: SessionCtx,
    ) -> BoxFuture<SessionEnd> {
        Box::pin(async move {
            let conn = server_connection(&self.negotiated, &self.cfg);
            let ws = WebSocket::from_raw(io, conn, &leftover).with_negotiated(self.negotiated);
            // The bytes are copied; the buffer they came in (the head's read
            // buffer, KiBs of capacity) must not live as long as the session.
            drop(leftover);
            info!(subprotocol = ?ws.subprotocol(), "upgraded to websocket");
            log_end(apps::echo(ws, ctx.shutdown, ctx.grace).await);
            SessionEnd::Done
        })
    }
}

pub(crate) fn log_end(end: EchoEnd) {
    match end {
        EchoEnd::PeerClosed(frame) => info!(?frame, "websocket closed by peer"),
        EchoEnd::Shutdown => info!("websocket closed with 1001 (shutdown)"),
        EchoEnd::Failed(e) => info!("websocket failed: {e}"),
    }
}

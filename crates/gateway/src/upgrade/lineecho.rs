//! The `lineecho/1` handler: the 101, then the line-echo app on
//! the connection.

use std::time::Duration;

use bytes::BytesMut;
use http::Request;
use switchyard::proto::upgrade::{switching_protocols, ProtocolToken};

use super::protocol::{
    BoxFuture, ConnInfo, Session, SessionCtx, SessionEnd, Switch, UpgradeProtocol,
};
use crate::apps::lineecho::line_echo;
use crate::io::ServerIo;
use crate::outcome::Refusal;

/// The `lineecho/1` handler.
#[derive(Debug)]
pub struct LineEcho {
    tokens: [ProtocolToken; 1],
    idle: Duration,
}

impl LineEcho {
    /// The token.
    pub const TOKEN: &'static str = "lineecho/1";

    /// The handler; sessions end after `idle` without a byte.
    pub fn new(idle: Duration) -> Self {
        LineEcho {
            tokens: [ProtocolToken {
                name: "lineecho".into(),
                version: Some("1".into()),
            }],
            idle,
        }
    }
}

impl UpgradeProtocol for LineEcho {
    fn tokens(&self) -> &[ProtocolToken] {
        &self.tokens
    }

    fn prepare(
        &self,
        _req: &Request<()>,
        _token: &ProtocolToken,
        _conn: &ConnInfo,
    ) -> Result<Switch, Refusal> {
        Ok(Switch {
            response: switching_protocols(Self::TOKEN),
            session: Box::new(LineEchoSession { idle: self.idle }),
        })
    }
}

struct LineEchoSession {
    idle: Duration,
}

impl Session for LineEchoSession {
    fn run(
        self: Box<Self>,
        io: ServerIo,
        leftover: BytesMut,
        ctx: SessionCtx,
    ) -> BoxFuture<SessionEnd> {
        Box::pin(async move {
            let SessionCtx { shutdown, live } = ctx;
            let counters = live.as_ref().map(|l| l.counters().clone());
            let end = line_echo(io, leftover, self.idle, shutdown, counters).await;
            if let Some(live) = live {
                live.closed(end.close());
            }
            tracing::info!(?end, "lineecho session ended");
            SessionEnd::Done
        })
    }
}

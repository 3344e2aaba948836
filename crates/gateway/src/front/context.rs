//! What every front shares: the listener's context ([`Front`]), the
//! connection's ([`ConnCtx`]), and what a switched HTTP/1.1 connection
//! hands to its task ([`Upgraded`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard::proto::HttpVersion;
use switchyard::Limits;
use tokio::sync::{mpsc, watch};

use crate::admission::ConnectionGuard;
use crate::config::Http1;
use crate::dispatch::{Connection, Dispatcher};
use crate::live::RouteEntry;
use crate::metrics::Transport;
use crate::outcome::Reason;
use crate::tracking::{ConnectionInfo, LiveApp};
use crate::upgrade::{BoxFuture, ConnInfo, Registry, SessionEnd};

use super::h2_settings::Http2Settings;

/// What every connection of one listener shares (read-only).
#[derive(Debug)]
pub(crate) struct Front {
    /// Decides every request.
    pub dispatcher: Dispatcher,
    /// `[limits]`: head caps and the head deadline.
    pub limits: Limits,
    /// `[http1]`.
    pub http1: Http1,
    /// The HTTP/2 server, when the listener serves it.
    pub http2: Option<Http2Settings>,
    /// Protocols the connections themselves switch to (RFC 2817 TLS).
    pub conn_protocols: Registry,
    /// Whether the listener has a certificate.
    pub has_certificate: bool,
    /// How long shutdown waits for connections to finish their closing
    /// handshakes.
    pub grace: Duration,
    /// `Alt-Svc` for the TCP responses when the listener also serves HTTP/3.
    pub alt_svc: Option<http::HeaderValue>,
    /// Connection ids, for the tracing spans.
    pub next_id: AtomicU64,
}

impl Front {
    /// The next connection id (for the connection's tracing span).
    pub(crate) fn connection_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Register a built-in app's switched connection on `route` for
    /// `/status` and the metrics, holding its `permit` (see [`LiveApp`]).
    pub(crate) fn live_app(
        &self,
        route: &RouteEntry,
        client: SocketAddr,
        protocol: HttpVersion,
        transport: Transport,
        permit: Option<ConnectionGuard>,
    ) -> Box<LiveApp> {
        let gateway = self.dispatcher.gateway();
        let info = ConnectionInfo {
            tag: route.tag.clone(),
            client,
            protocol,
        };
        Box::new(LiveApp::new(
            gateway.connections(),
            gateway.metrics(),
            info,
            transport,
            permit,
        ))
    }

    /// A connection the front served itself (an app, or a connection-level
    /// protocol) switched on `route` over `protocol`, `decided` being when
    /// the dispatcher decided: counted as a switched upgrade attempt and its
    /// handshake timed. Proxied switches are counted by the proxy.
    pub(crate) fn switched(&self, route: &str, protocol: HttpVersion, decided: Instant) {
        let metrics = self.dispatcher.gateway().metrics();
        metrics.upgrade_attempt(route, "switched", Reason::Switched.label());
        metrics.observe_handshake(route, protocol, decided.elapsed());
    }

    /// What the dispatcher needs to know of a connection.
    pub(crate) fn connection(&self, tls: bool) -> Connection<'_> {
        Connection {
            upgrades: &self.conn_protocols,
            info: ConnInfo {
                tls,
                has_certificate: self.has_certificate,
            },
        }
    }
}

/// Per-connection handles: the shutdown signal and the liveness token that
/// the runtime waits for at shutdown.
#[derive(Debug, Clone)]
pub(crate) struct ConnCtx {
    /// Turns true when the server shuts down.
    pub stop: watch::Receiver<bool>,
    /// Held by every task of the connection.
    pub alive: mpsc::Sender<()>,
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(super) async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// The body of a 404.
pub(crate) fn not_found_body(path: &str) -> String {
    format!("not found: no route for {path}\n")
}

/// A connection that switched protocols: the session to run in the
/// connection's task, and the context it holds (the liveness token).
pub(crate) struct Upgraded {
    pub(crate) session: BoxFuture<SessionEnd>,
    pub(crate) ctx: ConnCtx,
}

//! The handlers a route or a listener offers, keyed by token.

use std::sync::Arc;

use switchyard::proto::upgrade::ProtocolToken;

use super::protocol::{ConnInfo, UpgradeProtocol};
use super::{lineecho, websocket};
use crate::apps::AppSettings;
use crate::config::App;

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

/// The handlers of a built-in app: WebSocket (the echo) with the route's
/// handshake and limits, or `lineecho/1`; none for a page.
pub fn app_handlers(
    app: App,
    websocket: Option<&Arc<switchyard::server::AcceptConfig>>,
    settings: &AppSettings,
) -> Registry {
    let mut r = Registry::new();
    match app {
        App::Echo => {
            if let Some(cfg) = websocket {
                r.push(Arc::new(websocket::WebSocketEcho::new(
                    cfg.clone(),
                    settings.clone(),
                )));
            }
        }
        App::LineEcho => r.push(Arc::new(lineecho::LineEcho::new(settings.idle_timeout))),
        App::Index => {}
    }
    r
}

//! The built-in applications a route can serve instead of an upstream:
//! the WebSocket [`echo`], the [`index`] page and [`lineecho`], the
//! smallest Upgrade protocol. Each runs on whatever the front hands it (an
//! HTTP/1.1 connection after its 101, an HTTP/2 or HTTP/3 stream), with the
//! route's policy ([`AppSettings`] here, limits in the WebSocket).

use std::time::Duration;

pub(crate) mod echo;
pub(crate) mod index;
pub(crate) mod lineecho;

/// A route's policy as an app applies it to its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    /// Close a connection when nothing arrived for this long.
    pub idle_timeout: Duration,
    /// On shutdown, how long the closing handshake may take.
    pub drain_timeout: Duration,
}

impl Default for AppSettings {
    /// The route policy's defaults.
    fn default() -> Self {
        let p = crate::config::Policy::default();
        AppSettings {
            idle_timeout: p.idle_timeout,
            drain_timeout: p.drain_timeout,
        }
    }
}

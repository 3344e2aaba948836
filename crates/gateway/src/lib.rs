//! switchyard-gateway: the server behind `switchyard serve`.
//!
//! * [`server`]: listeners, the per-connection HTTP/1.1 front (head with its
//!   caps and deadline, routing, 101 / 426 / 404), connection tracking and the
//!   graceful shutdown that closes every WebSocket with 1001.
//! * [`apps`]: the built-in applications (WebSocket echo, the index page).
//! * [`proxy`]: the reverse proxy core (forwarding rules, upstream groups,
//!   verified upgrades, transparent and frame-aware tunnels, caps, metrics).
//! * [`config`]: the TOML configuration of `switchyard serve --config`.
//! * [`tls`]: certificates, keys and the rustls server configuration.

pub mod apps;
pub mod config;
pub mod proxy;
pub mod server;
pub mod tls;

pub use server::{ServeConfig, Server};

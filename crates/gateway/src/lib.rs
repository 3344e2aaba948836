//! switchyard-gateway: the server behind `switchyard serve`.
//!
//! * [`server`]: listeners, routes, connection tracking and the graceful
//!   shutdown that closes every WebSocket with 1001.
//! * [`http1`]: the HTTP/1.1 connection loop (keep-alive, pipelining, bodies)
//!   and the Upgrade dispatch; [`h2`]: the HTTP/2 server (RFC 8441);
//!   [`h3`]: WebSocket over HTTP/3 (RFC 9220) with `Alt-Svc`.
//! * [`registry`]: the generic Upgrade mechanism (RFC 9110 §7.8), with the
//!   handlers [`websocket`], [`lineecho`] and [`tls_upgrade`] (RFC 2817).
//! * [`io`]: the connection stream types.
//! * [`apps`]: the built-in applications (WebSocket echo, the index page).
//! * [`proxy`]: the reverse proxy core (forwarding rules, upstream groups,
//!   verified upgrades, transparent and frame-aware tunnels, caps, metrics).
//! * [`config`]: the TOML configuration of `switchyard serve --config`.
//! * [`tls`]: certificates, keys and the rustls server configuration.

pub mod admin;
pub mod apps;
pub mod config;
pub mod h2;
pub mod h3;
pub mod http1;
pub mod io;
pub mod lineecho;
pub mod proxy;
pub mod registry;
pub mod routing;
pub mod server;
pub mod tls;
pub mod tls_upgrade;
#[cfg(target_os = "linux")]
pub mod uring;
pub mod websocket;

pub use server::{
    Http1Settings, Http2Settings, Page, Route, ServeConfig, Server, TlsMode, TlsSettings,
};

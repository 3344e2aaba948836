//! switchyard-gateway: the server behind `switchyard serve`.
//!
//! One [`Config`] (the embedded default, a TOML file, command-line flags on
//! top) describes everything; [`Gateway`] holds it live (reload swaps it
//! whole) and [`Server`] binds and runs its listeners. The path of a
//! request:
//!
//! * [`runtime`]: listeners accept TCP (and QUIC) connections, TLS, drain,
//!   reload of the listener list, the admin listener;
//! * `front`: HTTP/1.1, HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220) turn each
//!   request into one protocol-neutral [`RequestHead`];
//! * [`dispatch`]: the one [`Dispatcher`] picks the route, applies its
//!   policy (Origin, caps, 426, TLS-only) and decides: a built-in app, the
//!   proxy, a refusal, or 404;
//! * `apps` (echo, index page, lineecho) run on the switched connection
//!   through the Upgrade handlers of [`upgrade`]; [`proxy`] verifies an
//!   upstream upgrade and runs the tunnel.
//!
//! Supporting modules: [`config`], [`live`] (generations and reload),
//! [`cluster`] (several instances sharing fallback sessions through Redis),
//! [`metrics`] (the Prometheus registry),
//! [`admission`] (Origin and caps), [`outcome`] (reasons and refusals),
//! `tracking` (live connections for `/status`), [`failures`] (refused
//! and failed upgrade attempts, explained), [`io`] (the connection
//! streams, io_uring), [`tls`] (certificates).
//!
//! See docs/architecture.md for where to add a route policy, a protocol
//! token or a check.

#![warn(missing_docs, unreachable_pub)]

/// The README's example, compiled as a doc-test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

// The fronts, the built-in apps and the connection table are internals:
// a library user configures them through `config` and runs them with
// `Server`.

pub mod admission;
mod apps;
pub mod census;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod failures;
mod front;
pub mod io;
pub mod live;
pub mod metrics;
pub mod outcome;
mod probe;
pub mod proxy;
pub mod runtime;
pub mod session;
pub mod shared_caps;
mod sync;
pub mod tls;
mod tracking;
pub mod upgrade;

pub use config::{Config, ConfigError};
pub use dispatch::{Decision, Dispatcher, RequestHead};
pub use live::{Gateway, GatewayError};
pub use runtime::{BoundAddress, ServeError, Server};

//! The fronts: HTTP/1.1 ([`h1`]), HTTP/2 ([`h2`], RFC 8441) and HTTP/3
//! ([`h3`], RFC 9220). Each speaks its wire format and nothing else: it
//! turns a request into a [`crate::dispatch::RequestHead`], asks the
//! [`crate::dispatch::Dispatcher`] for a
//! [`crate::dispatch::Decision`], and carries it out with its own glue (a
//! `101` and a session on HTTP/1.1, a `200` and a stream on HTTP/2 and
//! HTTP/3). Routes, policies, apps and the proxy are never decided here.
//!
//! [`task`] is the task of one accepted connection: the front's handshake
//! part, then the switched session in the same task.

mod answer;
mod context;
pub(crate) mod h1;
mod h1_body;
mod h1_proxy;
mod h1_stream;
pub(crate) mod h2;
mod h2_settings;
pub(crate) mod h3;
mod session;
pub(crate) mod task;

pub(crate) use context::{ConnCtx, Front, Upgraded};
pub(crate) use h2_settings::Http2Settings;

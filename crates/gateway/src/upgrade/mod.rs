//! The generic HTTP/1.1 Upgrade mechanism (RFC 9110 §7.8) as a registry of
//! protocol handlers keyed by token.
//!
//! A handler ([`UpgradeProtocol`]) names the tokens it speaks (`name` or
//! `name/version`, compared case-insensitively), checks a request in
//! [`UpgradeProtocol::prepare`] and returns the `101` to send with a
//! [`Session`] that takes the connection over once the 101 is written. The
//! HTTP layer never knows which protocol it switched to.
//!
//! Each app route has a [`Registry`] of its protocols ([`app_handlers`]);
//! a listener with RFC 2817 has one for the connection ([`tls`]). The
//! dispatcher ([`crate::dispatch`]) picks the first token of the client's
//! `Upgrade` list that one of them speaks; `h2c` is never selected nor
//! advertised (RFC 9113 §3.1 removed the h2c upgrade).
//!
//! [`lineecho`] is the smallest complete handler: adding a protocol is one
//! handler here, one [`crate::config::App`] and its tokens.

pub mod lineecho;
mod protocol;
mod registry;
pub mod tls;
pub mod websocket;

pub use protocol::{BoxFuture, ConnInfo, Session, SessionCtx, SessionEnd, Switch, UpgradeProtocol};
pub use registry::{app_handlers, Registry};

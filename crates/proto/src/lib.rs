//! switchyard-proto: the sans-IO core of switchyard.
//!
//! Bytes in, events out, bytes to send. Nothing here touches a socket, a clock or
//! a runtime, so every rule can be unit-tested and fuzzed, and the same state
//! machine serves HTTP/1.1, HTTP/2 and HTTP/3 streams in both roles.
//!
//! # At the top level
//!
//! What a server or client needs to run a WebSocket over its own I/O:
//!
//! * HTTP/1.1 heads: [`RequestParser`], [`ResponseParser`] ([`HeadError`]
//!   says what to answer);
//! * the opening handshake: [`server_accept`] with a [`ServerConfig`]
//!   ([`OriginPolicy`] says who may connect, [`Rejection`] is the refusal to
//!   send), [`ClientHandshake`] with a [`ClientConfig`]; over HTTP/2 and
//!   HTTP/3, [`ExtendedConnect`]; [`Negotiated`] is what both sides agreed
//!   to, [`DeflateConfig`] the permessage-deflate settings;
//! * the connection: [`Connection::negotiated`] builds it from the
//!   handshake, then bytes in, [`Message`]s out ([`ProtocolError`] when the
//!   peer breaks the rules, [`SendError`] when a message cannot be queued);
//! * [`Limits`], [`Role`], [`CloseCode`], [`CloseFrame`], [`State`],
//!   [`HttpVersion`].
//!
//! # Modules
//!
//! * [`head`]: incremental HTTP/1.1 request/response head parser with hard caps.
//! * [`chunked`]: the chunked transfer coding of a body, decoded in constant memory.
//! * [`upgrade`]: `Connection` / `Upgrade` token handling, 101 and 426 builders.
//! * [`handshake`]: the WebSocket opening handshake, server and client.
//! * [`extended_connect`]: a server's checks of an HTTP/2 or HTTP/3
//!   extended CONNECT (RFC 8441 / RFC 9220).
//! * [`extensions`]: linear parser for `Sec-WebSocket-Extensions`.
//! * [`deflate`]: permessage-deflate (RFC 7692) negotiation and codec.
//! * [`frame`], [`mask`], [`utf8`], [`close`]: the RFC 6455 wire pieces.
//! * [`connection`]: the WebSocket connection state machine; [`role`]: client or server.
//! * [`http_version`]: which HTTP version carries a WebSocket.
//! * [`limits`]: every limit, with its safe default.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, unreachable_pub)]

/// Chainable setters, one per public field, for the configuration structs
/// that are `#[non_exhaustive]` (so that a field can be added without
/// breaking users, who then cannot write a struct literal).
macro_rules! setters {
    ($ty:ident { $($field:ident: $fty:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Set [`", stringify!($ty), "::", stringify!($field), "`].")]
                #[must_use]
                pub fn $field(mut self, value: $fty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}
pub(crate) use setters;

/// The README's examples, compiled and run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod chunked;
pub mod close;
pub mod connection;
pub mod deflate;
pub mod extended_connect;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod head;
pub mod http_version;
pub mod limits;
pub mod mask;
pub mod message;
pub mod role;
pub mod upgrade;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use connection::{Connection, ProtocolError, SendError, State};
pub use deflate::DeflateConfig;
pub use extended_connect::ExtendedConnect;
pub use handshake::{
    server_accept, ClientConfig, ClientHandshake, HandshakeError, Negotiated, OriginPolicy,
    Rejection, ServerConfig,
};
pub use head::{HeadError, RequestParser, ResponseParser};
pub use http_version::HttpVersion;
pub use limits::Limits;
pub use message::Message;
pub use role::Role;

//! switchyard: async (tokio) WebSocket client and server on the sans-IO core
//! [`switchyard_proto`].
//!
//! * [`WebSocket`]: a `Stream` of received [`Message`]s and a `Sink` of messages
//!   to send, over any `AsyncRead + AsyncWrite` stream; [`WebSocket::split`]
//!   gives two halves for two tasks. Heartbeat and close deadlines from
//!   [`Limits`].
//! * [`server`]: read the request head, accept on a raw stream, or upgrade
//!   inside a hyper 1 service.
//! * [`h2`]: WebSocket over HTTP/2 (RFC 8441 extended CONNECT), server
//!   [`h2::accept`] and a multiplexing client [`h2::H2Connection`].
//! * [`client`]: `connect("ws://..."/"wss://...")` with rustls, or the
//!   handshake over any stream.

pub use switchyard_proto as proto;
pub use switchyard_proto::message::Utf8Bytes;
pub use switchyard_proto::{CloseCode, CloseFrame, Limits, Message, Role};

pub mod client;
pub mod error;
pub mod h2;
pub mod h3;
pub mod server;
pub mod websocket;

pub use client::{connect, ClientBuilder, MaybeTlsStream};
pub use error::Error;
pub use server::{accept, accept_request, read_request_head, AcceptConfig};
pub use websocket::{WebSocket, WsReader, WsWriter};

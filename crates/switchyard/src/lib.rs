//! switchyard: async (tokio) WebSocket client and server on the sans-IO core
//! [`switchyard_proto`] (re-exported as [`proto`]).
//!
//! # At the top level
//!
//! * [`WebSocket`]: a `Stream` of received [`Message`]s and a `Sink` of messages
//!   to send, over any `AsyncRead + AsyncWrite` stream; [`WebSocket::split`]
//!   gives two halves for two tasks ([`WsReader`], [`WsWriter`]).
//! * Server: [`accept`] on a raw stream (or [`read_request_head`] then
//!   [`accept_request`]), with an [`AcceptConfig`].
//! * Client: [`connect`], or a [`ClientBuilder`] for subprotocols,
//!   [`DeflateConfig`], headers, TLS roots and [`Limits`];
//!   [`connect_auto`] picks HTTP/1.1 or HTTP/2 by ALPN and says which
//!   ([`Choice`], [`HttpVersion`]) in an [`AnyWebSocket`].
//! * [`Error`] for everything, with [`Deadline`], [`H2Error`], [`H3Error`];
//!   [`CloseCode`] and [`CloseFrame`] for the closing handshake.
//!
//! # Modules
//!
//! * [`server`]: read the request head, accept on a raw stream, or upgrade
//!   inside a hyper 1 service.
//! * [`h2`]: WebSocket over HTTP/2 (RFC 8441 extended CONNECT), server
//!   [`h2::accept`] and a multiplexing client [`h2::H2Connection`].
//! * [`h3`]: WebSocket over HTTP/3 (RFC 9220) on quinn: server
//!   [`h3::bind_endpoint`] + [`h3::serve`], client [`h3::connect_h3`] and
//!   the multiplexing [`h3::H3Connection`].
//! * [`client`]: `connect("ws://..."/"wss://...")` with rustls, or the
//!   handshake over any stream.
//! * [`auto`]: the choice between HTTP/1.1 and HTTP/2.
//! * [`websocket`]: the [`WebSocket`] itself; [`error`]: the error types.

//! # Server
//!
//! ```no_run
//! use futures_util::{SinkExt, StreamExt};
//! use switchyard::server::{accept, AcceptConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! let cfg = AcceptConfig::default();
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     let cfg = cfg.clone();
//!     tokio::spawn(async move {
//!         // Answers 400/408/431/426... by itself when the request is bad.
//!         let Ok(mut ws) = accept(tcp, &cfg).await else { return };
//!         while let Some(Ok(msg)) = ws.next().await {
//!             if msg.is_data() && ws.send(msg).await.is_err() {
//!                 break;
//!             }
//!         }
//!     });
//! }
//! # }
//! ```
//!
//! # Client
//!
//! ```no_run
//! use futures_util::{SinkExt, StreamExt};
//! use switchyard::{ClientBuilder, CloseCode, Message};
//!
//! # async fn run() -> Result<(), switchyard::Error> {
//! let (mut ws, _response) = ClientBuilder::new()
//!     .subprotocols(["chat"])
//!     .connect("wss://example.com/socket")
//!     .await?;
//! ws.send(Message::text("hello")).await?;
//! if let Some(reply) = ws.next().await {
//!     println!("{:?}", reply?);
//! }
//! ws.close(CloseCode::NORMAL, "bye").await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Timeouts and limits
//!
//! All from [`Limits`]: `handshake_timeout` bounds the request head (server,
//! answered with 408) and the whole connect + TLS + handshake (client);
//! `ping_interval` / `pong_timeout` run the heartbeat (a silent peer is closed
//! with 1011 and the stream yields `Error::Timeout(Deadline::Pong)`); `close_timeout`
//! bounds the closing handshake; `max_write_buffer` is the `Sink`
//! backpressure threshold.
//!
//! These deadlines run on tokio's timers, so the runtime needs them:
//! `#[tokio::main]` and `Builder::enable_all()` (or `enable_time()`) turn them
//! on. On a runtime built without them tokio itself panics at the first
//! deadline with "timers are disabled. Call `enable_time` on the runtime
//! builder"; tokio offers no way to ask a runtime beforehand.

#![warn(missing_docs, unreachable_pub)]

pub use switchyard_proto as proto;
pub use switchyard_proto::message::Utf8Bytes;
pub use switchyard_proto::{
    CloseCode, CloseFrame, DeflateConfig, HttpVersion, Limits, Message, Role,
};

/// The README's examples, compiled and run as doc-tests (one of them needs
/// the feature `axum`).
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod auto;
#[cfg(feature = "axum")]
pub mod axum;
pub mod client;
pub mod error;
pub mod fallback;
pub mod h2;
pub mod h3;
mod recv_pool;
mod refusal;
pub mod server;
pub mod websocket;

pub use auto::{connect_auto, AnyWebSocket, Choice, ChoiceReason};
pub use client::{connect, ClientBuilder, MaybeTlsStream};
pub use error::{Deadline, Error, H2Error, H3Error};
pub use server::{
    accept, accept_request, read_request_head, read_request_head_buffered, AcceptConfig,
};
pub use websocket::{WebSocket, WsReader, WsWriter};

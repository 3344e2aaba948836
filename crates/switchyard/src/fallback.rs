//! Fallback sessions: a WebSocket for clients whose path cannot carry one
//! (a proxy drops `Upgrade`, a middlebox kills long-lived connections).
//!
//! The switchyard gateway holds a real WebSocket to the backend and speaks
//! Server-Sent Events or long polling plus POSTs to the client, over plain
//! HTTP requests (`docs/fallback.md` has the wire format):
//!
//! * [`wire`]: the requests, ids, sequence numbers and JSON bodies;
//! * [`sse`]: the `text/event-stream` framing;
//! * [`FallbackSocket`]: the client, with the shape of a
//!   [`crate::WebSocket`]: a `Stream` of received [`Message`]s and a `Sink`
//!   of messages to send. It resumes after network errors without loss or
//!   duplicates (every message carries a sequence number both ways).
//!
//! ```no_run
//! use futures_util::{SinkExt, StreamExt};
//! use switchyard::fallback::{FallbackBuilder, Transport};
//! use switchyard::Message;
//!
//! # async fn run() -> Result<(), switchyard::fallback::FallbackError> {
//! let mut s = FallbackBuilder::new(Transport::Sse)
//!     .subprotocols(["chat"])
//!     .connect("http://127.0.0.1:8080/echo")
//!     .await?;
//! s.send(Message::text("hello")).await?;
//! if let Some(reply) = s.next().await {
//!     println!("{:?}", reply?);
//! }
//! s.close(switchyard::CloseCode::NORMAL, "bye").await?;
//! # Ok(())
//! # }
//! ```

mod client;
pub mod sse;
pub mod wire;

pub use client::{FallbackBuilder, FallbackError, FallbackSocket};
pub use wire::Transport;

#[allow(unused_imports)] // for the docs above
use switchyard_proto::Message;

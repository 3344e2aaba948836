//! WebSocket over HTTP/3 (RFC 9220): RFC 8441's extended CONNECT on a QUIC
//! connection ([quinn]), both roles.
//!
//! * Server: [`bind_endpoint`] makes a UDP endpoint with the TCP listener's
//!   rustls config (ALPN `h3`), [`serve`] answers extended CONNECT
//!   `:protocol websocket` with 200 and hands each [`WebSocket`](crate::WebSocket) to a
//!   callback, until a shutdown future resolves.
//!   A [`RequestHook`] ([`H3Server::requests`]) takes any request first:
//!   a gateway answers plain ones with a streamed response
//!   ([`PendingStream::into_exchange`], [`H3Body`], [`H3Responder`]).
//! * Client: [`connect_h3`] for one WebSocket, or [`H3Connection`] to open
//!   many WebSockets on one QUIC connection ([`H3Connection::websocket`]),
//!   and plain requests ([`H3Connection::send_request`]).
//!
//! The WebSocket runs on an [`H3Stream`] (DATA frames of the request
//! stream), with the same state machine and [`Limits`](crate::Limits) as
//! HTTP/1.1.
//!
//! ## Why not the `h3` crate
//!
//! `h3` (0.0.8) parses `:protocol` into a closed enum (`webtransport`,
//! `connect-udp`): a request with `:protocol websocket` is malformed there,
//! and a client cannot send one. So this module speaks the small part of HTTP/3 a
//! WebSocket needs, on quinn: control streams with SETTINGS
//! (`SETTINGS_ENABLE_CONNECT_PROTOCOL = 1`, no QPACK dynamic table),
//! HEADERS / DATA frames, QPACK with the static table and literals
//! (Huffman decoding included). Everything else a peer may send (unknown
//! frames and settings, GOAWAY, QPACK streams) is skipped as RFC 9114 asks.
//!
//! ## Limits (HTTP/3 specific)
//!
//! | what | value |
//! | --- | --- |
//! | request / response header section (QPACK-decoded, RFC 9114 size) | `Limits::max_head_bytes` (431 over it), advertised as SETTINGS_MAX_FIELD_SECTION_SIZE |
//! | header fields | `Limits::max_headers` (431) |
//! | time to receive the request HEADERS | `Limits::handshake_timeout` (stream reset H3_REQUEST_INCOMPLETE) |
//! | QUIC connections per [`serve`] | [`MAX_CONNECTIONS`] = 10,000 (more refused) |
//! | concurrent request streams (WebSockets) per connection | [`MAX_STREAMS_PER_CONNECTION`] = 100 |
//! | peer's unidirectional streams | 8 |
//! | control stream frame | 4 KiB |
//! | DATA frame we send | [`MAX_DATA_FRAME`] = 32 KiB |
//! | QUIC idle timeout | [`IDLE_TIMEOUT`] = 60 s |
//! | client QUIC keep-alive PING (keeps quiet WebSockets open) | [`CLIENT_KEEP_ALIVE`] = 20 s |
//! | 0-RTT | off (an extended CONNECT must not be replayable) |

mod client;
mod connection;
mod frame;
mod head;
mod huffman;
mod message;
mod qpack;
mod server;
mod stream;

pub use client::{connect_h3, H3Connection};
pub use connection::{CLIENT_KEEP_ALIVE, IDLE_TIMEOUT, MAX_STREAMS_PER_CONNECTION};
pub use frame::PeerSettings;
pub use message::{H3Body, H3Responder};
pub use server::{
    alt_svc, bind_endpoint, serve, serve_with_max_connections, H3Server, OnWebSocket,
    PendingStream, RequestHandler, RequestHook, Route, MAX_CONNECTIONS,
};
pub use stream::{H3Stream, MAX_DATA_FRAME};

//! The WebSocket connection state machine (RFC 6455 §5-7), sans-IO.
//!
//! Feed received bytes with [`Connection::read_buf`] (read straight into it) or
//! [`Connection::receive`], then call [`Connection::poll_message`] until it
//! returns `Ok(None)`. Queue outgoing messages with [`Connection::send`]; write
//! [`Connection::output`] to the transport and report progress with
//! [`Connection::advance_output`].
//!
//! Pongs and the closing reply are queued automatically. A protocol violation
//! returns [`ProtocolError`] once, after queueing a close frame with its code;
//! the caller then flushes the output and closes the transport.

use bytes::{Bytes, BytesMut};

use crate::close::{CloseCode, CloseFrame};
use crate::deflate::PerMessageDeflate;
use crate::limits::Limits;
use crate::message::Message;

/// Which end of the connection we are. Clients mask, servers must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's.
    CloseSent,
    /// Both close frames were exchanged (the handshake is complete). A server
    /// now closes the transport; a client waits for the server to do so.
    Closed,
    /// We failed the connection (protocol error); our close frame is queued.
    /// Flush it and close the transport.
    Failed,
}

/// A violation by the peer. The close frame with `code` is already queued.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{code}: {reason}")]
pub struct ProtocolError {
    pub code: CloseCode,
    pub reason: &'static str,
}

/// Why a message could not be queued.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("the connection is closing or closed; no more messages can be sent")]
    Closed,
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlTooLong(usize),
    #[error("close code {0} may not be sent")]
    BadCloseCode(u16),
}

/// The connection state machine.
pub struct Connection {
    role: Role,
    limits: Limits,
    deflate: Option<PerMessageDeflate>,
}

impl Connection {
    pub fn new(role: Role, limits: Limits) -> Self {
        let _ = (role, limits);
        todo!()
    }

    /// Enable permessage-deflate with the negotiated codec.
    pub fn with_deflate(self, codec: PerMessageDeflate) -> Self {
        let _ = codec;
        todo!()
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn state(&self) -> State {
        todo!()
    }

    /// The receive buffer: read from the transport straight into its spare
    /// capacity (e.g. `tokio::io::AsyncReadExt::read_buf`). Bytes already in it
    /// are kept across calls (this is what makes reads cancel-safe).
    pub fn read_buf(&mut self) -> &mut BytesMut {
        todo!()
    }

    /// Append received bytes (for callers that do not read into `read_buf`).
    pub fn receive(&mut self, data: &[u8]) {
        self.read_buf().extend_from_slice(data);
    }

    /// The next received message, `Ok(None)` when more bytes are needed.
    /// After a `Close` or an error, it returns `Ok(None)` forever.
    pub fn poll_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        todo!()
    }

    /// The transport reached end of input. Returns the error that ends the
    /// connection if the closing handshake had not finished (code 1006).
    pub fn receive_eof(&mut self) -> Result<(), ProtocolError> {
        todo!()
    }

    /// Queue a message. `Message::Close` starts the closing handshake (or
    /// completes it, if the peer's close was received).
    pub fn send(&mut self, msg: Message) -> Result<(), SendError> {
        let _ = msg;
        todo!()
    }

    /// Encoded bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        todo!()
    }

    /// `n` bytes of [`Connection::output`] were written.
    pub fn advance_output(&mut self, n: usize) {
        let _ = n;
        todo!()
    }

    /// Bytes waiting in the output (for backpressure).
    pub fn output_len(&self) -> usize {
        self.output().len()
    }

    /// Whether the transport should be closed once the output is flushed
    /// (close handshake complete, or the connection failed).
    pub fn wants_close_transport(&self) -> bool {
        todo!()
    }

    /// Fail the connection from our side (e.g. pong timeout, 1011; shutdown,
    /// 1001): queue a close frame with `code` unless one was sent.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        let _ = (code, reason);
        todo!()
    }

    /// Feed bytes that arrived but are not yet parsed (e.g. leftovers after the
    /// HTTP head). Same as `receive`.
    pub fn receive_bytes(&mut self, data: Bytes) {
        self.receive(&data)
    }

    /// The close frame the peer sent, if any.
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        todo!()
    }
}

//! The WebSocket connection state machine (RFC 6455 §5-7), sans-IO.
//!
//! Feed received bytes with [`Connection::read_buf`] (read straight into it) or
//! [`Connection::receive`], then call [`Connection::poll_message`] until it
//! returns `Ok(None)`. Queue outgoing messages with [`Connection::send`]; write
//! [`Connection::output`] to the transport and report progress with
//! [`Connection::advance_output`].
//!
//! Pongs and the closing reply are queued automatically (an intermediary may
//! defer the reply: [`Connection::defer_close_reply`]). A protocol violation
//! returns [`ProtocolError`] once, after queueing a close frame with its code;
//! the caller then flushes the output and closes the transport.
//!
//! # What the async layer must do
//!
//! * Read into [`Connection::read_buf`] after reserving a bounded chunk
//!   (8-64 KiB), never the length a peer announced; then drain
//!   [`Connection::poll_message`] until `Ok(None)` or `Err`.
//! * After every call that may queue bytes (`poll_message`, `send`, `close`),
//!   write [`Connection::output`] and call [`Connection::advance_output`].
//!   A driver that can write vectored may call
//!   [`Connection::enable_vectored_output`]: large payloads are then queued
//!   without a copy and [`Connection::output_chunks`] are written at once.
//! * When [`Connection::wants_close_transport`] is true and the output is
//!   flushed, close the transport (shut down the write side, then drop). A
//!   client whose handshake completed (`State::Closed`) instead waits for the
//!   server to close TCP (RFC 6455 §7.1.1), up to `Limits::close_timeout`,
//!   then closes itself. In `State::CloseSent`, wait for the peer's close up to
//!   `close_timeout`, then close the transport.
//! * On end of input call [`Connection::receive_eof`]: it reports 1006 if the
//!   closing handshake had not completed.
//!
//! # Close codes this module sends
//!
//! 1002 for framing violations, 1007 for invalid UTF-8 in text (and in a
//! close reason) and for corrupt permessage-deflate data (the payload is not
//! what the negotiated extension says it is), 1008 for too many fragments,
//! 1009 for frames or messages over the limits (after decompression).
//!
//! # Memory
//!
//! Nothing is allocated in [`Connection::new`]. Buffers grow with bytes that
//! actually arrived (never with a length the peer declared), and buffers above
//! 64 KiB are released when they become empty.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use rand::Rng;

use crate::close::{CloseCode, CloseFrame, ClosePayloadError};
use crate::deflate::{DeflateConfig, DeflateError, PerMessageDeflate};
use crate::frame::{encode_header, write_frame, FrameHeader, OpCode, MAX_HEADER_LEN};
use crate::handshake::Negotiated;
use crate::limits::Limits;
use crate::mask::apply_mask;
use crate::message::{reserve_message, Message, Utf8Bytes};
use crate::role::Role;
use crate::utf8::Utf8Validator;

/// Empty buffers holding more than this are released (idle memory).
const RELEASE_ABOVE: usize = 64 * 1024;

/// With vectored output, uncompressed server payloads of at least this many
/// bytes are queued as they are (a reference to the message's `Bytes`)
/// instead of being copied into the output buffer.
pub const ZERO_COPY_MIN: usize = 2048;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's.
    CloseSent,
    /// The peer's close frame arrived and our reply waits for the
    /// application (see [`Connection::defer_close_reply`]): data may still be
    /// sent; our close frame completes the handshake.
    CloseReceived,
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
    /// The close code we sent (1006 when the peer closed without one).
    pub code: CloseCode,
    /// What the peer did wrong.
    pub reason: &'static str,
}

/// Why a message could not be queued.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// We sent or received a close frame, or failed the connection.
    #[error("the connection is closing or closed; no more messages can be sent")]
    Closed,
    /// A ping, pong or close payload over 125 bytes (RFC 6455 §5.5).
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlTooLong(usize),
    /// A close code that may not be sent (see [`CloseCode::is_sendable`]).
    #[error("close code {0} may not be sent")]
    BadCloseCode(u16),
    /// A data message while a fragmented one is still being sent.
    #[error("a fragmented message is being sent; finish it with send_fragment(Continuation, .., fin = true) before sending another data message")]
    FragmentInProgress,
    /// A continuation fragment without a fragmented message started.
    #[error("no fragmented message is being sent; start one with send_fragment(Text or Binary, ..) before sending a continuation")]
    NoFragmentInProgress,
    /// `send_fragment` with a control or reserved opcode.
    #[error("opcode {0} cannot be sent with send_fragment; use Text, Binary or Continuation (control frames go through send)")]
    NotADataOpcode(u8),
}

/// The data frame whose payload is being received.
#[derive(Debug, Clone, Copy)]
struct RecvFrame {
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Payload length.
    len: usize,
    /// Payload bytes already processed (unmasked, validated).
    done: usize,
    /// The frame is a whole uncompressed message: its payload stays in the
    /// read buffer (processed bytes at `read[..done]`) and is handed out
    /// without a copy.
    in_place: bool,
}

/// The data message being received.
#[derive(Debug, Clone, Copy)]
struct RecvMessage {
    text: bool,
    compressed: bool,
    /// Saturates; compared with `Limits::max_fragments`.
    fragments: u32,
}

enum Step {
    NeedMore,
    Progress,
    Message(Message),
}

/// The connection state machine.
///
/// Kept small (one lives per open connection): the hot state is inline, the
/// rest (permessage-deflate, fragment reassembly, the peer's close frame) is
/// in a box allocated on first use, and the limits are shared.
pub struct Connection {
    read: BytesMut,
    out: BytesMut,
    /// Vectored output only: frames queued before `out` (see
    /// [`Connection::enable_vectored_output`]).
    chunks: VecDeque<Chunk>,
    limits: Arc<Limits>,
    frame: Option<RecvFrame>,
    msg: Option<RecvMessage>,
    cold: Option<Box<Cold>>,
    utf8: Utf8Validator,
    role: Role,
    state: State,
    /// We started a fragmented message with `send_fragment`.
    sending_fragmented: bool,
    vectored: bool,
    /// See [`Connection::defer_close_reply`].
    defer_close_reply: bool,
}

/// State that most connections never need.
#[derive(Default)]
struct Cold {
    deflate: Option<PerMessageDeflate>,
    /// Fragmented or decompressed message payload.
    msg_buf: BytesMut,
    /// Compression output, reused between messages.
    scratch: BytesMut,
    peer_close: Option<CloseFrame>,
}

/// A queued piece of vectored output: `head[start..end]`, then `body`.
struct Chunk {
    head: [u8; MAX_HEADER_LEN],
    start: u8,
    end: u8,
    body: Bytes,
}

impl Chunk {
    fn len(&self) -> usize {
        usize::from(self.end - self.start) + self.body.len()
    }

    fn first(&self) -> &[u8] {
        if self.start < self.end {
            &self.head[usize::from(self.start)..usize::from(self.end)]
        } else {
            &self.body
        }
    }
}

/// Out of line, so that a server's send path, which never masks, stays
/// small enough to inline.
#[inline(never)]
fn fresh_mask_key() -> [u8; 4] {
    rand::rng().random()
}

fn cold(c: &mut Option<Box<Cold>>) -> &mut Cold {
    c.get_or_insert_with(Box::default)
}

impl Connection {
    /// A connection with nothing allocated. `limits` may be an
    /// `Arc<Limits>` shared by many connections (or a `Limits`).
    pub fn new(role: Role, limits: impl Into<Arc<Limits>>) -> Self {
        Connection {
            read: BytesMut::new(),
            out: BytesMut::new(),
            chunks: VecDeque::new(),
            limits: limits.into(),
            frame: None,
            msg: None,
            cold: None,
            utf8: Utf8Validator::new(),
            role,
            state: State::Open,
            sending_fragmented: false,
            vectored: false,
            defer_close_reply: false,
        }
    }

    /// A connection for a completed opening handshake, in any HTTP version:
    /// permessage-deflate on when `negotiated` says so, with the local
    /// settings (level, minimum size) of `deflate`, the configuration the
    /// handshake negotiated with (its defaults when `None`).
    pub fn negotiated(
        role: Role,
        limits: impl Into<Arc<Limits>>,
        negotiated: &Negotiated,
        deflate: Option<&DeflateConfig>,
    ) -> Self {
        let conn = Connection::new(role, limits);
        let Some(params) = negotiated.deflate else {
            return conn;
        };
        let cfg = deflate.cloned().unwrap_or_default();
        conn.with_deflate(PerMessageDeflate::new(role, params, &cfg))
    }

    /// Enable permessage-deflate with the negotiated codec.
    pub fn with_deflate(mut self, codec: PerMessageDeflate) -> Self {
        cold(&mut self.cold).deflate = Some(codec);
        self
    }

    /// Let [`Connection::output`] be split into several chunks, so that a
    /// large payload is queued without a copy (a server's uncompressed data
    /// frames of at least [`ZERO_COPY_MIN`] bytes keep the message's `Bytes`).
    /// The driver then writes [`Connection::output_chunks`] with a vectored
    /// write, or [`Connection::output`] (the first chunk) at a time;
    /// [`Connection::output_len`] stays the total. Off by default: then
    /// `output()` is always all the bytes to write.
    pub fn enable_vectored_output(&mut self) {
        self.vectored = true;
    }

    /// Do not answer the peer's close frame automatically: when it arrives
    /// the state becomes [`State::CloseReceived`], data messages may still be
    /// sent, and our own close ([`Connection::send`] of a `Message::Close`,
    /// or [`Connection::close`]) completes the handshake. For intermediaries
    /// that pass the close on and answer with the other peer's reply, so
    /// that messages still on their way to this peer are delivered before
    /// it.
    pub fn defer_close_reply(&mut self) {
        self.defer_close_reply = true;
    }

    /// Whether input is over: the peer's close arrived or we failed.
    fn input_ended(&self) -> bool {
        matches!(
            self.state,
            State::Closed | State::Failed | State::CloseReceived
        )
    }

    /// Whether data and control frames may still be queued.
    fn may_send(&self) -> bool {
        matches!(self.state, State::Open | State::CloseReceived)
    }

    fn has_deflate(&self) -> bool {
        self.cold.as_ref().is_some_and(|c| c.deflate.is_some())
    }

    fn msg_buf_len(&self) -> usize {
        self.cold.as_ref().map_or(0, |c| c.msg_buf.len())
    }

    /// Which end we are.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The limits this connection enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Where the connection is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// The receive buffer: read from the transport straight into its spare
    /// capacity (e.g. `tokio::io::AsyncReadExt::read_buf`). Bytes already in it
    /// are kept across calls (this is what makes reads cancel-safe).
    ///
    /// Once the peer's close arrived or the connection failed, whatever is in
    /// it is garbage and is dropped here, so a peer that keeps sending cannot
    /// make it grow.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        if self.input_ended() {
            self.read.clear();
        }
        &mut self.read
    }

    /// How many more bytes the frame being received still needs beyond what
    /// the receive buffer holds (0 when no frame payload is in progress). A
    /// driver may reserve this much before its next read so that a large
    /// frame is read in few calls and the buffer grows once; the value is
    /// bounded by `Limits::max_frame_size` (checked at the frame header), and
    /// callers should cap it further since the peer has not sent it yet.
    pub fn frame_bytes_missing(&self) -> usize {
        match self.frame {
            Some(f) if f.in_place => f.len.saturating_sub(self.read.len()),
            Some(f) => (f.len - f.done).saturating_sub(self.read.len()),
            None => 0,
        }
    }

    /// Append received bytes (for callers that do not read into `read_buf`).
    /// Ignored once the peer's close arrived or the connection failed.
    pub fn receive(&mut self, data: &[u8]) {
        if self.input_ended() {
            return;
        }
        self.read_buf().extend_from_slice(data);
    }

    /// The next received message, `Ok(None)` when more bytes are needed.
    /// After a `Close` or an error, it returns `Ok(None)` forever.
    #[inline]
    pub fn poll_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        // Every frame starts with at least two bytes, and a frame whose
        // header was consumed waits only for payload bytes (an empty one is
        // finished in the call that consumed its header): with nothing
        // buffered there is nothing to parse. A driver asks before and after
        // every read, so this is the common case.
        if self.read.is_empty() && self.read.capacity() <= RELEASE_ABOVE {
            return Ok(None);
        }
        self.parse_message()
    }

    fn parse_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        if self.input_ended() {
            self.discard_input();
            return Ok(None);
        }
        loop {
            let step = if self.frame.is_some() {
                self.step_payload()?
            } else {
                self.step_header()?
            };
            match step {
                Step::Progress => {}
                Step::Message(m) => return Ok(Some(m)),
                Step::NeedMore => {
                    if self.read.is_empty() && self.read.capacity() > RELEASE_ABOVE {
                        self.read = BytesMut::new();
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The transport reached end of input. Returns the error that ends the
    /// connection if the closing handshake had not finished (code 1006).
    pub fn receive_eof(&mut self) -> Result<(), ProtocolError> {
        match self.state {
            State::Closed | State::Failed => Ok(()),
            // The peer closed cleanly and left before our reply.
            State::CloseReceived => {
                self.state = State::Closed;
                Ok(())
            }
            State::Open | State::CloseSent => {
                self.state = State::Failed;
                self.discard_input();
                Err(ProtocolError {
                    code: CloseCode::ABNORMAL,
                    reason:
                        "the peer closed the transport without completing the closing handshake",
                })
            }
        }
    }

    /// Queue a message. `Message::Close` starts the closing handshake (or
    /// completes it, if the peer's close was received).
    #[inline]
    pub fn send(&mut self, msg: Message) -> Result<(), SendError> {
        match msg {
            Message::Text(t) => self.send_data(OpCode::Text, t.into_bytes()),
            Message::Binary(b) => self.send_data(OpCode::Binary, b),
            Message::Ping(p) => self.send_control(OpCode::Ping, &p),
            Message::Pong(p) => self.send_control(OpCode::Pong, &p),
            Message::Close(f) => self.send_close(f),
        }
    }

    /// Send one frame of a fragmented data message (never compressed):
    /// `Text`/`Binary` starts it, `Continuation` continues it, `fin` ends it.
    /// Control messages may be sent with [`Connection::send`] in between.
    /// For text, the caller guarantees that the whole message is UTF-8.
    pub fn send_fragment(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        fin: bool,
    ) -> Result<(), SendError> {
        if !self.may_send() {
            return Err(SendError::Closed);
        }
        match opcode {
            OpCode::Text | OpCode::Binary if self.sending_fragmented => {
                return Err(SendError::FragmentInProgress)
            }
            OpCode::Continuation if !self.sending_fragmented => {
                return Err(SendError::NoFragmentInProgress)
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {}
            other => return Err(SendError::NotADataOpcode(other.as_u8())),
        }
        let key = self.mask_key();
        write_frame(&mut self.out, fin, opcode, false, key, payload);
        self.sending_fragmented = !fin;
        Ok(())
    }

    /// Encoded bytes waiting to be written: all of them, or with vectored
    /// output the first chunk (see [`Connection::enable_vectored_output`]).
    /// Empty only when nothing is waiting.
    pub fn output(&self) -> &[u8] {
        match self.chunks.front() {
            Some(c) => c.first(),
            None => &self.out,
        }
    }

    /// Every chunk of the output, in order (one without vectored output).
    pub fn output_chunks(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.chunks
            .iter()
            .flat_map(|c| {
                let head = &c.head[usize::from(c.start)..usize::from(c.end)];
                [head, &c.body[..]]
            })
            .chain(std::iter::once(&self.out[..]))
            .filter(|b| !b.is_empty())
    }

    /// `n` bytes of the output were written (from the first chunk on).
    pub fn advance_output(&mut self, n: usize) {
        let mut n = n;
        while n > 0 {
            let Some(c) = self.chunks.front_mut() else {
                if n >= self.out.len() {
                    // All written: `clear` keeps the buffer's start, so the
                    // next frame is encoded without first reclaiming the
                    // space `advance` would have skipped.
                    self.out.clear();
                } else {
                    self.out.advance(n);
                }
                break;
            };
            let head = usize::from(c.end - c.start);
            if n < head {
                c.start += n as u8;
                break;
            }
            n -= head;
            c.start = c.end;
            if n < c.body.len() {
                c.body.advance(n);
                break;
            }
            n -= c.body.len();
            self.chunks.pop_front();
        }
        if self.chunks.is_empty() && self.chunks.capacity() > 0 {
            // Do not keep the queue's allocation on an idle connection.
            self.chunks = VecDeque::new();
        }
        if self.out.is_empty() && self.out.capacity() > RELEASE_ABOVE {
            self.out = BytesMut::new();
        }
    }

    /// Bytes waiting in the output (for backpressure).
    #[inline]
    pub fn output_len(&self) -> usize {
        if self.chunks.is_empty() {
            return self.out.len();
        }
        self.chunks.iter().map(Chunk::len).sum::<usize>() + self.out.len()
    }

    /// Whether the transport should be closed once the output is flushed
    /// (close handshake complete, or the connection failed).
    ///
    /// True in `State::Failed`, and in `State::Closed` for a server. A client
    /// in `State::Closed` gets `false`: it waits for the server to close the
    /// transport (RFC 6455 §7.1.1), and closes it itself only after
    /// `Limits::close_timeout`.
    pub fn wants_close_transport(&self) -> bool {
        match self.state {
            State::Failed => true,
            State::Closed => self.role == Role::Server,
            State::Open | State::CloseSent | State::CloseReceived => false,
        }
    }

    /// Fail the connection from our side (e.g. pong timeout, 1011; shutdown,
    /// 1001): queue a close frame with `code` unless one was sent.
    ///
    /// A code that may not be sent (e.g. 1005, 1006) sends a close frame
    /// without a payload.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if !self.may_send() {
            return;
        }
        let frame = code.is_sendable().then(|| CloseFrame::new(code, reason));
        self.queue_close(frame.as_ref());
        self.state = self.after_our_close();
    }

    /// The state once our close frame is queued.
    fn after_our_close(&self) -> State {
        if self.state == State::CloseReceived {
            State::Closed
        } else {
            State::CloseSent
        }
    }

    /// Feed bytes that arrived but are not yet parsed (e.g. leftovers after the
    /// HTTP head). Same as `receive`.
    pub fn receive_bytes(&mut self, data: Bytes) {
        self.receive(&data)
    }

    /// The close frame the peer sent, if any.
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        self.cold.as_ref()?.peer_close.as_ref()
    }

    // ----- receive side -----

    fn step_header(&mut self) -> Result<Step, ProtocolError> {
        let (h, hlen) = match FrameHeader::parse(&self.read) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(Step::NeedMore),
            Err(_) => {
                return Err(self.fail(
                    CloseCode::PROTOCOL_ERROR,
                    "frame length with the most significant bit set",
                ))
            }
        };
        if h.rsv2 || h.rsv3 {
            return Err(self.fail(
                CloseCode::PROTOCOL_ERROR,
                "RSV2 or RSV3 set, but no extension using them was negotiated",
            ));
        }
        if h.opcode.is_reserved() {
            return Err(self.fail(CloseCode::PROTOCOL_ERROR, "reserved opcode"));
        }
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => {
                return Err(self.fail(
                    CloseCode::PROTOCOL_ERROR,
                    "unmasked frame from a client; clients must mask every frame",
                ))
            }
            (Role::Client, true) => {
                return Err(self.fail(
                    CloseCode::PROTOCOL_ERROR,
                    "masked frame from a server; servers must not mask",
                ))
            }
            _ => {}
        }
        if h.opcode.is_control() {
            return self.control_frame(h, hlen);
        }

        if h.payload_len > self.limits.max_frame_size as u64 {
            return Err(self.fail(
                CloseCode::MESSAGE_TOO_BIG,
                "frame larger than the frame size limit",
            ));
        }
        // Fits in usize: bounded by max_frame_size.
        let len = h.payload_len as usize;
        let starts = match (h.opcode, self.msg.is_some()) {
            (OpCode::Continuation, false) => {
                return Err(self.fail(
                    CloseCode::PROTOCOL_ERROR,
                    "continuation frame without a message in progress",
                ))
            }
            (OpCode::Continuation, true) => false,
            (_, true) => {
                return Err(self.fail(
                    CloseCode::PROTOCOL_ERROR,
                    "new data message before the fragmented message in progress ended",
                ))
            }
            (_, false) => true,
        };
        if h.rsv1 {
            if !self.has_deflate() {
                return Err(self.fail(
                    CloseCode::PROTOCOL_ERROR,
                    "RSV1 set, but permessage-deflate was not negotiated",
                ));
            }
            if !starts {
                return Err(self.fail(
                    CloseCode::PROTOCOL_ERROR,
                    "RSV1 set on a continuation frame",
                ));
            }
        }
        let msg = match self.msg {
            Some(mut m) => {
                m.fragments = m.fragments.saturating_add(1);
                m
            }
            None => RecvMessage {
                text: h.opcode == OpCode::Text,
                compressed: h.rsv1,
                fragments: 1,
            },
        };
        if msg.fragments as usize > self.limits.max_fragments {
            return Err(self.fail(
                CloseCode::POLICY_VIOLATION,
                "message made of more fragments than the fragment limit",
            ));
        }
        if !msg.compressed && self.msg_buf_len().saturating_add(len) > self.limits.max_message_size
        {
            return Err(self.fail(
                CloseCode::MESSAGE_TOO_BIG,
                "message larger than the message size limit",
            ));
        }
        let in_place = starts && h.fin && !h.rsv1;
        if in_place && self.read.len() - hlen >= len {
            // Fast path: a whole message in the buffer, unmasked in place and
            // handed out without a copy.
            self.read.advance(hlen);
            let mut payload = self.read.split_to(len);
            if let Some(key) = h.mask {
                apply_mask(&mut payload, key, 0);
            }
            return self
                .finish_message(msg.text, payload.freeze(), false)
                .map(Step::Message);
        }
        self.read.advance(hlen);
        if starts {
            self.utf8.reset();
        }
        self.msg = Some(msg);
        self.frame = Some(RecvFrame {
            fin: h.fin,
            mask: h.mask,
            len,
            done: 0,
            in_place,
        });
        Ok(Step::Progress)
    }

    fn control_frame(&mut self, h: FrameHeader, hlen: usize) -> Result<Step, ProtocolError> {
        if h.rsv1 {
            return Err(self.fail(CloseCode::PROTOCOL_ERROR, "RSV1 set on a control frame"));
        }
        if !h.fin {
            return Err(self.fail(CloseCode::PROTOCOL_ERROR, "fragmented control frame"));
        }
        if h.payload_len > 125 {
            return Err(self.fail(
                CloseCode::PROTOCOL_ERROR,
                "control frame payload longer than 125 bytes",
            ));
        }
        let len = h.payload_len as usize;
        if self.read.len() < hlen + len {
            return Ok(Step::NeedMore);
        }
        self.read.advance(hlen);
        let mut payload = self.read.split_to(len);
        if let Some(key) = h.mask {
            apply_mask(&mut payload, key, 0);
        }
        let payload = payload.freeze();
        match h.opcode {
            OpCode::Ping => {
                if self.state == State::Open {
                    let key = self.mask_key();
                    write_frame(&mut self.out, true, OpCode::Pong, false, key, &payload);
                }
                Ok(Step::Message(Message::Ping(payload)))
            }
            OpCode::Pong => Ok(Step::Message(Message::Pong(payload))),
            _ => self.close_frame(&payload),
        }
    }

    fn close_frame(&mut self, payload: &[u8]) -> Result<Step, ProtocolError> {
        let frame = match CloseFrame::parse(payload) {
            Ok(f) => f,
            Err(ClosePayloadError::Truncated) => {
                return Err(self.fail(
                    CloseCode::PROTOCOL_ERROR,
                    "close frame with a 1-byte payload",
                ))
            }
            Err(ClosePayloadError::BadCode(_)) => {
                return Err(self.fail(
                    CloseCode::PROTOCOL_ERROR,
                    "close frame with a code that may not be sent",
                ))
            }
            Err(ClosePayloadError::BadReason) => {
                return Err(self.fail(
                    CloseCode::INVALID_PAYLOAD,
                    "close reason is not valid UTF-8",
                ))
            }
        };
        if self.state == State::Open && self.defer_close_reply {
            self.state = State::CloseReceived;
        } else {
            if self.state == State::Open {
                // Echo the status code (RFC 6455 §5.5.1), without the reason.
                let echo = frame.as_ref().map(|f| CloseFrame::new(f.code, ""));
                self.queue_close(echo.as_ref());
            }
            self.state = State::Closed;
        }
        if frame.is_some() || self.cold.is_some() {
            cold(&mut self.cold).peer_close = frame.clone();
        }
        self.discard_input();
        Ok(Step::Message(Message::Close(frame)))
    }

    fn step_payload(&mut self) -> Result<Step, ProtocolError> {
        let (Some(mut f), Some(msg)) = (self.frame, self.msg) else {
            self.frame = None;
            return Ok(Step::Progress);
        };
        if f.in_place {
            let avail = self.read.len().min(f.len);
            if let Some(new) = self.read.get_mut(f.done..avail) {
                if let Some(key) = f.mask {
                    apply_mask(new, key, f.done);
                }
                if msg.text && self.utf8.feed(new).is_err() {
                    return Err(self.fail(
                        CloseCode::INVALID_PAYLOAD,
                        "invalid UTF-8 in a text message",
                    ));
                }
            }
            f.done = avail;
            if f.done < f.len {
                self.frame = Some(f);
                return Ok(Step::NeedMore);
            }
            self.frame = None;
            self.msg = None;
            let payload = self.read.split_to(f.len).freeze();
            return self
                .finish_message(msg.text, payload, true)
                .map(Step::Message);
        }

        let avail = self.read.len().min(f.len - f.done);
        let frame_done = f.done + avail == f.len;
        if avail == 0 && !frame_done {
            return Ok(Step::NeedMore);
        }
        let chunk = match self.read.get_mut(..avail) {
            Some(c) => c,
            None => return Ok(Step::NeedMore),
        };
        if let Some(key) = f.mask {
            apply_mask(chunk, key, f.done);
        }
        if msg.compressed {
            let c = cold(&mut self.cold);
            let start = c.msg_buf.len();
            let Some(codec) = c.deflate.as_mut() else {
                return Err(self.fail(
                    CloseCode::PROTOCOL_ERROR,
                    "compressed frame without permessage-deflate",
                ));
            };
            let r = codec.decompress(
                chunk,
                f.fin && frame_done,
                self.limits.max_message_size,
                &mut c.msg_buf,
            );
            match r {
                Ok(()) => {}
                Err(DeflateError::TooBig { .. }) => {
                    return Err(self.fail(
                        CloseCode::MESSAGE_TOO_BIG,
                        "decompressed message larger than the message size limit",
                    ))
                }
                Err(DeflateError::Corrupt(_)) => {
                    return Err(self.fail(
                        CloseCode::INVALID_PAYLOAD,
                        "invalid permessage-deflate data",
                    ))
                }
            }
            let inflated = c.msg_buf.get(start..).unwrap_or(&[]);
            if msg.text && self.utf8.feed(inflated).is_err() {
                return Err(self.fail(
                    CloseCode::INVALID_PAYLOAD,
                    "invalid UTF-8 in a text message",
                ));
            }
        } else {
            if msg.text && self.utf8.feed(chunk).is_err() {
                return Err(self.fail(
                    CloseCode::INVALID_PAYLOAD,
                    "invalid UTF-8 in a text message",
                ));
            }
            let buf = &mut cold(&mut self.cold).msg_buf;
            reserve_message(buf, chunk.len(), self.limits.max_message_size);
            buf.extend_from_slice(chunk);
        }
        self.read.advance(avail);
        f.done += avail;
        if !frame_done {
            self.frame = Some(f);
            return Ok(Step::NeedMore);
        }
        self.frame = None;
        if !f.fin {
            return Ok(Step::Progress);
        }
        self.msg = None;
        let payload = match self.cold.as_mut() {
            Some(c) => std::mem::take(&mut c.msg_buf).freeze(),
            None => Bytes::new(),
        };
        self.finish_message(msg.text, payload, true)
            .map(Step::Message)
    }

    /// Build the message. With `validated_incrementally` the validator already
    /// saw the text (only the end-of-message check remains).
    fn finish_message(
        &mut self,
        text: bool,
        payload: Bytes,
        validated_incrementally: bool,
    ) -> Result<Message, ProtocolError> {
        if !text {
            return Ok(Message::Binary(payload));
        }
        let ok = if validated_incrementally {
            self.utf8.finish().is_ok()
        } else {
            // ASCII (most short texts) is checked a word at a time, far
            // cheaper than the general validator on a few bytes.
            payload.is_ascii() || std::str::from_utf8(&payload).is_ok()
        };
        if !ok {
            return Err(self.fail(
                CloseCode::INVALID_PAYLOAD,
                "invalid UTF-8 in a text message",
            ));
        }
        Ok(Message::Text(Utf8Bytes::from_validated(payload)))
    }

    /// Fail the connection: queue our close (unless one was sent), drop all
    /// receive state.
    fn fail(&mut self, code: CloseCode, reason: &'static str) -> ProtocolError {
        if self.state == State::Open {
            self.queue_close(Some(&CloseFrame::new(code, reason)));
        }
        self.state = State::Failed;
        self.discard_input();
        ProtocolError { code, reason }
    }

    fn discard_input(&mut self) {
        self.read = BytesMut::new();
        if let Some(c) = self.cold.as_mut() {
            c.msg_buf = BytesMut::new();
        }
        self.frame = None;
        self.msg = None;
        self.utf8.reset();
    }

    // ----- send side -----

    /// A fresh masking key per frame for clients, from the thread-local
    /// CSPRNG (`rand::rng()`: ChaCha12, seeded from the OS and reseeded), so
    /// a connection carries no generator state of its own (idle memory).
    #[inline]
    fn mask_key(&self) -> Option<[u8; 4]> {
        match self.role {
            Role::Client => Some(fresh_mask_key()),
            Role::Server => None,
        }
    }

    fn send_data(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), SendError> {
        if !self.may_send() {
            return Err(SendError::Closed);
        }
        if self.sending_fragmented {
            return Err(SendError::FragmentInProgress);
        }
        let key = self.mask_key();
        if let Some(Cold {
            deflate: Some(codec),
            scratch,
            ..
        }) = self.cold.as_deref_mut()
        {
            if codec.should_compress(payload.len()) {
                scratch.clear();
                codec.compress(&payload, scratch);
                write_frame(&mut self.out, true, opcode, true, key, scratch);
                scratch.clear();
                if scratch.capacity() > RELEASE_ABOVE {
                    *scratch = BytesMut::new();
                }
                return Ok(());
            }
        }
        if self.vectored && key.is_none() && payload.len() >= ZERO_COPY_MIN {
            self.queue_zero_copy(opcode, payload);
        } else {
            write_frame(&mut self.out, true, opcode, false, key, &payload);
        }
        Ok(())
    }

    /// Queue an unmasked final frame whose payload is `payload` itself, after
    /// everything already in the output.
    fn queue_zero_copy(&mut self, opcode: OpCode, payload: Bytes) {
        if !self.out.is_empty() {
            // Frames already in `out` go first: seal them into a chunk.
            let body = self.out.split().freeze();
            self.chunks.push_back(Chunk {
                head: [0; MAX_HEADER_LEN],
                start: 0,
                end: 0,
                body,
            });
        }
        let mut head = [0; MAX_HEADER_LEN];
        let end = encode_header(&mut head, 0x80 | opcode.as_u8(), None, payload.len() as u64);
        self.chunks.push_back(Chunk {
            head,
            start: 0,
            end: end as u8,
            body: payload,
        });
    }

    fn send_control(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), SendError> {
        if !self.may_send() {
            return Err(SendError::Closed);
        }
        if payload.len() > 125 {
            return Err(SendError::ControlTooLong(payload.len()));
        }
        let key = self.mask_key();
        write_frame(&mut self.out, true, opcode, false, key, payload);
        Ok(())
    }

    fn send_close(&mut self, frame: Option<CloseFrame>) -> Result<(), SendError> {
        if let Some(f) = &frame {
            if !f.code.is_sendable() {
                return Err(SendError::BadCloseCode(f.code.0));
            }
        }
        if self.may_send() {
            self.queue_close(frame.as_ref());
            self.state = self.after_our_close();
        }
        // CloseSent / Failed: ours is already queued. Closed: the reply to
        // the peer's close was queued automatically.
        Ok(())
    }

    fn queue_close(&mut self, frame: Option<&CloseFrame>) {
        let payload = frame.map(CloseFrame::encode).unwrap_or_default();
        let key = self.mask_key();
        write_frame(&mut self.out, true, OpCode::Close, false, key, &payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

    /// A raw frame with any header bits, masked with `mask` if given.
    fn raw(b0: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let h = FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode: OpCode::from_u8(b0),
            mask,
            payload_len: payload.len() as u64,
        };
        let mut out = BytesMut::new();
        h.encode(&mut out);
        let start = out.len();
        out.extend_from_slice(payload);
        if let Some(k) = mask {
            apply_mask(&mut out[start..], k, 0);
        }
        out.to_vec()
    }

    /// A frame as a client sends it (masked), for a server under test.
    fn cf(b0: u8, payload: &[u8]) -> Vec<u8> {
        raw(b0, Some(KEY), payload)
    }

    fn server() -> Connection {
        Connection::new(Role::Server, Limits::default())
    }

    fn client() -> Connection {
        Connection::new(Role::Client, Limits::default())
    }

    /// Parse every frame in `c`'s output (unmasking client frames).
    fn output_frames(c: &Connection) -> Vec<(FrameHeader, Vec<u8>)> {
        let mut buf = c.output();
        let mut frames = Vec::new();
        while let Some((h, n)) = FrameHeader::parse(buf).unwrap() {
            let end = n + h.payload_len as usize;
            let mut p = buf[n..end].to_vec();
            if let Some(k) = h.mask {
                apply_mask(&mut p, k, 0);
            }
            frames.push((h, p));
            buf = &buf[end..];
        }
        assert!(buf.is_empty(), "trailing partial frame in output");
        frames
    }

    /// Code of the one close frame that must be the last queued frame.
    fn queued_close_code(c: &Connection) -> Option<u16> {
        let frames = output_frames(c);
        let (h, p) = frames.last()?;
        assert_eq!(h.opcode, OpCode::Close);
        assert!(h.fin);
        assert_eq!(h.mask.is_some(), c.role() == Role::Client);
        if p.is_empty() {
            return None;
        }
        Some(u16::from_be_bytes([p[0], p[1]]))
    }

    fn poll_all(c: &mut Connection) -> Result<Vec<Message>, ProtocolError> {
        let mut v = Vec::new();
        while let Some(m) = c.poll_message()? {
            v.push(m);
        }
        Ok(v)
    }

    /// Feed `bytes` and expect the connection to fail with `code`, queueing a
    /// close frame with that code, then stay silent.
    fn expect_fail(mut c: Connection, bytes: &[u8], code: CloseCode) -> Connection {
        c.receive(bytes);
        let err = poll_all(&mut c).unwrap_err();
        assert_eq!(err.code, code, "{}", err.reason);
        assert_eq!(c.state(), State::Failed);
        assert_eq!(queued_close_code(&c), Some(code.0));
        assert!(c.wants_close_transport());
        c.receive(&cf(0x81, b"more"));
        assert!(c.read.is_empty(), "input after failure is dropped");
        c.read_buf().extend_from_slice(b"junk");
        assert_eq!(
            c.read_buf().len(),
            0,
            "read_buf drops garbage after failure"
        );
        assert_eq!(c.poll_message(), Ok(None));
        assert_eq!(c.poll_message(), Ok(None));
        c
    }

    /// Move all of a's output into b, `chunk` bytes at a time, polling b.
    fn pump(
        a: &mut Connection,
        b: &mut Connection,
        chunk: usize,
    ) -> Result<Vec<Message>, ProtocolError> {
        let data = a.output().to_vec();
        a.advance_output(data.len());
        let mut msgs = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            b.receive(piece);
            msgs.extend(poll_all(b)?);
        }
        Ok(msgs)
    }

    #[test]
    fn frame_bytes_missing_counts_the_rest_of_the_frame() {
        let mut c = server();
        assert_eq!(c.frame_bytes_missing(), 0);
        let payload = vec![7u8; 1000];
        let bytes = raw(0x82, Some(KEY), &payload);
        // Header (2 + 2 length + 4 key) and 100 payload bytes.
        c.receive(&bytes[..108]);
        assert_eq!(c.poll_message().unwrap(), None);
        assert_eq!(c.frame_bytes_missing(), 900);
        c.receive(&bytes[108..600]);
        assert_eq!(c.poll_message().unwrap(), None);
        assert_eq!(c.frame_bytes_missing(), 408);
        c.receive(&bytes[600..]);
        assert_eq!(c.poll_message().unwrap(), Some(Message::binary(payload)));
        assert_eq!(c.frame_bytes_missing(), 0);
        // A fragment (copied out as it arrives) counts what it still lacks.
        let first = raw(0x02, Some(KEY), &[1u8; 300]);
        c.receive(&first[..58]);
        assert_eq!(c.poll_message().unwrap(), None);
        assert_eq!(c.frame_bytes_missing(), 250);
    }

    #[test]
    fn new_allocates_nothing() {
        let c = server();
        assert_eq!(c.read.capacity(), 0);
        assert_eq!(c.out.capacity(), 0);
        assert!(c.cold.is_none());
        assert_eq!(c.chunks.capacity(), 0);
        assert_eq!(c.state(), State::Open);
    }

    #[test]
    fn zero_copy_single_frame_returns_data() {
        let mut c = server();
        let mut bytes = cf(
            0x81,
            "héllo wörld, a longer text to unmask in place".as_bytes(),
        );
        bytes.extend(cf(0x82, &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
        c.receive(&bytes);
        let base = c.read.as_ptr() as usize;
        let m = c.poll_message().unwrap().unwrap();
        let Message::Text(t) = &m else {
            panic!("{m:?}")
        };
        assert_eq!(t.as_str(), "héllo wörld, a longer text to unmask in place");
        // The payload points into the receive buffer: no copy was made.
        let p = t.as_bytes().as_ptr() as usize;
        assert!(p >= base && p < base + bytes.len());
        assert_eq!(
            c.poll_message().unwrap(),
            Some(Message::binary(vec![0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
        );
        assert_eq!(c.poll_message().unwrap(), None);
        assert!(c.output().is_empty());
    }

    #[test]
    fn single_frame_in_pieces_is_still_zero_copy_and_correct() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let bytes = cf(0x82, &payload);
        let mut c = server();
        c.read_buf().reserve(bytes.len());
        for piece in bytes.chunks(333) {
            c.receive(piece);
            if let Some(m) = c.poll_message().unwrap() {
                assert_eq!(m, Message::binary(payload.clone()));
                return;
            }
        }
        panic!("no message");
    }

    #[test]
    fn rsv_bits_are_protocol_errors() {
        expect_fail(server(), &cf(0xc1, b"x"), CloseCode::PROTOCOL_ERROR); // rsv1 without deflate
        expect_fail(server(), &cf(0xa1, b"x"), CloseCode::PROTOCOL_ERROR); // rsv2
        expect_fail(server(), &cf(0x91, b"x"), CloseCode::PROTOCOL_ERROR); // rsv3
        expect_fail(server(), &cf(0xc9, b""), CloseCode::PROTOCOL_ERROR); // rsv1 on ping
    }

    #[test]
    fn reserved_opcodes_are_protocol_errors() {
        for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
            expect_fail(server(), &cf(0x80 | op, b""), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn control_frame_rules() {
        expect_fail(server(), &cf(0x89, &[0u8; 126]), CloseCode::PROTOCOL_ERROR);
        expect_fail(server(), &cf(0x09, b"x"), CloseCode::PROTOCOL_ERROR); // not FIN
                                                                           // 125 is fine.
        let mut c = server();
        c.receive(&cf(0x89, &[7u8; 125]));
        assert_eq!(
            c.poll_message().unwrap(),
            Some(Message::Ping(Bytes::from(vec![7u8; 125])))
        );
    }

    #[test]
    fn masking_direction_rules() {
        expect_fail(server(), &raw(0x81, None, b"hi"), CloseCode::PROTOCOL_ERROR);
        expect_fail(
            client(),
            &raw(0x81, Some(KEY), b"hi"),
            CloseCode::PROTOCOL_ERROR,
        );
        let mut c = client();
        c.receive(&raw(0x81, None, b"hi"));
        assert_eq!(c.poll_message().unwrap(), Some(Message::text("hi")));
    }

    #[test]
    fn fragmentation_rules() {
        expect_fail(server(), &cf(0x80, b"x"), CloseCode::PROTOCOL_ERROR); // continuation, nothing started
        let mut b = cf(0x01, b"a");
        b.extend(cf(0x81, b"b")); // new text while fragmented
        expect_fail(server(), &b, CloseCode::PROTOCOL_ERROR);
        let mut b = cf(0x02, b"a");
        b.extend(cf(0xc0, b"b")); // RSV1 on continuation (even with no deflate: still 1002)
        expect_fail(server(), &b, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn length_msb_set_is_protocol_error() {
        let mut b = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0];
        b.extend(KEY);
        expect_fail(server(), &b, CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn fragmented_with_interleaved_controls() {
        let mut b = cf(0x01, "frag".as_bytes());
        b.extend(cf(0x89, b"p1"));
        b.extend(cf(0x00, "mé".as_bytes()[..2].as_ref()));
        b.extend(cf(0x8a, b"po"));
        b.extend(cf(0x00, b""));
        b.extend(cf(0x80, &"mé".as_bytes()[2..]));
        for chunk in [1, 2, 5, b.len()] {
            let mut c = server();
            let mut msgs = Vec::new();
            for piece in b.chunks(chunk) {
                c.receive(piece);
                msgs.extend(poll_all(&mut c).unwrap());
            }
            assert_eq!(
                msgs,
                vec![
                    Message::Ping(Bytes::from_static(b"p1")),
                    Message::Pong(Bytes::from_static(b"po")),
                    Message::text("fragmé")
                ],
                "chunk {chunk}"
            );
            // Auto pong for the ping.
            let frames = output_frames(&c);
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].0.opcode, OpCode::Pong);
            assert_eq!(frames[0].1, b"p1");
        }
    }

    #[test]
    fn utf8_fails_fast_mid_frame() {
        // One 20-byte text frame; the invalid byte is at payload index 5.
        let mut payload = b"hello".to_vec();
        payload.push(0xff);
        payload.extend_from_slice(b"more text here");
        let bytes = cf(0x81, &payload);
        let mut c = server();
        c.receive(&bytes[..6 + 6]); // header (6) + first 6 payload bytes
        let err = c.poll_message().unwrap_err();
        assert_eq!(err.code, CloseCode::INVALID_PAYLOAD);
        assert_eq!(queued_close_code(&c), Some(1007));

        // Mid fragmented message: first fragment fine, second has 0xF4 0x90.
        let mut b = cf(0x01, "κόσμε".as_bytes());
        let second = cf(0x00, b"\xf4\x90\x80\x80edited");
        b.extend(&second[..6 + 2]);
        let mut c = server();
        c.receive(&b);
        assert_eq!(
            c.poll_message().unwrap_err().code,
            CloseCode::INVALID_PAYLOAD
        );

        // A valid prefix does not fail early.
        let mut c = server();
        c.receive(&cf(0x81, "κόσμε".as_bytes())[..6 + 3]);
        assert_eq!(c.poll_message(), Ok(None));
    }

    #[test]
    fn utf8_incomplete_at_message_end_is_1007() {
        expect_fail(
            server(),
            &cf(0x81, b"ab\xe2\x82"),
            CloseCode::INVALID_PAYLOAD,
        );
        let mut b = cf(0x01, b"ab\xe2");
        b.extend(cf(0x80, b"\x82"));
        expect_fail(server(), &b, CloseCode::INVALID_PAYLOAD);
        // Binary is not checked.
        let mut c = server();
        c.receive(&cf(0x82, b"\xff"));
        assert_eq!(
            c.poll_message().unwrap(),
            Some(Message::binary(vec![0xffu8]))
        );
    }

    #[test]
    fn frame_size_limit_checked_at_header() {
        let limits = Limits {
            max_frame_size: 100,
            ..Limits::default()
        };
        let c = Connection::new(Role::Server, limits.clone());
        // Only the header of a 101-byte frame: fails before the payload arrives.
        let b = cf(0x82, &[0u8; 101]);
        let c = expect_fail(c, &b[..8], CloseCode::MESSAGE_TOO_BIG);
        assert!(c.read.is_empty());
        let mut c = Connection::new(Role::Server, limits);
        c.receive(&cf(0x82, &[1u8; 100]));
        assert_eq!(
            c.poll_message().unwrap(),
            Some(Message::binary(vec![1u8; 100]))
        );
    }

    #[test]
    fn huge_declared_length_does_not_allocate() {
        let mut b = vec![0x82, 0xff, 0, 0, 0, 0, 0x00, 0xf0, 0, 0];
        b.extend(KEY);
        let mut c = server();
        c.receive(&b);
        c.receive(&[1, 2, 3]);
        assert_eq!(c.poll_message(), Ok(None));
        assert!(c.read.capacity() < 4096);
        assert!(c.cold.as_ref().map_or(0, |c| c.msg_buf.capacity()) < 4096);
    }

    #[test]
    fn message_size_limit_across_fragments() {
        let limits = Limits {
            max_message_size: 10,
            ..Limits::default()
        };
        let mut b = cf(0x02, &[0u8; 6]);
        b.extend(cf(0x80, &[0u8; 5]));
        expect_fail(
            Connection::new(Role::Server, limits.clone()),
            &b,
            CloseCode::MESSAGE_TOO_BIG,
        );
        let mut b = cf(0x02, &[0u8; 6]);
        b.extend(cf(0x80, &[0u8; 4]));
        let mut c = Connection::new(Role::Server, limits.clone());
        c.receive(&b);
        assert_eq!(
            c.poll_message().unwrap(),
            Some(Message::binary(vec![0u8; 10]))
        );
        expect_fail(
            Connection::new(Role::Server, limits),
            &cf(0x82, &[0u8; 11]),
            CloseCode::MESSAGE_TOO_BIG,
        );
    }

    #[test]
    fn fragment_limit_counts_empty_fragments() {
        let limits = Limits {
            max_fragments: 3,
            ..Limits::default()
        };
        let mut ok = cf(0x01, b"");
        ok.extend(cf(0x00, b""));
        ok.extend(cf(0x80, b"x"));
        let mut c = Connection::new(Role::Server, limits.clone());
        c.receive(&ok);
        assert_eq!(c.poll_message().unwrap(), Some(Message::text("x")));
        let mut bad = cf(0x01, b"");
        bad.extend(cf(0x00, b""));
        bad.extend(cf(0x00, b""));
        bad.extend(cf(0x80, b"x"));
        expect_fail(
            Connection::new(Role::Server, limits),
            &bad,
            CloseCode::POLICY_VIOLATION,
        );
    }

    #[test]
    fn close_payload_rules() {
        expect_fail(server(), &cf(0x88, &[0x03]), CloseCode::PROTOCOL_ERROR);
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            expect_fail(
                server(),
                &cf(0x88, &code.to_be_bytes()),
                CloseCode::PROTOCOL_ERROR,
            );
        }
        expect_fail(
            server(),
            &cf(0x88, &[0x03, 0xe8, 0xce, 0xba, 0xff]),
            CloseCode::INVALID_PAYLOAD,
        );
    }

    #[test]
    fn a_deferred_close_reply_lets_data_out_before_it() {
        let mut c = server();
        c.defer_close_reply();
        let mut b = cf(0x88, &[0x0b, 0xb8, b'b', b'y', b'e']); // 3000 "bye"
        b.extend(cf(0x81, b"ignored"));
        c.receive(&b);
        assert_eq!(
            c.poll_message().unwrap(),
            Some(Message::Close(Some(CloseFrame::new(
                CloseCode(3000),
                "bye"
            ))))
        );
        assert_eq!(c.state(), State::CloseReceived);
        // No automatic reply; input after the close is dropped.
        assert_eq!(c.output(), b"");
        assert_eq!(c.poll_message(), Ok(None));
        assert!(!c.wants_close_transport());
        // Data still goes out, then our close completes the handshake.
        c.send(Message::text("late")).unwrap();
        c.send(Message::Close(Some(CloseFrame::new(CloseCode(4000), ""))))
            .unwrap();
        assert_eq!(c.state(), State::Closed);
        assert!(c.wants_close_transport());
        let mut want = vec![0x81, 0x04];
        want.extend_from_slice(b"late");
        want.extend_from_slice(&[0x88, 0x02, 0x0f, 0xa0]);
        assert_eq!(c.output(), &want[..]);
        assert_eq!(c.send(Message::text("after")), Err(SendError::Closed));

        // close() answers too; a peer that leaves before our reply closed
        // cleanly.
        let mut c = server();
        c.defer_close_reply();
        c.receive(&cf(0x88, &[0x03, 0xe8]));
        c.poll_message().unwrap();
        c.close(CloseCode::GOING_AWAY, "");
        assert_eq!(c.state(), State::Closed);
        let mut c = server();
        c.defer_close_reply();
        c.receive(&cf(0x88, b""));
        c.poll_message().unwrap();
        assert_eq!(c.receive_eof(), Ok(()));
        assert_eq!(c.state(), State::Closed);
    }

    #[test]
    fn peer_close_is_echoed_and_state_closed() {
        let mut c = server();
        let mut b = cf(0x88, &[0x0b, 0xb8, b'b', b'y', b'e']); // 3000 "bye"
        b.extend(cf(0x81, b"ignored"));
        c.receive(&b);
        let m = c.poll_message().unwrap();
        assert_eq!(
            m,
            Some(Message::Close(Some(CloseFrame::new(
                CloseCode(3000),
                "bye"
            ))))
        );
        assert_eq!(c.state(), State::Closed);
        assert_eq!(
            c.peer_close(),
            Some(&CloseFrame::new(CloseCode(3000), "bye"))
        );
        assert_eq!(c.output(), &[0x88, 0x02, 0x0b, 0xb8]);
        assert!(c.wants_close_transport());
        assert_eq!(c.poll_message(), Ok(None));
        assert_eq!(c.send(Message::text("late")), Err(SendError::Closed));
        assert_eq!(c.send(Message::Close(None)), Ok(()));
        assert_eq!(c.output(), &[0x88, 0x02, 0x0b, 0xb8]);
        assert_eq!(c.receive_eof(), Ok(()));

        // Empty close -> empty close.
        let mut c = server();
        c.receive(&cf(0x88, b""));
        assert_eq!(c.poll_message().unwrap(), Some(Message::Close(None)));
        assert_eq!(c.output(), &[0x88, 0x00]);
    }

    #[test]
    fn close_handshake_from_either_side() {
        for initiator_is_client in [true, false] {
            let (mut cl, mut sv) = (client(), server());
            let (a, b) = if initiator_is_client {
                (&mut cl, &mut sv)
            } else {
                (&mut sv, &mut cl)
            };
            a.send(Message::Close(Some(CloseFrame::new(
                CloseCode::NORMAL,
                "done",
            ))))
            .unwrap();
            assert_eq!(a.state(), State::CloseSent);
            assert_eq!(a.send(Message::binary(vec![1u8])), Err(SendError::Closed));
            assert_eq!(a.send(Message::Ping(Bytes::new())), Err(SendError::Closed));
            let got = pump(a, b, 1).unwrap();
            assert_eq!(
                got,
                vec![Message::Close(Some(CloseFrame::new(
                    CloseCode::NORMAL,
                    "done"
                )))]
            );
            assert_eq!(b.state(), State::Closed);
            let got = pump(b, a, 3).unwrap();
            assert_eq!(
                got,
                vec![Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))]
            );
            assert_eq!(a.state(), State::Closed);
            assert!(a.output().is_empty());
        }
    }

    #[test]
    fn wants_close_transport_by_role() {
        let mut c = client();
        c.receive(&raw(0x88, None, &[0x03, 0xe8]));
        poll_all(&mut c).unwrap();
        assert_eq!(c.state(), State::Closed);
        assert!(
            !c.wants_close_transport(),
            "a client waits for the server to close TCP"
        );
        let mut s = server();
        s.receive(&cf(0x88, &[0x03, 0xe8]));
        poll_all(&mut s).unwrap();
        assert!(s.wants_close_transport());
    }

    #[test]
    fn eof_before_close_is_abnormal() {
        let mut c = server();
        c.receive(&cf(0x81, b"hel")[..4]);
        assert_eq!(c.poll_message(), Ok(None));
        let e = c.receive_eof().unwrap_err();
        assert_eq!(e.code, CloseCode::ABNORMAL);
        assert!(c.output().is_empty(), "1006 is never sent");
        assert_eq!(c.receive_eof(), Ok(()));
        let mut c = server();
        c.send(Message::Close(None)).unwrap();
        assert_eq!(c.receive_eof().unwrap_err().code, CloseCode::ABNORMAL);
    }

    #[test]
    fn send_validates_close_and_control() {
        let mut c = server();
        assert_eq!(
            c.send(Message::Close(Some(CloseFrame::new(CloseCode(1005), "")))),
            Err(SendError::BadCloseCode(1005))
        );
        assert_eq!(
            c.send(Message::Ping(Bytes::from(vec![0u8; 126]))),
            Err(SendError::ControlTooLong(126))
        );
        assert_eq!(
            c.send(Message::Pong(Bytes::from(vec![0u8; 126]))),
            Err(SendError::ControlTooLong(126))
        );
        assert!(c.output().is_empty());
        assert_eq!(c.state(), State::Open);
        c.close(CloseCode::GOING_AWAY, "shutdown");
        assert_eq!(c.state(), State::CloseSent);
        assert_eq!(queued_close_code(&c), Some(1001));
        let n = c.output_len();
        c.close(CloseCode::GOING_AWAY, "again");
        assert_eq!(c.output_len(), n, "only one close frame");
        let mut c = server();
        c.close(CloseCode::ABNORMAL, "x");
        assert_eq!(c.output(), &[0x88, 0x00]);
    }

    #[test]
    fn close_received_after_we_sent_ours_completes() {
        let mut c = server();
        c.send(Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, ""))))
            .unwrap();
        let n = c.output_len();
        c.receive(&cf(0x82, b"still data"));
        c.receive(&cf(0x89, b"p"));
        c.receive(&cf(0x88, &[0x03, 0xe8]));
        let msgs = poll_all(&mut c).unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0], Message::binary(&b"still data"[..]));
        assert_eq!(c.state(), State::Closed);
        assert_eq!(c.output_len(), n, "no pong and no second close after ours");
    }

    #[test]
    fn protocol_error_after_close_sent_queues_nothing() {
        let mut c = server();
        c.send(Message::Close(None)).unwrap();
        let n = c.output_len();
        c.receive(&cf(0x83, b""));
        assert_eq!(
            c.poll_message().unwrap_err().code,
            CloseCode::PROTOCOL_ERROR
        );
        assert_eq!(c.output_len(), n);
        assert_eq!(c.state(), State::Failed);
    }

    #[test]
    fn round_trip_both_directions_bytewise_and_whole() {
        let text = "ünïcödé ✓ 🚀".repeat(20);
        let bin: Vec<u8> = (0..70000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [1usize, 7, 1 << 20] {
            let (mut cl, mut sv) = (client(), server());
            for client_sends in [true, false] {
                let (a, b) = if client_sends {
                    (&mut cl, &mut sv)
                } else {
                    (&mut sv, &mut cl)
                };
                a.send(Message::text(text.as_str())).unwrap();
                a.send(Message::binary(bin.clone())).unwrap();
                a.send(Message::Ping(Bytes::from_static(b"hb"))).unwrap();
                a.send(Message::Pong(Bytes::from_static(b"pg"))).unwrap();
                a.send(Message::binary(Vec::new())).unwrap();
                a.send(Message::text("")).unwrap();
                let got = if chunk == 1 {
                    // Only the small messages bytewise (speed).
                    let mut b2 = Vec::new();
                    let data = a.output().to_vec();
                    a.advance_output(data.len());
                    for piece in data.chunks(if data.len() > 10000 { 997 } else { 1 }) {
                        b.receive(piece);
                        b2.extend(poll_all(b).unwrap());
                    }
                    b2
                } else {
                    pump(a, b, chunk).unwrap()
                };
                assert_eq!(
                    got,
                    vec![
                        Message::text(text.as_str()),
                        Message::binary(bin.clone()),
                        Message::Ping(Bytes::from_static(b"hb")),
                        Message::Pong(Bytes::from_static(b"pg")),
                        Message::binary(Vec::new()),
                        Message::text(""),
                    ]
                );
                // The automatic pong goes back.
                let back = pump(b, a, 1).unwrap();
                assert_eq!(back, vec![Message::Pong(Bytes::from_static(b"hb"))]);
            }
        }
    }

    #[test]
    fn fragmented_send_round_trip_with_interleaved_ping() {
        let (mut cl, mut sv) = (client(), server());
        cl.send_fragment(OpCode::Text, "frag".as_bytes(), false)
            .unwrap();
        assert_eq!(
            cl.send(Message::text("no")),
            Err(SendError::FragmentInProgress)
        );
        assert_eq!(
            cl.send_fragment(OpCode::Binary, b"no", true),
            Err(SendError::FragmentInProgress)
        );
        cl.send(Message::Ping(Bytes::from_static(b"mid"))).unwrap();
        cl.send_fragment(OpCode::Continuation, &"ménted".as_bytes()[..2], false)
            .unwrap();
        cl.send_fragment(OpCode::Continuation, &"ménted".as_bytes()[2..], true)
            .unwrap();
        assert_eq!(
            cl.send_fragment(OpCode::Continuation, b"x", true),
            Err(SendError::NoFragmentInProgress)
        );
        assert_eq!(
            cl.send_fragment(OpCode::Ping, b"x", true),
            Err(SendError::NotADataOpcode(9))
        );
        for chunk in [1, 1000] {
            let mut sv2 = server();
            let data = cl.output().to_vec();
            let mut got = Vec::new();
            for piece in data.chunks(chunk) {
                sv2.receive(piece);
                got.extend(poll_all(&mut sv2).unwrap());
            }
            assert_eq!(
                got,
                vec![
                    Message::Ping(Bytes::from_static(b"mid")),
                    Message::text("fragménted")
                ]
            );
        }
        let got = pump(&mut cl, &mut sv, 5).unwrap();
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn client_masks_with_a_fresh_key_per_frame() {
        let mut c = client();
        for _ in 0..8 {
            c.send(Message::binary(vec![0u8; 8])).unwrap();
        }
        let frames = output_frames(&c);
        let keys: std::collections::HashSet<[u8; 4]> =
            frames.iter().map(|(h, _)| h.mask.unwrap()).collect();
        assert!(keys.len() >= 7, "keys repeat: {keys:?}");
        // The masked bytes on the wire differ from the payload (zeros).
        let wire = c.output();
        assert_ne!(&wire[6..14], &[0u8; 8]);
        // Servers never mask.
        let mut s = server();
        s.send(Message::binary(vec![0u8; 8])).unwrap();
        assert_eq!(s.output(), &[0x82, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn output_is_reused_and_big_buffers_released() {
        let mut s = server();
        s.send(Message::binary(vec![1u8; 100])).unwrap();
        s.advance_output(50);
        assert_eq!(s.output_len(), 52);
        s.advance_output(1000);
        assert_eq!(s.output_len(), 0);
        s.send(Message::binary(vec![1u8; 200_000])).unwrap();
        s.advance_output(s.output_len());
        assert!(s.out.capacity() <= RELEASE_ABOVE);
        // Receive buffer released after a big message too.
        let mut c = client();
        c.receive(&raw(0x82, None, &vec![3u8; 200_000]));
        let m = c.poll_message().unwrap().unwrap();
        drop(m);
        assert_eq!(c.poll_message(), Ok(None));
        assert!(c.read.capacity() <= RELEASE_ABOVE);
    }

    #[test]
    fn ping_after_close_sent_gets_no_pong() {
        let mut c = client();
        c.close(CloseCode::NORMAL, "");
        let n = c.output_len();
        c.receive(&raw(0x89, None, b"x"));
        assert_eq!(
            c.poll_message().unwrap(),
            Some(Message::Ping(Bytes::from_static(b"x")))
        );
        assert_eq!(c.output_len(), n);
    }

    #[test]
    fn arbitrary_garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.random_range(0..64);
            let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            for role in [Role::Client, Role::Server] {
                let mut c = Connection::new(
                    role,
                    Limits {
                        max_frame_size: 1000,
                        ..Limits::default()
                    },
                );
                for piece in data.chunks(rng.random_range(1..8)) {
                    c.receive(piece);
                    let _ = poll_all(&mut c);
                }
                let _ = c.receive_eof();
            }
        }
    }
    // ----- permessage-deflate -----

    use crate::deflate::{DeflateConfig, DeflateParams};

    fn pmd(role: Role, no_context_takeover: bool) -> PerMessageDeflate {
        let params = DeflateParams {
            server_no_context_takeover: no_context_takeover,
            client_no_context_takeover: no_context_takeover,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        };
        PerMessageDeflate::new(role, params, &DeflateConfig::default())
    }

    fn dserver(limits: Limits) -> Connection {
        Connection::new(Role::Server, limits).with_deflate(pmd(Role::Server, false))
    }

    fn dclient() -> Connection {
        Connection::new(Role::Client, Limits::default()).with_deflate(pmd(Role::Client, false))
    }

    #[test]
    fn negotiated_connection_has_the_agreed_deflate_with_local_settings() {
        let agreed = Negotiated {
            subprotocol: None,
            deflate: Some(DeflateParams {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            }),
        };
        let compressed = |conn: &mut Connection| {
            conn.send(Message::text("x".repeat(100))).unwrap();
            conn.output()[0] & 0x40 != 0
        };
        let limits = Limits::default;
        let mut c = Connection::negotiated(Role::Server, limits(), &agreed, None);
        assert!(compressed(&mut c));
        let dcfg = DeflateConfig::default();
        let none = Negotiated::default();
        let mut c = Connection::negotiated(Role::Client, limits(), &none, Some(&dcfg));
        assert!(!compressed(&mut c));
        // `min_size` is a local setting: it comes from the configuration.
        let large_only = DeflateConfig {
            min_size: 1000,
            ..DeflateConfig::default()
        };
        let mut c = Connection::negotiated(Role::Server, limits(), &agreed, Some(&large_only));
        assert!(!compressed(&mut c));
        assert_eq!(c.role(), Role::Server);
    }

    /// Compressed frame payload of `data` as a client would produce it.
    fn deflated(data: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        pmd(Role::Client, true).compress(data, &mut out);
        out.to_vec()
    }

    #[test]
    fn deflate_round_trip_both_directions() {
        let text = "compress me, compress me again, ".repeat(50);
        for chunk in [1usize, 13, 1 << 20] {
            for nct in [false, true] {
                let mut cl = Connection::new(Role::Client, Limits::default())
                    .with_deflate(pmd(Role::Client, nct));
                let mut sv = Connection::new(Role::Server, Limits::default())
                    .with_deflate(pmd(Role::Server, nct));
                for client_sends in [true, false] {
                    let (a, b) = if client_sends {
                        (&mut cl, &mut sv)
                    } else {
                        (&mut sv, &mut cl)
                    };
                    // Several messages: context takeover must work across them.
                    for i in 0..3 {
                        a.send(Message::text(format!("{i}{text}"))).unwrap();
                    }
                    a.send(Message::binary(vec![9u8; 3000])).unwrap();
                    a.send(Message::text("")).unwrap();
                    let frames = output_frames(a);
                    assert!(frames.iter().all(|(h, _)| h.rsv1), "data frames carry RSV1");
                    assert!(frames[0].1.len() < text.len() / 4, "payload is compressed");
                    let got = pump(a, b, chunk).unwrap();
                    let mut want: Vec<Message> = (0..3)
                        .map(|i| Message::text(format!("{i}{text}")))
                        .collect();
                    want.push(Message::binary(vec![9u8; 3000]));
                    want.push(Message::text(""));
                    assert_eq!(got, want, "chunk {chunk} nct {nct}");
                }
            }
        }
    }

    #[test]
    fn deflate_fragmented_message_with_interleaved_ping() {
        let text = "fragmented and compressed ✓ ".repeat(40);
        let z = deflated(text.as_bytes());
        let (a, rest) = z.split_at(z.len() / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut bytes = cf(0x41, a); // Text, RSV1, not FIN
        bytes.extend(cf(0x89, b"p"));
        bytes.extend(cf(0x00, b));
        bytes.extend(cf(0x00, b""));
        bytes.extend(cf(0x80, c));
        for chunk in [1usize, 4, bytes.len()] {
            let mut s = dserver(Limits::default());
            let mut got = Vec::new();
            for piece in bytes.chunks(chunk) {
                s.receive(piece);
                got.extend(poll_all(&mut s).unwrap());
            }
            assert_eq!(
                got,
                vec![
                    Message::Ping(Bytes::from_static(b"p")),
                    Message::text(text.as_str())
                ]
            );
        }
        // An uncompressed message after it (RSV1 clear) is fine too.
        let mut s = dserver(Limits::default());
        bytes.extend(cf(0x81, b"plain"));
        s.receive(&bytes);
        let got = poll_all(&mut s).unwrap();
        assert_eq!(got.last(), Some(&Message::text("plain")));
    }

    #[test]
    fn deflate_rsv1_rules() {
        let z = deflated(b"hello hello");
        let mut b = cf(0x41, &z);
        b.extend(cf(0xc0, b"")); // RSV1 on the continuation
        expect_fail(dserver(Limits::default()), &b, CloseCode::PROTOCOL_ERROR);
        expect_fail(
            dserver(Limits::default()),
            &cf(0xc9, b""),
            CloseCode::PROTOCOL_ERROR,
        ); // RSV1 on ping
        expect_fail(
            dserver(Limits::default()),
            &cf(0xc8, b""),
            CloseCode::PROTOCOL_ERROR,
        ); // RSV1 on close
        let mut s = dserver(Limits::default());
        s.receive(&cf(0xc1, &z));
        assert_eq!(
            s.poll_message().unwrap(),
            Some(Message::text("hello hello"))
        );
    }

    #[test]
    fn deflate_bomb_is_1009_with_bounded_memory() {
        let z = deflated(&vec![0u8; 4 << 20]);
        assert!(z.len() < (4 << 20) / 64, "a bomb: {} bytes", z.len());
        let limits = Limits {
            max_message_size: 64 * 1024,
            ..Limits::default()
        };
        let s = expect_fail(dserver(limits), &cf(0xc2, &z), CloseCode::MESSAGE_TOO_BIG);
        // The failure frees what was inflated (the inflater's own bound is
        // tested in deflate.rs).
        assert_eq!(s.cold.as_ref().map_or(0, |c| c.msg_buf.capacity()), 0);
        // Exactly at the limit is fine.
        let z = deflated(&vec![0u8; 64 * 1024]);
        let mut s = dserver(Limits {
            max_message_size: 64 * 1024,
            ..Limits::default()
        });
        s.receive(&cf(0xc2, &z));
        assert_eq!(
            s.poll_message().unwrap(),
            Some(Message::binary(vec![0u8; 64 * 1024]))
        );
    }

    #[test]
    fn deflate_corrupt_data_is_1007() {
        expect_fail(
            dserver(Limits::default()),
            &cf(0xc2, &[0xff, 0xff, 0xff, 0xff, 0x00]),
            CloseCode::INVALID_PAYLOAD,
        );
    }

    #[test]
    fn deflate_text_utf8_fails_fast_mid_frame() {
        let mut data = b"ok \xff ".to_vec();
        data.extend((0..20000u32).map(|i| b'a' + ((i * 7919) % 26) as u8));
        let z = deflated(&data);
        let frame = cf(0xc1, &z);
        let mut s = dserver(Limits::default());
        // Header (8 bytes: 16-bit length + mask) + half of the payload.
        s.receive(&frame[..8 + z.len() / 2]);
        assert_eq!(
            s.poll_message().unwrap_err().code,
            CloseCode::INVALID_PAYLOAD
        );
        assert_eq!(queued_close_code(&s), Some(1007));
    }

    #[test]
    fn deflate_client_receives_and_sends_masked_compressed() {
        let mut c = dclient();
        c.send(Message::text("abcabcabcabc")).unwrap();
        let frames = output_frames(&c);
        assert!(frames[0].0.rsv1 && frames[0].0.mask.is_some());
        let mut srv_codec = pmd(Role::Server, false);
        let mut out = BytesMut::new();
        srv_codec
            .decompress(&frames[0].1, true, 1000, &mut out)
            .unwrap();
        assert_eq!(&out[..], b"abcabcabcabc");
    }

    #[test]
    fn mutated_valid_streams_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut cl =
            Connection::new(Role::Client, Limits::default()).with_deflate(pmd(Role::Client, false));
        cl.send(Message::text("hello ✓ ".repeat(30))).unwrap();
        cl.send_fragment(OpCode::Binary, &[1u8; 40], false).unwrap();
        cl.send(Message::Ping(Bytes::from_static(b"p"))).unwrap();
        cl.send_fragment(OpCode::Continuation, &[2u8; 300], true)
            .unwrap();
        cl.close(CloseCode::NORMAL, "bye");
        let wire = cl.output().to_vec();
        for _ in 0..3000 {
            let mut data = wire.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..data.len());
                data[i] ^= 1 << rng.random_range(0..8);
            }
            let limits = Limits {
                max_message_size: 200,
                max_frame_size: 150,
                max_fragments: 3,
                ..Limits::default()
            };
            let mut s =
                Connection::new(Role::Server, limits).with_deflate(pmd(Role::Server, false));
            for piece in data.chunks(rng.random_range(1..50)) {
                s.receive(piece);
                let _ = poll_all(&mut s);
            }
            let _ = s.receive_eof();
        }
    }
    #[test]
    fn state_is_small() {
        // One lives per open connection (idle memory): cold parts are boxed.
        let size = std::mem::size_of::<Connection>();
        assert!(size <= 200, "Connection is {size} bytes");
    }

    /// Everything in the output, chunk by chunk.
    fn all_output(c: &Connection) -> Vec<u8> {
        c.output_chunks().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn vectored_output_queues_large_payloads_without_a_copy() {
        let mut s = server();
        s.enable_vectored_output();
        let big = Bytes::from(vec![7u8; 70_000]);
        let text: String = "é".repeat(ZERO_COPY_MIN);
        s.send(Message::text("small")).unwrap();
        s.send(Message::Binary(big.clone())).unwrap();
        s.send(Message::Ping(Bytes::from_static(b"p"))).unwrap();
        s.send(Message::text(text.clone())).unwrap();
        s.send(Message::binary(vec![1u8; 10])).unwrap();
        // The payload is the message's own memory.
        assert!(s
            .output_chunks()
            .any(|c| c.as_ptr() == big.as_ptr() && c.len() == big.len()));
        let all = all_output(&s);
        assert_eq!(s.output_len(), all.len());
        // Same bytes, same order, as without vectored output.
        let mut plain = server();
        plain.send(Message::text("small")).unwrap();
        plain.send(Message::Binary(big)).unwrap();
        plain.send(Message::Ping(Bytes::from_static(b"p"))).unwrap();
        plain.send(Message::text(text)).unwrap();
        plain.send(Message::binary(vec![1u8; 10])).unwrap();
        assert_eq!(all, plain.output());
        assert_eq!(plain.output_chunks().count(), 1);
        // Written in odd pieces through `output()`, the bytes come out whole.
        let mut written = Vec::new();
        let mut step = 1;
        while s.output_len() > 0 {
            let first = s.output();
            assert!(!first.is_empty());
            let n = first.len().min(step);
            written.extend_from_slice(&first[..n]);
            s.advance_output(n);
            step = step * 3 + 1;
        }
        assert_eq!(written, all);
        assert_eq!(s.chunks.capacity(), 0, "queue released once written");
        // A client reading it gets the messages.
        let mut c = client();
        c.receive(&all);
        let got = poll_all(&mut c).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[1], Message::binary(vec![7u8; 70_000]));
    }

    #[test]
    fn advance_output_across_chunk_boundaries() {
        let mut s = server();
        s.enable_vectored_output();
        s.send(Message::binary(vec![1u8; 3000])).unwrap();
        s.send(Message::binary(vec![2u8; 3000])).unwrap();
        let all = all_output(&s);
        assert_eq!(all.len(), 2 * 3004);
        // Past the first frame and into the second one's header.
        s.advance_output(3006);
        assert_eq!(all_output(&s), all[3006..]);
        assert_eq!(s.output(), &all[3006..3008]);
        s.advance_output(1_000_000);
        assert_eq!(s.output_len(), 0);
        assert!(s.output().is_empty());
    }
}

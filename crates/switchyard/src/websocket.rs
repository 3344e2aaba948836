//! `WebSocket<S>`: the proto [`Connection`] driven over a tokio stream, as a
//! `Stream` of received messages and a `Sink` of messages to send.
//!
//! Every method is poll-based and keeps its state in the connection, so
//! dropping a pending `next()` (e.g. in `tokio::select!`) loses nothing: the
//! bytes already read stay in the connection's receive buffer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Wake, Waker};

use bytes::{Bytes, BytesMut};
use futures_core::{FusedStream, Stream};
use futures_sink::Sink;
use futures_util::task::AtomicWaker;
use switchyard_proto::frame::FrameHeader;
use switchyard_proto::handshake::Negotiated;
use switchyard_proto::{CloseCode, CloseFrame, Connection, Limits, Message, Role, State};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::{Deadline, Error};

/// Spare capacity below which the receive buffer grows before a read.
const MIN_READ_SPACE: usize = 4 * 1024;
/// How much the receive buffer grows by (one read can fill this much).
const READ_CHUNK: usize = 16 * 1024;
/// The most a read reserves ahead for a large frame whose header was parsed
/// (the rest of the frame is reserved at once, up to this, so a 64 KiB
/// message is read in one or two calls into a buffer that grows once).
const MAX_READ_AHEAD: usize = 256 * 1024;
/// Room reserved past the end of a large frame. The read that completes the
/// frame is then offered more than it returns, and a short read tells the
/// runtime that the socket is drained (tokio then waits for readiness
/// instead of calling `recv` again only to get `WouldBlock`): one system
/// call less per large message.
const READ_SLACK: usize = 1024;
/// Bytes of automatic replies (pongs, close reply) that may wait unwritten
/// before reading pauses: a peer that sends pings but never reads cannot
/// make the output grow without bound.
const AUTO_REPLY_LIMIT: usize = 64 * 1024;

/// Where the connection is, from the driver's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading and writing messages (the proto state may be `CloseSent`).
    Open,
    /// The connection is ending: write out what is queued (our close frame
    /// or close reply), bounded by the close deadline.
    Flushing,
    /// Close the write side of the transport (server, or failed connection).
    Shutdown,
    /// Client after a clean close: wait for the server to close TCP.
    AwaitEof,
    /// Nothing more will happen; `pending` is yielded once, then `None`.
    Done,
}

struct Heartbeat {
    interval: std::time::Duration,
    timeout: std::time::Duration,
    sleep: Pin<Box<Sleep>>,
    /// Time of the last read that returned data.
    last_recv: Instant,
    /// When we sent a ping that is not answered yet (no data since).
    ping_sent: Option<Instant>,
}

/// The state shared by [`WebSocket`] and its split halves.
///
/// Small on purpose (one per open connection): what is rarely set is boxed.
pub(crate) struct Inner<S> {
    stream: S,
    conn: Connection,
    /// `None` for the default (no subprotocol, no extension).
    negotiated: Option<Box<Negotiated>>,
    /// The error to yield once the connection has finished ending.
    pending: Option<Box<Error>>,
    heartbeat: Option<Box<Heartbeat>>,
    close_deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes of automatic replies queued since the output was last empty.
    auto_out: usize,
    phase: Phase,
    heartbeat_init: bool,
}

/// What [`WebSocket::negotiated`] returns when nothing was negotiated.
static NOTHING_NEGOTIATED: Negotiated = Negotiated {
    subprotocol: None,
    deflate: None,
};

/// Most `IoSlice`s passed to one vectored write.
const MAX_IOV: usize = 16;

/// Replace the (empty) receive buffer `buf` by `pooled`, keeping the old
/// one's memory in the pool if it has any.
fn recycle(buf: &mut BytesMut, pooled: BytesMut) {
    let old = std::mem::replace(buf, pooled);
    if old.capacity() > 0 {
        crate::recv_pool::put(old);
    }
}

/// Before waiting for data: an empty receive buffer goes to the pool, and a
/// few bytes of a partial frame move to a buffer of their own size, so that
/// a waiting connection holds no more than it received (a large partial
/// frame keeps its buffer: the rest of the frame is read into it).
#[inline]
fn release_while_waiting(buf: &mut BytesMut) {
    if buf.is_empty() {
        if buf.capacity() > 0 {
            crate::recv_pool::put(std::mem::take(buf));
        }
    } else if buf.len() <= MIN_READ_SPACE && buf.capacity() >= READ_CHUNK {
        let own = BytesMut::from(&buf[..]);
        crate::recv_pool::put(std::mem::replace(buf, own));
    }
}

fn lost_buffer() -> std::io::Error {
    std::io::Error::other("AsyncRead implementation replaced the read buffer")
}

impl<S: AsyncRead + AsyncWrite + Unpin> Inner<S> {
    fn new(stream: S, mut conn: Connection, leftover: &[u8]) -> Self {
        if !leftover.is_empty() {
            conn.receive(leftover);
        }
        // Large payloads are written from the message's own memory, with
        // the frame header, in one vectored write (no copy into the output).
        conn.enable_vectored_output();
        Inner {
            stream,
            conn,
            negotiated: None,
            phase: Phase::Open,
            pending: None,
            heartbeat: None,
            heartbeat_init: false,
            close_deadline: None,
            auto_out: 0,
        }
    }

    /// Set the error to report (unless one is set already).
    fn set_pending(&mut self, e: Error) {
        if self.pending.is_none() {
            self.pending = Some(Box::new(e));
        }
    }

    /// Write some of the queued output: all its chunks in one vectored
    /// write when there are several and the stream supports it.
    fn poll_write_output(&mut self, wcx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let first = self.conn.output();
        if first.len() < self.conn.output_len() && self.stream.is_write_vectored() {
            let mut iov = [std::io::IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (slot, chunk) in iov.iter_mut().zip(self.conn.output_chunks()) {
                *slot = std::io::IoSlice::new(chunk);
                n += 1;
            }
            return Pin::new(&mut self.stream).poll_write_vectored(wcx, &iov[..n]);
        }
        Pin::new(&mut self.stream).poll_write(wcx, first)
    }

    fn arm_close_deadline(&mut self) {
        if self.close_deadline.is_none() {
            let d = self.conn.limits().close_timeout;
            self.close_deadline = Some(Box::pin(tokio::time::sleep(d)));
        }
    }

    /// Whether the close deadline (if armed) has passed; registers `cx` if not.
    fn close_deadline_passed(&mut self, cx: &mut Context<'_>) -> bool {
        match self.close_deadline.as_mut() {
            Some(s) => s.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    /// Enter the ending phases with an optional error to report.
    fn begin_ending(&mut self, err: Option<Error>) {
        if let Some(e) = err {
            self.set_pending(e);
        }
        self.phase = Phase::Flushing;
        self.arm_close_deadline();
        self.heartbeat = None;
    }

    /// Write all queued output, then flush the stream.
    pub(crate) fn poll_flush_output(&mut self, wcx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while self.conn.output_len() > 0 {
            let n = ready!(self.poll_write_output(wcx))?;
            if n == 0 {
                return Poll::Ready(Err(
                    std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                ));
            }
            self.conn.advance_output(n);
        }
        self.auto_out = 0;
        ready!(Pin::new(&mut self.stream).poll_flush(wcx))?;
        Poll::Ready(Ok(()))
    }

    /// Write until the queued output is under `limit` bytes.
    fn poll_output_below(
        &mut self,
        wcx: &mut Context<'_>,
        limit: usize,
    ) -> Poll<Result<(), Error>> {
        while self.conn.output_len() >= limit && self.conn.output_len() > 0 {
            let n = ready!(self.poll_write_output(wcx))?;
            if n == 0 {
                return Poll::Ready(Err(
                    std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                ));
            }
            self.conn.advance_output(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Read once from the stream into the connection's receive buffer.
    /// `Ok(0)` is end of input.
    ///
    /// An idle connection holds no receive buffer: when a read finds nothing
    /// and no partial frame is buffered, the buffer goes to a small
    /// per-thread pool ([`crate::recv_pool`]), and the next read of any
    /// connection on the thread takes it back (through a stack buffer when
    /// the pool has none free). A connection busy with small messages thus
    /// reads message after message into the same memory, without an
    /// allocation (each payload is a slice of it, so a message the caller
    /// keeps keeps that buffer's memory allocated).
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let missing = self.conn.frame_bytes_missing().min(MAX_READ_AHEAD);
        let buf = self.conn.read_buf();
        if buf.capacity() - buf.len() < MIN_READ_SPACE && buf.is_empty() && missing == 0 {
            match crate::recv_pool::take(READ_CHUNK) {
                Some(pooled) => recycle(buf, pooled),
                None => return self.poll_read_via_stack(cx),
            }
        }
        let spare = buf.capacity() - buf.len();
        if spare < MIN_READ_SPACE || spare < missing {
            buf.reserve(missing.max(READ_CHUNK) + READ_SLACK);
        }
        let spare = buf.spare_capacity_mut();
        let spare_ptr = spare.as_ptr() as *const u8;
        let mut rb = ReadBuf::uninit(spare);
        if Pin::new(&mut self.stream)
            .poll_read(cx, &mut rb)?
            .is_pending()
        {
            release_while_waiting(buf);
            return Poll::Pending;
        }
        let filled = rb.filled();
        if filled.as_ptr() != spare_ptr {
            return Poll::Ready(Err(lost_buffer()));
        }
        let n = filled.len();
        // SAFETY: `filled` starts at the first spare byte of `buf` (checked just
        // above) and `ReadBuf` guarantees its `n` bytes were initialized by the
        // reader, so the first `n` spare bytes are initialized and in bounds.
        unsafe { buf.set_len(buf.len() + n) };
        Poll::Ready(Ok(n))
    }

    /// [`Inner::poll_read_some`] when the pool has no buffer free: read into
    /// a stack buffer, so that a read that finds nothing allocates nothing,
    /// and copy what arrived into a new buffer, which then goes round
    /// through the pool like any other.
    fn poll_read_via_stack(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut rb = ReadBuf::uninit(&mut stack);
        if Pin::new(&mut self.stream)
            .poll_read(cx, &mut rb)?
            .is_pending()
        {
            let buf = self.conn.read_buf();
            if buf.capacity() > 0 {
                crate::recv_pool::put(std::mem::take(buf));
            }
            return Poll::Pending;
        }
        let filled = rb.filled();
        let n = filled.len();
        let mut want = READ_CHUNK;
        if n == READ_CHUNK {
            // The start of a large transfer: make room for the whole frame
            // now (bounded) rather than growing the buffer again (and copying
            // these bytes once more) right after.
            if let Ok(Some((h, hlen))) = FrameHeader::parse(filled) {
                let max = self.conn.limits().max_frame_size.min(MAX_READ_AHEAD) as u64;
                want = want.max(h.payload_len.min(max) as usize + hlen);
            }
        }
        self.conn.read_buf().reserve(want + READ_SLACK);
        self.conn.receive(filled);
        Poll::Ready(Ok(n))
    }

    /// Drive the ending phases to `Done`.
    fn poll_ending(&mut self, cx: &mut Context<'_>, wcx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.phase {
                Phase::Open | Phase::Done => return Poll::Ready(()),
                Phase::Flushing => {
                    match self.poll_flush_output(wcx) {
                        Poll::Ready(_) => {}
                        Poll::Pending => {
                            if self.close_deadline_passed(cx) {
                                self.phase = Phase::Done;
                                continue;
                            }
                            return Poll::Pending;
                        }
                    }
                    let clean = self.conn.state() == State::Closed;
                    self.phase = if clean && self.conn.role() == Role::Client {
                        Phase::AwaitEof
                    } else {
                        Phase::Shutdown
                    };
                }
                Phase::Shutdown => {
                    match Pin::new(&mut self.stream).poll_shutdown(wcx) {
                        Poll::Ready(_) => {}
                        Poll::Pending => {
                            if !self.close_deadline_passed(cx) {
                                return Poll::Pending;
                            }
                        }
                    }
                    self.phase = Phase::Done;
                }
                Phase::AwaitEof => {
                    let mut scratch = [0u8; 256];
                    let mut rb = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut self.stream).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => continue,
                        Poll::Ready(_) => self.phase = Phase::Done,
                        Poll::Pending => {
                            if !self.close_deadline_passed(cx) {
                                return Poll::Pending;
                            }
                            self.phase = Phase::Done;
                        }
                    }
                }
            }
        }
    }

    /// The heartbeat: `Some(())` when the pong timeout passed.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.heartbeat_init {
            self.heartbeat_init = true;
            let limits = self.conn.limits();
            if let Some(interval) = limits.ping_interval {
                let now = Instant::now();
                self.heartbeat = Some(Box::new(Heartbeat {
                    interval,
                    timeout: limits.pong_timeout,
                    sleep: Box::pin(tokio::time::sleep_until(now + interval)),
                    last_recv: now,
                    ping_sent: None,
                }));
            }
        }
        let Some(hb) = self.heartbeat.as_mut() else {
            return false;
        };
        loop {
            if hb.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            match hb.ping_sent {
                Some(sent) if hb.last_recv < sent => {
                    if now >= sent + hb.timeout {
                        return true;
                    }
                    hb.sleep.as_mut().reset(sent + hb.timeout);
                }
                _ => {
                    hb.ping_sent = None;
                    let due = hb.last_recv + hb.interval;
                    if now >= due {
                        if self.conn.state() == State::Open {
                            let _ = self.conn.send(Message::Ping(Bytes::new()));
                        }
                        hb.ping_sent = Some(now);
                        hb.sleep.as_mut().reset(now + hb.timeout);
                    } else {
                        hb.sleep.as_mut().reset(due);
                    }
                }
            }
        }
    }

    fn note_received(&mut self) {
        if let Some(hb) = self.heartbeat.as_mut() {
            let now = Instant::now();
            hb.last_recv = now;
            // The answer to our ping (or any frame) arrived: the next ping is
            // due one interval of silence from now, not when the pong
            // deadline would have passed. Only once per ping, so a busy
            // connection does not touch the timer for every read.
            if hb.ping_sent.take().is_some() {
                hb.sleep.as_mut().reset(now + hb.interval);
            }
        }
    }

    /// The next message. `cx` is woken for reads and timers, `wcx` for writes
    /// (they differ only for split halves).
    pub(crate) fn poll_next_msg(
        &mut self,
        cx: &mut Context<'_>,
        wcx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, Error>>> {
        loop {
            match self.phase {
                Phase::Done => return Poll::Ready(self.pending.take().map(|e| Err(*e))),
                Phase::Flushing | Phase::Shutdown | Phase::AwaitEof => {
                    ready!(self.poll_ending(cx, wcx));
                    continue;
                }
                Phase::Open => {}
            }

            // Pongs, close replies, pings: write what is queued without
            // blocking the read. Messages queued by the caller (`feed`) are
            // left for its `flush`, so that a batch of replies goes out in one
            // write instead of one write per received message. Once our close
            // frame is queued (`CloseSent`), everything goes out.
            let must_write = self.auto_out > 0 || self.conn.state() != State::Open;
            if must_write && self.conn.output_len() > 0 {
                if let Poll::Ready(Err(e)) = self.poll_flush_output(wcx) {
                    self.phase = Phase::Done;
                    self.pending = Some(Box::new(e));
                    continue;
                }
            }

            let queued_before = self.conn.output_len();
            match self.conn.poll_message() {
                Ok(Some(msg)) => {
                    self.auto_out += self.conn.output_len().saturating_sub(queued_before);
                    if let Message::Close(_) = msg {
                        // The reply is queued (or the handshake completed).
                        // Send it now, without waiting, in case the caller
                        // stops polling after the close. A deferred reply
                        // is the caller's to send.
                        if self.conn.state() != State::CloseReceived {
                            self.begin_ending(None);
                        }
                        let _ = self.poll_ending(cx, wcx);
                    } else if matches!(msg, Message::Ping(_)) && self.conn.output_len() > 0 {
                        if let Poll::Ready(Err(e)) = self.poll_flush_output(wcx) {
                            self.phase = Phase::Done;
                            self.pending = Some(Box::new(e));
                        }
                    }
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(
                        code = e.code.0,
                        reason = e.reason,
                        "websocket failed: protocol error"
                    );
                    self.begin_ending(Some(Error::Protocol(e)));
                    continue;
                }
            }

            if self.conn.state() == State::CloseSent {
                self.arm_close_deadline();
                if self.close_deadline_passed(cx) {
                    tracing::debug!("websocket closing handshake timed out; closing the transport");
                    self.phase = Phase::Shutdown;
                    self.set_pending(Error::Timeout(Deadline::ClosingHandshake));
                    continue;
                }
            }

            let queued_before = self.conn.output_len();
            if self.poll_heartbeat(cx) {
                tracing::debug!("websocket peer did not answer a ping in time; closing with 1011");
                self.conn.close(CloseCode::INTERNAL_ERROR, "pong timeout");
                self.begin_ending(Some(Error::Timeout(Deadline::Pong)));
                continue;
            }
            // A ping the heartbeat just queued.
            let pinged = self.conn.output_len() > queued_before;
            if pinged {
                self.auto_out += self.conn.output_len() - queued_before;
                if let Poll::Ready(Err(e)) = self.poll_flush_output(wcx) {
                    self.phase = Phase::Done;
                    self.pending = Some(Box::new(e));
                    continue;
                }
            }

            // The peer makes us queue replies faster than it reads them:
            // stop reading until the output drains (the flush attempt above
            // registered for writability).
            if self.auto_out > AUTO_REPLY_LIMIT && self.conn.output_len() > 0 {
                return Poll::Pending;
            }

            match ready!(self.poll_read_some(cx)) {
                Ok(0) => {
                    if let Err(e) = self.conn.receive_eof() {
                        self.pending = Some(Box::new(Error::Protocol(e)));
                    }
                    self.phase = Phase::Done;
                }
                Ok(_) => self.note_received(),
                Err(e) => {
                    self.pending = Some(Box::new(Error::Io(e)));
                    self.phase = Phase::Done;
                }
            }
        }
    }

    fn is_terminated(&self) -> bool {
        self.phase == Phase::Done && self.pending.is_none()
    }

    pub(crate) fn poll_ready_send(&mut self, wcx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.phase == Phase::Done {
            return Poll::Ready(Err(Error::Closed));
        }
        let limit = self.conn.limits().max_write_buffer;
        if self.conn.output_len() >= limit {
            ready!(self.poll_output_below(wcx, limit))?;
        }
        Poll::Ready(Ok(()))
    }

    pub(crate) fn start_send_msg(&mut self, msg: Message) -> Result<(), Error> {
        if self.phase != Phase::Open {
            return Err(Error::Closed);
        }
        let closing = matches!(msg, Message::Close(_));
        self.conn.send(msg)?;
        if closing {
            self.closing_sent();
        }
        Ok(())
    }

    /// Our close frame was queued: wait for the peer's, or, when it was the
    /// deferred reply to the peer's, end the connection.
    fn closing_sent(&mut self) {
        if self.conn.state() == State::Closed {
            self.begin_ending(None);
        } else {
            self.arm_close_deadline();
        }
    }

    /// Queue our close frame (if the connection is still open, or waits
    /// for our deferred reply).
    pub(crate) fn queue_close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        let open = matches!(self.conn.state(), State::Open | State::CloseReceived);
        if self.phase == Phase::Open && open {
            let frame = frame.or(Some(CloseFrame::new(CloseCode::NORMAL, "")));
            self.conn.send(Message::Close(frame))?;
            self.closing_sent();
        }
        Ok(())
    }

    /// Full close: queue our close, flush, wait for the peer's close (up to
    /// `close_timeout`, discarding data messages), close the transport.
    pub(crate) fn poll_close_full(
        &mut self,
        cx: &mut Context<'_>,
        wcx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        self.queue_close(None)?;
        loop {
            match ready!(self.poll_next_msg(cx, wcx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// A WebSocket over any tokio byte stream.
///
/// Receive with `StreamExt::next`, send with `SinkExt::send` (or `feed` several
/// then `flush`, which writes them in one go). Split into two halves for two
/// tasks with [`WebSocket::split`].
pub struct WebSocket<S> {
    inner: Inner<S>,
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("role", &self.inner.conn.role())
            .field("state", &self.inner.conn.state())
            .field("negotiated", &self.inner.negotiated.as_deref())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wrap a stream whose handshake is done. `leftover` are bytes read past
    /// the HTTP head: they are WebSocket frames and are parsed first.
    pub fn from_raw(stream: S, conn: Connection, leftover: &[u8]) -> Self {
        WebSocket {
            inner: Inner::new(stream, conn, leftover),
        }
    }

    /// Record what the handshake negotiated (for [`WebSocket::negotiated`]).
    pub fn with_negotiated(mut self, negotiated: Negotiated) -> Self {
        self.inner.negotiated = (negotiated != NOTHING_NEGOTIATED).then(|| Box::new(negotiated));
        self
    }

    /// What the handshake negotiated (subprotocol, permessage-deflate).
    pub fn negotiated(&self) -> &Negotiated {
        self.inner
            .negotiated
            .as_deref()
            .unwrap_or(&NOTHING_NEGOTIATED)
    }

    /// The subprotocol the handshake agreed to, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.negotiated().subprotocol.as_deref()
    }

    /// Which end we are.
    pub fn role(&self) -> Role {
        self.inner.conn.role()
    }

    /// The limits this connection enforces.
    pub fn limits(&self) -> &Limits {
        self.inner.conn.limits()
    }

    /// The proto connection state.
    pub fn state(&self) -> State {
        self.inner.conn.state()
    }

    /// The close frame the peer sent, if any.
    pub fn peer_close(&self) -> Option<&CloseFrame> {
        self.inner.conn.peer_close()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.inner.stream
    }

    /// The capacity of the receive buffer: 0 on an idle connection (the
    /// buffer is released when a read finds nothing and no partial frame
    /// is buffered), for callers that check their idle memory.
    pub fn read_buffer_capacity(&mut self) -> usize {
        self.inner.conn.read_buf().capacity()
    }

    /// The underlying stream, mutably. Reading or writing it directly
    /// corrupts the WebSocket; use it for socket options.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner.stream
    }

    /// Give up the WebSocket and return its stream. Bytes read but not yet
    /// parsed and frames queued but not yet written are dropped: use it right
    /// after the handshake (e.g. a load generator that frames by itself).
    pub fn into_inner(self) -> S {
        self.inner.stream
    }

    /// Close with `code` and `reason`: send our close frame, wait for the
    /// peer's (up to `Limits::close_timeout`, discarding messages that arrive
    /// meanwhile), close the transport.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.inner
            .queue_close(Some(CloseFrame::new(code, reason)))?;
        std::future::poll_fn(|cx| {
            let mut wcx = write_context(cx);
            self.inner.poll_close_full(cx, &mut wcx)
        })
        .await
    }

    /// Split into a reader (Stream) and a writer (Sink) usable from two tasks.
    pub fn split(self) -> (WsReader<S>, WsWriter<S>) {
        let wakers = Arc::new(WriteWakers::default());
        let shared = Arc::new(Shared {
            inner: Mutex::new(self.inner),
            wakers: wakers.clone(),
            write_waker: Waker::from(wakers),
        });
        (
            WsReader {
                shared: shared.clone(),
            },
            WsWriter { shared },
        )
    }
}

/// The write context of an unsplit WebSocket, beside the task's own `cx`
/// (both wake the same task): a second `Context` over the one borrowed
/// waker, not a clone of it: cloning a tokio waker is an atomic increment
/// (and its drop a decrement) on every poll of the message loop.
fn write_context<'a>(cx: &Context<'a>) -> Context<'a> {
    Context::from_waker(cx.waker())
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut wcx = write_context(cx);
        self.get_mut().inner.poll_next_msg(cx, &mut wcx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FusedStream for WebSocket<S> {
    /// True once no more items will come (the next poll yields `None`).
    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.get_mut().inner.poll_ready_send(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.get_mut().inner.start_send_msg(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let inner = &mut self.get_mut().inner;
        if inner.phase == Phase::Done {
            return Poll::Ready(Ok(()));
        }
        inner.poll_flush_output(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut wcx = write_context(cx);
        self.get_mut().inner.poll_close_full(cx, &mut wcx)
    }
}

/// Wakes both halves' tasks when the transport becomes writable: the stream
/// keeps one write waker, and both halves may be waiting to write.
#[derive(Default)]
struct WriteWakers {
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Wake for WriteWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.reader.wake();
        self.writer.wake();
    }
}

struct Shared<S> {
    inner: Mutex<Inner<S>>,
    wakers: Arc<WriteWakers>,
    write_waker: Waker,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        // A panic while holding the lock cannot leave the connection in a
        // state worse than a closed one; keep going rather than propagate.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The receiving half of a split [`WebSocket`]. Also flushes pongs and close
/// replies, and runs the heartbeat.
pub struct WsReader<S> {
    shared: Arc<Shared<S>>,
}

/// The sending half of a split [`WebSocket`].
pub struct WsWriter<S> {
    shared: Arc<Shared<S>>,
}

/// `reunite` was given halves of two different WebSockets.
#[derive(Debug, thiserror::Error)]
#[error("these halves come from different WebSockets")]
pub struct ReuniteError;

impl<S: AsyncRead + AsyncWrite + Unpin> WsReader<S> {
    /// Put the halves back together.
    pub fn reunite(self, writer: WsWriter<S>) -> Result<WebSocket<S>, ReuniteError> {
        if !Arc::ptr_eq(&self.shared, &writer.shared) {
            return Err(ReuniteError);
        }
        drop(writer);
        match Arc::try_unwrap(self.shared) {
            Ok(shared) => {
                let inner = shared.inner.into_inner().unwrap_or_else(|p| p.into_inner());
                Ok(WebSocket { inner })
            }
            Err(_) => Err(ReuniteError),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsReader<S> {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let shared = &*self.shared;
        shared.wakers.reader.register(cx.waker());
        let mut wcx = Context::from_waker(&shared.write_waker);
        shared.lock().poll_next_msg(cx, &mut wcx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FusedStream for WsReader<S> {
    fn is_terminated(&self) -> bool {
        self.shared.lock().is_terminated()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsWriter<S> {
    /// Close with `code` and `reason`: send our close frame and flush it. The
    /// reader half receives the peer's reply and completes the handshake; if
    /// the reader was dropped, this waits for the reply itself.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), Error> {
        self.shared
            .lock()
            .queue_close(Some(CloseFrame::new(code, reason)))?;
        futures_util::SinkExt::close(self).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WsWriter<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let shared = &*self.shared;
        shared.wakers.writer.register(cx.waker());
        let mut wcx = Context::from_waker(&shared.write_waker);
        shared.lock().poll_ready_send(&mut wcx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Error> {
        self.shared.lock().start_send_msg(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let shared = &*self.shared;
        shared.wakers.writer.register(cx.waker());
        let mut wcx = Context::from_waker(&shared.write_waker);
        let mut inner = shared.lock();
        if inner.phase == Phase::Done {
            return Poll::Ready(Ok(()));
        }
        inner.poll_flush_output(&mut wcx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let alone = Arc::strong_count(&self.shared) == 1;
        let shared = &*self.shared;
        shared.wakers.writer.register(cx.waker());
        let mut wcx = Context::from_waker(&shared.write_waker);
        let mut inner = shared.lock();
        if alone {
            return inner.poll_close_full(cx, &mut wcx);
        }
        inner.queue_close(None)?;
        if inner.phase == Phase::Done {
            return Poll::Ready(Ok(()));
        }
        inner.poll_flush_output(&mut wcx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;

    fn client_frame(msg: Message) -> Vec<u8> {
        let mut c = Connection::new(Role::Client, Limits::default());
        c.send(msg).unwrap();
        c.output().to_vec()
    }

    #[tokio::test]
    async fn idle_connection_holds_no_receive_buffer() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut ws = WebSocket::from_raw(a, Connection::new(Role::Server, Limits::default()), &[]);
        assert_eq!(
            ws.inner.conn.read_buf().capacity(),
            0,
            "allocated at construction"
        );
        b.write_all(&client_frame(Message::binary(vec![1u8; 100_000])))
            .await
            .unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Binary(_)))));
        // The next poll finds nothing to read: the buffer is released.
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), ws.next()).await;
        assert!(pending.is_err());
        assert_eq!(ws.inner.conn.read_buf().capacity(), 0);
        // And it still works afterwards.
        b.write_all(&client_frame(Message::text("again")))
            .await
            .unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("again"));
    }

    #[tokio::test]
    async fn reads_through_stack_and_spare_capacity_keep_frames_intact() {
        // 200 frames of 1000 bytes written at once: the first read goes
        // through the stack buffer, the following ones straight into the
        // spare capacity (the `set_len` path); every frame comes out intact.
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut ws = WebSocket::from_raw(a, Connection::new(Role::Server, Limits::default()), &[]);
        let frame = |i: u32| {
            let mut p = i.to_be_bytes().to_vec();
            p.resize(1000, (i % 251) as u8);
            p
        };
        let mut all = Vec::new();
        for i in 0..200u32 {
            all.extend(client_frame(Message::binary(frame(i))));
        }
        b.write_all(&all).await.unwrap();
        for i in 0..200u32 {
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(frame(i)));
        }
        ws.send(Message::text("ok")).await.unwrap();
    }

    /// A stream that counts the `poll_write` calls that wrote something.
    struct CountWrites {
        inner: tokio::io::DuplexStream,
        writes: usize,
    }

    impl AsyncRead for CountWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, buf);
            if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                self.writes += 1;
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn fed_replies_go_out_in_one_write_at_flush() {
        use futures_util::FutureExt;
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let stream = CountWrites {
            inner: a,
            writes: 0,
        };
        let mut ws = WebSocket::from_raw(
            stream,
            Connection::new(Role::Server, Limits::default()),
            &[],
        );
        let mut all = Vec::new();
        for i in 0..16u8 {
            all.extend(client_frame(Message::binary(vec![i; 16])));
        }
        b.write_all(&all).await.unwrap();
        // Echo what is readable without waiting, the way a server batches.
        let mut item = ws.next().await;
        let mut echoed = 0;
        while let Some(Ok(m)) = item {
            ws.feed(m).await.unwrap();
            echoed += 1;
            item = ws.next().now_or_never().flatten();
        }
        assert_eq!(echoed, 16);
        // Receiving did not write the fed replies one by one.
        assert_eq!(ws.get_ref().writes, 0);
        ws.flush().await.unwrap();
        assert_eq!(ws.get_ref().writes, 1, "16 replies in one write");
        let mut got = vec![0u8; 16 * 18];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut got)
            .await
            .unwrap();
        assert_eq!(got[..2], [0x82, 16]);
        assert_eq!(got[16 * 18 - 18..16 * 18 - 16], [0x82, 16]);
        assert_eq!(got[16 * 18 - 1], 15);
    }

    #[tokio::test]
    async fn pong_is_written_while_reading_without_a_flush() {
        // Automatic replies still go out from `next()` alone.
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut ws = WebSocket::from_raw(a, Connection::new(Role::Server, Limits::default()), &[]);
        ws.feed(Message::text("queued")).await.unwrap();
        b.write_all(&client_frame(Message::Ping(Bytes::from_static(b"hb"))))
            .await
            .unwrap();
        assert!(matches!(ws.next().await, Some(Ok(Message::Ping(_)))));
        // The text fed earlier and the pong both arrive (in order).
        let mut got = [0u8; 8 + 4];
        tokio::io::AsyncReadExt::read_exact(&mut b, &mut got)
            .await
            .unwrap();
        assert_eq!(&got[..8], b"\x81\x06queued");
        assert_eq!(&got[8..], b"\x8a\x02hb");
    }

    /// A stream that records, for every read that returned data, how much
    /// room it was offered and how much it filled.
    struct RecordReads {
        inner: tokio::io::DuplexStream,
        reads: Vec<(usize, usize)>,
    }

    impl AsyncRead for RecordReads {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let offered = buf.remaining();
            let before = buf.filled().len();
            let r = Pin::new(&mut self.inner).poll_read(cx, buf);
            let got = buf.filled().len() - before;
            if got > 0 {
                self.reads.push((offered, got));
            }
            r
        }
    }

    impl AsyncWrite for RecordReads {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    fn large(i: u8) -> Vec<u8> {
        (0..65536u32).map(|j| (j as u8) ^ i).collect()
    }

    /// Poll once more: nothing to read, so the receive buffer is released.
    async fn read_until_idle<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) {
        use futures_util::FutureExt;
        assert!(ws.next().now_or_never().is_none(), "unexpected message");
        assert_eq!(ws.inner.conn.read_buf().capacity(), 0);
    }

    #[tokio::test]
    async fn large_messages_reuse_the_released_receive_buffer() {
        crate::recv_pool::clear();
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let stream = RecordReads {
            inner: a,
            reads: Vec::new(),
        };
        let mut ws = WebSocket::from_raw(
            stream,
            Connection::new(Role::Server, Limits::default()),
            &[],
        );
        // First message: the start through the stack buffer (16 KiB, full),
        // the rest straight into a buffer sized for the frame plus slack, so
        // the read that completes it is short (no WouldBlock read after it).
        b.write_all(&client_frame(Message::binary(large(1))))
            .await
            .unwrap();
        let m1 = ws.next().await.unwrap().unwrap();
        assert_eq!(m1, Message::binary(large(1)));
        let reads = std::mem::take(&mut ws.get_mut().reads);
        assert_eq!(reads.len(), 2, "{reads:?}");
        assert_eq!(reads[0], (READ_CHUNK, READ_CHUNK));
        assert!(
            reads[1].0 > reads[1].1,
            "completing read not short: {reads:?}"
        );
        read_until_idle(&mut ws).await;
        assert_eq!(crate::recv_pool::len(), 1, "released buffer kept");

        // Second message while the first is still held: its memory is not
        // reused (the pooled buffer is still shared), and m1 stays intact.
        b.write_all(&client_frame(Message::binary(large(2))))
            .await
            .unwrap();
        let m2 = ws.next().await.unwrap().unwrap();
        assert_eq!(m2, Message::binary(large(2)));
        assert_eq!(m1, Message::binary(large(1)));
        let Message::Binary(p2) = &m2 else {
            unreachable!()
        };
        let p2_ptr = p2.as_ptr();
        ws.get_mut().reads.clear();
        drop(m1);
        drop(m2);
        read_until_idle(&mut ws).await;

        // Third message, nothing refers to the second's memory any more: one
        // read, straight into that memory, and short.
        b.write_all(&client_frame(Message::binary(large(3))))
            .await
            .unwrap();
        let m3 = ws.next().await.unwrap().unwrap();
        assert_eq!(m3, Message::binary(large(3)));
        let reads = std::mem::take(&mut ws.get_mut().reads);
        assert_eq!(reads.len(), 1, "{reads:?}");
        assert!(reads[0].0 > reads[0].1, "{reads:?}");
        let Message::Binary(p3) = &m3 else {
            unreachable!()
        };
        assert_eq!(p3.as_ptr(), p2_ptr, "buffer reused");

        // Small messages still work through a pooled buffer.
        drop(m3);
        read_until_idle(&mut ws).await;
        b.write_all(&client_frame(Message::text("small")))
            .await
            .unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("small"));
    }

    #[tokio::test]
    async fn small_messages_follow_each_other_in_one_pooled_buffer() {
        crate::recv_pool::clear();
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut ws = WebSocket::from_raw(a, Connection::new(Role::Server, Limits::default()), &[]);
        let mut held = Vec::new();
        for i in 0..50u8 {
            let text = format!("message {i}");
            b.write_all(&client_frame(Message::text(text.clone())))
                .await
                .unwrap();
            let m = ws.next().await.unwrap().unwrap();
            assert_eq!(m, Message::text(text));
            read_until_idle(&mut ws).await;
            assert_eq!(crate::recv_pool::len(), 1, "one buffer goes round");
            held.push(m);
        }
        // Each payload sits right after the previous frame (6 header bytes):
        // no allocation per message, and the kept ones are intact.
        for (i, pair) in held.windows(2).enumerate() {
            let (Message::Text(p), Message::Text(q)) = (&pair[0], &pair[1]) else {
                unreachable!()
            };
            assert_eq!(
                q.as_bytes().as_ptr(),
                p.as_bytes()[p.len()..].as_ptr().wrapping_add(6),
                "message {i}"
            );
            assert_eq!(p.as_str(), format!("message {i}"));
        }
    }

    #[tokio::test]
    async fn a_waiting_partial_frame_holds_only_its_bytes() {
        use futures_util::FutureExt;
        crate::recv_pool::clear();
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut ws = WebSocket::from_raw(a, Connection::new(Role::Server, Limits::default()), &[]);
        let frame = client_frame(Message::text("split across reads"));
        b.write_all(&frame[..3]).await.unwrap();
        assert!(ws.next().now_or_never().is_none());
        assert_eq!(
            ws.read_buffer_capacity(),
            3,
            "partial frame in its own buffer"
        );
        assert_eq!(
            crate::recv_pool::len(),
            1,
            "the read buffer went back to the pool"
        );
        b.write_all(&frame[3..]).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("split across reads")
        );
    }

    #[tokio::test]
    async fn two_connections_share_the_pool_without_mixing_payloads() {
        crate::recv_pool::clear();
        let (a1, mut b1) = tokio::io::duplex(1 << 20);
        let (a2, mut b2) = tokio::io::duplex(1 << 20);
        let server = || Connection::new(Role::Server, Limits::default());
        let mut ws1 = WebSocket::from_raw(a1, server(), &[]);
        let mut ws2 = WebSocket::from_raw(a2, server(), &[]);
        let mut held = Vec::new();
        for round in 0..6u8 {
            b1.write_all(&client_frame(Message::binary(large(round))))
                .await
                .unwrap();
            b2.write_all(&client_frame(Message::binary(large(round ^ 0x80))))
                .await
                .unwrap();
            let m1 = ws1.next().await.unwrap().unwrap();
            read_until_idle(&mut ws1).await;
            let m2 = ws2.next().await.unwrap().unwrap();
            read_until_idle(&mut ws2).await;
            assert_eq!(m1, Message::binary(large(round)));
            assert_eq!(m2, Message::binary(large(round ^ 0x80)));
            // Keep every other round's messages alive.
            if round % 2 == 0 {
                held.push((round, m1, m2));
            }
        }
        for (round, m1, m2) in held {
            assert_eq!(m1, Message::binary(large(round)), "round {round}");
            assert_eq!(m2, Message::binary(large(round ^ 0x80)), "round {round}");
        }
    }

    #[test]
    fn idle_state_is_small() {
        // Idle memory per connection (target < 2 KiB beyond the socket): the
        // whole WebSocket, with no heap allocated until data arrives.
        let total = std::mem::size_of::<WebSocket<()>>();
        let driver = total - std::mem::size_of::<Connection>();
        assert!(driver <= 48, "driver state is {driver} bytes");
        assert!(total <= 256, "WebSocket is {total} bytes");
    }
}

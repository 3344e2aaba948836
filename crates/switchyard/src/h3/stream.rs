//! [`H3Stream`]: the bytes of an HTTP/3 request stream after an extended
//! CONNECT, as `AsyncRead + AsyncWrite` (the WebSocket runs on it).
//!
//! Reading yields the payload of DATA frames in order; unknown frame types
//! are skipped (RFC 9114 §9); HEADERS (trailers) ends the data; any other
//! frame is H3_FRAME_UNEXPECTED. Writing wraps each write in one DATA frame
//! (at most [`MAX_DATA_FRAME`] bytes); a write is accepted whole into a
//! one-frame buffer, so no byte is lost or reordered when the QUIC stream
//! is blocked by flow control — `poll_flush` pushes it out. `poll_shutdown`
//! flushes, then finishes the QUIC stream (FIN).

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frame::{self, decode_frame_header};

/// Largest DATA frame payload one write produces.
pub const MAX_DATA_FRAME: usize = 32 * 1024;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// Between frames.
    Header,
    /// Inside a DATA frame with this many payload bytes left.
    Data(u64),
    /// Inside a frame to skip.
    Skip(u64),
    /// Trailers were received: nothing more may be read.
    Trailers(u64),
    Eof,
}

/// The receiving side of a request stream: the payload of its DATA frames
/// (see the module docs), shared by [`H3Stream`] and [`H3Body`].
pub(crate) struct DataReader {
    recv: quinn::RecvStream,
    rbuf: BytesMut,
    rstate: ReadState,
}

/// A WebSocket's transport over one HTTP/3 request stream.
pub struct H3Stream {
    send: quinn::SendStream,
    reader: DataReader,
    wbuf: BytesMut,
    finished: bool,
    /// Keeps the HTTP/3 connection (its control stream, the endpoint) alive
    /// while this stream lives.
    _keep: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for H3Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Stream")
            .field("stream", &self.send.id())
            .finish_non_exhaustive()
    }
}

impl H3Stream {
    pub(crate) fn new(
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        leftover: BytesMut,
        keep: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Self {
        H3Stream {
            send,
            reader: DataReader::new(recv, leftover),
            wbuf: BytesMut::new(),
            finished: false,
            _keep: keep,
        }
    }

    /// The QUIC stream id.
    pub fn id(&self) -> quinn::StreamId {
        self.send.id()
    }

    /// Abort both directions with an HTTP/3 error code (e.g. 0x10c
    /// H3_REQUEST_CANCELLED), without a WebSocket close.
    pub fn reset(&mut self, code: u32) {
        let _ = self.send.reset(quinn::VarInt::from_u32(code));
        let _ = self.reader.recv.stop(quinn::VarInt::from_u32(code));
    }

    /// Write out the buffered frame.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.send).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl DataReader {
    pub(crate) fn new(recv: quinn::RecvStream, leftover: BytesMut) -> Self {
        DataReader {
            recv,
            rbuf: leftover,
            rstate: ReadState::Header,
        }
    }

    /// Read more into `rbuf`; `Ok(false)` at the end of the stream. Only
    /// called when the buffered bytes are not enough for the next step, so
    /// `rbuf` stays under a frame header plus `READ_CHUNK`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let old = self.rbuf.len();
        self.rbuf.resize(old + READ_CHUNK, 0);
        let res = self.recv.poll_read(cx, &mut self.rbuf[old..]);
        let n = match &res {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        self.rbuf.truncate(old + n);
        match res {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n > 0)),
        }
    }
}

impl Drop for DataReader {
    fn drop(&mut self) {
        // What the peer still sends is not needed any more: H3_NO_ERROR
        // (RFC 9114 §8.1) rather than quinn's implicit code 0. A stream
        // already read to its end ignores this.
        let _ = self.recv.stop(quinn::VarInt::from_u32(frame::H3_NO_ERROR));
    }
}

fn unexpected(ty: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        crate::error::H3ProtocolError::new(
            frame::H3_FRAME_UNEXPECTED,
            format!("frame type 0x{ty:x} is not allowed in the body of a request stream"),
        ),
    )
}

impl AsyncRead for H3Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().reader.poll_read(cx, out)
    }
}

impl DataReader {
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self;
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match this.rstate {
                ReadState::Eof => return Poll::Ready(Ok(())),
                ReadState::Data(0) | ReadState::Skip(0) => this.rstate = ReadState::Header,
                ReadState::Data(left) if !this.rbuf.is_empty() => {
                    let n = (this.rbuf.len() as u64)
                        .min(left)
                        .min(out.remaining() as u64) as usize;
                    out.put_slice(&this.rbuf[..n]);
                    this.rbuf.advance(n);
                    this.rstate = ReadState::Data(left - n as u64);
                    return Poll::Ready(Ok(()));
                }
                ReadState::Skip(left) | ReadState::Trailers(left) if !this.rbuf.is_empty() => {
                    let n = (this.rbuf.len() as u64).min(left) as usize;
                    this.rbuf.advance(n);
                    this.rstate = match this.rstate {
                        ReadState::Skip(_) => ReadState::Skip(left - n as u64),
                        _ => ReadState::Trailers(left - n as u64),
                    };
                }
                ReadState::Trailers(0) => {
                    // Nothing may follow the trailers but the end of the stream.
                    if !this.rbuf.is_empty() {
                        return Poll::Ready(Err(unexpected(frame::DATA)));
                    }
                    if ready!(this.poll_fill(cx))? {
                        continue;
                    }
                    this.rstate = ReadState::Eof;
                }
                ReadState::Header => match decode_frame_header(&this.rbuf) {
                    Some((ty, len, hdr)) => {
                        this.rbuf.advance(hdr);
                        this.rstate = match ty {
                            frame::DATA => ReadState::Data(len),
                            frame::HEADERS => ReadState::Trailers(len),
                            frame::CANCEL_PUSH
                            | frame::SETTINGS
                            | frame::PUSH_PROMISE
                            | frame::GOAWAY
                            | frame::MAX_PUSH_ID => return Poll::Ready(Err(unexpected(ty))),
                            t if frame::is_reserved_h2_type(t) => {
                                return Poll::Ready(Err(unexpected(ty)))
                            }
                            _ => ReadState::Skip(len),
                        };
                    }
                    None => {
                        if !ready!(this.poll_fill(cx))? {
                            if this.rbuf.is_empty() {
                                this.rstate = ReadState::Eof;
                            } else {
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::UnexpectedEof,
                                    "HTTP/3 stream ended inside a frame header",
                                )));
                            }
                        }
                    }
                },
                ReadState::Data(_) | ReadState::Skip(_) | ReadState::Trailers(_) => {
                    if !ready!(this.poll_fill(cx))? {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "HTTP/3 stream ended inside a frame",
                        )));
                    }
                }
            }
        }
    }
}

impl AsyncWrite for H3Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the HTTP/3 stream was already finished",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_drain(cx))?;
        let n = buf.len().min(MAX_DATA_FRAME);
        let mut hdr = Vec::with_capacity(16);
        frame::encode_varint(&mut hdr, frame::DATA);
        frame::encode_varint(&mut hdr, n as u64);
        this.wbuf.extend_from_slice(&hdr);
        this.wbuf.extend_from_slice(&buf[..n]);
        // The bytes are ours now; push what the stream takes, the rest goes
        // out on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.send).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if !this.finished {
            this.finished = true;
            // A stream the peer already stopped or reset cannot be finished;
            // the WebSocket is over either way.
            let _ = this.send.finish();
        }
        Poll::Ready(Ok(()))
    }
}

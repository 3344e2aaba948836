//! Streams that may be bypassed: the plain TCP socket under a stream, for
//! the transparent tunnel's direct copy and `splice(2)`.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

/// A stream that may be bypassed: its bytes are a plain TCP socket's.
pub trait AsPlainTcp {
    /// The socket, when reading and writing it directly is the same as
    /// reading and writing `self` (no TLS, no framing, nothing buffered
    /// above it), with the byte counters `self` keeps, which whoever
    /// bypasses it must update. `None`: use `self`'s `AsyncRead` and
    /// `AsyncWrite`.
    fn as_plain_tcp(&mut self) -> Option<PlainTcp<'_>>;
}

/// A plain TCP socket under a stream, and that stream's byte counters.
#[derive(Debug)]
pub struct PlainTcp<'a> {
    /// The socket.
    pub tcp: &'a mut TcpStream,
    /// Counts the bytes read from the stream, if it does.
    pub read: Option<&'a AtomicU64>,
    /// Counts the bytes written to the stream, if it does.
    pub written: Option<&'a AtomicU64>,
}

impl PlainTcp<'_> {
    /// The socket alone, no counters.
    pub fn bare(tcp: &mut TcpStream) -> PlainTcp<'_> {
        PlainTcp {
            tcp,
            read: None,
            written: None,
        }
    }

    pub(crate) fn count_read(&self, n: usize) {
        if let Some(c) = self.read {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn count_written(&self, n: usize) {
        if let Some(c) = self.written {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl AsPlainTcp for TcpStream {
    fn as_plain_tcp(&mut self) -> Option<PlainTcp<'_>> {
        Some(PlainTcp::bare(self))
    }
}

impl AsPlainTcp for switchyard::MaybeTlsStream {
    fn as_plain_tcp(&mut self) -> Option<PlainTcp<'_>> {
        match self {
            switchyard::MaybeTlsStream::Plain(s) => Some(PlainTcp::bare(s)),
            _ => None,
        }
    }
}

impl<T: AsPlainTcp + ?Sized> AsPlainTcp for &mut T {
    fn as_plain_tcp(&mut self) -> Option<PlainTcp<'_>> {
        (**self).as_plain_tcp()
    }
}

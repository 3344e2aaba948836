//! The byte streams a connection runs on: [`ServerIo`] (cleartext TCP or TLS
//! over TCP, on epoll or io_uring, one concrete type so nothing is boxed per read) and [`Prefixed`],
//! which replays bytes already read before reading the stream again.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

mod plain;
#[cfg(target_os = "linux")]
pub mod uring;

pub use plain::{AsPlainTcp, PlainTcp};

/// A server-side connection: cleartext TCP or TLS over TCP, on epoll or io_uring.
#[derive(Debug)]
pub enum ServerIo {
    /// Cleartext TCP.
    Plain(TcpStream),
    /// TLS (from the listener, or after an RFC 2817 upgrade).
    Tls(Box<TlsStream<TcpStream>>),
    /// Cleartext TCP driven by io_uring (`[runtime] io_uring`).
    #[cfg(target_os = "linux")]
    Uring(uring::UringStream),
    /// TLS over TCP driven by io_uring.
    #[cfg(target_os = "linux")]
    UringTls(Box<TlsStream<uring::UringStream>>),
}

impl ServerIo {
    /// The peer's address (`0.0.0.0:0` when the socket cannot tell).
    pub fn peer_addr(&self) -> std::net::SocketAddr {
        let tcp = match self {
            ServerIo::Plain(t) => t,
            ServerIo::Tls(t) => t.get_ref().0,
            #[cfg(target_os = "linux")]
            ServerIo::Uring(u) => {
                return u
                    .peer_addr()
                    .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
            }
            #[cfg(target_os = "linux")]
            ServerIo::UringTls(t) => {
                return t
                    .get_ref()
                    .0
                    .peer_addr()
                    .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
            }
        };
        tcp.peer_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Whether the bytes are encrypted.
    pub fn is_tls(&self) -> bool {
        match self {
            ServerIo::Tls(_) => true,
            #[cfg(target_os = "linux")]
            ServerIo::UringTls(_) => true,
            _ => false,
        }
    }

    /// The ALPN protocol the TLS handshake agreed on, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            ServerIo::Tls(t) => t.get_ref().1.alpn_protocol(),
            #[cfg(target_os = "linux")]
            ServerIo::UringTls(t) => t.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }

    /// The server side of a TLS handshake over this cleartext stream, on the
    /// same I/O path. A stream already in TLS is refused.
    pub async fn accept_tls(self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<ServerIo> {
        match self {
            ServerIo::Plain(s) => Ok(ServerIo::Tls(Box::new(acceptor.accept(s).await?))),
            #[cfg(target_os = "linux")]
            ServerIo::Uring(s) => Ok(ServerIo::UringTls(Box::new(acceptor.accept(s).await?))),
            _ => Err(io::Error::other("the connection is already in TLS")),
        }
    }
}

impl AsPlainTcp for ServerIo {
    fn as_plain_tcp(&mut self) -> Option<PlainTcp<'_>> {
        match self {
            ServerIo::Plain(s) => Some(PlainTcp::bare(s)),
            _ => None,
        }
    }
}

impl AsyncRead for ServerIo {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(target_os = "linux")]
            ServerIo::Uring(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(target_os = "linux")]
            ServerIo::UringTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(target_os = "linux")]
            ServerIo::Uring(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(target_os = "linux")]
            ServerIo::UringTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            #[cfg(target_os = "linux")]
            ServerIo::Uring(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            #[cfg(target_os = "linux")]
            ServerIo::UringTls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(s) => s.is_write_vectored(),
            ServerIo::Tls(s) => s.is_write_vectored(),
            #[cfg(target_os = "linux")]
            ServerIo::Uring(s) => s.is_write_vectored(),
            #[cfg(target_os = "linux")]
            ServerIo::UringTls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(target_os = "linux")]
            ServerIo::Uring(s) => Pin::new(s).poll_flush(cx),
            #[cfg(target_os = "linux")]
            ServerIo::UringTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(target_os = "linux")]
            ServerIo::Uring(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(target_os = "linux")]
            ServerIo::UringTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A stream that first yields `prefix` (bytes already read from `inner`),
/// then reads `inner`. Writes go straight to `inner`.
///
/// Used to hand bytes read past a request head (a pipelined request, or the
/// HTTP/2 preface we peeked at) to the next reader without losing any.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `prefix` is replayed before `inner` is read.
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Prefixed { prefix, inner }
    }

    /// The replay buffer and the stream; bytes not yet replayed are in the buffer.
    pub fn into_parts(self) -> (BytesMut, S) {
        (self.prefix, self.inner)
    }

    /// Bytes not yet replayed.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// Mutable access to the replay buffer (to refill it after reading ahead).
    pub fn prefix_mut(&mut self) -> &mut BytesMut {
        &mut self.prefix
    }

    /// The replay buffer and the stream, both at once (to read into the
    /// buffer directly, e.g. a request head).
    pub fn parts_mut(&mut self) -> (&mut BytesMut, &mut S) {
        (&mut self.prefix, &mut self.inner)
    }

    /// Read once from the stream, appending to the replay buffer. `Ok(0)`
    /// is end of stream. Cancel-safe when the stream's reads are.
    pub async fn fill(&mut self) -> io::Result<usize>
    where
        S: AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt;
        self.prefix.reserve(4096);
        self.inner.read_buf(&mut self.prefix).await
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsPlainTcp> AsPlainTcp for Prefixed<S> {
    /// Only once every replayed byte is read.
    fn as_plain_tcp(&mut self) -> Option<PlainTcp<'_>> {
        if self.prefix.is_empty() {
            self.inner.as_plain_tcp()
        } else {
            None
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn prefix_is_replayed_before_the_stream_in_small_reads() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"world").await.unwrap();
        drop(a);
        let mut p = Prefixed::new(BytesMut::from(&b"hello "[..]), b);
        let mut small = [0u8; 4];
        let n = p.read(&mut small).await.unwrap();
        assert_eq!(
            &small[..n],
            b"hell",
            "a read never exceeds the caller's buffer"
        );
        assert_eq!(p.prefix(), b"o ");
        let mut rest = Vec::new();
        p.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"o world");
    }

    #[tokio::test]
    async fn writes_go_to_the_inner_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut p = Prefixed::new(BytesMut::from(&b"x"[..]), a);
        p.write_all(b"out").await.unwrap();
        let mut got = [0u8; 3];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"out");
        let (prefix, _) = p.into_parts();
        assert_eq!(&prefix[..], b"x", "writing does not consume the prefix");
    }
}

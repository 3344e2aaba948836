//! A bidirectional byte copy that holds no buffer while idle.
//!
//! `tokio::io::copy_bidirectional` allocates an 8 KiB buffer per direction
//! for the tunnel's whole life: 16 KiB per idle proxied connection, four
//! times the 4 KiB target. Here each read goes into a buffer on
//! the stack of the poll call; bytes are moved to the heap only when the
//! other side cannot take them at once, and that heap buffer is released as
//! soon as it is drained and the source has nothing more to read. An idle
//! tunnel therefore holds only the two small [`Half`] states.
//!
//! Semantics match `copy_bidirectional`: when one side reaches EOF, the
//! bytes are flushed and the other side's write half is shut down (FIN
//! passed on) while the other direction keeps flowing; the copy ends when
//! both directions ended, or at the first I/O error.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes one read may take (on the stack of the poll call, so it costs no
/// memory while idle). 64 KiB: a 64 KiB message crosses in one read and
/// one write instead of four of each (bench/proxy.sh, case (c)).
const READ_CHUNK: usize = 64 * 1024;

/// One direction's state.
#[derive(Debug, Default)]
pub struct Half {
    /// Bytes read but not yet written (heap, only while the writer lags).
    pending: Vec<u8>,
    /// How much of `pending` is written.
    written: usize,
    /// The reader reached EOF.
    eof: bool,
    /// The writer's write half is shut down: this direction is over.
    done: bool,
    /// Bytes moved so far.
    total: u64,
    /// Whether the writer has unflushed data.
    needs_flush: bool,
}

impl Half {
    /// Heap bytes held now (0 when idle).
    pub fn buffered_capacity(&self) -> usize {
        self.pending.capacity()
    }

    /// Bytes copied in this direction.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether this direction is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn release(&mut self) {
        self.pending = Vec::new();
        self.written = 0;
    }

    /// Drive this direction as far as it goes without blocking.
    pub fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // 1. Bytes waiting for the writer.
            while self.written < self.pending.len() {
                let chunk = self.pending.get(self.written..).unwrap_or_default();
                let n = ready!(writer.as_mut().poll_write(cx, chunk))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                self.total += n as u64;
                self.needs_flush = true;
            }
            if !self.pending.is_empty() {
                self.pending.clear();
                self.written = 0;
            }
            // 2. EOF: flush, pass the FIN on.
            if self.eof {
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                self.release();
                return Poll::Ready(Ok(()));
            }
            // 3. Read into the stack; write straight from it.
            // Uninitialized: no 16 KiB memset per read (ReadBuf tracks
            // what the reader initialized; `filled` is only what it wrote).
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut stack);
            match reader.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Idle: no heap buffer kept; push out what was written.
                    self.release();
                    if self.needs_flush {
                        ready!(writer.as_mut().poll_flush(cx))?;
                        self.needs_flush = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            let filled = rb.filled();
            if filled.is_empty() {
                self.eof = true;
                continue;
            }
            let mut at = 0;
            while at < filled.len() {
                let chunk = filled.get(at..).unwrap_or_default();
                match writer.as_mut().poll_write(cx, chunk) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        at += n;
                        self.total += n as u64;
                        self.needs_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // The writer lags: keep the rest on the heap.
                        self.pending.extend_from_slice(chunk);
                        self.written = 0;
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

/// Copy both ways until both directions reached EOF (each passing its FIN
/// on) or an I/O error. Returns the bytes copied `(a to b, b to a)`; the
/// halves' totals stay readable if the future is dropped early.
pub async fn copy_both_ways<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b: &mut Half,
    b_to_a: &mut Half,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    poll_fn(|cx| {
        let ab = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
        let ba = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
        if ab.is_ready() && ba.is_ready() {
            Poll::Ready(Ok((a_to_b.total(), b_to_a.total())))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_through_tiny_pipes_and_passes_fin() {
        // 64-byte pipes: nearly every write is partial or pending.
        let (client, mut proxy_a) = tokio::io::duplex(64);
        let (mut proxy_b, server) = tokio::io::duplex(64);
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let copier = tokio::spawn(async move {
            let (mut ab, mut ba) = (Half::default(), Half::default());
            let r = copy_both_ways(&mut proxy_a, &mut proxy_b, &mut ab, &mut ba).await;
            (r.unwrap(), ab.buffered_capacity(), ba.buffered_capacity())
        });
        let (up2, down2) = (up.clone(), down.clone());
        let c = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(client);
            let writer = tokio::spawn(async move {
                w.write_all(&up2).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            assert_eq!(got, down2);
        });
        let (mut r, mut w) = tokio::io::split(server);
        let s = tokio::spawn(async move {
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            got
        });
        w.write_all(&down).await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(s.await.unwrap(), up);
        c.await.unwrap();
        let ((ab, ba), cap_a, cap_b) = copier.await.unwrap();
        assert_eq!((ab, ba), (300_000, 200_000));
        assert_eq!((cap_a, cap_b), (0, 0), "buffers released at the end");
    }

    #[tokio::test]
    async fn idle_copy_holds_no_heap_buffer() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(1024);
        let mut ab = Half::default();
        let mut ba = Half::default();
        client.write_all(b"hello").await.unwrap();
        {
            let fut = copy_both_ways(&mut proxy_a, &mut proxy_b, &mut ab, &mut ba);
            let idle = tokio::time::timeout(std::time::Duration::from_millis(30), fut).await;
            assert!(idle.is_err(), "copy ended while both sides are open");
        }
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(ab.buffered_capacity(), 0);
        assert_eq!(ba.buffered_capacity(), 0);
        assert_eq!(ab.total(), 5);
        assert!(std::mem::size_of::<Half>() <= 64);
    }

    #[tokio::test]
    async fn a_lagging_writer_gets_a_heap_buffer_until_drained() {
        let (mut client, mut proxy_a) = tokio::io::duplex(1 << 16);
        let (mut proxy_b, mut server) = tokio::io::duplex(16);
        let mut ab = Half::default();
        let mut ba = Half::default();
        client.write_all(&[7u8; 1000]).await.unwrap();
        {
            let fut = copy_both_ways(&mut proxy_a, &mut proxy_b, &mut ab, &mut ba);
            let _ = tokio::time::timeout(std::time::Duration::from_millis(30), fut).await;
        }
        assert!(
            ab.buffered_capacity() > 0,
            "the server did not read: bytes wait on the heap"
        );
        // The server reads everything; the next poll drains and releases.
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1000];
            server.read_exact(&mut got).await.unwrap();
            got
        });
        {
            let fut = copy_both_ways(&mut proxy_a, &mut proxy_b, &mut ab, &mut ba);
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), fut).await;
        }
        assert_eq!(reader.await.unwrap(), vec![7u8; 1000]);
        assert_eq!(ab.buffered_capacity(), 0);
    }
}

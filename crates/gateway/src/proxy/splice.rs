//! The transparent tunnel's copy between two plain TCP sockets: small reads
//! through user space, large ones through `splice(2)` and a pipe (Linux).
//!
//! [`super::copy`] moves every byte through user space: one `recvfrom`
//! into a stack buffer, one `sendto` out of it, two copies between kernel
//! and user memory. When both sides of a tunnel are plain TCP sockets (no
//! TLS, no HTTP/2 or HTTP/3 stream, no bytes buffered above the socket),
//! [`TcpHalf`] can instead move a burst socket → pipe → socket with
//! `splice(2)`: the payload pages stay in the kernel.
//!
//! Where it pays: a splice costs two system calls per chunk like the copy,
//! plus the pipe's own bookkeeping, so for small messages it only adds
//! work. Each direction therefore starts in user space, and switches to
//! splice after a read returned at least [`SPLICE_FROM`] bytes (a burst);
//! it switches back after `BURST_END` splices in a row moved less than
//! that. See the measured
//! figures in bench/README.md ("splice(2) in the transparent tunnel").
//!
//! Idle memory: the pipe (two file descriptors, and the kernel's pipe
//! buffer pages while bytes are inside) is taken from a small per-thread
//! pool when a burst starts and given back as soon as it is empty and the
//! source has nothing more to read. A pipe is returned to the pool only
//! empty; one that still holds bytes (the tunnel ended on an error) is
//! closed. An idle tunnel holds no pipe and no buffer.
//!
//! Semantics are [`super::copy`]'s: a FIN from one side is passed on as a
//! write shutdown of the other once every byte before it is written, the
//! other direction keeps flowing; the copy ends when both directions ended
//! or at the first I/O error.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::io::PlainTcp;

/// When a direction between two plain TCP sockets splices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpliceMode {
    /// Never: every byte through user space.
    Never,
    /// From a read of [`SPLICE_FROM`] bytes until a splice moves less.
    #[default]
    Bursts,
    /// Every read.
    Always,
}

impl SpliceMode {
    /// [`SpliceMode::Never`] where splice is not available.
    pub fn available(self) -> SpliceMode {
        if AVAILABLE {
            self
        } else {
            SpliceMode::Never
        }
    }
}

/// A read of at least this many bytes starts a burst: the next reads
/// splice. 16 KiB (see the module doc and bench/README.md).
pub const SPLICE_FROM: usize = 16 * 1024;

/// A burst ends after this many splices in a row moved less than
/// [`SPLICE_FROM`]. Not 1: a 64 KiB WebSocket message crosses loopback as
/// a large segment and a small tail; ending the burst on the tail sent
/// every large part through user space (bench/proxy.sh case (c) gained
/// nothing).
const BURST_END: u8 = 4;

/// Bytes one user-space read may take (on the stack of the poll call, as
/// in [`super::copy`]).
const READ_CHUNK: usize = 64 * 1024;

/// Bytes one splice into the pipe may take: the default pipe capacity (16
/// pages).
const PIPE_CHUNK: usize = 64 * 1024;

/// One direction between two plain TCP sockets.
#[derive(Debug, Default)]
pub struct TcpHalf {
    /// Bytes read in user space but not yet written (heap, only while the
    /// writer lags).
    pending: Vec<u8>,
    /// How much of `pending` is written.
    written: usize,
    /// The pipe of a burst (only while one runs).
    pipe: Option<pipe::Pipe>,
    /// Bytes in `pipe` not yet spliced out.
    in_pipe: usize,
    /// A burst runs: read with splice.
    burst: bool,
    /// Small splices in a row during a burst.
    small: u8,
    /// The reader reached EOF.
    eof: bool,
    /// The writer's write half is shut down: this direction is over.
    done: bool,
    /// Bytes read from the source.
    read: u64,
    /// Bytes written to the destination with splice.
    spliced: u64,
}

impl TcpHalf {
    /// Bytes read from the source.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// Bytes moved with splice.
    pub fn spliced(&self) -> u64 {
        self.spliced
    }

    /// Whether this direction holds a pipe or a heap buffer now.
    pub fn holds_buffer(&self) -> bool {
        self.pipe.is_some() || self.pending.capacity() > 0
    }

    /// Whether this direction is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn release(&mut self) {
        self.pending = Vec::new();
        self.written = 0;
        if self.in_pipe == 0 {
            if let Some(p) = self.pipe.take() {
                pipe::give_back(p);
            }
        }
    }

    /// Drive this direction as far as it goes without blocking. `on_read`
    /// is called after each read that returned bytes, with their number.
    pub fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut PlainTcp<'_>,
        dst: &mut PlainTcp<'_>,
        mode: SpliceMode,
        on_read: &dyn Fn(usize),
    ) -> Poll<io::Result<()>> {
        let splice = mode != SpliceMode::Never;
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // 1. Bytes waiting in the pipe.
            while self.in_pipe > 0 {
                let Some(p) = self.pipe.as_ref() else {
                    return Poll::Ready(Err(io::Error::other("bytes counted in a missing pipe")));
                };
                let n = ready!(pipe::poll_splice_out(cx, dst.tcp, p, self.in_pipe))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.in_pipe -= n;
                self.spliced += n as u64;
                dst.count_written(n);
            }
            // 2. Bytes waiting on the heap.
            while self.written < self.pending.len() {
                let chunk = self.pending.get(self.written..).unwrap_or_default();
                let n = ready!(Pin::new(&mut *dst.tcp).poll_write(cx, chunk))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
                dst.count_written(n);
            }
            if !self.pending.is_empty() {
                self.pending.clear();
                self.written = 0;
            }
            // 3. EOF: pass the FIN on.
            if self.eof {
                ready!(Pin::new(&mut *dst.tcp).poll_shutdown(cx))?;
                self.done = true;
                self.release();
                return Poll::Ready(Ok(()));
            }
            // 4a. A burst: socket -> pipe, then (1.) pipe -> socket.
            if splice && (self.burst || mode == SpliceMode::Always) {
                let p = match self.pipe.take() {
                    Some(p) => p,
                    None => pipe::take()?,
                };
                let r = pipe::poll_splice_in(cx, src.tcp, &p, PIPE_CHUNK);
                self.pipe = Some(p);
                match r {
                    Poll::Pending => {
                        // Nothing to read: the pipe is empty, give it back.
                        self.release();
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(0)) => {
                        self.eof = true;
                        continue;
                    }
                    Poll::Ready(Ok(n)) => {
                        self.in_pipe = n;
                        self.read += n as u64;
                        src.count_read(n);
                        on_read(n);
                        if n >= SPLICE_FROM {
                            self.small = 0;
                        } else if mode == SpliceMode::Bursts {
                            // A message's tail, or the burst is over: after
                            // a few small splices in a row, back to user space.
                            self.small += 1;
                            if self.small >= BURST_END {
                                self.burst = false;
                                self.small = 0;
                            }
                        }
                        continue;
                    }
                }
            }
            // 4b. Read into the stack; write straight from it.
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut rb = ReadBuf::uninit(&mut stack);
            match Pin::new(&mut *src.tcp).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    self.release();
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
            self.read += filled.len() as u64;
            src.count_read(filled.len());
            on_read(filled.len());
            if filled.len() >= SPLICE_FROM {
                self.burst = true;
                self.small = 0;
            }
            let mut at = 0;
            while at < filled.len() {
                let chunk = filled.get(at..).unwrap_or_default();
                match Pin::new(&mut *dst.tcp).poll_write(cx, chunk) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        at += n;
                        dst.count_written(n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending.extend_from_slice(chunk);
                        self.written = 0;
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl Drop for TcpHalf {
    fn drop(&mut self) {
        // An empty pipe goes back to the pool; one with bytes inside is closed.
        self.release();
    }
}

#[cfg(target_os = "linux")]
mod pipe {
    //! Pipes for splice, and a per-thread pool of empty ones.

    use std::cell::RefCell;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{ready, Context, Poll};

    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// Empty pipes kept per thread.
    const POOL: usize = 8;

    /// Pipes created so far (process-wide), for tests and diagnostics.
    pub(super) static CREATED: AtomicU64 = AtomicU64::new(0);

    /// A pipe: read end, write end.
    #[derive(Debug)]
    pub(super) struct Pipe {
        r: OwnedFd,
        w: OwnedFd,
    }

    thread_local! {
        static EMPTY: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty pipe: from this thread's pool, or a new one.
    pub(super) fn take() -> io::Result<Pipe> {
        if let Some(p) = EMPTY.with(|e| e.borrow_mut().pop()) {
            return Ok(p);
        }
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        CREATED.fetch_add(1, Ordering::Relaxed);
        // SAFETY: pipe2 succeeded: both descriptors are open and owned by
        // nobody else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { r, w })
    }

    /// Pipes in this thread's pool.
    #[cfg(test)]
    pub(super) fn pooled() -> usize {
        EMPTY.with(|e| e.borrow().len())
    }

    /// Give an empty pipe back (closed when the pool is full).
    pub(super) fn give_back(p: Pipe) {
        // `try_with`: during thread teardown the pool may be gone; the
        // pipe is then closed.
        let _ = EMPTY.try_with(|e| {
            let mut e = e.borrow_mut();
            if e.len() < POOL {
                e.push(p);
            }
        });
    }

    const FLAGS: libc::c_uint = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;

    fn splice(from: libc::c_int, to: libc::c_int, len: usize) -> io::Result<usize> {
        // SAFETY: both descriptors are open for the call (borrowed from a
        // TcpStream and an OwnedFd the caller holds); null offsets are
        // allowed (and required) for sockets and pipes.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                FLAGS,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Socket -> pipe (which must be empty): bytes moved, 0 at EOF.
    /// EAGAIN means the socket has nothing (the pipe is empty, so it is not
    /// full).
    pub(super) fn poll_splice_in(
        cx: &mut Context<'_>,
        src: &TcpStream,
        p: &Pipe,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        poll_splice(
            cx,
            src,
            Interest::READABLE,
            src.as_raw_fd(),
            p.w.as_raw_fd(),
            len,
        )
    }

    /// Pipe -> socket, at most `len` (the bytes in the pipe). EAGAIN means
    /// the socket's send buffer is full (the pipe holds `len` bytes, so it
    /// is not empty).
    pub(super) fn poll_splice_out(
        cx: &mut Context<'_>,
        dst: &TcpStream,
        p: &Pipe,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        poll_splice(
            cx,
            dst,
            Interest::WRITABLE,
            p.r.as_raw_fd(),
            dst.as_raw_fd(),
            len,
        )
    }

    /// Splice `from` -> `to` once `sock` is ready for `interest`; on EAGAIN
    /// `try_io` clears the readiness and the loop waits for the next.
    fn poll_splice(
        cx: &mut Context<'_>,
        sock: &TcpStream,
        interest: Interest,
        from: std::os::fd::RawFd,
        to: std::os::fd::RawFd,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            if interest.is_readable() {
                ready!(sock.poll_read_ready(cx))?;
            } else {
                ready!(sock.poll_write_ready(cx))?;
            }
            match sock.try_io(interest, || splice(from, to, len)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod pipe {
    //! No splice here: [`super::TcpHalf`] is never asked to splice.

    use std::io;
    use std::sync::atomic::AtomicU64;
    use std::task::{Context, Poll};

    use tokio::net::TcpStream;

    pub(super) static CREATED: AtomicU64 = AtomicU64::new(0);

    #[derive(Debug)]
    pub enum Pipe {}

    pub(super) fn take() -> io::Result<Pipe> {
        Err(io::ErrorKind::Unsupported.into())
    }
    pub(super) fn give_back(p: Pipe) {
        match p {}
    }
    pub(super) fn poll_splice_in(
        _: &mut Context<'_>,
        _: &TcpStream,
        p: &Pipe,
        _: usize,
    ) -> Poll<io::Result<usize>> {
        match *p {}
    }
    pub(super) fn poll_splice_out(
        _: &mut Context<'_>,
        _: &TcpStream,
        p: &Pipe,
        _: usize,
    ) -> Poll<io::Result<usize>> {
        match *p {}
    }
}

/// Whether splice is available on this platform.
pub const AVAILABLE: bool = cfg!(target_os = "linux");

/// Pipes created so far in this process (they are pooled per thread, so
/// this grows with bursts that overlap, not with tunnels).
pub fn pipes_created() -> u64 {
    PIPES.load(Ordering::Relaxed)
}

use pipe::CREATED as PIPES;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::net::TcpStream;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Poll one direction `src -> dst` for `d` (it never ends: no EOF).
    async fn run_for(half: &mut TcpHalf, src: &mut TcpStream, dst: &mut TcpStream, d: Duration) {
        let copy = poll_fn(|cx| {
            half.poll_copy(
                cx,
                &mut PlainTcp::bare(src),
                &mut PlainTcp::bare(dst),
                SpliceMode::Always,
                &|_| {},
            )
        });
        let r = tokio::time::timeout(d, copy).await;
        assert!(r.is_err(), "the copy ended: {r:?}");
    }

    #[tokio::test]
    async fn an_idle_direction_gives_its_empty_pipe_back() {
        let (mut client, mut pa) = pair().await;
        let (mut pb, mut upstream) = pair().await;
        let before = pipe::pooled();
        let data = vec![5u8; 256 << 10];
        client.write_all(&data).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 256 << 10];
            upstream.read_exact(&mut got).await.unwrap();
            got
        });
        let mut half = TcpHalf::default();
        run_for(&mut half, &mut pa, &mut pb, Duration::from_millis(300)).await;
        assert_eq!(reader.await.unwrap(), data);
        assert_eq!(half.spliced(), 256 << 10);
        assert!(!half.holds_buffer(), "an idle direction holds no pipe");
        assert_eq!(
            pipe::pooled(),
            before + 1,
            "its pipe is back in the pool, empty"
        );
    }

    #[tokio::test]
    async fn a_pipe_with_bytes_inside_is_closed_not_pooled() {
        let (mut client, mut pa) = pair().await;
        let (mut pb, upstream) = pair().await;
        // The upstream never reads: the socket buffers fill, bytes stay in
        // the pipe.
        let writer = tokio::spawn(async move {
            let chunk = vec![6u8; 1 << 20];
            for _ in 0..64 {
                if client.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut half = TcpHalf::default();
        run_for(&mut half, &mut pa, &mut pb, Duration::from_millis(300)).await;
        assert!(half.in_pipe > 0, "the pipe holds bytes");
        assert!(half.holds_buffer());
        let before = pipe::pooled();
        drop(half);
        assert_eq!(
            pipe::pooled(),
            before,
            "a pipe with bytes inside is never pooled"
        );
        drop((pa, upstream));
        writer.await.unwrap();
    }
}

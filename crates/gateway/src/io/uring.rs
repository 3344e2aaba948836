//! Cleartext TCP connections driven by io_uring instead of epoll (Linux, opt-in:
//! `[runtime] io_uring`, `switchyard serve --io-uring`).
//!
//! On the epoll path every message costs a `recv` and a `send` system call, and the
//! kernel's epoll bookkeeping on both sides of the wake-up. Here every connection keeps
//! one receive request queued in the thread's ring and hands its writes to the ring; all
//! the requests made while the runtime runs its tasks go to the kernel in one
//! `io_uring_enter`, which also collects the completions. Per batch of ready connections
//! that is one `epoll_wait` (tokio's, which also watches the ring's eventfd) and one
//! `io_uring_enter`, instead of two system calls per message.
//!
//! What the rest of the server sees is [`UringStream`], an `AsyncRead + AsyncWrite`:
//! the WebSocket layer, its limits and its close handshake do not change.
//!
//! * One ring per thread, used only by that thread (`SINGLE_ISSUER | COOP_TASKRUN`):
//!   the kernel runs the completions' work in this thread when it next leaves a system
//!   call (a thread asleep in `epoll_wait` is woken for it), so receives land in the
//!   order the thread asks for them, and each posted completion signals the eventfd
//!   at once. Not `DEFER_TASKRUN`: its work waits for an `io_uring_enter`, and on the
//!   kernel tried (6.18) the eventfd wake-up that should announce it came many
//!   milliseconds late, so a server with nothing else to do let each message wait
//!   that long (`bench/README.md`). A stream works only on a current-thread
//!   runtime ([`UringStream::new`] refuses otherwise, and the caller keeps the epoll
//!   path); polled from another thread it fails with an error instead of touching
//!   another thread's ring.
//! * Receives take a buffer from a ring of provided buffers (256 x 4 KiB per thread)
//!   only when data arrives: an idle connection holds no receive buffer. The bytes are
//!   copied into the reader's buffer. A receive that filled its whole buffer means more
//!   is probably waiting: the next read is a direct `recv` into the reader's own buffer
//!   (no copy), until the socket is empty. When the provided buffers run out, the
//!   connection waits for readiness (a poll request) and reads directly.
//! * Writes are copied into the connection's send buffer and sent by the ring; one send
//!   in flight per connection, and up to 64 KiB queued behind it (then `poll_write`
//!   is pending: backpressure). A write of 4 KiB or more with nothing queued goes
//!   straight to the socket (`sendmsg`, no copy), and waits for writability through the
//!   ring when the socket is full. `poll_flush` is ready once the bytes are handed to
//!   the ring (they reach the kernel in the same runtime tick, with no further call);
//!   `poll_shutdown` waits for every byte to be sent.
//! * Dropping a stream cancels its receive and lets a send in flight finish; the socket
//!   is closed when the kernel has no request of it left.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::{debug, warn};

/// Submission queue entries of a thread's ring (completions: twice as many).
const RING_ENTRIES: u32 = 1024;
/// Provided receive buffers per thread, and their size.
const BUF_COUNT: u16 = 256;
const BUF_SIZE: usize = 4096;
/// The provided-buffer group of the receive requests.
const BGID: u16 = 0;
/// Writes at least this large go straight to the socket when nothing is queued.
const DIRECT_WRITE: usize = 4096;
/// Bytes a connection may queue behind its send in flight.
const MAX_QUEUED: usize = 64 * 1024;

/// The kind of request, in the low bits of its `user_data` (the slot above them).
const OP_RECV: u64 = 0;
const OP_POLLIN: u64 = 1;
const OP_SEND: u64 = 2;
const OP_POLLOUT: u64 = 3;
const OP_CANCEL: u64 = 4;
const OP_BITS: u32 = 3;
/// `IORING_RECVSEND_POLL_FIRST`: arm the poll before trying the receive.
const RECVSEND_POLL_FIRST: u16 = 1;
/// `IORING_RECV_MULTISHOT`: one receive request for every arrival.
const RECV_MULTISHOT: u16 = 2;
/// Chunks a connection may hold before its multishot receive is stopped.
const MAX_CHUNKS: usize = 8;
/// `io_uring_enter` calls per turn of the driver (see `Ring::enter`).
const MAX_ENTERS: usize = 4;
/// `IORING_ENTER_GETEVENTS` (the crate keeps its `sys` module private).
const ENTER_GETEVENTS: u32 = 1;

fn user_data(slot: u32, op: u64) -> u64 {
    (u64::from(slot) << OP_BITS) | op
}

/// Received bytes not yet read: part of provided buffer `bid`.
#[derive(Clone, Copy)]
struct Chunk {
    bid: u16,
    off: u32,
    len: u32,
}

/// A connection's state in its thread's ring.
struct Slot {
    fd: RawFd,
    /// The [`UringStream`] still exists.
    open: bool,
    // Read side.
    rx: Option<Chunk>,
    /// Chunks behind `rx` (a multishot receive can deliver several per batch).
    rx_more: VecDeque<Chunk>,
    /// A receive request is queued (a multishot one until its last completion).
    recv_armed: bool,
    /// Its cancellation was asked for.
    recv_cancelling: bool,
    /// The connection moved a full buffer at once: it waits for readability and
    /// reads straight into the reader's buffer from then on (a multishot receive
    /// would copy bulk transfers through the provided buffers).
    bulk: bool,
    pollin_armed: bool,
    /// The last receive filled its buffer, or a poll said readable: read directly next.
    read_direct: bool,
    /// The provided buffers ran out: wait for readiness instead of a buffer.
    no_bufs: bool,
    eof: bool,
    rx_err: Option<i32>,
    rwaker: Option<Waker>,
    // Write side.
    /// The bytes of the send in flight (or waiting for writability); they must not
    /// move until the kernel is done with them.
    sending: Vec<u8>,
    sent: usize,
    send_armed: bool,
    pollout_armed: bool,
    queued: Vec<u8>,
    tx_err: Option<i32>,
    wwaker: Option<Waker>,
}

impl Slot {
    fn new(fd: RawFd) -> Slot {
        Slot {
            fd,
            open: true,
            rx: None,
            rx_more: VecDeque::new(),
            recv_armed: false,
            recv_cancelling: false,
            bulk: false,
            pollin_armed: false,
            read_direct: false,
            no_bufs: false,
            eof: false,
            rx_err: None,
            rwaker: None,
            sending: Vec::new(),
            sent: 0,
            send_armed: false,
            pollout_armed: false,
            queued: Vec::new(),
            tx_err: None,
            wwaker: None,
        }
    }

    /// Requests of this slot the kernel still holds.
    fn busy(&self) -> bool {
        self.recv_armed || self.pollin_armed || self.send_armed || self.pollout_armed
    }

    fn unsent(&self) -> bool {
        self.sent < self.sending.len()
    }
}

/// The provided buffers: `BUF_COUNT` buffers of `BUF_SIZE` bytes and the ring of
/// entries through which they are handed to the kernel.
struct BufRing {
    entries: *mut u8,
    mem: *mut u8,
    tail: u16,
}

impl BufRing {
    fn entries_layout() -> std::alloc::Layout {
        let size = usize::from(BUF_COUNT) * std::mem::size_of::<types::BufRingEntry>();
        std::alloc::Layout::from_size_align(size, 4096).expect("valid layout")
    }

    fn mem_layout() -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(usize::from(BUF_COUNT) * BUF_SIZE, 4096)
            .expect("valid layout")
    }

    fn new() -> io::Result<BufRing> {
        // SAFETY: both layouts have a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(Self::entries_layout()) };
        let mem = unsafe { std::alloc::alloc(Self::mem_layout()) };
        if entries.is_null() || mem.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        let mut r = BufRing {
            entries,
            mem,
            tail: 0,
        };
        for bid in 0..BUF_COUNT {
            r.give(bid);
        }
        Ok(r)
    }

    /// Hand buffer `bid` (back) to the kernel.
    fn give(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (BUF_COUNT - 1));
        // SAFETY: `idx` < BUF_COUNT entries of the allocation; the kernel reads an entry
        // only between the old and the new tail, which this entry is not yet part of.
        unsafe {
            let e = &mut *(self.entries as *mut types::BufRingEntry).add(idx);
            e.set_addr(self.mem.add(usize::from(bid) * BUF_SIZE) as u64);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lies in the first entry of the page-aligned ring and is
        // read by the kernel concurrently: a release store publishes the entry above.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries as *const types::BufRingEntry) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }

    /// The bytes of buffer `bid` the kernel filled.
    fn bytes(&self, c: Chunk) -> &[u8] {
        // SAFETY: the kernel wrote `c.len` (<= BUF_SIZE) bytes at the start of buffer
        // `c.bid` and gave it back to us; it is not handed out again before `give`.
        unsafe {
            std::slice::from_raw_parts(
                self.mem.add(usize::from(c.bid) * BUF_SIZE + c.off as usize),
                (c.len - c.off) as usize,
            )
        }
    }
}

/// A thread's ring, its buffers and its connections.
struct Ring {
    /// Unique per ring: a stream checks that it is polled on its own ring.
    id: u32,
    ring: IoUring,
    bufs: BufRing,
    eventfd: OwnedFd,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The driver task: woken to submit what the tasks queued.
    driver: Option<Waker>,
    driver_alive: bool,
    flush_requested: bool,
    cqes: Vec<(u64, i32, u32)>,
}

impl Ring {
    fn new() -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(RING_ENTRIES)?;
        // SAFETY: plain system call; the result is checked.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `efd` is a new descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(efd)?;
        let bufs = BufRing::new()?;
        // SAFETY: the entries stay allocated as long as the ring (see `Drop`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                BUF_COUNT,
                BGID,
                0,
            )?;
        }
        static NEXT_ID: AtomicU32 = AtomicU32::new(1);
        Ok(Ring {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            ring,
            bufs,
            eventfd,
            slots: Vec::new(),
            free: Vec::new(),
            driver: None,
            driver_alive: false,
            flush_requested: false,
            cqes: Vec::new(),
        })
    }

    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every request points only at memory that lives until its
            // completion: provided buffers (owned by the ring) and `Slot::sending`.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                break;
            }
            // The queue is full: submit what is queued now.
            if let Err(e) = self.ring.submit() {
                warn!("io_uring submit failed: {e}");
            }
        }
        self.request_flush();
    }

    fn request_flush(&mut self) {
        if !self.flush_requested {
            self.flush_requested = true;
            if let Some(w) = &self.driver {
                w.wake_by_ref();
            }
        }
    }

    /// Submit the queued requests and handle every completion.
    ///
    /// Handling completions queues more requests (the rest of a short send, a
    /// cancel, a re-armed receive), and entering runs the completion work that
    /// arrived meanwhile: enter again until an enter completes nothing, and after a
    /// few rounds let the woken tasks run first.
    fn enter(&mut self, wake: &mut Vec<Waker>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        let mut idle = false;
        for _ in 0..MAX_ENTERS {
            let to_submit = self.ring.submission().len() as u32;
            loop {
                // SAFETY: no argument; GETEVENTS with min_complete 0 runs this
                // thread's pending completion work without waiting.
                let r = unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        to_submit,
                        0,
                        ENTER_GETEVENTS,
                        None,
                    )
                };
                match r {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break,
                    Err(e) => {
                        warn!("io_uring_enter failed: {e}");
                        break;
                    }
                    Ok(_) => break,
                }
            }
            let mut completed = 0;
            loop {
                cqes.clear();
                cqes.extend(
                    self.ring
                        .completion()
                        .map(|c| (c.user_data(), c.result(), c.flags())),
                );
                if cqes.is_empty() {
                    break;
                }
                completed += cqes.len();
                for &(ud, res, flags) in &cqes {
                    self.complete(ud, res, flags, wake);
                }
            }
            if completed == 0 && self.ring.submission().is_empty() {
                idle = true;
                break;
            }
        }
        self.cqes = cqes;
        if !idle {
            self.flush_requested = false;
            self.request_flush();
        }
    }

    fn complete(&mut self, ud: u64, res: i32, flags: u32, wake: &mut Vec<Waker>) {
        let op = ud & ((1 << OP_BITS) - 1);
        if op == OP_CANCEL {
            return;
        }
        let idx = (ud >> OP_BITS) as usize;
        let Some(s) = self.slots.get_mut(idx) else {
            return;
        };
        match op {
            OP_RECV => {
                if !cqueue::more(flags) {
                    s.recv_armed = false;
                    s.recv_cancelling = false;
                }
                let mut cancel = false;
                if let Some(bid) = cqueue::buffer_select(flags) {
                    if res > 0 && s.open {
                        let c = Chunk {
                            bid,
                            off: 0,
                            len: res as u32,
                        };
                        if s.rx.is_none() {
                            s.rx = Some(c);
                        } else {
                            s.rx_more.push_back(c);
                        }
                        let full = res as usize == BUF_SIZE;
                        s.read_direct = full;
                        // A bulk transfer, or a reader that does not keep up: stop
                        // taking buffers for this connection.
                        if full && !s.bulk {
                            s.bulk = true;
                            cancel = s.recv_armed;
                        }
                        cancel |= s.recv_armed && s.rx_more.len() >= MAX_CHUNKS;
                    } else {
                        self.bufs.give(bid);
                    }
                } else if res == 0 {
                    s.eof = true;
                } else if res == -libc::ENOBUFS {
                    s.no_bufs = true;
                } else if res < 0 && res != -libc::ECANCELED {
                    s.rx_err = Some(-res);
                }
                wake.extend(s.rwaker.take());
                if cancel && !s.recv_cancelling {
                    s.recv_cancelling = true;
                    self.cancel(idx as u32, OP_RECV);
                }
            }
            OP_POLLIN => {
                s.pollin_armed = false;
                if res >= 0 {
                    s.read_direct = true;
                } else if res != -libc::ECANCELED {
                    s.rx_err = Some(-res);
                }
                wake.extend(s.rwaker.take());
            }
            OP_SEND => {
                s.send_armed = false;
                // A short send, or EAGAIN: the socket's buffer is full.
                let mut wait = false;
                if res >= 0 {
                    s.sent += res as usize;
                    wait = s.unsent();
                } else if res == -libc::EAGAIN {
                    wait = true;
                } else {
                    s.tx_err = Some(-res);
                }
                if s.tx_err.is_some() || (wait && !s.open) {
                    // Failed, or dropped with a peer that does not read: give up.
                    s.sending = Vec::new();
                    s.queued = Vec::new();
                    s.sent = 0;
                } else if !s.unsent() {
                    s.sending.clear();
                    s.sent = 0;
                    std::mem::swap(&mut s.sending, &mut s.queued);
                    if s.queued.capacity() > MAX_QUEUED {
                        s.queued = Vec::new();
                    }
                }
                if s.unsent() {
                    if wait {
                        self.arm_pollout(idx);
                    } else {
                        self.start_send(idx);
                    }
                }
                wake.extend(self.slots[idx].wwaker.take());
            }
            OP_POLLOUT => {
                s.pollout_armed = false;
                if res < 0 && res != -libc::ECANCELED {
                    s.tx_err = Some(-res);
                }
                if !s.open || s.tx_err.is_some() {
                    s.sending = Vec::new();
                    s.queued = Vec::new();
                    s.sent = 0;
                } else if s.unsent() && !s.send_armed {
                    self.start_send(idx);
                }
                wake.extend(self.slots[idx].wwaker.take());
            }
            _ => {}
        }
        self.release_if_done(idx);
    }

    fn cancel(&mut self, slot: u32, op: u64) {
        self.push(
            opcode::AsyncCancel::new(user_data(slot, op))
                .build()
                .user_data(user_data(slot, OP_CANCEL)),
        );
    }

    fn start_send(&mut self, idx: usize) {
        let s = &mut self.slots[idx];
        let rest = &s.sending[s.sent..];
        let e = opcode::Send::new(types::Fd(s.fd), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(idx as u32, OP_SEND));
        s.send_armed = true;
        self.push(e);
    }

    fn arm_pollout(&mut self, idx: usize) {
        let s = &mut self.slots[idx];
        if s.pollout_armed {
            return;
        }
        s.pollout_armed = true;
        let e = opcode::PollAdd::new(types::Fd(s.fd), libc::POLLOUT as u32)
            .build()
            .user_data(user_data(idx as u32, OP_POLLOUT));
        self.push(e);
    }

    fn arm_read(&mut self, idx: usize) {
        let s = &mut self.slots[idx];
        let fd = types::Fd(s.fd);
        let e = if s.no_bufs || s.bulk {
            // Wait for readability, then read straight into the reader's buffer.
            s.no_bufs = false;
            s.pollin_armed = true;
            opcode::PollAdd::new(fd, libc::POLLIN as u32)
                .build()
                .user_data(user_data(idx as u32, OP_POLLIN))
        } else {
            s.recv_armed = true;
            // Small messages: one multishot receive serves them all, waiting for
            // data before its first try.
            opcode::Recv::new(fd, std::ptr::null_mut(), BUF_SIZE as u32)
                .buf_group(BGID)
                .ioprio(RECVSEND_POLL_FIRST | RECV_MULTISHOT)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
                .user_data(user_data(idx as u32, OP_RECV))
        };
        self.push(e);
    }

    /// Close a dropped stream's socket once the kernel holds no request of it.
    fn release_if_done(&mut self, idx: usize) {
        let s = &mut self.slots[idx];
        if s.open || s.busy() || s.fd < 0 {
            return;
        }
        // SAFETY: the slot owned the descriptor since `UringStream::new`.
        drop(unsafe { OwnedFd::from_raw_fd(s.fd) });
        s.fd = -1;
        s.sending = Vec::new();
        s.queued = Vec::new();
        s.rwaker = None;
        s.wwaker = None;
        self.free.push(idx as u32);
    }

    fn insert(&mut self, fd: RawFd) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Slot::new(fd);
                i
            }
            None => {
                self.slots.push(Slot::new(fd));
                (self.slots.len() - 1) as u32
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel cancels what is still queued after the ring is closed, possibly
        // later: memory it may still write to or read from is leaked, not freed.
        let busy = self.slots.iter().any(Slot::busy);
        if busy {
            for s in &mut self.slots {
                if s.busy() {
                    std::mem::forget(std::mem::take(&mut s.sending));
                }
            }
            return;
        }
        // SAFETY: allocated in `BufRing::new` with these layouts; no request is left.
        unsafe {
            std::alloc::dealloc(self.bufs.entries, BufRing::entries_layout());
            std::alloc::dealloc(self.bufs.mem, BufRing::mem_layout());
        }
    }
}

enum State {
    Untried,
    Failed,
    Ready(Box<Ring>),
}

thread_local! {
    static RING: RefCell<State> = const { RefCell::new(State::Untried) };
}

/// Run `f` on this thread's ring, then wake the tasks it completed.
fn with_ring<R>(f: impl FnOnce(&mut Ring, &mut Vec<Waker>) -> R) -> Option<R> {
    let mut wake = Vec::new();
    let r = RING
        .try_with(|cell| {
            let mut st = cell.try_borrow_mut().ok()?;
            match &mut *st {
                State::Ready(r) => Some(f(r, &mut wake)),
                _ => None,
            }
        })
        .ok()
        .flatten();
    for w in wake {
        w.wake();
    }
    r
}

/// Whether the kernel's setting lets processes use io_uring
/// (`kernel.io_uring_disabled` is 0, or absent before Linux 6.6). Seccomp or an old
/// kernel can still refuse it: [`available`] tries.
pub fn kernel_allows() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map_or(true, |v| v.trim() == "0")
}

/// Whether this thread can use io_uring (it sets the ring up on first use). `false`
/// where the kernel refuses (`kernel.io_uring_disabled`, seccomp, old kernels).
pub fn available() -> bool {
    RING.with(|cell| {
        let mut st = cell.borrow_mut();
        if let State::Untried = *st {
            *st = match Ring::new() {
                Ok(r) => State::Ready(Box::new(r)),
                Err(e) => {
                    warn!("io_uring is not available ({e}); using epoll");
                    State::Failed
                }
            };
        }
        matches!(*st, State::Ready(_))
    })
}

/// The task that submits the ring's requests and hands out its completions: woken
/// by the tasks that queue requests, and by the ring's eventfd when the kernel has
/// completion work for this thread.
struct Driver {
    efd: AsyncFd<OwnedFd>,
}

impl Future for Driver {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let alive = with_ring(|r, wake| {
                if !r.driver.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    r.driver = Some(cx.waker().clone());
                }
                r.flush_requested = false;
                r.enter(wake);
            });
            if alive.is_none() {
                return Poll::Ready(());
            }
            match self.efd.poll_read_ready(cx) {
                Poll::Ready(Ok(mut g)) => g.clear_ready(),
                Poll::Ready(Err(e)) => {
                    warn!("io_uring eventfd: {e}");
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        with_ring(|r, _| {
            r.driver_alive = false;
            r.driver = None;
        });
    }
}

/// Make sure this thread's ring has a driver task on the current runtime.
fn ensure_driver() -> io::Result<()> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other("no tokio runtime on this thread"));
    }
    let fd = with_ring(|r, _| (!r.driver_alive).then(|| r.eventfd.try_clone()));
    let Some(Some(fd)) = fd else {
        return Ok(());
    };
    // SAFETY: the AsyncFd owns its duplicate of the eventfd, open until it is dropped.
    let efd = unsafe { AsyncFd::register_with_interest(fd?, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    with_ring(|r, _| r.driver_alive = true);
    tokio::spawn(Driver { efd });
    Ok(())
}

/// A TCP connection whose reads and writes go through this thread's io_uring.
#[derive(Debug)]
pub struct UringStream {
    slot: u32,
    /// [`Ring::id`] of its ring. Two `u32`s: every connection's future holds this.
    ring: u32,
}

impl UringStream {
    /// Move `stream` onto this thread's ring. Gives it back when io_uring is not
    /// available or the runtime is not a current-thread one (tasks would move
    /// between threads, and a ring belongs to one).
    pub fn new(stream: std::net::TcpStream) -> Result<UringStream, std::net::TcpStream> {
        let current_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        if !current_thread || !available() {
            return Err(stream);
        }
        if let Err(e) = ensure_driver() {
            debug!("io_uring driver: {e}");
            return Err(stream);
        }
        // The ring waits for data itself; direct reads and writes say MSG_DONTWAIT.
        if stream.set_nonblocking(false).is_err() {
            return Err(stream);
        }
        let fd = stream.into_raw_fd();
        let (slot, ring) =
            with_ring(|r, _| (r.insert(fd), r.id)).expect("the ring was just checked");
        Ok(UringStream { slot, ring })
    }

    /// The peer's address (`getpeername`).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        let fd = self.as_raw_fd();
        if fd < 0 {
            return Err(other_thread());
        }
        // SAFETY: the slot's descriptor is open while this stream exists; ManuallyDrop
        // keeps the borrowed std stream from closing it.
        let tcp = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        tcp.peer_addr()
    }

    fn on_ring<R>(
        &self,
        f: impl FnOnce(&mut Ring, usize, &mut Vec<Waker>) -> io::Result<R>,
    ) -> io::Result<R> {
        let idx = self.slot as usize;
        let mut orphan = false;
        let r = with_ring(|r, wake| {
            if r.id != self.ring {
                return Err(other_thread());
            }
            orphan = !r.driver_alive;
            f(r, idx, wake)
        })
        .unwrap_or_else(|| Err(other_thread()));
        if orphan {
            // The runtime that ran the driver is gone; this one needs its own.
            if let Err(e) = ensure_driver() {
                warn!("io_uring driver: {e}");
            }
        }
        r
    }
}

impl AsRawFd for UringStream {
    fn as_raw_fd(&self) -> RawFd {
        with_ring(|r, _| {
            if r.id == self.ring {
                r.slots[self.slot as usize].fd
            } else {
                -1
            }
        })
        .unwrap_or(-1)
    }
}

fn other_thread() -> io::Error {
    io::Error::other("an io_uring stream was used on another thread than its runtime's")
}

fn store_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

impl AsyncRead for UringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let r = self.on_ring(|r, idx, _| {
            let s = &mut r.slots[idx];
            if let Some(mut c) = s.rx {
                let bytes = r.bufs.bytes(c);
                let n = bytes.len().min(buf.remaining());
                buf.put_slice(&bytes[..n]);
                c.off += n as u32;
                if c.off == c.len {
                    s.rx = s.rx_more.pop_front();
                    if s.rx.is_none() && s.rx_more.capacity() > 0 {
                        s.rx_more = VecDeque::new();
                    }
                    r.bufs.give(c.bid);
                } else {
                    s.rx = Some(c);
                }
                return Ok(Poll::Ready(()));
            }
            if let Some(e) = s.rx_err.take() {
                return Err(io::Error::from_raw_os_error(e));
            }
            if s.eof {
                return Ok(Poll::Ready(()));
            }
            if s.recv_armed || s.pollin_armed {
                store_waker(&mut s.rwaker, cx);
                return Ok(Poll::Pending);
            }
            if s.read_direct {
                // SAFETY: only written to by `recv`, never de-initialized.
                let dst = unsafe { buf.unfilled_mut() };
                loop {
                    // SAFETY: `dst` is valid for writes of its length.
                    let n = unsafe {
                        libc::recv(s.fd, dst.as_mut_ptr().cast(), dst.len(), libc::MSG_DONTWAIT)
                    };
                    if n >= 0 {
                        let n = n as usize;
                        s.read_direct = n == dst.len();
                        s.eof = n == 0;
                        // SAFETY: `recv` initialized the first `n` bytes.
                        unsafe { buf.assume_init(n) };
                        buf.advance(n);
                        return Ok(Poll::Ready(()));
                    }
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock => break,
                        _ => return Err(e),
                    }
                }
                s.read_direct = false;
            }
            store_waker(&mut s.rwaker, cx);
            r.arm_read(idx);
            Ok(Poll::Pending)
        });
        match r {
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Ok(Poll::Pending) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for UringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let r = self.on_ring(|r, idx, _| {
            let s = &mut r.slots[idx];
            if let Some(e) = s.tx_err {
                return Err(io::Error::from_raw_os_error(e));
            }
            if s.sending.is_empty() {
                if total >= DIRECT_WRITE {
                    if s.pollout_armed {
                        store_waker(&mut s.wwaker, cx);
                        return Ok(Poll::Pending);
                    }
                    match send_direct(s.fd, bufs) {
                        Ok(n) => return Ok(Poll::Ready(n)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            store_waker(&mut s.wwaker, cx);
                            r.arm_pollout(idx);
                            return Ok(Poll::Pending);
                        }
                        Err(e) => return Err(e),
                    }
                }
                for b in bufs {
                    s.sending.extend_from_slice(b);
                }
                if !s.pollout_armed {
                    r.start_send(idx);
                }
                return Ok(Poll::Ready(total));
            }
            let room = MAX_QUEUED.saturating_sub(s.queued.len());
            if room == 0 {
                store_waker(&mut s.wwaker, cx);
                return Ok(Poll::Pending);
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room - n);
                s.queued.extend_from_slice(&b[..take]);
                n += take;
                if n == room {
                    break;
                }
            }
            Ok(Poll::Ready(n))
        });
        match r {
            Ok(Poll::Ready(n)) => Poll::Ready(Ok(n)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The bytes are the ring's: they reach the kernel in this runtime tick.
        Poll::Ready(self.on_ring(|r, idx, _| match r.slots[idx].tx_err {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => Ok(()),
        }))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = self.on_ring(|r, idx, _| {
            let s = &mut r.slots[idx];
            if let Some(e) = s.tx_err {
                return Err(io::Error::from_raw_os_error(e));
            }
            if !s.sending.is_empty() {
                store_waker(&mut s.wwaker, cx);
                return Ok(Poll::Pending);
            }
            // SAFETY: plain system call on the slot's open descriptor.
            if unsafe { libc::shutdown(s.fd, libc::SHUT_WR) } < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOTCONN) {
                    return Err(e);
                }
            }
            Ok(Poll::Ready(()))
        });
        match r {
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Ok(Poll::Pending) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// `sendmsg` of `bufs` without waiting.
fn send_direct(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    let n = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: an all-zero msghdr is valid; `IoSlice` is ABI-compatible with `iovec`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = n as _;
    loop {
        // SAFETY: `msg` points at `n` valid iovecs for the duration of the call.
        let r = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        let idx = self.slot as usize;
        let mine = with_ring(|r, _| {
            if r.id != self.ring {
                return false;
            }
            let s = &mut r.slots[idx];
            s.open = false;
            s.rwaker = None;
            s.wwaker = None;
            let chunks: Vec<Chunk> = s.rx.take().into_iter().chain(s.rx_more.drain(..)).collect();
            for c in chunks {
                r.bufs.give(c.bid);
            }
            // Bytes still waiting for room are given up: a peer that stops reading
            // would otherwise hold the socket forever.
            let ops = [
                (s.recv_armed && !s.recv_cancelling, OP_RECV),
                (s.pollin_armed, OP_POLLIN),
                (s.pollout_armed, OP_POLLOUT),
            ];
            for (armed, op) in ops {
                if armed {
                    r.cancel(self.slot, op);
                }
            }
            r.release_if_done(idx);
            true
        });
        if mine != Some(true) {
            // Another thread's ring: leave the socket open rather than close a
            // descriptor that ring may still use.
            warn!("an io_uring stream was dropped on another thread; its socket is leaked");
        }
    }
}

/// Bytes queued behind the send in flight, and receive buffers held (tests).
#[cfg(test)]
fn held(stream: &UringStream) -> (usize, usize) {
    with_ring(|r, _| {
        let s = &r.slots[stream.slot as usize];
        (
            s.queued.len(),
            usize::from(s.rx.is_some()) + s.rx_more.len(),
        )
    })
    .unwrap()
}

/// Slots of this thread's ring, and how many are free (tests).
#[cfg(test)]
fn slot_counts() -> (usize, usize) {
    with_ring(|r, _| (r.slots.len(), r.free.len())).unwrap_or((0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The tests below need io_uring, and say so when the kernel refuses it.
    fn skip() -> bool {
        let off = !kernel_allows();
        if off {
            eprintln!("io_uring is disabled by kernel.io_uring_disabled: not tested here");
        }
        off
    }

    /// A connected pair: (the accepted side on the ring, a plain blocking client).
    async fn pair_std() -> (UringStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let s = UringStream::new(s).expect("io_uring on a current-thread runtime");
        assert_eq!(s.peer_addr().unwrap(), client.local_addr().unwrap());
        (s, client)
    }

    /// A connected pair: (the accepted side on the ring, the client side on epoll).
    async fn pair() -> (UringStream, tokio::net::TcpStream) {
        let (s, c) = pair_std().await;
        c.set_nonblocking(true).unwrap();
        (s, tokio::net::TcpStream::from_std(c).unwrap())
    }

    /// Deterministic bytes that differ at every offset of a long stream.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn small_messages_round_trip() {
        if skip() {
            return;
        }
        let (mut s, mut c) = pair().await;
        for i in 0..100u32 {
            let msg = format!("message {i}");
            c.write_all(msg.as_bytes()).await.unwrap();
            let mut buf = vec![0; msg.len()];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, msg.as_bytes());
            s.write_all(&buf).await.unwrap();
            s.flush().await.unwrap();
            let mut back = vec![0; msg.len()];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg.as_bytes());
        }
    }

    /// 8 MiB each way at once: bulk receives (direct reads after the first full
    /// buffer), large writes straight to the socket, waits for writability.
    #[tokio::test]
    async fn bulk_both_ways_keeps_every_byte_in_order() {
        if skip() {
            return;
        }
        let (s, c) = pair().await;
        let data = pattern(8 << 20);
        let (mut sr, mut sw) = tokio::io::split(s);
        let (mut cr, mut cw) = c.into_split();
        let up = data.clone();
        let client_writes = tokio::spawn(async move {
            // Mixed sizes: small writes, then large ones.
            let (small, large) = up.split_at(100_000);
            for chunk in small.chunks(1000) {
                cw.write_all(chunk).await.unwrap();
            }
            cw.write_all(large).await.unwrap();
            cw
        });
        let client_reads = tokio::spawn(async move {
            let mut got = Vec::new();
            cr.read_to_end(&mut got).await.unwrap();
            got
        });
        let down = data.clone();
        let server_writes = async move {
            let (small, large) = down.split_at(50_000);
            for chunk in small.chunks(100) {
                sw.write_all(chunk).await.unwrap();
            }
            sw.write_all(large).await.unwrap();
            sw.shutdown().await.unwrap();
            sw
        };
        let server_reads = async move {
            let mut got = vec![0; data.len()];
            sr.read_exact(&mut got).await.unwrap();
            (got, sr)
        };
        let (sw, (got, sr)) = tokio::join!(server_writes, server_reads);
        assert!(got == pattern(8 << 20), "server received other bytes");
        let _cw = client_writes.await.unwrap();
        let back = client_reads.await.unwrap();
        assert_eq!(back.len(), 8 << 20);
        assert!(back == pattern(8 << 20), "client received other bytes");
        drop(sr.unsplit(sw));
    }

    /// Dropping a pending read loses nothing (`select!` against a timer).
    #[tokio::test]
    async fn dropped_reads_lose_no_bytes() {
        if skip() {
            return;
        }
        let (mut s, mut c) = pair().await;
        let data = pattern(20_000);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(37) {
                c.write_all(chunk).await.unwrap();
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            c
        });
        let mut got = Vec::new();
        let mut cancelled = 0;
        while got.len() < data.len() {
            let mut buf = [0u8; 64];
            tokio::select! {
                r = s.read(&mut buf) => got.extend_from_slice(&buf[..r.unwrap()]),
                _ = tokio::time::sleep(Duration::from_micros(100)) => cancelled += 1,
            }
        }
        assert_eq!(got, data);
        assert!(cancelled > 0, "no read was ever cancelled");
        drop(writer.await.unwrap());
    }

    /// A peer that does not read: writes become pending with at most
    /// MAX_QUEUED bytes queued, and every byte arrives once it reads.
    #[tokio::test]
    async fn writes_to_a_peer_that_does_not_read_are_bounded() {
        if skip() {
            return;
        }
        let (mut s, mut c) = pair().await;
        let data = pattern(16 << 20);
        let mut written = 0;
        // Small writes (copied and queued), until they stop being accepted. One
        // `write` at a time: `write_all` is not cancel-safe.
        let stalled = tokio::time::timeout(Duration::from_millis(500), async {
            while written < data.len() {
                let end = (written + 1000).min(data.len());
                written += s.write(&data[written..end]).await.unwrap();
            }
        })
        .await
        .is_err();
        assert!(stalled, "16 MiB written to a peer that never reads");
        let (queued, _) = held(&s);
        assert!(queued <= MAX_QUEUED, "{queued} bytes queued");
        assert!(written < data.len());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            got
        });
        s.write_all(&data[written..]).await.unwrap();
        s.shutdown().await.unwrap();
        drop(s);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes lost or reordered");
    }

    #[tokio::test]
    async fn end_of_stream_after_the_data() {
        if skip() {
            return;
        }
        let (mut s, mut c) = pair().await;
        c.write_all(b"last words").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last words");
        // Reads after the end keep saying so.
        assert_eq!(s.read(&mut [0u8; 8]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_reset_is_an_error() {
        if skip() {
            return;
        }
        let (mut s, c) = pair().await;
        // SO_LINGER 0: the close is a reset.
        c.set_zero_linger().unwrap();
        drop(c);
        let mut buf = [0u8; 16];
        let e = loop {
            match s.read(&mut buf).await {
                Err(e) => break e,
                Ok(0) => panic!("end of stream instead of a reset"),
                Ok(_) => {}
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }

    /// Dropping a stream right after a write: the bytes still go out, then the
    /// socket is closed and its slot reused.
    #[tokio::test]
    async fn drop_sends_what_was_written_then_closes() {
        if skip() {
            return;
        }
        let (before, _) = slot_counts();
        for round in 0..20 {
            let (mut s, mut c) = pair().await;
            let msg = format!("goodbye {round}");
            s.write_all(msg.as_bytes()).await.unwrap();
            drop(s);
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, msg.as_bytes());
        }
        let (slots, free) = slot_counts();
        assert!(slots - free <= 1, "{slots} slots, {free} free");
        assert!(slots <= before + 3, "slots are not reused: {slots}");
    }

    /// More connections with data waiting than there are provided buffers: the
    /// ones without a buffer wait for readability and read directly.
    #[tokio::test]
    async fn more_waiting_connections_than_buffers() {
        if skip() {
            return;
        }
        let n = usize::from(BUF_COUNT) + 100;
        let mut pairs = Vec::new();
        for _ in 0..n {
            pairs.push(pair().await);
        }
        // Arm every receive, then let every client send while nobody reads.
        for (s, _) in &mut pairs {
            let r = tokio::time::timeout(Duration::from_millis(1), s.read(&mut [0u8; 1])).await;
            assert!(r.is_err(), "data before any was sent");
        }
        for (i, (_, c)) in pairs.iter_mut().enumerate() {
            c.write_all(format!("conn {i:04}").as_bytes())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::task::yield_now().await;
        // Every buffer was taken: the others had to do without.
        let held: usize = pairs.iter().map(|(s, _)| held(s).1).sum();
        assert_eq!(held, usize::from(BUF_COUNT));
        for (i, (s, _)) in pairs.iter_mut().enumerate() {
            let mut buf = [0u8; 9];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, format!("conn {i:04}").as_bytes());
        }
    }

    /// Data for 200 connections at once, none of their readers waiting: all of it
    /// is delivered, though one `io_uring_enter` runs at most 20 items of the
    /// kernel's completion work and no further network event comes.
    #[tokio::test]
    async fn a_burst_for_many_idle_readers_is_all_delivered() {
        if skip() {
            return;
        }
        let mut pairs = Vec::new();
        for _ in 0..200 {
            pairs.push(pair_std().await);
        }
        for (s, _) in &mut pairs {
            let r = tokio::time::timeout(Duration::from_millis(1), s.read(&mut [0u8; 1])).await;
            assert!(r.is_err(), "data before any was sent");
        }
        // Blocking clients: their writes do not run through this runtime.
        for (i, (_, c)) in pairs.iter_mut().enumerate() {
            std::io::Write::write_all(c, format!("conn {i:04}").as_bytes()).unwrap();
        }
        for (i, (s, _)) in pairs.iter_mut().enumerate() {
            let mut buf = [0u8; 9];
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("connection {i}: its data never arrived"))
                .unwrap();
            assert_eq!(&buf, format!("conn {i:04}").as_bytes());
        }
    }

    /// A reader that does not keep up holds a bounded number of buffers.
    #[tokio::test]
    async fn a_slow_reader_holds_few_buffers() {
        if skip() {
            return;
        }
        let (mut s, mut c) = pair().await;
        let r = tokio::time::timeout(Duration::from_millis(1), s.read(&mut [0u8; 1])).await;
        assert!(r.is_err());
        let data = pattern(300_000);
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in sent.chunks(1000) {
                c.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            c
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, chunks) = held(&s);
        // MAX_CHUNKS, plus what one batch of completions brought before the stop.
        assert!(chunks <= MAX_CHUNKS + 32, "{chunks} buffers held");
        let mut got = vec![0; data.len()];
        s.read_exact(&mut got).await.unwrap();
        assert!(got == data, "bytes lost or reordered");
        drop(writer.await.unwrap());
    }

    #[test]
    fn refused_on_a_multi_thread_runtime() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            assert!(UringStream::new(s).is_err());
        });
    }

    /// A stream polled on another thread than its ring's fails instead of
    /// touching that ring.
    #[test]
    fn another_threads_stream_is_an_error() {
        if skip() {
            return;
        }
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        let s = rt().block_on(async { UringStream::new(accepted).unwrap() });
        let s = std::thread::spawn(move || {
            rt().block_on(async move {
                let mut s = s;
                let e = s.read(&mut [0u8; 4]).await.unwrap_err();
                assert!(e.to_string().contains("another thread"), "{e}");
                let e = s.write(b"x").await.unwrap_err();
                assert!(e.to_string().contains("another thread"), "{e}");
                s
            })
        })
        .join()
        .unwrap();
        // Back on its own thread (a new runtime: a new driver) it works.
        rt().block_on(async move {
            let mut s = s;
            std::io::Write::write_all(&mut c, b"ping").unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
        });
    }
}

//! The hot path of `switchyard bench`: closed-loop echo over plain `ws://` (no TLS, no HTTP/2,
//! no `--rate`, no `--ramp-up`), which is what measures a server's throughput.
//!
//! The load generator must cost clearly less CPU per message than the server it measures, so
//! after the handshakes (done with tokio, as in the other modes) each load-generator thread
//! drives all of its connections from ONE `mio` event loop, edge-triggered, without tasks,
//! wakers or timers:
//!
//! - per readable event, one `read` into the connection's large receive buffer (again only
//!   while the buffer came back full) and every complete frame in it is parsed and checked;
//! - the replies are answered with as many new messages, all written with one `write`;
//! - one `Instant::now()` per batch of up to [`CLOCK_EVERY`] events (read when `epoll_wait`
//!   returns and again every [`CLOCK_EVERY`] events) stamps both the replies' arrival and the
//!   new messages' departure; stamps are nanoseconds since the loop started, so a latency is
//!   one integer subtraction;
//! - the latencies of one batch go into the histograms together ([`Report::complete_all`]:
//!   one window test and one per-second bucket look-up per batch, not per message).
//!
//! It still speaks WebSocket as RFC 6455 asks: every frame is masked with a fresh 32-bit key
//! from a ChaCha12 CSPRNG (`rand`'s `StdRng`, seeded once per thread from the OS; it buffers
//! whole ChaCha blocks, so a key costs an index increment and a load, and a refill gives 64
//! keys), and every
//! echoed frame is parsed and verified: FIN, RSV, opcode, mask bit, exact length, and its
//! payload compared with what was sent. Each payload starts with the message's sequence number
//! on this connection (hex digits, so text messages stay ASCII; all eight computed at once on a
//! `u64`, see [`hex8`]), so that a lost, duplicated or reordered echo is an error too. Pings are answered, a close frame or EOF is an error.
//!
//! Large binary messages (from [`ZERO_COPY_MIN`] bytes) are not copied at all on the way out:
//! every frame's body is the same shared buffer `W` written with `writev`, after a small header
//! chunk holding the fresh masking key `K` and the masked sequence number. The server unmasks
//! the body to `W XOR K`, which differs per frame because `K` does, and the echo is checked
//! against `W XOR K` in one pass. The masking rule is kept (a fresh random key per frame); what
//! changes is only which bytes the payload is — binary payloads may be anything.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read as _, Write as _};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::frame::{push_frame, MAX_CONTROL, MAX_HEADER, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG};
use super::plan::{window_from, Plan, Window};
use super::tally::{Fail, Report};
use super::wire::{connect, handshake, next_frame, Rng, Stream};

/// How long after the end of the run a connection may take to deliver one more read.
const GRACE: Duration = Duration::from_secs(2);
/// How long the close handshakes may take at the end.
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// Hex digits of the sequence number at the start of each payload (fewer if it is shorter).
const SEQ_DIGITS: usize = 8;
/// Binary messages from this size on are sent without copying their body (see the module doc).
const ZERO_COPY_MIN: usize = 4096;
/// At most this many buffers per `writev`.
const MAX_IOV: usize = 64;
/// The clock is read again after this many events of one `epoll_wait` batch, so that no
/// stamp is older than the handling of this many events.
const CLOCK_EVERY: usize = 16;

/// Nanoseconds from `origin` to `t` (0 if `t` is earlier; `u64` lasts 584 years).
fn ns_between(origin: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(origin).as_nanos()).unwrap_or(u64::MAX)
}

/// Whether `plan` runs on this event loop (the other echo runs use the tokio path).
pub(super) fn eligible(plan: &Plan) -> bool {
    plan.tls.is_none() && plan.h2_streams == 0 && plan.rate.is_none() && plan.ramp_up.is_zero()
}

/// One load-generator thread of an eligible echo run: opens this thread's share of the
/// connections, waits for the other threads, then runs the event loop.
pub(super) fn worker(
    plan: &Plan,
    index: usize,
    rt: &tokio::runtime::Runtime,
    barrier: &Barrier,
    start: &OnceLock<Instant>,
) -> anyhow::Result<Report> {
    let slots: Vec<usize> = (index..plan.connections).step_by(plan.threads).collect();
    let mut report = Report::new();
    report.live = Some(plan.live.clone());
    let opened = rt.block_on(futures_util::future::join_all(
        slots.iter().map(|_| open(plan)),
    ));
    let mut socks = Vec::with_capacity(opened.len());
    for o in opened {
        match o {
            Ok(s) => socks.push(s),
            Err(e) => report.fail(&e),
        }
    }
    barrier.wait();
    let window = window_from(plan, *start.get_or_init(Instant::now));
    report.origin = Some(window.t0);
    let _ = plan.live.started.set(window.t0);
    EventLoop::new(plan, socks)?.run(window, &mut report)?;
    report.measured = window.end.saturating_duration_since(window.measure_from);
    report.live = None;
    Ok(report)
}

/// Connects and upgrades (tokio), then hands the socket over to the event loop.
async fn open(plan: &Plan) -> anyhow::Result<(std::net::TcpStream, Vec<u8>)> {
    let mut rng = Rng::new();
    let mut stream = connect(plan).await?;
    let early = handshake(&mut stream, plan, &mut rng).await?;
    let Stream::Tcp(tcp) = stream else {
        anyhow::bail!("internal error: a ws:// connection that is not plain TCP");
    };
    // Still non-blocking, as mio wants it.
    let std = tcp
        .into_std()
        .context("cannot take the socket out of the tokio runtime")?;
    Ok((std, early))
}

/// Where a connection is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Closed loop: every echo is answered with a new message.
    Running,
    /// The run is over; waiting for one more read (as the tokio path does).
    Draining,
    /// Counted; to be closed.
    Done,
    /// Close frame sent; reading until the server ends the connection.
    Closing,
    /// Gone (closed by the server after the close frame, or failed and counted).
    Closed,
}

/// One connection of the event loop.
struct Conn {
    sock: Option<TcpStream>,
    state: State,
    /// Received bytes: `rbuf[rpos..rlen]` is unparsed.
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    /// Frames to send.
    out: OutBuf,
    /// Send time (nanoseconds since the loop's origin) and masking key of each outstanding
    /// message, oldest first.
    sent: VecDeque<(u64, [u8; 4])>,
    /// Sequence number of the next message sent and of the next echo expected.
    next_out: u64,
    next_in: u64,
}

/// The frames every connection sends, prepared once.
struct Template {
    /// FIN + opcode and the length (with the mask bit), without the masking key.
    head: Vec<u8>,
    /// The payload; its first `seq_len` bytes are replaced by the sequence number.
    payload: Vec<u8>,
    seq_len: usize,
    opcode: u8,
    /// Zero-copy mode: `payload[seq_len..]`, shared by every frame's body on the wire.
    wire: Option<Arc<[u8]>>,
}

impl Template {
    fn new(plan: &Plan) -> Self {
        Self::with(plan.payload.clone(), plan.opcode())
    }

    fn with(payload: Vec<u8>, opcode: u8) -> Self {
        let len = payload.len();
        let mut head = vec![0x80 | opcode];
        if len < 126 {
            head.push(0x80 | len as u8);
        } else if len <= usize::from(u16::MAX) {
            head.push(0x80 | 126);
            head.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            head.push(0x80 | 127);
            head.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let seq_len = payload.len().min(SEQ_DIGITS);
        let wire = (opcode == OP_BINARY && payload.len() >= ZERO_COPY_MIN)
            .then(|| Arc::from(&payload[seq_len..]));
        Self {
            head,
            payload,
            seq_len,
            opcode,
            wire,
        }
    }

    /// Appends message number `seq`, masked with `mask`, to `out`: the header, then the
    /// payload copied and masked in one pass.
    fn write(&self, out: &mut OutBuf, seq: u64, mask: [u8; 4]) {
        let h = self.head.len();
        if let Some(wire) = &self.wire {
            // Header, key and masked sequence number here; the body is `wire` as it is.
            let n = self.seq_len;
            let chunk = out.slot(h + 4 + n);
            chunk[..h].copy_from_slice(&self.head);
            chunk[h..h + 4].copy_from_slice(&mask);
            chunk[h + 4..].copy_from_slice(&masked_seq(seq, n, mask)[..n]);
            out.push_body(wire);
            return;
        }
        let frame = out.slot(h + 4 + self.payload.len());
        frame[..h].copy_from_slice(&self.head);
        frame[h..h + 4].copy_from_slice(&mask);
        let body = &mut frame[h + 4..];
        let n = self.seq_len;
        body[..n].copy_from_slice(&masked_seq(seq, n, mask)[..n]);
        // `n` is SEQ_DIGITS (a multiple of 4: key phase 0 again) or the whole payload.
        copy_masked(&mut body[n..], &self.payload[n..], mask);
    }

    /// Whether `payload` is the echo of message number `seq`, sent masked with `mask`.
    fn matches(&self, payload: &[u8], seq: u64, mask: [u8; 4]) -> bool {
        if payload.len() != self.payload.len() {
            return false;
        }
        let digits = hex8(seq);
        let n = self.seq_len;
        let same = if n == SEQ_DIGITS {
            // A fixed-length comparison: one `u64` compare, no `memcmp` call.
            payload[..SEQ_DIGITS] == digits
        } else {
            payload[..n] == digits[SEQ_DIGITS - n..]
        };
        if !same {
            return false;
        }
        match &self.wire {
            // The server unmasked the shared body: it must come back as `wire XOR mask`
            // (the body starts at SEQ_DIGITS, a multiple of 4: key phase 0).
            Some(wire) => eq_masked(&payload[self.seq_len..], wire, mask),
            None => payload[self.seq_len..] == self.payload[self.seq_len..],
        }
    }
}

/// Bodies from this size on are checked with AVX2 when the CPU has it.
const AVX2_MIN: usize = 256;

/// Whether `got == wire XOR mask` (RFC 6455 masking from key phase 0), in one pass over `u64`
/// words without an early exit, which the compiler vectorises: with 32-byte AVX2 registers
/// when the CPU has them (detected at run time; the portable build only has 16-byte SSE2,
/// and this check was ~9% of the bench's CPU on 64 KiB echoes).
fn eq_masked(got: &[u8], wire: &[u8], mask: [u8; 4]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if got.len() >= AVX2_MIN && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), the only requirement of calling a
        // `target_feature(enable = "avx2")` function.
        return unsafe { eq_masked_avx2(got, wire, mask) };
    }
    eq_masked_words(got, wire, mask)
}

/// [`eq_masked_words`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn eq_masked_avx2(got: &[u8], wire: &[u8], mask: [u8; 4]) -> bool {
    eq_masked_words(got, wire, mask)
}

#[inline(always)]
fn eq_masked_words(got: &[u8], wire: &[u8], mask: [u8; 4]) -> bool {
    if got.len() != wire.len() {
        return false;
    }
    let key8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut g = got.chunks_exact(8);
    let mut w = wire.chunks_exact(8);
    let mut diff = 0u64;
    for (g, w) in (&mut g).zip(&mut w) {
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        a.copy_from_slice(g);
        b.copy_from_slice(w);
        diff |= u64::from_ne_bytes(a) ^ u64::from_ne_bytes(b) ^ key8;
    }
    for ((g, w), m) in g
        .remainder()
        .iter()
        .zip(w.remainder())
        .zip(mask.iter().cycle())
    {
        diff |= u64::from(g ^ w ^ m);
    }
    diff == 0
}

/// `dst = src` masked with `mask` (RFC 6455 §5.3), eight bytes at a time on a `u64` (the
/// compiler vectorises this loop; a byte-wise zip over 32-byte chunks was not, and cost
/// the load generator 40% of its CPU on 64 KiB messages).
fn copy_masked(dst: &mut [u8], src: &[u8], mask: [u8; 4]) {
    let key8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let mut w = [0u8; 8];
        w.copy_from_slice(s);
        d.copy_from_slice(&(u64::from_ne_bytes(w) ^ key8).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, hence of 4: the mask phase is 0 again.
    for ((d, s), m) in d
        .into_remainder()
        .iter_mut()
        .zip(s.remainder())
        .zip(mask.iter().cycle())
    {
        *d = s ^ m;
    }
}

/// Bytes waiting to be written on one connection; its buffer only grows, so that steady
/// state writes frames into memory that is already there. Zero-copy frame bodies (shared
/// buffers) are spliced into that byte stream at recorded offsets and go out with `writev`.
#[derive(Default)]
struct OutBuf {
    buf: Vec<u8>,
    /// `buf[pos..len]` is pending.
    pos: usize,
    len: usize,
    /// Shared bodies, in order: `(offset, body)` goes out right after `buf[..offset]`.
    bodies: VecDeque<(usize, Arc<[u8]>)>,
    /// Bytes of the front body already written (only while `pos` is at its offset).
    body_written: usize,
}

impl OutBuf {
    /// `n` more bytes at the end of the pending ones, to be filled by the caller.
    fn slot(&mut self, n: usize) -> &mut [u8] {
        if self.is_empty() {
            self.pos = 0;
            self.len = 0;
        }
        let end = self.len + n;
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        let start = self.len;
        self.len = end;
        &mut self.buf[start..end]
    }

    fn push(&mut self, bytes: &[u8]) {
        self.slot(bytes.len()).copy_from_slice(bytes);
    }

    /// Appends a shared body (after the bytes pushed so far).
    fn push_body(&mut self, body: &Arc<[u8]>) {
        self.bodies.push_back((self.len, body.clone()));
    }

    fn is_empty(&self) -> bool {
        self.pos == self.len && self.bodies.is_empty()
    }

    /// The pending bytes when no shared body is queued (one contiguous `write`).
    fn contiguous(&self) -> Option<&[u8]> {
        self.bodies
            .is_empty()
            .then(|| &self.buf[self.pos..self.len])
    }

    /// The first pending pieces, in order, as `writev` buffers; returns how many were set.
    fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut k = 0;
        let mut at = self.pos;
        for (n, (off, body)) in self.bodies.iter().enumerate() {
            if k + 2 > iov.len() {
                return k;
            }
            if at < *off {
                iov[k] = IoSlice::new(&self.buf[at..*off]);
                k += 1;
            }
            let skip = if n == 0 { self.body_written } else { 0 };
            iov[k] = IoSlice::new(&body[skip..]);
            k += 1;
            at = *off;
        }
        if at < self.len && k < iov.len() {
            iov[k] = IoSlice::new(&self.buf[at..self.len]);
            k += 1;
        }
        k
    }

    /// `n` pending bytes were written.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let next_body = self.bodies.front().map_or(self.len, |b| b.0);
            if self.pos < next_body {
                let k = n.min(next_body - self.pos);
                self.pos += k;
                n -= k;
                continue;
            }
            let Some((_, body)) = self.bodies.front() else {
                debug_assert!(false, "consumed more than was pending");
                return;
            };
            let k = n.min(body.len() - self.body_written);
            self.body_written += k;
            n -= k;
            if self.body_written == body.len() {
                self.bodies.pop_front();
                self.body_written = 0;
            }
        }
    }
}

/// The low 32 bits of `seq` as eight lower-case hex digits, most significant first (ASCII, so
/// that text messages stay valid UTF-8), computed on one `u64` at once: the nibbles are spread
/// to one per byte, then each byte gets `'0'`, plus `'a' - '0' - 10` when it is above 9.
fn hex8(seq: u64) -> [u8; SEQ_DIGITS] {
    let x = seq & 0xFFFF_FFFF;
    let x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    let x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    let x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    // 1 in each byte above 9 (nibble + 6 carries into bit 4), else 0.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10)).to_be_bytes()
}

/// Writes the low bits of `seq` as lower-case hex digits filling `out` (at most
/// [`SEQ_DIGITS`] of them).
fn write_seq(out: &mut [u8], seq: u64) {
    out.copy_from_slice(&hex8(seq)[SEQ_DIGITS - out.len()..]);
}

/// The first `n` (at most [`SEQ_DIGITS`]) bytes of the result are the payload's sequence
/// digits masked with `mask` from key phase 0, as they go on the wire.
fn masked_seq(seq: u64, n: usize, mask: [u8; 4]) -> [u8; SEQ_DIGITS] {
    let mut digits = [0u8; SEQ_DIGITS];
    write_seq(&mut digits[..n], seq);
    let key8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    (u64::from_ne_bytes(digits) ^ key8).to_ne_bytes()
}

struct EventLoop<'p> {
    plan: &'p Plan,
    poll: Poll,
    conns: Vec<Conn>,
    template: Template,
    rng: StdRng,
    /// Time zero of the send stamps in [`Conn::sent`].
    origin: Instant,
    /// The current clock reading: when it was read, and the same as nanoseconds since `origin`.
    now: Instant,
    now_ns: u64,
    /// Latencies (ns) of the echoes received since the clock was last read, all completed at
    /// `now`; handed to the report in one batch.
    latencies: Vec<u64>,
}

impl<'p> EventLoop<'p> {
    fn new(plan: &'p Plan, socks: Vec<(std::net::TcpStream, Vec<u8>)>) -> anyhow::Result<Self> {
        let now = Instant::now();
        let poll = Poll::new().context("cannot create the event loop (epoll)")?;
        // Room for a whole batch of replies, so that one read usually takes them all.
        let frame = plan.size + MAX_HEADER;
        let cap = (frame * plan.in_flight)
            .clamp(16 * 1024, 4 * 1024 * 1024)
            .max(frame * 2);
        let mut conns = Vec::with_capacity(socks.len());
        for (i, (std, early)) in socks.into_iter().enumerate() {
            let mut sock = TcpStream::from_std(std);
            poll.registry()
                .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                .context("cannot register a socket with the event loop")?;
            let mut rbuf = vec![0u8; cap.max(early.len())];
            rbuf[..early.len()].copy_from_slice(&early);
            conns.push(Conn {
                sock: Some(sock),
                state: State::Running,
                rbuf,
                rpos: 0,
                rlen: early.len(),
                out: OutBuf::default(),
                sent: VecDeque::with_capacity(plan.in_flight),
                next_out: 0,
                next_in: 0,
            });
        }
        Ok(Self {
            plan,
            poll,
            conns,
            template: Template::new(plan),
            // A CSPRNG (ChaCha12), seeded once from the OS: fresh unpredictable masking keys
            // for every frame at a few nanoseconds each.
            rng: StdRng::from_os_rng(),
            origin: now,
            now,
            now_ns: 0,
            latencies: Vec::with_capacity(1024),
        })
    }

    /// Counts the echoes of the current batch (all received at `self.now`) and reads the clock.
    fn tick(&mut self, window: &Window, report: &mut Report) {
        self.record(window, report);
        self.now = Instant::now();
        self.now_ns = ns_between(self.origin, self.now);
    }

    /// Counts the echoes of the current batch.
    fn record(&mut self, window: &Window, report: &mut Report) {
        if self.latencies.is_empty() {
            return;
        }
        report.complete_all(self.now, &self.latencies, window);
        if let Some(live) = &report.live {
            live.done
                .fetch_add(self.latencies.len() as u64, Ordering::Relaxed);
        }
        self.latencies.clear();
    }

    fn run(mut self, window: Window, report: &mut Report) -> anyhow::Result<()> {
        let mut events = Events::with_capacity(1024);
        self.tick(&window, report);
        for i in 0..self.conns.len() {
            self.queue(i, self.plan.in_flight);
            self.step(i, report, |c, _| c.flush());
            // Frames that came with the 101 response.
            if self.conns[i].rlen > 0 {
                self.on_readable(i, window, report);
            }
        }
        let grace_end = window.end + GRACE;
        let mut close_end = None;
        loop {
            self.tick(&window, report);
            let now = self.now;
            if now >= window.end && close_end.is_none() {
                // Stop sending; each connection still counts the read that ends it.
                for c in &mut self.conns {
                    if c.state == State::Running {
                        c.state = if c.sent.is_empty() {
                            State::Done
                        } else {
                            State::Draining
                        };
                    }
                }
                let waiting = self.conns.iter().any(|c| c.state == State::Draining);
                if !waiting || now >= grace_end {
                    for i in 0..self.conns.len() {
                        if self.conns[i].state == State::Draining {
                            report.error_of("timeout", || {
                                "a reply did not arrive within 2 s after the end of the run".into()
                            });
                            self.conns[i].state = State::Done;
                        }
                        self.start_close(i);
                    }
                    close_end = Some(now + CLOSE_WAIT);
                }
            }
            if let Some(t) = close_end {
                if now >= t || self.conns.iter().all(|c| c.state == State::Closed) {
                    return Ok(());
                }
            }
            let deadline = close_end.unwrap_or(if now < window.end {
                window.end
            } else {
                grace_end
            });
            match self
                .poll
                .poll(&mut events, Some(deadline.saturating_duration_since(now)))
            {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("the event loop (epoll) failed"),
            }
            for (n, ev) in events.iter().enumerate() {
                if n % CLOCK_EVERY == 0 {
                    self.tick(&window, report);
                }
                let i = ev.token().0;
                match self.conns.get(i) {
                    Some(c) if c.sock.is_some() => {}
                    _ => continue,
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(i, window, report);
                }
                if ev.is_writable() {
                    self.step(i, report, |c, _| c.flush());
                }
            }
        }
    }

    /// Runs `f` on connection `i`; an error is counted and closes the connection.
    fn step(
        &mut self,
        i: usize,
        report: &mut Report,
        f: impl FnOnce(&mut Conn, &mut Report) -> anyhow::Result<()>,
    ) {
        let c = &mut self.conns[i];
        if c.sock.is_none() {
            return;
        }
        if let Err(e) = f(c, report) {
            if matches!(c.state, State::Running | State::Draining) {
                report.fail(&e);
            }
            c.sock = None;
            c.state = State::Closed;
        }
    }

    /// Queues `n` new messages on connection `i`, each with a fresh masking key, stamped with
    /// the current clock reading.
    fn queue(&mut self, i: usize, n: usize) {
        let c = &mut self.conns[i];
        for _ in 0..n {
            let mask: [u8; 4] = self.rng.random::<u32>().to_ne_bytes();
            self.template.write(&mut c.out, c.next_out, mask);
            c.next_out += 1;
            c.sent.push_back((self.now_ns, mask));
        }
    }

    /// Reads what connection `i` has, checks and counts the echoes, and answers them.
    fn on_readable(&mut self, i: usize, window: Window, report: &mut Report) {
        loop {
            let c = &mut self.conns[i];
            let Some(sock) = c.sock.as_mut() else { return };
            let room = c.rbuf.len() - c.rlen;
            // (bytes read, end of stream, socket drained)
            let (n, eof, drained) = match sock.read(&mut c.rbuf[c.rlen..]) {
                Ok(0) if room > 0 => (0, true, true),
                Ok(n) => (n, false, n < room),
                Err(e) if e.kind() == ErrorKind::WouldBlock => (0, false, true),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    let e = anyhow::Error::new(e).context("connection error during the run");
                    return self.step(i, report, |_, _| Err(e));
                }
            };
            c.rlen += n;
            match c.state {
                State::Closing | State::Done | State::Closed => {
                    // Whatever comes after the run (the server's close frame) is dropped.
                    c.rpos = 0;
                    c.rlen = 0;
                    if eof {
                        c.sock = None;
                        c.state = State::Closed;
                        return;
                    }
                }
                State::Running | State::Draining => {
                    if eof {
                        return self.step(i, report, |_, _| {
                            Err(Fail::ClosedEarly(
                                "the server closed the TCP connection in the middle of the run"
                                    .into(),
                            )
                            .into())
                        });
                    }
                    let plan = self.plan;
                    let template = &self.template;
                    let rng = &mut self.rng;
                    let c = &mut self.conns[i];
                    let got = c.take_replies(plan, template, rng, self.now_ns, &mut self.latencies);
                    let replies = match got {
                        Ok(n) => n,
                        Err(e) => return self.step(i, report, |_, _| Err(e)),
                    };
                    if replies > 0 {
                        if c.state == State::Draining {
                            c.state = State::Done;
                        } else if self.now < window.end {
                            self.queue(i, replies);
                        }
                    }
                    self.step(i, report, |c, _| c.flush());
                }
            }
            if drained {
                return;
            }
        }
    }

    /// Sends a close frame on connection `i` (if it is still open) and waits for the end.
    fn start_close(&mut self, i: usize) {
        let mask: [u8; 4] = self.rng.random::<u32>().to_ne_bytes();
        let c = &mut self.conns[i];
        if c.sock.is_none() {
            return;
        }
        let mut frame = Vec::with_capacity(8);
        push_frame(&mut frame, OP_CLOSE, &1000u16.to_be_bytes(), mask);
        c.out.push(&frame);
        c.state = State::Closing;
        if c.flush_quiet().is_err() {
            c.sock = None;
            c.state = State::Closed;
        }
    }
}

impl Conn {
    /// Writes pending frames until done or the socket is full (the rest goes on the next
    /// writable event).
    fn flush(&mut self) -> anyhow::Result<()> {
        self.flush_quiet()
            .context("connection error during the run")
    }

    fn flush_quiet(&mut self) -> std::io::Result<()> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(());
        };
        while !self.out.is_empty() {
            let written = match self.out.contiguous() {
                Some(bytes) => sock.write(bytes),
                None => {
                    let mut iov = [IoSlice::new(&[]); MAX_IOV];
                    let k = self.out.slices(&mut iov);
                    sock.write_vectored(&iov[..k])
                }
            };
            match written {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.out.consume(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Parses every complete frame received, answers pings, checks the echoes and adds their
    /// latencies (received at `now_ns`) to `latencies`. Returns the number of echoes.
    fn take_replies(
        &mut self,
        plan: &Plan,
        template: &Template,
        rng: &mut StdRng,
        now_ns: u64,
        latencies: &mut Vec<u64>,
    ) -> anyhow::Result<usize> {
        let mut replies = 0usize;
        loop {
            let largest = plan.size.max(MAX_CONTROL);
            let Some((head, range)) = next_frame(&self.rbuf, &mut self.rpos, self.rlen, largest)?
            else {
                break;
            };
            let payload = &self.rbuf[range];
            match head.opcode {
                op if op == template.opcode => {
                    let Some(&(sent_at, mask)) = self.sent.front() else {
                        return Err(Fail::Protocol(
                            "the server echoed more messages than were sent".into(),
                        )
                        .into());
                    };
                    if !template.matches(payload, self.next_in, mask) {
                        let what = if payload.len() == plan.size {
                            format!(
                                "echo number {} on this connection is not the message sent \
                                 with that number (lost, reordered or altered)",
                                self.next_in
                            )
                        } else {
                            format!("{} bytes back, {} sent", payload.len(), plan.size)
                        };
                        return Err(Fail::Protocol(format!(
                            "echoed payload differs from the one sent ({what})"
                        ))
                        .into());
                    }
                    self.sent.pop_front();
                    self.next_in += 1;
                    latencies.push(now_ns.saturating_sub(sent_at));
                    replies += 1;
                }
                OP_PING => {
                    let mask: [u8; 4] = rng.random::<u32>().to_ne_bytes();
                    let mut pong = Vec::with_capacity(payload.len() + 6);
                    push_frame(&mut pong, OP_PONG, payload, mask);
                    self.out.push(&pong);
                }
                OP_PONG => {}
                OP_CLOSE => {
                    return Err(Fail::ClosedEarly(
                        "the server sent a close frame in the middle of the run".into(),
                    )
                    .into())
                }
                op => {
                    return Err(Fail::Protocol(format!(
                        "the server sent opcode {op:#x}; expected {:#x} echoes",
                        template.opcode
                    ))
                    .into())
                }
            }
        }
        // Compact: move a partial frame to the front.
        if self.rpos == self.rlen {
            self.rpos = 0;
            self.rlen = 0;
        } else if self.rpos > 0 && self.rbuf.len() - self.rlen < MAX_HEADER + plan.size {
            self.rbuf.copy_within(self.rpos..self.rlen, 0);
            self.rlen -= self.rpos;
            self.rpos = 0;
        }
        Ok(replies)
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{apply_mask, parse_head, OP_TEXT};
    use super::*;

    #[test]
    fn sequence_digits() {
        let mut d = [0u8; 8];
        write_seq(&mut d, 0x1234_abcd);
        assert_eq!(&d, b"1234abcd");
        let mut d = [0u8; 3];
        write_seq(&mut d, 0xfff_0a1);
        assert_eq!(&d, b"0a1");
        write_seq(&mut [], 5);
    }

    /// The digit-by-digit conversion `hex8` replaced.
    fn hex_reference(seq: u64, n: usize) -> Vec<u8> {
        (0..n)
            .rev()
            .map(|k| b"0123456789abcdef"[((seq >> (4 * k)) & 0xF) as usize])
            .collect()
    }

    #[test]
    fn hex8_is_the_digit_by_digit_conversion() {
        let mut values = vec![0u64, 1, 9, 10, 15, 16, 0xff, 0x1234_abcd, 0xffff_ffff];
        values.extend([0x1_0000_0000, u64::MAX, 0x9a9a_9a9a_09af_fa90]);
        // Every nibble value at every position, and a spread of others.
        values.extend((0..8).flat_map(|k| (0..16u64).map(move |d| d << (4 * k))));
        values.extend((0..5000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        for seq in values {
            assert_eq!(hex8(seq).to_vec(), hex_reference(seq, 8), "{seq:#x}");
            for n in 0..=SEQ_DIGITS {
                let mut out = vec![0u8; n];
                write_seq(&mut out, seq);
                assert_eq!(out, hex_reference(seq, n), "{seq:#x} n {n}");
                let mask = [0x5a, 0x00, 0xff, 0x81];
                let masked = masked_seq(seq, n, mask);
                let want: Vec<u8> = hex_reference(seq, n)
                    .iter()
                    .enumerate()
                    .map(|(k, d)| d ^ mask[k % 4])
                    .collect();
                assert_eq!(masked[..n].to_vec(), want, "{seq:#x} n {n}");
            }
        }
    }

    #[test]
    fn a_batch_counts_like_one_message_at_a_time() {
        let t0 = Instant::now();
        let window = Window {
            t0,
            measure_from: t0 + Duration::from_millis(500),
            end: t0 + Duration::from_millis(2500),
        };
        let lat = [1_000u64, 250_000, 3_000_000, 999];
        for at_ms in [100u64, 600, 1700, 2600] {
            let at = t0 + Duration::from_millis(at_ms);
            let (mut one, mut all) = (Report::new(), Report::new());
            one.origin = Some(t0);
            all.origin = Some(t0);
            for &ns in &lat {
                one.complete(at, Duration::from_nanos(ns), &window);
            }
            all.complete_all(at, &lat, &window);
            all.complete_all(at, &[], &window);
            assert_eq!((all.total, all.completed), (one.total, one.completed));
            let inside = (500..2500).contains(&at_ms);
            assert_eq!(all.completed, if inside { 4 } else { 0 }, "at {at_ms} ms");
            assert_eq!(all.latency.len(), one.latency.len());
            assert_eq!(all.latency.max(), one.latency.max());
            assert_eq!(all.series.len(), one.series.len());
            let (a, o) = (
                &all.series[at_ms as usize / 1000],
                &one.series[at_ms as usize / 1000],
            );
            assert_eq!(
                (a.completed, a.latency.len()),
                (o.completed, o.latency.len())
            );
            assert_eq!(a.completed, 4);
        }
    }

    #[test]
    fn copy_masked_is_the_rfc_mask() {
        let mask = [0xa1, 0x02, 0x7f, 0xe4];
        for len in [
            0usize, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 64, 100, 65535, 65536,
        ] {
            let src: Vec<u8> = (0..len).map(|i| (i * 13 + 7) as u8).collect();
            let mut dst = vec![0u8; len];
            copy_masked(&mut dst, &src, mask);
            let want: Vec<u8> = src
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(dst, want, "len {len}");
        }
    }

    fn template(size: usize, binary: bool) -> Template {
        let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        Template::with(payload, if binary { OP_BINARY } else { OP_TEXT })
    }

    /// Everything `out` would write, written in pieces of `step` bytes.
    fn drain(out: &mut OutBuf, step: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while !out.is_empty() {
            let mut iov = [IoSlice::new(&[]); 3];
            let k = out.slices(&mut iov);
            let all: Vec<u8> = iov[..k].iter().flat_map(|s| s.iter().copied()).collect();
            let n = step.min(all.len());
            got.extend_from_slice(&all[..n]);
            out.consume(n);
        }
        got
    }

    #[test]
    fn shared_bodies_keep_the_stream_order_through_partial_writes() {
        let body: Arc<[u8]> = Arc::from(&b"BODY-BODY"[..]);
        for step in [1usize, 2, 3, 5, 8, 13, 100] {
            let mut out = OutBuf::default();
            out.push(b"h1");
            out.push_body(&body);
            out.push_body(&body);
            out.push(b"h2");
            out.push_body(&body);
            out.push(b"tail");
            assert_eq!(
                drain(&mut out, step),
                b"h1BODY-BODYBODY-BODYh2BODY-BODYtail",
                "step {step}"
            );
            // Empty again: the buffer is reused from the start.
            out.push(b"x");
            assert_eq!(out.contiguous(), Some(&b"x"[..]));
        }
    }

    #[test]
    fn eq_masked_finds_any_altered_byte_at_any_alignment() {
        let mask = [0x77, 0x01, 0x80, 0xc3];
        for len in [AVX2_MIN - 1, AVX2_MIN, AVX2_MIN + 1, 300, 1000, 4099] {
            let wire: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            for align in 0..8 {
                // `got` starts `align` bytes into its buffer, as an echo does after its header.
                let mut buf = vec![0u8; align];
                buf.extend(wire.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                assert!(
                    eq_masked(&buf[align..], &wire, mask),
                    "len {len} align {align}"
                );
                assert!(eq_masked_words(&buf[align..], &wire, mask));
                for at in (0..len).step_by(29).chain([len - 1]) {
                    buf[align + at] ^= 0x10;
                    assert!(!eq_masked(&buf[align..], &wire, mask), "len {len} at {at}");
                    assert!(!eq_masked_words(&buf[align..], &wire, mask));
                    buf[align + at] ^= 0x10;
                }
            }
        }
    }

    #[test]
    fn eq_masked_is_the_rfc_mask() {
        let mask = [0x3c, 0x91, 0x00, 0xfe];
        for len in [
            0usize, 1, 4, 7, 8, 9, 63, 64, 65, 255, 256, 257, 4096, 65528,
        ] {
            let wire: Vec<u8> = (0..len).map(|i| (i * 31 + 3) as u8).collect();
            let got: Vec<u8> = wire
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert!(eq_masked(&got, &wire, mask), "len {len}");
            for at in [0, len / 2, len.saturating_sub(1)] {
                if len > 0 {
                    let mut bad = got.clone();
                    bad[at] ^= 0x40;
                    assert!(!eq_masked(&bad, &wire, mask), "len {len} at {at}");
                }
            }
            assert!(len < 4 || !eq_masked(&got, &wire, [0x3c, 0x91, 0x00, 0xff]));
            assert!(len == 0 || !eq_masked(&got[1..], &wire, mask));
        }
    }

    #[test]
    fn frames_are_masked_numbered_and_checked() {
        let cases = [
            (0usize, false),
            (5, false),
            (16, false),
            (125, true),
            (126, true),
            (ZERO_COPY_MIN - 1, true),
            (ZERO_COPY_MIN, true),
            (70000, true),
            (70000, false),
        ];
        for (size, binary) in cases {
            let t = template(size, binary);
            assert_eq!(t.wire.is_some(), binary && size >= ZERO_COPY_MIN);
            let mut out = OutBuf::default();
            let masks = [[1, 2, 3, 4], [0xde, 0xad, 0xbe, 0xef]];
            t.write(&mut out, 0x2a, masks[0]);
            t.write(&mut out, 0x2b, masks[1]);
            let mut buf = drain(&mut out, 1000);
            let mut bodies = Vec::new();
            for mask in masks {
                let h = parse_head(&buf).expect("header");
                assert!(h.fin && h.masked && h.rsv == 0, "size {size}");
                assert_eq!(h.opcode, t.opcode);
                assert_eq!(h.payload_len, size as u64);
                assert_eq!(&buf[h.header_len - 4..h.header_len], &mask);
                let end = h.header_len + size;
                let mut body = buf[h.header_len..end].to_vec();
                apply_mask(&mut body, mask);
                bodies.push(body);
                buf.drain(..end);
            }
            assert!(buf.is_empty());
            // Each echo matches its own number (and key) only; text stays ASCII.
            let [m0, m1] = masks;
            assert!(t.matches(&bodies[0], 0x2a, m0) && t.matches(&bodies[1], 0x2b, m1));
            if size > 0 {
                assert!(!t.matches(&bodies[0], 0x2b, m0), "size {size}");
                assert!(t.wire.is_some() || bodies[0].is_ascii(), "size {size}");
            }
            if size > SEQ_DIGITS {
                assert_eq!(&bodies[1][..8], b"0000002b");
                let mut altered = bodies[1].clone();
                *altered.last_mut().expect("non-empty") ^= 1;
                assert!(!t.matches(&altered, 0x2b, m1));
                // A shared body differs per frame (it is `wire XOR key`); the check needs the
                // frame's own key.
                if t.wire.is_some() {
                    assert_ne!(bodies[0][8..], bodies[1][8..]);
                    assert!(!t.matches(&bodies[1], 0x2b, m0));
                }
            }
            assert!(!t.matches(&bodies[0][..size.saturating_sub(1)], 0x2a, m0) || size == 0);
        }
    }
}

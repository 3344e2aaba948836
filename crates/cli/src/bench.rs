//! `switchyard bench`: a WebSocket load generator.
//!
//! Modes:
//! - echo (default): `--connections` connections, each keeping `--in-flight` messages of
//!   `--size` bytes outstanding (closed loop). A reply is matched to its request in FIFO order;
//!   latency is measured from the time the request batch was written.
//! - `--handshakes`: every connection slot loops connect → upgrade request → 101 checked →
//!   close handshake → socket dropped, and the rate of completed cycles is reported.
//! - `--idle N`: open N idle WebSocket connections, print `ready` and hold them until killed
//!   (or for `--duration` seconds when it is given).
//! - `--rate N` (echo): open loop at N messages per second over all connections, each message
//!   timed from its scheduled send time (no coordinated omission; see [`plan::TIMER_SLACK`]).
//!
//! `--ramp-up D` opens the connections (or starts the handshake loops) gradually over D seconds
//! before the warm-up. The result is a multi-line summary, or `--json`; `--html FILE` also
//! writes a self-contained report (`bench/report.rs`) from the JSON, whose per-second `series`
//! comes from one small histogram per second of the run. A progress bar (`bench/progress.rs`)
//! runs on stderr when it is a terminal. Errors are counted by kind ([`Fail`], [`error_kind`]).
//!
//! The generator must never be the bottleneck, so the client is hand-written: one write syscall
//! per batch of frames, one read syscall per batch of replies, one receive buffer per
//! connection. Plain `ws://` closed-loop echo runs (what measures a server's throughput) go
//! through `bench/raw.rs`: after the handshakes, ONE `mio` event loop per thread drives all of
//! its connections, with no task, waker or timer per message; the other modes run on raw tokio
//! `TcpStream`s. It still speaks WebSocket correctly: client frames are masked with a fresh key
//! per frame from a CSPRNG (ChaCha12), the 101 response and its `Sec-WebSocket-Accept` are
//! checked, and every echoed frame is parsed (FIN, opcode, length, mask bit, payload) so that
//! anything unexpected is counted as an error.
//!
//! Transports: `ws://` is cleartext TCP; `wss://` is TLS (switchyard's client TLS
//! configuration: system roots, `--ca`, `--insecure`; ALPN http/1.1) with the same
//! hand-written framing on top; `--http2` opens the WebSockets as RFC 8441 streams with
//! `switchyard::h2::H2Connection` (`--streams` per HTTP/2 connection; TLS with ALPN h2 for
//! `wss://`, prior knowledge for `ws://`), then frames each stream by hand like the others.
//! `--transport sse|poll` echoes through a switchyard gateway's fallback sessions instead,
//! with the library's session client (`bench/session.rs`).
//!
//! Work runs on `--threads` OS threads (default: the CPUs this process may run on, so `taskset`
//! decides), each with its own current-thread tokio runtime; connections are dealt round-robin.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io::IsTerminal as _;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

mod args;
mod cpu;
mod frame;
mod plan;
mod progress;
mod raw;
pub(crate) mod report;
mod session;
pub(crate) mod summary;
mod tally;
mod wire;

pub use args::BenchArgs;
use cpu::*;
use frame::*;
use plan::*;
use summary::*;
use tally::*;
use wire::*;

/// Runs the benchmark described by `args` and prints its result on stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let target = Target::parse(&args.url)?;
    let plan = Plan::from_args(&args, target).await?;
    let plan = Arc::new(plan);
    let mode = if args.idle.is_some() {
        Mode::Idle
    } else if args.handshakes {
        Mode::Handshakes
    } else {
        Mode::Echo
    };
    match mode {
        Mode::Idle => run_idle(plan, args.json).await,
        Mode::Echo | Mode::Handshakes => {
            let report = if std::io::stderr().is_terminal() {
                let phases = progress::Phases {
                    ramp_up: plan.ramp_up,
                    warmup: plan.warmup,
                    duration: plan.duration.unwrap_or_default(),
                };
                let unit = if mode == Mode::Echo {
                    "msgs"
                } else {
                    "handshakes"
                };
                let work = run_threads(plan.clone(), mode);
                let bar = progress::show(&plan.live, phases, unit);
                let r = tokio::select! {
                    r = work => r,
                    () = bar => unreachable_bar(),
                };
                progress::clear();
                r?
            } else {
                run_threads(plan.clone(), mode).await?
            };
            let summary = summary_json(&plan, mode, &report);
            if let Some(path) = &args.html {
                std::fs::write(path, report::html(&summary)).with_context(|| {
                    format!("cannot write the HTML report to {}", path.display())
                })?;
            }
            if args.json {
                println!("{summary}");
            } else {
                print!("{}", summary_text(&summary));
            }
            if report.completed == 0 {
                bail!(
                    "no {} completed against {} ({} errors{}); is an echo server listening there?",
                    if mode == Mode::Echo {
                        "message"
                    } else {
                        "handshake"
                    },
                    plan.target.url,
                    report.errors,
                    report
                        .first_error
                        .as_deref()
                        .map(|e| format!(", first: {e}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

/// Open loop: most bytes queued for one connection's socket before sending waits.
const MAX_PENDING_WRITE: usize = 4 * 1024 * 1024;
async fn run_threads(plan: Arc<Plan>, mode: Mode) -> anyhow::Result<Report> {
    let wall = Instant::now();
    let cpu0 = process_cpu_seconds();
    let barrier = Arc::new(Barrier::new(plan.threads));
    let start: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let (done, done_rx) = std::sync::mpsc::channel::<()>();
    let sampler = {
        let (plan, start) = (plan.clone(), start.clone());
        std::thread::Builder::new()
            .name("bench-cpu".into())
            .spawn(move || sample_cpu_busy(plan, start, done_rx))
            .context("cannot start the CPU sampling thread")?
    };
    let mut handles = Vec::with_capacity(plan.threads);
    for t in 0..plan.threads {
        let plan = plan.clone();
        let barrier = barrier.clone();
        let start = start.clone();
        let handle = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || worker_thread(plan, mode, t, barrier, start))
            .context("cannot start a load-generator thread")?;
        handles.push(handle);
    }
    let joined = tokio::task::spawn_blocking(move || {
        handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()
    })
    .await
    .context("the load-generator threads could not be joined")?;
    drop(done);
    let cpu_busy = sampler.join().ok().flatten();
    let mut total = Report::new();
    total.cpu_busy = cpu_busy;
    for r in joined {
        match r {
            Ok(Ok(rep)) => total.merge(rep),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("a load-generator thread panicked"),
        }
    }
    if let (Some(a), Some(b)) = (cpu0, process_cpu_seconds()) {
        let secs = wall.elapsed().as_secs_f64().max(1e-9);
        total.client_cpu = Some((b - a) / secs / plan.threads as f64);
        total.client_cpu_seconds = Some(b - a);
    }
    Ok(total)
}

fn worker_thread(
    plan: Arc<Plan>,
    mode: Mode,
    index: usize,
    barrier: Arc<Barrier>,
    start: Arc<OnceLock<Instant>>,
) -> anyhow::Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a tokio runtime for a load-generator thread")?;
    if let Some(transport) = plan.fallback {
        return session::worker(&plan, transport, index, &rt, &barrier, &start);
    }
    if mode == Mode::Echo && raw::eligible(&plan) {
        // Plain ws:// closed loop: the event loop of bench/raw.rs.
        return raw::worker(&plan, index, &rt, &barrier, &start);
    }
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let slots: Vec<usize> = (index..plan.connections).step_by(plan.threads).collect();
        let mut first = Report::new();
        first.live = Some(plan.live.clone());
        let report = Rc::new(RefCell::new(first));
        // HTTP/2 streams are opened up front (several share one connection).
        let ramp = !plan.ramp_up.is_zero() && plan.h2_streams == 0;
        let mut conns = Vec::new();
        if mode == Mode::Echo && plan.h2_streams > 0 {
            // HTTP/2: `h2_streams` WebSockets per connection, opened before the window.
            for chunk in slots.chunks(plan.h2_streams) {
                let opened = open_h2_streams(&plan, chunk.len()).await;
                for c in opened {
                    match c {
                        Ok((s, early)) => conns.push(EchoConn::on(s, early, &plan, Rng::new())),
                        Err(e) => report.borrow_mut().fail(&e),
                    }
                }
            }
        } else if mode == Mode::Echo && !ramp {
            // Connect everything first, outside the measured window.
            let opened =
                futures_util::future::join_all(slots.iter().map(|_| EchoConn::open(&plan))).await;
            for c in opened {
                match c {
                    Ok(c) => conns.push(c),
                    Err(e) => report.borrow_mut().fail(&e),
                }
            }
        }
        barrier.wait();
        let t0 = *start.get_or_init(Instant::now);
        report.borrow_mut().origin = Some(t0);
        let _ = plan.live.started.set(t0);
        let window = window_from(&plan, t0);
        // With --ramp-up, slot i starts at t0 + ramp_up * i / connections.
        let start_of = |i: usize| {
            t0 + plan
                .ramp_up
                .mul_f64(i as f64 / plan.connections.max(1) as f64)
        };
        let mut tasks = Vec::new();
        match mode {
            Mode::Echo => {
                let mut pre = conns.into_iter();
                for &i in &slots {
                    let report = report.clone();
                    let plan = plan.clone();
                    let ready = if ramp { None } else { pre.next() };
                    if !ramp && ready.is_none() {
                        continue;
                    }
                    let at = start_of(i);
                    tasks.push(tokio::task::spawn_local(async move {
                        let c = match ready {
                            Some(c) => c,
                            None => {
                                tokio::time::sleep_until(at.into()).await;
                                match EchoConn::open(&plan).await {
                                    Ok(c) => c,
                                    Err(e) => return report.borrow_mut().fail(&e),
                                }
                            }
                        };
                        let grace = window.end + Duration::from_secs(2);
                        let work = async {
                            match plan.rate {
                                Some(rate) => c.run_rate(&plan, i, rate, window, &report).await,
                                None => c.run(&plan, window, &report).await,
                            }
                        };
                        match tokio::time::timeout_at(grace.into(), work).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => report.borrow_mut().fail(&e),
                            Err(_) => report.borrow_mut().error_of("timeout", || {
                                "a reply did not arrive within 2 s after the end of the run".into()
                            }),
                        }
                    }));
                }
            }
            Mode::Handshakes => {
                for &i in &slots {
                    let report = report.clone();
                    let plan = plan.clone();
                    let at = start_of(i);
                    tasks.push(tokio::task::spawn_local(async move {
                        tokio::time::sleep_until(at.into()).await;
                        handshake_loop(&plan, window, &report).await;
                    }));
                }
            }
            Mode::Idle => {}
        }
        for t in tasks {
            let _ = t.await;
        }
        let mut rep = report.replace(Report::new());
        rep.measured = window.end.saturating_duration_since(window.measure_from);
        rep.live = None;
        Ok(rep)
    })
}

/// One echo connection, after its handshake.
struct EchoConn {
    stream: Stream,
    rng: Rng,
    /// Received bytes: `rbuf[rpos..rlen]` is unparsed.
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    sent: VecDeque<Instant>,
}

impl EchoConn {
    async fn open(plan: &Plan) -> anyhow::Result<Self> {
        let mut rng = Rng::new();
        let mut stream = connect(plan).await?;
        let early = handshake(&mut stream, plan, &mut rng).await?;
        Ok(Self::on(stream, early, plan, rng))
    }

    fn on(stream: Stream, early: Vec<u8>, plan: &Plan, rng: Rng) -> Self {
        // Room for a whole batch of replies, so that one read usually takes them all.
        let frame = plan.size + MAX_HEADER;
        let cap = (frame * plan.in_flight)
            .clamp(16 * 1024, 4 * 1024 * 1024)
            .max(frame * 2);
        let mut rbuf = vec![0u8; cap.max(early.len())];
        rbuf[..early.len()].copy_from_slice(&early);
        Self {
            stream,
            rng,
            rlen: early.len(),
            rbuf,
            rpos: 0,
            wbuf: Vec::with_capacity((frame + 4) * plan.in_flight),
            wpos: 0,
            sent: VecDeque::with_capacity(plan.in_flight),
        }
    }

    fn queue_messages(&mut self, plan: &Plan, n: usize, now: Instant) {
        for _ in 0..n {
            let mask = (self.rng.next() as u32).to_ne_bytes();
            push_frame(&mut self.wbuf, plan.opcode(), &plan.payload, mask);
            self.sent.push_back(now);
        }
    }

    /// Closed loop until `window.end`, then a close handshake.
    async fn run(
        mut self,
        plan: &Plan,
        window: Window,
        report: &RefCell<Report>,
    ) -> anyhow::Result<()> {
        self.queue_messages(plan, plan.in_flight, Instant::now());
        loop {
            let Some(n) = self.io(None).await? else {
                continue;
            };
            let now = Instant::now();
            let replies = self.take_replies(plan, n, now, window, report)?;
            if now >= window.end {
                // The measured window is over: replies still outstanding do not count.
                break;
            } else if replies > 0 {
                self.queue_messages(plan, replies, now);
            }
        }
        self.close().await;
        Ok(())
    }

    /// Open loop: this connection's share of `rate` messages per second, each sent at its
    /// scheduled time (late if the socket is blocked, but still timed from the schedule),
    /// until `window.end`, then a close handshake.
    async fn run_rate(
        mut self,
        plan: &Plan,
        slot: usize,
        rate: f64,
        window: Window,
        report: &RefCell<Report>,
    ) -> anyhow::Result<()> {
        let per_conn = rate / plan.connections as f64;
        let interval = Duration::from_secs_f64(1.0 / per_conn).max(Duration::from_nanos(1));
        // Spread the connections' schedules over one interval so that the total is smooth.
        let first =
            Instant::now().max(window.t0) + interval.mul_f64(slot as f64 / plan.connections as f64);
        let mut next = first;
        let sleep = tokio::time::sleep_until(next.into());
        tokio::pin!(sleep);
        loop {
            let read = self.io(Some(sleep.as_mut())).await?;
            let now = Instant::now();
            if let Some(n) = read {
                self.take_replies(plan, n, now, window, report)?;
            }
            if now >= window.end {
                break;
            }
            if next <= now {
                // Queue every message whose time has come, each stamped with its schedule
                // (forgiving the timer's own lateness, up to TIMER_SLACK).
                // At most MAX_PENDING_WRITE bytes wait for the socket: a target slower than
                // the rate delays the rest (still timed from their schedule) instead of
                // filling memory.
                while next <= now && next < window.end && self.wbuf.len() < MAX_PENDING_WRITE {
                    let mask = (self.rng.next() as u32).to_ne_bytes();
                    push_frame(&mut self.wbuf, plan.opcode(), &plan.payload, mask);
                    self.sent.push_back(now.min(next + TIMER_SLACK));
                    next += interval;
                }
                let wake = if self.wbuf.len() >= MAX_PENDING_WRITE {
                    // Backlogged: look again in a millisecond rather than spin.
                    now + Duration::from_millis(1)
                } else {
                    next.min(window.end)
                };
                sleep.as_mut().reset(wake.into());
            }
        }
        self.close().await;
        Ok(())
    }

    /// Accounts for `n` bytes just read: parses every complete frame, answers pings, checks
    /// the echoes and counts them. Returns the number of echoes.
    fn take_replies(
        &mut self,
        plan: &Plan,
        n: usize,
        now: Instant,
        window: Window,
        report: &RefCell<Report>,
    ) -> anyhow::Result<usize> {
        if n == 0 {
            return Err(Fail::ClosedEarly(
                "the server closed the TCP connection in the middle of the run".into(),
            )
            .into());
        }
        self.rlen += n;
        let mut replies = 0usize;
        let mut r = report.borrow_mut();
        // Parse every complete frame in the buffer.
        loop {
            let largest = plan.size.max(MAX_CONTROL);
            let Some((head, range)) = next_frame(&self.rbuf, &mut self.rpos, self.rlen, largest)?
            else {
                break;
            };
            let payload = &self.rbuf[range];
            match head.opcode {
                op if op == plan.opcode() => {
                    if payload != plan.payload.as_slice() {
                        return Err(Fail::Protocol(format!(
                            "echoed payload differs from the one sent ({} bytes back, {} sent)",
                            payload.len(),
                            plan.size
                        ))
                        .into());
                    }
                    let Some(sent_at) = self.sent.pop_front() else {
                        return Err(Fail::Protocol(
                            "the server echoed more messages than were sent".into(),
                        )
                        .into());
                    };
                    r.complete(now, now.saturating_duration_since(sent_at), &window);
                    replies += 1;
                }
                OP_PING => {
                    let payload = payload.to_vec();
                    let mask = (self.rng.next() as u32).to_ne_bytes();
                    push_frame(&mut self.wbuf, OP_PONG, &payload, mask);
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
                        plan.opcode()
                    ))
                    .into())
                }
            }
        }
        if replies > 0 {
            if let Some(live) = &r.live {
                live.done.fetch_add(replies as u64, Ordering::Relaxed);
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

    /// Writes pending output and reads once, concurrently (so a large batch cannot deadlock
    /// against a server that is itself blocked writing replies). Returns the bytes read.
    /// With a `timer`, returns `None` as soon as it has fired (`Some(0)` is end of stream).
    async fn io(
        &mut self,
        mut timer: Option<Pin<&mut tokio::time::Sleep>>,
    ) -> anyhow::Result<Option<usize>> {
        let Self {
            stream,
            rbuf,
            rlen,
            wbuf,
            wpos,
            ..
        } = self;
        let n = poll_fn(|cx| {
            while *wpos < wbuf.len() {
                match Pin::new(&mut *stream).poll_write(cx, &wbuf[*wpos..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::Error::from(
                            std::io::ErrorKind::WriteZero,
                        )))
                    }
                    Poll::Ready(Ok(n)) => *wpos += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            if *wpos == wbuf.len() {
                wbuf.clear();
                *wpos = 0;
            }
            // What a TLS stream buffered goes out now, not with the next batch (which
            // waits for these replies). Nothing to do on TCP.
            if let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            if let Some(t) = timer.as_mut() {
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Ok(None));
                }
            }
            let mut rb = ReadBuf::new(&mut rbuf[*rlen..]);
            match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(rb.filled().len()))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
        .context("connection error during the run")?;
        Ok(n)
    }

    /// Sends a close frame and waits briefly for the server to end the connection.
    async fn close(mut self) {
        let mut frame = Vec::with_capacity(8);
        let mask = (self.rng.next() as u32).to_ne_bytes();
        push_frame(&mut frame, OP_CLOSE, &1000u16.to_be_bytes(), mask);
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            self.stream.write_all(&frame).await?;
            self.stream.flush().await?;
            let mut sink = [0u8; 4096];
            while self.stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    }
}

/// Connect → upgrade → close handshake, repeated until the end of the window.
async fn handshake_loop(plan: &Plan, window: Window, report: &RefCell<Report>) {
    let mut rng = Rng::new();
    loop {
        let started = Instant::now();
        if started >= window.end {
            return;
        }
        match handshake_cycle(plan, &mut rng).await {
            Ok(()) => {
                let now = Instant::now();
                let mut r = report.borrow_mut();
                r.complete(now, now.saturating_duration_since(started), &window);
                if let Some(live) = &r.live {
                    live.done.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                report.borrow_mut().fail(&e);
                // Do not spin on a refused connection.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn handshake_cycle(plan: &Plan, rng: &mut Rng) -> anyhow::Result<()> {
    let mut stream = connect(plan).await?;
    let early = handshake(&mut stream, plan, rng).await?;
    let mut frame = Vec::with_capacity(8);
    let mask = (rng.next() as u32).to_ne_bytes();
    push_frame(&mut frame, OP_CLOSE, &1000u16.to_be_bytes(), mask);
    stream
        .write_all(&frame)
        .await
        .context("cannot send the close frame")?;
    stream
        .flush()
        .await
        .context("cannot send the close frame")?;
    // Wait for the server's close frame (or its FIN).
    let mut buf = early;
    loop {
        if let Some(head) = parse_head(&buf) {
            if head.opcode == OP_CLOSE {
                break;
            }
            return Err(Fail::Protocol(format!(
                "expected the server's close frame after the handshake, got opcode {:#x}",
                head.opcode
            ))
            .into());
        }
        if buf.len() > MAX_HEADER + MAX_CONTROL {
            return Err(Fail::Protocol(
                "the server sent more than a close frame after the handshake".into(),
            )
            .into());
        }
        buf.reserve(64);
        let n = stream
            .read_buf(&mut buf)
            .await
            .context("cannot read the server's close frame")?;
        if n == 0 {
            break;
        }
    }
    // The close handshake is done: reset instead of leaving a TIME_WAIT socket behind, so
    // that tens of thousands of cycles do not exhaust the ephemeral ports.
    let _ = stream.set_zero_linger();
    Ok(())
}

/// Opens `plan.idle` connections, prints `ready` and holds them.
async fn run_idle(plan: Arc<Plan>, json: bool) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;
    let started = Instant::now();
    let mut errors = 0u64;
    let mut first_error = None;
    let mut held = Vec::with_capacity(plan.idle);
    let opens = futures_util::stream::iter(0..plan.idle)
        .map(|_| {
            let plan = plan.clone();
            async move {
                let mut rng = Rng::new();
                let mut s = connect(&plan).await?;
                handshake(&mut s, &plan, &mut rng).await?;
                // When the holder is killed, reset instead of leaving thousands of
                // TIME_WAIT sockets that would eat the ephemeral ports of the next run.
                let _ = s.set_zero_linger();
                Ok::<_, anyhow::Error>(s)
            }
        })
        .buffer_unordered(256);
    futures_util::pin_mut!(opens);
    while let Some(r) = opens.next().await {
        match r {
            Ok(s) => held.push(s),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "idle",
                "url": plan.target.url,
                "ready": held.len(),
                "errors": errors,
                "first_error": first_error,
                "open_seconds": secs,
            })
        );
    } else {
        println!(
            "ready: {} idle connections to {} open in {:.2} s, {} errors{}",
            held.len(),
            plan.target.url,
            secs,
            errors,
            first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
    }
    if held.is_empty() && plan.idle > 0 {
        bail!("no idle connection could be opened to {}", plan.target.url);
    }
    match plan.duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending::<()>().await,
    }
    drop(held);
    Ok(())
}

#[cold]
fn unreachable_bar() -> anyhow::Result<Report> {
    // `progress::show` loops forever; the select above only ends through the run.
    unreachable!("the progress bar never completes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::net::TcpStream;

    #[test]
    fn cpu_busy_counts_all_but_idle_and_iowait_per_cpu() {
        let before = "cpu  300 0 300 900 10 0 100 0 0 0\n\
                      cpu0 100 0 100 500 10 0 50 0 0 0\n\
                      cpu1 200 0 200 400 0 0 50 0 0 0\n\
                      intr 12345\n";
        let after = "cpu  999 0 999 999 99 0 999 0 0 0\n\
                     cpu0 110 0 150 500 50 0 90 0 0 0\n\
                     cpu1 200 0 200 500 0 0 50 0 0 0\n\
                     cpu2 1 2 3 4 5 6 7 8 0 0\n";
        let a = parse_cpu_ticks(before);
        let b = parse_cpu_ticks(after);
        // The "cpu" total line and other lines are not CPUs.
        assert_eq!(a.keys().copied().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(a[&0], (250, 760));
        let busy = cpu_busy_between(&a, &b);
        // cpu0: +10 user +50 system +40 softirq busy, +40 iowait idle: 100 of 140.
        assert!((busy[&0] - 100.0 / 140.0).abs() < 1e-9, "{busy:?}");
        // cpu1: only idle time went by.
        assert_eq!(busy[&1], 0.0);
        // cpu2 appeared in the second reading only: no figure for it.
        assert!(!busy.contains_key(&2));
        // No time went by: no figure rather than a division by zero.
        assert!(cpu_busy_between(&a, &a).is_empty());
    }

    #[test]
    fn accept_value_matches_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            expected_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn masked_frame_round_trips_and_has_right_header() {
        for len in [0usize, 5, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut out = Vec::new();
            push_frame(&mut out, OP_BINARY, &payload, mask);
            let head = parse_head(&out).expect("complete header");
            assert!(head.fin && head.masked && head.rsv == 0);
            assert_eq!(head.opcode, OP_BINARY);
            assert_eq!(head.payload_len, len as u64);
            let ext = match len {
                0..=125 => 0,
                126..=65535 => 2,
                _ => 8,
            };
            assert_eq!(head.header_len, 2 + ext + 4);
            assert_eq!(&out[2 + ext..2 + ext + 4], &mask);
            let mut body = out[head.header_len..].to_vec();
            assert_eq!(body.len(), len);
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn mask_matches_bytewise_definition() {
        let mask = [1, 2, 3, 4];
        for len in 0..40 {
            let mut a: Vec<u8> = (0..len as u8).collect();
            let b: Vec<u8> = a.iter().enumerate().map(|(i, x)| x ^ mask[i % 4]).collect();
            apply_mask(&mut a, mask);
            assert_eq!(a, b, "len {len}");
        }
    }

    #[test]
    fn parse_head_needs_whole_header() {
        assert_eq!(parse_head(&[]), None);
        assert_eq!(parse_head(&[0x81]), None);
        assert_eq!(parse_head(&[0x82, 126, 0x01]), None);
        assert_eq!(parse_head(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0]), None);
        let h = parse_head(&[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]).expect("complete");
        assert_eq!(h.payload_len, 65536);
        assert_eq!(h.header_len, 10);
        let h = parse_head(&[0x01, 3]).expect("complete");
        assert!(!h.fin);
        assert_eq!(h.opcode, OP_TEXT);
    }

    #[test]
    fn response_checks() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        check_upgrade_response(ok.as_bytes(), key).expect("valid 101");
        let wrong_status = ok.replace("101 Switching Protocols", "200 OK");
        let e = check_upgrade_response(wrong_status.as_bytes(), key).unwrap_err();
        assert!(e.to_string().contains("200 OK"), "{e}");
        let wrong_accept = ok.replace("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "AAAA");
        let e = check_upgrade_response(wrong_accept.as_bytes(), key).unwrap_err();
        assert!(e.to_string().contains("Sec-WebSocket-Accept"), "{e}");
        let no_upgrade = ok.replace("Upgrade: websocket\r\n", "");
        assert!(check_upgrade_response(no_upgrade.as_bytes(), key).is_err());
        let ext = ok.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        );
        assert!(check_upgrade_response(ext.as_bytes(), key).is_err());
        assert_eq!(find_head_end(ok.as_bytes()), Some(ok.len()));
        assert_eq!(find_head_end(b"HTTP/1.1 101\r\n"), None);
    }

    #[test]
    fn target_parsing() {
        let t = Target::parse("ws://127.0.0.1:9001/echo?x=1").expect("valid");
        assert_eq!(t.authority, ("127.0.0.1".to_string(), 9001));
        assert_eq!(t.path, "/echo?x=1");
        assert_eq!(t.host_header, "127.0.0.1:9001");
        let t = Target::parse("ws://localhost").expect("valid");
        assert_eq!(t.authority.1, 80);
        assert_eq!(t.path, "/");
        let t = Target::parse("wss://localhost/").expect("valid");
        assert!(t.tls);
        assert_eq!(t.authority.1, 443);
        assert!(Target::parse("http://localhost/").is_err());
    }

    /// End to end against a tiny in-test echo server speaking just enough WebSocket.
    /// A short echo run over `ws://`: 4 connections, 3 binary messages of 300 bytes in flight.
    fn echo_args(url: &str) -> BenchArgs {
        BenchArgs {
            url: url.to_owned(),
            connections: 4,
            in_flight: 3,
            size: 300,
            binary: true,
            duration: Some(Duration::from_millis(300)),
            warmup: Duration::ZERO,
            handshakes: false,
            idle: None,
            threads: Some(2),
            json: true,
            rate: None,
            ramp_up: Duration::ZERO,
            html: None,
            ca: None,
            insecure: false,
            http2: false,
            transport: crate::connect::ConnectTransport::Ws,
            streams: 1,
        }
    }

    #[tokio::test]
    async fn echo_and_handshake_modes_against_a_local_server() {
        let addr = spawn_test_echo_server().await;
        let url = format!("ws://{addr}/echo");
        let base = BenchArgs {
            warmup: Duration::from_millis(50),
            ..echo_args(&url)
        };
        let plan = Arc::new(
            Plan::from_args(&base, Target::parse(&url).expect("url"))
                .await
                .expect("plan"),
        );
        let r = run_threads(plan, Mode::Echo).await.expect("echo run");
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        assert!(r.completed > 0);
        assert!(!r.latency.is_empty());

        let hs = BenchArgs {
            handshakes: true,
            ..base
        };
        let plan = Arc::new(
            Plan::from_args(&hs, Target::parse(&url).expect("url"))
                .await
                .expect("plan"),
        );
        let r = run_threads(plan, Mode::Handshakes)
            .await
            .expect("handshake run");
        assert_eq!(r.errors, 0, "{:?}", r.first_error);
        assert!(r.completed > 0);
    }

    #[tokio::test]
    async fn wrong_echo_is_counted_as_error() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Some(_) = test_accept(&mut s).await else {
                        return;
                    };
                    // Answer every message with a text frame "no".
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&[0x81, 2, b'n', b'o']).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let url = format!("ws://{addr}/");
        let args = BenchArgs {
            url: url.clone(),
            connections: 2,
            in_flight: 1,
            size: 16,
            binary: false,
            duration: Some(Duration::from_millis(200)),
            warmup: Duration::ZERO,
            handshakes: false,
            idle: None,
            threads: Some(1),
            json: false,
            rate: None,
            ramp_up: Duration::ZERO,
            html: None,
            ca: None,
            insecure: false,
            http2: false,
            transport: crate::connect::ConnectTransport::Ws,
            streams: 1,
        };
        let plan = Arc::new(
            Plan::from_args(&args, Target::parse(&url).expect("url"))
                .await
                .expect("plan"),
        );
        let r = run_threads(plan, Mode::Echo).await.expect("run");
        assert_eq!(r.completed, 0);
        assert_eq!(r.errors, 2);
        assert!(
            r.first_error
                .as_deref()
                .unwrap_or("")
                .contains("payload differs"),
            "{:?}",
            r.first_error
        );
    }

    #[tokio::test]
    async fn refused_upgrade_is_counted_with_its_status() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        let url = format!("ws://{addr}/");
        let args = BenchArgs {
            url: url.clone(),
            connections: 2,
            in_flight: 1,
            size: 16,
            binary: false,
            duration: Some(Duration::from_millis(100)),
            warmup: Duration::ZERO,
            handshakes: true,
            idle: None,
            threads: Some(1),
            json: false,
            rate: None,
            ramp_up: Duration::ZERO,
            html: None,
            ca: None,
            insecure: false,
            http2: false,
            transport: crate::connect::ConnectTransport::Ws,
            streams: 1,
        };
        let plan = Arc::new(
            Plan::from_args(&args, Target::parse(&url).expect("url"))
                .await
                .expect("plan"),
        );
        let r = run_threads(plan, Mode::Handshakes).await.expect("run");
        assert_eq!(r.completed, 0);
        assert!(r.errors >= 2, "{}", r.errors);
        let first = r.first_error.unwrap_or_default();
        assert!(first.contains("HTTP/1.1 426 Upgrade Required"), "{first}");
        // And `run` itself reports failure when nothing completed.
        assert!(run(args).await.is_err());
    }

    #[tokio::test]
    async fn idle_mode_opens_and_holds_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(test_echo_server(s));
            }
        });
        let url = format!("ws://{addr}/");
        let args = BenchArgs {
            url,
            connections: 1,
            in_flight: 1,
            size: 16,
            binary: false,
            duration: Some(Duration::from_millis(50)),
            warmup: Duration::ZERO,
            handshakes: false,
            idle: Some(20),
            threads: None,
            json: true,
            rate: None,
            ramp_up: Duration::ZERO,
            html: None,
            ca: None,
            insecure: false,
            http2: false,
            transport: crate::connect::ConnectTransport::Ws,
            streams: 1,
        };
        run(args).await.expect("idle run");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 20);
    }

    /// The gateway (TLS, HTTP/2 with extended CONNECT) on a free port.
    async fn gateway_tls() -> SocketAddr {
        use switchyard_gateway::config::{CertificateSource, Config, Overrides, TlsOverride};
        let mut flags = Overrides::new();
        flags.listen = vec!["127.0.0.1:0".parse().expect("addr")];
        flags.tls = Some(TlsOverride::Listener(CertificateSource::SelfSigned));
        let cfg = flags.apply(Config::embedded_default()).expect("config");
        let gateway = switchyard_gateway::Gateway::new(cfg, None).expect("gateway");
        let server = switchyard_gateway::Server::bind(gateway)
            .await
            .expect("bind");
        let addr = server.addresses()[0].tcp;
        tokio::spawn(server.run(std::future::pending()));
        addr
    }

    fn tls_args(url: &str, http2: bool, streams: usize) -> BenchArgs {
        BenchArgs {
            url: url.to_owned(),
            ca: None,
            insecure: true,
            http2,
            transport: crate::connect::ConnectTransport::Ws,
            streams,
            connections: 6,
            in_flight: 2,
            size: 100,
            binary: false,
            duration: Some(Duration::from_millis(300)),
            warmup: Duration::from_millis(50),
            handshakes: false,
            idle: None,
            threads: Some(1),
            json: true,
            rate: None,
            ramp_up: Duration::ZERO,
            html: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echo_over_wss_and_http2_streams() {
        let addr = gateway_tls().await;
        let url = format!("wss://localhost:{}/echo", addr.port());
        for (http2, streams) in [(false, 1), (true, 3), (true, 1)] {
            let args = tls_args(&url, http2, streams);
            let plan = Arc::new(
                Plan::from_args(&args, Target::parse(&url).expect("url"))
                    .await
                    .expect("plan"),
            );
            assert_eq!(plan.h2_streams, if http2 { streams } else { 0 });
            let r = run_threads(plan, Mode::Echo).await.expect("echo run");
            assert_eq!(r.errors, 0, "http2={http2}: {:?}", r.first_error);
            assert!(r.completed > 0, "http2={http2}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wss_without_trust_fails_the_tls_handshake() {
        let addr = gateway_tls().await;
        let url = format!("wss://localhost:{}/echo", addr.port());
        let args = BenchArgs {
            insecure: false,
            ..tls_args(&url, false, 1)
        };
        let plan = Arc::new(
            Plan::from_args(&args, Target::parse(&url).expect("url"))
                .await
                .expect("plan"),
        );
        let r = run_threads(plan, Mode::Echo).await.expect("run");
        assert_eq!(r.completed, 0);
        assert!(
            r.first_error
                .as_deref()
                .is_some_and(|e| e.contains("TLS handshake")),
            "{:?}",
            r.first_error
        );
    }

    /// A stream that sends only when flushed, like TLS with what the socket did not take
    /// at once (rare on loopback, so a TLS test would not show it).
    struct SendsOnFlush {
        inner: TcpStream,
        out: Vec<u8>,
    }

    impl AsyncRead for SendsOnFlush {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for SendsOnFlush {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.out.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            let Self { inner, out } = &mut *self;
            while !out.is_empty() {
                let n = std::task::ready!(Pin::new(&mut *inner).poll_write(cx, out))?;
                out.drain(..n);
            }
            Pin::new(inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::task::ready!(self.as_mut().poll_flush(cx))?;
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// The upgrade request, the messages and the close frame reach a server through a
    /// stream that sends only on flush (`switchyard bench` over wss once waited 10 s for
    /// a 408 that way: its request sat in rustls).
    #[tokio::test]
    async fn writes_are_flushed_for_streams_that_buffer() {
        let addr = spawn_test_echo_server().await;
        let url = format!("ws://{addr}/echo");
        let args = BenchArgs {
            connections: 1,
            in_flight: 1,
            threads: Some(1),
            ..echo_args(&url)
        };
        let plan = Plan::from_args(&args, Target::parse(&url).expect("url"))
            .await
            .expect("plan");
        let inner = TcpStream::connect(addr).await.expect("connect");
        let mut stream = Stream::Other(Box::new(SendsOnFlush {
            inner,
            out: Vec::new(),
        }));
        let mut rng = Rng::new();
        let early = tokio::time::timeout(
            Duration::from_secs(2),
            handshake(&mut stream, &plan, &mut rng),
        )
        .await
        .expect("no 101: the upgrade request was never sent")
        .expect("handshake");
        let mut conn = EchoConn::on(stream, early, &plan, rng);
        conn.queue_messages(&plan, 1, Instant::now());
        let mut got = 0;
        while got < 300 + 4 {
            let n = tokio::time::timeout(Duration::from_secs(2), conn.io(None))
                .await
                .expect("no echo: the message was never sent")
                .expect("io")
                .expect("no timer");
            assert!(n > 0, "the server closed the connection");
            got += n;
        }
        // The close frame goes out too: the test server echoes it and ends.
        let start = Instant::now();
        conn.close().await;
        assert!(
            start.elapsed() < Duration::from_millis(400),
            "no close reply"
        );
    }

    /// Reads the upgrade request and answers 101; returns the bytes after the request head.
    async fn test_accept(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut buf = Vec::new();
        let end = loop {
            if let Some(p) = find_head_end(&buf) {
                break p;
            }
            buf.reserve(1024);
            if s.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        };
        let head = std::str::from_utf8(&buf[..end]).ok()?;
        let key = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))?
            .to_string();
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            expected_accept(&key)
        );
        s.write_all(resp.as_bytes()).await.ok()?;
        Some(buf.split_off(end))
    }

    /// [`test_echo_server`] on a local port, for the rest of the test.
    async fn spawn_test_echo_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(test_echo_server(s));
            }
        });
        addr
    }

    async fn test_echo_server(mut s: TcpStream) {
        let Some(mut buf) = test_accept(&mut s).await else {
            return;
        };
        loop {
            while let Some(h) = parse_head(&buf) {
                let total = h.header_len + h.payload_len as usize;
                if buf.len() < total {
                    break;
                }
                let mask: [u8; 4] = buf[h.header_len - 4..h.header_len]
                    .try_into()
                    .expect("mask");
                let mut payload = buf[h.header_len..total].to_vec();
                apply_mask(&mut payload, mask);
                buf.drain(..total);
                let mut out = vec![0x80 | h.opcode];
                match payload.len() {
                    n if n < 126 => out.push(n as u8),
                    n if n <= 65535 => {
                        out.push(126);
                        out.extend_from_slice(&(n as u16).to_be_bytes());
                    }
                    n => {
                        out.push(127);
                        out.extend_from_slice(&(n as u64).to_be_bytes());
                    }
                }
                out.extend_from_slice(&payload);
                if s.write_all(&out).await.is_err() {
                    return;
                }
                if h.opcode == OP_CLOSE {
                    return;
                }
            }
            buf.reserve(64 * 1024);
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

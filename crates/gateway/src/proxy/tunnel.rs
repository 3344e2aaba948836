//! The tunnel after a valid 101, in two modes.
//!
//! **Transparent** ([`transparent`]): bytes copied both ways with
//! [`super::copy::copy_both_ways`] (no buffer held while idle; a FIN from
//! one side is passed on as a write shutdown to the other, and the other
//! direction keeps flowing); closed when neither side sent a byte for the
//! idle timeout, or on shutdown. When both sides are plain TCP sockets
//! (an HTTP/1.1 client without TLS, a ws:// upstream), [`transparent_tcp`]
//! runs the same copy on the sockets themselves ([`super::splice`]): small
//! reads through user space, and on Linux bursts (from a read of 16 KiB)
//! socket -> pipe -> socket with `splice(2)`, the pipe taken from a
//! per-thread pool for the burst only (an idle tunnel holds none). TLS and
//! HTTP/2 or HTTP/3 streams always take [`transparent`]. Measured with
//! bench/proxy.sh (bench/README.md, "splice(2) in the transparent
//! tunnel"): 64 KiB messages cost the proxy about a fifth less CPU each
//! (relative to nginx in the same run); 16 B messages, which never start a
//! burst, cost what they cost before (splicing them cost ~40% more).
//!
//! **Frame-aware** ([`frame_aware`], websocket only): a [`WebSocket`] in the
//! server role toward the client and one in the client role toward the
//! upstream, messages relayed both ways. Each side has its own [`Limits`]:
//! the heartbeat (ping after `ping_interval` without a frame from that
//! side, close with 1011 when no pong within `pong_timeout`), the message
//! size limit (1009), and the close deadline. One task drives both
//! WebSockets with one state (`Relay`): no split halves, one timer for the
//! idle timeout and the probe pings, and nothing allocated while idle (the
//! receive buffers are released when a read finds nothing; the limits are
//! shared, [`shared_limits`]). Close codes:
//!
//! | what happened | that side gets | the other side gets |
//! |---|---|---|
//! | a side sent a close frame | the other side's reply, after the messages the other side sent before it (the same code when it does not answer within the close timeout) | the same code and reason |
//! | the client vanished (EOF, reset, 1006) | - | 1001 "client went away" |
//! | the client missed the pong timeout | 1011 | 1001 "client did not answer ping" |
//! | the client broke a limit or the protocol | 1009 / 1002 / 1007... | 1001 naming the code |
//! | the upstream vanished, missed a pong, broke a limit | 1011 / 1009 ... | 1014 "upstream ..." |
//! | idle timeout | 1001 "idle timeout" | 1001 "idle timeout" |
//! | shutdown (drain) | 1001 "server shutting down" | 1001 "server shutting down" |
//!
//! 1001 toward the upstream when the client is gone: from the upstream's
//! point of view its peer went away, which is what 1001 says; 1011 would
//! blame the gateway. 1014 (Bad Gateway, RFC 6455 registry) toward the
//! client when the upstream failed, as the issue asks.
//!
//! Deflate: the client's extension offer is passed upstream unchanged, and
//! the parameters in the upstream's 101 (which the client receives as is)
//! are used on both connections ([`deflate_params`]): messages are inflated
//! on one side and deflated again on the other with the same parameters.
//!
//! Ping round trips: each side also gets a probe ping (the `probe` module)
//! every 9/10 of its `ping_interval`; the pongs give the round trips. A
//! live peer answers the probes, which resets the heartbeat's silence
//! timer, so in practice the heartbeat only fires (and closes with 1011 on
//! timeout) when the peer stopped answering.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{Sink, StreamExt};
use http::Response;
use switchyard::{Error as WsError, WebSocket};
use switchyard_proto::deflate::{client_accept, DeflateConfig, DeflateParams};
use switchyard_proto::extensions::parse_extensions;
use switchyard_proto::handshake::Negotiated;
use switchyard_proto::{CloseCode, CloseFrame, Connection, Limits, Message, Role, State};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::copy::{copy_both_ways, Half};
use super::splice::{SpliceMode, TcpHalf};
use crate::io::PlainTcp;
use crate::metrics::{violation, Close, CloseWhy, Direction, PingSide, RouteMetrics};
use crate::outcome::Blame;
use crate::probe;

/// How the tunnel ended (a fixed label each, for metrics and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEnd {
    /// Transparent: both directions reached EOF.
    Finished,
    /// A side sent a close frame (frame-aware).
    ClientClosed(Option<u16>),
    /// The upstream sent a close frame.
    UpstreamClosed(Option<u16>),
    /// The client vanished (EOF without close, reset).
    ClientGone,
    /// The upstream vanished.
    UpstreamGone,
    /// The client missed the pong timeout.
    ClientPongTimeout,
    /// The upstream missed the pong timeout.
    UpstreamPongTimeout,
    /// The client broke the protocol or a limit (the code it was closed with).
    ClientViolation(u16),
    /// The upstream broke the protocol or a limit.
    UpstreamViolation(u16),
    /// Transparent: an I/O error on either side. Its kind only: peers that
    /// reset are common, and the OS message was formatted on every such end
    /// and never shown.
    Io(std::io::ErrorKind),
    /// No traffic for the idle timeout.
    Idle,
    /// Shutdown.
    Shutdown,
}

impl TunnelEnd {
    /// Who ended the tunnel and why, for `switchyard_closes_total`. A
    /// transparent tunnel sees no close frames: both directions at EOF
    /// count as the client's EOF (who went first is not known).
    pub fn close(&self) -> Close {
        let (by, why, code) = match *self {
            TunnelEnd::Finished | TunnelEnd::ClientGone => (Blame::Client, CloseWhy::Eof, None),
            TunnelEnd::ClientClosed(code) => (Blame::Client, CloseWhy::CloseFrame, code),
            TunnelEnd::UpstreamClosed(code) => (Blame::Upstream, CloseWhy::CloseFrame, code),
            TunnelEnd::UpstreamGone => (Blame::Upstream, CloseWhy::Eof, None),
            TunnelEnd::ClientPongTimeout | TunnelEnd::UpstreamPongTimeout => {
                (Blame::Gateway, CloseWhy::PongTimeout, None)
            }
            TunnelEnd::ClientViolation(code) | TunnelEnd::UpstreamViolation(code) => {
                (Blame::Gateway, violation(code), Some(code))
            }
            TunnelEnd::Io(_) => (Blame::Gateway, CloseWhy::IoError, None),
            TunnelEnd::Idle => (Blame::Gateway, CloseWhy::Idle, None),
            TunnelEnd::Shutdown => (Blame::Gateway, CloseWhy::Drain, None),
        };
        Close { by, why, code }
    }

    /// A fixed label.
    pub fn label(&self) -> &'static str {
        match self {
            TunnelEnd::Finished => "finished",
            TunnelEnd::ClientClosed(_) => "client_closed",
            TunnelEnd::UpstreamClosed(_) => "upstream_closed",
            TunnelEnd::ClientGone => "client_gone",
            TunnelEnd::UpstreamGone => "upstream_gone",
            TunnelEnd::ClientPongTimeout => "client_pong_timeout",
            TunnelEnd::UpstreamPongTimeout => "upstream_pong_timeout",
            TunnelEnd::ClientViolation(_) => "client_violation",
            TunnelEnd::UpstreamViolation(_) => "upstream_violation",
            TunnelEnd::Io(_) => "io_error",
            TunnelEnd::Idle => "idle_timeout",
            TunnelEnd::Shutdown => "shutdown",
        }
    }
}

/// What a tunnel did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelReport {
    /// Why it ended.
    pub end: TunnelEnd,
    /// Bytes (transparent) or message payload bytes (frame-aware) from the
    /// client to the upstream.
    pub bytes_to_upstream: u64,
    /// The same, from the upstream to the client.
    pub bytes_to_client: u64,
    /// Messages from the client (frame-aware; 0 in transparent mode).
    pub messages_to_upstream: u64,
    /// Messages from the upstream (frame-aware).
    pub messages_to_client: u64,
    /// How long it lasted.
    pub duration: Duration,
}

/// Milliseconds since `start`, for an activity clock shared by both
/// directions.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
    /// Resolves when nothing happened for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let Some(deadline) = self.last().checked_add(idle) else {
                // Beyond the clock's range: never idle.
                return std::future::pending().await;
            };
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records activity and hands the bytes read from it (in
/// `dir`) to the observer, one call per read.
struct Tracked<'a, S, O> {
    inner: S,
    dir: Direction,
    observer: &'a O,
    activity: &'a Activity,
}

impl<S: AsyncRead + Unpin, O: TunnelObserver> AsyncRead for Tracked<'_, S, O> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.observer.relayed(self.dir, 0, n as u64);
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin, O: TunnelObserver> AsyncWrite for Tracked<'_, S, O> {
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
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copy bytes both ways until both directions ended, `idle` passed with no
/// byte either way, or `shutdown` resolved. Leftover bytes must have been
/// written by the caller already. The bytes go to `observer` as they are
/// read (one call per read).
pub async fn transparent<A, B, O>(
    client: A,
    upstream: B,
    idle: Duration,
    observer: &O,
    shutdown: impl Future<Output = ()>,
) -> TunnelReport
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    O: TunnelObserver,
{
    let activity = Activity::new();
    let mut a = Tracked {
        inner: client,
        dir: Direction::ClientToUpstream,
        observer,
        activity: &activity,
    };
    let mut b = Tracked {
        inner: upstream,
        dir: Direction::UpstreamToClient,
        observer,
        activity: &activity,
    };
    let mut to_upstream = Half::default();
    let mut to_client = Half::default();
    let end = tokio::select! {
        r = copy_both_ways(&mut a, &mut b, &mut to_upstream, &mut to_client) => match r {
            Ok(_) => TunnelEnd::Finished,
            Err(e) => TunnelEnd::Io(e.kind()),
        },
        _ = activity.idle(idle) => TunnelEnd::Idle,
        _ = shutdown => TunnelEnd::Shutdown,
    };
    TunnelReport {
        end,
        bytes_to_upstream: to_upstream.total(),
        bytes_to_client: to_client.total(),
        messages_to_upstream: 0,
        messages_to_client: 0,
        duration: activity.start.elapsed(),
    }
}

/// Bytes a transparent tunnel moved with `splice(2)`, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spliced {
    /// From the client to the upstream.
    pub to_upstream: u64,
    /// From the upstream to the client.
    pub to_client: u64,
}

/// [`transparent`] on the plain TCP sockets under both streams (from
/// [`crate::io::AsPlainTcp`]; the caller takes [`transparent`] when a side has none):
/// bursts through `splice(2)` on Linux as `mode` says ([`super::splice`]).
/// The streams' byte counters ([`PlainTcp`]) and `observer` (one call per
/// read) are kept up to date.
pub async fn transparent_tcp<O: TunnelObserver>(
    mut a: PlainTcp<'_>,
    mut b: PlainTcp<'_>,
    idle: Duration,
    mode: SpliceMode,
    observer: &O,
    shutdown: impl Future<Output = ()>,
) -> (TunnelReport, Spliced) {
    let mode = mode.available();
    let activity = Activity::new();
    let on_read = |dir, n: usize| {
        activity.touch();
        observer.relayed(dir, 0, n as u64);
    };
    let mut to_upstream = TcpHalf::default();
    let mut to_client = TcpHalf::default();
    let copy = std::future::poll_fn(|cx| {
        let up = &|n| on_read(Direction::ClientToUpstream, n);
        let up = to_upstream.poll_copy(cx, &mut a, &mut b, mode, up)?;
        let down = &|n| on_read(Direction::UpstreamToClient, n);
        let down = to_client.poll_copy(cx, &mut b, &mut a, mode, down)?;
        if up.is_ready() && down.is_ready() {
            Poll::Ready(std::io::Result::Ok(()))
        } else {
            Poll::Pending
        }
    });
    let end = tokio::select! {
        r = copy => match r {
            Ok(()) => TunnelEnd::Finished,
            Err(e) => TunnelEnd::Io(e.kind()),
        },
        _ = activity.idle(idle) => TunnelEnd::Idle,
        _ = shutdown => TunnelEnd::Shutdown,
    };
    let report = TunnelReport {
        end,
        bytes_to_upstream: to_upstream.read(),
        bytes_to_client: to_client.read(),
        messages_to_upstream: 0,
        messages_to_client: 0,
        duration: activity.start.elapsed(),
    };
    let spliced = Spliced {
        to_upstream: to_upstream.spliced(),
        to_client: to_client.spliced(),
    };
    (report, spliced)
}

/// The permessage-deflate parameters of an upstream's 101, to use on both
/// connections of a frame-aware tunnel. `Err` when the upstream accepted an
/// extension the gateway cannot process (anything but one
/// permessage-deflate): the caller answers 502.
pub fn deflate_params(resp: &Response<()>) -> Result<Option<DeflateParams>, String> {
    let exts = parse_extensions(
        resp.headers()
            .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .map(|v| v.as_bytes()),
    )
    .map_err(|e| format!("the upstream's Sec-WebSocket-Extensions is malformed: {e}"))?;
    match exts.as_slice() {
        [] => Ok(None),
        [one] => client_accept(one, &DeflateConfig::default()).map(Some),
        _ => Err("the upstream accepted several extensions; a frame-aware tunnel handles only permessage-deflate".into()),
    }
}

/// Settings of a frame-aware tunnel.
#[derive(Debug, Clone)]
pub struct FrameAwareConfig {
    /// Limits toward the client (server role): heartbeat, message size...
    /// Shared, not copied, by the tunnel's connection ([`shared_limits`]).
    pub client_limits: Arc<Limits>,
    /// Limits toward the upstream (client role).
    pub upstream_limits: Arc<Limits>,
    /// Close both sides after this long without a message either way.
    pub idle_timeout: Duration,
    /// From [`deflate_params`].
    pub deflate: Option<DeflateParams>,
}

/// Most distinct [`Limits`] values [`shared_limits`] keeps track of.
const MAX_SHARED_LIMITS: usize = 64;

/// An `Arc` of `limits` shared with the live tunnels that use the same
/// values (in practice one per route policy), so that a tunnel's two
/// connections do not each allocate a copy. Beyond `MAX_SHARED_LIMITS`
/// distinct live values, a fresh `Arc`.
pub fn shared_limits(limits: Limits) -> Arc<Limits> {
    static SHARED: Mutex<Vec<Weak<Limits>>> = Mutex::new(Vec::new());
    let Ok(mut shared) = SHARED.lock() else {
        return Arc::new(limits);
    };
    shared.retain(|w| w.strong_count() > 0);
    if let Some(a) = shared
        .iter()
        .filter_map(Weak::upgrade)
        .find(|a| **a == limits)
    {
        return a;
    }
    let a = Arc::new(limits);
    if shared.len() < MAX_SHARED_LIMITS {
        shared.push(Arc::downgrade(&a));
    }
    a
}

/// Observer of what a tunnel relays (metrics).
pub trait TunnelObserver: Send + Sync {
    /// A probe ping's round trip toward `side`.
    fn ping_rtt(&self, _side: PingSide, _rtt: Duration) {}
    /// `messages` (0 in transparent mode) and `bytes` relayed in `dir`
    /// since the last call: called once per batch of reads, while the
    /// tunnel runs.
    fn relayed(&self, _dir: Direction, _messages: u64, _bytes: u64) {}
}

/// No observer.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;
impl TunnelObserver for NoObserver {}

/// The route's counters ([`RouteMetrics`]) observe its tunnels.
impl TunnelObserver for Arc<RouteMetrics> {
    fn ping_rtt(&self, side: PingSide, rtt: Duration) {
        self.observe_ping_rtt(side, rtt);
    }
    fn relayed(&self, dir: Direction, messages: u64, bytes: u64) {
        RouteMetrics::relayed(self, dir, messages, bytes);
    }
}

/// How one direction (the messages of one side) ended.
#[derive(Debug)]
enum PumpEnd {
    Closed(Option<CloseFrame>),
    Gone,
    PongTimeout,
    Violation(u16),
    /// Writing to the other side failed (it is gone).
    WriteFailed,
}

/// One connection of a frame-aware tunnel with what the relay keeps for it.
///
/// Both connections are driven by the tunnel's one task with one state: no
/// split halves (no shared state, locks or wakers on the heap), and no
/// message waits outside the connections (a side is read only when the
/// other accepts a message: backpressure).
struct Side<S> {
    ws: WebSocket<S>,
    /// Messages were queued since the last completed flush.
    dirty: bool,
    /// A probe ping is due; it goes out as soon as this side accepts it.
    probe_due: bool,
    /// Data messages received from this side, and their payload bytes.
    messages: u64,
    bytes: u64,
    /// When the next probe ping to this side is due (its period comes from
    /// the side's `ping_interval`).
    probe: Option<Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Side<S> {
    fn new(ws: WebSocket<S>, now: Instant) -> Self {
        let probe = Self::probe_period(&ws).and_then(|p| now.checked_add(p));
        Side {
            ws,
            dirty: false,
            probe_due: false,
            messages: 0,
            bytes: 0,
            probe,
        }
    }

    /// Probes every 9/10 of the heartbeat's interval (module docs).
    fn probe_period(ws: &WebSocket<S>) -> Option<Duration> {
        probe::period(ws.limits().ping_interval)
    }

    /// The timer fired at `now`: mark a probe due if it is time.
    fn probe_tick(&mut self, now: Instant) {
        if self.probe.is_some_and(|next| next <= now) {
            self.probe_due = true;
            self.probe = Self::probe_period(&self.ws).and_then(|p| now.checked_add(p));
        }
    }

    /// Queue the due probe ping (its payload: the time it is sent) when this
    /// side accepts it.
    fn poll_probe(&mut self, clock: &Clock, cx: &mut Context<'_>) {
        if !self.probe_due {
            return;
        }
        match Pin::new(&mut self.ws).poll_ready(cx) {
            Poll::Pending => {}
            Poll::Ready(Err(_)) => self.probe_due = false,
            Poll::Ready(Ok(())) => {
                self.probe_due = false;
                let ping = probe::ping(clock.micros());
                if Pin::new(&mut self.ws).start_send(ping).is_ok() {
                    self.dirty = true;
                }
            }
        }
    }

    /// Queue our close frame (if this side is still open) and have what is
    /// queued flushed.
    fn queue_close(&mut self, frame: Option<CloseFrame>) {
        let Some(f) = frame else {
            return;
        };
        if matches!(self.ws.state(), State::Open | State::CloseReceived) {
            let _ = Pin::new(&mut self.ws).start_send(Message::Close(Some(f)));
        }
        self.dirty = true;
    }

    /// Flush what was queued; errors end the flushing (the side is gone).
    fn poll_flush_queued(&mut self, cx: &mut Context<'_>) {
        if self.dirty && Pin::new(&mut self.ws).poll_flush(cx).is_ready() {
            self.dirty = false;
        }
    }

    /// Read (and drop) messages: ready on the peer's close frame or the end.
    fn poll_until_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match ready!(self.ws.poll_next_unpin(cx)) {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Poll::Ready(()),
                Some(Ok(_)) => {}
            }
        }
    }
}

/// The times of a frame-aware tunnel.
struct Clock {
    start: Instant,
    /// The last data message either way, in milliseconds since `start`.
    last_ms: u64,
    idle: Duration,
}

impl Clock {
    fn micros(&self) -> u64 {
        probe::micros_since(self.start)
    }
    fn touch(&mut self) {
        self.last_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
    }
    /// When the tunnel is idle (`None`: never).
    fn idle_deadline(&self) -> Option<Instant> {
        let last = self
            .start
            .checked_add(Duration::from_millis(self.last_ms))?;
        last.checked_add(self.idle)
    }
}

/// Relay the messages of `src` to `dst` until `src` ends: read `src` while
/// `dst` accepts a message, and flush `dst` once `src` has nothing more for
/// now (a burst goes out in one write). A `dst` that cannot take a message
/// fails the direction only when there is a message for it (until then its
/// own direction may still report why). What this call relayed goes to
/// `observer` in one call.
fn poll_direction<R, W>(
    src: &mut Side<R>,
    dst: &mut Side<W>,
    src_is_upstream: bool,
    clock: &mut Clock,
    observer: &dyn TunnelObserver,
    cx: &mut Context<'_>,
) -> Poll<PumpEnd>
where
    R: AsyncRead + AsyncWrite + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    let before = (src.messages, src.bytes);
    let poll = poll_messages(src, dst, src_is_upstream, clock, observer, cx);
    let dir = if src_is_upstream {
        Direction::UpstreamToClient
    } else {
        Direction::ClientToUpstream
    };
    let (messages, bytes) = (src.messages - before.0, src.bytes - before.1);
    if messages > 0 {
        observer.relayed(dir, messages, bytes);
    }
    poll
}

/// The relaying of [`poll_direction`].
fn poll_messages<R, W>(
    src: &mut Side<R>,
    dst: &mut Side<W>,
    src_is_upstream: bool,
    clock: &mut Clock,
    observer: &dyn TunnelObserver,
    cx: &mut Context<'_>,
) -> Poll<PumpEnd>
where
    R: AsyncRead + AsyncWrite + Unpin,
    W: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let ready = ready!(Pin::new(&mut dst.ws).poll_ready(cx));
        let item = match src.ws.poll_next_unpin(cx) {
            Poll::Ready(item) => item,
            Poll::Pending => break,
        };
        match classify(item, src, clock, observer, src_is_upstream) {
            Err(end) => return Poll::Ready(end),
            Ok(None) => {}
            Ok(Some(msg)) => {
                if ready.is_err() || Pin::new(&mut dst.ws).start_send(msg).is_err() {
                    return Poll::Ready(PumpEnd::WriteFailed);
                }
                dst.dirty = true;
            }
        }
    }
    if dst.dirty {
        match Pin::new(&mut dst.ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => dst.dirty = false,
            Poll::Ready(Err(_)) => return Poll::Ready(PumpEnd::WriteFailed),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

/// What [`poll_direction`] does with what `src` yielded: a data message to
/// forward (counted), nothing (control frames; pongs give round trips), or
/// the end of this side.
fn classify<S>(
    item: Option<Result<Message, WsError>>,
    src: &mut Side<S>,
    clock: &mut Clock,
    observer: &dyn TunnelObserver,
    src_is_upstream: bool,
) -> Result<Option<Message>, PumpEnd> {
    match item {
        Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
            clock.touch();
            src.messages += 1;
            src.bytes += msg.len() as u64;
            Ok(Some(msg))
        }
        Some(Ok(Message::Pong(p))) => {
            if let Some(rtt) = probe::round_trip(&p, clock.micros()) {
                let side = if src_is_upstream {
                    PingSide::Upstream
                } else {
                    PingSide::Client
                };
                observer.ping_rtt(side, rtt);
            }
            Ok(None)
        }
        Some(Ok(Message::Ping(_))) => Ok(None),
        Some(Ok(Message::Close(frame))) => Err(PumpEnd::Closed(frame)),
        Some(Err(WsError::Timeout(switchyard::Deadline::Pong))) => Err(PumpEnd::PongTimeout),
        Some(Err(WsError::Protocol(e))) if e.code != CloseCode::ABNORMAL => {
            Err(PumpEnd::Violation(e.code.0))
        }
        Some(Err(_)) | None => Err(PumpEnd::Gone),
    }
}

/// What to send the other side after `end` on one side.
fn close_for(end: &PumpEnd, from_upstream: bool) -> Option<CloseFrame> {
    let (code, reason) = match (end, from_upstream) {
        (PumpEnd::Closed(Some(f)), _) if f.code.is_sendable() => {
            return Some(f.clone());
        }
        (PumpEnd::Closed(_), _) => (CloseCode::NORMAL, String::new()),
        (PumpEnd::WriteFailed, _) => return None,
        (PumpEnd::Gone, false) => (CloseCode::GOING_AWAY, "client went away".into()),
        (PumpEnd::PongTimeout, false) => {
            (CloseCode::GOING_AWAY, "client did not answer ping".into())
        }
        (PumpEnd::Violation(c), false) => {
            (CloseCode::GOING_AWAY, format!("client closed with {c}"))
        }
        (PumpEnd::Gone, true) => (CloseCode::BAD_GATEWAY, "upstream connection lost".into()),
        (PumpEnd::PongTimeout, true) => (
            CloseCode::BAD_GATEWAY,
            "upstream did not answer ping".into(),
        ),
        (PumpEnd::Violation(c), true) => {
            (CloseCode::BAD_GATEWAY, format!("upstream failed with {c}"))
        }
    };
    Some(CloseFrame::new(code, reason))
}

fn tunnel_end(end: &PumpEnd, from_upstream: bool) -> TunnelEnd {
    match (end, from_upstream) {
        (PumpEnd::Closed(f), false) => TunnelEnd::ClientClosed(f.as_ref().map(|f| f.code.0)),
        (PumpEnd::Closed(f), true) => TunnelEnd::UpstreamClosed(f.as_ref().map(|f| f.code.0)),
        // A failed write means the writer's side, not the reader's, is gone.
        (PumpEnd::Gone, false) | (PumpEnd::WriteFailed, true) => TunnelEnd::ClientGone,
        (PumpEnd::Gone, true) | (PumpEnd::WriteFailed, false) => TunnelEnd::UpstreamGone,
        (PumpEnd::PongTimeout, false) => TunnelEnd::ClientPongTimeout,
        (PumpEnd::PongTimeout, true) => TunnelEnd::UpstreamPongTimeout,
        (PumpEnd::Violation(c), false) => TunnelEnd::ClientViolation(*c),
        (PumpEnd::Violation(c), true) => TunnelEnd::UpstreamViolation(*c),
    }
}

/// Why the relay phase of a tunnel stopped.
enum Stop {
    /// The messages of one side ended (`true`: the upstream's).
    End(PumpEnd, bool),
    Idle,
    Shutdown,
}

/// A frame-aware tunnel: both connections and the relay's state, driven by
/// one task. The only timer of its own is `run`'s one `Sleep`, set to the
/// earliest of the idle deadline and the probe pings, and moved only when
/// it fires (not for every message).
struct Relay<A, B, O> {
    client: Side<A>,
    upstream: Side<B>,
    clock: Clock,
    observer: O,
    /// The timer is set (to the earliest deadline).
    armed: bool,
}

impl<A, B, O> Relay<A, B, O>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    O: TunnelObserver,
{
    /// Both sides from `now`, nothing armed yet.
    fn new(client: WebSocket<A>, upstream: WebSocket<B>, idle: Duration, observer: O) -> Self {
        let now = Instant::now();
        Relay {
            client: Side::new(client, now),
            upstream: Side::new(upstream, now),
            clock: Clock {
                start: now,
                last_ms: 0,
                idle,
            },
            armed: false,
            observer,
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let idle = self.clock.idle_deadline();
        [idle, self.client.probe, self.upstream.probe]
            .into_iter()
            .flatten()
            .min()
    }

    /// The relay phase: until a side's messages end, the idle timeout, or
    /// `shutdown`.
    fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        mut sleep: Pin<&mut Sleep>,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Poll<Stop> {
        if shutdown.poll(cx).is_ready() {
            return Poll::Ready(Stop::Shutdown);
        }
        while self.armed && sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if self.clock.idle_deadline().is_some_and(|d| d <= now) {
                return Poll::Ready(Stop::Idle);
            }
            self.client.probe_tick(now);
            self.upstream.probe_tick(now);
            let wake = self.next_wake();
            self.armed = wake.is_some();
            if let Some(w) = wake {
                sleep.as_mut().reset(w);
            }
        }
        self.client.poll_probe(&self.clock, cx);
        self.upstream.poll_probe(&self.clock, cx);
        let (c, u, clock) = (&mut self.client, &mut self.upstream, &mut self.clock);
        let observer = &self.observer;
        if let Poll::Ready(e) = poll_direction(c, u, false, clock, observer, cx) {
            return Poll::Ready(Stop::End(e, false));
        }
        if let Poll::Ready(e) = poll_direction(u, c, true, clock, observer, cx) {
            return Poll::Ready(Stop::End(e, true));
        }
        Poll::Pending
    }

    /// After the messages of one side ended with `end`: tell the other side
    /// (with the code of [`close_for`]) and keep relaying its messages until
    /// they end too (normally its close reply), then tell the first side;
    /// within the grace.
    fn poll_one_ended(
        &mut self,
        cx: &mut Context<'_>,
        other_done: &mut bool,
        from_upstream: bool,
    ) -> Poll<()> {
        let (c, u, clock) = (&mut self.client, &mut self.upstream, &mut self.clock);
        let observer = &self.observer;
        if !*other_done {
            let other = if from_upstream {
                poll_direction(c, u, false, clock, observer, cx)
            } else {
                poll_direction(u, c, true, clock, observer, cx)
            };
            if let Poll::Ready(e) = other {
                *other_done = true;
                let frame = close_for(&e, !from_upstream);
                if from_upstream {
                    u.queue_close(frame);
                } else {
                    c.queue_close(frame);
                }
            }
        }
        c.poll_flush_queued(cx);
        u.poll_flush_queued(cx);
        if *other_done && !c.dirty && !u.dirty {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The end, within the grace (the close handshakes); the timer is
    /// reused for the grace.
    async fn finish(&mut self, stop: Stop, mut sleep: Pin<&mut Sleep>) -> TunnelEnd {
        // How long the close handshakes may take.
        let grace = self.client.ws.limits().close_timeout;
        let grace = grace.max(self.upstream.ws.limits().close_timeout);
        let grace = Instant::now().checked_add(grace);
        if let Some(g) = grace {
            sleep.as_mut().reset(g);
        }
        let (end, reason) = match stop {
            Stop::End(e, from_upstream) => {
                let frame = close_for(&e, from_upstream);
                if from_upstream {
                    self.client.queue_close(frame);
                } else {
                    self.upstream.queue_close(frame);
                }
                let mut other_done = false;
                std::future::poll_fn(|cx| {
                    if grace.is_some() && sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    self.poll_one_ended(cx, &mut other_done, from_upstream)
                })
                .await;
                if !other_done {
                    // The other side never answered: the first side's close
                    // gets our reply, as far as it can be written now.
                    let frame = close_for(&e, from_upstream);
                    std::future::poll_fn(|cx| {
                        if from_upstream {
                            self.upstream.queue_close(frame.clone());
                            self.upstream.poll_flush_queued(cx);
                        } else {
                            self.client.queue_close(frame.clone());
                            self.client.poll_flush_queued(cx);
                        }
                        Poll::Ready(())
                    })
                    .await;
                }
                return tunnel_end(&e, from_upstream);
            }
            Stop::Idle => (TunnelEnd::Idle, "idle timeout"),
            Stop::Shutdown => (TunnelEnd::Shutdown, "server shutting down"),
        };
        let frame = CloseFrame::new(CloseCode::GOING_AWAY, reason);
        self.client.queue_close(Some(frame.clone()));
        self.upstream.queue_close(Some(frame));
        // Wait (up to the grace) for both close replies. Over HTTP/2 and
        // HTTP/3 the connection may be torn down as soon as the last tunnel
        // on it ends, which would lose a close frame still in flight (the
        // QUIC endpoint is closed once every tunnel ended).
        let (mut c_done, mut u_done) = (false, false);
        std::future::poll_fn(|cx| {
            if grace.is_some() && sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            self.client.poll_flush_queued(cx);
            self.upstream.poll_flush_queued(cx);
            c_done = c_done || self.client.poll_until_closed(cx).is_ready();
            u_done = u_done || self.upstream.poll_until_closed(cx).is_ready();
            if c_done && u_done {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        end
    }

    /// By `&mut self`: the relay is stored once, in the future of
    /// [`frame_aware`] (an `async fn` taking it by value would hold it twice).
    async fn run<F>(&mut self, mut shutdown: F) -> TunnelReport
    where
        F: Future<Output = ()> + Unpin,
    {
        let wake = self.next_wake();
        self.armed = wake.is_some();
        let sleep = tokio::time::sleep_until(wake.unwrap_or(self.clock.start));
        tokio::pin!(sleep);
        let stop =
            std::future::poll_fn(|cx| self.poll_relay(cx, sleep.as_mut(), Pin::new(&mut shutdown)))
                .await;
        // Boxed (once per tunnel, at its end): the closing state is not
        // carried by every idle tunnel's future.
        let end = Box::pin(self.finish(stop, sleep.as_mut())).await;
        TunnelReport {
            end,
            bytes_to_upstream: self.client.bytes,
            bytes_to_client: self.upstream.bytes,
            messages_to_upstream: self.client.messages,
            messages_to_client: self.upstream.messages,
            duration: self.clock.start.elapsed(),
        }
    }
}

/// Relay WebSocket messages between the client and the upstream (both
/// handshakes done; `*_leftover` are the bytes read past each head, which
/// are frames). See the module docs for the close codes.
///
/// The connections are set up here, before the returned future: the
/// leftovers are parsed and freed and `cfg` is not kept (the caller may
/// drop it), so the future holds only what the tunnel needs while it runs.
/// `shutdown` is `Unpin` (e.g. a `Pin<&mut _>`) so that it is not stored
/// twice.
#[allow(clippy::too_many_arguments)]
pub fn frame_aware<A, B, O, F>(
    client: A,
    client_leftover: BytesMut,
    upstream: B,
    upstream_leftover: BytesMut,
    cfg: &FrameAwareConfig,
    observer: O,
    shutdown: F,
) -> impl Future<Output = TunnelReport>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
    O: TunnelObserver,
    F: Future<Output = ()> + Unpin,
{
    // Both sides run what the upstream agreed to (the client's 101 or 200
    // carries the upstream's extensions).
    let negotiated = Negotiated {
        subprotocol: None,
        deflate: cfg.deflate,
    };
    let mut cconn =
        Connection::negotiated(Role::Server, cfg.client_limits.clone(), &negotiated, None);
    let mut uconn =
        Connection::negotiated(Role::Client, cfg.upstream_limits.clone(), &negotiated, None);
    // A side's close is answered with the other side's reply, after the
    // messages the other side sent before it (module docs).
    cconn.defer_close_reply();
    uconn.defer_close_reply();
    let mut relay = Relay::new(
        WebSocket::from_raw(client, cconn, &client_leftover),
        WebSocket::from_raw(upstream, uconn, &upstream_leftover),
        cfg.idle_timeout,
        observer,
    );
    drop((client_leftover, upstream_leftover));
    async move { relay.run(shutdown).await }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_toward_the_other_side() {
        let code = |end: PumpEnd, up: bool| close_for(&end, up).map(|f| f.code.0);
        let custom = CloseFrame::new(CloseCode(4000), "bye");
        assert_eq!(
            code(PumpEnd::Closed(Some(custom.clone())), false),
            Some(4000)
        );
        assert_eq!(
            close_for(&PumpEnd::Closed(Some(custom)), true)
                .unwrap()
                .reason,
            "bye"
        );
        assert_eq!(code(PumpEnd::Closed(None), true), Some(1000));
        // 1006 cannot be sent: it becomes 1000.
        let abnormal = CloseFrame::new(CloseCode::ABNORMAL, "");
        assert_eq!(code(PumpEnd::Closed(Some(abnormal)), true), Some(1000));
        assert_eq!(code(PumpEnd::Gone, false), Some(1001));
        assert_eq!(code(PumpEnd::PongTimeout, false), Some(1001));
        assert_eq!(code(PumpEnd::Violation(1009), false), Some(1001));
        assert_eq!(code(PumpEnd::Gone, true), Some(1014));
        assert_eq!(code(PumpEnd::PongTimeout, true), Some(1014));
        assert_eq!(code(PumpEnd::Violation(1002), true), Some(1014));
        assert_eq!(code(PumpEnd::WriteFailed, true), None);
    }

    #[test]
    fn tunnel_end_blames_the_right_side() {
        assert_eq!(
            tunnel_end(&PumpEnd::WriteFailed, false),
            TunnelEnd::UpstreamGone
        );
        assert_eq!(
            tunnel_end(&PumpEnd::WriteFailed, true),
            TunnelEnd::ClientGone
        );
        assert_eq!(tunnel_end(&PumpEnd::Gone, false), TunnelEnd::ClientGone);
        assert_eq!(
            tunnel_end(&PumpEnd::PongTimeout, true),
            TunnelEnd::UpstreamPongTimeout
        );
        assert_eq!(
            tunnel_end(&PumpEnd::Violation(1009), false),
            TunnelEnd::ClientViolation(1009)
        );
    }

    #[test]
    fn deflate_params_from_the_upstream_101() {
        let resp = |ext: Option<&str>| {
            let mut b = Response::builder().status(101);
            if let Some(e) = ext {
                b = b.header("sec-websocket-extensions", e);
            }
            b.body(()).unwrap()
        };
        assert_eq!(deflate_params(&resp(None)), Ok(None));
        let p = deflate_params(&resp(Some(
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
        )))
        .unwrap()
        .unwrap();
        assert!(p.server_no_context_takeover);
        assert_eq!(p.client_max_window_bits, 10);
        assert!(deflate_params(&resp(Some("x-unknown"))).is_err());
        assert!(deflate_params(&resp(Some("permessage-deflate, permessage-deflate"))).is_err());
        assert!(deflate_params(&resp(Some("permessage-deflate; ;"))).is_err());
    }

    #[tokio::test]
    async fn idle_resolves_after_the_last_activity() {
        let a = Activity::new();
        let t = Instant::now();
        a.idle(Duration::from_millis(50)).await;
        assert!(t.elapsed() >= Duration::from_millis(50));
        // A huge timeout never resolves (and does not panic).
        let never = tokio::time::timeout(Duration::from_millis(20), a.idle(Duration::MAX)).await;
        assert!(never.is_err());
    }

    #[tokio::test]
    async fn idle_tunnel_futures_are_small() {
        // Each lives as long as its proxied connection (idle memory per
        // connection, with the task, the two sockets and the `/status`
        // entry): the bounds below keep a split WebSocket, a future per
        // direction or a timer per probe from coming back unnoticed.
        let (_a, mut client) = tokio::io::duplex(64);
        let (mut upstream, _b) = tokio::io::duplex(64);
        let mut shutdown = std::pin::pin!(std::future::pending::<()>());
        let t = transparent(
            &mut client,
            &mut upstream,
            Duration::from_secs(1),
            &NoObserver,
            shutdown.as_mut(),
        );
        let size = std::mem::size_of_val(&t);
        assert!(size <= 544, "transparent tunnel future is {size} bytes");
        drop(t);
        let cfg = FrameAwareConfig {
            client_limits: Limits::default().into(),
            upstream_limits: Limits::default().into(),
            idle_timeout: Duration::from_secs(1),
            deflate: None,
        };
        let f = frame_aware(
            &mut client,
            BytesMut::new(),
            &mut upstream,
            BytesMut::new(),
            &cfg,
            NoObserver,
            shutdown.as_mut(),
        );
        let size = std::mem::size_of_val(&f);
        assert!(size <= 768, "frame-aware tunnel future is {size} bytes");
        type Duplex<'a> = &'a mut tokio::io::DuplexStream;
        let relay = std::mem::size_of::<Relay<Duplex<'_>, Duplex<'_>, NoObserver>>();
        assert!(relay <= 544, "the relay state is {relay} bytes");
    }

    #[test]
    fn tunnels_share_their_limits() {
        let a = shared_limits(Limits::default());
        let b = shared_limits(Limits::default());
        assert!(Arc::ptr_eq(&a, &b), "one allocation for equal limits");
        let other = Limits::default().max_message_size(1234);
        let c = shared_limits(other.clone());
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c, other);
        // Once no tunnel holds it, a value is not kept.
        drop(c);
        let d = shared_limits(other);
        assert_eq!(Arc::strong_count(&d), 1);
    }

    fn frame(role: Role, msg: Message) -> Vec<u8> {
        let mut c = Connection::new(role, Limits::default());
        c.send(msg).unwrap();
        c.output().to_vec()
    }

    #[tokio::test]
    async fn idle_relay_holds_no_receive_buffer_and_relays_both_ways() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client_peer, mut client) = tokio::io::duplex(1 << 20);
        let (mut upstream, mut upstream_peer) = tokio::io::duplex(1 << 20);
        let cfg = FrameAwareConfig {
            client_limits: Limits::default().into(),
            upstream_limits: Limits::default().into(),
            idle_timeout: Duration::from_secs(60),
            deflate: None,
        };
        let mut relay = Relay::new(
            WebSocket::from_raw(
                &mut client,
                Connection::new(Role::Server, cfg.client_limits.clone()),
                &[],
            ),
            WebSocket::from_raw(
                &mut upstream,
                Connection::new(Role::Client, cfg.upstream_limits.clone()),
                &[],
            ),
            cfg.idle_timeout,
            NoObserver,
        );
        // A large message from the client, a small one from the upstream.
        let big = vec![7u8; 100_000];
        client_peer
            .write_all(&frame(Role::Client, Message::binary(big.clone())))
            .await
            .unwrap();
        upstream_peer
            .write_all(&frame(Role::Server, Message::text("hi")))
            .await
            .unwrap();
        let sleep = tokio::time::sleep(Duration::from_secs(60));
        tokio::pin!(sleep);
        let mut shutdown = std::future::pending::<()>();
        let poll = std::future::poll_fn(|cx| {
            let stop = relay.poll_relay(cx, sleep.as_mut(), Pin::new(&mut shutdown));
            Poll::Ready(stop.is_pending())
        });
        assert!(poll.await, "the relay stopped");
        // Both were relayed (the upstream receives a masked client frame of
        // 100,000 bytes: 14-byte header; the client an unmasked 4 bytes).
        let mut got = vec![0u8; 100_014];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..2], &[0x82, 0xff]);
        let mut got = [0u8; 4];
        client_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x81\x02hi");
        assert_eq!((relay.client.messages, relay.client.bytes), (1, 100_000));
        assert_eq!((relay.upstream.messages, relay.upstream.bytes), (1, 2));
        // Nothing more to read: neither WebSocket keeps a receive buffer.
        assert_eq!(relay.client.ws.read_buffer_capacity(), 0);
        assert_eq!(relay.upstream.ws.read_buffer_capacity(), 0);
        assert!(!relay.client.dirty && !relay.upstream.dirty, "all flushed");
    }
}

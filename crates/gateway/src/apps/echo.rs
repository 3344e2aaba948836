//! The WebSocket echo app: every text and binary message back to its sender.

use futures_util::{SinkExt, StreamExt};
use std::task::Poll;
use std::time::Duration;
use switchyard::{CloseCode, Message, WebSocket};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use super::AppSettings;
use crate::metrics::{violation, Close, CloseWhy, Direction, PingSide};
use crate::outcome::Blame;
use crate::probe;
use crate::tracking::{AppCounters, LiveApp};

/// How an echo session ended, for the log line.
#[derive(Debug)]
pub(crate) enum EchoEnd {
    /// The peer closed (its close frame, if any).
    PeerClosed(Option<switchyard::CloseFrame>),
    /// We closed with 1001 because the server is shutting down.
    Shutdown,
    /// We closed with 1001 because nothing arrived for the idle timeout.
    Idle,
    /// The connection failed (protocol error, I/O error, timeout).
    Failed(switchyard::Error),
}

/// Echo every text and binary message back until the peer closes, nothing
/// arrives for `settings.idle_timeout` (close 1001 "idle timeout"), or
/// `shutdown` turns true (close 1001 "server shutting down", waiting up to
/// `settings.drain_timeout` for the peer's reply). Messages already received
/// are answered in one batch and flushed together (one write for many
/// frames). Pings and pongs count as traffic for the idle timeout.
///
/// With a heartbeat (`ping_interval` in the WebSocket's limits) the client
/// also gets probe pings ([`crate::probe`]) whose pongs give the round
/// trips. The messages (both ways: each is echoed) and the round trips go
/// to `counters`, the route's, once per wake-up.
///
/// The future is kept small (it lives as long as the connection): the echo
/// loop is one `poll_fn` over the socket, and the rarely used closing path
/// is boxed.
#[allow(clippy::manual_async_fn)] // see the comment in the body
pub(crate) fn echo<S>(
    mut ws: WebSocket<S>,
    mut shutdown: watch::Receiver<bool>,
    settings: AppSettings,
    counters: Option<AppCounters>,
) -> impl std::future::Future<Output = EchoEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Not an `async fn`: its arguments would be stored twice in the future
    // (once as arguments, once as locals, rust-lang/rust#62958); the block
    // below uses the captured `ws` directly.
    async move {
        let mut pace = Pace::new(counters, probe::period(ws.limits().ping_interval));
        let first = pace.wake(pace.last.checked_add(settings.idle_timeout));
        let idle = tokio::time::sleep_until(first);
        tokio::pin!(idle);
        let closing = loop {
            if *shutdown.borrow() {
                break Closing::Shutdown;
            }
            let ended = tokio::select! {
                biased;
                // Cancel-safe: the loop keeps all its state in `ws` (bytes read,
                // replies queued), so losing the race loses nothing.
                ended = echo_until_end(&mut ws, &mut pace) => ended,
                _ = shutdown.changed() => continue,
                () = &mut idle => {
                    let now = Instant::now();
                    pace.tick(now, probe::period(ws.limits().ping_interval));
                    match pace.last.checked_add(settings.idle_timeout) {
                        Some(at) if at > now => {
                            idle.as_mut().reset(pace.wake(Some(at)));
                            continue;
                        }
                        _ => break Closing::Idle,
                    }
                }
            };
            match ended {
                Ended::PeerClosed(frame) => {
                    // The reply is automatic; drive the stream to its end so the
                    // closing handshake completes.
                    while let Some(Ok(_)) = ws.next().await {}
                    return EchoEnd::PeerClosed(frame);
                }
                Ended::Eof => return EchoEnd::PeerClosed(None),
                Ended::Failed(e) => return EchoEnd::Failed(e),
            }
        };
        Box::pin(close_with_1001(ws, closing, settings.drain_timeout)).await
    }
}

/// Why the server closes.
#[derive(Clone, Copy)]
enum Closing {
    Shutdown,
    Idle,
}

/// Replies queued without a flush above this many payload bytes are written
/// before more is read (bounds the batch, and the output buffer).
const ECHO_BATCH_BYTES: usize = 64 * 1024;

/// What the echo keeps besides its WebSocket: the time of the last frame
/// received (for the idle timeout), its probe pings and the route's
/// counters.
struct Pace {
    last: Instant,
    /// The probes' clock ([`probe::micros_since`]).
    start: Instant,
    /// When the next probe is due, in microseconds since `start`
    /// (`u64::MAX`: never, without a heartbeat).
    next_probe: u64,
    /// A probe is due: it goes out at the next wake-up of the echo loop.
    probe_due: bool,
    counters: Option<AppCounters>,
}

impl Pace {
    fn new(counters: Option<AppCounters>, period: Option<Duration>) -> Self {
        Pace {
            last: Instant::now(),
            start: Instant::now(),
            next_probe: period.map_or(u64::MAX, micros),
            probe_due: false,
            counters,
        }
    }

    /// The timer fired at `now`: mark a probe due if it is time, and plan
    /// the next one a `period` later.
    fn tick(&mut self, now: Instant, period: Option<Duration>) {
        let at = micros(now.saturating_duration_since(self.start));
        if let Some(p) = period.filter(|_| at >= self.next_probe) {
            self.probe_due = true;
            self.next_probe = at.saturating_add(micros(p));
        }
    }

    /// The next wake-up: the idle deadline (`None`: never) or the next
    /// probe, whichever comes first.
    fn wake(&self, idle_at: Option<Instant>) -> Instant {
        let probe_at = self
            .start
            .checked_add(Duration::from_micros(self.next_probe));
        [idle_at, probe_at]
            .into_iter()
            .flatten()
            .min()
            // Neither is representable: far away.
            .unwrap_or_else(|| self.start + Duration::from_secs(86400 * 365))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What one wake-up of the echo loop received.
#[derive(Default)]
struct Batch {
    /// A frame arrived (any: pings and pongs keep the connection from idling).
    frame: bool,
    /// Data messages, and their payload bytes.
    messages: u64,
    bytes: u64,
}

enum Ended {
    PeerClosed(Option<switchyard::CloseFrame>),
    Eof,
    Failed(switchyard::Error),
}

/// Echo until the peer closes or the connection fails. Every message already
/// received or readable without waiting is queued; the queued replies are
/// flushed once nothing more is readable (one write for the batch). A due
/// probe goes out first.
fn echo_until_end<'a, S>(
    ws: &'a mut WebSocket<S>,
    pace: &'a mut Pace,
) -> impl std::future::Future<Output = Ended> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut queued = 0usize;
    std::future::poll_fn(move |cx| {
        let mut batch = Batch::default();
        let poll = poll_echo(ws, &mut queued, pace, &mut batch, cx);
        // One clock read and one count per wake-up, not per message.
        if batch.frame {
            pace.last = Instant::now();
        }
        if let Some(c) = pace.counters.as_ref().filter(|_| batch.messages > 0) {
            for dir in Direction::BOTH {
                c.relayed(dir, batch.messages, batch.bytes);
            }
        }
        poll
    })
}

/// One wake-up of [`echo_until_end`]: what arrived goes in `batch`.
fn poll_echo<S>(
    ws: &mut WebSocket<S>,
    queued: &mut usize,
    pace: &mut Pace,
    batch: &mut Batch,
    cx: &mut std::task::Context<'_>,
) -> Poll<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if pace.probe_due {
        match ws.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => {
                pace.probe_due = false;
                let ping = probe::ping(probe::micros_since(pace.start));
                if let Err(e) = ws.start_send_unpin(ping) {
                    return Poll::Ready(Ended::Failed(e));
                }
                // The frame: 2 bytes of header, 8 of payload.
                *queued += 10;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Ended::Failed(e)),
            Poll::Pending => {}
        }
    }
    loop {
        if *queued >= ECHO_BATCH_BYTES {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => *queued = 0,
                Poll::Ready(Err(e)) => return Poll::Ready(Ended::Failed(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        match ws.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Ended::Failed(e)),
            Poll::Pending => return Poll::Pending,
        }
        let next = ws.poll_next_unpin(cx);
        if let Poll::Ready(Some(Ok(_))) = &next {
            batch.frame = true;
        }
        match next {
            Poll::Ready(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => {
                let len = match &m {
                    Message::Text(t) => t.len(),
                    Message::Binary(b) => b.len(),
                    _ => 0,
                };
                if let Err(e) = ws.start_send_unpin(m) {
                    return Poll::Ready(Ended::Failed(e));
                }
                batch.messages += 1;
                batch.bytes += len as u64;
                // Count the frame header too, so empty messages add up.
                *queued += len + 2;
            }
            Poll::Ready(Some(Ok(Message::Pong(p)))) => {
                let now = probe::micros_since(pace.start);
                if let Some((c, rtt)) = pace.counters.as_ref().zip(probe::round_trip(&p, now)) {
                    c.route().observe_ping_rtt(PingSide::Client, rtt);
                }
            }
            // Pings are answered by the connection itself.
            Poll::Ready(Some(Ok(Message::Ping(_)))) => {}
            Poll::Ready(Some(Ok(Message::Close(frame)))) => {
                return Poll::Ready(Ended::PeerClosed(frame))
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Ended::Failed(e)),
            Poll::Ready(None) => return Poll::Ready(Ended::Eof),
            Poll::Pending => {
                // Nothing more to read now: write the whole batch at once.
                if *queued > 0 {
                    match ws.poll_flush_unpin(cx) {
                        Poll::Ready(Ok(())) => *queued = 0,
                        Poll::Ready(Err(e)) => return Poll::Ready(Ended::Failed(e)),
                        Poll::Pending => {}
                    }
                }
                return Poll::Pending;
            }
        }
    }
}

async fn close_with_1001<S>(mut ws: WebSocket<S>, why: Closing, grace: Duration) -> EchoEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (reason, end) = match why {
        Closing::Shutdown => ("server shutting down", EchoEnd::Shutdown),
        Closing::Idle => ("idle timeout", EchoEnd::Idle),
    };
    let handshake = async {
        ws.send(Message::Close(Some(switchyard::CloseFrame::new(
            CloseCode::GOING_AWAY,
            reason,
        ))))
        .await?;
        while let Some(item) = ws.next().await {
            item?;
        }
        Ok::<_, switchyard::Error>(())
    };
    match tokio::time::timeout(grace, handshake).await {
        Ok(Ok(())) | Err(_) => end,
        Ok(Err(e)) => EchoEnd::Failed(e),
    }
}

impl EchoEnd {
    /// Who ended the session and why, for `switchyard_closes_total`.
    pub(crate) fn close(&self) -> Close {
        let (by, why, code) = match self {
            EchoEnd::PeerClosed(Some(f)) => (Blame::Client, CloseWhy::CloseFrame, Some(f.code.0)),
            EchoEnd::PeerClosed(None) => (Blame::Client, CloseWhy::Eof, None),
            EchoEnd::Shutdown => (Blame::Gateway, CloseWhy::Drain, Some(1001)),
            EchoEnd::Idle => (Blame::Gateway, CloseWhy::Idle, Some(1001)),
            EchoEnd::Failed(switchyard::Error::Timeout(switchyard::Deadline::Pong)) => {
                (Blame::Gateway, CloseWhy::PongTimeout, Some(1011))
            }
            EchoEnd::Failed(e) => match e.close_code() {
                Some(c) => (Blame::Gateway, violation(c.0), Some(c.0)),
                None => (Blame::Client, CloseWhy::IoError, None),
            },
        };
        Close { by, why, code }
    }
}

/// An ended echo: counted for its connection (`live`, when the route
/// registered one), and its log line.
pub(crate) fn record_end(end: EchoEnd, live: Option<Box<LiveApp>>) {
    if let Some(live) = live {
        live.closed(end.close());
    }
    match end {
        EchoEnd::PeerClosed(frame) => tracing::info!(?frame, "websocket closed by peer"),
        EchoEnd::Shutdown => tracing::info!("websocket closed with 1001 (shutdown)"),
        EchoEnd::Idle => tracing::info!("websocket closed with 1001 (idle timeout)"),
        EchoEnd::Failed(e) => tracing::info!("websocket failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RouteMetrics;
    use crate::tracking::Counters;
    use std::sync::Arc;
    use switchyard::proto::{Connection, Limits, Role};

    #[tokio::test]
    async fn echo_session_state_is_small() {
        // The echo future lives as long as its connection (idle memory per
        // WebSocket; target 2 KiB in all, with the task and the socket).
        let (a, _b) = tokio::io::duplex(64);
        let ws = WebSocket::from_raw(a, Connection::new(Role::Server, Limits::default()), &[]);
        let (_tx, rx) = watch::channel(false);
        let echo = echo(ws, rx, AppSettings::default(), None);
        let size = std::mem::size_of_val(&echo);
        assert!(size <= 640, "echo future is {size} bytes");
    }

    fn pair() -> (
        WebSocket<tokio::io::DuplexStream>,
        WebSocket<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        (
            WebSocket::from_raw(a, Connection::new(Role::Server, Limits::default()), &[]),
            WebSocket::from_raw(b, Connection::new(Role::Client, Limits::default()), &[]),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_gets_1001_after_the_idle_timeout_and_traffic_resets_it() {
        let (server, mut client) = pair();
        let (_tx, rx) = watch::channel(false);
        let settings = AppSettings {
            idle_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(1),
        };
        let task = tokio::spawn(echo(server, rx, settings, None));
        tokio::time::sleep(Duration::from_secs(8)).await;
        client.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::text("still here")
        );
        // 8 s after the message: not idle yet (it was 16 s after the start).
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(!task.is_finished());
        let Some(Ok(Message::Close(Some(frame)))) = client.next().await else {
            panic!("expected a close frame");
        };
        assert_eq!(frame.code, CloseCode::GOING_AWAY);
        assert_eq!(frame.reason.as_str(), "idle timeout");
        assert!(matches!(task.await.unwrap(), EchoEnd::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn messages_and_probe_round_trips_count_while_the_echo_runs() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut limits = Limits::default();
        limits.ping_interval = Some(Duration::from_secs(10));
        let server = WebSocket::from_raw(a, Connection::new(Role::Server, limits), &[]);
        let mut client =
            WebSocket::from_raw(b, Connection::new(Role::Client, Limits::default()), &[]);
        let (_tx, rx) = watch::channel(false);
        let counters = Arc::new(RouteMetrics::default());
        let conn = Arc::new(Counters::default());
        let task = tokio::spawn(echo(
            server,
            rx,
            AppSettings::default(),
            Some(AppCounters::new(counters.clone(), conn.clone())),
        ));
        for text in ["one", "three"] {
            client.send(Message::text(text)).await.unwrap();
            assert_eq!(client.next().await.unwrap().unwrap(), Message::text(text));
        }
        // Counted as they were echoed, not at the end.
        for dir in Direction::BOTH {
            assert_eq!(counters.messages(dir), 2);
            assert_eq!(counters.bytes(dir), 8);
        }
        assert_eq!(
            (conn.bytes_in(), conn.bytes_out()),
            (8, 8),
            "the connection's own"
        );
        assert_eq!(counters.ping_rtt(PingSide::Client).count(), 0);
        // The probe (after 9/10 of the interval) reaches the client, whose
        // automatic pong gives a round trip.
        tokio::time::sleep(Duration::from_millis(9_500)).await;
        let Some(Ok(Message::Ping(p))) = client.next().await else {
            panic!("expected the probe");
        };
        assert_eq!(p.len(), 8, "the probe carries its time");
        let more = tokio::time::timeout(Duration::from_millis(100), client.next()).await;
        assert!(more.is_err(), "nothing else came: {more:?}");
        assert_eq!(counters.ping_rtt(PingSide::Client).count(), 1);
        assert!(!task.is_finished());
    }

    #[tokio::test]
    async fn shutdown_sends_1001() {
        let (server, mut client) = pair();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(echo(server, rx, AppSettings::default(), None));
        tx.send(true).unwrap();
        let Some(Ok(Message::Close(Some(frame)))) = client.next().await else {
            panic!("expected a close frame");
        };
        assert_eq!(frame.code, CloseCode::GOING_AWAY);
        assert_eq!(frame.reason.as_str(), "server shutting down");
        assert!(matches!(task.await.unwrap(), EchoEnd::Shutdown));
    }
}

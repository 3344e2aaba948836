//! The WebSocket echo app: every text and binary message back to its sender.

use futures_util::{SinkExt, StreamExt};
use std::task::Poll;
use std::time::Duration;
use switchyard::{CloseCode, Message, WebSocket};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use super::AppSettings;
use crate::metrics::{violation, Close, CloseWhy};
use crate::outcome::Blame;
use crate::tracking::LiveApp;

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
/// The future is kept small (it lives as long as the connection): the echo
/// loop is one `poll_fn` over the socket, and the rarely used closing path
/// is boxed.
#[allow(clippy::manual_async_fn)] // see the comment in the body
pub(crate) fn echo<S>(
    mut ws: WebSocket<S>,
    mut shutdown: watch::Receiver<bool>,
    settings: AppSettings,
) -> impl std::future::Future<Output = EchoEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Not an `async fn`: its arguments would be stored twice in the future
    // (once as arguments, once as locals, rust-lang/rust#62958); the block
    // below uses the captured `ws` directly.
    async move {
        let mut last = Instant::now();
        let idle = tokio::time::sleep(settings.idle_timeout);
        tokio::pin!(idle);
        let closing = loop {
            if *shutdown.borrow() {
                break Closing::Shutdown;
            }
            let ended = tokio::select! {
                biased;
                // Cancel-safe: the loop keeps all its state in `ws` (bytes read,
                // replies queued), so losing the race loses nothing.
                ended = echo_until_end(&mut ws, &mut last) => ended,
                _ = shutdown.changed() => continue,
                () = &mut idle => {
                    match last.checked_add(settings.idle_timeout) {
                        Some(at) if at > Instant::now() => {
                            idle.as_mut().reset(at);
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

enum Ended {
    PeerClosed(Option<switchyard::CloseFrame>),
    Eof,
    Failed(switchyard::Error),
}

/// Echo until the peer closes or the connection fails. Every message already
/// received or readable without waiting is queued; the queued replies are
/// flushed once nothing more is readable (one write for the batch). `last`
/// is the time of the last frame received.
fn echo_until_end<'a, S>(
    ws: &'a mut WebSocket<S>,
    last: &'a mut Instant,
) -> impl std::future::Future<Output = Ended> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut queued = 0usize;
    std::future::poll_fn(move |cx| {
        // One clock read per wake-up, not per message.
        let mut received = false;
        let poll = poll_echo(ws, &mut queued, &mut received, cx);
        if received {
            *last = Instant::now();
        }
        poll
    })
}

/// One wake-up of [`echo_until_end`]: `received` is set when a frame arrived.
fn poll_echo<S>(
    ws: &mut WebSocket<S>,
    queued: &mut usize,
    received: &mut bool,
    cx: &mut std::task::Context<'_>,
) -> Poll<Ended>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
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
            *received = true;
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
                // Count the frame header too, so empty messages add up.
                *queued += len + 2;
            }
            // Pings are answered by the connection itself.
            Poll::Ready(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
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
    use switchyard::proto::{Connection, Limits, Role};

    #[tokio::test]
    async fn echo_session_state_is_small() {
        // The echo future lives as long as its connection (idle memory per
        // WebSocket; target 2 KiB in all, with the task and the socket).
        let (a, _b) = tokio::io::duplex(64);
        let ws = WebSocket::from_raw(a, Connection::new(Role::Server, Limits::default()), &[]);
        let (_tx, rx) = watch::channel(false);
        let echo = echo(ws, rx, AppSettings::default());
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
        let task = tokio::spawn(echo(server, rx, settings));
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

    #[tokio::test]
    async fn shutdown_sends_1001() {
        let (server, mut client) = pair();
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(echo(server, rx, AppSettings::default()));
        tx.send(true).unwrap();
        let Some(Ok(Message::Close(Some(frame)))) = client.next().await else {
            panic!("expected a close frame");
        };
        assert_eq!(frame.code, CloseCode::GOING_AWAY);
        assert_eq!(frame.reason.as_str(), "server shutting down");
        assert!(matches!(task.await.unwrap(), EchoEnd::Shutdown));
    }
}

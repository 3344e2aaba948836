//! Built-in applications: the WebSocket echo and the index page.

use futures_util::{SinkExt, StreamExt};
use std::task::Poll;
use std::time::Duration;
use switchyard::{CloseCode, Message, WebSocket};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

/// How an echo session ended, for the log line.
#[derive(Debug)]
pub enum EchoEnd {
    /// The peer closed (its close frame, if any).
    PeerClosed(Option<switchyard::CloseFrame>),
    /// We closed with 1001 because the server is shutting down.
    Shutdown,
    /// The connection failed (protocol error, I/O error, timeout).
    Failed(switchyard::Error),
}

/// Echo every text and binary message back until the peer closes or `shutdown`
/// turns true. Messages that are already received are answered in one batch
/// and flushed together (one write for many frames).
///
/// On shutdown, sends close 1001 and waits up to `grace` for the peer's reply.
///
/// The future is kept small (it lives as long as the connection): the echo
/// loop is one `poll_fn` over the socket, and the rarely used shutdown path is
/// boxed.
#[allow(clippy::manual_async_fn)] // see the comment in the body
pub fn echo<S>(
    mut ws: WebSocket<S>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> impl std::future::Future<Output = EchoEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Not an `async fn`: its arguments would be stored twice in the future
    // (once as arguments, once as locals, rust-lang/rust#62958); the block
    // below uses the captured `ws` directly.
    async move {
        if !*shutdown.borrow() {
            let ended = tokio::select! {
                biased;
                // Cancel-safe: the loop keeps all its state in `ws` (bytes read,
                // replies queued), so losing the race to shutdown loses nothing.
                ended = echo_until_end(&mut ws) => Some(ended),
                _ = shutdown.changed() => None,
            };
            match ended {
                Some(Ended::PeerClosed(frame)) => {
                    // The reply is automatic; drive the stream to its end so the
                    // closing handshake completes.
                    while let Some(Ok(_)) = ws.next().await {}
                    return EchoEnd::PeerClosed(frame);
                }
                Some(Ended::Eof) => return EchoEnd::PeerClosed(None),
                Some(Ended::Failed(e)) => return EchoEnd::Failed(e),
                None => {}
            }
        }
        Box::pin(close_for_shutdown(ws, grace)).await
    }
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
/// flushed once nothing more is readable (one write for the batch).
fn echo_until_end<S>(ws: &mut WebSocket<S>) -> impl std::future::Future<Output = Ended> + '_
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut queued = 0usize;
    std::future::poll_fn(move |cx| loop {
        if queued >= ECHO_BATCH_BYTES {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => queued = 0,
                Poll::Ready(Err(e)) => return Poll::Ready(Ended::Failed(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        match ws.poll_ready_unpin(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Ended::Failed(e)),
            Poll::Pending => return Poll::Pending,
        }
        match ws.poll_next_unpin(cx) {
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
                queued += len + 2;
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
                if queued > 0 {
                    match ws.poll_flush_unpin(cx) {
                        Poll::Ready(Ok(())) => queued = 0,
                        Poll::Ready(Err(e)) => return Poll::Ready(Ended::Failed(e)),
                        Poll::Pending => {}
                    }
                }
                return Poll::Pending;
            }
        }
    })
}

async fn close_for_shutdown<S>(mut ws: WebSocket<S>, grace: Duration) -> EchoEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        ws.send(Message::Close(Some(switchyard::CloseFrame::new(
            CloseCode::GOING_AWAY,
            "server shutting down",
        ))))
        .await?;
        while let Some(item) = ws.next().await {
            item?;
        }
        Ok::<_, switchyard::Error>(())
    };
    match tokio::time::timeout(grace, handshake).await {
        Ok(Ok(())) | Err(_) => EchoEnd::Shutdown,
        Ok(Err(e)) => EchoEnd::Failed(e),
    }
}

/// The page served at `/`: says what is served and talks to `/echo`.
pub const INDEX_HTML: &str = include_str!("index.html");

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
        let echo = echo(ws, rx, Duration::from_secs(1));
        let size = std::mem::size_of_val(&echo);
        assert!(size <= 512, "echo future is {size} bytes");
    }
}

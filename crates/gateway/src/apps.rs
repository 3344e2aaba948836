//! Built-in applications: the WebSocket echo and the index page.

use futures_util::{FutureExt, SinkExt, StreamExt};
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
pub async fn echo<S>(
    mut ws: WebSocket<S>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> EchoEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if *shutdown.borrow() {
        return close_for_shutdown(ws, grace).await;
    }
    loop {
        tokio::select! {
            // `next()` is cancel-safe: losing the race to shutdown loses no bytes.
            item = ws.next() => {
                let mut item = item;
                loop {
                    match item {
                        None => return EchoEnd::PeerClosed(None),
                        Some(Err(e)) => return EchoEnd::Failed(e),
                        Some(Ok(Message::Close(frame))) => {
                            // The reply is automatic; drive the stream to its end so
                            // the closing handshake completes.
                            while let Some(Ok(_)) = ws.next().await {}
                            return EchoEnd::PeerClosed(frame);
                        }
                        Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                            if let Err(e) = ws.feed(m).await {
                                return EchoEnd::Failed(e);
                            }
                        }
                        // Pings are answered by the connection itself.
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                    // Take whatever else is already decoded before flushing.
                    match ws.next().now_or_never() {
                        Some(next) => item = next,
                        None => break,
                    }
                }
                if let Err(e) = ws.flush().await {
                    return EchoEnd::Failed(e);
                }
            }
            _ = shutdown.changed() => return close_for_shutdown(ws, grace).await,
        }
    }
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

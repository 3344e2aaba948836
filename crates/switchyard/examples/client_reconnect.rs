//! A client that stays connected: when connecting fails or the connection is
//! lost, it waits (100 ms, doubling up to 5 s) and connects again, then
//! resends the message whose echo it did not get.
//!
//! ```text
//! cargo run -p switchyard-ws --example client_reconnect -- ws://127.0.0.1:3000/ws 10
//! ```

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::{ClientBuilder, CloseCode, Error, MaybeTlsStream, Message, WebSocket};

const FIRST_PAUSE: Duration = Duration::from_millis(100);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Connect, retrying with a doubling pause; gives up after `attempts`.
async fn connect(
    url: &str,
    client: &ClientBuilder,
    attempts: u32,
) -> Result<WebSocket<MaybeTlsStream>, Error> {
    let mut pause = FIRST_PAUSE;
    let mut attempt = 1;
    loop {
        match client.connect(url).await {
            Ok((ws, _)) => return Ok(ws),
            Err(e) if attempt < attempts => {
                eprintln!("connect {url} failed ({e}); again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Send each message and wait for its echo, on as many connections as it
/// takes. Returns the number of connections used.
async fn send_all(url: &str, messages: &[String]) -> Result<usize, Error> {
    let client = ClientBuilder::new();
    let mut ws = connect(url, &client, 10).await?;
    let mut connections = 1;
    let mut next = 0;
    while next < messages.len() {
        let sent = ws.send(Message::text(messages[next].as_str())).await;
        let echoed = match sent {
            Ok(()) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => break Some(t),
                    Some(Ok(_)) => {} // pings and pongs
                    Some(Err(_)) | None => break None,
                }
            },
            Err(_) => None,
        };
        match echoed {
            Some(t) => {
                println!("echo: {t}");
                next += 1;
            }
            None => {
                eprintln!("connection lost; reconnecting");
                ws = connect(url, &client, 10).await?;
                connections += 1;
            }
        }
    }
    ws.close(CloseCode::NORMAL, "done").await?;
    Ok(connections)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or("ws://127.0.0.1:3000/ws".into());
    let count = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
    let messages: Vec<String> = (0..count).map(|i| format!("message {i}")).collect();
    let connections = send_all(&url, &messages).await?;
    println!("{count} messages echoed over {connections} connection(s)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use switchyard::server::{accept, AcceptConfig};

    /// The server drops each of its first connections after one echo, with
    /// no close frame: what a restart or a dead proxy looks like.
    #[tokio::test]
    async fn reconnects_and_resends_until_every_message_is_echoed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut ws = accept(tcp, &AcceptConfig::default()).await.unwrap();
                    let mut echoed = 0;
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_data() {
                            ws.send(msg).await.unwrap();
                            echoed += 1;
                            if n < 2 && echoed == 1 {
                                return; // dropped: TCP closes, no close frame
                            }
                        }
                    }
                });
            }
        });
        let messages: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
        let connections = send_all(&url, &messages).await.unwrap();
        assert_eq!(connections, 3);
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_the_attempts() {
        // A port nothing listens on: bound, then closed.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        drop(listener);
        let err = connect(&url, &ClientBuilder::new(), 2).await.unwrap_err();
        assert!(matches!(err, Error::Io(_)), "{err:?}");
    }
}

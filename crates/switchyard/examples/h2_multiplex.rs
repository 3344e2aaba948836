//! Many WebSockets on one HTTP/2 connection (RFC 8441): one TCP (and TLS)
//! handshake, then one extended CONNECT stream per WebSocket.
//!
//! ```text
//! cargo run -p switchyard-ws --example hyper_echo -- 127.0.0.1:3000 &
//! cargo run -p switchyard-ws --example h2_multiplex -- ws://127.0.0.1:3000/ 100
//! ```

use futures_util::{SinkExt, StreamExt};
use switchyard::h2::H2Connection;
use switchyard::{ClientBuilder, CloseCode, Error, Message};

/// Open `count` WebSockets at once on one connection to `url`; each sends
/// one message and checks its echo.
async fn run(url: &str, count: usize) -> Result<(), Error> {
    let client = ClientBuilder::new();
    let conn = H2Connection::connect(url, &client).await?;
    let path = path_of(url);
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (conn, client, path) = (conn.clone(), client.clone(), path.clone());
            tokio::spawn(async move {
                let (mut ws, _) = conn.websocket(&path, &client).await?;
                let text = format!("stream {i}");
                ws.send(Message::text(text.as_str())).await?;
                let echo = ws.next().await.ok_or(Error::Closed)??;
                assert_eq!(echo, Message::text(text), "stream {i}");
                ws.close(CloseCode::NORMAL, "").await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a WebSocket task panicked")?;
    }
    Ok(())
}

/// The path and query of a ws:// or wss:// URL ("/" when it has none).
fn path_of(url: &str) -> String {
    url.parse::<http::Uri>()
        .ok()
        .and_then(|u| u.path_and_query().map(|pq| pq.as_str().to_owned()))
        .unwrap_or_else(|| "/".into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or("ws://127.0.0.1:3000/".into());
    let count = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    run(&url, count).await?;
    println!("{count} WebSockets echoed on one HTTP/2 connection");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use switchyard::server::{rejection_response, upgrade, AcceptConfig};

    #[tokio::test]
    async fn many_websockets_share_one_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/chat", listener.local_addr().unwrap());
        let (connections, websockets) =
            (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, w) = (connections.clone(), websockets.clone());
        tokio::spawn(async move {
            let cfg = AcceptConfig::default();
            let builder = switchyard::h2::server_builder(true, &cfg.limits);
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                c.fetch_add(1, Ordering::SeqCst);
                let w = w.clone();
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                    assert_eq!(req.uri().path(), "/chat");
                    let resp = match upgrade(&mut req, &AcceptConfig::default()) {
                        Ok((resp, fut)) => {
                            w.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(async move {
                                let mut ws = fut.await.unwrap();
                                while let Some(Ok(m)) = ws.next().await {
                                    if m.is_data() && ws.send(m).await.is_err() {
                                        break;
                                    }
                                }
                            });
                            resp
                        }
                        Err(rej) => rejection_response(&rej),
                    };
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                tokio::spawn(conn);
            }
        });
        run(&url, 50).await.unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(websockets.load(Ordering::SeqCst), 50);
    }
}

//! An axum echo server: WebSocket over HTTP/1.1 and HTTP/2 (RFC 8441) on one
//! route, with switchyard's extractor.
//!
//! ```text
//! cargo run -p switchyard-ws --features axum --example axum_echo -- 127.0.0.1:3000
//! switchyard connect ws://127.0.0.1:3000/ws             # HTTP/1.1
//! switchyard connect --http2 ws://127.0.0.1:3000/ws     # HTTP/2, prior knowledge
//! ```

use std::future::ready;

use axum::response::Response;
use axum::routing::any;
use axum::Router;
use futures_util::{StreamExt, TryStreamExt};
use switchyard::axum::WebSocketUpgrade;

/// Data messages back to the sender (pings are answered by the library).
async fn echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|ws| async move {
        let (rx, tx) = ws.split();
        let _ = rx.try_filter(|m| ready(m.is_data())).forward(tx).await;
    })
}

/// `any`, not `get`: over HTTP/2 a WebSocket opens with a CONNECT.
fn app() -> Router {
    Router::new().route("/ws", any(echo))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("echo on ws://{}/ws", listener.local_addr()?);
    axum::serve(listener, app()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
    use switchyard::h2::H2Connection;
    use switchyard::{ClientBuilder, Message};

    #[tokio::test]
    async fn echoes_over_http1_and_http2() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app()).await });
        let url = format!("ws://{addr}/ws");
        let client = ClientBuilder::new();

        let (mut ws, resp) = client.connect(&url).await.unwrap();
        assert_eq!(resp.status(), 101);
        ws.send(Message::text("over h1")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over h1"));

        let h2 = H2Connection::connect(&url, &client).await.unwrap();
        let (mut ws, resp) = h2.websocket("/ws", &client).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        ws.send(Message::binary(vec![7u8; 70_000])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![7u8; 70_000])
        );
    }
}

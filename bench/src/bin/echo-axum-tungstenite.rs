//! Echo server on axum 0.8's own `WebSocketUpgrade` (feature `ws`, tokio-tungstenite), written
//! as axum's websocket example handles a socket: `recv` a message, `send` the data ones back.
//! Under `axum::serve` on one current-thread runtime, through `common::serve_axum`.

#[path = "../common.rs"]
mod common;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::any;
use axum::Router;

async fn echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Text(_) | Message::Binary(_))
                && socket.send(msg).await.is_err()
            {
                break;
            }
        }
    })
}

fn main() {
    common::serve_axum(Router::new().fallback(any(echo)));
}

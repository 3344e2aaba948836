//! Echo server on axum 0.8's own `WebSocketUpgrade` (feature `ws`, tokio-tungstenite), written
//! as axum's websocket example handles a socket: `recv` a message, `send` the data ones back.
//! Under `axum::serve` on one current-thread runtime, TCP_NODELAY like the other peers.

#[path = "../common.rs"]
mod common;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::any;
use axum::serve::ListenerExt;
use axum::Router;

async fn echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            if matches!(msg, Message::Text(_) | Message::Binary(_)) && socket.send(msg).await.is_err() {
                break;
            }
        }
    })
}

fn main() {
    let addr = common::listen_addr();
    common::runtime_with_time().block_on(async move {
        let listener = common::bind(addr).await.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let app = Router::new().fallback(any(echo));
        let _ = axum::serve(listener, app).await;
    });
}

//! Echo server on axum 0.8 with switchyard's extractor (`switchyard::axum::WebSocketUpgrade`,
//! feature `axum`): the handler of crates/switchyard/examples/axum_echo.rs, under
//! `axum::serve` on one current-thread runtime, TCP_NODELAY like the other peers.

#[path = "../common.rs"]
mod common;

use axum::response::Response;
use axum::routing::any;
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use switchyard::axum::WebSocketUpgrade;

async fn echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut ws| async move {
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_data() && ws.send(msg).await.is_err() {
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

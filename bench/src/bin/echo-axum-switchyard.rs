//! Echo server on axum 0.8 with switchyard's extractor (`switchyard::axum::WebSocketUpgrade`,
//! feature `axum`): a receive/send loop on the unsplit socket (the 6-line handler of
//! crates/switchyard/examples/axum_echo.rs splits it and forwards one half into the other,
//! which costs more per message: bench/README.md, the axum comparison), under
//! `axum::serve` on one current-thread runtime, through `common::serve_axum`.

#[path = "../common.rs"]
mod common;

use axum::response::Response;
use axum::routing::any;
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
    common::serve_axum(Router::new().fallback(any(echo)));
}

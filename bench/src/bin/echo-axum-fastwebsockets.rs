//! Echo server on fastwebsockets' axum integration (feature `with_axum`), written as its
//! `examples/axum.rs`: `IncomingUpgrade::upgrade`, a `FragmentCollector`, frames written back
//! as read. Under `axum::serve` on one current-thread runtime, through `common::serve_axum`.

#[path = "../common.rs"]
mod common;

use axum::response::IntoResponse;
use axum::routing::any;
use axum::Router;
use fastwebsockets::{upgrade, OpCode, WebSocketError};

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fastwebsockets::FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn ws_handler(ws: upgrade::IncomingUpgrade) -> impl IntoResponse {
    let (response, fut) = ws.upgrade().expect("the request is an upgrade");
    tokio::spawn(async move {
        let _ = handle_client(fut).await;
    });
    response
}

fn main() {
    common::serve_axum(Router::new().fallback(any(ws_handler)));
}

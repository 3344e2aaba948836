//! Echo server on tokio-websockets, written as its `echo_server` example recommends:
//! `ServerBuilder::accept`, then `next()` / `send()` for text and binary messages, the
//! connection task run `unconstrained`, outgoing frames not split (`frame_size(usize::MAX)`).
//! Default `Limits` are kept (the example removes them; a benchmark server should not).
//! tokio-websockets answers pings and closes itself.

#[path = "../common.rs"]
mod common;

use futures_util::{SinkExt, StreamExt};
use tokio_websockets::{Config, ServerBuilder};

fn main() {
    let addr = common::listen_addr();
    common::runtime().block_on(async move {
        let listener = common::bind(addr).await;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(tokio::task::unconstrained(async move {
                let Ok((_request, mut ws)) = ServerBuilder::new()
                    .config(Config::default().frame_size(usize::MAX))
                    .accept(stream)
                    .await
                else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            }));
        }
    });
}

//! Echo server on tokio-tungstenite, written as its `echo-server` example recommends:
//! split the stream and `forward` text and binary messages back (the sink batches writes and
//! flushes when the read side has nothing more ready). tungstenite answers pings itself.

#[path = "../common.rs"]
mod common;

use futures_util::{future, StreamExt, TryStreamExt};

fn main() {
    let addr = common::listen_addr();
    common::runtime().block_on(async move {
        let listener = common::bind(addr).await;
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (write, read) = ws.split();
                let _ = read
                    .try_filter(|m| future::ready(m.is_text() || m.is_binary()))
                    .forward(write)
                    .await;
            });
        }
    });
}

//! Echo server on fastwebsockets with its `upgrade` feature over hyper 1 (HTTP/1.1), written as
//! its `echo_server` example recommends: a `FragmentCollector` per connection, frames written
//! back as read, the connection task run `unconstrained`. fastwebsockets answers pings and
//! closes itself (auto_pong / auto_close are on by default).

#[path = "../common.rs"]
mod common;

use fastwebsockets::{upgrade, OpCode, WebSocketError};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
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

async fn upgrade_request(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        let _ = tokio::task::unconstrained(echo(fut)).await;
    });
    Ok(response)
}

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
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = http1::Builder::new()
                    .serve_connection(io, service_fn(upgrade_request))
                    .with_upgrades()
                    .await;
            });
        }
    });
}

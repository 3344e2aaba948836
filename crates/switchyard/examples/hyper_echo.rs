//! A hyper 1 echo server: one service for WebSocket over HTTP/1.1 (101) and
//! over HTTP/2 (RFC 8441 extended CONNECT, 200) with `server::upgrade`, on
//! hyper-util's server that speaks both on one port.
//!
//! ```text
//! cargo run -p switchyard-ws --example hyper_echo -- 127.0.0.1:3000
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use switchyard::server::{rejection_response, upgrade, AcceptConfig, UpgradeBody};
use tokio::net::TcpListener;

async fn service(
    mut req: Request<Incoming>,
    cfg: Arc<AcceptConfig>,
) -> Result<Response<UpgradeBody>, Infallible> {
    Ok(match upgrade(&mut req, &cfg) {
        Ok((response, websocket)) => {
            tokio::spawn(async move {
                let Ok(mut ws) = websocket.await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_data() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            response
        }
        // 400, 403, 426, 501...: the status and the reason as the body.
        Err(refusal) => rejection_response(&refusal),
    })
}

async fn serve(listener: TcpListener, cfg: AcceptConfig) -> std::io::Result<()> {
    let cfg = Arc::new(cfg);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // HTTP/2 WebSockets need SETTINGS_ENABLE_CONNECT_PROTOCOL.
    builder.http2().enable_connect_protocol();
    loop {
        let (tcp, _) = listener.accept().await?;
        let (builder, cfg) = (builder.clone(), cfg.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| service(req, cfg.clone()));
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:3000".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("echo on ws://{}/", listener.local_addr()?);
    serve(listener, AcceptConfig::default()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::h2::H2Connection;
    use switchyard::proto::{OriginPolicy, ServerConfig};
    use switchyard::{ClientBuilder, Error, H2Error, Message};

    async fn start(cfg: AcceptConfig) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        tokio::spawn(serve(listener, cfg));
        url
    }

    #[tokio::test]
    async fn echoes_over_http1_and_http2() {
        let url = start(AcceptConfig::default()).await;
        let client = ClientBuilder::new();
        let (mut ws, _) = client.connect(&url).await.unwrap();
        ws.send(Message::text("h1")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("h1"));

        let h2 = H2Connection::connect(&url, &client).await.unwrap();
        let (mut ws, _) = h2.websocket("/", &client).await.unwrap();
        ws.send(Message::text("h2")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("h2"));
    }

    #[tokio::test]
    async fn refuses_a_foreign_origin_over_both_versions() {
        let policy = OriginPolicy::AllowList(vec!["https://app.example".into()]);
        let url =
            start(AcceptConfig::default().handshake(ServerConfig::default().origin(policy))).await;
        let client = ClientBuilder::new().origin("https://evil.example");
        match client.connect(&url).await {
            Err(Error::UpgradeRefused { status, .. }) => assert_eq!(status, 403),
            other => panic!("want a 403, got {other:?}"),
        }
        let h2 = H2Connection::connect(&url, &client).await.unwrap();
        match h2.websocket("/", &client).await {
            Err(Error::H2(H2Error::Refused { status, .. })) => assert_eq!(status, 403),
            other => panic!("want a 403, got {other:?}"),
        }
    }
}

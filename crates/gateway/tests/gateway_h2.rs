//! The gateway translating HTTP/2 extended CONNECT (RFC 8441) into an
//! HTTP/1.1 upgrade upstream, over real sockets, with the `h2` crate as the
//! client and an echo backend that accepts any path.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use switchyard_gateway::config::Config;
use switchyard_gateway::{Gateway, Server};
use tokio::net::TcpStream;

async fn any_path_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let cfg = switchyard::server::AcceptConfig::default();
                let Ok(mut ws) = switchyard::accept(tcp, &cfg).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_data() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn connect_request(path: &str) -> Request<()> {
    Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://localhost{path}"))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from("websocket"))
        .body(())
        .unwrap()
}

fn masked_text(payload: &[u8]) -> Bytes {
    let mask = [9u8, 8, 7, 6];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f.into()
}

async fn read_at_least(body: &mut h2::RecvStream, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .expect("no data")
            .expect("stream ended")
            .unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    out
}

#[tokio::test]
async fn extended_connect_is_proxied_to_an_http11_upstream_and_drained_with_1001() {
    let back = any_path_backend().await;
    let cfg = Config::from_toml_str(
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"h1\", \"h2\"]\n\
             [[upstream]]\nname = \"back\"\nservers = [\"ws://{back}\"]\n\
             [[route]]\npath = \"/ws\"\nupstream = \"back\"\n\
             [route.policy]\ndrain_timeout = \"2s\"\n\
             [[route]]\npath = \"/\"\napp = \"index\"\n"
        ),
        "gw.toml",
    )
    .unwrap();
    let gw = Gateway::new(cfg, None).unwrap();
    let server = Server::bind(gw.clone()).await.unwrap();
    let addr = server.addresses()[0].tcp;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));

    let (send, conn) = h2::client::handshake(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let (resp, mut tx) = send.send_request(connect_request("/ws"), false).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut rx = resp.into_body();
    tx.send_data(masked_text(b"over h2"), false).unwrap();
    let got = read_at_least(&mut rx, 9).await;
    assert_eq!(&got[..2], &[0x81, 7]);
    assert_eq!(&got[2..9], b"over h2");
    assert_eq!(
        gw.metrics().open_connections("/ws", "h2"),
        1,
        "{}",
        gw.metrics().render()
    );
    assert_eq!(
        gw.metrics()
            .handshakes("/ws", switchyard::proto::HttpVersion::Http2),
        1
    );
    let conns = gw.connections().snapshot();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(conns[0].info.tag.route, "/ws");
    assert_eq!(conns[0].info.protocol.label(), "h2");
    assert!(
        conns[0].bytes_in >= 13 && conns[0].bytes_out >= 9,
        "bytes counted: {conns:?}"
    );
    // An unrouted path over h2 is not proxied.
    let (resp, _tx2) = send.send_request(connect_request("/nope"), false).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(resp.status(), StatusCode::OK);

    let _ = stop_tx.send(());
    let got = read_at_least(&mut rx, 4).await;
    assert_eq!(got[0], 0x88, "a close frame");
    assert_eq!(&got[2..4], &1001u16.to_be_bytes(), "close code 1001");
    drop(tx);
    drop(send);
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
}

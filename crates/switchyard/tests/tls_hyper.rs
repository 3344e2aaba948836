//! wss with a self-signed certificate, and the hyper 1 upgrade path.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use switchyard::client::RootSource;
use switchyard::server::{accept, rejection_response, upgrade, AcceptConfig, UpgradeBody};
use switchyard::{ClientBuilder, CloseCode, Error, Message};
use tokio::net::TcpListener;

/// A wss echo server for "localhost" with a fresh self-signed certificate.
/// Returns its address and the certificate in PEM.
async fn wss_echo_server() -> (SocketAddr, String) {
    let (server_cfg, cert) = common::self_signed_tls(&["localhost"], &[b"http/1.1"]);
    let pem = cert.cert.pem();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(ws) = accept(tls, &AcceptConfig::default()).await else {
                    return;
                };
                common::echo_data(ws).await;
            });
        }
    });
    (addr, pem)
}

#[tokio::test]
async fn wss_self_signed_fails_by_default_with_verification_error() {
    let (addr, _) = wss_echo_server().await;
    let url = format!("wss://localhost:{}/", addr.port());
    let err = ClientBuilder::new()
        .roots(RootSource::Webpki)
        .connect(&url)
        .await
        .unwrap_err();
    match &err {
        Error::Tls {
            host,
            source: rustls::Error::InvalidCertificate(_),
        } => {
            assert_eq!(host, "localhost")
        }
        other => panic!("expected certificate error, got {other:?}"),
    }
    assert!(err.to_string().contains("add_ca_file"), "{err}");
}

#[tokio::test]
async fn wss_works_with_added_ca_file() {
    let (addr, pem) = wss_echo_server().await;
    let dir = std::env::temp_dir().join(format!(
        "switchyard-ca-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let url = format!("wss://localhost:{}/", addr.port());
    let (mut ws, _) = ClientBuilder::new()
        .roots(RootSource::None)
        .add_ca_file(&ca)
        .connect(&url)
        .await
        .unwrap();
    assert_eq!(ws.get_ref().alpn_protocol(), Some(&b"http/1.1"[..]));
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn wss_works_with_danger_accept_invalid_certs() {
    let (addr, _) = wss_echo_server().await;
    let url = format!("wss://localhost:{}/", addr.port());
    let (mut ws, _) = ClientBuilder::new()
        .danger_accept_invalid_certs()
        .connect(&url)
        .await
        .unwrap();
    ws.send(Message::binary(vec![9u8; 100_000])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![9u8; 100_000])
    );
}

async fn hyper_echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: hyper::Request<hyper::body::Incoming>| async move {
                        let cfg = AcceptConfig::default();
                        let resp: hyper::Response<UpgradeBody> = match upgrade(&mut req, &cfg) {
                            Ok((resp, fut)) => {
                                tokio::spawn(async move {
                                    let Ok(ws) = fut.await else { return };
                                    common::echo_data(ws).await;
                                });
                                resp
                            }
                            Err(rej) => rejection_response(&rej),
                        };
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn hyper_upgrade_echoes() {
    let addr = hyper_echo_server().await;
    let (mut ws, resp) = ClientBuilder::new()
        .connect(&format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hyper {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("hyper {i}"))
        );
    }
    ws.close(CloseCode::NORMAL, "").await.unwrap();
}

#[tokio::test]
async fn hyper_rejects_plain_get_with_reason() {
    let addr = hyper_echo_server().await;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 4"), "{out}");
    assert!(out.to_ascii_lowercase().contains("upgrade"), "{out}");
}

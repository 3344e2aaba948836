//! Server accept and client connect over real sockets on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::proto::deflate::DeflateConfig;
use switchyard::proto::handshake::HandshakeError;
use switchyard::proto::{Connection, Role};
use switchyard::server::{accept, AcceptConfig};
use switchyard::{ClientBuilder, CloseCode, Deadline, Error, Limits, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An echo server: every data message is sent back; returns its address.
async fn echo_server(cfg: AcceptConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let Ok(ws) = accept(tcp, &cfg).await else {
                    return;
                };
                common::echo_data(ws).await;
            });
        }
    });
    addr
}

fn deflate_server() -> AcceptConfig {
    let mut cfg = AcceptConfig::default();
    cfg.handshake.deflate = Some(DeflateConfig::default());
    cfg
}

async fn round_trips(builder: ClientBuilder, server: AcceptConfig, expect_deflate: bool) {
    let addr = echo_server(server).await;
    let (mut ws, resp) = builder.connect(&format!("ws://{addr}/echo")).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(ws.negotiated().deflate.is_some(), expect_deflate);
    let big = "x".repeat(200_000);
    let msgs = vec![
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(big.as_str()),
        Message::binary(Vec::<u8>::new()),
    ];
    for m in &msgs {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(&ws.next().await.unwrap().unwrap(), m);
    }
    ws.close(CloseCode::NORMAL, "bye").await.unwrap();
}

#[tokio::test]
async fn echo_without_deflate() {
    round_trips(
        ClientBuilder::new().no_deflate(),
        AcceptConfig::default(),
        false,
    )
    .await;
}

#[tokio::test]
async fn echo_with_deflate() {
    round_trips(ClientBuilder::new(), deflate_server(), true).await;
}

#[tokio::test]
async fn deflate_offered_but_server_declines() {
    round_trips(ClientBuilder::new(), AcceptConfig::default(), false).await;
}

#[tokio::test]
async fn first_frame_in_same_write_as_handshake_is_not_lost() {
    let addr = echo_server(AcceptConfig::default()).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut client = Connection::new(Role::Client, Limits::default());
    client.send(Message::text("piggyback")).unwrap();
    let mut bytes = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(client.output());
    tcp.write_all(&bytes).await.unwrap();
    // Read the 101 head, then the echoed frame.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let head_end = loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(String::from_utf8_lossy(&got).contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    client.receive(&got[head_end..]);
    let msg = loop {
        if let Some(m) = client.poll_message().unwrap() {
            break m;
        }
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0);
        client.receive(&buf[..n]);
    };
    assert_eq!(msg, Message::text("piggyback"));
}

/// Send `raw` to a fresh `accept` and return what the server answered.
async fn answer_to(raw: &[u8], limits: Limits, keep_open: bool) -> (String, Error) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = AcceptConfig::default().limits(limits);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, &cfg).await.map(|_| ())
    });
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(raw).await.unwrap();
    if !keep_open {
        tcp.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("server did not close")
        .unwrap();
    let err = server.await.unwrap().unwrap_err();
    (String::from_utf8_lossy(&out).into_owned(), err)
}

#[tokio::test]
async fn slow_head_gets_408() {
    let limits = Limits::default().handshake_timeout(Duration::from_millis(200));
    let (resp, err) = answer_to(b"GET / HTTP/1.1\r\nHost: x\r\n", limits, true).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(matches!(err, Error::HeadTimeout { .. }), "{err:?}");
    assert_eq!(err.http_status(), Some(http::StatusCode::REQUEST_TIMEOUT));
}

#[tokio::test]
async fn huge_head_gets_431() {
    let limits = Limits::default().max_head_bytes(1024);
    let raw = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let (resp, err) = answer_to(raw.as_bytes(), limits, true).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(
        err.http_status(),
        Some(http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    );
}

#[tokio::test]
async fn malformed_head_gets_400() {
    let (resp, err) = answer_to(b"GET / HTTP/1.1\nHost: x\n\n", Limits::default(), true).await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(matches!(err, Error::Head(_)), "{err:?}");
}

#[tokio::test]
async fn plain_get_is_refused_with_reason_in_body() {
    let (resp, err) = answer_to(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Limits::default(),
        true,
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 4"), "{resp}");
    assert!(matches!(err, Error::Handshake(_)), "{err:?}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(
        body.trim(),
        match &err {
            Error::Handshake(e) => e.to_string(),
            _ => unreachable!(),
        }
    );
}

#[tokio::test]
async fn eof_in_head_is_reported_without_answer() {
    let (resp, err) = answer_to(b"GET / HT", Limits::default(), false).await;
    assert_eq!(resp, "");
    assert!(matches!(err, Error::HeadEof { got: 8 }), "{err:?}");
}

/// A fake server that answers every connection with `response`.
async fn fake_server(response: impl Fn(&str) -> Vec<u8> + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let req = String::from_utf8_lossy(&got).into_owned();
        let key = req
            .lines()
            .find_map(|l| {
                l.strip_prefix("Sec-WebSocket-Key: ")
                    .or(l.strip_prefix("sec-websocket-key: "))
            })
            .unwrap_or_default()
            .trim()
            .to_owned();
        tcp.write_all(&response(&key)).await.unwrap();
        let _ = tcp.read(&mut buf).await;
    });
    addr
}

#[tokio::test]
async fn wrong_accept_names_both_values() {
    let addr = fake_server(|_| {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
            .into()
    })
    .await;
    let err = ClientBuilder::new()
        .connect(&format!("ws://{addr}/"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    match &err {
        Error::Handshake(HandshakeError::BadAccept { expected, got }) => {
            assert_eq!(got, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
            assert!(
                msg.contains(expected.as_str()) && msg.contains(got.as_str()),
                "{msg}"
            );
        }
        other => panic!("expected BadAccept, got {other:?}"),
    }
}

#[tokio::test]
async fn non_101_keeps_response_and_explains() {
    let addr = fake_server(|_| {
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\nX-Served-By: proxy\r\n\r\nhello"
            .into()
    })
    .await;
    let err = ClientBuilder::new()
        .connect(&format!("ws://{addr}/"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    match err {
        Error::UpgradeRefused {
            status,
            response,
            body_preview,
            ..
        } => {
            assert_eq!(status, 200);
            assert_eq!(response.headers()["x-served-by"], "proxy");
            assert_eq!(body_preview, "hello");
            assert!(msg.contains("200 OK") && msg.contains("Upgrade"), "{msg}");
        }
        other => panic!("expected UpgradeRefused, got {other:?}"),
    }
}

#[tokio::test]
async fn server_frame_in_same_packet_as_101_reaches_client() {
    let addr = fake_server(|key| {
        let accept = switchyard::proto::handshake::accept_key(key.as_bytes());
        let mut server = Connection::new(Role::Server, Limits::default());
        server.send(Message::text("welcome")).unwrap();
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(server.output());
        out
    })
    .await;
    let (mut ws, _) = ClientBuilder::new()
        .connect(&format!("ws://{addr}/"))
        .await
        .unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("welcome"));
}

#[tokio::test]
async fn connect_refused_is_io_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = switchyard::connect(&format!("ws://{addr}/"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
}

#[tokio::test]
async fn bad_url_is_reported() {
    let err = switchyard::connect("http://example.com/")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Url { .. }), "{err:?}");
}

#[tokio::test]
async fn subprotocol_is_negotiated() {
    let mut cfg = AcceptConfig::default();
    cfg.handshake.subprotocols = vec!["chat.v2".into()];
    let addr = echo_server(cfg).await;
    let (ws, resp) = ClientBuilder::new()
        .subprotocols(["chat.v1", "chat.v2"])
        .connect(&format!("ws://{addr}/"))
        .await
        .unwrap();
    assert_eq!(ws.subprotocol(), Some("chat.v2"));
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v2");
}

#[tokio::test]
async fn builder_sends_origin_headers_and_deflate_offer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let (req, _) = switchyard::read_request_head(&mut tcp, &Limits::default())
            .await
            .unwrap();
        tcp.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        req
    });
    let err = ClientBuilder::new()
        .origin("https://app.example")
        .header(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static("Bearer t0k"),
        )
        .subprotocols(["v1"])
        .connect(&format!("ws://{addr}/path?q=1"))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        Error::UpgradeRefused {
            status: http::StatusCode::FORBIDDEN,
            ..
        }
    ));
    assert!(err.to_string().contains("Origin"), "{err}");
    let req = server.await.unwrap();
    assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/path?q=1");
    assert_eq!(req.headers()["origin"], "https://app.example");
    assert_eq!(req.headers()["authorization"], "Bearer t0k");
    assert_eq!(req.headers()["sec-websocket-protocol"], "v1");
    let ext = req.headers()["sec-websocket-extensions"].to_str().unwrap();
    assert!(ext.starts_with("permessage-deflate"), "{ext}");
}

#[tokio::test]
async fn no_deflate_sends_no_extension_offer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let (req, _) = switchyard::read_request_head(&mut tcp, &Limits::default())
            .await
            .unwrap();
        drop(tcp);
        req
    });
    let err = ClientBuilder::new()
        .no_deflate()
        .connect(&format!("ws://{addr}/"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::HeadEof { got: 0 }), "{err:?}");
    let req = server.await.unwrap();
    assert!(req.headers().get("sec-websocket-extensions").is_none());
}

#[tokio::test]
async fn client_handshake_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _server = tokio::spawn(async move {
        // Accept and never answer.
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(tcp);
    });
    let limits = Limits::default().handshake_timeout(Duration::from_millis(200));
    let err = ClientBuilder::new()
        .limits(limits)
        .connect(&format!("ws://{addr}/"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout(Deadline::OpeningHandshake)),
        "{err:?}"
    );
}

#[tokio::test]
async fn split_client_streams_both_ways_over_tcp() {
    let addr = echo_server(deflate_server()).await;
    let (ws, _) = ClientBuilder::new()
        .connect(&format!("ws://{addr}/"))
        .await
        .unwrap();
    let (mut rx, mut tx) = ws.split();
    const N: usize = 100;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let mut payload = vec![(i % 256) as u8; 32 * 1024];
            payload[0] = (i >> 8) as u8;
            tx.feed(Message::binary(payload)).await.unwrap();
        }
        tx.flush().await.unwrap();
        tx
    });
    for i in 0..N {
        match rx.next().await {
            Some(Ok(Message::Binary(b))) => {
                assert_eq!(b.len(), 32 * 1024);
                assert_eq!(
                    (b[0], b[1]),
                    ((i >> 8) as u8, (i % 256) as u8),
                    "message {i}"
                );
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    let mut tx = writer.await.unwrap();
    tx.close(CloseCode::NORMAL, "").await.unwrap();
    assert!(matches!(rx.next().await, Some(Ok(Message::Close(_)))));
    assert!(rx.next().await.is_none());
}

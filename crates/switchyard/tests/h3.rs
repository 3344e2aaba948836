//! WebSocket over HTTP/3 (RFC 9220) over loopback UDP: our client against
//! our server.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode};
use switchyard::client::RootSource;
use switchyard::h3::{self, H3Connection};
use switchyard::proto::deflate::DeflateConfig;
use switchyard::proto::handshake::OriginPolicy;
use switchyard::server::AcceptConfig;
use switchyard::{ClientBuilder, CloseCode, Error, Limits, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

struct Server {
    addr: SocketAddr,
    ca: PathBuf,
    accepted: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

fn tls_config() -> (rustls::ServerConfig, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    (cfg, pem)
}

/// An HTTP/3 echo server on 127.0.0.1 (data messages echoed, the
/// WebSocket closed when the peer closes).
async fn echo_server(cfg: AcceptConfig) -> Server {
    let (tls, pem) = tls_config();
    let endpoint = h3::bind_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let dir = std::env::temp_dir().join(format!(
        "switchyard-h3-{}-{}",
        std::process::id(),
        addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(h3::serve(
        endpoint,
        cfg,
        move |req, ws| {
            assert_eq!(req.method(), http::Method::CONNECT);
            let peer = req.extensions().get::<SocketAddr>().copied();
            assert!(peer.is_some_and(|p| p.ip().is_loopback()), "{peer:?}");
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(common::echo_data(ws));
        },
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        ca,
        accepted,
        _stop: stop,
    }
}

/// A QUIC endpoint on 127.0.0.1 with a fresh self-signed certificate, its
/// port, and the certificate written to a CA file named after `tag`.
fn bind_with_ca(tag: &str) -> (quinn::Endpoint, u16, PathBuf) {
    let (tls, pem) = tls_config();
    let endpoint = h3::bind_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
    let port = endpoint.local_addr().unwrap().port();
    let ca = std::env::temp_dir().join(format!("switchyard-h3-{tag}-{port}.pem"));
    std::fs::write(&ca, pem).unwrap();
    (endpoint, port, ca)
}

/// A client trusting only `ca`, with `handshake` as its handshake timeout.
fn ca_client(ca: &std::path::Path, handshake: Duration) -> ClientBuilder {
    ClientBuilder::new()
        .roots(RootSource::None)
        .add_ca_file(ca)
        .limits(Limits::default().handshake_timeout(handshake))
}

fn client(server: &Server) -> ClientBuilder {
    ClientBuilder::new()
        .roots(RootSource::None)
        .add_ca_file(&server.ca)
}

fn url(server: &Server, path: &str) -> String {
    format!("wss://127.0.0.1:{}{}", server.addr.port(), path)
}

#[tokio::test]
async fn echo_text_and_binary() {
    let server = echo_server(AcceptConfig::default()).await;
    let (mut ws, resp) = h3::connect_h3(&url(&server, "/echo"), &client(&server).no_deflate())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_3);
    ws.send(Message::text("hello over h3")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello over h3")
    );
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(CloseCode::NORMAL, "done").await.unwrap();
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn permessage_deflate_and_subprotocol_are_negotiated() {
    let mut cfg = AcceptConfig::default();
    cfg.handshake.deflate = Some(DeflateConfig::default());
    cfg.handshake.subprotocols = vec!["chat".into()];
    let server = echo_server(cfg).await;
    let builder = client(&server)
        .deflate(DeflateConfig::default())
        .subprotocols(["superchat", "chat"]);
    let (mut ws, resp) = h3::connect_h3(&url(&server, "/"), &builder).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert!(resp.headers()["sec-websocket-extensions"]
        .to_str()
        .unwrap()
        .starts_with("permessage-deflate"));
    assert_eq!(ws.subprotocol(), Some("chat"));
    assert!(ws.negotiated().deflate.is_some());
    let text = "compress me ".repeat(10_000);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
}

#[tokio::test]
async fn message_over_the_server_limit_closes_with_1009() {
    let cfg = AcceptConfig::default().limits(Limits::default().max_message_size(1024));
    let server = echo_server(cfg).await;
    let (mut ws, _) = h3::connect_h3(&url(&server, "/"), &client(&server).no_deflate())
        .await
        .unwrap();
    ws.send(Message::binary(vec![7u8; 1000])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![7u8; 1000])
    );
    ws.send(Message::binary(vec![7u8; 2000])).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::MESSAGE_TOO_BIG),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn other_protocol_gets_501() {
    let server = echo_server(AcceptConfig::default()).await;
    let conn = H3Connection::connect(&url(&server, "/"), &client(&server))
        .await
        .unwrap();
    assert!(conn.peer_settings().unwrap().enable_connect_protocol);
    let mut h = HeaderMap::new();
    h.insert("sec-websocket-version", HeaderValue::from_static("13"));
    match conn.extended_connect("connect-udp", "/", &h).await {
        Err(Error::UpgradeRefused {
            status,
            body_preview,
            ..
        }) => {
            assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
            assert!(body_preview.contains("websocket"), "{body_preview}");
        }
        other => panic!("expected 501, got {other:?}"),
    }
    // The connection is still usable.
    let (mut ws, _) = conn.websocket("/").await.unwrap();
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_version_gets_400_with_version_13() {
    let server = echo_server(AcceptConfig::default()).await;
    let conn = H3Connection::connect(&url(&server, "/"), &client(&server))
        .await
        .unwrap();
    let mut h = HeaderMap::new();
    h.insert("sec-websocket-version", HeaderValue::from_static("8"));
    match conn.extended_connect("websocket", "/", &h).await {
        Err(Error::UpgradeRefused {
            status, response, ..
        }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(response.headers()["sec-websocket-version"], "13");
        }
        other => panic!("expected 400, got {other:?}"),
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn origin_policy_refuses_with_403() {
    let mut cfg = AcceptConfig::default();
    cfg.handshake.origin = OriginPolicy::AllowList(vec!["https://good.example".into()]);
    let server = echo_server(cfg).await;
    let bad = client(&server).origin("https://evil.example");
    match h3::connect_h3(&url(&server, "/"), &bad).await {
        Err(Error::UpgradeRefused { status, .. }) => assert_eq!(status, StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {other:?}"),
    }
    let good = client(&server).origin("https://good.example");
    assert!(h3::connect_h3(&url(&server, "/"), &good).await.is_ok());
}

#[tokio::test]
async fn many_websockets_on_one_connection() {
    let server = echo_server(AcceptConfig::default()).await;
    let conn = H3Connection::connect(&url(&server, "/"), &client(&server))
        .await
        .unwrap();
    let mut sockets = Vec::new();
    for i in 0..5 {
        let (ws, _) = conn.websocket(&format!("/ws/{i}")).await.unwrap();
        sockets.push(ws);
    }
    for round in 0..3 {
        for (i, ws) in sockets.iter_mut().enumerate() {
            ws.send(Message::text(format!("{i}-{round}")))
                .await
                .unwrap();
        }
        for (i, ws) in sockets.iter_mut().enumerate().rev() {
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::text(format!("{i}-{round}"))
            );
        }
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn slow_reader_does_not_stall_other_streams() {
    let server = echo_server(AcceptConfig::default()).await;
    let conn = H3Connection::connect(&url(&server, "/"), &client(&server).no_deflate())
        .await
        .unwrap();
    let (mut slow, _) = conn.websocket("/slow").await.unwrap();
    let (mut fast, _) = conn.websocket("/fast").await.unwrap();
    // Fill the slow stream: the server echoes, nobody reads the echoes.
    let chunk = vec![1u8; 64 * 1024];
    for _ in 0..40 {
        let sent = tokio::time::timeout(
            Duration::from_millis(300),
            slow.send(Message::binary(chunk.clone())),
        )
        .await;
        if sent.is_err() {
            break; // back-pressure reached
        }
    }
    for i in 0..20 {
        fast.send(Message::text(format!("ping {i}"))).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), fast.next())
            .await
            .expect("the fast stream stalled behind the slow one");
        assert_eq!(got.unwrap().unwrap(), Message::text(format!("ping {i}")));
    }
}

#[tokio::test]
async fn raw_stream_after_extended_connect_carries_bytes_both_ways() {
    // The stream adapter alone: masked frames written by hand.
    let server = echo_server(AcceptConfig::default()).await;
    let conn = H3Connection::connect(&url(&server, "/"), &client(&server))
        .await
        .unwrap();
    let mut h = HeaderMap::new();
    h.insert("sec-websocket-version", HeaderValue::from_static("13"));
    let (mut stream, resp) = conn
        .extended_connect("websocket", "/raw", &h)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mask = [1u8, 2, 3, 4];
    let payload = b"raw h3";
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    // Written in two pieces: the server must reassemble.
    stream.write_all(&frame[..3]).await.unwrap();
    stream.flush().await.unwrap();
    stream.write_all(&frame[3..]).await.unwrap();
    stream.flush().await.unwrap();
    let mut got = [0u8; 8];
    stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..2], &[0x81, payload.len() as u8]);
    assert_eq!(&got[2..], payload);
    stream.shutdown().await.unwrap();
}

#[tokio::test]
async fn untrusted_certificate_fails() {
    let server = echo_server(AcceptConfig::default()).await;
    let builder = ClientBuilder::new().roots(RootSource::Webpki);
    let err = h3::connect_h3(&url(&server, "/"), &builder)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("certificate") && msg.contains("add_ca_file"),
        "{msg}"
    );
    assert_eq!(server.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn ws_scheme_is_refused_for_h3() {
    let err = h3::connect_h3("ws://127.0.0.1:1/", &ClientBuilder::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Url { .. }), "{err:?}");
}

#[tokio::test]
async fn shutdown_stops_serving_and_closes_connections() {
    let (endpoint, port, ca) = bind_with_ca("shutdown");
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(h3::serve(
        endpoint,
        AcceptConfig::default(),
        |_req, ws| {
            tokio::spawn(common::echo_data(ws));
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let builder = ClientBuilder::new()
        .roots(RootSource::None)
        .add_ca_file(&ca);
    let url = format!("wss://127.0.0.1:{port}/");
    let (mut ws, _) = h3::connect_h3(&url, &builder).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
    // The WebSocket's connection was closed: the stream ends with an error.
    let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the client did not see the shutdown");
    assert!(matches!(next, Some(Err(_)) | None), "{next:?}");
    // And nothing answers any more.
    let quick = ca_client(&ca, Duration::from_millis(500));
    assert!(h3::connect_h3(&url, &quick).await.is_err());
    let _ = std::fs::remove_file(&ca);
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_until_one_closes() {
    let (endpoint, port, ca) = bind_with_ca("cap");
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(h3::serve_with_max_connections(
        endpoint,
        AcceptConfig::default(),
        1,
        |_req, _ws| {},
        async move {
            let _ = stopped.await;
        },
    ));
    let builder = ca_client(&ca, Duration::from_secs(3));
    let url = format!("wss://127.0.0.1:{port}/");
    let first = H3Connection::connect(&url, &builder).await.unwrap();
    let refused = H3Connection::connect(&url, &builder).await.unwrap_err();
    assert!(
        refused.to_string().contains("refused") || refused.to_string().contains("REFUSED"),
        "{refused}"
    );
    first.close();
    first.quic().closed().await;
    // The server notices the close and frees the slot.
    let mut ok = false;
    for _ in 0..20 {
        if H3Connection::connect(&url, &builder).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ok,
        "the slot was not freed after the first connection closed"
    );
    let _ = std::fs::remove_file(&ca);
}

#[tokio::test]
async fn route_hook_refuses_before_the_200() {
    let (endpoint, port, ca) = bind_with_ca("route");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (_stop, stopped) = oneshot::channel::<()>();
    let server = h3::H3Server::new(AcceptConfig::default()).route(|req| {
        if req.uri().path() == "/chat" {
            Ok(())
        } else {
            Err((
                StatusCode::NOT_FOUND,
                format!("no WebSocket at {}", req.uri().path()),
            ))
        }
    });
    tokio::spawn(server.serve(
        endpoint,
        move |req, _ws| {
            assert_eq!(req.uri().path(), "/chat");
            count.fetch_add(1, Ordering::SeqCst);
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let builder = ClientBuilder::new()
        .roots(RootSource::None)
        .add_ca_file(&ca);
    match h3::connect_h3(&format!("wss://127.0.0.1:{port}/other"), &builder).await {
        Err(Error::UpgradeRefused {
            status,
            body_preview,
            ..
        }) => {
            assert_eq!(status, StatusCode::NOT_FOUND);
            assert_eq!(body_preview, "no WebSocket at /other\n");
        }
        other => panic!("expected 404, got {other:?}"),
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    let (_ws, resp) = h3::connect_h3(&format!("wss://127.0.0.1:{port}/chat"), &builder)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let _ = std::fs::remove_file(&ca);
}

#[tokio::test]
async fn drain_sends_goaway_rejects_new_requests_and_keeps_open_ones() {
    let (endpoint, port, ca) = bind_with_ca("drain");
    let (drain, drain_rx) = tokio::sync::watch::channel(false);
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(
        h3::H3Server::new(AcceptConfig::default())
            .drain_on(drain_rx)
            .serve(
                endpoint,
                |_req, ws| {
                    tokio::spawn(common::echo_data(ws));
                },
                async move {
                    let _ = stopped.await;
                },
            ),
    );
    let builder = ca_client(&ca, Duration::from_millis(800));
    let url = format!("wss://127.0.0.1:{port}/");
    let conn = H3Connection::connect(&url, &builder).await.unwrap();
    let (mut first, _) = conn.websocket("/a").await.unwrap();
    let (mut second, _) = conn.websocket("/b").await.unwrap();
    assert_eq!(conn.going_away(), None);

    drain.send(true).unwrap();
    // The GOAWAY names the first request stream not accepted: streams 0 and 4
    // were, so 8.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.going_away().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no GOAWAY");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(conn.going_away(), Some(8));
    // Our client opens nothing new on that connection, and says why.
    let e = conn.websocket("/c").await.unwrap_err().to_string();
    assert!(e.contains("GOAWAY"), "{e}");
    // A request sent anyway (a client that ignores GOAWAY) is reset with
    // H3_REQUEST_REJECTED: not processed, safe to retry elsewhere.
    let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
    send.write_all(b"\x01\x00").await.unwrap();
    let mut buf = [0u8; 16];
    match tokio::time::timeout(Duration::from_secs(5), recv.read(&mut buf))
        .await
        .unwrap()
    {
        Err(quinn::ReadError::Reset(code)) => assert_eq!(code, quinn::VarInt::from_u32(0x10b)),
        other => panic!("expected H3_REQUEST_REJECTED, got {other:?}"),
    }
    // What was open before the drain goes on.
    for ws in [&mut first, &mut second] {
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("still here")
        );
    }
    // No new QUIC connection is accepted while draining.
    assert!(H3Connection::connect(&url, &builder).await.is_err());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
    let _ = std::fs::remove_file(&ca);
}

//! WebSocket over HTTP/2 (RFC 8441): a real hyper HTTP/2 server whose service
//! calls `switchyard::h2::accept` and echoes, and the `H2Connection` client.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Version};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::h2::{accept, connect_h2, server_builder, H2Connection};
use switchyard::proto::handshake::OriginPolicy;
use switchyard::server::{rejection_response, AcceptConfig, UpgradeBody};
use switchyard::H2Error;
use switchyard::{ClientBuilder, CloseCode, CloseFrame, Error, Limits, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Body = UpgradeBody;

/// What the server saw: the close code of each WebSocket that ended in error.
type Events = mpsc::UnboundedSender<Option<CloseCode>>;

async fn service(
    mut req: hyper::Request<hyper::body::Incoming>,
    cfg: Arc<AcceptConfig>,
    events: Option<Events>,
) -> Result<hyper::Response<Body>, Infallible> {
    match accept(&mut req, &cfg) {
        Ok((resp, fut)) => {
            tokio::spawn(async move {
                let Ok(mut ws) = fut.await else { return };
                loop {
                    match ws.next().await {
                        Some(Ok(m)) if m.is_data() => {
                            if ws.send(m).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            if let Some(ev) = &events {
                                let _ = ev.send(e.close_code());
                            }
                            return;
                        }
                        None => return,
                    }
                }
            });
            Ok(resp)
        }
        Err(rej) => Ok(rejection_response(&rej)),
    }
}

/// An HTTP/2 (prior knowledge) echo server on 127.0.0.1:0 built with
/// `server_builder(websocket, ..)`.
async fn h2_server(cfg: AcceptConfig, websocket: bool, events: Option<Events>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Arc::new(cfg);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let builder = server_builder(websocket, &cfg.limits);
            let cfg = cfg.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    service(req, cfg.clone(), events.clone())
                });
                let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    addr
}

fn plain_builder() -> ClientBuilder {
    ClientBuilder::new().no_deflate()
}

#[tokio::test]
async fn one_websocket_over_h2_echoes_and_reports_http2() {
    let addr = h2_server(AcceptConfig::default(), true, None).await;
    let url = format!("ws://127.0.0.1:{}/echo?x=1", addr.port());
    let (mut ws, resp) = connect_h2(&url, &plain_builder()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), Version::HTTP_2);
    ws.send(Message::text("hello h2")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello h2"));
    ws.close(CloseCode::NORMAL, "done").await.unwrap();
}

#[tokio::test]
async fn fifty_websockets_multiplexed_on_one_connection() {
    let addr = h2_server(AcceptConfig::default(), true, None).await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let builder = plain_builder();
    let conn = H2Connection::connect(&url, &builder).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let conn = conn.clone();
        let builder = builder.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = conn.websocket(&format!("/s{i}"), &builder).await.unwrap();
            for j in 0..20 {
                let text = format!("stream {i} message {j}");
                ws.send(Message::text(text.clone())).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
            }
            ws.close(CloseCode::NORMAL, "").await.unwrap();
        }));
    }
    let all = futures_util::future::join_all(tasks);
    for r in tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("50 multiplexed WebSockets did not finish in time")
    {
        r.unwrap();
    }
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn slow_reader_on_one_stream_does_not_stall_the_others() {
    let addr = h2_server(AcceptConfig::default(), true, None).await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let builder = plain_builder();
    let conn = H2Connection::connect(&url, &builder).await.unwrap();

    // The slow stream: we send far more than the stream windows and buffers
    // hold and never read the echoes, so the server's writes block and then
    // ours do.
    let (slow, _) = conn.websocket("/slow", &builder).await.unwrap();
    let slow_writer = tokio::spawn(async move {
        let mut slow = slow;
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..128 {
            // 8 MiB in total
            if slow.send(Message::Binary(chunk.clone())).await.is_err() {
                break;
            }
        }
        slow
    });
    // Let it fill its windows.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut tasks = Vec::new();
    for i in 0..5 {
        let conn = conn.clone();
        let builder = builder.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = conn
                .websocket(&format!("/fast{i}"), &builder)
                .await
                .unwrap();
            let payload = Bytes::from(vec![i as u8; 8 * 1024]);
            for _ in 0..100 {
                ws.send(Message::Binary(payload.clone())).await.unwrap();
                assert_eq!(
                    ws.next().await.unwrap().unwrap(),
                    Message::Binary(payload.clone())
                );
            }
        }));
    }
    let all = futures_util::future::join_all(tasks);
    // A stall is forever; 10 s only leaves room for a loaded machine.
    for r in tokio::time::timeout(Duration::from_secs(10), all)
        .await
        .expect("the other streams stalled behind the slow reader")
    {
        r.unwrap();
    }
    // The slow stream really is blocked by flow control.
    assert!(
        !slow_writer.is_finished(),
        "the slow stream was never flow-controlled; the test proves nothing"
    );
    slow_writer.abort();
}

#[tokio::test]
async fn deflate_is_negotiated_over_h2() {
    let mut cfg = AcceptConfig::default();
    cfg.handshake.deflate = Some(Default::default());
    let addr = h2_server(cfg, true, None).await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let (mut ws, resp) = connect_h2(&url, &ClientBuilder::new()).await.unwrap();
    let ext = resp.headers()["sec-websocket-extensions"].to_str().unwrap();
    assert!(ext.starts_with("permessage-deflate"), "{ext}");
    assert!(ws.negotiated().deflate.is_some());
    let text = "compress me ".repeat(10_000);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
}

#[tokio::test]
async fn no_deflate_when_the_server_does_not_offer_it() {
    let addr = h2_server(AcceptConfig::default(), true, None).await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let (ws, resp) = connect_h2(&url, &ClientBuilder::new()).await.unwrap();
    assert!(resp.headers().get("sec-websocket-extensions").is_none());
    assert!(ws.negotiated().deflate.is_none());
}

#[tokio::test]
async fn subprotocol_is_negotiated_over_h2() {
    let mut cfg = AcceptConfig::default();
    cfg.handshake.subprotocols = vec!["chat".into()];
    let addr = h2_server(cfg, true, None).await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let builder = plain_builder().subprotocols(["superchat", "chat"]);
    let (ws, resp) = connect_h2(&url, &builder).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert_eq!(ws.subprotocol(), Some("chat"));
}

#[tokio::test]
async fn forbidden_origin_is_403_over_h2() {
    let mut cfg = AcceptConfig::default();
    cfg.handshake.origin = OriginPolicy::AllowList(vec!["https://good.example".into()]);
    let addr = h2_server(cfg, true, None).await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let builder = plain_builder().origin("https://evil.example");
    match connect_h2(&url, &builder).await {
        Err(Error::H2(H2Error::Refused { status, .. })) => {
            assert_eq!(status, StatusCode::FORBIDDEN)
        }
        other => panic!("expected 403, got {:?}", other.map(|r| r.1)),
    }
}

#[tokio::test]
async fn message_over_the_limit_is_closed_with_1009_as_over_http1() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cfg = AcceptConfig::default().limits(Limits::default().max_message_size(1024));
    let addr = h2_server(cfg, true, Some(tx)).await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let (mut ws, _) = connect_h2(&url, &plain_builder()).await.unwrap();
    ws.send(Message::binary(vec![0u8; 1024])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8; 1024])
    );
    ws.send(Message::binary(vec![0u8; 1025])).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::MESSAGE_TOO_BIG),
        other => panic!("expected close 1009, got {other:?}"),
    }
    assert_eq!(rx.recv().await, Some(Some(CloseCode::MESSAGE_TOO_BIG)));
}

/// A plain hyper HTTP/2 client, to send requests `H2Connection` never sends.
async fn raw_hyper_client(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // Give the server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) time to land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    send
}

#[tokio::test]
async fn other_protocol_gets_501() {
    let addr = h2_server(AcceptConfig::default(), true, None).await;
    let mut send = raw_hyper_client(addr).await;
    let mut req = Request::new(Empty::new());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = format!("http://127.0.0.1:{}/", addr.port())
        .parse()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-version", "13".parse().unwrap());
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("connect-udp"));
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
}

#[tokio::test]
async fn connect_without_protocol_gets_400() {
    let addr = h2_server(AcceptConfig::default(), true, None).await;
    let mut send = raw_hyper_client(addr).await;
    let mut req = Request::new(Empty::new());
    *req.method_mut() = Method::CONNECT;
    // A classic CONNECT: :authority only.
    *req.uri_mut() = format!("127.0.0.1:{}", addr.port()).parse().unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn plain_get_over_h2_gets_400() {
    let addr = h2_server(AcceptConfig::default(), true, None).await;
    let mut send = raw_hyper_client(addr).await;
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = format!("http://127.0.0.1:{}/", addr.port())
        .parse()
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn server_without_connect_protocol_setting_is_a_clear_error() {
    let addr = h2_server(AcceptConfig::default(), false, None).await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let err = H2Connection::connect(&url, &plain_builder())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::H2(H2Error::NoConnectProtocol { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("SETTINGS_ENABLE_CONNECT_PROTOCOL"),
        "{err}"
    );
}

#[tokio::test]
async fn http1_only_server_is_a_clear_error_for_prior_knowledge() {
    // An HTTP/1.1 server answers the HTTP/2 preface with garbage/close.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    });
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let err = H2Connection::connect(&url, &plain_builder())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::H2(H2Error::ClosedBeforeSettings { .. })),
        "{err:?}"
    );
}

// ------------------------------------------------------------------ TLS

fn tls_server_config(alpn: &[&[u8]]) -> (Arc<rustls::ServerConfig>, String) {
    let (cfg, cert) = common::self_signed_tls(&["localhost"], alpn);
    (Arc::new(cfg), cert.cert.pem())
}

async fn tls_h2_server(alpn: &[&[u8]]) -> (SocketAddr, tempfile_path::Path) {
    let (tls, pem) = tls_server_config(alpn);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Arc::new(AcceptConfig::default());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| service(req, cfg.clone(), None));
                let _ = server_builder(true, &Limits::default())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, tempfile_path::Path::write(&pem))
}

/// A PEM file in the temp dir, removed on drop.
mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Path {
        pub fn write(pem: &str) -> Path {
            let p = std::env::temp_dir().join(format!(
                "switchyard-h2-ca-{}-{}.pem",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::write(&p, pem).unwrap();
            Path(p)
        }
    }
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }
}

#[tokio::test]
async fn wss_over_h2_with_alpn() {
    let (addr, ca) = tls_h2_server(&[b"h2", b"http/1.1"]).await;
    let builder = plain_builder()
        .roots(switchyard::client::RootSource::None)
        .add_ca_file(&ca.0);
    let url = format!("wss://localhost:{}/tls", addr.port());
    let conn = H2Connection::connect(&url, &builder).await.unwrap();
    for i in 0..3 {
        let (mut ws, resp) = conn.websocket("/tls", &builder).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        ws.send(Message::text(format!("tls {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("tls {i}"))
        );
    }
}

#[tokio::test]
async fn wss_server_without_h2_alpn_is_a_clear_error() {
    let (addr, ca) = tls_h2_server(&[b"http/1.1"]).await;
    let builder = plain_builder()
        .roots(switchyard::client::RootSource::None)
        .add_ca_file(&ca.0);
    let url = format!("wss://localhost:{}/", addr.port());
    let err = H2Connection::connect(&url, &builder).await.unwrap_err();
    assert!(
        matches!(err, Error::H2(H2Error::NoAlpnH2 { .. })),
        "{err:?}"
    );
    assert!(err.to_string().contains("HTTP/1.1"), "{err}");
}

// ------------------------------------------------------------- floods

/// Write one raw HTTP/2 frame header + payload.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Read raw HTTP/2 frames until a GOAWAY; its error code, or `None` at EOF.
async fn read_goaway(tcp: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<u32> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut at = 0;
    loop {
        let n = tcp.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        // Walk complete frames.
        while buf.len() >= at + 9 {
            let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
            if buf.len() < at + 9 + len {
                break;
            }
            if buf[at + 3] == 0x7 && len >= 8 {
                let p = &buf[at + 9..at + 9 + len];
                return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
            at += 9 + len;
        }
    }
}

/// HTTP/2 rapid reset (CVE-2023-44487): 10,000 streams, each opened with a
/// complete request and reset at once, in one burst. The server must stop it
/// with GOAWAY ENHANCE_YOUR_CALM (`max_pending_accept_reset_streams`)
/// instead of serving every stream.
#[tokio::test]
async fn rapid_reset_flood_gets_goaway_enhance_your_calm() {
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = served.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |req| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            service(req, Arc::new(AcceptConfig::default()), None)
        });
        let _ = server_builder(true, &Limits::default())
            .serve_connection(TokioIo::new(tcp), svc)
            .await;
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
                                     // :method GET, :scheme http, :path /, :authority "a" (literal, indexed name).
    let block = [0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
    for i in 0..10_000u32 {
        let id = 2 * i + 1;
        frame(&mut out, 0x1, 0x5, id, &block); // HEADERS, END_STREAM|END_HEADERS
        frame(&mut out, 0x3, 0, id, &8u32.to_be_bytes()); // RST_STREAM CANCEL
    }
    let (mut rd, mut wr) = tcp.into_split();
    tokio::spawn(async move {
        // The server may close before reading everything: ignore errors.
        let _ = wr.write_all(&out).await;
        // Keep the write half open until the end of the test.
        std::future::pending::<()>().await;
    });
    let code = tokio::time::timeout(Duration::from_secs(10), read_goaway(&mut rd))
        .await
        .expect("the server neither served nor stopped the flood");
    assert_eq!(code, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM expected");
    let served = served.load(std::sync::atomic::Ordering::Relaxed);
    assert!(served < 10_000, "all {served} reset streams were served");
}

#[tokio::test]
async fn continuation_flood_gets_goaway_enhance_your_calm() {
    let addr = h2_server(AcceptConfig::default(), true, None).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
                                     // HEADERS (END_STREAM, no END_HEADERS) starting a literal header whose
                                     // name is 16,510 bytes long: the block stays incomplete, so only the
                                     // number of CONTINUATION frames can stop it.
    frame(&mut out, 0x1, 0x1, 1, &[0x00, 0x7f, 0xff, 0x7f]);
    for _ in 0..1000 {
        frame(&mut out, 0x9, 0, 1, b"a"); // CONTINUATION, no END_HEADERS
    }
    // The server may close before reading everything: ignore write errors.
    let _ = tcp.write_all(&out).await;

    let read_goaway = read_goaway(&mut tcp);
    let code = tokio::time::timeout(Duration::from_secs(5), read_goaway)
        .await
        .expect("no GOAWAY after the CONTINUATION flood");
    assert_eq!(code, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM expected");
}

/// An HPACK literal header field without indexing, new name (RFC 7541 §6.2.2).
fn literal(block: &mut Vec<u8>, name: &str, value: &str) {
    block.push(0x00);
    block.push(name.len() as u8);
    block.extend_from_slice(name.as_bytes());
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

/// The header block of an RFC 8441 extended CONNECT for a WebSocket, plus `extra`.
fn extended_connect_block(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", "CONNECT");
    literal(&mut b, ":protocol", "websocket");
    literal(&mut b, ":scheme", "http");
    literal(&mut b, ":path", "/");
    literal(&mut b, ":authority", "localhost");
    literal(&mut b, "sec-websocket-version", "13");
    for (n, v) in extra {
        literal(&mut b, n, v);
    }
    b
}

#[derive(Debug, PartialEq)]
enum StreamAnswer {
    /// HEADERS whose first field is the static `:status 200` (0x88).
    Ok200,
    /// Other HEADERS (first byte of the block).
    Headers(u8),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY with this error code.
    GoAway(u32),
}

/// Send one request on stream 1 with raw frames; the server's first answer.
async fn raw_request(addr: SocketAddr, block: &[u8]) -> StreamAnswer {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    frame(&mut out, 0x4, 0, 0, &[]); // SETTINGS
    frame(&mut out, 0x1, 0x4, 1, block); // HEADERS, END_HEADERS
    tcp.write_all(&out).await.unwrap();
    let answer = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut at = 0;
        loop {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed without answering");
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= at + 9 {
                let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
                if buf.len() < at + 9 + len {
                    break;
                }
                let kind = buf[at + 3];
                let p = &buf[at + 9..at + 9 + len];
                match kind {
                    0x1 if p.first() == Some(&0x88) => return StreamAnswer::Ok200,
                    0x1 => return StreamAnswer::Headers(p.first().copied().unwrap_or(0)),
                    0x3 => {
                        return StreamAnswer::Reset(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
                    }
                    0x7 => {
                        return StreamAnswer::GoAway(u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
                    }
                    _ => {}
                }
                at += 9 + len;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("no answer to the request")
}

#[tokio::test]
async fn raw_extended_connect_is_answered_200() {
    // The control case of the two tests below: the same request, well-formed.
    let addr = h2_server(AcceptConfig::default(), true, None).await;
    assert_eq!(
        raw_request(addr, &extended_connect_block(&[])).await,
        StreamAnswer::Ok200
    );
}

#[tokio::test]
async fn upgrade_or_connection_header_over_h2_is_a_malformed_request() {
    let addr = h2_server(AcceptConfig::default(), true, None).await;
    for extra in [("upgrade", "websocket"), ("connection", "upgrade")] {
        let answer = raw_request(addr, &extended_connect_block(&[extra])).await;
        // RFC 9113 §8.2.2: a stream error of type PROTOCOL_ERROR.
        assert_eq!(answer, StreamAnswer::Reset(0x1), "{extra:?}");
    }
}

#[tokio::test]
async fn extended_connect_without_the_setting_is_refused() {
    // Server without SETTINGS_ENABLE_CONNECT_PROTOCOL: :protocol is not
    // allowed at all (RFC 8441 §3), the stream is reset with PROTOCOL_ERROR.
    let addr = h2_server(AcceptConfig::default(), false, None).await;
    assert_eq!(
        raw_request(addr, &extended_connect_block(&[])).await,
        StreamAnswer::Reset(0x1)
    );
}

/// An HTTP/2 server (extended CONNECT on) whose every answer comes from `f`.
async fn custom_h2_server<F, Fut>(f: F) -> SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<Empty<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let f = f.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let fut = f(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = server_builder(true, &Limits::default())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn client_rejects_a_subprotocol_it_did_not_offer() {
    let addr = custom_h2_server(|_req| async {
        let mut r = hyper::Response::new(Empty::new());
        r.headers_mut()
            .insert("sec-websocket-protocol", "bogus".parse().unwrap());
        r
    })
    .await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let builder = plain_builder().subprotocols(["chat"]);
    match connect_h2(&url, &builder).await {
        Err(Error::Handshake(e)) => assert!(e.to_string().contains("bogus"), "{e}"),
        other => panic!("expected a subprotocol error, got {:?}", other.map(|r| r.1)),
    }
}

#[tokio::test]
async fn client_rejects_an_extension_it_did_not_offer() {
    let addr = custom_h2_server(|_req| async {
        let mut r = hyper::Response::new(Empty::new());
        r.headers_mut().insert(
            "sec-websocket-extensions",
            "permessage-deflate".parse().unwrap(),
        );
        r
    })
    .await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    match connect_h2(&url, &plain_builder()).await {
        Err(Error::Handshake(e)) => assert!(e.to_string().contains("offered no"), "{e}"),
        other => panic!("expected an extension error, got {:?}", other.map(|r| r.1)),
    }
}

#[tokio::test]
async fn unanswered_connect_times_out_with_the_handshake_timeout() {
    let addr = custom_h2_server(|_req| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        hyper::Response::new(Empty::new())
    })
    .await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let builder =
        plain_builder().limits(Limits::default().handshake_timeout(Duration::from_millis(300)));
    let conn = H2Connection::connect(&url, &builder).await.unwrap();
    // The server never answers: only the handshake timeout can end this (the
    // outer bound is a hang guard).
    let opened = tokio::time::timeout(Duration::from_secs(60), conn.websocket("/", &builder))
        .await
        .expect("the handshake timeout did not fire");
    match opened {
        Err(Error::Timeout(what)) => assert_eq!(what, switchyard::Deadline::OpeningHandshake),
        other => panic!("expected a timeout, got {:?}", other.map(|r| r.1)),
    }
}

#[tokio::test]
async fn refusal_names_the_status() {
    let addr = custom_h2_server(|_req| async {
        let mut r = hyper::Response::new(Empty::new());
        *r.status_mut() = StatusCode::NOT_FOUND;
        r
    })
    .await;
    let url = format!("ws://127.0.0.1:{}/nowhere", addr.port());
    let err = connect_h2(&url, &plain_builder()).await.unwrap_err();
    assert!(
        matches!(&err, Error::H2(H2Error::Refused { status, .. }) if *status == StatusCode::NOT_FOUND),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("404") && msg.contains("/nowhere"), "{msg}");
}

/// RFC 9113 §8.1: once the server has sent its whole response (here its close
/// frame and END_STREAM) it may reset the stream with NO_ERROR, and the client
/// must not count the response as failed. The switchyard server does exactly
/// that when it drops the WebSocket before the client's END_STREAM came. Our
/// close frame sits in hyper's send queue while that happens (we sent a text
/// just before, so the queue is full): its flush must still succeed, and the
/// stream must end cleanly with the echo and the server's close.
#[tokio::test]
async fn server_reset_with_no_error_after_its_close_is_a_clean_close() {
    let (done_tx, mut done) = mpsc::unbounded_channel::<()>();
    let addr = custom_h2_server(move |mut req| {
        let done_tx = done_tx.clone();
        async move {
            if req.uri().path() == "/barrier" {
                let mut r = hyper::Response::new(Empty::new());
                *r.status_mut() = StatusCode::NOT_FOUND;
                return r;
            }
            let (resp, fut) = accept(&mut req, &AcceptConfig::default()).unwrap();
            tokio::spawn(async move {
                if let Ok(ws) = fut.await {
                    common::echo_data(ws).await;
                }
                // The WebSocket is dropped: hyper resets the stream (NO_ERROR).
                let _ = done_tx.send(());
            });
            // The acceptance has no body.
            resp.map(|_| Empty::new())
        }
    })
    .await;
    let url = format!("ws://127.0.0.1:{}/", addr.port());
    let builder = plain_builder();
    let conn = H2Connection::connect(&url, &builder).await.unwrap();
    for round in 0..10 {
        let (mut ws, _) = conn.websocket("/echo", &builder).await.unwrap();
        ws.send(Message::text("over h2")).await.unwrap();
        ws.feed(Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, ""))))
            .await
            .unwrap();
        // Hand the close frame to hyper; the flush now waits for hyper's
        // send task, and this task does not look at it again until the
        // server's reset has reached the client.
        let _ = std::future::poll_fn(|cx| std::task::Poll::Ready(ws.poll_flush_unpin(cx))).await;
        done.recv().await.unwrap();
        // A request answered after the reset: its answer comes behind the
        // RST_STREAM on the connection, so the client has read the reset.
        let barrier = conn.websocket("/barrier", &builder).await;
        assert!(
            matches!(&barrier, Err(Error::H2(H2Error::Refused { .. }))),
            "round {round}: {:?}",
            barrier.map(|r| r.1)
        );
        ws.flush()
            .await
            .unwrap_or_else(|e| panic!("round {round}: flushing our close failed: {e}"));
        let mut got = Vec::new();
        while let Some(m) = ws.next().await {
            got.push(m.unwrap_or_else(|e| panic!("round {round}: the stream failed: {e}")));
        }
        assert_eq!(
            got,
            [
                Message::text("over h2"),
                Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))
            ],
            "round {round}"
        );
    }
}

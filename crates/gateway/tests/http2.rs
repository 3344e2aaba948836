//! The HTTP/2 server: prior knowledge on cleartext, ALPN h2 on TLS, WebSocket
//! over extended CONNECT (RFC 8441) and its refusals, with the `h2` crate as
//! a raw client.

mod common;

use common::start;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use switchyard::proto::HttpVersion;
use switchyard_gateway::config::{App, Config};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

async fn h2_over<S>(io: S) -> SendRequest<Bytes>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

async fn h2_prior_knowledge(addr: SocketAddr) -> SendRequest<Bytes> {
    h2_over(TcpStream::connect(addr).await.unwrap()).await
}

/// Send a body-less request and return the status and the whole body.
async fn get(
    send: &mut SendRequest<Bytes>,
    method: Method,
    path: &str,
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://localhost{path}"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), resp)
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, headers, out)
}

fn connect_request(path: &str, protocol: Option<&str>) -> Request<()> {
    let mut b = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://localhost{path}"))
        .header("sec-websocket-version", "13");
    if let Some(p) = protocol {
        b = b.extension(h2::ext::Protocol::from(p));
    }
    b.body(()).unwrap()
}

/// A masked client text frame (payload < 126 bytes).
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
async fn prior_knowledge_serves_pages_and_advertises_connect_protocol() {
    let srv = start(common::default_config()).await;
    let mut send = h2_prior_knowledge(srv.addr).await;
    let (status, headers, body) = get(&mut send, Method::GET, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("new SwitchyardSocket("));
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    let (status, headers, head_body) = get(&mut send, Method::HEAD, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(head_body.is_empty());
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    assert_eq!(
        get(&mut send, Method::GET, "/nope").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&mut send, Method::GET, "/echo").await.0,
        StatusCode::BAD_REQUEST
    );
    assert!(
        send.is_extended_connect_protocol_enabled(),
        "SETTINGS_ENABLE_CONNECT_PROTOCOL = 1"
    );
    assert_eq!(
        send.current_max_send_streams(),
        256,
        "SETTINGS_MAX_CONCURRENT_STREAMS"
    );
    srv.stop().await;
}

#[tokio::test]
async fn websocket_over_extended_connect_echoes_and_closes_1001_on_shutdown() {
    let srv = start(common::default_config()).await;
    let mut send = h2_prior_knowledge(srv.addr).await;
    let _ = get(&mut send, Method::GET, "/").await;
    let mut streams = Vec::new();
    // Several WebSockets multiplexed on one connection.
    for i in 0..3u8 {
        let (resp, mut tx) = send
            .send_request(connect_request("/echo", Some("websocket")), false)
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.headers().get("sec-websocket-accept").is_none(),
            "no accept key over h2"
        );
        let mut rx = resp.into_body();
        let msg = [b'a' + i; 3];
        tx.send_data(masked_text(&msg), false).unwrap();
        let got = read_at_least(&mut rx, 5).await;
        assert_eq!(&got[..2], &[0x81, 3]);
        assert_eq!(&got[2..5], &msg);
        streams.push((tx, rx));
    }
    let stopping = tokio::spawn(srv.stop());
    for (_tx, mut rx) in streams {
        let got = read_at_least(&mut rx, 4).await;
        assert_eq!(got[0], 0x88, "a close frame");
        assert_eq!(&got[2..4], &1001u16.to_be_bytes(), "close code 1001");
    }
    drop(send);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn websocket_negotiates_deflate_and_subprotocol_headers_over_h2() {
    let srv = start(common::default_config()).await;
    let mut send = h2_prior_knowledge(srv.addr).await;
    let _ = get(&mut send, Method::GET, "/").await;
    let mut req = connect_request("/echo", Some("websocket"));
    req.headers_mut().insert(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits"
            .parse()
            .unwrap(),
    );
    let (resp, _tx) = send.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ext = resp.headers()["sec-websocket-extensions"].to_str().unwrap();
    assert!(ext.starts_with("permessage-deflate"), "{ext}");
    // A bad version is refused with 400 and the version we speak, no Upgrade header.
    let mut req = connect_request("/echo", Some("websocket"));
    req.headers_mut()
        .insert("sec-websocket-version", "8".parse().unwrap());
    let (resp, _tx) = send.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["sec-websocket-version"], "13");
    assert!(resp.headers().get("upgrade").is_none());
    srv.stop().await;
}

#[tokio::test]
async fn other_protocols_get_501() {
    let srv = start(common::default_config()).await;
    let mut send = h2_prior_knowledge(srv.addr).await;
    let _ = get(&mut send, Method::GET, "/").await;
    let (resp, _tx) = send
        .send_request(connect_request("/echo", Some("lineecho")), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::NOT_IMPLEMENTED);
    // websocket on a route that does not speak it is not implemented there either.
    let (resp, _tx) = send
        .send_request(connect_request("/", Some("websocket")), true)
        .unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::NOT_IMPLEMENTED);
    srv.stop().await;
}

/// A minimal raw HTTP/2 client: preface, SETTINGS, one HEADERS frame on
/// stream 1 with the given fields (HPACK literals without indexing), then the
/// server's verdict on stream 1.
/// 7-bit prefix integer, H = 0 (RFC 7541 §5.1).
fn hpack_len(out: &mut Vec<u8>, n: usize) {
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        let mut rest = n - 127;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }
}

/// An HPACK block of literals without indexing (no Huffman).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        hpack_len(&mut block, name.len());
        block.extend_from_slice(name.as_bytes());
        hpack_len(&mut block, value.len());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Connect with the preface and an empty SETTINGS frame.
async fn raw_h2(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    s.write_all(&out).await.unwrap();
    s
}

/// Read frames (acknowledging SETTINGS) until one about stream 1 or the
/// connection: "RST_STREAM code", "GOAWAY code", "HEADERS <first 4 bytes of
/// the HPACK block>" (`88` first: the indexed `:status 200`), "closed".
async fn verdict(s: &mut TcpStream) -> String {
    let fut = async {
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return "closed".to_owned();
            }
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let (ty, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return "closed".to_owned();
            }
            match ty {
                0x4 if flags & 1 == 0 => {
                    let _ = s.write_all(&frame(0x4, 1, 0, &[])).await;
                }
                0x3 if stream == 1 => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    return format!("RST_STREAM {code}");
                }
                0x7 => {
                    let code = u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]);
                    return format!("GOAWAY {code}");
                }
                0x1 if stream == 1 => {
                    let hex: Vec<String> =
                        payload.iter().take(4).map(|b| format!("{b:02x}")).collect();
                    return format!("HEADERS {}", hex.join(" "));
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("no verdict")
}

/// A minimal raw HTTP/2 client: one HEADERS frame on stream 1 with the given
/// fields, then the server's verdict on stream 1.
async fn raw_h2_request(addr: SocketAddr, fields: &[(&str, &str)]) -> String {
    let mut s = raw_h2(addr).await;
    s.write_all(&frame(0x1, 0x4 | 0x1, 1, &hpack(fields)))
        .await
        .unwrap();
    verdict(&mut s).await
}

/// RST_STREAM / GOAWAY error code PROTOCOL_ERROR (RFC 9113 §7).
const PROTOCOL_ERROR: u32 = 0x1;

#[tokio::test]
async fn connect_without_protocol_is_refused() {
    let srv = start(common::default_config()).await;
    // With :path /echo and no :protocol the request is malformed: stream error.
    let verdict = raw_h2_request(
        srv.addr,
        &[
            (":method", "CONNECT"),
            (":scheme", "http"),
            (":path", "/echo"),
            (":authority", "localhost"),
        ],
    )
    .await;
    assert_eq!(verdict, format!("RST_STREAM {PROTOCOL_ERROR}"));
    // A proxy-style CONNECT (authority only): 405, we are not a proxy.
    let mut send = h2_prior_knowledge(srv.addr).await;
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("localhost:443")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
    srv.stop().await;
}

#[tokio::test]
async fn upgrade_and_connection_headers_over_h2_are_malformed() {
    let srv = start(common::default_config()).await;
    let base = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "localhost"),
    ];
    // The control: the same request without them is answered (HPACK 0x88 = :status 200).
    let v = raw_h2_request(srv.addr, &base).await;
    assert!(v.starts_with("HEADERS 88 "), "{v}");
    for extra in [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("keep-alive", "5"),
        ("transfer-encoding", "chunked"),
    ] {
        let mut fields = base.to_vec();
        fields.push(extra);
        assert_eq!(
            raw_h2_request(srv.addr, &fields).await,
            format!("RST_STREAM {PROTOCOL_ERROR}"),
            "{extra:?}"
        );
    }
    // The h2 client itself refuses to send them.
    let mut send = h2_prior_knowledge(srv.addr).await;
    let req = Request::builder()
        .uri("http://localhost/echo")
        .header("upgrade", "websocket")
        .body(())
        .unwrap();
    assert!(send.send_request(req, true).is_err());
    srv.stop().await;
}

#[tokio::test]
async fn connect_protocol_setting_is_sent_only_when_enabled() {
    let mut cfg = common::default_config();
    cfg.http2.enable_connect_protocol = false;
    let srv = start(common::revalidate(cfg)).await;
    let mut send = h2_prior_knowledge(srv.addr).await;
    let _ = get(&mut send, Method::GET, "/").await;
    assert!(!send.is_extended_connect_protocol_enabled());
    // The h2 client refuses to send :protocol then; so does the server's codec.
    let outcome = match send.send_request(connect_request("/echo", Some("websocket")), true) {
        Err(e) => format!("client refused: {e}"),
        Ok((resp, _)) => match resp.await {
            Ok(r) => format!("status {}", r.status()),
            Err(e) => format!("reset: {:?}", e.reason()),
        },
    };
    assert!(!outcome.starts_with("status 200"), "{outcome}");
    // A raw :protocol on that connection is a malformed request (RFC 8441 §3).
    let ws = [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":path", "/echo"),
        (":authority", "localhost"),
        ("sec-websocket-version", "13"),
    ];
    assert_eq!(
        raw_h2_request(srv.addr, &ws).await,
        format!("RST_STREAM {PROTOCOL_ERROR}")
    );
    srv.stop().await;
    // The control: with the setting sent, the same frames get 200 (HPACK 0x88).
    let srv = start(common::default_config()).await;
    let v = raw_h2_request(srv.addr, &ws).await;
    assert!(v.starts_with("HEADERS 88 "), "{v}");
    srv.stop().await;
}

/// A TLS listener (ALPN h2, http/1.1) with a certificate for localhost.
fn tls_cfg() -> (Config, common::TestCert) {
    let cert = common::TestCert::new();
    let cfg = common::with(common::tls_flags(cert.listener()));
    (cfg, cert)
}

async fn tls_connect(
    addr: SocketAddr,
    cert: &rustls_pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn tls_listener_alpn_h2_and_http11() {
    let (cfg, cert) = tls_cfg();
    let srv = start(cfg).await;
    // ALPN h2: WebSocket over extended CONNECT.
    let tls = tls_connect(srv.addr, &cert.der, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut send = h2_over(tls).await;
    let _ = get(&mut send, Method::GET, "/").await;
    let (resp, mut tx) = send
        .send_request(connect_request("/echo", Some("websocket")), false)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut rx = resp.into_body();
    tx.send_data(masked_text(b"wss h2"), false).unwrap();
    let got = read_at_least(&mut rx, 8).await;
    assert_eq!(&got[..8], b"\x81\x06wss h2");
    // ALPN http/1.1: the HTTP/1.1 loop, keep-alive included.
    let mut tls = tls_connect(srv.addr, &cert.der, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 404 Not Found\r\n"));
    // No ALPN at all: HTTP/1.1 too.
    let mut tls = tls_connect(srv.addr, &cert.der, &[]).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
    srv.stop().await;
}

#[tokio::test]
async fn http2_disabled_offers_only_http11() {
    let (mut cfg, cert) = tls_cfg();
    cfg.listeners[0].protocols = vec![HttpVersion::Http1];
    let srv = start(common::revalidate(cfg)).await;
    // A client offering h2 first gets http/1.1 (what `serve --no-http2` does).
    let mut tls = tls_connect(srv.addr, &cert.der, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
    srv.stop().await;
}

/// GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §7).
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[tokio::test]
async fn rapid_reset_gets_goaway() {
    let srv = start(common::default_config()).await;
    let mut s = raw_h2(srv.addr).await;
    let block = hpack(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "localhost"),
    ]);
    // Open and cancel 200 streams in one burst (CVE-2023-44487).
    let mut burst = Vec::new();
    for i in 0..200u32 {
        let id = 2 * i + 3;
        burst.extend(frame(0x1, 0x4 | 0x1, id, &block));
        burst.extend(frame(0x3, 0, id, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    }
    let _ = s.write_all(&burst).await;
    let v = verdict(&mut s).await;
    assert_eq!(v, format!("GOAWAY {ENHANCE_YOUR_CALM}"));
    srv.stop().await;
}

#[tokio::test]
async fn continuation_flood_is_cut_off() {
    let srv = start(common::default_config()).await;
    let mut s = raw_h2(srv.addr).await;
    let mut block = hpack(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "localhost"),
    ]);
    block.extend(hpack(&[("x-a", "b")]));
    // HEADERS without END_HEADERS, then CONTINUATION frames of 1 KiB of
    // header fields each, far past the 16 KiB header list limit.
    let _ = s.write_all(&frame(0x1, 0x1, 1, &block)).await;
    let one_kib = hpack(&[("x-flood", &"v".repeat(1000))]);
    let mut sent = 0usize;
    let writer = async {
        for _ in 0..4096 {
            if s.write_all(&frame(0x9, 0, 1, &one_kib)).await.is_err() {
                break;
            }
            sent += one_kib.len();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    let v = verdict(&mut s).await;
    assert_eq!(
        v,
        format!("GOAWAY {ENHANCE_YOUR_CALM}"),
        "after {sent} bytes"
    );
    assert!(
        sent < 4096 * one_kib.len(),
        "the server read the whole 4 MiB flood"
    );
    srv.stop().await;
}

#[tokio::test]
async fn switchyard_h2_client_multiplexes_websockets_with_deflate() {
    use futures_util::{SinkExt, StreamExt};
    use switchyard::Message;
    let (cfg, _cert) = tls_cfg();
    let tls_srv = start(cfg).await;
    let plain_srv = start(common::default_config()).await;
    let insecure = switchyard::ClientBuilder::new().danger_accept_invalid_certs();
    for url in [
        format!("ws://{}/echo", plain_srv.addr),
        format!("wss://localhost:{}/echo", tls_srv.addr.port()),
    ] {
        let conn = switchyard::h2::H2Connection::connect(&url, &insecure)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let mut sockets = Vec::new();
        for _ in 0..10 {
            let (ws, resp) = conn.websocket("/echo", &insecure).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert!(
                ws.negotiated().deflate.is_some(),
                "permessage-deflate over h2"
            );
            sockets.push(ws);
        }
        for (i, ws) in sockets.iter_mut().enumerate() {
            ws.send(Message::text(format!("msg {i}"))).await.unwrap();
        }
        for (i, ws) in sockets.iter_mut().enumerate() {
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::text(format!("msg {i}"))
            );
        }
        for mut ws in sockets {
            ws.close(switchyard::CloseCode::NORMAL, "").await.unwrap();
        }
    }
    tls_srv.stop().await;
    plain_srv.stop().await;
}

#[tokio::test]
async fn connect_protocol_is_not_sent_when_no_route_serves_websocket() {
    let mut cfg = common::default_config();
    // Replace the WebSocket echo with a page: nothing serves WebSocket any more.
    cfg.routes.retain(|r| r.app != Some(App::Echo));
    let mut page = cfg.routes[0].clone();
    page.path = "/echo".into();
    cfg.routes.push(page);
    let srv = start(common::revalidate(cfg)).await;
    let mut send = h2_prior_knowledge(srv.addr).await;
    assert_eq!(get(&mut send, Method::GET, "/echo").await.0, StatusCode::OK);
    assert!(!send.is_extended_connect_protocol_enabled());
    srv.stop().await;
}

#[tokio::test]
async fn header_list_over_16_kib_is_refused_over_h2() {
    let srv = start(common::default_config()).await;
    let big = "b".repeat(20 * 1024);
    let fields = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "localhost"),
        ("x-big", big.as_str()),
    ];
    let mut s = raw_h2(srv.addr).await;
    // One HEADERS frame over the default 16 KiB frame size would be a
    // FRAME_SIZE error; split the block: HEADERS + 2 CONTINUATION.
    let block = hpack(&fields);
    let (first, rest) = block.split_at(8 * 1024);
    let (second, third) = rest.split_at(8 * 1024);
    let mut out = frame(0x1, 0x1, 1, first);
    out.extend(frame(0x9, 0, 1, second));
    out.extend(frame(0x9, 0x4, 1, third));
    s.write_all(&out).await.unwrap();
    let v = verdict(&mut s).await;
    // h2 answers itself: `:status` literal with incremental indexing (0x48),
    // Huffman-coded, 3 bytes: 0x69 0x90 0xff is "431".
    assert_eq!(
        v, "HEADERS 48 83 69 90",
        "431 Request Header Fields Too Large"
    );
    srv.stop().await;
}

#[tokio::test]
async fn answers_to_head_have_the_get_headers_and_no_body() {
    let srv = start(common::default_config()).await;
    let mut send = h2_prior_knowledge(srv.addr).await;
    // Not found, a refusal (a plain GET of a WebSocket route), the client
    // script: the same status and length as the GET, no DATA.
    for path in ["/nope", "/echo", "/.switchyard/client.js"] {
        let (get_status, _, get_body) = get(&mut send, Method::GET, path).await;
        assert!(!get_body.is_empty(), "{path}");
        let (status, headers, body) = get(&mut send, Method::HEAD, path).await;
        assert_eq!(status, get_status, "{path}");
        assert!(
            body.is_empty(),
            "HEAD {path} sent a body: {:?}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            headers["content-length"],
            get_body.len().to_string().as_str(),
            "{path}"
        );
    }
    // A session request answers HEAD 405 (`sw=close` takes POST) without its JSON.
    let (status, headers, body) = get(&mut send, Method::HEAD, CLOSE_QUERY).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
    assert!(body.is_empty(), "{:?}", String::from_utf8_lossy(&body));
    srv.stop().await;
}

/// A well-formed `sw=close` of a session that does not exist.
const CLOSE_QUERY: &str =
    "/echo?sw=close&sid=00000000000000000000000000000000&token=00000000000000000000000000000000";

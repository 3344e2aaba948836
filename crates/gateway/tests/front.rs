//! The server front over real sockets: the Upgrade registry (101 / 426 /
//! ignore), keep-alive and pipelining, request bodies, RFC 2817, line-echo.

mod common;

use common::start;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use switchyard_gateway::config::{Config, Overrides};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The default routes plus `/lineecho` (requires lineecho/1) and `/secure`
/// (a TLS-only page).
fn test_config() -> Config {
    common::with_lineecho_and_secure(Overrides::new())
}

/// A certificate for localhost and a config whose cleartext listener offers RFC 2817.
fn tls_upgrade_config() -> (Config, common::TestCert) {
    let cert = common::TestCert::new();
    let cfg = common::with_lineecho_and_secure(common::tls_flags(cert.upgrade()));
    (cfg, cert)
}

/// A response read off a connection: the head (lowercased names kept as
/// sent) and the body framed by Content-Length.
struct Resp {
    head: String,
    body: Vec<u8>,
}

impl Resp {
    fn status(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Read one response from `s`, keeping bytes past it in `buf`. `head_only`
/// for answers to HEAD (Content-Length without a body) and for 101.
async fn read_resp<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, head_only: bool) -> Resp {
    let fut = async {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let len: usize = if head_only {
                    0
                } else {
                    head.lines()
                        .find_map(|l| {
                            let (n, v) = l.split_once(':')?;
                            n.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0)
                };
                if buf.len() >= end + 4 + len {
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    return Resp { head, body };
                }
            }
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed before a complete response: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("no response")
}

/// Whether the server closes the connection (EOF) without sending anything more.
async fn closes<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the server kept the connection open")
        .unwrap_or(0);
    rest
}

/// The answers to a POST (`/` serves GET only) and to the GET after it.
async fn expect_405_then_200(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let r = read_resp(s, buf, false).await;
    assert_eq!(r.status(), "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(read_resp(s, buf, false).await.status(), "HTTP/1.1 200 OK");
}

async fn one(addr: SocketAddr, request: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_resp(&mut s, &mut Vec::new(), false).await
}

const WS_HEADERS: &str =
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// A masked client text frame (payload < 126 bytes).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test]
async fn keep_alive_two_requests_on_one_connection_and_pipelined() {
    let srv = start(test_config()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), "HTTP/1.1 200 OK");
    assert_eq!(
        r.header("connection"),
        None,
        "keep-alive is the HTTP/1.1 default"
    );
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.status(),
        "HTTP/1.1 404 Not Found"
    );
    // Three pipelined in one write, answered in order; the last asks to close.
    s.write_all(
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.status(),
        "HTTP/1.1 404 Not Found"
    );
    let head = read_resp(&mut s, &mut buf, true).await;
    assert_eq!(head.status(), "HTTP/1.1 200 OK");
    let get = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(get.status(), "HTTP/1.1 200 OK");
    assert_eq!(get.header("connection").as_deref(), Some("close"));
    assert_eq!(
        head.header("content-length").unwrap(),
        get.body.len().to_string(),
        "HEAD has the GET length"
    );
    assert!(
        buf.is_empty(),
        "HEAD sent no body: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(closes(&mut s).await.is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn http10_closes_unless_keep_alive() {
    let srv = start(test_config()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let r = read_resp(&mut s, &mut Vec::new(), false).await;
    assert_eq!(r.status(), "HTTP/1.1 200 OK");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(closes(&mut s).await.is_empty());

    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let r = read_resp(&mut s, &mut buf, false).await;
        assert_eq!(r.status(), "HTTP/1.1 200 OK");
        assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    }
    srv.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let mut cfg = test_config();
    cfg.http1.idle_timeout = Duration::from_millis(200);
    let srv = start(common::revalidate(cfg)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_resp(&mut s, &mut Vec::new(), false).await;
    assert!(closes(&mut s).await.is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn request_bodies_are_discarded_bounded_and_chunked_decoded() {
    let srv = start(test_config()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    // The body (which looks like a request) is skipped, not served.
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 28\r\n\r\nGET /nope HTTP/1.1\r\nX: y\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.status(),
        "HTTP/1.1 405 Method Not Allowed"
    );
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.status(),
        "HTTP/1.1 200 OK"
    );
    // A body split across writes.
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'z'; 6000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.write_all(&[b'z'; 4000]).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    expect_405_then_200(&mut s, &mut buf).await;

    let r = one(
        srv.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1048577\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 413 Payload Too Large");
    // A chunked body (RFC 9112 §7.1) is read to its end and dropped, split across
    // writes, with an extension and a trailer; its data looks like a request and
    // must not be served as one; the request pipelined after it is.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1c;a=b\r\nGET /no",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.write_all(
        b"pe HTTP/1.1\r\nX: y\r\n\r\n\r\n0\r\nX-Sum: 1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    expect_405_then_200(&mut s, &mut buf).await;
    // Malformed chunked framing: 400 and the connection closed.
    for bad in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloGET / HTTP/1.1\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        s.write_all(bad).await.unwrap();
        let r = read_resp(&mut s, &mut Vec::new(), false).await;
        assert_eq!(r.status(), "HTTP/1.1 400 Bad Request", "{bad:?}");
        closes(&mut s).await;
    }
    // A chunk announcing more than max_request_body (1 MiB): 413 before its data.
    let r = one(
        srv.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n",
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 413 Payload Too Large");
    let r = one(
        srv.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 400 Bad Request");
    srv.stop().await;
}

#[tokio::test]
async fn hostile_upgrade_headers_get_400_or_431() {
    let srv = start(test_config()).await;
    let many = vec!["a"; 1000].join(", ");
    let req =
        format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {many}\r\n\r\n");
    assert_eq!(
        one(srv.addr, req.as_bytes()).await.status(),
        "HTTP/1.1 400 Bad Request",
        "1,000 tokens"
    );
    let long = "a".repeat(10 * 1024);
    let req =
        format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {long}\r\n\r\n");
    assert_eq!(
        one(srv.addr, req.as_bytes()).await.status(),
        "HTTP/1.1 400 Bad Request",
        "10 KiB token"
    );
    let huge = "a".repeat(20 * 1024);
    let req =
        format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: {huge}\r\n\r\n");
    assert_eq!(
        one(srv.addr, req.as_bytes()).await.status(),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "head over the cap"
    );
    // The same on the WebSocket route.
    let req = format!("GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket, {many}\r\n{WS_HEADERS}\r\n");
    assert_eq!(
        one(srv.addr, req.as_bytes()).await.status(),
        "HTTP/1.1 400 Bad Request"
    );
    srv.stop().await;
}

#[tokio::test]
async fn unknown_protocols_and_h2c_are_ignored_with_keep_alive() {
    let srv = start(test_config()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo/2, bar\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), "HTTP/1.1 200 OK");
    assert_eq!(
        r.header("upgrade"),
        None,
        "nothing is advertised on a plain 200"
    );
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), "HTTP/1.1 200 OK", "h2c is never selected");
    // Still the same connection.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.status(),
        "HTTP/1.1 200 OK"
    );
    // `Upgrade: h2c` on the WebSocket route is ignored: 426 lists websocket only.
    let r = one(
        srv.addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 426 Upgrade Required");
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
    srv.stop().await;
}

#[tokio::test]
async fn h2c_first_in_the_list_selects_websocket_and_early_frame_is_echoed() {
    let srv = start(test_config()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // The handshake and the first frame in one write.
    let mut bytes =
        format!("GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n{WS_HEADERS}\r\n").into_bytes();
    bytes.extend_from_slice(&masked_text(b"early"));
    s.write_all(&bytes).await.unwrap();
    let mut buf = Vec::new();
    let r = read_resp(&mut s, &mut buf, true).await;
    assert_eq!(r.status(), "HTTP/1.1 101 Switching Protocols");
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(
        r.header("sec-websocket-accept").as_deref(),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    while buf.len() < 7 {
        let mut c = [0u8; 64];
        let n = s.read(&mut c).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&c[..n]);
    }
    assert_eq!(
        &buf[..7],
        b"\x81\x05early",
        "the frame sent with the handshake is echoed"
    );
    srv.stop().await;
}

#[tokio::test]
async fn upgrade_needs_connection_upgrade_and_http11() {
    let srv = start(test_config()).await;
    let r = one(
        srv.addr,
        format!("GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n{WS_HEADERS}\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(
        r.status(),
        "HTTP/1.1 426 Upgrade Required",
        "no Connection: upgrade"
    );
    let r = one(
        srv.addr,
        format!("GET /echo HTTP/1.0\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{WS_HEADERS}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 426 Upgrade Required", "HTTP/1.0");
    let r = one(
        srv.addr,
        b"GET /lineecho HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: lineecho/1\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 426 Upgrade Required");
    srv.stop().await;
}

#[tokio::test]
async fn required_protocol_missing_gets_426_listing_its_tokens() {
    let srv = start(test_config()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /lineecho HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), "HTTP/1.1 426 Upgrade Required");
    assert_eq!(r.header("upgrade").as_deref(), Some("lineecho/1"));
    assert!(r
        .header("connection")
        .unwrap()
        .to_ascii_lowercase()
        .contains("upgrade"));
    // A wrong version is not the protocol either; the connection stays usable.
    s.write_all(
        b"GET /lineecho HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: lineecho/2\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.status(),
        "HTTP/1.1 426 Upgrade Required"
    );
    // Then the switch on the same connection, with a line in the same write.
    s.write_all(b"GET /lineecho HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket, LineEcho/1\r\n\r\nhello\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, true).await;
    assert_eq!(r.status(), "HTTP/1.1 101 Switching Protocols");
    assert_eq!(r.header("upgrade").as_deref(), Some("lineecho/1"));
    s.write_all(b"second line\n").await.unwrap();
    s.shutdown().await.unwrap();
    let rest = closes(&mut s).await;
    buf.extend_from_slice(&rest);
    assert_eq!(String::from_utf8_lossy(&buf), "hello\nsecond line\n");
    srv.stop().await;
}

#[tokio::test]
async fn lineecho_long_line_closes() {
    let srv = start(test_config()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(
        b"GET /lineecho HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: lineecho/1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    assert_eq!(
        read_resp(&mut s, &mut buf, true).await.status(),
        "HTTP/1.1 101 Switching Protocols"
    );
    s.write_all(&vec![b'x'; 9000]).await.unwrap();
    buf.extend_from_slice(&closes(&mut s).await);
    assert_eq!(String::from_utf8_lossy(&buf), "error: line too long\n");
    srv.stop().await;
}

#[tokio::test]
async fn tls_only_resource_gets_426_naming_tls() {
    let srv = start(test_config()).await;
    let r = one(srv.addr, b"GET /secure HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(r.status(), "HTTP/1.1 426 Upgrade Required");
    assert_eq!(r.header("upgrade").as_deref(), Some("TLS/1.3, HTTP/1.1"));
    assert!(r.header("connection").unwrap().contains("Upgrade"));
    // Without a certificate the TLS upgrade is not available: still 426.
    let r = one(
        srv.addr,
        b"GET /secure HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: TLS/1.3\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 426 Upgrade Required");
    srv.stop().await;
}

fn tls_client(cert: &rustls_pki_types::CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn tls_over<S: AsyncRead + AsyncWrite + Unpin>(
    cert: &rustls_pki_types::CertificateDer<'static>,
    s: S,
) -> tokio_rustls::client::TlsStream<S> {
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tls_client(cert).connect(name, s).await.unwrap()
}

/// On epoll and on io_uring (where the kernel allows it: the TLS handshake then
/// runs over the ring's stream).
#[tokio::test]
async fn rfc2817_upgrade_end_to_end() {
    rfc2817_upgrade_end_to_end_on(false).await;
    #[cfg(target_os = "linux")]
    if switchyard_gateway::io::uring::kernel_allows() {
        rfc2817_upgrade_end_to_end_on(true).await;
    }
}

async fn rfc2817_upgrade_end_to_end_on(io_uring: bool) {
    let (mut cfg, cert) = tls_upgrade_config();
    cfg.runtime.io_uring = io_uring;
    let srv = start(cfg).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET /secure HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), "HTTP/1.1 426 Upgrade Required");
    assert_eq!(r.header("upgrade").as_deref(), Some("TLS/1.3, HTTP/1.1"));
    // Same connection: ask for the switch.
    s.write_all(b"GET /secure HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: TLS/1.3, HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, true).await;
    assert_eq!(r.status(), "HTTP/1.1 101 Switching Protocols");
    assert_eq!(r.header("upgrade").as_deref(), Some("TLS/1.3, HTTP/1.1"));
    assert!(buf.is_empty());
    let mut tls = tls_over(&cert.der, s).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // RFC 2817 §3.3: the original request is answered over TLS...
    let r = read_resp(&mut tls, &mut buf, false).await;
    assert_eq!(r.status(), "HTTP/1.1 200 OK");
    assert!(String::from_utf8_lossy(&r.body).contains("new SwitchyardSocket("));
    // ...then HTTP/1.1 goes on over TLS.
    tls.write_all(b"GET /secure HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut tls, &mut buf, false).await.status(),
        "HTTP/1.1 200 OK"
    );
    // No second switch to TLS inside TLS: the Upgrade is ignored.
    tls.write_all(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: TLS/1.3\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(
        read_resp(&mut tls, &mut buf, false).await.status(),
        "HTTP/1.1 200 OK"
    );
    srv.stop().await;
}

#[tokio::test]
async fn rfc2817_options_star_then_websocket_over_tls() {
    let (cfg, cert) = tls_upgrade_config();
    let srv = start(cfg).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(
        b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\nUpgrade: TLS/1.2\r\n\r\n",
    )
    .await
    .unwrap();
    let r = read_resp(&mut s, &mut buf, true).await;
    assert_eq!(r.status(), "HTTP/1.1 101 Switching Protocols");
    assert_eq!(r.header("upgrade").as_deref(), Some("TLS/1.2, HTTP/1.1"));
    let mut tls = tls_over(&cert.der, s).await;
    let r = read_resp(&mut tls, &mut buf, false).await;
    assert_eq!(r.status(), "HTTP/1.1 200 OK");
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD, OPTIONS"));
    // A WebSocket on the upgraded connection, with its first frame early.
    let mut bytes =
        format!("GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{WS_HEADERS}\r\n").into_bytes();
    bytes.extend_from_slice(&masked_text(b"over tls"));
    tls.write_all(&bytes).await.unwrap();
    let r = read_resp(&mut tls, &mut buf, true).await;
    assert_eq!(r.status(), "HTTP/1.1 101 Switching Protocols");
    while buf.len() < 10 {
        let mut c = [0u8; 64];
        let n = tls.read(&mut c).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&c[..n]);
    }
    assert_eq!(&buf[..10], b"\x81\x08over tls");
    srv.stop().await;
}

#[tokio::test]
async fn plaintext_pipelined_after_a_tls_upgrade_request_is_never_served() {
    let (cfg, _cert) = tls_upgrade_config();
    let srv = start(cfg).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: TLS/1.3\r\n\r\nGET /secure HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
    .unwrap();
    let all = String::from_utf8_lossy(&closes(&mut s).await).into_owned();
    assert!(all.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{all}");
    assert_eq!(
        all.matches("HTTP/1.1 ").count(),
        1,
        "nothing else answered: {all}"
    );
    assert!(
        !all.contains("new SwitchyardSocket("),
        "the pipelined request was served: {all}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn tls_upgrade_is_not_offered_on_tls_listeners_or_without_certificate() {
    let srv = start(test_config()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: TLS/1.3\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut Vec::new(), false).await;
    assert_eq!(
        r.status(),
        "HTTP/1.1 200 OK",
        "no certificate: Upgrade ignored"
    );
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let srv = start(test_config()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_resp(&mut s, &mut Vec::new(), false).await;
    let stopping = tokio::spawn(srv.stop());
    assert!(closes(&mut s).await.is_empty());
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn head_deadline_applies_to_later_requests_once_bytes_start() {
    let mut cfg = test_config();
    cfg.limits.handshake_timeout = Duration::from_millis(300);
    cfg.http1.idle_timeout = Duration::from_secs(30);
    let srv = start(common::revalidate(cfg)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.status(),
        "HTTP/1.1 200 OK"
    );
    // Idle longer than the head deadline: still open (the idle timeout applies)...
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_resp(&mut s, &mut buf, false).await.status(),
        "HTTP/1.1 200 OK"
    );
    // ...but a head that starts and stalls gets 408.
    s.write_all(b"GET / HTTP/1.1\r\nHost:").await.unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), "HTTP/1.1 408 Request Timeout");
    closes(&mut s).await;
    srv.stop().await;
}

#[tokio::test]
async fn upgrade_on_an_unknown_path_is_404_and_on_a_page_is_ignored() {
    let srv = start(test_config()).await;
    let ws = format!("Connection: Upgrade\r\nUpgrade: websocket\r\n{WS_HEADERS}");
    let r = one(
        srv.addr,
        format!("GET /nope HTTP/1.1\r\nHost: x\r\n{ws}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 404 Not Found");
    let r = one(
        srv.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{ws}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 200 OK", "/ does not speak websocket");
    // lineecho is mounted on /lineecho only.
    let r = one(
        srv.addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: lineecho/1\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 426 Upgrade Required");
    assert_eq!(r.header("upgrade").as_deref(), Some("websocket"));
    srv.stop().await;
}

#[tokio::test]
async fn expect_100_continue_gets_100_before_the_body() {
    let srv = start(test_config()).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let r = read_resp(&mut s, &mut buf, true).await;
    assert_eq!(r.status(), "HTTP/1.1 100 Continue");
    s.write_all(b"hello").await.unwrap();
    let r = read_resp(&mut s, &mut buf, false).await;
    assert_eq!(r.status(), "HTTP/1.1 405 Method Not Allowed");
    // Over the limit: 413 at once, no 100.
    let r = one(
        srv.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert_eq!(r.status(), "HTTP/1.1 413 Payload Too Large");
    srv.stop().await;
}

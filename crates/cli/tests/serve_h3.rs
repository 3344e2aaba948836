//! `switchyard serve --tls --http3`: WebSocket over HTTP/3 (RFC 9220) on the
//! same port as the TLS listener, Alt-Svc on the TCP responses (HTTP/1.1 and
//! HTTP/2), close 1001 on SIGTERM, and the usage error without --tls.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::client::ClientBuilder;
use switchyard::{CloseCode, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A certificate for localhost and 127.0.0.1 in PEM files; returns (cert, key).
fn cert_files(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("switchyard-h3-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (cert, key)
}

/// `serve --tls --http3 --tls-cert --tls-key --listen 127.0.0.1:0`: the
/// process, the TCP port, and the UDP port it printed.
fn serve_h3(cert: &PathBuf, key: &PathBuf) -> (Serve, u16, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--tls", "--http3", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let port_of = |line: &str, prefix: &str| -> u16 {
        line.strip_prefix(prefix)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line: {line:?}"))
    };
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let tcp = port_of(&line, "listening on https://");
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let udp = port_of(&line, "HTTP/3 on udp://");
    (Serve(child), tcp, udp)
}

fn client_tls(cert: &PathBuf, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read_to_string(cert).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
    roots
        .add(rustls_pki_types::CertificateDer::from(der))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

async fn tls_connect(
    cert: &PathBuf,
    port: u16,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls(cert, alpn))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
    tls
}

fn h3_client(cert: &PathBuf) -> ClientBuilder {
    ClientBuilder::new().add_ca_file(cert)
}

#[tokio::test]
async fn echo_over_http3_on_the_tls_port() {
    let (cert, key) = cert_files("echo");
    let (_srv, tcp, udp) = serve_h3(&cert, &key);
    assert_eq!(tcp, udp, "HTTP/3 listens on the TLS listener's port");
    let (mut ws, resp) =
        switchyard::h3::connect_h3(&format!("wss://127.0.0.1:{udp}/echo"), &h3_client(&cert))
            .await
            .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_3);
    ws.send(Message::text("over quic")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("over quic"));
    ws.close(CloseCode::NORMAL, "bye").await.unwrap();

    // A path without a route: 404; the index page does not speak WebSocket: 501.
    let conn = switchyard::h3::H3Connection::connect(
        &format!("wss://127.0.0.1:{udp}/"),
        &h3_client(&cert),
    )
    .await
    .unwrap();
    for (path, status) in [("/nope", 404), ("/", 501)] {
        match conn.websocket(path).await {
            Err(switchyard::Error::UpgradeRefused { status: got, .. }) => {
                assert_eq!(got.as_u16(), status, "{path}")
            }
            other => panic!("{path}: expected {status}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn alt_svc_on_http1_and_http2_responses() {
    let (cert, key) = cert_files("altsvc");
    let (_srv, tcp, udp) = serve_h3(&cert, &key);
    let want = format!("h3=\":{udp}\"; ma=86400");

    // HTTP/1.1
    let mut tls = tls_connect(&cert, tcp, b"http/1.1").await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.lines().any(|l| l == format!("alt-svc: {want}")),
        "{resp}"
    );

    // HTTP/2
    let tls = tls_connect(&cert, tcp, b"h2").await;
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://localhost:{tcp}/"))
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[http::header::ALT_SVC], want.as_str());
}

#[tokio::test]
async fn no_alt_svc_without_http3() {
    let (cert, key) = cert_files("noalt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--tls", "--listen", "127.0.0.1:0"])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _srv = Serve(child);
    let port: u16 = line
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"));
    let mut tls = tls_connect(&cert, port, b"http/1.1").await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let resp = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    assert!(resp.starts_with("http/1.1 200"), "{resp}");
    assert!(!resp.contains("alt-svc"), "{resp}");
}

#[tokio::test]
async fn sigterm_closes_http3_websockets_with_1001() {
    let (cert, key) = cert_files("term");
    let (mut srv, _tcp, udp) = serve_h3(&cert, &key);
    let conn = switchyard::h3::H3Connection::connect(
        &format!("wss://127.0.0.1:{udp}/echo"),
        &h3_client(&cert),
    )
    .await
    .unwrap();
    let (mut ws, _) = conn.websocket("/echo").await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("hi"));
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(srv.0.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match msg {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::GOING_AWAY),
        other => panic!("expected close 1001, got {other:?}"),
    }
    // The drain also told the connection: GOAWAY after the one request
    // stream (ID 0) it served, so no new WebSocket is opened on it. (Another
    // QUIC stream than the close frame's: it may arrive a little later.)
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while conn.going_away().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(conn.going_away(), Some(4));
    while let Some(Ok(_)) = ws.next().await {}
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = srv.0.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "serve did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn http3_without_tls_is_a_usage_error() {
    for args in [
        &["serve", "--http3"][..],
        &["serve", "--http3", "--tls-upgrade"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("h3 runs over QUIC"), "{err}");
    }
}

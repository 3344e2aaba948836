//! The axum extractor (`switchyard::axum::WebSocketUpgrade`) under
//! `axum::serve`: accepted over HTTP/1.1 and HTTP/2 by our client, by Python
//! `websockets` and by Chromium (over TLS: a browser speaks HTTP/2 only with
//! TLS), with subprotocol, permessage-deflate and `Limits` applied, and each
//! refusal rule answered with its status. The peers come from
//! scripts/install-test-deps.sh (`.venv`, tests/interop/node_modules, Debian's
//! chromium); a missing one fails the test.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::axum::WebSocketUpgrade;
use switchyard::h2::H2Connection;
use switchyard::proto::{OriginPolicy, ServerConfig};
use switchyard::server::AcceptConfig;
use switchyard::{ClientBuilder, CloseCode, DeflateConfig, Limits, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ALLOWED_ORIGIN: &str = "https://app.example";
const MAX_MESSAGE: usize = 2 << 20;

struct Server {
    config: AcceptConfig,
    /// WebSockets handed to the handler's callback.
    opened: AtomicUsize,
}

async fn echo(State(server): State<Arc<Server>>, ws: WebSocketUpgrade) -> Response {
    ws.config(server.config.clone())
        .on_upgrade(move |ws| async move {
            server.opened.fetch_add(1, Ordering::SeqCst);
            common::echo_data(ws).await;
        })
}

/// An axum echo server on 127.0.0.1:0: subprotocol `chat`, permessage-deflate,
/// one allowed Origin, messages up to `MAX_MESSAGE`.
async fn start() -> (SocketAddr, Arc<Server>) {
    let server = Arc::new(Server {
        config: AcceptConfig::default()
            .handshake(
                ServerConfig::default()
                    .subprotocols(["chat"])
                    .deflate(Some(DeflateConfig::default()))
                    .origin(OriginPolicy::AllowList(vec![ALLOWED_ORIGIN.into()])),
            )
            .limits(Limits::default().max_message_size(MAX_MESSAGE)),
        opened: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/ws", any(echo))
        .with_state(server.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, server)
}

fn client() -> ClientBuilder {
    ClientBuilder::new()
        .subprotocols(["superchat", "chat"])
        .origin(ALLOWED_ORIGIN)
}

/// Echo checks shared by both versions: the negotiation, a compressible
/// message, and the size limit (close 1009).
async fn check_websocket<S>(mut ws: switchyard::WebSocket<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    assert_eq!(ws.subprotocol(), Some("chat"));
    assert!(
        ws.negotiated().deflate.is_some(),
        "permessage-deflate not on"
    );
    let text = "all work and no play ".repeat(50_000);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    ws.send(Message::binary(vec![1u8; MAX_MESSAGE + 1]))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::MESSAGE_TOO_BIG),
        other => panic!("want the server's close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn http1_upgrade_negotiates_and_applies_limits() {
    let (addr, server) = start().await;
    let (ws, resp) = client().connect(&format!("ws://{addr}/ws")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    check_websocket(ws).await;
    assert_eq!(server.opened.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http2_extended_connect_negotiates_and_applies_limits() {
    let (addr, server) = start().await;
    let client = client();
    let h2 = H2Connection::connect(&format!("ws://{addr}/ws"), &client)
        .await
        .unwrap();
    let (first, resp) = h2.websocket("/ws", &client).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    // A second WebSocket on the same connection, while the first is open.
    let (second, _) = h2.websocket("/ws", &client).await.unwrap();
    check_websocket(second).await;
    check_websocket(first).await;
    assert_eq!(server.opened.load(Ordering::SeqCst), 2);
}

/// A raw HTTP/1.1 request; returns the status, the head and the body.
async fn h1_exchange(addr: SocketAddr, headers: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout(deadline, tcp.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let (head, body) = (&text[..end], &text[end + 4..]);
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("a refusal has a Content-Length: {head}"));
            if body.len() >= len {
                let status = head[9..12].parse().unwrap();
                return (status, head.to_ascii_lowercase(), body.to_owned());
            }
        }
        assert!(n > 0, "connection closed mid-response: {got:?}");
    }
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test]
async fn http1_refusals_have_their_status_and_reason() {
    let (addr, server) = start().await;
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    // No Upgrade: 426 naming the protocol to upgrade to.
    let (status, head, body) = h1_exchange(addr, "").await;
    assert_eq!(status, 426, "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(body.to_ascii_lowercase().contains("upgrade"), "{body}");
    // Another WebSocket version: 426 with the one we speak.
    let (status, head, _) =
        h1_exchange(addr, &format!("{UPGRADE}{KEY}Sec-WebSocket-Version: 8\r\n")).await;
    assert_eq!(status, 426, "{head}");
    assert!(head.contains("sec-websocket-version: 13"), "{head}");
    // No key: 400.
    let (status, head, _) = h1_exchange(addr, &format!("{UPGRADE}{v13}")).await;
    assert_eq!(status, 400, "{head}");
    // A foreign Origin: 403.
    let (status, _, body) = h1_exchange(
        addr,
        &format!("{UPGRADE}{KEY}{v13}Origin: https://evil.example\r\n"),
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("evil.example"), "{body}");
    // A malformed Sec-WebSocket-Extensions: 400.
    let (status, _, _) = h1_exchange(
        addr,
        &format!("{UPGRADE}{KEY}{v13}Sec-WebSocket-Extensions: permessage-deflate; =1\r\n"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(server.opened.load(Ordering::SeqCst), 0);
}

/// A plain hyper HTTP/2 client (prior knowledge), for requests `H2Connection`
/// never sends, once the server's SETTINGS enabled extended CONNECT.
async fn h2_refusal(
    addr: SocketAddr,
    protocol: &'static str,
    headers: &[(&'static str, &str)],
) -> (StatusCode, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = || {
        let mut req = Request::new(Empty::new());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = format!("http://{addr}/ws").parse().unwrap();
        for (name, value) in headers {
            req.headers_mut().insert(*name, value.parse().unwrap());
        }
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static(protocol));
        req
    };
    // hyper refuses to send :protocol before the server's SETTINGS arrive.
    let mut tries = 0;
    let resp = loop {
        match send.send_request(request()).await {
            Ok(resp) => break resp,
            Err(_) if tries < 1000 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("extended CONNECT never sent: {e}"),
        }
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http2_refusals_have_their_status_and_reason() {
    let (addr, server) = start().await;
    let v13 = ("sec-websocket-version", "13");
    let (status, body) = h2_refusal(addr, "connect-udp", &[v13]).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert!(body.contains("connect-udp"), "{body}");
    let (status, body) = h2_refusal(addr, "websocket", &[("sec-websocket-version", "8")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = h2_refusal(
        addr,
        "websocket",
        &[v13, ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(server.opened.load(Ordering::SeqCst), 0);
}

/// Python `websockets` (from the repository's `.venv`, installed by
/// scripts/install-test-deps.sh) as the client: deflate, text, binary,
/// fragmented and 1 MiB messages, and the close code.
#[tokio::test]
async fn python_websockets_client_over_http1() {
    let (addr, server) = start().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = std::env::var_os("SWITCHYARD_PYTHON")
        .unwrap_or_else(|| root.join(".venv/bin/python").into_os_string());
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&python)
            .arg(root.join("tests/interop/py_client.py"))
            .arg(format!("ws://{addr}/ws"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("py_client.py hung")
    .unwrap_or_else(|e| panic!("cannot run {python:?} (scripts/install-test-deps.sh): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok: permessage-deflate negotiated"),
        "{stdout}"
    );
    assert_eq!(server.opened.load(Ordering::SeqCst), 1);
}

/// `axum::serve` over TLS: the handshake is done in `accept`, so the
/// connection axum's server sees speaks what ALPN chose.
struct TlsListener {
    tcp: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.tls.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// The page Chromium loads before it opens its WebSocket.
async fn index() -> axum::response::Html<&'static str> {
    axum::response::Html("<!doctype html><title>switchyard axum</title>")
}

/// Chromium (tests/interop/chromium.mjs) against an axum server over TLS
/// whose ALPN offers `alpn`; returns the HTTP versions the WebSockets came in.
async fn chromium_against_axum(alpn: &[&[u8]], want_protocol: &str) -> Vec<http::Version> {
    let (tls, cert) = common::self_signed_tls(&["127.0.0.1"], alpn);
    let spki = ring::digest::digest(&ring::digest::SHA256, &cert.key_pair.public_key_der());
    let spki = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, spki);

    let versions = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = versions.clone();
    let config = AcceptConfig::default()
        .handshake(ServerConfig::default().deflate(Some(DeflateConfig::default())));
    let app = Router::new().route("/", axum::routing::get(index)).route(
        "/echo",
        any(
            move |version: http::Version, ws: WebSocketUpgrade| async move {
                seen.lock().unwrap().push(version);
                ws.config(config).on_upgrade(common::echo_data)
            },
        ),
    );
    let listener = TlsListener {
        tcp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
    };
    let port = listener.tcp.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new("node")
            .arg(root.join("tests/interop/chromium.mjs"))
            .arg(format!("https://127.0.0.1:{port}"))
            .arg(&spki)
            .arg(want_protocol)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium.mjs hung")
    .expect("cannot run node (scripts/install-test-deps.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("chromium: all checks passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let versions = versions.lock().unwrap().clone();
    versions
}

#[tokio::test]
async fn chromium_over_http2_uses_extended_connect() {
    let versions = chromium_against_axum(&[b"h2", b"http/1.1"], "h2").await;
    assert!(!versions.is_empty());
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_2),
        "{versions:?}"
    );
}

#[tokio::test]
async fn chromium_over_http1_uses_the_upgrade() {
    let versions = chromium_against_axum(&[b"http/1.1"], "http/1.1").await;
    assert!(!versions.is_empty());
    assert!(
        versions.iter().all(|v| *v == http::Version::HTTP_11),
        "{versions:?}"
    );
}

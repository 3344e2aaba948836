//! Choosing HTTP/1.1 or HTTP/2 by ALPN (`switchyard::connect_auto` and the
//! default of `switchyard connect` for wss://), against the gateway over TLS
//! with HTTP/2 + extended CONNECT, HTTP/2 without extended CONNECT, and
//! HTTP/1.1 only.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::{AnyWebSocket, ClientBuilder, HttpVersion, Message};
use switchyard_gateway::config::{CertificateSource, Overrides, TlsOverride};

mod common;

/// A certificate for localhost and 127.0.0.1 in PEM files: the certificate
/// (also for `--ca`) and the key.
fn cert(name: &str) -> (PathBuf, CertificateSource) {
    let dir = std::env::temp_dir().join(format!("switchyard-auto-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let path = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&path, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let source = CertificateSource::Files {
        cert: path.clone(),
        key,
    };
    (path, source)
}

#[derive(Clone, Copy)]
enum Kind {
    H2WithConnect,
    H2WithoutConnect,
    Http1Only,
}

/// The gateway over TLS on a free port, on its own runtime.
fn server(tls: CertificateSource, kind: Kind) -> SocketAddr {
    let mut flags = Overrides::new();
    flags.listen = vec!["127.0.0.1:0".parse().unwrap()];
    flags.tls = Some(TlsOverride::Listener(tls));
    let mut cfg = flags
        .apply(switchyard_gateway::Config::embedded_default())
        .unwrap();
    match kind {
        Kind::H2WithConnect => {}
        Kind::H2WithoutConnect => cfg.http2.enable_connect_protocol = false,
        Kind::Http1Only => cfg.listeners[0].protocols = vec![HttpVersion::Http1],
    }
    common::gateway_with(cfg)
}

async fn round_trip(kind: Kind, name: &str) -> (HttpVersion, String) {
    let (pem, tls) = cert(name);
    let addr = server(tls, kind);
    let url = format!("wss://127.0.0.1:{}/echo", addr.port());
    let builder = ClientBuilder::new().add_ca_file(&pem);
    let (ws, resp, choice) = switchyard::connect_auto(&url, &builder).await.unwrap();
    assert_eq!(ws.version(), choice.version);
    let text = Message::text(format!("hello {name}"));
    match ws {
        AnyWebSocket::Http1(mut ws) => {
            assert_eq!(resp.status(), 101);
            ws.send(text.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), text);
        }
        AnyWebSocket::Http2(mut ws) => {
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), http::Version::HTTP_2);
            ws.send(text.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), text);
        }
        AnyWebSocket::Http3(_) => panic!("connect_auto never picks HTTP/3"),
    }
    (choice.version, choice.reason.to_string())
}

#[tokio::test]
async fn h2_with_extended_connect_is_used() {
    assert_eq!(
        round_trip(Kind::H2WithConnect, "h2").await,
        (HttpVersion::Http2, "ALPN h2, extended CONNECT".to_string())
    );
}

#[tokio::test]
async fn http1_only_server_gets_http1() {
    assert_eq!(
        round_trip(Kind::Http1Only, "h1").await,
        (HttpVersion::Http1, "ALPN http/1.1".to_string())
    );
}

#[tokio::test]
async fn h2_without_extended_connect_falls_back_to_http1() {
    assert_eq!(
        round_trip(Kind::H2WithoutConnect, "noconnect").await,
        (
            HttpVersion::Http1,
            "ALPN h2 without extended CONNECT; HTTP/1.1 on a new connection".to_string()
        )
    );
}

#[tokio::test]
async fn ws_urls_stay_on_http1() {
    // A cleartext gateway (it would speak h2 with prior knowledge, but a
    // client cannot assume that).
    let addr = common::echo_server();
    let (ws, _, choice) =
        switchyard::connect_auto(&format!("ws://{addr}/echo"), &ClientBuilder::new())
            .await
            .unwrap();
    assert_eq!(ws.version(), HttpVersion::Http1);
    assert_eq!(choice.reason, switchyard::ChoiceReason::Cleartext);
}

/// `switchyard connect URL --ca PEM ARGS` with one line on stdin; returns
/// (stdout, stderr).
fn cli(url: &str, pem: &PathBuf, extra: &[&str]) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("connect")
        .arg(url)
        .arg("--ca")
        .arg(pem)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "ping over auto").unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Wait for the echo before closing stdin (which closes the WebSocket).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = String::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
            if out.contains('\n') {
                let _ = tx.send(out.clone());
            }
        }
    });
    let out = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    drop(stdin);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = child.wait();
    (out, err)
}

#[test]
fn connect_reports_the_protocol_it_chose() {
    let (pem, tls) = cert("cli-h2");
    let addr = server(tls, Kind::H2WithConnect);
    let url = format!("wss://127.0.0.1:{}/echo", addr.port());
    let (out, err) = cli(&url, &pem, &[]);
    assert_eq!(out, "ping over auto\n");
    assert!(
        err.contains("connected over HTTP/2 (ALPN h2, extended CONNECT)"),
        "{err}"
    );
    // --http1 forces HTTP/1.1 on the same server.
    let (out, err) = cli(&url, &pem, &["--http1"]);
    assert_eq!(out, "ping over auto\n");
    assert!(err.contains("connected over HTTP/1.1 (asked for)"), "{err}");
    // --show-handshake shows the HTTP/2 exchange as text.
    let (_, err) = cli(&url, &pem, &["--show-handshake"]);
    assert!(err.contains("< HTTP/2 200 OK"), "{err}");

    let (pem, tls) = cert("cli-h1");
    let addr = server(tls, Kind::Http1Only);
    let url = format!("wss://127.0.0.1:{}/echo", addr.port());
    let (out, err) = cli(&url, &pem, &[]);
    assert_eq!(out, "ping over auto\n");
    assert!(
        err.contains("connected over HTTP/1.1 (ALPN http/1.1)"),
        "{err}"
    );
}

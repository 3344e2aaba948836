//! `switchyard doctor` (the built binary) against servers that misbehave on
//! purpose: one that ignores Upgrade, one with a wrong Sec-WebSocket-Accept,
//! one that closes idle sockets after 3 s, nginx without the Upgrade headers,
//! TLS with an expired certificate and one for another host — and a healthy
//! one. Each test asserts the diagnosis's key words and the exit status.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use switchyard::server::{accept, AcceptConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use common::{Nginx, BIN};

/// Run doctor; return (exit status, stdout).
async fn doctor(args: &[&str]) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(BIN)
            .arg("doctor")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("doctor did not finish within 60 s")
    .expect("cannot run the switchyard binary");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("doctor {args:?}\n{stdout}{stderr}");
    (out.status.code().unwrap_or(-1), stdout)
}

/// Run doctor with --json; return (exit status, document).
async fn doctor_json(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out) = doctor(&all).await;
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    (code, v)
}

fn step<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name:?} in {doc:#}"))
}

/// Read one request head (up to the blank line).
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 || buf.len() > 65536 {
            return None;
        }
        buf.push(byte[0]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A server where each connection gets `answer` to each request head.
async fn canned_server(answer: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                while read_head(&mut tcp).await.is_some() {
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Our own echo server: `switchyard serve` on a free port.
async fn serve() -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start switchyard serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("switchyard serve did not start")
        .unwrap()
        .unwrap();
    // "listening on http://127.0.0.1:PORT (...)"
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (child, addr)
}

/// A WebSocket echo on `stream` (TCP or TLS), without heartbeat.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: S) {
    let Ok(mut ws) = accept(stream, &AcceptConfig::default()).await else {
        return;
    };
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_echo_server_passes_every_step() {
    let (_child, addr) = serve().await;
    let url = format!("ws://{addr}/echo");
    let (code, doc) = doctor_json(&[&url]).await;
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["status"], "pass");
    let steps = doc["steps"].as_array().unwrap();
    for name in [
        "url",
        "mixed content",
        "dns",
        "tcp",
        "http/1.1 upgrade",
        "extensions",
        "subprotocol",
        "ping",
        "http/2",
        "http/3",
    ] {
        assert!(
            steps.iter().any(|s| s["name"] == name),
            "no {name}: {doc:#}"
        );
    }
    for s in steps {
        assert_eq!(s["status"], "pass", "{s:#}");
        assert!(s["fix"].is_null(), "{s:#}");
        assert!(s["evidence"].is_array(), "{s:#}");
    }
    let up = step(&doc, "http/1.1 upgrade");
    assert!(up["summary"]
        .as_str()
        .unwrap()
        .starts_with("101 Switching Protocols"));
    let ev = up["evidence"].to_string();
    assert!(ev.contains("Upgrade: websocket"), "{ev}");
    assert!(ev.contains("(valid for our key)"), "{ev}");
    assert!(step(&doc, "extensions")["summary"]
        .as_str()
        .unwrap()
        .contains("permessage-deflate"));
    assert!(step(&doc, "ping")["summary"]
        .as_str()
        .unwrap()
        .starts_with("round trip"));

    // Human output: one line per step with its marker, and exit 0.
    let (code, text) = doctor(&[&url]).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("✓ http/1.1 upgrade: 101 Switching Protocols"),
        "{text}"
    );
    assert!(text.contains("✓ ping: round trip"), "{text}");
    assert!(!text.contains('✗') && !text.contains("\n! "), "{text}");
    assert!(
        text.contains("result: ok (10 passed, 0 warnings, 0 failures)"),
        "{text}"
    );

    // wss:// to this cleartext port: the TLS step says the port is not TLS.
    let (code, doc) = doctor_json(&[&format!("wss://{addr}/echo")]).await;
    assert_eq!(code, 2, "{doc:#}");
    let tls = step(&doc, "tls");
    assert!(
        tls["summary"]
            .as_str()
            .unwrap()
            .ends_with("the port does not speak TLS (a cleartext server? use ws://)"),
        "{tls:#}"
    );
    assert!(tls["fix"]["summary"]
        .as_str()
        .unwrap()
        .contains("use wss:// for a TLS port"));

    // A subprotocol the echo does not speak: a warning with the fix, exit 1.
    let (code, doc) = doctor_json(&[&url, "--subprotocol", "chat.v9"]).await;
    assert_eq!(code, 1, "{doc:#}");
    let sub = step(&doc, "subprotocol");
    assert_eq!(sub["status"], "warn");
    assert!(sub["summary"]
        .as_str()
        .unwrap()
        .starts_with("the server selected none of the offered subprotocols (chat.v9)"));
    assert!(sub["fix"]["switchyard"]
        .as_str()
        .unwrap()
        .contains("subprotocols"));

    // An https page may not open a ws:// URL: mixed content, exit 2.
    let (code, text) = doctor(&[&url, "--origin", "https://app.example"]).await;
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(
            "✗ mixed content: an https page (https://app.example) cannot open a ws:// URL"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_ignores_upgrade_is_diagnosed() {
    let addr = canned_server(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 15\r\n\r\n<html>hi</html>",
    )
    .await;
    let (code, text) = doctor(&[&format!("ws://{addr}/socket")]).await;
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("✗ http/1.1 upgrade: 200 OK instead of 101: the upgrade was ignored"),
        "{text}"
    );
    assert!(text.contains("no Upgrade header in the answer"), "{text}");
    assert!(text.contains("body: <html>hi</html>"), "{text}");
    // What answers 200 to everything does not speak the fallback protocol.
    assert!(
        text.contains("✗ fallback session: a fallback session did not open either"),
        "{text}"
    );
    assert!(
        text.contains("proxy_set_header Upgrade $http_upgrade"),
        "{text}"
    );
    assert!(text.contains("result: failure"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_accept_is_diagnosed() {
    let addr = canned_server(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\nVia: 1.1 mangler\r\n\r\n",
    )
    .await;
    let (code, doc) = doctor_json(&[&format!("ws://{addr}/")]).await;
    assert_eq!(code, 2, "{doc:#}");
    let up = step(&doc, "http/1.1 upgrade");
    assert_eq!(up["status"], "fail");
    let summary = up["summary"].as_str().unwrap();
    assert!(
        summary.contains("Sec-WebSocket-Accept is wrong"),
        "{summary}"
    );
    let ev = up["evidence"].to_string();
    assert!(ev.contains("dGhlIHNhbXBsZSBub25jZQ=="), "{ev}");
    assert!(ev.contains("Via: 1.1 mangler"), "{ev}");
    assert!(up["fix"]["summary"]
        .as_str()
        .unwrap()
        .contains("258EAFA5-E914-47DA-95CA-C5AB0DC85B11"));
    for server in ["nginx", "apache", "caddy", "haproxy", "switchyard"] {
        assert!(up["fix"][server].is_string(), "{server}: {up:#}");
    }
    // No ping step: there is no connection to ping on.
    assert!(doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["name"] != "ping"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_of_three_seconds_is_measured() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = accept(tcp, &AcceptConfig::default()).await else {
                    return;
                };
                // Like a proxy's read timeout: 3 s without a frame and the
                // socket is dropped (no close frame).
                while let Ok(Some(Ok(_))) =
                    tokio::time::timeout(Duration::from_secs(3), ws.next()).await
                {}
            });
        }
    });
    let url = format!("ws://{addr}/");
    let (code, doc) = doctor_json(&[&url, "--idle-probe", "5s"]).await;
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(step(&doc, "ping")["status"], "pass");
    let idle = step(&doc, "idle probe");
    assert_eq!(idle["status"], "warn");
    let summary = idle["summary"].as_str().unwrap();
    assert!(closed_after_about_3_s(summary), "{summary}");
    assert!(summary.contains("proxy_read_timeout"), "{summary}");
    assert!(summary.contains("raise it or enable pings"), "{summary}");
    // The precise time, within tolerance.
    let precise = idle["evidence"][0].as_str().unwrap();
    let secs: f64 = precise
        .strip_prefix("closed after ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{precise}"));
    assert!((2.5..4.5).contains(&secs), "{precise}");
    assert!(idle["fix"]["nginx"]
        .as_str()
        .unwrap()
        .contains("proxy_read_timeout"));

    // A probe shorter than the timeout: still open, pass.
    let (code, doc) = doctor_json(&[&url, "--idle-probe", "1s"]).await;
    assert_eq!(code, 0, "{doc:#}");
    let idle = step(&doc, "idle probe");
    assert_eq!(idle["status"], "pass");
    assert_eq!(idle["summary"], "still open after 1 s of silence");
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-doctor-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_without_upgrade_headers_is_diagnosed() {
    let (_backend, backend) = serve().await;
    // nginx (the Debian package; the test fails without it) in front of it.
    let nginx = Nginx::start("doctor/nginx-no-upgrade.conf", backend);
    let addr = nginx.addr;

    let (code, text) = doctor(&[&format!("ws://{addr}/echo")]).await;
    drop(nginx);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("✗ http/1.1 upgrade:"), "{text}");
    assert!(text.contains("proxy dropped Upgrade"), "{text}");
    assert!(text.contains("nginx (Server: nginx"), "{text}");
    // nginx answers the client itself: keep-alive, not Upgrade.
    assert!(text.contains("    Connection: keep-alive\n"), "{text}");
    assert!(
        text.contains(
            "nginx       location /echo { proxy_pass http://backend; proxy_http_version 1.1; \
             proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; }"
        ),
        "{text}"
    );
    assert!(
        text.contains("Apache      a2enmod proxy proxy_http proxy_wstunnel"),
        "{text}"
    );
    // DNS and TCP were fine: the path is broken only at the proxy.
    assert!(
        text.contains("✓ tcp: 1 of 1 address accepted a connection"),
        "{text}"
    );
    // The gateway's fallback session goes through that same nginx.
    assert!(
        text.contains(
            "✓ fallback session: a fallback session (SSE + POST) opened through the same path"
        ),
        "{text}"
    );
}

// ---------------------------------------------------------------- TLS

struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = temp_dir(name);
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "switchyard doctor test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca, ca_key }
    }

    fn ca_file(&self) -> String {
        self.dir.join("ca.pem").to_str().unwrap().to_owned()
    }

    /// A leaf for `names`, valid between the two dates (year, month, day).
    fn leaf(
        &self,
        names: &[&str],
        from: (i32, u8, u8),
        until: (i32, u8, u8),
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
        p.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (
            cert.der().clone(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A wss echo server with this certificate (ALPN http/1.1).
async fn tls_echo(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> SocketAddr {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    echo(tls).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_diagnosed() {
    let pki = Pki::new("expired");
    let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"], (2020, 1, 1), (2021, 1, 1));
    let addr = tls_echo(cert, key).await;
    let (code, doc) = doctor_json(&[&format!("wss://{addr}/"), "--ca", &pki.ca_file()]).await;
    assert_eq!(code, 2, "{doc:#}");
    let tls = step(&doc, "tls");
    assert_eq!(tls["status"], "fail");
    assert!(tls["summary"]
        .as_str()
        .unwrap()
        .starts_with("certificate expired"));
    let ev = tls["evidence"].to_string();
    assert!(ev.contains("expired on 2021-01-01"), "{ev}");
    assert!(ev.contains("days ago"), "{ev}");
    assert!(
        ev.contains("ALPN offered: h2, http/1.1; selected: http/1.1"),
        "{ev}"
    );
    assert!(ev.contains("version: TLSv1.3"), "{ev}");
    assert!(tls["fix"]["summary"].as_str().unwrap().contains("renew"));
    assert!(tls["fix"]["nginx"]
        .as_str()
        .unwrap()
        .contains("ssl_certificate"));
    // The rest of the path is still examined (and is fine).
    assert_eq!(step(&doc, "http/1.1 upgrade")["status"], "pass");
    assert_eq!(step(&doc, "ping")["status"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_host_is_diagnosed() {
    let pki = Pki::new("wronghost");
    let (cert, key) = pki.leaf(&["other.example"], (2020, 1, 1), (2999, 1, 1));
    let addr = tls_echo(cert, key).await;
    let (code, text) = doctor(&[&format!("wss://{addr}/"), "--ca", &pki.ca_file()]).await;
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(
            "✗ tls: certificate not valid for this name: 127.0.0.1 is not among its names"
        ),
        "{text}"
    );
    assert!(text.contains("names: other.example"), "{text}");
    // The fixes are tailored to the URL's host.
    assert!(text.contains("server_name 127.0.0.1;"), "{text}");
    assert!(
        text.contains("✓ http/1.1 upgrade: 101 Switching Protocols"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_certificate_reports_expiry_version_and_alpn() {
    let pki = Pki::new("valid");
    let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"], (2020, 1, 1), (2999, 1, 1));
    let addr = tls_echo(cert, key).await;
    let (code, doc) = doctor_json(&[&format!("wss://{addr}/"), "--ca", &pki.ca_file()]).await;
    assert_eq!(code, 0, "{doc:#}");
    let tls = step(&doc, "tls");
    assert_eq!(tls["status"], "pass");
    assert!(tls["summary"]
        .as_str()
        .unwrap()
        .starts_with("certificate valid for 127.0.0.1"));
    let ev = tls["evidence"].to_string();
    assert!(ev.contains("expires on 2999-01-01"), "{ev}");
    assert!(ev.contains("days left"), "{ev}");
    assert!(ev.contains("issuer: CN=switchyard doctor test CA"), "{ev}");
    // Without --ca the same server has an unknown issuer.
    let (code, doc) = doctor_json(&[&format!("wss://{addr}/")]).await;
    assert_eq!(code, 2, "{doc:#}");
    assert!(step(&doc, "tls")["summary"]
        .as_str()
        .unwrap()
        .starts_with("unknown issuer"));
}

/// A wss server that speaks HTTP/2 (ALPN h2, extended CONNECT only when
/// `connect_protocol`) and HTTP/1.1 (ALPN http/1.1) on the same port.
async fn tls_h1_h2(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    connect_protocol: bool,
) -> SocketAddr {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;

    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
                    echo(tls).await;
                    return;
                }
                let svc = hyper::service::service_fn(|mut req| async move {
                    let resp = match switchyard::h2::accept(&mut req, &AcceptConfig::default()) {
                        Ok((resp, fut)) => {
                            tokio::spawn(async move {
                                if let Ok(mut ws) = fut.await {
                                    while let Some(Ok(_)) = ws.next().await {}
                                }
                            });
                            resp.map(|_| Full::new(Bytes::new()))
                        }
                        Err(rej) => switchyard::server::rejection_response(&rej),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let _ = switchyard::h2::server_builder(connect_protocol, &Default::default())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_extended_connect_is_checked() {
    let pki = Pki::new("h2");
    let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"], (2020, 1, 1), (2999, 1, 1));

    // SETTINGS_ENABLE_CONNECT_PROTOCOL = 1: a WebSocket opens over HTTP/2.
    let addr = tls_h1_h2(cert.clone(), key.clone_key(), true).await;
    let (code, doc) = doctor_json(&[&format!("wss://{addr}/"), "--ca", &pki.ca_file()]).await;
    assert_eq!(code, 0, "{doc:#}");
    let ev = step(&doc, "tls")["evidence"].to_string();
    assert!(
        ev.contains("ALPN offered: h2, http/1.1; selected: h2"),
        "{ev}"
    );
    let h2 = step(&doc, "http/2");
    assert_eq!(h2["status"], "pass");
    let summary = h2["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("WebSocket over HTTP/2 works: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1"),
        "{summary}"
    );
    assert!(
        h2["evidence"]
            .to_string()
            .contains("ping over HTTP/2: round trip"),
        "{h2:#}"
    );

    // HTTP/2 without the setting: said so, and HTTP/1.1 still carries the
    // WebSocket (not a failure).
    let addr = tls_h1_h2(cert, key, false).await;
    let (code, doc) = doctor_json(&[&format!("wss://{addr}/"), "--ca", &pki.ca_file()]).await;
    assert_eq!(code, 0, "{doc:#}");
    let h2 = step(&doc, "http/2");
    let summary = h2["summary"].as_str().unwrap();
    assert!(
        summary.contains("speaks HTTP/2 but did not send SETTINGS_ENABLE_CONNECT_PROTOCOL"),
        "{summary}"
    );
    assert_eq!(step(&doc, "http/1.1 upgrade")["status"], "pass");
}

/// A wss server over TCP whose plain GETs answer 200 with
/// `Alt-Svc: h3=":udp_port"`; with `h3`, an HTTP/3 WebSocket server on that
/// UDP port (RFC 9220), else nothing answers there.
async fn tls_with_alt_svc(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    h3: bool,
) -> SocketAddr {
    use switchyard::server::{accept_request, read_request_head};

    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let udp_port = if h3 {
        let endpoint = switchyard::h3::bind_endpoint("127.0.0.1:0".parse().unwrap(), &cfg).unwrap();
        let port = endpoint.local_addr().unwrap().port();
        tokio::spawn(switchyard::h3::serve(
            endpoint,
            AcceptConfig::default(),
            |_req, mut ws| {
                tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
            },
            std::future::pending(),
        ));
        port
    } else {
        // A UDP port where nothing answers.
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cfg = AcceptConfig::default();
                let Ok((req, leftover)) = read_request_head(&mut tls, &cfg.limits).await else {
                    return;
                };
                if req.headers().contains_key("upgrade") {
                    if let Ok(mut ws) = accept_request(tls, &req, leftover, &cfg).await {
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                } else {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nAlt-Svc: h3=\":{udp_port}\"; ma=3600\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_through_alt_svc_is_checked() {
    let pki = Pki::new("h3");
    let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"], (2020, 1, 1), (2999, 1, 1));

    // Alt-Svc advertises h3 and an HTTP/3 server answers there.
    let addr = tls_with_alt_svc(cert.clone(), key.clone_key(), true).await;
    let (code, doc) = doctor_json(&[&format!("wss://{addr}/"), "--ca", &pki.ca_file()]).await;
    assert_eq!(code, 0, "{doc:#}");
    let h3 = step(&doc, "http/3");
    assert_eq!(h3["status"], "pass");
    assert!(
        h3["summary"]
            .as_str()
            .unwrap()
            .starts_with("WebSocket over HTTP/3 works"),
        "{h3:#}"
    );
    assert!(
        h3["evidence"][0]
            .as_str()
            .unwrap()
            .starts_with("Alt-Svc: h3=\":"),
        "{h3:#}"
    );

    // Advertised, but nothing answers on that UDP port: a warning with the fix.
    let addr = tls_with_alt_svc(cert, key, false).await;
    let (code, doc) = doctor_json(&[&format!("wss://{addr}/"), "--ca", &pki.ca_file()]).await;
    assert_eq!(code, 1, "{doc:#}");
    let h3 = step(&doc, "http/3");
    assert_eq!(h3["status"], "warn");
    assert!(
        h3["summary"]
            .as_str()
            .unwrap()
            .starts_with("Alt-Svc advertises HTTP/3 at :"),
        "{h3:#}"
    );
    assert!(
        h3["fix"]["nginx"]
            .as_str()
            .unwrap()
            .contains("listen 443 quic"),
        "{h3:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_classified() {
    // A redirect: where to.
    let addr = canned_server(
        "HTTP/1.1 301 Moved Permanently\r\nLocation: wss://example.test/socket\r\n\
         Content-Length: 0\r\n\r\n",
    )
    .await;
    let (code, text) = doctor(&[&format!("ws://{addr}/socket")]).await;
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains(
            "✗ http/1.1 upgrade: 301 Moved Permanently: a redirect to wss://example.test/socket"
        ),
        "{text}"
    );

    // 403 with an Origin: the Origin policy, and the switchyard fix names it.
    // (With the server's own reason phrase, as it wrote it.)
    let addr = canned_server("HTTP/1.1 403 Origin denied\r\nContent-Length: 0\r\n\r\n").await;
    let (code, doc) =
        doctor_json(&[&format!("ws://{addr}/"), "--origin", "http://evil.example"]).await;
    assert_eq!(code, 2, "{doc:#}");
    let up = step(&doc, "http/1.1 upgrade");
    let summary = up["summary"].as_str().unwrap();
    assert!(
        summary.contains("403 Origin denied: the server rejected the upgrade — is the Origin http://evil.example allowed?"),
        "{summary}"
    );
    assert!(up["fix"]["switchyard"]
        .as_str()
        .unwrap()
        .contains("allowed_origins"));

    // 502 from nginx: the backend, named as unreachable from the proxy.
    let addr = canned_server(
        "HTTP/1.1 502 Bad Gateway\r\nServer: nginx/1.22.1\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    let (code, doc) = doctor_json(&[&format!("ws://{addr}/")]).await;
    assert_eq!(code, 2, "{doc:#}");
    let summary = step(&doc, "http/1.1 upgrade")["summary"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        summary.contains(
            "502 Bad Gateway: the backend failed — nginx (Server: nginx/1.22.1) could not reach it"
        ),
        "{summary}"
    );

    // 426 asking for other protocols: listed.
    let addr = canned_server(
        "HTTP/1.1 426 Upgrade Required\r\nUpgrade: TLS/1.3, h2c\r\nConnection: Upgrade\r\n\
         Content-Length: 0\r\n\r\n",
    )
    .await;
    let (code, doc) = doctor_json(&[&format!("ws://{addr}/")]).await;
    assert_eq!(code, 2, "{doc:#}");
    let summary = step(&doc, "http/1.1 upgrade")["summary"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        summary.contains("the server wants another protocol: TLS/1.3, h2c"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_and_unreachable_hosts_stop_early() {
    // RFC 6761: .invalid never resolves.
    let (code, doc) = doctor_json(&["ws://doctor-test.invalid/", "--timeout", "5s"]).await;
    assert_eq!(code, 2, "{doc:#}");
    let dns = step(&doc, "dns");
    assert_eq!(dns["status"], "fail");
    assert!(dns["summary"]
        .as_str()
        .unwrap()
        .starts_with("cannot resolve doctor-test.invalid"));
    assert!(doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["name"] != "tcp"));

    // A port where nothing listens.
    let port = free_port().await;
    let (code, doc) = doctor_json(&[&format!("ws://127.0.0.1:{port}/")]).await;
    assert_eq!(code, 2, "{doc:#}");
    let tcp = step(&doc, "tcp");
    assert_eq!(tcp["status"], "fail");
    assert!(tcp["evidence"][0]
        .as_str()
        .unwrap()
        .ends_with("connection refused (nothing listens on that port)"));
    assert!(doc["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["name"] != "http/1.1 upgrade"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_the_printed_fix_passes_and_its_read_timeout_is_measured() {
    let (_backend, backend) = serve().await;
    let nginx = Nginx::start("doctor/nginx-upgrade.conf", backend);
    let addr = nginx.addr;

    // The directives doctor prints as the nginx fix: every step passes, and
    // the proxy shows in the evidence.
    let (code, doc) = doctor_json(&[&format!("ws://{addr}/echo")]).await;
    // Through nginx's proxy_read_timeout 3s: closed after 3 s of silence.
    let (idle_code, idle_doc) =
        doctor_json(&[&format!("ws://{addr}/short"), "--idle-probe", "6s"]).await;
    drop(nginx);

    assert_eq!(code, 0, "{doc:#}");
    let up = step(&doc, "http/1.1 upgrade");
    assert_eq!(up["status"], "pass");
    assert!(
        up["evidence"].to_string().contains("Server: nginx"),
        "{up:#}"
    );
    assert_eq!(step(&doc, "ping")["status"], "pass");

    assert_eq!(idle_code, 1, "{idle_doc:#}");
    let idle = step(&idle_doc, "idle probe");
    assert_eq!(idle["status"], "warn");
    let summary = idle["summary"].as_str().unwrap();
    assert!(closed_after_about_3_s(summary), "{summary}");
    assert!(summary.contains("nginx proxy_read_timeout"), "{summary}");
}

/// "closed after N s of silence" with N = 3 (4 tolerated: a loaded machine
/// may deliver the close late; never less, the closer waits 3 s).
fn closed_after_about_3_s(summary: &str) -> bool {
    summary
        .strip_prefix("closed after ")
        .and_then(|r| r.split_once(" s of silence"))
        .and_then(|(n, _)| n.parse::<u32>().ok())
        .is_some_and(|n| (3..=4).contains(&n))
}

//! The `switchyard serve` binary: default address, --listen, signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use switchyard::{CloseCode, Message};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `switchyard serve` with `args`, return it and the first address it printed.
fn serve(args: &[&str]) -> (Serve, String) {
    let (srv, mut addrs) = serve_n(args, 1);
    (srv, addrs.remove(0))
}

/// Start `switchyard serve`, return it and the `n` addresses it printed.
fn serve_n(args: &[&str], n: usize) -> (Serve, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut addrs = Vec::new();
    for _ in 0..n {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        // "listening on http://127.0.0.1:PORT (...)" (or https://)
        let addr = line
            .split("://")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected line: {line:?}"))
            .to_owned();
        addrs.push(addr);
    }
    (Serve(child), addrs)
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(
            start.elapsed() < within,
            "serve did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn signal_closes_with_1001(sig: &str) {
    let (mut srv, addr) = serve(&["--listen", "127.0.0.1:0"]);
    signal_closes_with_1001_on(&mut srv, &addr, sig).await;
}

async fn signal_closes_with_1001_on(srv: &mut Serve, addr: &str, sig: &str) {
    let (mut ws, _) = switchyard::client::connect(&format!("ws://{addr}/echo"))
        .await
        .unwrap();
    signal(&srv.0, sig);
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match msg {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::GOING_AWAY),
        other => panic!("expected close 1001, got {other:?}"),
    }
    // Let the client finish its side of the handshake, then the server exits.
    while let Some(Ok(_)) = ws.next().await {}
    let st = wait_exit(&mut srv.0, Duration::from_secs(5));
    assert!(st.success(), "{st:?}");
}

/// Start `switchyard serve ARGS`, return it and every stdout line up to `n`.
fn serve_lines(args: &[&str], n: usize) -> (Serve, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..n {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line.trim_end().to_owned());
    }
    (Serve(child), lines)
}

#[tokio::test]
async fn tls_self_signed_prints_fingerprint_and_serves_wss() {
    use futures_util::SinkExt;
    let (srv, lines) = serve_lines(&["--tls", "--listen", "127.0.0.1:0"], 2);
    let addr = lines[0]
        .strip_prefix("listening on https://")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_owned();
    assert!(
        lines[0].contains(&format!("wss://{addr}/echo")),
        "{lines:?}"
    );
    let fp = lines[1]
        .split("SHA-256 fingerprint ")
        .nth(1)
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
    assert!(fp
        .split(':')
        .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit())));
    let url = format!("wss://{addr}/echo");
    // The client verifies certificates by default: a self-signed one fails.
    assert!(switchyard::client::connect(&url).await.is_err());
    let (mut ws, _) = switchyard::ClientBuilder::new()
        .danger_accept_invalid_certs()
        .connect(&url)
        .await
        .unwrap();
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    drop(srv);
}

#[test]
fn tls_upgrade_and_lineecho_listen_in_cleartext() {
    use std::io::{Read, Write};
    let (srv, lines) = serve_lines(
        &["--tls-upgrade", "--lineecho", "--listen", "127.0.0.1:0"],
        2,
    );
    let addr = lines[0]
        .strip_prefix("listening on http://")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("{lines:?}"))
        .to_owned();
    assert!(lines[1].contains("SHA-256 fingerprint"), "{lines:?}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /lineecho HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: lineecho/1\r\n\r\nping\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{out}"
    );
    assert!(out.ends_with("\r\n\r\nping\n"), "{out}");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: TLS/1.3\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 64];
    let n = s.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    drop(srv);
}

#[test]
fn tls_cert_without_key_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "serve",
            "--tls-cert",
            "/nonexistent.pem",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-key"), "{err}");
}

#[test]
fn unreadable_certificate_file_is_an_error_naming_it() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "serve",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_and_exits() {
    signal_closes_with_1001("TERM").await;
}

#[tokio::test]
async fn sigint_closes_websockets_with_1001_and_exits() {
    signal_closes_with_1001("INT").await;
}

#[test]
fn listen_is_repeatable() {
    let (srv, addrs) = serve_n(&["--listen", "127.0.0.1:0", "--listen", "127.0.0.2:0"], 2);
    assert!(addrs[0].starts_with("127.0.0.1:"), "{addrs:?}");
    assert!(addrs[1].starts_with("127.0.0.2:"), "{addrs:?}");
    for a in &addrs {
        std::net::TcpStream::connect(a).unwrap_or_else(|e| panic!("{a}: {e}"));
    }
    drop(srv);
}

#[test]
fn default_listen_address_is_127_0_0_1_8080() {
    // Only meaningful when 8080 is free on this machine; the bind error says so otherwise.
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err() {
        eprintln!("port 8080 busy: skipping the default-address check");
        return;
    }
    let (srv, addr) = serve(&[]);
    assert_eq!(addr, "127.0.0.1:8080");
    drop(srv);
}

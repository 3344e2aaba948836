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
        // "listening on http://127.0.0.1:PORT (...)"
        let addr = line
            .split("http://")
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

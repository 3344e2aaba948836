//! The README's table of `switchyard serve`: every default route answers as
//! documented, through `serve` with no flags and through `serve --config` on
//! the configuration `serve --print-config` printed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::Message;

mod common;

/// One raw HTTP/1.1 exchange: the response head and whatever body arrived
/// before the server closed or went quiet.
fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if let Some(head_end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..head_end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match length {
                Some(n) => out.len() >= head_end + 4 + n,
                // A 101 has no body; what follows is the new protocol.
                None => head.starts_with("http/1.1 101"),
            };
            if complete {
                break;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: SocketAddr, method: &str, path: &str, fields: &str) -> String {
    exchange(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{fields}Connection: close\r\n\r\n"
        ),
    )
}

const UPGRADE: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// The status of an HTTP/2 extended CONNECT with `:protocol` (prior knowledge).
async fn h2_connect(addr: SocketAddr, path: &str, protocol: &'static str) -> u16 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{addr}{path}"))
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static(protocol));
    send.send_request(req).await.unwrap().status().as_u16()
}

/// Each row of the README's table that the default configuration serves.
async fn answers_as_documented(addr: SocketAddr) {
    // `GET /echo` with `Upgrade: websocket`: 101, deflate when offered, echo.
    let r = get(
        addr,
        "GET",
        "/echo",
        &format!("{UPGRADE}Sec-WebSocket-Extensions: permessage-deflate\r\n"),
    );
    assert!(r.starts_with("HTTP/1.1 101"), "{r}");
    assert!(
        r.to_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate"),
        "{r}"
    );
    let (mut ws, _) = switchyard::client::connect(&format!("ws://{addr}/echo"))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );

    // `GET /echo` without it: 426 naming the protocol.
    let r = get(addr, "GET", "/echo", "").to_lowercase();
    assert!(r.starts_with("http/1.1 426"), "{r}");
    assert!(r.contains("\r\nupgrade: websocket\r\n"), "{r}");
    assert!(r.contains("\r\nconnection: upgrade"), "{r}");

    // HTTP/2 extended CONNECT: websocket on /echo is 200, another :protocol 501.
    assert_eq!(h2_connect(addr, "/echo", "websocket").await, 200);
    assert_eq!(h2_connect(addr, "/echo", "lineecho").await, 501);
    // And the echo over it, through the CLI's client.
    let mut connect = Command::new(common::BIN)
        .args(["connect", &format!("ws://{addr}/echo"), "--http2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    connect
        .stdin
        .take()
        .unwrap()
        .write_all(b"over h2\n")
        .unwrap();
    let out = connect.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over h2\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP/2"),
        "{out:?}"
    );

    // `GET /` (and /index.html): the page that talks to /echo.
    for path in ["/", "/index.html"] {
        let r = get(addr, "GET", path, "");
        assert!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
        assert!(r.contains("/echo"), "{path}: the page opens /echo: {r}");
    }

    // Anything else: 404; another method on / or /echo: 405.
    for path in ["/chat", "/echo/x", "/index.htm"] {
        let r = get(addr, "GET", path, "");
        assert!(r.starts_with("HTTP/1.1 404"), "{path}: {r}");
    }
    for path in ["/", "/echo"] {
        let r = get(addr, "POST", path, "Content-Length: 0\r\n");
        assert!(r.starts_with("HTTP/1.1 405"), "{path}: {r}");
    }
}

fn serve(args: &[&str]) -> (common::Proc, SocketAddr) {
    let (p, addrs) = common::switchyard(&[&["serve"], args].concat(), 1);
    (p, addrs[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_routes_answer_as_the_readme_says_with_no_flags_and_from_the_printed_config() {
    let printed = Command::new(common::BIN)
        .args(["serve", "--print-config"])
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let dir = common::temp_dir("defaults");
    let file = dir.join("printed.toml");
    std::fs::write(&file, &printed.stdout).unwrap();

    // With no flags the server is on 127.0.0.1:8080; elsewhere 8080 may be
    // taken, and then only the printed configuration is checked.
    if std::net::TcpListener::bind("127.0.0.1:8080").is_ok() {
        let (_p, addr) = serve(&[]);
        assert_eq!(addr, "127.0.0.1:8080".parse().unwrap());
        answers_as_documented(addr).await;
    } else {
        eprintln!("port 8080 busy: `serve` with no flags not checked here");
    }
    // The printed file, on any free port (the flag overrides its address).
    let (_p, addr) = serve(&[
        "--config",
        file.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    answers_as_documented(addr).await;
}

#[test]
fn the_printed_config_is_accepted_by_check_config_on_stdin() {
    let printed = Command::new(common::BIN)
        .args(["serve", "--tls", "--http3", "--print-config"])
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let mut check = Command::new(common::BIN)
        .args(["serve", "--config", "/dev/stdin", "--check-config"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(&printed.stdout)
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // And a broken one is not.
    let mut broken = printed.stdout.clone();
    broken.extend_from_slice(
        b"\n[[route]]\npath = \"/x\"\napp = \"echo\"\n[route.policy]\nidle_timeout = \"soon\"\n",
    );
    let mut check = Command::new(common::BIN)
        .args(["serve", "--config", "/dev/stdin", "--check-config"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(&broken).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("idle_timeout"),
        "{out:?}"
    );
}

#[test]
fn the_printed_config_does_not_show_the_redis_password() {
    let dir = common::temp_dir("print-cluster");
    let file = dir.join("cluster.toml");
    std::fs::write(
        &file,
        "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/\"\napp = \"echo\"\n\
         [cluster]\nredis = \"redis://app:hunter2-secret@10.0.0.7:6379/0\"\n",
    )
    .unwrap();
    let printed = Command::new(common::BIN)
        .args([
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(
        text.contains("redis = \"redis://app:***@10.0.0.7:6379/0\""),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

//! `switchyard serve`'s default apps over real sockets on 127.0.0.1.

mod common;

use common::start;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::{CloseCode, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send raw bytes, read one response (head and `Content-Length` body); the
/// connection may stay open (keep-alive).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if out.len() >= end + 4 + len {
                    break;
                }
            }
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("no complete response");
    String::from_utf8_lossy(&out).into_owned()
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

#[tokio::test]
async fn plain_get_echo_gets_426_with_upgrade_headers() {
    let srv = start(common::default_config()).await;
    let resp = raw(srv.addr, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_line(&resp), "HTTP/1.1 426 Upgrade Required");
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{resp}");
    let connection = lower
        .lines()
        .find(|l| l.starts_with("connection:"))
        .unwrap_or("");
    assert!(
        connection.split([':', ',']).any(|t| t.trim() == "upgrade"),
        "{resp}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn index_page_404_and_405() {
    let srv = start(common::default_config()).await;
    let resp = raw(srv.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_line(&resp), "HTTP/1.1 200 OK");
    assert!(resp.contains("text/html"), "{resp}");
    assert!(
        resp.contains("new SwitchyardSocket("),
        "the page talks to /echo: {resp}"
    );
    let resp = raw(srv.addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_line(&resp), "HTTP/1.1 404 Not Found");
    let resp = raw(
        srv.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&resp), "HTTP/1.1 405 Method Not Allowed");
    srv.stop().await;
}

#[tokio::test]
async fn bad_heads_get_precise_statuses() {
    let srv = start(common::default_config()).await;
    // Bare LF line endings.
    let resp = raw(srv.addr, b"GET /echo HTTP/1.1\nHost: x\n\n").await;
    assert_eq!(status_line(&resp), "HTTP/1.1 400 Bad Request", "bare LF");
    // obs-fold.
    let resp = raw(
        srv.addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&resp), "HTTP/1.1 400 Bad Request", "obs-fold");
    // NUL in a value.
    let resp = raw(
        srv.addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&resp), "HTTP/1.1 400 Bad Request", "NUL");
    // Head over 16 KiB.
    let mut big = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    let resp = raw(srv.addr, &big).await;
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "16 KiB"
    );
    // More than 100 header fields.
    let mut many = b"GET /echo HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..101 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let resp = raw(srv.addr, &many).await;
    assert_eq!(
        status_line(&resp),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "101 headers"
    );
    // Wrong WebSocket version: 426 naming 13.
    let resp = raw(
        srv.addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&resp), "HTTP/1.1 426 Upgrade Required");
    assert!(
        resp.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{resp}"
    );
    // A key that is not base64 of 16 bytes.
    let resp = raw(
        srv.addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&resp), "HTTP/1.1 400 Bad Request", "short key");
    srv.stop().await;
}

#[tokio::test]
async fn slow_head_gets_408_and_close() {
    let mut cfg = common::default_config();
    cfg.limits.handshake_timeout = Duration::from_millis(300);
    let srv = start(common::revalidate(cfg)).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("server kept the slow connection open")
        .unwrap();
    let resp = String::from_utf8_lossy(&out);
    assert_eq!(status_line(&resp), "HTTP/1.1 408 Request Timeout");
    srv.stop().await;
}

#[tokio::test]
async fn echo_text_and_binary_with_and_without_deflate() {
    let srv = start(common::default_config()).await;
    let url = format!("ws://{}/echo", srv.addr);
    for deflate in [true, false] {
        let mut b = switchyard::client::ClientBuilder::new();
        if !deflate {
            b = b.no_deflate();
        }
        let (mut ws, _resp) = b.connect(&url).await.unwrap();
        assert_eq!(ws.negotiated().deflate.is_some(), deflate);
        ws.send(Message::text("héllo")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("héllo"));
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
        ws.close(CloseCode::NORMAL, "bye").await.unwrap();
    }
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_closes_open_websockets_with_1001() {
    let srv = start(common::default_config()).await;
    let url = format!("ws://{}/echo", srv.addr);
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (ws, _) = switchyard::client::connect(&url).await.unwrap();
        clients.push(ws);
    }
    let stopping = tokio::spawn(srv.stop());
    for mut ws in clients {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("no close frame on shutdown")
            .expect("stream ended without a close frame")
            .unwrap();
        match msg {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::GOING_AWAY),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    stopping.await.unwrap();
}

/// Segments `s` has received so far (`TCP_INFO`).
#[cfg(target_os = "linux")]
fn segments_received(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd as _;
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_segs_in
}

/// `ack_with_response`: the 101 carries the ACK of the upgrade request, so the client
/// receives two segments (SYN-ACK, 101) instead of three (SYN-ACK, a bare ACK, 101).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_answer_carries_the_ack_of_the_request() {
    const UPGRADE: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    for (ack_with_response, expected) in [(true, 2), (false, 3)] {
        let mut cfg = common::default_config();
        cfg.listeners[0].ack_with_response = ack_with_response;
        let srv = common::start(common::revalidate(cfg)).await;
        // The kernel sends the delayed ACK anyway after 40 ms: a measurement where the 101
        // took that long (a loaded host) says nothing, and is taken again.
        let mut measured = None;
        for _ in 0..20 {
            let mut s = TcpStream::connect(srv.addr).await.unwrap();
            let sent = std::time::Instant::now();
            s.write_all(UPGRADE).await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                assert_eq!(s.read(&mut b).await.unwrap(), 1, "EOF before the 101");
                head.push(b[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 101 "));
            if sent.elapsed() < Duration::from_millis(30) {
                measured = Some(segments_received(&s));
                break;
            }
        }
        let got = measured.expect("no 101 within 30 ms of its request in 20 tries");
        assert_eq!(
            got, expected,
            "segments received with ack_with_response = {ack_with_response}"
        );
    }
}

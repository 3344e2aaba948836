//! `switchyard serve --io-uring`: the built-in echo with its connections on io_uring
//! (Linux), the argument rules, and the graceful shutdown.
#![cfg(target_os = "linux")]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::{CloseCode, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

/// Whether the kernel lets this machine use io_uring (`kernel.io_uring_disabled`, Linux
/// 6.6+). Without it the server uses epoll and says so; these tests say they did not run.
fn skip() -> bool {
    let off = !switchyard_gateway::io::uring::kernel_allows();
    if off {
        eprintln!("io_uring is disabled by kernel.io_uring_disabled: not tested here");
    }
    off
}

fn serve_uring() -> (common::Proc, std::net::SocketAddr) {
    let (p, addrs) = common::switchyard(
        &[
            "--threads",
            "1",
            "serve",
            "--io-uring",
            "--listen",
            "127.0.0.1:0",
        ],
        1,
    );
    (p, addrs[0])
}

#[tokio::test]
async fn the_echo_runs_on_io_uring() {
    if skip() {
        return;
    }
    let (srv, addr) = serve_uring();
    // The listener says which I/O path it took (a kernel without io_uring: epoll).
    let log = common::strip_ansi(&srv.wait_log("listening"));
    assert!(log.contains("io_uring=true"), "{log}");

    let mut conns = open_and_echo(&format!("ws://{addr}/echo"), 20, 50).await;
    // A 4 MiB binary message: bulk reads and large writes.
    let big: Vec<u8> = (0..4 << 20)
        .map(|i: u32| (i * 31 + i / 4093) as u8)
        .collect();
    let ws = &mut conns[0];
    ws.send(Message::binary(big.clone())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(b) => assert!(b[..] == big[..], "the 4 MiB echo differs"),
        other => panic!("expected the binary back, got {other:?}"),
    }
    close_all(conns).await;
    drop(srv);
}

/// The HTTP/1.1 side on io_uring: 426 for a plain GET /echo, and a head split over
/// many small writes is parsed once it is whole.
#[tokio::test]
async fn http_on_io_uring() {
    if skip() {
        return;
    }
    let (_srv, addr) = serve_uring();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let req = "GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for b in req.as_bytes().chunks(3) {
        s.write_all(b).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut resp = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 426 "), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("upgrade: websocket"),
        "{resp}"
    );
}

/// The drain reaches connections on this thread's ring and on the worker threads'.
#[tokio::test]
async fn sigterm_closes_io_uring_websockets_with_1001() {
    if skip() {
        return;
    }
    for threads in ["1", "2"] {
        let (mut srv, addrs) = common::switchyard(
            &[
                "--threads",
                threads,
                "serve",
                "--io-uring",
                "--listen",
                "127.0.0.1:0",
            ],
            1,
        );
        let (mut ws, _) = switchyard::client::connect(&format!("ws://{}/echo", addrs[0]))
            .await
            .unwrap();
        srv.signal("TERM");
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match msg {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::GOING_AWAY, "{threads}"),
            other => panic!("threads {threads}: expected close 1001, got {other:?}"),
        }
        while let Some(Ok(_)) = ws.next().await {}
        let st = srv.wait_exit(Duration::from_secs(5));
        assert!(st.success(), "threads {threads}: {st:?}");
    }
}

/// With several threads the connections run on io_uring worker threads, a ring each:
/// the threads and their rings exist, and many connections echo through them.
#[tokio::test]
async fn several_threads_run_connections_on_io_uring_workers() {
    if skip() {
        return;
    }
    let (srv, addrs) = common::switchyard(
        &[
            "--threads",
            "2",
            "serve",
            "--io-uring",
            "--listen",
            "127.0.0.1:0",
        ],
        1,
    );
    let log = common::strip_ansi(&srv.wait_log("listening"));
    assert!(log.contains("io_uring=true"), "{log}");
    let log = common::strip_ansi(&srv.wait_log("io_uring worker threads started"));
    assert!(log.contains("threads=2"), "{log}");
    let pid = srv.pid();
    let workers = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("uring-worker-"))
        .count();
    assert_eq!(workers, 2, "one io_uring worker thread per runtime thread");
    let rings = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy() == "anon_inode:[io_uring]")
            .count()
    };
    assert_eq!(rings(), 2, "each worker thread has its own ring");

    let conns = open_and_echo(&format!("ws://{}/echo", addrs[0]), 10, 20).await;
    close_all(conns).await;
    // No thread set up a ring of its own on the way (the runtime's threads
    // accept, the workers' rings serve).
    assert_eq!(rings(), 2);
}

/// TLS listeners run on io_uring too: HTTP/1.1 and HTTP/2 (ALPN) over rustls over
/// the ring's stream, small and large messages, on this thread's ring and on workers'.
#[tokio::test]
async fn tls_connections_run_on_io_uring() {
    if skip() {
        return;
    }
    for threads in ["1", "2"] {
        let (srv, addrs) = common::switchyard(
            &[
                "--threads",
                threads,
                "serve",
                "--io-uring",
                "--tls",
                "--listen",
                "127.0.0.1:0",
            ],
            1,
        );
        let log = common::strip_ansi(&srv.wait_log("listening"));
        assert!(log.contains("io_uring=true"), "threads {threads}: {log}");
        let url = format!("wss://{}/echo", addrs[0]);
        let builder = switchyard::ClientBuilder::new().danger_accept_invalid_certs();
        let (ws, _) = builder.connect(&url).await.unwrap();
        echo_small_and_large(ws, &format!("threads {threads} h1")).await;
        let (ws, _) = switchyard::h2::connect_h2(&url, &builder).await.unwrap();
        echo_small_and_large(ws, &format!("threads {threads} h2")).await;
    }
}

async fn echo_small_and_large<S>(mut ws: switchyard::WebSocket<S>, label: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for i in 0..20 {
        let text = format!("{label} message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    let big: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + i / 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(b) => assert!(b[..] == big[..], "{label}: the 1 MiB echo differs"),
        other => panic!("{label}: expected the binary back, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(5), ws.close(CloseCode::NORMAL, "bye"))
        .await
        .expect("the server answered the close")
        .unwrap();
}

type Ws = switchyard::WebSocket<switchyard::MaybeTlsStream>;

/// `n` connections to `url`, each echoing `rounds` texts, the connections in turn.
async fn open_and_echo(url: &str, n: usize, rounds: usize) -> Vec<Ws> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(switchyard::client::connect(url).await.unwrap().0);
    }
    for round in 0..rounds {
        for (i, ws) in conns.iter_mut().enumerate() {
            let text = format!("conn {i} round {round}");
            ws.send(Message::text(text.clone())).await.unwrap();
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => assert_eq!(t.as_str(), text),
                other => panic!("expected the text back, got {other:?}"),
            }
        }
    }
    conns
}

/// The closing handshakes complete (the server answers each close frame).
async fn close_all(conns: Vec<Ws>) {
    for mut ws in conns {
        tokio::time::timeout(Duration::from_secs(5), ws.close(CloseCode::NORMAL, "bye"))
            .await
            .expect("the server answered the close")
            .unwrap();
    }
}

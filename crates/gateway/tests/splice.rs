//! The transparent tunnel between two plain TCP sockets (splice(2) on
//! Linux), over real sockets on 127.0.0.1: through the whole gateway
//! (TOML config, front, `/status` counters, metrics), and through
//! `tunnel::transparent_tcp` alone with each splice mode.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_gateway::config::Config;
use switchyard_gateway::io::PlainTcp;
use switchyard_gateway::metrics::Direction;
use switchyard_gateway::proxy::tunnel::{transparent_tcp, NoObserver, Spliced};
use switchyard_gateway::proxy::{SpliceMode, TunnelEnd, TunnelReport};
use switchyard_gateway::{Gateway, Server};
use switchyard_proto::handshake::accept_key;
use switchyard_proto::head::RequestParser;
use switchyard_proto::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// `n` bytes that differ from any shifted copy of themselves.
fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// Two connected sockets: (the peer's end, the proxy's end).
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (peer, accepted) = tokio::join!(TcpStream::connect(addr), l.accept());
    (peer.unwrap(), accepted.unwrap().0)
}

/// Run `transparent_tcp` over two socket pairs: (client, upstream, tunnel).
async fn tunnel(
    idle: Duration,
    mode: SpliceMode,
) -> (
    TcpStream,
    TcpStream,
    tokio::task::JoinHandle<(TunnelReport, Spliced)>,
) {
    let (client, mut proxy_a) = pair().await;
    let (upstream, mut proxy_b) = pair().await;
    let t = tokio::spawn(async move {
        transparent_tcp(
            PlainTcp::bare(&mut proxy_a),
            PlainTcp::bare(&mut proxy_b),
            idle,
            mode,
            &NoObserver,
            std::future::pending(),
        )
        .await
    });
    (client, upstream, t)
}

async fn ended(
    t: tokio::task::JoinHandle<(TunnelReport, Spliced)>,
    within: Duration,
) -> (TunnelReport, Spliced) {
    tokio::time::timeout(within, t)
        .await
        .expect("the tunnel did not end in time")
        .unwrap()
}

/// Write `data` and shut the write side, while reading everything the
/// other side sends until EOF.
async fn exchange(s: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    drop(writer.await.unwrap());
    got
}

// ---------------------------------------------------------------------------
// transparent_tcp alone
// ---------------------------------------------------------------------------

async fn both_ways_at_once(mode: SpliceMode, up_len: usize, down_len: usize) -> Spliced {
    let (client, upstream, t) = tunnel(Duration::from_secs(30), mode).await;
    let up = pattern(up_len, 1);
    let down = pattern(down_len, 2);
    let (c, u) = tokio::join!(
        exchange(client, up.clone()),
        exchange(upstream, down.clone())
    );
    assert!(
        c == down,
        "the client got {} bytes, not the upstream's",
        c.len()
    );
    assert!(
        u == up,
        "the upstream got {} bytes, not the client's",
        u.len()
    );
    let (report, spliced) = ended(t, Duration::from_secs(5)).await;
    assert_eq!(report.end, TunnelEnd::Finished);
    assert_eq!(report.bytes_to_upstream, up_len as u64);
    assert_eq!(report.bytes_to_client, down_len as u64);
    assert!(spliced.to_upstream <= up_len as u64);
    assert!(spliced.to_client <= down_len as u64);
    spliced
}

#[tokio::test]
async fn megabytes_both_ways_at_once_arrive_byte_exact_in_every_mode() {
    let s = both_ways_at_once(SpliceMode::Always, 6 << 20, 5 << 20).await;
    if cfg!(target_os = "linux") {
        assert_eq!(
            s,
            Spliced {
                to_upstream: 6 << 20,
                to_client: 5 << 20
            }
        );
    }
    let s = both_ways_at_once(SpliceMode::Bursts, 6 << 20, 5 << 20).await;
    if cfg!(target_os = "linux") {
        // The first read of each direction goes through user space; the
        // bulk is spliced.
        assert!(s.to_upstream > 3 << 20, "{s:?}");
        assert!(s.to_client > 2 << 20, "{s:?}");
    }
    let s = both_ways_at_once(SpliceMode::Never, 6 << 20, 5 << 20).await;
    assert_eq!(s, Spliced::default());
}

#[tokio::test]
async fn small_messages_are_not_spliced_in_burst_mode() {
    let (mut client, mut upstream, t) = tunnel(Duration::from_secs(30), SpliceMode::Bursts).await;
    let mut buf = [0u8; 16];
    for i in 0..200u8 {
        client.write_all(&[i; 16]).await.unwrap();
        upstream.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [i; 16]);
        upstream.write_all(&[!i; 16]).await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [!i; 16]);
    }
    drop((client, upstream));
    let (report, spliced) = ended(t, Duration::from_secs(5)).await;
    assert_eq!(report.bytes_to_upstream, 3200);
    assert_eq!(report.bytes_to_client, 3200);
    assert_eq!(
        spliced,
        Spliced::default(),
        "16-byte messages go through user space"
    );
}

#[tokio::test]
async fn half_close_passes_through_the_splice_path() {
    for mode in [SpliceMode::Always, SpliceMode::Bursts] {
        let (client, upstream, t) = tunnel(Duration::from_secs(30), mode).await;
        let (mut cr, mut cw) = client.into_split();
        let (mut ur, mut uw) = upstream.into_split();
        // The client sends 1 MiB and its FIN; the upstream sees exactly that,
        // then EOF, while its own direction is still open.
        let up = pattern(1 << 20, 3);
        cw.write_all(&up).await.unwrap();
        cw.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), ur.read_to_end(&mut got))
            .await
            .expect("the client's FIN did not reach the upstream")
            .unwrap();
        assert!(got == up, "{mode:?}: {} bytes", got.len());
        // The other direction keeps flowing after the half-close.
        let down = pattern(1 << 20, 4);
        uw.write_all(&down).await.unwrap();
        uw.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), cr.read_to_end(&mut got))
            .await
            .expect("the upstream's FIN did not reach the client")
            .unwrap();
        assert!(got == down, "{mode:?}: {} bytes", got.len());
        let (report, spliced) = ended(t, Duration::from_secs(5)).await;
        assert_eq!(report.end, TunnelEnd::Finished, "{mode:?}");
        if cfg!(target_os = "linux") {
            assert!(
                spliced.to_upstream > 0 && spliced.to_client > 0,
                "{mode:?}: {spliced:?}"
            );
        }
    }
}

#[tokio::test]
async fn upstream_killed_mid_transfer_ends_the_tunnel_and_closes_the_client() {
    for mode in [SpliceMode::Always, SpliceMode::Bursts] {
        let (client, upstream, t) = tunnel(Duration::from_secs(30), mode).await;
        let (mut cr, mut cw) = client.into_split();
        // The client streams 64 MiB; the upstream reads 2 MiB, then dies
        // with a reset (SO_LINGER 0) while bytes are in flight both ways.
        let writer = tokio::spawn(async move {
            let chunk = pattern(256 << 10, 5);
            for _ in 0..256 {
                if cw.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut upstream = upstream;
        let mut got = vec![0u8; 2 << 20];
        upstream.read_exact(&mut got).await.unwrap();
        upstream.write_all(&pattern(1 << 20, 6)).await.unwrap();
        upstream.set_zero_linger().unwrap();
        drop(upstream);
        let start = Instant::now();
        let (report, _) = ended(t, Duration::from_secs(1)).await;
        assert!(
            matches!(report.end, TunnelEnd::Io(_)),
            "{mode:?}: {:?}",
            report.end
        );
        assert!(start.elapsed() < Duration::from_secs(1));
        // The proxy's sockets are closed with the tunnel: the client reads
        // what was relayed, then EOF or a reset, and its writes fail.
        let mut sink = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(2), cr.read_to_end(&mut sink)).await;
        assert!(r.is_ok(), "{mode:?}: the client was not closed");
        tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .expect("the client's writes never failed")
            .unwrap();
    }
}

#[tokio::test]
async fn idle_timeout_fires_after_a_spliced_burst() {
    for mode in [SpliceMode::Always, SpliceMode::Bursts] {
        let idle = Duration::from_millis(300);
        let (mut client, mut upstream, t) = tunnel(idle, mode).await;
        let data = pattern(512 << 10, 7);
        client.write_all(&data).await.unwrap();
        let mut got = vec![0u8; data.len()];
        upstream.read_exact(&mut got).await.unwrap();
        assert!(got == data);
        let quiet = Instant::now();
        let (report, spliced) = ended(t, Duration::from_secs(3)).await;
        assert_eq!(report.end, TunnelEnd::Idle, "{mode:?}");
        let waited = quiet.elapsed();
        assert!(
            waited >= idle - Duration::from_millis(50),
            "{mode:?}: {waited:?}"
        );
        assert!(
            waited < idle + Duration::from_secs(1),
            "{mode:?}: {waited:?}"
        );
        if cfg!(target_os = "linux") {
            assert!(spliced.to_upstream > 0, "{mode:?}");
        }
        // Closed: both peers read EOF.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        upstream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}

// ---------------------------------------------------------------------------
// Through the gateway
// ---------------------------------------------------------------------------

/// An upstream that answers the upgrade with a valid 101, then waits for a
/// first byte from the client before it sends `down` (so every byte of it
/// crosses the tunnel), reads everything until EOF and reports it.
async fn bulk_upstream(down: Vec<u8>) -> (SocketAddr, oneshot::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = l.accept().await.unwrap();
        let mut parser = RequestParser::new(&Limits::default());
        let mut buf = vec![0u8; 4096];
        let (req, mut got) = loop {
            let n = tcp.read(&mut buf).await.unwrap();
            if let Some((req, used)) = parser.feed(&buf[..n]).unwrap() {
                break (req, buf[used..n].to_vec());
            }
        };
        let key = req.headers()["sec-websocket-key"].to_str().unwrap();
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(key.as_bytes())
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        while got.is_empty() {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "EOF before the first tunnel byte");
            got.extend_from_slice(&buf[..n]);
        }
        let (mut r, mut w) = tcp.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&down).await.unwrap();
            w.shutdown().await.unwrap();
        });
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        let _ = tx.send(got);
    });
    (addr, rx)
}

#[tokio::test]
async fn gateway_splices_a_large_transfer_and_counts_every_byte() {
    let up = pattern(6 << 20, 8);
    let down = pattern(8 << 20, 9);
    let (back, upstream_got) = bulk_upstream(down.clone()).await;
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"back\"\nservers = [\"ws://{back}\"]\n\
         [[route]]\npath = \"/ws\"\nupstream = \"back\"\n\
         [route.policy]\ntunnel = \"transparent\"\n"
    );
    let gateway = Gateway::new(Config::from_toml_str(&text, "gw.toml").unwrap(), None).unwrap();
    let server = Server::bind(gateway.clone()).await.unwrap();
    let addr = server.addresses()[0].tcp;
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // The 101's head, byte by byte (nothing else comes before the client's
    // first tunnel byte).
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let (mut r, mut w) = s.into_split();
    let up2 = up.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&up2).await.unwrap();
        w
    });
    // Half the download, then /status shows the live connection's bytes.
    let mut got = vec![0u8; 4 << 20];
    r.read_exact(&mut got).await.unwrap();
    let mut w = writer.await.unwrap();
    let mut counted = false;
    for _ in 0..100 {
        let conns = gateway.connections().snapshot();
        assert_eq!(conns.len(), 1);
        let (bytes_in, bytes_out) = (conns[0].bytes_in, conns[0].bytes_out);
        // In: what the client sent after its head; out: the 101 and more.
        if bytes_in == up.len() as u64 && bytes_out >= (head.len() + (4 << 20)) as u64 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        counted,
        "/status counters: {:?}",
        gateway.connections().snapshot()
    );
    w.shutdown().await.unwrap();
    r.read_to_end(&mut got).await.unwrap();
    assert!(
        got == down,
        "the client got {} bytes, not the upstream's",
        got.len()
    );
    let up_got = tokio::time::timeout(Duration::from_secs(5), upstream_got)
        .await
        .unwrap()
        .unwrap();
    assert!(up_got == up, "the upstream got {} bytes", up_got.len());

    // Metrics once the tunnel ended: every byte counted, most of it spliced.
    let m = gateway.metrics();
    let mut ended = false;
    for _ in 0..100 {
        if m.bytes("/ws", Direction::UpstreamToClient) == down.len() as u64 {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ended, "{}", m.render());
    assert_eq!(m.bytes("/ws", Direction::ClientToUpstream), up.len() as u64);
    if cfg!(target_os = "linux") {
        let (su, sd) = (
            m.spliced("/ws", Direction::ClientToUpstream),
            m.spliced("/ws", Direction::UpstreamToClient),
        );
        assert!(su > (3 << 20) && su <= up.len() as u64, "{su}");
        assert!(sd > (4 << 20) && sd <= down.len() as u64, "{sd}");
        assert!(
            m.render()
                .contains("switchyard_tunnel_spliced_bytes_total{route=\"/ws\",direction=\"upstream_to_client\"}"),
            "{}",
            m.render()
        );
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap();
}

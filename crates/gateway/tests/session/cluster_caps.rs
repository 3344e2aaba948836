//! The route caps of a cluster (`docs/cluster.md`): `max_connections` and
//! `max_connections_per_ip` hold across instances sharing one real
//! `redis-server`, WebSockets and fallback sessions counted together; the
//! leases of a killed instance expire; Redis unreachable admits on the
//! local count.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::cluster::{member_with, Doomed};
use crate::harness::*;
use crate::redis_server::{free_port, RedisServer};

const CAPS: &str = "max_connections = 2\nmax_connections_per_ip = 1\n";

const UPGRADE: &str = "GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
     Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

const OPEN: &str = "POST /echo?sw=open HTTP/1.1\r\nHost: localhost\r\n\
     Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";

/// The answer to one request sent from the loopback address `from`.
struct Answer {
    status: u16,
    head: String,
    /// Open while the test holds it (a switched WebSocket stays admitted).
    _conn: TcpStream,
}

/// Send `request` to `to` from `127.0.0.<from>` and read the answer's head.
async fn from(host: u8, to: SocketAddr, request: &str) -> Answer {
    within("an answer", async {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0)))
            .unwrap();
        let mut conn = socket.connect(to).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                conn.read(&mut byte).await.unwrap(),
                1,
                "the answer ended early"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head[9..12].parse().unwrap();
        Answer {
            status,
            head,
            _conn: conn,
        }
    })
    .await
}

fn retry_after(a: &Answer) -> Option<&str> {
    a.head.lines().find_map(|l| {
        l.strip_prefix("retry-after: ")
            .or(l.strip_prefix("Retry-After: "))
    })
}

/// Upgrade from `127.0.0.<host>` until it is switched (the caps let go of
/// a place asynchronously).
async fn admitted_eventually(host: u8, to: SocketAddr) -> Answer {
    within("a place in the caps", async {
        loop {
            let a = from(host, to, UPGRADE).await;
            if a.status == 101 {
                break a;
            }
            assert_eq!(a.status, 503, "{}", a.head);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

#[tokio::test]
async fn the_caps_hold_across_instances_for_websockets_and_sessions() {
    let redis = RedisServer::start().await;
    let a = member_with(redis.port, "a", CAPS, "").await;
    let b = member_with(redis.port, "b", CAPS, "").await;

    let first = from(1, a.addr, UPGRADE).await;
    assert_eq!(first.status, 101, "{}", first.head);
    // B has no connection of its own from 127.0.0.1: the cluster's count
    // refuses it.
    let again = from(1, b.addr, UPGRADE).await;
    assert_eq!(again.status, 429, "{}", again.head);
    assert_eq!(retry_after(&again), Some("5"), "{}", again.head);
    let second = from(2, b.addr, UPGRADE).await;
    assert_eq!(second.status, 101, "{}", second.head);
    // The route holds 2 across the cluster although A holds only 1.
    let full = from(3, a.addr, UPGRADE).await;
    assert_eq!(full.status, 503, "{}", full.head);
    assert_eq!(retry_after(&full), Some("5"), "{}", full.head);
    // A fallback session counts with them.
    let session = from(3, b.addr, OPEN).await;
    assert_eq!(session.status, 503, "{}", session.head);
    let m = a.gateway.metrics();
    assert_eq!(m.upgrade_attempts("refused", "route_full"), 1);
    assert_eq!(
        b.gateway.metrics().upgrade_attempts("refused", "ip_full"),
        1
    );

    // A connection that ends gives its place back to the whole cluster.
    drop(first);
    let third = admitted_eventually(3, b.addr).await;
    // ... and a session's lease is held for as long as the session.
    drop(third);
    let opened = within("a session", async {
        loop {
            let s = from(4, a.addr, OPEN).await;
            if s.status == 200 {
                break s;
            }
            assert_eq!(s.status, 503, "{}", s.head);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let full = from(5, b.addr, UPGRADE).await;
    assert_eq!(full.status, 503, "{}", full.head);
    drop((second, opened));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_killed_instance_frees_its_places_after_the_lease_ttl() {
    let redis = RedisServer::start().await;
    let doomed = Doomed::start_with(redis.port, "doomed", CAPS, "lease_ttl = \"1s\"\n");
    let survivor = member_with(redis.port, "survivor", CAPS, "lease_ttl = \"1s\"\n").await;
    let held: Vec<Answer> = [
        from(1, doomed.addr, UPGRADE).await,
        from(2, doomed.addr, UPGRADE).await,
    ]
    .into();
    for h in &held {
        assert_eq!(h.status, 101, "{}", h.head);
    }
    assert_eq!(from(3, survivor.addr, UPGRADE).await.status, 503);

    // Redis loses its data: the doomed instance's refresh puts its leases
    // back, so the cap holds again.
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("FLUSHALL")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    within("the leases put back", async {
        loop {
            let n: u32 = redis::cmd("ZCARD")
                .arg("t:caps:{/echo}")
                .query_async(&mut conn)
                .await
                .unwrap();
            if n == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(from(3, survivor.addr, UPGRADE).await.status, 503);

    // Killed: nothing removes its leases; they expire.
    doomed.kill();
    let _admitted = admitted_eventually(3, survivor.addr).await;
    drop(held);
    survivor.stop().await;
}

#[tokio::test]
async fn without_redis_the_local_count_still_holds() {
    let port = free_port();
    let gw = member_with(port, "alone", CAPS, "").await;
    let first = from(1, gw.addr, UPGRADE).await;
    assert_eq!(
        first.status, 101,
        "admitted on the local count: {}",
        first.head
    );
    let again = from(1, gw.addr, UPGRADE).await;
    assert_eq!(again.status, 429, "{}", again.head);
    let metrics = gw.gateway.limiter().render();
    assert!(
        metrics.contains("switchyard_cluster_caps_unchecked_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_cluster_leases 1\n"),
        "{metrics}"
    );
    drop(first);
    gw.stop().await;
}

//! Several gateways sharing fallback sessions through one real
//! `redis-server` (`[cluster]`, docs/cluster.md): any instance serves any
//! request of a session; Redis unreachable at start.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use switchyard::fallback::wire::{Entry, ErrorBody, OpenResponse, Payload, Seq};
use switchyard::{CloseCode, Message};

use crate::gateway::Running;
use crate::harness::*;
use crate::redis_server::{free_port, RedisServer};

/// The echo app (its fallback sessions bridged to the built-in echo) on a
/// gateway that is a member of the cluster on `port`.
async fn member(port: u16, node: &str) -> Running {
    member_with(port, node, "", "").await
}

/// [`member`] with `policy` added to the route's policy and `cluster` to
/// `[cluster]`.
pub(crate) async fn member_with(port: u16, node: &str, policy: &str, cluster: &str) -> Running {
    Running::start(&format!(
        "[[route]]\npath = \"/echo\"\napp = \"echo\"\n[route.policy]\ndrain_timeout = \"2s\"\n\
         fallback_poll_timeout = \"1s\"\nfallback_heartbeat = \"1s\"\n{policy}[cluster]\nredis = \"redis://127.0.0.1:{port}/0\"\nnode_id = \"{node}\"\n\
         key_prefix = \"t:\"\n{cluster}"
    ))
    .await
}

/// A member on a runtime of its own, killed by dropping that runtime: its
/// tasks stop where they are and its sockets close, as when the process is
/// killed with SIGKILL (no drain, nothing written to Redis).
pub(crate) struct Doomed {
    pub(crate) addr: std::net::SocketAddr,
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Doomed {
    fn start(port: u16, node: &'static str) -> Doomed {
        Self::start_with(port, node, "", "")
    }

    /// A doomed [`member_with`].
    pub(crate) fn start_with(
        port: u16,
        node: &'static str,
        policy: &'static str,
        cluster: &'static str,
    ) -> Doomed {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (kill, kill_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let gw = rt.block_on(member_with(port, node, policy, cluster));
            addr_tx.send(gw.addr).unwrap();
            let _ = kill_rx.recv();
            rt.shutdown_background();
            // Only now: dropping it earlier would start a drain.
            drop(gw);
        });
        let addr = addr_rx
            .recv_timeout(STEP)
            .expect("the doomed member started");
        Doomed { addr, kill, thread }
    }

    pub(crate) fn kill(self) {
        let _ = self.kill.send(());
        self.thread.join().unwrap();
    }
}

/// Poll on `addr` after `after` until something comes; the first entry.
async fn next_entry(addr: std::net::SocketAddr, s: &OpenResponse, after: u64) -> Entry {
    within("the next entry", async {
        loop {
            if let Some(e) = messages(&poll(addr, "/echo", s, after).await)
                .into_iter()
                .next()
            {
                break e;
            }
        }
    })
    .await
}

/// The close frame of `e`.
fn close_of(e: Entry) -> (CloseCode, String) {
    match e.payload {
        Payload::Close(f) => (f.code, f.reason.to_string()),
        other => panic!("expected a close, got {other:?}"),
    }
}

/// Everything the process logs from the first call on: a global
/// subscriber, since the tests of this binary run on several threads and
/// tracing caches per call site whether anyone listens. Tests pick their
/// lines by what is unique to them (a port).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Logs {
        static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .init();
            logs
        })
        .clone()
    }

    /// The lines that contain every one of `parts`.
    fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(String::from)
            .collect()
    }
}

/// A session's first message, `text`, is taken on `addr` and its echo is
/// the session's first message back.
async fn first_message_echoes(addr: std::net::SocketAddr, s: &OpenResponse, text: &str) {
    assert_eq!(send_text(addr, "/echo", s, 1, text).await.status, 200);
    assert_eq!(poll_texts(addr, s, 1).await, vec![(1, text.to_string())]);
}

/// Poll on `addr` until `n` messages arrived; their numbers and texts.
async fn poll_texts(addr: std::net::SocketAddr, s: &OpenResponse, n: usize) -> Vec<(u64, String)> {
    poll_texts_after(addr, s, 0, n).await
}

/// The same, after `after`.
async fn poll_texts_after(
    addr: std::net::SocketAddr,
    s: &OpenResponse,
    after: u64,
    n: usize,
) -> Vec<(u64, String)> {
    let mut got: Vec<(u64, String)> = Vec::new();
    within("the echoes", async {
        while got.len() < n {
            let after = got.last().map_or(after, |(seq, _)| *seq);
            for e in messages(&poll(addr, "/echo", s, after).await) {
                match e.payload {
                    Payload::Text(t) => got.push((e.seq.0, t.to_string())),
                    other => panic!("expected an echo, got {other:?}"),
                }
            }
        }
    })
    .await;
    got
}

#[tokio::test]
async fn without_redis_at_start_tunnels_work_and_sessions_wait_for_it() {
    let logs = Logs::capture();
    let port = free_port();
    let server = format!("server=127.0.0.1:{port}");
    let gw = member(port, "a").await;

    // WebSocket tunnels need nothing shared.
    let (mut ws, _) = switchyard::client::connect(&format!("ws://{}/echo", gw.addr))
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        within("the echo", ws.next()).await.unwrap().unwrap(),
        Message::text("hi")
    );

    // New fallback sessions: 503 with Retry-After, and the reason logged.
    let r = request(
        gw.addr,
        Method::POST,
        "/echo?sw=open",
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    let e: ErrorBody = r.error(503);
    assert_eq!(e.error, "store_unavailable", "{}", e.detail);
    assert_eq!(r.headers["retry-after"], "1");
    let redis_url = format!("redis=redis://127.0.0.1:{port}/0");
    eventually("the log lines", || {
        !logs
            .lines_with(&["cluster member", "node_id=\"a\"", &redis_url])
            .is_empty()
            && !logs.lines_with(&["cannot reach Redis", &server]).is_empty()
            && !logs
                .lines_with(&[
                    "fallback request refused",
                    "store_unavailable",
                    "Connection refused",
                ])
                .is_empty()
    })
    .await;

    // Redis comes up: sessions work without a restart.
    let _redis = RedisServer::start_on(port).await;
    let s = within("a session once Redis is up", async {
        loop {
            let r = request(
                gw.addr,
                Method::POST,
                "/echo?sw=open",
                &[("content-type", "application/json")],
                "{}",
            )
            .await;
            if r.status == StatusCode::OK {
                break r.json::<OpenResponse>();
            }
            assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    first_message_echoes(gw.addr, &s, "back").await;
    eventually("the reconnect logged", || {
        !logs.lines_with(&["connected to Redis", &server]).is_empty()
    })
    .await;
    drop(ws);
    gw.stop().await;
}

#[tokio::test]
async fn any_instance_serves_any_request_of_a_session() {
    let redis = RedisServer::start().await;
    let a = member(redis.port, "a").await;
    let b = member(redis.port, "b").await;

    // Opened on A (A owns the backend WebSocket), used through B.
    let s = open(a.addr, "/echo", "{}").await;
    let n = 40;
    for i in 1..=n {
        let r = send_text(b.addr, "/echo", &s, i, &format!("m{i}")).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    // A send retried on the other instance is acknowledged, not delivered
    // twice.
    let r = send_text(a.addr, "/echo", &s, 3, "m3").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let want: Vec<(u64, String)> = (1..=n).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(poll_texts(b.addr, &s, n as usize).await, want);
    let next = send_text(a.addr, "/echo", &s, n + 1, "last").await;
    assert_eq!(next.status, 200);
    assert_eq!(
        poll_texts(a.addr, &s, 1)
            .await
            .first()
            .map(|(_, t)| t.clone()),
        Some("m1".to_string()),
        "a poll from the start replays the log on any instance"
    );

    // An event stream on A is replaced by a newer reader on B.
    let sse = send(a.addr, Method::GET, &q("/echo", "sse", &s, ""), &[], "").await;
    assert_eq!(sse.status(), 200);
    let mut sse = SseReader::new(sse);
    sse.until("the replayed echoes on A", |t| t.contains("data: last"))
        .await;
    let polled = messages(&poll(b.addr, "/echo", &s, n + 1).await);
    assert!(polled.is_empty(), "{polled:?}");
    sse.rest().await;
    assert!(
        sse.raw.contains(":replaced by a newer reader"),
        "{}",
        sse.raw
    );

    // Closed through B: the backend (on A) sees the close and answers it.
    let r = request(
        b.addr,
        Method::POST,
        &q("/echo", "close", &s, ""),
        &[("content-type", "application/json")],
        r#"{"code":4000,"reason":"bye"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let end = within("the close", async {
        loop {
            let m = messages(&poll(b.addr, "/echo", &s, n + 1).await);
            if let Some(e) = m.into_iter().last() {
                break e;
            }
        }
    })
    .await;
    assert_eq!(end.seq, Seq(n + 2));
    match end.payload {
        Payload::Close(f) => assert_eq!(f.code, CloseCode(4000)),
        other => panic!("expected the close, got {other:?}"),
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_owner_killed_ends_its_sessions_with_1011_seen_on_the_others() {
    let redis = RedisServer::start().await;
    let a = Doomed::start(redis.port, "doomed");
    let b = member(redis.port, "b").await;
    let s = open(a.addr, "/echo", "{}").await;
    first_message_echoes(b.addr, &s, "before").await;

    a.kill();
    // A reader on B learns it within the owner limit (2 heartbeats, 3 s at
    // least): an explicit close, never a hang.
    let end = next_entry(b.addr, &s, 1).await;
    assert_eq!(end.seq, Seq(2));
    assert_eq!(
        close_of(end),
        (CloseCode::INTERNAL_ERROR, "session owner lost".to_string())
    );
    // A new session opens on the survivor.
    let fresh = open(b.addr, "/echo", "{}").await;
    first_message_echoes(b.addr, &fresh, "after").await;
    b.stop().await;
}

#[tokio::test]
async fn a_drained_instance_closes_its_own_sessions_and_the_others_go_on() {
    let redis = RedisServer::start().await;
    let a = member(redis.port, "a").await;
    let b = member(redis.port, "b").await;
    let on_a = open(a.addr, "/echo", "{}").await;
    let on_b = open(b.addr, "/echo", "{}").await;
    a.stop().await;
    // Its own session ends with 1001, read through B.
    assert_eq!(
        close_of(next_entry(b.addr, &on_a, 0).await),
        (CloseCode::GOING_AWAY, "server shutting down".to_string())
    );
    // B's session is untouched.
    first_message_echoes(b.addr, &on_b, "still").await;
    b.stop().await;
}

#[tokio::test]
async fn redis_restarted_mid_session_ends_it_explicitly_and_new_ones_open() {
    let redis = RedisServer::start().await;
    let port = redis.port;
    let a = member(port, "a").await;
    let s = open(a.addr, "/echo", "{}").await;
    first_message_echoes(a.addr, &s, "x").await;

    // Restarted without persistence: the session's state is gone.
    drop(redis);
    let _redis = RedisServer::start_on(port).await;
    // Its requests answer 404 (503 while the gateway reconnects), which the
    // client library takes as "the session is gone": never a hang, never a
    // silent gap.
    let gone = within("the lost session's answer", async {
        loop {
            let r = poll(a.addr, "/echo", &s, 1).await;
            if r.status != StatusCode::SERVICE_UNAVAILABLE {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(gone.error(404).error, "unknown_session");
    let fresh = open(a.addr, "/echo", "{}").await;
    first_message_echoes(a.addr, &fresh, "y").await;
    a.stop().await;
}

#[tokio::test]
async fn a_reader_instance_killed_mid_stream_loses_nothing() {
    let redis = RedisServer::start().await;
    let owner = member(redis.port, "owner").await;
    let reader = Doomed::start(redis.port, "reader");
    let s = open(owner.addr, "/echo", "{}").await;
    for i in 1..=10 {
        assert_eq!(
            send_text(reader.addr, "/echo", &s, i, &format!("m{i}"))
                .await
                .status,
            200
        );
    }
    let sse = send(
        reader.addr,
        Method::GET,
        &q("/echo", "sse", &s, ""),
        &[],
        "",
    )
    .await;
    let mut sse = SseReader::new(sse);
    sse.until("m10 on the stream", |t| t.contains("data: m10\n"))
        .await;
    reader.kill();
    // The client, moved to the owner's instance, resumes after what it saw.
    for i in 11..=20 {
        assert_eq!(
            send_text(owner.addr, "/echo", &s, i, &format!("m{i}"))
                .await
                .status,
            200
        );
    }
    let want: Vec<(u64, String)> = (11..=20).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(poll_texts_after(owner.addr, &s, 10, 10).await, want);
    owner.stop().await;
}

/// The sum of the samples of `family` in a Prometheus text.
fn samples(text: &str, family: &str) -> Vec<i64> {
    text.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter(|l| l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

async fn admin_get(gw: &Running, path: &str) -> String {
    let admin = gw.admin.expect("an [admin] listener");
    let r = request(admin, Method::GET, path, &[], "").await;
    assert_eq!(r.status, 200, "{path}");
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Wait until `gw`'s `/metrics` says the cluster holds `n` sessions.
async fn cluster_count_reaches(gw: &Running, n: i64) {
    within("the cluster's session count", async {
        loop {
            let m = admin_get(gw, "/metrics").await;
            if samples(&m, "switchyard_cluster_fallback_sessions") == [n] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn every_instance_shows_its_own_sessions_and_the_clusters_count() {
    let redis = RedisServer::start().await;
    // Counted every third of lease_ttl.
    let extra = "lease_ttl = \"1s\"\n[admin]\naddress = \"127.0.0.1:0\"\n";
    let a = member_with(redis.port, "a", "", extra).await;
    let b = member_with(redis.port, "b", "", extra).await;
    open(a.addr, "/echo", "{}").await;
    open(b.addr, "/echo", "{}").await;
    open(b.addr, "/echo", "{}").await;
    for (gw, node, own) in [(&a, "a", 1), (&b, "b", 2)] {
        cluster_count_reaches(gw, 3).await;
        let m = admin_get(gw, "/metrics").await;
        let open: i64 = samples(&m, "switchyard_fallback_sessions_open")
            .iter()
            .sum();
        assert_eq!(open, own, "{node}: {m}");
        let status: serde_json::Value =
            serde_json::from_str(&admin_get(gw, "/status.json").await).expect("JSON");
        assert_eq!(status["cluster"]["node_id"], node, "{status}");
        assert_eq!(status["cluster"]["fallback_sessions"], 3, "{status}");
    }
    // B gone (its sessions drained, its count no longer refreshed): A counts
    // its own alone.
    b.stop().await;
    cluster_count_reaches(&a, 1).await;
    a.stop().await;
}

//! The proxy core over real sockets on 127.0.0.1: a test front (read the
//! head, call `proxy_h1`), our echo as a real upstream, and fake upstreams
//! that misbehave and record every byte they receive.
//!
//! With `SWITCHYARD_TEST_IO=io_uring` (CI runs them both ways) the client's
//! side of every proxied connection is on io_uring instead of epoll.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchyard::proto::HttpVersion;
use switchyard::server::AcceptConfig;
use switchyard::{ClientBuilder, CloseCode, Error, Message};
use switchyard_gateway::admission::{ConnectionGuard, ConnectionLimiter};
use switchyard_gateway::config::{
    Backend, Balance, Health, PassiveHealth, PathMatch, Policy, Route, Upstream,
};
use switchyard_gateway::io::ServerIo;
use switchyard_gateway::metrics::{Direction, Metrics, PingSide};
use switchyard_gateway::outcome::Reason;
use switchyard_gateway::proxy::{
    proxy_extended_connect, proxy_h1, ClientInfo, OutcomeKind, ProxiedConnect, ProxyContext,
    ProxyOutcome, ProxyRoute, TunnelEnd, Upstreams,
};
use switchyard_proto::handshake::accept_key;
use switchyard_proto::head::RequestParser;
use switchyard_proto::{Connection, Limits, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A WebSocket echo upstream (switchyard's own accept).
async fn echo_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut cfg = AcceptConfig::default();
                cfg.handshake.deflate = Some(Default::default());
                let Ok(mut ws) = switchyard::accept(tcp, &cfg).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_data() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A port nothing listens on.
async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

fn backend(addr: SocketAddr) -> Backend {
    Backend {
        url: format!("ws://{addr}").parse().unwrap(),
    }
}

fn group(addrs: &[SocketAddr], balance: Balance, retries: u32, max_fails: u32) -> Upstream {
    Upstream {
        name: "g".into(),
        servers: addrs.iter().copied().map(backend).collect(),
        balance,
        connect_timeout: Duration::from_secs(2),
        retries,
        health: Health {
            passive: PassiveHealth {
                max_fails,
                fail_timeout: Duration::from_secs(60),
            },
            active: None,
        },
    }
}

fn route(policy: Policy) -> Route {
    Route {
        host: None,
        path: "/".into(),
        path_match: PathMatch::Prefix,
        upstream: Some("g".into()),
        app: None,
        policy,
    }
}

struct Proxy {
    addr: SocketAddr,
    outcomes: mpsc::UnboundedReceiver<ProxyOutcome>,
    ctx: Arc<ProxyContext>,
}

impl Proxy {
    async fn outcome(&mut self) -> ProxyOutcome {
        tokio::time::timeout(Duration::from_secs(10), self.outcomes.recv())
            .await
            .expect("no outcome")
            .expect("proxy gone")
    }
}

/// The slot of a route without caps (admission is the dispatcher's).
fn no_cap() -> ConnectionGuard {
    ConnectionLimiter::new()
        .try_acquire("r", "127.0.0.1".parse().unwrap(), &Policy::default())
        .unwrap()
}

/// The test front: accept, read the head, call `proxy_h1`.
async fn proxy(upstream: Upstream, route: Route) -> Proxy {
    let (tx, rx) = watch::channel(false);
    std::mem::forget(tx);
    proxy_with(
        upstream,
        route,
        ClientBuilder::new().tls_config().unwrap(),
        rx,
    )
    .await
}

/// Same, with the TLS config for wss backends and a shutdown signal.
async fn proxy_with(
    upstream: Upstream,
    route: Route,
    tls: Arc<rustls::ClientConfig>,
    shutdown: watch::Receiver<bool>,
) -> Proxy {
    let metrics = Arc::new(Metrics::new());
    let ups = Upstreams::from_config_with_tls(&[upstream], tls, Some(metrics.clone()));
    let limits = Limits::default().close_timeout(Duration::from_secs(1));
    let ctx = Arc::new(ProxyContext::new(Arc::new(ups), metrics, limits));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let route = Arc::new(route);
    let c = ctx.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, peer)) = l.accept().await else {
                return;
            };
            let (ctx, route, tx) = (c.clone(), route.clone(), tx.clone());
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let Ok((req, leftover)) =
                    switchyard::read_request_head(&mut tcp, &ctx.limits).await
                else {
                    return;
                };
                let info = ClientInfo {
                    addr: peer,
                    tls: false,
                };
                let route = ProxyRoute {
                    config: &route,
                    label: "r",
                    ctx: &ctx,
                };
                let slot = no_cap();
                let client = client_io(tcp);
                let out = proxy_h1(client, req, leftover, info, route, slot, async move {
                    let _ = shutdown.wait_for(|v| *v).await;
                })
                .await;
                let _ = tx.send(out);
            });
        }
    });
    Proxy {
        addr,
        outcomes: rx,
        ctx,
    }
}

/// The test front's side of a proxied connection: on epoll, or on this
/// thread's io_uring with `SWITCHYARD_TEST_IO=io_uring`.
fn client_io(tcp: TcpStream) -> ServerIo {
    match std::env::var("SWITCHYARD_TEST_IO").as_deref() {
        #[cfg(target_os = "linux")]
        Ok("io_uring") => {
            let std = tcp.into_std().unwrap();
            match switchyard_gateway::io::uring::UringStream::new(std) {
                Ok(u) => ServerIo::Uring(u),
                Err(_) => panic!("SWITCHYARD_TEST_IO=io_uring: this thread cannot use io_uring"),
            }
        }
        Ok("epoll") | Err(_) => ServerIo::Plain(tcp),
        Ok(other) => panic!("SWITCHYARD_TEST_IO={other}: expected epoll or io_uring"),
    }
}

/// A fake upstream: records every byte of every connection, answers each
/// request head with `answer(head)`, keeps reading until EOF.
#[derive(Clone, Default)]
struct Recorder {
    bytes: Arc<Mutex<Vec<u8>>>,
    conns: Arc<Mutex<usize>>,
    closed: Arc<Mutex<usize>>,
}

impl Recorder {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
    async fn wait_closed(&self, n: usize) {
        let start = Instant::now();
        while *self.closed.lock().unwrap() < n {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "upstream connection not closed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn fake_upstream(
    answer: impl Fn(&http::Request<()>) -> Vec<u8> + Send + Sync + 'static,
) -> (SocketAddr, Recorder) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let rec = Recorder::default();
    let r = rec.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            let (r, answer) = (r.clone(), answer.clone());
            *r.conns.lock().unwrap() += 1;
            tokio::spawn(async move {
                let mut parser = RequestParser::new(&Limits::default());
                let mut buf = vec![0u8; 4096];
                let mut answered = false;
                loop {
                    let n = match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    r.bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                    if !answered {
                        if let Ok(Some((req, _))) = parser.feed(&buf[..n]) {
                            answered = true;
                            let _ = tcp.write_all(&answer(&req)).await;
                        }
                    }
                }
                *r.closed.lock().unwrap() += 1;
            });
        }
    });
    (addr, rec)
}

fn valid_101(req: &http::Request<()>) -> Vec<u8> {
    let key = req.headers()["sec-websocket-key"].to_str().unwrap();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key.as_bytes())
    )
    .into_bytes()
}

fn upgrade_request(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: app.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// Send raw bytes, read everything until the proxy closes.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("proxy did not close")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn client_frame(msg: Message) -> Vec<u8> {
    let mut c = Connection::new(Role::Client, Limits::default());
    c.send(msg).unwrap();
    c.output().to_vec()
}

fn frame_policy() -> Policy {
    Policy {
        max_message_size: Some(1000),
        ..Policy::default()
    }
}

// ---------------------------------------------------------------------------
// Real upstream
// ---------------------------------------------------------------------------

#[tokio::test]
async fn echo_through_transparent_tunnel() {
    let echo = echo_upstream().await;
    let mut p = proxy(
        group(&[echo], Balance::RoundRobin, 0, 3),
        route(Policy::default()),
    )
    .await;
    let (mut ws, resp) = ClientBuilder::new()
        .no_deflate()
        .connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("hello {i}"))
        );
    }
    ws.send(Message::binary(vec![7u8; 200_000])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![7u8; 200_000])
    );
    ws.close(CloseCode::NORMAL, "bye").await.unwrap();
    drop(ws);
    let out = p.outcome().await;
    assert_eq!(out.reason.label(), "switched");
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::Finished);
    assert!(report.bytes_to_upstream > 200_000, "{report:?}");
    assert!(p.ctx.metrics.bytes("r", Direction::UpstreamToClient) > 200_000);
    assert_eq!(p.ctx.metrics.upgrade_attempts("switched", "switched"), 1);
    let text = p.ctx.metrics.render();
    assert!(
        text.contains("switchyard_tunnel_duration_seconds_count{route=\"r\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn echo_through_frame_aware_tunnel_with_deflate() {
    let echo = echo_upstream().await;
    let mut p = proxy(
        group(&[echo], Balance::RoundRobin, 0, 3),
        route(frame_policy()),
    )
    .await;
    // The default client offers permessage-deflate; the echo accepts it.
    let (mut ws, resp) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    assert!(
        resp.headers().contains_key("sec-websocket-extensions"),
        "{resp:?}"
    );
    for i in 0..10 {
        let text = format!("compressible {i} ").repeat(20);
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.close(CloseCode::NORMAL, "bye").await.unwrap();
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::ClientClosed(Some(1000)));
    assert_eq!(report.messages_to_upstream, 10);
    assert_eq!(report.messages_to_client, 10);
    assert_eq!(p.ctx.metrics.messages("r", Direction::ClientToUpstream), 10);
}

/// Messages and a close frame in one write, before any echo came back:
/// every echo reaches the client, in order, before the close reply, which
/// carries the client's code (nothing in flight is dropped by the close).
async fn in_flight_echoes_arrive_before_the_close_reply(policy: Policy) -> TunnelEnd {
    let echo = echo_upstream().await;
    let mut p = proxy(group(&[echo], Balance::RoundRobin, 0, 3), route(policy)).await;
    let mut bytes = upgrade_request("").into_bytes();
    const N: usize = 200;
    for i in 0..N {
        bytes.extend(client_frame(Message::text(format!("message {i}"))));
    }
    bytes.extend(client_frame(Message::Close(Some(
        switchyard::CloseFrame::new(CloseCode(4000), "done"),
    ))));
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("proxy did not close")
        .unwrap();
    let head = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(out.starts_with(b"HTTP/1.1 101 "));
    drop(s);
    let mut c = Connection::new(Role::Client, Limits::default());
    c.receive(&out[head..]);
    let mut got = Vec::new();
    while let Some(m) = c.poll_message().unwrap() {
        got.push(m);
    }
    let mut want: Vec<Message> = (0..N)
        .map(|i| Message::text(format!("message {i}")))
        .collect();
    want.push(Message::Close(Some(switchyard::CloseFrame::new(
        CloseCode(4000),
        "",
    ))));
    assert_eq!(got, want);
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    report.end
}

#[tokio::test]
async fn frame_aware_tunnel_delivers_in_flight_echoes_before_the_close_reply() {
    let end = in_flight_echoes_arrive_before_the_close_reply(frame_policy()).await;
    assert_eq!(end, TunnelEnd::ClientClosed(Some(4000)));
}

#[tokio::test]
async fn transparent_tunnel_delivers_in_flight_echoes_before_the_close_reply() {
    let end = in_flight_echoes_arrive_before_the_close_reply(Policy::default()).await;
    assert_eq!(end, TunnelEnd::Finished);
}

#[tokio::test]
async fn frame_aware_message_limit_closes_with_1009() {
    let echo = echo_upstream().await;
    let mut p = proxy(
        group(&[echo], Balance::RoundRobin, 0, 3),
        route(frame_policy()),
    )
    .await;
    let (mut ws, _) = ClientBuilder::new()
        .no_deflate()
        .connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    ws.send(Message::binary(vec![1u8; 999])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().len(), 999);
    ws.send(Message::binary(vec![1u8; 1001])).await.unwrap();
    let mut code = None;
    while let Some(m) = ws.next().await {
        if let Ok(Message::Close(f)) = m {
            code = f.map(|f| f.code);
        }
    }
    assert_eq!(code, Some(CloseCode::MESSAGE_TOO_BIG));
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::ClientViolation(1009));
}

#[tokio::test]
async fn client_bytes_after_the_head_reach_the_upstream_after_the_101() {
    let echo = echo_upstream().await;
    let p = proxy(
        group(&[echo], Balance::RoundRobin, 0, 3),
        route(Policy::default()),
    )
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut bytes = upgrade_request("").into_bytes();
    bytes.extend(client_frame(Message::text("early")));
    s.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.windows(5).any(|w| w == b"early") {
        assert!(
            Instant::now() < deadline,
            "no echo: {:?}",
            String::from_utf8_lossy(&got)
        );
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert!(
        text.contains(&format!(
            "sec-websocket-accept: {}",
            accept_key(KEY.as_bytes())
        )),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// Smuggling: a pipelined request must never reach the upstream
// ---------------------------------------------------------------------------

/// Returns what the client received.
async fn smuggling_case(answer: &'static str, expect_status: &str, expect_reason: &str) -> String {
    let (up, rec) = fake_upstream(move |_| answer.as_bytes().to_vec()).await;
    let mut p = proxy(
        group(&[up], Balance::RoundRobin, 0, 3),
        route(Policy::default()),
    )
    .await;
    let mut bytes = upgrade_request("").into_bytes();
    bytes.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: internal\r\n\r\n");
    let resp = raw_exchange(p.addr, &bytes).await;
    assert!(resp.starts_with(expect_status), "{answer:?} -> {resp}");
    let out = p.outcome().await;
    assert_eq!(out.reason.label(), expect_reason, "{out:?}");
    rec.wait_closed(1).await;
    let seen = rec.text();
    assert_eq!(seen.matches("GET ").count(), 1, "{seen}");
    assert!(seen.starts_with("GET /ws HTTP/1.1\r\n"), "{seen}");
    assert!(
        !seen.contains("smuggled"),
        "the pipelined request reached the upstream: {seen}"
    );
    assert_eq!(
        *rec.conns.lock().unwrap(),
        1,
        "upstream connection reused or retried"
    );
    resp
}

#[tokio::test]
async fn smuggling_426_is_relayed() {
    let resp = smuggling_case(
        "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\nUpgrade: foo\r\n\r\nnope",
        "HTTP/1.1 426 ",
        "upstream_status",
    )
    .await;
    // RFC 9110 15.5.22: the relayed 426 still says what to upgrade to.
    let head = resp.to_ascii_lowercase();
    assert!(head.contains("\r\nupgrade: foo\r\n"), "{resp}");
    assert!(
        head.contains("\r\nconnection: upgrade, close\r\n"),
        "{resp}"
    );
    assert!(resp.ends_with("\r\n\r\nnope"), "{resp}");
}

#[tokio::test]
async fn relayed_426_never_advertises_h2c() {
    let resp = smuggling_case(
        "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nUpgrade: h2c, websocket\r\n\
         Upgrade: H2C/2\r\nConnection: upgrade\r\n\r\n",
        "HTTP/1.1 426 ",
        "upstream_status",
    )
    .await;
    let head = resp.to_ascii_lowercase();
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{resp}");
    assert!(
        head.contains("\r\nconnection: upgrade, close\r\n"),
        "{resp}"
    );
    assert!(!head.contains("h2c"), "{resp}");
    // Nothing left after h2c: no Upgrade at all, Connection: close alone.
    let resp = smuggling_case(
        "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nUpgrade: h2c\r\n\r\n",
        "HTTP/1.1 426 ",
        "upstream_status",
    )
    .await;
    let head = resp.to_ascii_lowercase();
    assert!(!head.contains("upgrade:"), "{resp}");
    assert!(!head.contains("h2c"), "{resp}");
    assert!(head.contains("\r\nconnection: close\r\n"), "{resp}");
}

#[tokio::test]
async fn smuggling_200_is_relayed() {
    smuggling_case(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        "HTTP/1.1 200 ",
        "upstream_status",
    )
    .await;
}

#[tokio::test]
async fn smuggling_101_without_accept_is_502() {
    smuggling_case(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "HTTP/1.1 502 ",
        "no_accept",
    )
    .await;
}

#[tokio::test]
async fn smuggling_101_with_wrong_token_is_502() {
    smuggling_case(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        "HTTP/1.1 502 ",
        "wrong_token",
    )
    .await;
}

#[tokio::test]
async fn smuggling_101_with_wrong_accept_is_502() {
    smuggling_case(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        "HTTP/1.1 502 ",
        "bad_accept",
    )
    .await;
}

#[tokio::test]
async fn smuggling_garbage_is_502() {
    smuggling_case(
        "SSH-2.0-OpenSSH_9.2\r\n\r\n",
        "HTTP/1.1 502 ",
        "upstream_garbage",
    )
    .await;
}

#[tokio::test]
async fn h2c_upgrade_is_stripped_and_an_unrequested_101_refused() {
    let (up, rec) = fake_upstream(|_| {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".to_vec()
    })
    .await;
    let mut p = proxy(
        group(&[up], Balance::RoundRobin, 0, 3),
        route(Policy::default()),
    )
    .await;
    let req = "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let resp = raw_exchange(p.addr, req.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 502 "), "{resp}");
    assert_eq!(p.outcome().await.reason.label(), "unrequested_101");
    rec.wait_closed(1).await;
    let seen = rec.text().to_ascii_lowercase();
    assert!(!seen.contains("upgrade:"), "{seen}");
    assert!(!seen.contains("http2-settings"), "{seen}");
    assert!(!seen.contains("pri * http/2.0"), "{seen}");
}

// ---------------------------------------------------------------------------
// Forwarding rules seen by the upstream
// ---------------------------------------------------------------------------

#[tokio::test]
async fn upstream_sees_no_hop_by_hop_and_forwarding_headers() {
    let (up, rec) = fake_upstream(valid_101).await;
    let mut p = proxy(
        group(&[up], Balance::RoundRobin, 0, 3),
        route(Policy::default()),
    )
    .await;
    let extra = "Keep-Alive: timeout=5\r\nConnection: X-Private\r\nX-Private: secret\r\n\
                 Proxy-Authorization: Basic Zm9vOmJhcg==\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.9\r\n\
                 X-Custom: kept\r\n";
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(upgrade_request(extra).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let resp = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
    drop(s);
    let _ = p.outcome().await;
    let seen = rec.text().to_ascii_lowercase();
    let head = format!("{}\r\n", seen.split("\r\n\r\n").next().unwrap());
    for gone in ["keep-alive", "x-private", "proxy-authorization", "te:"] {
        assert!(!head.contains(gone), "{gone} reached the upstream: {head}");
    }
    assert!(head.contains("\r\nhost: app.example\r\n"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nx-custom: kept\r\n"), "{head}");
    assert!(
        head.contains("\r\nx-forwarded-for: 203.0.113.9, 127.0.0.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
    assert!(
        head.contains("\r\nforwarded: for=127.0.0.1;host=app.example;proto=http\r\n"),
        "{head}"
    );
    assert!(
        head.contains(&format!(
            "\r\nsec-websocket-key: {}\r\n",
            KEY.to_ascii_lowercase()
        )),
        "{head}"
    );
}

// ---------------------------------------------------------------------------
// Upstream failures mid-tunnel, heartbeat
// ---------------------------------------------------------------------------

/// An upstream that completes the handshake and dies on the first message.
async fn dying_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = switchyard::accept(tcp, &AcceptConfig::default()).await else {
                    return;
                };
                let _ = ws.next().await;
                drop(ws); // TCP closed without a close frame
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_killed_mid_tunnel_gives_the_client_1014_within_a_second() {
    let up = dying_upstream().await;
    let mut p = proxy(
        group(&[up], Balance::RoundRobin, 0, 3),
        route(frame_policy()),
    )
    .await;
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    ws.send(Message::text("die")).await.unwrap();
    let start = Instant::now();
    let msg = tokio::time::timeout(Duration::from_secs(1), ws.next())
        .await
        .expect("no close within a second");
    match msg {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::BAD_GATEWAY),
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(1));
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::UpstreamGone);
}

#[tokio::test]
async fn upstream_killed_mid_tunnel_closes_the_transparent_client() {
    let up = dying_upstream().await;
    let p = proxy(
        group(&[up], Balance::RoundRobin, 0, 3),
        route(Policy::default()),
    )
    .await;
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    ws.send(Message::text("die")).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(1), ws.next())
        .await
        .expect("not closed within a second");
    // TCP closed without a close frame: 1006 (abnormal) or the stream ends.
    match r {
        None => {}
        Some(Err(e)) => assert_eq!(e.close_code(), Some(CloseCode::ABNORMAL), "{e}"),
        Some(Ok(m)) => panic!("{m:?}"),
    }
}

/// An upstream that reports the close frame it receives.
async fn reporting_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Option<u16>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = switchyard::accept(tcp, &AcceptConfig::default()).await else {
                    return;
                };
                while let Some(m) = ws.next().await {
                    match m {
                        Ok(Message::Close(f)) => {
                            let _ = tx.send(f.map(|f| f.code.0));
                        }
                        Ok(_) => {}
                        Err(_) => {
                            let _ = tx.send(None);
                            break;
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn silent_client_is_found_by_the_heartbeat_and_the_upstream_closed() {
    let (up, mut closes) = reporting_upstream().await;
    let policy = Policy {
        ping_interval: Some(Duration::from_millis(200)),
        pong_timeout: Duration::from_millis(300),
        ..Policy::default()
    };
    let mut p = proxy(group(&[up], Balance::RoundRobin, 0, 3), route(policy)).await;
    // A raw client: handshake, then it never reads or answers (as if stopped).
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(upgrade_request("").as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101 "));
    let start = Instant::now();
    let code = tokio::time::timeout(Duration::from_secs(3), closes.recv())
        .await
        .expect("upstream not closed")
        .unwrap();
    let took = start.elapsed();
    assert_eq!(code, Some(1001));
    assert!(
        took >= Duration::from_millis(450),
        "closed too early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "closed too late: {took:?}");
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::ClientPongTimeout);
    drop(s);
}

#[tokio::test]
async fn client_close_code_and_reason_reach_the_upstream() {
    let (up, mut closes) = reporting_upstream().await;
    let mut p = proxy(
        group(&[up], Balance::RoundRobin, 0, 3),
        route(frame_policy()),
    )
    .await;
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    ws.close(CloseCode(4001), "custom").await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(2), closes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(4001));
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::ClientClosed(Some(4001)));
}

#[tokio::test]
async fn idle_tunnel_is_closed() {
    let echo = echo_upstream().await;
    let policy = Policy {
        idle_timeout: Duration::from_millis(300),
        ..Policy::default()
    };
    let mut p = proxy(group(&[echo], Balance::RoundRobin, 0, 3), route(policy)).await;
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    let _ = ws.next().await;
    let start = Instant::now();
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::Idle);
    assert!(start.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------
// Balancing, retries, passive health
// ---------------------------------------------------------------------------

#[tokio::test]
async fn least_connections_avoids_the_busy_backend() {
    let a = echo_upstream().await;
    let b = echo_upstream().await;
    let mut p = proxy(
        group(&[a, b], Balance::LeastConnections, 0, 3),
        route(Policy::default()),
    )
    .await;
    let url = format!("ws://{}/ws", p.addr);
    let (held, _) = switchyard::connect(&url).await.unwrap();
    // Wait until the first tunnel holds its backend.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let busy = {
        let g = p.ctx.upstreams.get("g").unwrap();
        let busy: Vec<_> = g.backends().iter().filter(|s| s.active() == 1).collect();
        assert_eq!(busy.len(), 1);
        busy[0].backend.url.to_string()
    };
    for _ in 0..4 {
        let (mut ws, _) = switchyard::connect(&url).await.unwrap();
        ws.close(CloseCode::NORMAL, "").await.unwrap();
        drop(ws);
        let out = p.outcome().await;
        assert_ne!(out.backend.as_deref(), Some(busy.as_str()), "{out:?}");
    }
    drop(held);
}

#[tokio::test]
async fn refused_connection_retries_on_the_next_backend() {
    let dead = dead_port().await;
    let live = echo_upstream().await;
    let mut p = proxy(
        group(&[dead, live], Balance::RoundRobin, 1, 3),
        route(Policy::default()),
    )
    .await;
    // Round robin starts at the dead backend; the retry reaches the live one.
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("x"));
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    drop(ws);
    let out = p.outcome().await;
    assert_eq!(out.backend, Some(format!("ws://{live}/")));
}

#[tokio::test]
async fn passive_health_skips_a_dead_backend() {
    let dead = dead_port().await;
    let live = echo_upstream().await;
    // No retries: a request sent to the dead backend fails with 502.
    let mut p = proxy(
        group(&[dead, live], Balance::RoundRobin, 0, 1),
        route(Policy::default()),
    )
    .await;
    let url = format!("ws://{}/ws", p.addr);
    let mut failures = 0;
    for _ in 0..6 {
        match switchyard::connect(&url).await {
            Ok((mut ws, _)) => {
                ws.close(CloseCode::NORMAL, "").await.unwrap();
            }
            Err(Error::UpgradeRefused { status, .. }) => {
                assert_eq!(status, 502);
                failures += 1;
            }
            Err(e) => panic!("{e}"),
        }
        let _ = p.outcome().await;
    }
    assert_eq!(
        failures, 1,
        "the dead backend was tried again after being marked down"
    );
    let g = p.ctx.upstreams.get("g").unwrap();
    assert!(!g.backends()[0].is_healthy());
    let text = p.ctx.metrics.render();
    assert!(
        text.contains(&format!(
            "switchyard_upstream_healthy{{upstream=\"g\",backend=\"ws://{dead}/\"}} 0"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn all_backends_down_is_502() {
    let dead = dead_port().await;
    let mut p = proxy(
        group(&[dead], Balance::RoundRobin, 2, 3),
        route(Policy::default()),
    )
    .await;
    let resp = raw_exchange(p.addr, upgrade_request("").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 502 "), "{resp}");
    let out = p.outcome().await;
    assert_eq!(out.reason.label(), "connect_failed");
    assert_eq!(
        p.ctx
            .metrics
            .upgrade_attempts("bad_gateway", "connect_failed"),
        1
    );
}

#[tokio::test]
async fn active_health_check_marks_backends() {
    use switchyard_gateway::config::ActiveHealth;
    use switchyard_gateway::proxy::Group;
    let live = echo_upstream().await;
    let dead = dead_port().await;
    let (plain_http, _) =
        fake_upstream(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()).await;
    let mut u = group(&[live, dead, plain_http], Balance::RoundRobin, 0, 3);
    u.health.active = Some(ActiveHealth {
        interval: Duration::from_millis(100),
        timeout: Duration::from_secs(1),
        path: "/".into(),
    });
    let g = Group::with_tls(u, ClientBuilder::new().tls_config().unwrap());
    let check = g.config.health.active.clone().unwrap();
    assert_eq!(g.check_all(&check).await, 1);
    let healthy: Vec<bool> = g.backends().iter().map(|b| b.is_healthy()).collect();
    assert_eq!(healthy, vec![true, false, false]);
    // TCP-only checks accept the plain HTTP server too.
    let tcp = ActiveHealth {
        path: "tcp".into(),
        ..check
    };
    assert_eq!(g.check_all(&tcp).await, 2);
}

// ---------------------------------------------------------------------------
// wss backends, half-close, drain, heartbeat round trips, Host
// ---------------------------------------------------------------------------

#[tokio::test]
async fn wss_backend_through_rustls() {
    use switchyard_gateway::tls;
    let (certs, key) = tls::self_signed(&["localhost"]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs[0].clone()).unwrap();
    let server_cfg = tls::server_config(certs, key, &[b"http/1.1"]).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = switchyard::accept(tls, &AcceptConfig::default()).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_data() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let client_tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let mut up = group(&[], Balance::RoundRobin, 0, 3);
    up.servers = vec![Backend {
        url: format!("wss://localhost:{port}").parse().unwrap(),
    }];
    let (_tx, rx) = watch::channel(false);
    let mut p = proxy_with(up, route(Policy::default()), client_tls, rx).await;
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    drop(ws);
    assert_eq!(p.outcome().await.reason.label(), "switched");

    // Without the CA, the TLS handshake fails and the client gets 502.
    let (_tx, rx) = watch::channel(false);
    let empty = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth(),
    );
    let mut up = group(&[], Balance::RoundRobin, 0, 3);
    up.servers = vec![Backend {
        url: format!("wss://localhost:{port}").parse().unwrap(),
    }];
    let mut p = proxy_with(up, route(Policy::default()), empty, rx).await;
    let resp = raw_exchange(p.addr, upgrade_request("").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 502 "), "{resp}");
    assert_eq!(p.outcome().await.reason.label(), "connect_failed");
}

#[tokio::test]
async fn transparent_tunnel_propagates_half_close() {
    // The upstream answers 101, sends "bye", shuts its write side, and keeps
    // reading: the client must see "bye" then EOF, and can still send.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (mut tcp, _) = l.accept().await.unwrap();
        let mut parser = RequestParser::new(&Limits::default());
        let mut buf = vec![0u8; 4096];
        let req = loop {
            let n = tcp.read(&mut buf).await.unwrap();
            if let Some((req, _)) = parser.feed(&buf[..n]).unwrap() {
                break req;
            }
        };
        tcp.write_all(&valid_101(&req)).await.unwrap();
        tcp.write_all(b"bye").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tcp.read_to_end(&mut rest).await.unwrap();
        let _ = got_tx.send(rest);
    });
    let policy = Policy {
        tunnel: switchyard_gateway::config::TunnelSetting::Transparent,
        ..Policy::default()
    };
    let mut p = proxy(group(&[up], Balance::RoundRobin, 0, 3), route(policy)).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(upgrade_request("").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got))
        .await
        .expect("no EOF from the half-closed upstream")
        .unwrap();
    assert!(
        got.ends_with(b"\r\n\r\nbye"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    s.write_all(b"still talking").await.unwrap();
    s.shutdown().await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), got_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, b"still talking");
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::Finished);
    assert_eq!(report.bytes_to_upstream, 13);
}

#[tokio::test]
async fn shutdown_sends_1001_to_both_sides() {
    let (up, mut closes) = reporting_upstream().await;
    let (tx, rx) = watch::channel(false);
    let mut p = proxy_with(
        group(&[up], Balance::RoundRobin, 0, 3),
        route(frame_policy()),
        ClientBuilder::new().tls_config().unwrap(),
        rx,
    )
    .await;
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    tx.send(true).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .unwrap();
    match msg {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(f.code, CloseCode::GOING_AWAY);
            assert_eq!(f.reason.as_str(), "server shutting down");
        }
        other => panic!("{other:?}"),
    }
    let code = tokio::time::timeout(Duration::from_secs(2), closes.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(1001));
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::Shutdown);
}

#[tokio::test]
async fn heartbeat_round_trips_are_measured() {
    let echo = echo_upstream().await;
    let policy = Policy {
        ping_interval: Some(Duration::from_millis(100)),
        pong_timeout: Duration::from_secs(2),
        ..Policy::default()
    };
    let mut p = proxy(group(&[echo], Balance::RoundRobin, 0, 3), route(policy)).await;
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    // Keep reading (which answers the pings) for a while.
    let mut pings = 0;
    let _ = tokio::time::timeout(Duration::from_millis(450), async {
        while let Some(Ok(m)) = ws.next().await {
            pings += usize::from(matches!(m, Message::Ping(_)));
        }
    })
    .await;
    assert!(pings >= 2, "{pings} pings");
    ws.send(Message::text("still here")).await.unwrap();
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Ping(_) => continue,
            m => break assert_eq!(m, Message::text("still here")),
        }
    }
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    drop(ws);
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::ClientClosed(Some(1000)));
    assert!(
        p.ctx.metrics.ping_rtt_count("r", PingSide::Client) >= 2,
        "client side pinged and answered"
    );
    assert!(
        p.ctx.metrics.ping_rtt_count("r", PingSide::Upstream) >= 2,
        "upstream side pinged and answered"
    );
    let text = p.ctx.metrics.render();
    assert!(
        text.contains(
            "switchyard_ping_rtt_seconds_bucket{route=\"r\",side=\"client\",le=\"0.05\"}"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn host_can_be_replaced_by_the_backend_authority() {
    let (up, rec) = fake_upstream(valid_101).await;
    let policy = Policy {
        preserve_host: false,
        ..Policy::default()
    };
    let mut p = proxy(group(&[up], Balance::RoundRobin, 0, 3), route(policy)).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(upgrade_request("").as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101 "));
    drop(s);
    let _ = p.outcome().await;
    let seen = rec.text().to_ascii_lowercase();
    assert!(
        seen.contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", up.port())),
        "{seen}"
    );
    assert!(
        seen.contains("\r\nx-forwarded-host: app.example\r\n"),
        "{seen}"
    );
}

// ---------------------------------------------------------------------------
// HTTP/2 / HTTP/3 extended CONNECT -> HTTP/1.1 upstream
// ---------------------------------------------------------------------------

type Captured = Arc<Mutex<Option<http::Response<()>>>>;

/// Run `proxy_extended_connect` with an in-memory stream standing in for
/// the h2 stream; returns the client's end, the response given to
/// `respond`, and the outcome task.
async fn extended_connect(
    p: &Proxy,
    route: Route,
    protocol: &'static str,
) -> (
    tokio::io::DuplexStream,
    Captured,
    tokio::task::JoinHandle<ProxyOutcome>,
) {
    let (client_end, proxy_end) = tokio::io::duplex(1 << 16);
    let captured: Captured = Arc::default();
    let cap = captured.clone();
    let ctx = p.ctx.clone();
    let req = http::Request::builder()
        .method("CONNECT")
        .uri("https://chat.example/chat?room=1")
        .header("sec-websocket-version", "13")
        .header("origin", "https://chat.example")
        .body(())
        .unwrap();
    let task = tokio::spawn(async move {
        let request = ProxiedConnect {
            head: req,
            connect_protocol: protocol.into(),
            client: ClientInfo {
                addr: "127.0.0.1:40000".parse().unwrap(),
                tls: true,
            },
            protocol: HttpVersion::Http2,
        };
        let route = ProxyRoute {
            config: &route,
            label: "r",
            ctx: &ctx,
        };
        proxy_extended_connect(
            request,
            route,
            no_cap(),
            move |resp| async move {
                *cap.lock().unwrap() = Some(resp);
                Ok(proxy_end)
            },
            std::future::pending(),
        )
        .await
    });
    (client_end, captured, task)
}

#[tokio::test]
async fn extended_connect_reaches_an_h1_echo_with_a_fresh_key() {
    let echo = echo_upstream().await;
    let p = proxy(
        group(&[echo], Balance::RoundRobin, 0, 3),
        route(Policy::default()),
    )
    .await;
    let (client_end, captured, task) =
        extended_connect(&p, route(Policy::default()), "websocket").await;
    // The client side of the h2 stream speaks WebSocket frames directly.
    let mut ws = switchyard::WebSocket::from_raw(
        client_end,
        Connection::new(Role::Client, Limits::default()),
        &[],
    );
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over h2"));
    let resp = captured.lock().unwrap().clone().unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key("sec-websocket-accept"));
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    drop(ws);
    let out = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.reason, Reason::Switched, "{out:?}");
    assert_eq!(p.ctx.metrics.upgrade_attempts("switched", "switched"), 1);
}

#[tokio::test]
async fn extended_connect_sends_a_real_h1_upgrade_and_verifies_the_accept() {
    let (up, rec) = fake_upstream(valid_101).await;
    let p = proxy(
        group(&[up], Balance::RoundRobin, 0, 3),
        route(Policy::default()),
    )
    .await;
    let (client_end, captured, task) =
        extended_connect(&p, route(Policy::default()), "websocket").await;
    // Wait for the 200, then end the client stream.
    let start = Instant::now();
    while captured.lock().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(captured.lock().unwrap().as_ref().unwrap().status(), 200);
    drop(client_end);
    let _ = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap();
    let seen = rec.text().to_ascii_lowercase();
    assert!(seen.starts_with("get /chat?room=1 http/1.1\r\n"), "{seen}");
    assert!(seen.contains("\r\nhost: chat.example\r\n"), "{seen}");
    assert!(seen.contains("\r\nupgrade: websocket\r\n"), "{seen}");
    assert!(seen.contains("\r\nconnection: upgrade\r\n"), "{seen}");
    assert!(seen.contains("\r\nsec-websocket-key: "), "{seen}");
    assert!(seen.contains("\r\nx-forwarded-proto: https\r\n"), "{seen}");

    // An upstream whose Accept does not match our fresh key: 502 to the h2 client.
    let (bad, _) = fake_upstream(|_| {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec()
    })
    .await;
    let p = proxy(
        group(&[bad], Balance::RoundRobin, 0, 3),
        route(Policy::default()),
    )
    .await;
    let (_client_end, captured, task) =
        extended_connect(&p, route(Policy::default()), "websocket").await;
    let out = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.reason.label(), "bad_accept");
    assert_eq!(captured.lock().unwrap().as_ref().unwrap().status(), 502);
}

#[tokio::test]
async fn extended_connect_of_another_protocol_is_400() {
    let echo = echo_upstream().await;
    let p = proxy(
        group(&[echo], Balance::RoundRobin, 0, 3),
        route(Policy::default()),
    )
    .await;
    let (_c, captured, task) = extended_connect(&p, route(Policy::default()), "h2c").await;
    let out = task.await.unwrap();
    assert_eq!(out.reason, Reason::UnsupportedProtocol);
    assert_eq!(captured.lock().unwrap().as_ref().unwrap().status(), 400);
}

#[tokio::test]
async fn upstream_close_code_and_reason_reach_the_client() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut ws = switchyard::accept(tcp, &AcceptConfig::default())
            .await
            .unwrap();
        let _ = ws.next().await;
        let _ = ws.close(CloseCode(4002), "room closed").await;
    });
    let mut p = proxy(
        group(&[up], Balance::RoundRobin, 0, 3),
        route(frame_policy()),
    )
    .await;
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(f.code, CloseCode(4002));
            assert_eq!(f.reason.as_str(), "room closed");
        }
        other => panic!("{other:?}"),
    }
    drop(ws);
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::UpstreamClosed(Some(4002)));
}

#[tokio::test]
async fn silent_upstream_gives_the_client_1014() {
    // Completes the handshake, then reads but never answers pings.
    let (up, _rec) = fake_upstream(valid_101).await;
    let policy = Policy {
        ping_interval: Some(Duration::from_millis(150)),
        pong_timeout: Duration::from_millis(200),
        ..Policy::default()
    };
    let mut p = proxy(group(&[up], Balance::RoundRobin, 0, 3), route(policy)).await;
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/ws", p.addr))
        .await
        .unwrap();
    let code = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(m) = ws.next().await {
            if let Ok(Message::Close(f)) = m {
                return f.map(|f| f.code);
            }
        }
        None
    })
    .await
    .expect("client not closed");
    assert_eq!(code, Some(CloseCode::BAD_GATEWAY));
    let out = p.outcome().await;
    let OutcomeKind::Tunneled(report) = out.kind else {
        panic!("{out:?}")
    };
    assert_eq!(report.end, TunnelEnd::UpstreamPongTimeout);
}

//! Fallback sessions served by the real gateway (`Server`): the dispatcher's
//! `Session` decision on HTTP/1.1 and HTTP/2 (SSE multiplexed with the
//! POSTs on one connection), the route policy on opens, `fallback = []`,
//! the body limit through the front, the browser client's path, drain.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use switchyard::fallback::sse::SseParser;
use switchyard::fallback::wire::Payload;
use switchyard::fallback::{FallbackBuilder, Transport};
use switchyard::{CloseCode, Message};
use switchyard_gateway::config::Config;
use switchyard_gateway::metrics::Direction;
use switchyard_gateway::{Gateway, Server};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::harness::*;

/// A gateway `Server` on 127.0.0.1 port 0, stopped (drained) by `stop`.
pub struct Running {
    pub addr: SocketAddr,
    /// The admin listener, when `routes` has an `[admin]` table.
    pub admin: Option<SocketAddr>,
    pub gateway: Arc<Gateway>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(routes: &str) -> Running {
        let toml = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"h1\", \"h2\"]\n{routes}"
        );
        let cfg = Config::from_toml_str(&toml, "gw.toml").unwrap();
        let gateway = Gateway::new(cfg, None).unwrap();
        let server = Server::bind(gateway.clone()).await.unwrap();
        let addr = server.addresses()[0].tcp;
        let admin = server.admin_addr();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            admin,
            gateway,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        within("the drain", self.task).await.unwrap();
    }
}

const ECHO: &str =
    "[[route]]\npath = \"/echo\"\napp = \"echo\"\n[route.policy]\ndrain_timeout = \"2s\"\n";

#[tokio::test]
async fn the_echo_route_serves_both_transports_through_the_dispatcher() {
    let gw = Running::start(ECHO).await;
    let url = format!("http://{}/echo", gw.addr);
    let memory = |gw: &Running| {
        let text = gw.gateway.sessions().render_metrics();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("switchyard_fallback_memory_used_bytes "))
            .unwrap_or_else(|| panic!("no memory gauge in\n{text}"))
            .to_string();
        line.parse::<u64>().unwrap()
    };
    assert_eq!(memory(&gw), 0, "nothing buffered yet");
    for (round, transport) in [Transport::Sse, Transport::Poll].into_iter().enumerate() {
        let s = within("open", FallbackBuilder::new(transport).connect(&url))
            .await
            .unwrap();
        let (mut tx, mut rx) = s.split();
        let n = 200;
        let sending = async {
            for i in 0..n {
                tx.feed(Message::text(format!("m{i}"))).await.unwrap();
            }
            tx.flush().await.unwrap();
        };
        let receiving = async {
            for i in 0..n {
                match within("an echo", rx.next()).await {
                    Some(Ok(m)) => assert_eq!(m, Message::text(format!("m{i}")), "{transport}"),
                    other => panic!("{transport}: echo {i}: {other:?}"),
                }
            }
        };
        tokio::join!(sending, receiving);
        let sessions = gw.gateway.sessions().metrics();
        assert_eq!(sessions.open_sessions("/echo", transport.as_str()), 1);
        // Counted while the session lives (the echo behind it is the
        // built-in app), per direction.
        let so_far = n as u64 * (round as u64 + 1);
        assert_eq!(
            sessions.messages("/echo", Direction::ClientToUpstream),
            so_far
        );
        assert_eq!(
            sessions.messages("/echo", Direction::UpstreamToClient),
            so_far
        );
        assert!(memory(&gw) > 0, "the session's log is buffered");
        let mut s = tx.reunite(rx).unwrap();
        within("the close", s.close(CloseCode::NORMAL, "done"))
            .await
            .unwrap();
        match within("the close reply", s.next()).await {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::NORMAL),
            other => panic!("{transport}: expected the close reply, got {other:?}"),
        }
        eventually("the session ends", || {
            sessions.open_sessions("/echo", transport.as_str()) == 0
        })
        .await;
    }
    // Nothing more counted when the sessions ended.
    let m = gw.gateway.sessions().metrics();
    assert_eq!(m.messages("/echo", Direction::ClientToUpstream), 400);
    assert_eq!(m.messages("/echo", Direction::UpstreamToClient), 400);
    gw.stop().await;
}

#[tokio::test]
async fn over_http2_the_event_stream_is_one_stream_among_the_posts() {
    let gw = Running::start(ECHO).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = within("h2 ready", h2.ready()).await.unwrap();
    let req = |method: Method, target: &str, ct: &str| {
        Request::builder()
            .method(method)
            .uri(format!("http://localhost{target}"))
            .header("content-type", ct)
            .body(())
            .unwrap()
    };
    async fn whole(r: h2::client::ResponseFuture) -> (StatusCode, Bytes) {
        let resp = within("an h2 answer", r).await.unwrap();
        let status = resp.status();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(chunk) = within("an h2 body", body.data()).await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        (status, out.into())
    }
    let (r, mut body) = h2
        .send_request(
            req(Method::POST, "/echo?sw=open", "application/json"),
            false,
        )
        .unwrap();
    body.send_data(Bytes::from_static(b"{}"), true).unwrap();
    let (status, open) = whole(r).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&open));
    let s: switchyard::fallback::wire::OpenResponse = serde_json::from_slice(&open).unwrap();

    // The event stream stays open while the messages are sent on the same
    // connection: each echo arrives on it as an event.
    let (sse, _) = h2
        .send_request(req(Method::GET, &q("/echo", "sse", &s, ""), ""), true)
        .unwrap();
    let sse = within("the SSE head", sse).await.unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut events = sse.into_body();
    let mut parser = SseParser::new(1 << 20);
    for i in 1..=3u64 {
        let target = q("/echo", "send", &s, &format!("&seq={i}"));
        let (r, mut body) = h2
            .send_request(req(Method::POST, &target, "text/plain"), false)
            .unwrap();
        body.send_data(Bytes::from(format!("hello {i}")), true)
            .unwrap();
        let (status, ack) = whole(r).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&ack));
        let mut got = Vec::new();
        while got.is_empty() {
            let chunk = within("an event", events.data()).await.unwrap().unwrap();
            let _ = events.flow_control().release_capacity(chunk.len());
            parser.feed(&chunk, &mut got).unwrap();
        }
        assert_eq!(got[0].id.as_deref(), Some(i.to_string().as_str()));
        assert_eq!(got[0].data, format!("hello {i}"));
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_route_policy_applies_to_opens_and_fallback_off_leaves_the_route_as_it_was() {
    let gw = Running::start(
        "[[route]]\npath = \"/capped\"\napp = \"echo\"\n[route.policy]\n\
         allowed_origins = [\"https://good.example\"]\nmax_connections = 1\n\
         [[route]]\npath = \"/off\"\napp = \"echo\"\n[route.policy]\nfallback = []\n\
         [[route]]\npath = \"/small\"\napp = \"echo\"\n[route.policy]\nfallback_max_body = \"1KiB\"\n",
    )
    .await;
    let addr = gw.addr;
    let json = ("content-type", "application/json");
    let evil = request(
        addr,
        Method::POST,
        "/capped?sw=open",
        &[json, ("origin", "https://evil.example")],
        "{}",
    )
    .await;
    assert_eq!(evil.status, StatusCode::FORBIDDEN);
    let good = [json, ("origin", "https://good.example")];
    let first = request(addr, Method::POST, "/capped?sw=open", &good, "{}").await;
    assert_eq!(first.status, 200);
    let first: switchyard::fallback::wire::OpenResponse = first.json();
    // The session holds the route's only slot; requests of the open
    // session take none.
    let full = request(addr, Method::POST, "/capped?sw=open", &good, "{}").await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(full.headers.contains_key("retry-after"));
    let r = send_text(addr, "/capped", &first, 1, "still here").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = request(
        addr,
        Method::POST,
        &q("/capped", "close", &first, ""),
        &[json],
        r#"{"code":1000}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    eventually("the slot is given back when the session ends", || {
        gw.gateway.limiter().route_count("/capped") == 0
    })
    .await;
    let again = request(addr, Method::POST, "/capped?sw=open", &good, "{}").await;
    assert_eq!(again.status, 200);

    // fallback = []: the echo answers as it always did (426).
    let off = request(addr, Method::POST, "/off?sw=open", &[json], "{}").await;
    assert_eq!(off.status, StatusCode::METHOD_NOT_ALLOWED);
    let off = request(addr, Method::GET, "/off?sw=sse", &[], "").await;
    assert_eq!(off.status, StatusCode::UPGRADE_REQUIRED);

    // The route's body limit, through the HTTP/1.1 front.
    let small = open(addr, "/small", "{}").await;
    let big = "x".repeat(2000);
    let r = send_text(addr, "/small", &small, 1, &big).await;
    assert_eq!(r.error(413).error, "body_too_large");
    let r = send_text(addr, "/small", &small, 1, "fits").await;
    assert_eq!(r.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn the_client_script_is_served_on_every_host() {
    let gw = Running::start(ECHO).await;
    let r = request(gw.addr, Method::GET, "/.switchyard/client.js", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/javascript; charset=utf-8");
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    assert!(body.contains("export class SwitchyardSocket"), "{body}");
    let r = request(gw.addr, Method::POST, "/.switchyard/client.js", &[], "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    gw.stop().await;
}

#[tokio::test]
async fn drain_closes_open_sessions_with_1001() {
    let gw = Running::start(ECHO).await;
    let s = open(gw.addr, "/echo", "{}").await;
    let resp = send(gw.addr, Method::GET, &q("/echo", "sse", &s, ""), &[], "").await;
    assert_eq!(resp.status(), 200);
    let mut sse = SseReader::new(resp);
    // The stream is open (its first bytes arrived) before the drain starts.
    sse.until("the stream's start", |raw| !raw.is_empty()).await;
    let addr = gw.addr;
    let stopping = tokio::spawn(gw.stop());
    let events = sse.rest().await;
    let close = events
        .iter()
        .find(|e| e.event == "close")
        .unwrap_or_else(|| panic!("no close event: {}", sse.raw));
    assert!(close.data.contains("1001"), "{}", close.data);
    within("the stop", stopping).await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

/// A backend that sends `count` binary messages of `size` bytes as soon as
/// a WebSocket opens, then reads until the close; the close code it got.
async fn flood_backend(count: usize, size: usize) -> (SocketAddr, oneshot::Receiver<Option<u16>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let cfg = switchyard::server::AcceptConfig::default();
        let mut ws = switchyard::accept(tcp, &cfg).await.unwrap();
        for _ in 0..count {
            if ws
                .send(Message::Binary(vec![7u8; size].into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let mut code = None;
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                code = f.map(|f| f.code.0);
                break;
            }
        }
        let _ = tx.send(code);
    });
    (addr, rx)
}

/// A gateway with 1 MiB for every session's buffers and a route /flood to
/// `back` whose replay window alone would hold 4 MiB (`policy`: more keys).
async fn flood_gateway(back: SocketAddr, policy: &str) -> Running {
    Running::start(&format!(
        "[fallback]\nmemory = \"1MiB\"\n\
         [[upstream]]\nname = \"flood\"\nservers = [\"ws://{back}\"]\n\
         [[route]]\npath = \"/flood\"\nupstream = \"flood\"\n[route.policy]\n\
         fallback_replay_bytes = \"4MiB\"\nfallback_stream_bytes = \"4MiB\"\n{policy}\n{ECHO}"
    ))
    .await
}

/// Opens on /echo until one is refused for the memory budget (the budget
/// fills as the session's owner pushes its backend's messages).
async fn until_opens_are_refused(addr: SocketAddr) -> Reply {
    within("an open refused for memory", async {
        loop {
            let r = request(
                addr,
                Method::POST,
                "/echo?sw=open",
                &[("content-type", "application/json")],
                "{}",
            )
            .await;
            if r.status == 503 {
                return r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_backend_beyond_the_memory_budget_is_held_back_until_its_reader_catches_up() {
    let (back, backend_close) = flood_backend(4, 300 << 10).await;
    let gw = flood_gateway(back, "").await;
    let addr = gw.addr;
    let s = open(addr, "/flood", "{}").await;
    // Three messages fit, the fourth waits in the gateway (the backend is
    // not read further); what the session holds keeps opens out.
    let refused = until_opens_are_refused(addr).await;
    assert_eq!(refused.error(503).error, "memory_full");
    assert!(refused.headers.contains_key("retry-after"));
    // The reader takes the three, which makes room for the fourth: all four
    // arrive, in order, and the session is still open.
    let resp = send(addr, Method::GET, &q("/flood", "sse", &s, ""), &[], "").await;
    let mut sse = SseReader::new(resp);
    let mut got = Vec::new();
    while got.len() < 4 {
        let e = within("an event", sse.next())
            .await
            .expect("the stream ended");
        assert_eq!(e.event, "binary", "{e:?}");
        got.push(e.id.clone().unwrap());
    }
    assert_eq!(got, ["1", "2", "3", "4"]);
    // The client's close reaches the backend: it was never closed for memory.
    let closed = request(
        addr,
        Method::POST,
        &q("/flood", "close", &s, ""),
        &[("content-type", "application/json")],
        r#"{"code":4000,"reason":"done"}"#,
    )
    .await;
    assert_eq!(closed.status, 200);
    let code = within("the backend's close", backend_close).await.unwrap();
    assert_eq!(code, Some(4000));
    // Once read, those messages make room: opens are served again.
    open(addr, "/echo", "{}").await;
    gw.stop().await;
}

#[tokio::test]
async fn a_held_back_session_without_a_reader_ends_at_its_idle_timeout() {
    let (back, backend_close) = flood_backend(4, 300 << 10).await;
    let gw = flood_gateway(back, "fallback_idle_timeout = \"1s\"").await;
    let addr = gw.addr;
    let s = open(addr, "/flood", "{}").await;
    until_opens_are_refused(addr).await;
    // Nobody reads: the idle timeout ends the session, the backend gets 1001.
    let code = within("the backend's close", backend_close).await.unwrap();
    assert_eq!(code, Some(1001));
    // A late reader gets the three messages the log took, then the close:
    // the held fourth is not in the log, so there is no gap.
    let r = poll(addr, "/flood", &s, 0).await;
    let seqs: Vec<u64> = messages(&r).iter().map(|e| e.seq.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    match &messages(&r)[3].payload {
        Payload::Close(f) => {
            assert_eq!(
                (f.code.0, f.reason.as_str()),
                (1001, "no reader: idle timeout")
            )
        }
        other => panic!("not the close: {other:?}"),
    }
    gw.stop().await;
}

/// A backend that accepts one WebSocket and reports the close frame it gets.
async fn close_recording_backend() -> (SocketAddr, oneshot::Receiver<Option<(u16, String)>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let cfg = switchyard::server::AcceptConfig::default();
        let mut ws = switchyard::accept(tcp, &cfg).await.unwrap();
        let mut close = None;
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                close = f.map(|f| (f.code.0, f.reason.to_string()));
                break;
            }
        }
        let _ = tx.send(close);
    });
    (addr, rx)
}

#[tokio::test]
async fn a_session_the_store_cannot_record_closes_its_backend_saying_why() {
    let (back, closed) = close_recording_backend().await;
    // A cluster whose Redis does not answer.
    let port = crate::redis_server::free_port();
    let gw = Running::start(&format!(
        "[[upstream]]\nname = \"back\"\nservers = [\"ws://{back}\"]\n\
         [[route]]\npath = \"/ws\"\nupstream = \"back\"\n\
         [cluster]\nredis = \"redis://127.0.0.1:{port}/0\"\nnode_id = \"a\"\nkey_prefix = \"t:\"\n"
    ))
    .await;
    let r = request(
        gw.addr,
        Method::POST,
        "/ws?sw=open",
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(r.error(503).error, "store_unavailable");
    // The backend's handshake succeeded, then it is told why it ends: not
    // that the gateway is full.
    let close = within("the backend's close", closed).await.unwrap();
    assert_eq!(close, Some((1013, "session store unavailable".to_string())));
    gw.stop().await;
}

#[tokio::test]
async fn a_session_body_has_its_route_limit_whatever_the_http1_limit() {
    let gw = Running::start(&format!(
        "[http1]\nmax_request_body = \"1KiB\"\n\
         [[route]]\npath = \"/big\"\napp = \"echo\"\n[route.policy]\nfallback_max_body = \"64KiB\"\n\
         {ECHO}"
    ))
    .await;
    let addr = gw.addr;
    let s = open(addr, "/big", "{}").await;
    let text = "y".repeat(8000);
    let r = send_text(addr, "/big", &s, 1, &text).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let echoed = messages(&poll(addr, "/big", &s, 0).await);
    assert_eq!(echoed[0].payload, Payload::Text(text.into()));
    // Over the route's limit: the session's own 413.
    let r = send_text(addr, "/big", &s, 2, &"z".repeat(70_000)).await;
    assert_eq!(r.error(413).error, "body_too_large");
    // Other requests keep [http1] max_request_body.
    let r = request(addr, Method::POST, "/", &[], "w".repeat(2000)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    gw.stop().await;
}

#[tokio::test]
async fn pages_of_the_allowed_origins_use_sessions_across_origins() {
    let gw = Running::start(&format!(
        "[[route]]\npath = \"/cors\"\napp = \"echo\"\n[route.policy]\n\
         allowed_origins = [\"https://app.example\"]\nmax_connections = 1\n{ECHO}"
    ))
    .await;
    let addr = gw.addr;
    let app = ("origin", "https://app.example");
    // The preflight of the open's JSON POST: allowed, and it opens nothing.
    let pre = request(
        addr,
        Method::OPTIONS,
        "/cors?sw=open",
        &[app, ("access-control-request-method", "POST")],
        "",
    )
    .await;
    assert_eq!(pre.status, StatusCode::NO_CONTENT);
    let h = &pre.headers;
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("content-type"));
    assert_eq!(gw.gateway.limiter().route_count("/cors"), 0);
    // The open and a send answer with the origin, so the page reads them.
    let json = ("content-type", "application/json");
    let r = request(addr, Method::POST, "/cors?sw=open", &[json, app], "{}").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let s: switchyard::fallback::wire::OpenResponse = r.json();
    let text = ("content-type", "text/plain");
    let target = q("/cors", "send", &s, "&seq=1");
    let r = request(addr, Method::POST, &target, &[text, app], "hi").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["access-control-allow-origin"],
        "https://app.example"
    );
    // Another origin is refused (the route's Origin policy), with no CORS headers.
    let evil = ("origin", "https://evil.example");
    let r = request(addr, Method::OPTIONS, "/cors?sw=open", &[evil], "").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    // A route without allowed_origins answers same-origin pages only.
    let r = request(addr, Method::OPTIONS, "/echo?sw=open", &[app], "").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    let r = request(addr, Method::POST, "/echo?sw=open", &[json, app], "{}").await;
    assert_eq!(r.status, 200);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
    gw.stop().await;
}

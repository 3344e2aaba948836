//! The proxied connector with a third-party backend, Python `websockets`
//! (tests/fixtures/session_backend.py): negotiation and headers end to end,
//! the backend's refusals and close codes, and what the backend sees when
//! the gateway ends a session.

use std::time::Duration;

use http::Method;
use switchyard::fallback::wire::{OpenResponse, Payload};
use switchyard::{CloseCode, CloseFrame};

use crate::harness::*;

const PY: &str = "/py";

async fn py_gateway(b: &PyBackend, policy: &str, tune: impl FnOnce(&mut Setup)) -> Gateway {
    let mut setup = Setup::with_routes(&b.route(PY, policy));
    tune(&mut setup);
    Gateway::start(setup).await
}

async fn say(gw: &Gateway, s: &OpenResponse, seq: u64, text: &str) {
    let r = send_text(gw.addr, PY, s, seq, text).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// The payloads of a poll after `after`.
async fn payloads(gw: &Gateway, s: &OpenResponse, after: u64) -> Vec<Payload> {
    let r = poll(gw.addr, PY, s, after).await;
    messages(&r).into_iter().map(|e| e.payload).collect()
}

#[tokio::test]
async fn the_backend_negotiates_the_subprotocol_and_sees_the_client_like_an_upgrade() {
    let b = PyBackend::start();
    let gw = py_gateway(&b, "", |_| {}).await;
    let r = request(
        gw.addr,
        Method::POST,
        "/py?room=7&sw=open",
        &[
            ("content-type", "application/json"),
            ("origin", "https://app.example"),
            ("cookie", "session=abc"),
            ("authorization", "Bearer t0ken"),
        ],
        r#"{"protocols":["chat.v1","chat.v2"]}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let s: OpenResponse = r.json();
    assert_eq!(
        s.protocol.as_deref(),
        Some("chat.v2"),
        "the backend's choice"
    );
    say(&gw, &s, 1, "info").await;
    let info = match payloads(&gw, &s, 0).await.as_slice() {
        [Payload::Text(t)] => serde_json::from_str::<serde_json::Value>(t).unwrap(),
        other => panic!("expected the info text, got {other:?}"),
    };
    assert_eq!(
        info["path"], "/py?room=7",
        "the session parameters stay at the gateway"
    );
    assert_eq!(info["subprotocol"], "chat.v2");
    assert_eq!(info["origin"], "https://app.example");
    assert_eq!(info["cookie"], "session=abc");
    assert_eq!(info["authorization"], "Bearer t0ken");
    assert_eq!(info["x_forwarded_for"], "127.0.0.1");
    assert_eq!(
        info["extensions"],
        serde_json::Value::Null,
        "no extension offered"
    );
}

#[tokio::test]
async fn the_backend_refusal_reaches_the_client_as_the_upgrade_would_have() {
    let b = PyBackend::start();
    let mut setup = Setup::with_routes(&format!(
        "{}[[route]]\npath = \"/refuse\"\nupstream = \"py\"\n",
        b.route(PY, "")
    ));
    setup.max_sessions = 10;
    let gw = Gateway::start(setup).await;
    let r = request(gw.addr, Method::POST, "/refuse?sw=open", &[], "").await;
    assert_eq!(r.status, 403);
    assert_eq!(String::from_utf8_lossy(&r.body), "backend says no\n");
    assert_eq!(gw.sessions.live(), 0, "nothing held");
    assert_eq!(gw.sessions.metrics().refusals("upstream_status"), 1);
}

#[tokio::test]
async fn a_backend_that_is_down_answers_502() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gw = Gateway::start(Setup::with_routes(&format!(
        "[[upstream]]\nname = \"gone\"\nservers = [\"ws://{dead}\"]\n[[route]]\npath = \"/py\"\nupstream = \"gone\"\n"
    )))
    .await;
    let r = request(gw.addr, Method::POST, "/py?sw=open", &[], "").await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn the_backend_close_code_reaches_the_client() {
    let b = PyBackend::start();
    let gw = py_gateway(&b, "", |_| {}).await;
    let s = open(gw.addr, PY, "").await;
    say(&gw, &s, 1, "close 4321 backend done").await;
    let got = payloads(&gw, &s, 0).await;
    assert_eq!(
        got,
        [Payload::Close(CloseFrame::new(
            CloseCode(4321),
            "backend done"
        ))]
    );
    b.wait_line(|l| l == "closed /py rcvd=4321").await;
    let m = gw.sessions.metrics().clone();
    eventually("the end is counted", || {
        m.session_ends(PY, "backend_closed") == 1
    })
    .await;
}

#[tokio::test]
async fn the_backend_gets_1001_when_no_reader_comes_and_when_the_gateway_drains() {
    let b = PyBackend::start();
    let gw = py_gateway(&b, "", |s| {
        s.settings.idle_timeout = Duration::from_millis(300)
    })
    .await;
    let s = open(gw.addr, PY, "").await;
    b.wait_line(|l| l == "closed /py rcvd=1001").await;
    assert_eq!(
        payloads(&gw, &s, 0).await,
        [Payload::Close(CloseFrame::new(
            CloseCode::GOING_AWAY,
            "no reader: idle timeout"
        ))]
    );

    let gw = py_gateway(&b, "", |_| {}).await;
    let _s = open(gw.addr, PY, "").await;
    gw.drain().await;
    let closes = || b.count_lines(|l| l == "closed /py rcvd=1001");
    eventually("the drained session's backend got 1001", || closes() == 2).await;
}

#[tokio::test]
async fn a_resume_out_of_the_window_gives_the_backend_1011() {
    let b = PyBackend::start();
    let gw = py_gateway(&b, "", |s| s.settings.replay_bytes = 4 * (500 + 64)).await;
    let s = open(gw.addr, PY, "").await;
    say(&gw, &s, 1, "burst 20 500").await;
    let mut after = 0;
    while after < 20 {
        for p in payloads(&gw, &s, after).await {
            after += 1;
            let Payload::Binary(b) = p else {
                panic!("binary expected")
            };
            assert_eq!(b.len(), 500);
            assert_eq!(b[0] as u64, (after - 1) % 251, "message {after} in order");
        }
    }
    let got = payloads(&gw, &s, 3).await;
    assert_eq!(
        got,
        [Payload::Close(CloseFrame::new(
            CloseCode(4410),
            "resume window exceeded"
        ))]
    );
    b.wait_line(|l| l == "closed /py rcvd=1011").await;
}

#[tokio::test]
async fn a_bare_event_source_opens_a_receive_only_session_and_resumes_it() {
    let b = PyBackend::start();
    let gw = py_gateway(&b, "", |_| {}).await;
    let mut sse = SseReader::new(
        send(
            gw.addr,
            Method::GET,
            "/py?greet=3&sw=sse",
            &[("accept", "text/event-stream")],
            "",
        )
        .await,
    );
    let mut ids = Vec::new();
    for i in 1..=3 {
        let e = sse.next().await.expect("a greeting");
        assert_eq!(e.data, format!("greeting {i}"));
        ids.push(e.id.clone().unwrap());
    }
    // The ids carry the session (the browser reconnects to the same URL).
    let parts: Vec<&str> = ids[1].split('.').collect();
    assert_eq!(parts.len(), 3, "{}", ids[1]);
    assert_eq!(parts[2], "2");
    drop(sse);
    // The browser's reconnect: same URL, Last-Event-ID of the second event.
    let mut again = SseReader::new(
        send(
            gw.addr,
            Method::GET,
            "/py?greet=3&sw=sse",
            &[("last-event-id", &ids[1])],
            "",
        )
        .await,
    );
    let e = again.next().await.expect("the third greeting again");
    assert_eq!(
        (e.data.as_str(), e.id.as_deref()),
        ("greeting 3", Some(ids[2].as_str()))
    );
    assert_eq!(gw.sessions.live(), 1, "the same session, not a new one");
    assert_eq!(gw.sessions.metrics().resumes(PY, "sse"), 1);
}

#[tokio::test]
async fn backend_pings_are_answered_and_the_route_heartbeat_finds_a_silent_backend() {
    let b = PyBackend::start();
    let policy = "[route.policy]\nping_interval = \"100ms\"\npong_timeout = \"300ms\"\n";
    let gw = py_gateway(&b, policy, |_| {}).await;
    // The backend's pings are answered while the session is open.
    let r = request(gw.addr, Method::POST, "/py?pings=3&sw=open", &[], "").await;
    let s: OpenResponse = r.json();
    assert_eq!(
        payloads(&gw, &s, 0).await,
        [Payload::Text("pongs 3".into())]
    );
    // A backend that stops answering is found by the route's heartbeat:
    // the client's session ends instead of hanging.
    b.signal("STOP");
    let got = payloads(&gw, &s, 1).await;
    b.signal("CONT");
    match got.as_slice() {
        [Payload::Close(f)] => {
            assert_eq!(f.code, CloseCode::ABNORMAL, "{f:?}");
            assert!(f.reason.contains("pong"), "{f:?}");
        }
        other => panic!("expected the close, got {other:?}"),
    }
    let m = gw.sessions.metrics().clone();
    eventually("the end is counted", || {
        m.session_ends(PY, "backend_failed") == 1
    })
    .await;
}

//! The session engine through raw HTTP requests, with the echo app as the
//! backend (a real WebSocket over an in-memory pipe).

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use switchyard::fallback::wire::{Entry, OpenResponse, Payload, SendAck, Seq};
use switchyard::{CloseCode, CloseFrame};

use crate::harness::*;

const ECHO: &str = "/echo";

async fn post(
    gw: &Gateway,
    s: &OpenResponse,
    action: &str,
    extra: &str,
    ct: &str,
    body: impl Into<Bytes>,
) -> Reply {
    request(
        gw.addr,
        Method::POST,
        &q(ECHO, action, s, extra),
        &[("content-type", ct)],
        body,
    )
    .await
}

/// Poll from `after` until `n` entries came; they are checked to be
/// numbered on from `after`.
async fn poll_n(gw: &Gateway, s: &OpenResponse, mut after: u64, n: usize) -> Vec<Entry> {
    let mut got = Vec::new();
    while got.len() < n {
        for e in messages(&poll(gw.addr, ECHO, s, after).await) {
            assert_eq!(e.seq, Seq(after + 1), "numbered without gap or repeat");
            after = e.seq.0;
            got.push(e);
        }
    }
    got
}

fn payloads(e: &[Entry]) -> Vec<Payload> {
    e.iter().map(|e| e.payload.clone()).collect()
}

fn close(code: u16, reason: &str) -> Payload {
    Payload::Close(CloseFrame::new(CloseCode(code), reason))
}

#[tokio::test]
async fn open_send_and_poll_echo_every_kind_of_body_in_order() {
    let gw = Gateway::start(Setup::echo()).await;
    let s = open(gw.addr, ECHO, "").await;
    assert_eq!(s.protocol, None);
    assert_eq!(
        (s.poll_timeout_ms, s.idle_timeout_ms, s.max_body),
        (25_000, 30_000, 1 << 20)
    );
    assert_eq!(s.heartbeat_ms, 15_000);

    let r = send_text(gw.addr, ECHO, &s, 1, "héllo").await;
    assert_eq!(r.json::<SendAck>().acked, Seq(1));
    assert_eq!(r.headers["cache-control"], "no-store");
    let r = post(
        &gw,
        &s,
        "send",
        "&seq=2",
        "application/octet-stream",
        vec![0u8, 1, 2],
    )
    .await;
    assert_eq!(r.json::<SendAck>().acked, Seq(2));
    let batch = r#"[{"type":"text","data":"a\r\nb"},{"type":"binary","data":"AAE="}]"#;
    let r = post(&gw, &s, "send", "&seq=3", "application/json", batch).await;
    assert_eq!(r.json::<SendAck>().acked, Seq(4));

    let got = poll_n(&gw, &s, 0, 4).await;
    assert_eq!(
        payloads(&got),
        [
            Payload::Text("héllo".into()),
            Payload::Binary(vec![0u8, 1, 2].into()),
            Payload::Text("a\r\nb".into()),
            Payload::Binary(vec![0u8, 1].into()),
        ]
    );
}

#[tokio::test]
async fn sse_streams_events_with_ids_heartbeats_and_the_headers_proxies_need() {
    let mut setup = Setup::echo();
    setup.settings.heartbeat_interval = Duration::from_millis(100);
    let gw = Gateway::start(setup).await;
    let s = open(gw.addr, ECHO, "").await;
    assert_eq!(s.heartbeat_ms, 100);
    let resp = send(gw.addr, Method::GET, &q(ECHO, "sse", &s, ""), &[], "").await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-accel-buffering"], "no");
    let mut sse = SseReader::new(resp);
    for i in 1..=3 {
        send_text(gw.addr, ECHO, &s, i, &format!("line one {i}\nline two")).await;
    }
    for i in 1..=3u64 {
        let e = sse.next().await.expect("an event");
        assert_eq!(e.id.as_deref(), Some(i.to_string().as_str()));
        assert_eq!(e.event, "message");
        assert_eq!(e.data, format!("line one {i}\nline two"));
    }
    assert!(sse.raw.starts_with("retry: 2000\n\n"), "{}", sse.raw);
    // Quiet: heartbeat comments come.
    sse.until("a heartbeat", |raw| raw.ends_with(":hb\n\n"))
        .await;
}

#[tokio::test]
async fn an_sse_response_ends_after_its_budget_and_last_event_id_resumes_exactly() {
    let mut setup = Setup::echo();
    setup.settings.response_max_bytes = 400;
    let gw = Gateway::start(setup).await;
    let s = open(gw.addr, ECHO, "").await;
    let n = 30;
    let batch: Vec<String> = (1..=n)
        .map(|i| {
            format!(
                r#"{{"type":"text","data":"message {i:03} {}"}}"#,
                "x".repeat(40)
            )
        })
        .collect();
    post(
        &gw,
        &s,
        "send",
        "&seq=1",
        "application/json",
        format!("[{}]", batch.join(",")),
    )
    .await;

    let mut got: Vec<Entry> = Vec::new();
    let mut responses = 0;
    while got.len() < n {
        let last = got.last().map_or(0, |e| e.seq.0).to_string();
        let headers: Vec<(&str, &str)> = if got.is_empty() {
            vec![]
        } else {
            vec![("last-event-id", &last)]
        };
        let mut sse =
            SseReader::new(send(gw.addr, Method::GET, &q(ECHO, "sse", &s, ""), &headers, "").await);
        responses += 1;
        while let Some(e) = sse.next().await {
            got.push(e.to_entry().unwrap());
            if got.len() == n {
                break;
            }
        }
        if got.len() < n {
            assert!(
                sse.raw.ends_with("retry: 0\n\n"),
                "a budget end tells EventSource to come back at once: {}",
                sse.raw
            );
        }
    }
    assert!(
        responses > 2,
        "a 400-byte budget takes several responses, got {responses}"
    );
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.seq, Seq(i as u64 + 1));
        assert_eq!(
            e.payload,
            Payload::Text(format!("message {:03} {}", i + 1, "x".repeat(40)).into())
        );
    }
    assert_eq!(
        gw.sessions.metrics().resumes(ECHO, "sse"),
        0,
        "nothing was replayed"
    );
}

#[tokio::test]
async fn a_new_reader_ends_the_previous_one() {
    let mut setup = Setup::echo();
    setup.settings.poll_timeout = Duration::from_secs(3600);
    setup.settings.heartbeat_interval = Duration::from_secs(3600);
    setup.settings.idle_timeout = Duration::from_secs(7200);
    let gw = Gateway::start(setup).await;
    let s = open(gw.addr, ECHO, "").await;
    let mut first =
        SseReader::new(send(gw.addr, Method::GET, &q(ECHO, "sse", &s, ""), &[], "").await);
    let mut second =
        SseReader::new(send(gw.addr, Method::GET, &q(ECHO, "sse", &s, ""), &[], "").await);
    assert!(
        first.rest().await.is_empty(),
        "the first stream ends, without events"
    );
    assert!(
        first.raw.contains(":replaced by a newer reader"),
        "{}",
        first.raw
    );
    // A held poll (it would wait an hour) ends as soon as a newer one comes.
    let addr = gw.addr;
    let target = q(ECHO, "poll", &s, "&after=0");
    let held = tokio::spawn(async move { request(addr, Method::GET, &target, &[], "").await });
    assert!(
        second.rest().await.is_empty(),
        "the poll ended the second stream"
    );
    let newer = {
        let target = q(ECHO, "poll", &s, "&after=0");
        tokio::spawn(async move { request(addr, Method::GET, &target, &[], "").await })
    };
    let r = within("the replaced poll", held).await.unwrap();
    assert_eq!(messages(&r), vec![]);
    send_text(gw.addr, ECHO, &s, 1, "to the newest").await;
    let r = within("the newest poll", newer).await.unwrap();
    assert_eq!(
        payloads(&messages(&r)),
        [Payload::Text("to the newest".into())]
    );
}

#[tokio::test]
async fn every_bad_input_gets_its_status_and_nothing_about_other_sessions() {
    let mut setup = Setup::with_routes(
        "[[route]]\npath = \"/echo\"\napp = \"echo\"\n[[route]]\npath = \"/other\"\napp = \"echo\"\n",
    );
    setup.settings.max_body = 1000;
    let gw = Gateway::start(setup).await;
    let a = gw.addr;
    let s = open(a, ECHO, "").await;
    let other = open(a, "/other", "").await;
    let sid = s.sid.to_string();
    let zeros = "0".repeat(32);

    // Unknown session, or one of another route: 404.
    let r = request(
        a,
        Method::GET,
        &format!("{ECHO}?sw=poll&sid={zeros}&token={}&after=0", s.token),
        &[],
        "",
    )
    .await;
    assert_eq!(r.error(404).error, "unknown_session");
    let r = request(
        a,
        Method::GET,
        &q(ECHO, "poll", &other, "&after=0"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.error(404).error, "unknown_session");
    // Wrong or missing token: 403, and the answer says nothing of the session.
    for target in [
        format!("{ECHO}?sw=poll&sid={sid}&token={}&after=0", other.token),
        format!("{ECHO}?sw=poll&sid={sid}&after=0"),
        format!("{ECHO}?sw=poll&sid={sid}&token=nothex&after=0"),
    ] {
        let r = request(a, Method::GET, &target, &[], "").await;
        let e = r.error(403);
        assert_eq!(e.error, "token");
        assert!(!e.detail.contains(&sid) && e.expected.is_none(), "{e:?}");
    }
    // Malformed: 400 (claiming messages never sent: 400 too).
    for (target, headers, want) in [
        (q(ECHO, "poll", &s, "&after=-1"), None, "malformed"),
        (q(ECHO, "poll", &s, "&after=1e3"), None, "malformed"),
        (q(ECHO, "poll", &s, ""), None, "malformed"),
        (q(ECHO, "poll", &s, "&after=1&after=2"), None, "malformed"),
        (q(ECHO, "poll", &s, "&after=5"), None, "ahead"),
        (q(ECHO, "sse", &s, ""), Some("x"), "malformed"),
        (q(ECHO, "sse", &s, ""), Some("9"), "ahead"),
        (format!("{ECHO}?sw=sse"), Some("3"), "malformed"),
        (format!("{ECHO}?sw=teleport"), None, "malformed"),
        (format!("{ECHO}?sw=poll&sid=abc&after=0"), None, "malformed"),
    ] {
        let headers: Vec<(&str, &str)> =
            headers.map(|v| ("last-event-id", v)).into_iter().collect();
        let r = request(a, Method::GET, &target, &headers, "").await;
        assert_eq!(r.error(400).error, want, "{target} {headers:?}");
    }
    for (extra, ct, body) in [
        ("&seq=0", "text/plain", "x"),
        ("&seq=x", "text/plain", "x"),
        ("", "text/plain", "x"),
        ("&seq=1", "text/plain", "\u{0}\u{ff}"),
        ("&seq=1", "application/json", "[{\"type\":\"text\"}]"),
        ("&seq=1", "application/json", "[]"),
        (
            "&seq=1",
            "application/json",
            "[{\"type\":\"binary\",\"data\":\"***\"}]",
        ),
    ] {
        let body = if body == "\u{0}\u{ff}" {
            Bytes::from_static(&[0, 0xff])
        } else {
            Bytes::from(body)
        };
        let r = post(&gw, &s, "send", extra, ct, body).await;
        assert_eq!(r.error(400).error, "malformed", "{extra} {ct}");
    }
    let r = post(&gw, &s, "close", "", "application/json", r#"{"code":1006}"#).await;
    assert_eq!(r.error(400).error, "malformed");
    let r = request(
        a,
        Method::POST,
        &format!("{ECHO}?sw=open"),
        &[],
        r#"{"protocols":["a b"]}"#,
    )
    .await;
    assert_eq!(r.error(400).error, "malformed");
    // A gap: 409 with the number expected.
    let r = send_text(gw.addr, ECHO, &s, 3, "too early").await;
    let e = r.error(409);
    assert_eq!((e.error.as_str(), e.expected), ("gap", Some(Seq(1))));
    // Too large, declared or streamed: 413.
    let big = vec![b'x'; 1001];
    let r = post(
        &gw,
        &s,
        "send",
        "&seq=1",
        "application/octet-stream",
        big.clone(),
    )
    .await;
    assert_eq!(r.error(413).error, "body_too_large");
    let chunked = http_body_util::StreamBody::new(futures_util::stream::iter(
        big.chunks(100)
            .map(|c| {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::copy_from_slice(
                    c,
                )))
            })
            .collect::<Vec<_>>(),
    ));
    let r = chunked_post(a, &q(ECHO, "send", &s, "&seq=1"), chunked).await;
    assert_eq!(r.0, 413, "{}", r.1);
    // Unknown media type: 415. Wrong method: 405 with Allow.
    let r = post(&gw, &s, "send", "&seq=1", "image/png", "x").await;
    assert_eq!(r.error(415).error, "media_type");
    let r = request(a, Method::GET, &q(ECHO, "send", &s, "&seq=1"), &[], "").await;
    assert_eq!(r.error(405).error, "method");
    assert_eq!(r.headers["allow"], "POST");
    // None of it reached the backend or hurt the session.
    let r = send_text(gw.addr, ECHO, &s, 1, "still fine").await;
    assert_eq!(r.json::<SendAck>().acked, Seq(1));
    assert_eq!(
        payloads(&poll_n(&gw, &s, 0, 1).await),
        [Payload::Text("still fine".into())]
    );
    // After the close: 410 for more messages.
    post(&gw, &s, "close", "", "application/json", "").await;
    let r = send_text(gw.addr, ECHO, &s, 2, "late").await;
    assert_eq!(r.error(410).error, "closed");
    assert!(gw.sessions.metrics().refusals("token") >= 3);
}

/// A POST with a streamed (chunked) body: status and body text.
async fn chunked_post<B>(addr: std::net::SocketAddr, target: &str, body: B) -> (u16, String)
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, B>(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(target)
        .header("host", addr.to_string())
        .header("content-type", "application/octet-stream")
        .body(body)
        .unwrap();
    let resp = within("the chunked POST", sender.send_request(req))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_retried_send_is_delivered_once() {
    let mut setup = Setup::echo();
    setup.settings.poll_timeout = Duration::from_millis(200);
    let gw = Gateway::start(setup).await;
    let s = open(gw.addr, ECHO, "").await;
    // The same POST twice (a client that timed out waiting for the answer),
    // then a batch overlapping it.
    for _ in 0..2 {
        assert_eq!(
            send_text(gw.addr, ECHO, &s, 1, "one")
                .await
                .json::<SendAck>()
                .acked,
            Seq(1)
        );
    }
    let batch = r#"[{"type":"text","data":"one"},{"type":"text","data":"two"}]"#;
    let r = post(&gw, &s, "send", "&seq=1", "application/json", batch).await;
    assert_eq!(r.json::<SendAck>().acked, Seq(2));
    let got = poll_n(&gw, &s, 0, 2).await;
    assert_eq!(
        payloads(&got),
        [Payload::Text("one".into()), Payload::Text("two".into())]
    );
    // Nothing else comes: a poll after them answers empty at its timeout.
    let r = poll(gw.addr, ECHO, &s, 2).await;
    assert_eq!(messages(&r), vec![]);
}

#[tokio::test]
async fn a_resume_out_of_the_replay_window_ends_the_session_with_4410() {
    let mut setup = Setup::echo();
    // Room for about three of the messages below.
    setup.settings.replay_bytes = 3 * (200 + 64);
    let gw = Gateway::start(setup).await;
    let s = open(gw.addr, ECHO, "").await;
    let one = format!(r#"{{"type":"text","data":"{}"}}"#, "m".repeat(200));
    let batch = format!("[{}]", vec![one; 10].join(","));
    post(&gw, &s, "send", "&seq=1", "application/json", batch).await;
    // The reader takes all ten (the window holds the last three).
    let got = poll_n(&gw, &s, 0, 10).await;
    assert_eq!(got.len(), 10);
    // A resume from 5 can be served; one from 2 cannot: explicit close 4410.
    assert_eq!(poll_n(&gw, &s, 7, 3).await.len(), 3);
    let r = poll(gw.addr, ECHO, &s, 2).await;
    let got = messages(&r);
    assert_eq!(payloads(&got), [close(4410, "resume window exceeded")]);
    assert_eq!(got[0].seq, Seq(11));
    // Every later reader learns the same, over SSE too.
    let mut sse = SseReader::new(
        send(
            gw.addr,
            Method::GET,
            &q(ECHO, "sse", &s, ""),
            &[("last-event-id", "2")],
            "",
        )
        .await,
    );
    let events = sse.rest().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "close");
    assert_eq!(
        events[0].data,
        r#"{"code":4410,"reason":"resume window exceeded"}"#
    );
    let m = gw.sessions.metrics();
    assert_eq!(m.window_closes(ECHO), 1, "counted once");
    eventually("the owner ended", || m.session_ends(ECHO, "aborted") == 1).await;
}

#[tokio::test]
async fn a_session_without_reader_is_closed_after_the_idle_timeout() {
    let mut setup = Setup::echo();
    setup.settings.idle_timeout = Duration::from_millis(300);
    let gw = Gateway::start(setup).await;
    let s = open(gw.addr, ECHO, "").await;
    let m = gw.sessions.metrics().clone();
    eventually("the idle close", || m.session_ends(ECHO, "idle") == 1).await;
    let r = poll(gw.addr, ECHO, &s, 0).await;
    assert_eq!(
        payloads(&messages(&r)),
        [close(1001, "no reader: idle timeout")]
    );
    // Forgotten after another idle timeout.
    let addr = gw.addr;
    within("forgotten", async {
        loop {
            let r = poll(addr, ECHO, &s, 1).await;
            if r.status == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(gw.sessions.live(), 0);
}

#[tokio::test]
async fn drain_closes_sessions_with_1001_and_refuses_new_ones() {
    let gw = Gateway::start(Setup::echo()).await;
    let s = open(gw.addr, ECHO, "").await;
    let mut sse =
        SseReader::new(send(gw.addr, Method::GET, &q(ECHO, "sse", &s, ""), &[], "").await);
    gw.drain().await;
    let events = sse.rest().await;
    let last = events.last().expect("the close event");
    assert_eq!(last.event, "close");
    assert_eq!(
        last.data,
        r#"{"code":1001,"reason":"server shutting down"}"#
    );
    assert_eq!(gw.sessions.live(), 0);
    let r = request(gw.addr, Method::POST, "/echo?sw=open", &[], "").await;
    assert_eq!(r.error(503).error, "draining");
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn the_route_origin_policy_and_caps_apply_to_opens() {
    let setup = Setup::with_routes(
        "[[route]]\npath = \"/echo\"\napp = \"echo\"\n[route.policy]\n\
         allowed_origins = [\"https://app.example\"]\nmax_connections_per_ip = 2\n",
    );
    let gw = Gateway::start(setup).await;
    let a = gw.addr;
    let evil = request(
        a,
        Method::POST,
        "/echo?sw=open",
        &[("origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!(evil.status, 403);
    assert!(String::from_utf8_lossy(&evil.body).contains("not allowed"));
    let good = [("origin", "https://app.example")];
    let first = open(a, ECHO, "").await;
    assert_eq!(
        request(a, Method::POST, "/echo?sw=open", &good, "")
            .await
            .status,
        200
    );
    // The third session of this IP: 429 with Retry-After, like an upgrade;
    // a receive-only EventSource counts too.
    let r = request(a, Method::POST, "/echo?sw=open", &good, "").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.headers["retry-after"], "5");
    assert_eq!(
        request(a, Method::GET, "/echo?sw=sse", &good, "")
            .await
            .status,
        429
    );
    // Closing a session gives its slot back.
    post(&gw, &first, "close", "", "application/json", "").await;
    let ip = "127.0.0.1".parse().unwrap();
    eventually("the slot is free", || gw.cap_count(ECHO, ip) == 1).await;
    assert_eq!(
        request(a, Method::POST, "/echo?sw=open", &good, "")
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_flood_of_opens_is_bounded() {
    let mut setup = Setup::echo();
    setup.max_sessions = 5;
    let gw = Gateway::start(setup).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = request(gw.addr, Method::POST, "/echo?sw=open", &[], "").await;
        if r.status == 503 {
            assert_eq!(r.error(503).error, "sessions_full");
            assert!(r.headers.contains_key("retry-after"));
        }
        statuses.push(r.status.as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        7,
        "{statuses:?}"
    );
    assert_eq!(gw.sessions.live(), 5);
}

#[tokio::test]
async fn a_client_close_reaches_the_backend_and_its_reply_ends_the_session() {
    let gw = Gateway::start(Setup::echo()).await;
    let s = open(gw.addr, ECHO, "").await;
    send_text(gw.addr, ECHO, &s, 1, "before the close").await;
    let r = post(
        &gw,
        &s,
        "close",
        "",
        "application/json",
        r#"{"code":4001,"reason":"done"}"#,
    )
    .await;
    assert_eq!(r.json::<SendAck>().acked, Seq(1));
    let got = poll_n(&gw, &s, 0, 2).await;
    // The message sent before the close is echoed first; the echo's close
    // reply (the backend's, not the client's frame) carries the code.
    assert_eq!(
        payloads(&got),
        [Payload::Text("before the close".into()), close(4001, "")]
    );
    let m = gw.sessions.metrics().clone();
    eventually("the end is counted", || {
        m.session_ends(ECHO, "client_closed") == 1
    })
    .await;
    assert_eq!(
        m.messages(
            ECHO,
            switchyard_gateway::metrics::Direction::ClientToUpstream
        ),
        1
    );
}

//! The library's session client (`switchyard::fallback::FallbackSocket`)
//! against the engine: both transports, resumes after killed connections,
//! a POST repeated after a timeout, the end of a session.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::fallback::{FallbackBuilder, FallbackSocket, Transport};
use switchyard::{CloseCode, CloseFrame, Message};

use crate::harness::*;

/// Message `i` of a test: text and binary in turn, of varied sizes.
fn msg(i: usize) -> Message {
    if i & 1 == 0 {
        Message::text(format!("message {i} {}", "é".repeat(i % 50)))
    } else {
        Message::binary(
            (0..(i % 300))
                .map(|b| (b * 7 + i) as u8)
                .collect::<Vec<u8>>(),
        )
    }
}

/// Send `n` messages and receive their `n` echoes at the same time; call
/// `on_received(k)` after the k-th echo. Every echo must match, in order.
async fn echo_n(s: FallbackSocket, n: usize, on_received: impl Fn(usize)) -> FallbackSocket {
    let (mut tx, mut rx) = s.split();
    let sending = async {
        for i in 0..n {
            tx.feed(msg(i)).await.unwrap();
        }
        tx.flush().await.unwrap();
    };
    let receiving = async {
        for i in 0..n {
            let got = within("an echo", rx.next()).await;
            match got {
                Some(Ok(m)) => assert_eq!(m, msg(i), "echo {i}"),
                other => panic!("echo {i}: {other:?}"),
            }
            on_received(i + 1);
        }
    };
    tokio::join!(sending, receiving);
    tx.reunite(rx).unwrap()
}

/// Close with 4000 and see the echo's reply (the code, without the
/// reason) end the stream.
async fn close(mut s: FallbackSocket) {
    within("the close", s.close(CloseCode(4000), "bye"))
        .await
        .unwrap();
    match within("the close reply", s.next()).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f, CloseFrame::new(CloseCode(4000), "")),
        other => panic!("expected the close reply, got {other:?}"),
    }
    assert!(s.next().await.is_none(), "the stream ends after the close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_client_exchanges_1000_messages_each_way_over_sse_and_poll() {
    let mut setup = Setup::echo();
    // Small responses: the SSE stream is ended and resumed many times.
    setup.settings.response_max_bytes = 16 << 10;
    let gw = Gateway::start(setup).await;
    for transport in [Transport::Sse, Transport::Poll] {
        let url = format!("http://{}/echo", gw.addr);
        let s = within("open", FallbackBuilder::new(transport).connect(&url))
            .await
            .unwrap();
        assert_eq!(s.transport(), transport);
        assert_eq!(s.subprotocol(), None);
        let s = echo_n(s, 1000, |_| {}).await;
        close(s).await;
    }
    let m = gw.sessions.metrics();
    use switchyard_gateway::metrics::Direction;
    eventually("both sessions ended", || {
        m.session_ends("/echo", "client_closed") == 2
    })
    .await;
    assert_eq!(m.messages("/echo", Direction::ClientToUpstream), 2000);
    assert_eq!(m.messages("/echo", Direction::UpstreamToClient), 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_resumes_after_killed_connections_without_loss_or_repeats() {
    let gw = Gateway::start(Setup::echo()).await;
    let cutter = Arc::new(Cutter::start(gw.addr).await);
    for transport in [Transport::Sse, Transport::Poll] {
        let url = format!("http://{}/echo", cutter.addr);
        let s = within("open", FallbackBuilder::new(transport).connect(&url))
            .await
            .unwrap();
        let before = cutter.cuts.load(std::sync::atomic::Ordering::SeqCst);
        // Kill every connection (the reader's, the sender's) five times
        // while messages flow both ways.
        let c = cutter.clone();
        let s = echo_n(s, 600, move |k| {
            if k % 100 == 50 {
                c.cut();
            }
        })
        .await;
        let cuts = cutter.cuts.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert_eq!(cuts, 6, "{transport}");
        close(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_repeated_after_a_timeout_is_delivered_once() {
    let gw = Gateway::start(Setup::echo()).await;
    let cutter = Cutter::start(gw.addr).await;
    let url = format!("http://{}/echo", cutter.addr);
    let mut s = within(
        "open",
        FallbackBuilder::new(Transport::Poll)
            .request_timeout(Duration::from_millis(300))
            .connect(&url),
    )
    .await
    .unwrap();
    s.send(Message::text("first")).await.unwrap();
    assert_eq!(
        within("echo", s.next()).await.unwrap().unwrap(),
        Message::text("first")
    );
    // The gateway gets the next POST, its answer never comes back: the
    // client times out and sends it again, and again.
    cutter.blackhole(true);
    s.feed(Message::text("second")).await.unwrap();
    let flushed = tokio::spawn(async move {
        s.flush().await.unwrap();
        s
    });
    eventually("the POST was repeated", || {
        gw.requests_with(&["sw=send", "seq=2"]) >= 3
    })
    .await;
    cutter.blackhole(false);
    cutter.cut();
    let mut s = within("the flush", flushed).await.unwrap();
    s.send(Message::text("third")).await.unwrap();
    // The backend got "second" once: its echoes are second, third.
    assert_eq!(
        within("echo", s.next()).await.unwrap().unwrap(),
        Message::text("second")
    );
    assert_eq!(
        within("echo", s.next()).await.unwrap().unwrap(),
        Message::text("third")
    );
    close(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_gateway_ends_the_client_with_1001() {
    let gw = Gateway::start(Setup::echo()).await;
    let url = format!("http://{}/echo", gw.addr);
    let mut s = within("open", FallbackBuilder::new(Transport::Sse).connect(&url))
        .await
        .unwrap();
    s.send(Message::text("hi")).await.unwrap();
    assert_eq!(
        within("echo", s.next()).await.unwrap().unwrap(),
        Message::text("hi")
    );
    gw.drain().await;
    match within("the close", s.next()).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::GOING_AWAY),
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(s.next().await.is_none());
    assert!(
        s.send(Message::text("late")).await.is_err(),
        "nothing can be sent after the end"
    );
}

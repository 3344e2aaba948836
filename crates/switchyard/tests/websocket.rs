//! WebSocket<S> behaviour over in-memory pipes with a hand-driven peer.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{pair, server_ws};
use futures_util::{SinkExt, StreamExt};
use switchyard::proto::{Connection, State};
use switchyard::{CloseCode, CloseFrame, Deadline, Error, Limits, Message, Role};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn receives_text_and_binary_and_sends_back() {
    let (mut ws, mut peer) = server_ws(Limits::default());
    peer.send(Message::text("hello")).await;
    peer.send(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    assert!(!futures_util::stream::FusedStream::is_terminated(&ws));
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.send(Message::text("back")).await.unwrap();
    assert_eq!(peer.recv().await, Some(Message::text("back")));
}

#[tokio::test]
async fn leftover_bytes_are_parsed_first() {
    let (a, mut b) = tokio::io::duplex(4096);
    let mut client = Connection::new(Role::Client, Limits::default());
    client.send(Message::text("early")).unwrap();
    let bytes = client.output().to_vec();
    let ws_conn = Connection::new(Role::Server, Limits::default());
    let mut ws = switchyard::WebSocket::from_raw(a, ws_conn, &bytes);
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("early"));
    drop(b.read(&mut [0u8; 1]));
}

#[tokio::test]
async fn next_is_cancel_safe_mid_frame() {
    let (mut ws, mut peer) = server_ws(Limits::default());
    let frame = peer.encode(Message::text("a message split across two writes"));
    let (first, rest) = frame.split_at(frame.len() / 2);
    peer.write_raw(first).await;
    // The timer wins while half a frame is buffered; the pending next() is dropped.
    tokio::select! {
        m = ws.next() => panic!("got {m:?} from half a frame"),
        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
    }
    peer.write_raw(rest).await;
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("a message split across two writes")
    );
}

#[tokio::test]
async fn ping_is_answered_with_pong_without_user_send() {
    let (mut ws, mut peer) = server_ws(Limits::default());
    peer.send(Message::Ping(Bytes::from_static(b"hb"))).await;
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Ping(Bytes::from_static(b"hb"))
    );
    // No send/flush by the user: the pong was flushed by next().
    assert_eq!(
        peer.recv().await,
        Some(Message::Pong(Bytes::from_static(b"hb")))
    );
}

#[tokio::test]
async fn peer_close_is_yielded_answered_and_server_closes_transport() {
    let (mut ws, mut peer) = server_ws(Limits::default());
    peer.send(Message::Close(Some(CloseFrame::new(
        CloseCode::NORMAL,
        "bye",
    ))))
    .await;
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "bye")))
    );
    assert!(ws.next().await.is_none());
    assert!(futures_util::stream::FusedStream::is_terminated(&ws));
    assert!(ws.next().await.is_none());
    match peer.recv().await {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::NORMAL),
        other => panic!("expected close reply, got {other:?}"),
    }
    assert!(
        peer.sees_eof().await,
        "server must close TCP after the handshake"
    );
}

#[tokio::test]
async fn protocol_error_sends_close_code_then_error_once_then_none() {
    let (mut ws, mut peer) = server_ws(Limits::default());
    // Unmasked frame from a client: protocol error 1002.
    peer.write_raw(&[0x81, 0x02, b'h', b'i']).await;
    match ws.next().await {
        Some(Err(Error::Protocol(e))) => assert_eq!(e.code, CloseCode::PROTOCOL_ERROR),
        other => panic!("expected protocol error, got {other:?}"),
    }
    assert!(ws.next().await.is_none());
    match peer.recv().await {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::PROTOCOL_ERROR),
        other => panic!("expected close 1002, got {other:?}"),
    }
    assert!(peer.sees_eof().await);
}

#[tokio::test]
async fn eof_without_close_is_abnormal_1006() {
    let (mut ws, peer) = server_ws(Limits::default());
    drop(peer);
    match ws.next().await {
        Some(Err(Error::Protocol(e))) => assert_eq!(e.code, CloseCode::ABNORMAL),
        other => panic!("expected 1006, got {other:?}"),
    }
    assert!(ws.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn heartbeat_pings_then_closes_silent_peer_with_1011() {
    let limits = Limits::default()
        .ping_interval(Some(Duration::from_secs(10)))
        .pong_timeout(Duration::from_secs(5));
    let (mut ws, mut peer) = server_ws(limits);
    let started = tokio::time::Instant::now();
    let reader = tokio::spawn(async move { ws.next().await });
    // The peer receives a ping after the interval, and does not answer.
    assert!(matches!(peer.recv().await, Some(Message::Ping(_))));
    assert!(started.elapsed() >= Duration::from_secs(10));
    match peer.recv().await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(f.code, CloseCode::INTERNAL_ERROR);
            assert_eq!(f.reason, "pong timeout");
        }
        other => panic!("expected close 1011, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_secs(15));
    match reader.await.unwrap() {
        Some(Err(Error::Timeout(Deadline::Pong))) => {}
        other => panic!("expected pong timeout, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn heartbeat_keeps_answering_peer_alive() {
    let limits = Limits::default()
        .ping_interval(Some(Duration::from_secs(10)))
        .pong_timeout(Duration::from_secs(5));
    let (mut ws, mut peer) = server_ws(limits);
    let reader = tokio::spawn(async move {
        let mut pongs = 0;
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(_))) => pongs += 1,
                Some(Ok(Message::Text(t))) => return (pongs, t.to_string()),
                other => panic!("reader got {other:?}"),
            }
        }
    });
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        match peer.recv().await {
            Some(Message::Ping(_)) => peer.flush_auto().await,
            other => panic!("expected ping, got {other:?}"),
        }
    }
    // Three full intervals passed, each longer than the pong timeout: the
    // answered pings kept the connection open.
    assert!(started.elapsed() >= Duration::from_secs(30));
    peer.send(Message::text("still here")).await;
    let (pongs, text) = reader.await.unwrap();
    assert_eq!((pongs, text.as_str()), (3, "still here"));
}

#[tokio::test(start_paused = true)]
async fn heartbeat_pings_every_interval_when_pong_timeout_is_longer() {
    let limits = Limits::default()
        .ping_interval(Some(Duration::from_secs(1)))
        .pong_timeout(Duration::from_secs(20));
    let (mut ws, mut peer) = server_ws(limits);
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        match peer.recv().await {
            Some(Message::Ping(_)) => peer.flush_auto().await,
            other => panic!("expected ping, got {other:?}"),
        }
    }
    // Five answered pings one interval apart: about 5 s, not 5 pong timeouts.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(7),
        "{elapsed:?}"
    );
    reader.abort();
}

#[tokio::test(start_paused = true)]
async fn close_times_out_when_peer_never_answers() {
    let limits = Limits::default().close_timeout(Duration::from_secs(3));
    let (mut ws, mut peer) = server_ws(limits);
    let started = tokio::time::Instant::now();
    let closer = tokio::spawn(async move { ws.close(CloseCode::GOING_AWAY, "shutdown").await });
    match peer.recv().await {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::GOING_AWAY),
        other => panic!("expected close, got {other:?}"),
    }
    let r = closer.await.unwrap();
    assert!(
        matches!(r, Err(Error::Timeout(Deadline::ClosingHandshake))),
        "{r:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
}

#[tokio::test]
async fn close_completes_when_peer_answers() {
    let (mut ws, mut peer) = server_ws(Limits::default());
    let closer = tokio::spawn(async move {
        let r = ws.close(CloseCode::NORMAL, "done").await;
        (r, ws.state())
    });
    assert!(matches!(peer.recv().await, Some(Message::Close(_))));
    // The peer's reply is queued automatically by its connection.
    peer.flush_auto().await;
    let (r, state) = closer.await.unwrap();
    r.unwrap();
    assert_eq!(state, State::Closed);
}

/// Autobahn 7.1.6, without its 1 s deadline: a 256 KiB text message, a short one, a close
/// and a ping arrive back to back. Both messages are echoed in order, then the close reply;
/// the ping after the close is not answered, and the transport is closed.
#[tokio::test]
async fn messages_close_and_ping_back_to_back_are_echoed_then_closed_in_order() {
    let (ws, mut peer) = pair(Role::Server, Limits::default(), 1 << 20);
    let server = tokio::spawn(common::echo_data(ws));
    let big = "BAsd7&jh23".repeat(256 * 1024 / 10);
    let mut burst = peer.encode(Message::Text(big.clone().into()));
    burst.extend(peer.encode(Message::Text("Hello World!".into())));
    burst.extend(peer.encode(Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))));
    // Encoded by hand: the peer's own connection refuses to send after its close.
    burst.extend([0x89, 0x80, 1, 2, 3, 4]);
    peer.write_raw(&burst).await;
    assert_eq!(peer.recv().await, Some(Message::Text(big.into())));
    assert_eq!(
        peer.recv().await,
        Some(Message::Text("Hello World!".into()))
    );
    match peer.recv().await {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::NORMAL),
        other => panic!("expected the close reply, got {other:?}"),
    }
    assert!(
        matches!(peer.conn.poll_message(), Ok(None)),
        "nothing after the close reply"
    );
    let mut rest = Vec::new();
    peer.io.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "bytes after the close reply: {rest:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn client_waits_for_server_eof_after_close() {
    let (mut ws, mut peer) = pair(Role::Client, Limits::default(), 4096);
    peer.send(Message::Close(None)).await;
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Close(None));
    let done = tokio::spawn(async move { ws.next().await.is_none() });
    // The client does not finish before the server closes TCP.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!done.is_finished());
    assert!(matches!(peer.recv().await, Some(Message::Close(None))));
    drop(peer);
    assert!(done.await.unwrap());
}

#[tokio::test]
async fn several_feeds_go_out_in_one_flush() {
    let (mut ws, mut peer) = server_ws(Limits::default());
    for i in 0..10 {
        ws.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    // Nothing written before the flush.
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(30), peer.io.read(&mut buf)).await;
    assert!(r.is_err(), "bytes were written before flush");
    ws.flush().await.unwrap();
    for i in 0..10 {
        assert_eq!(peer.recv().await, Some(Message::text(format!("m{i}"))));
    }
}

#[tokio::test]
async fn backpressure_when_peer_does_not_read() {
    let limits = Limits::default().max_write_buffer(4096);
    // 1 KiB pipe that the peer never reads.
    let (mut ws, _peer) = pair(Role::Server, limits, 1024);
    let msg = Message::binary(vec![7u8; 1000]);
    let mut fed = 0usize;
    while let Ok(r) = tokio::time::timeout(Duration::from_millis(50), ws.feed(msg.clone())).await {
        r.unwrap();
        fed += 1;
        assert!(fed < 100, "no backpressure after {fed} messages");
    }
    // Pipe (1 KiB) + write buffer limit (4 KiB) + one message at most.
    assert!(fed * 1004 <= 1024 + 4096 + 1004 + 1004, "fed {fed}");
    assert!(fed >= 4, "blocked too early: {fed}");
}

#[tokio::test]
async fn split_halves_work_from_two_tasks() {
    let (ws, mut peer) = server_ws(Limits::default());
    let (mut rx, mut tx) = ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..100 {
            tx.send(Message::text(format!("out{i}"))).await.unwrap();
        }
        tx
    });
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 100 {
            match rx.next().await {
                Some(Ok(Message::Text(t))) => got.push(t.to_string()),
                Some(Ok(Message::Ping(_))) => {}
                other => panic!("reader got {other:?}"),
            }
        }
        (got, rx)
    });
    // The peer writes and reads at the same time.
    let mut received = Vec::new();
    let mut sent = 0;
    while received.len() < 100 {
        if sent < 100 {
            peer.send(Message::text(format!("in{sent}"))).await;
            sent += 1;
            if sent % 10 == 0 {
                peer.send(Message::Ping(Bytes::from_static(b"p"))).await;
            }
        }
        if sent >= 50 || sent == 100 {
            match peer.recv().await {
                Some(Message::Text(t)) => received.push(t.to_string()),
                Some(Message::Pong(_)) => {}
                other => panic!("peer got {other:?}"),
            }
        }
    }
    let tx = writer.await.unwrap();
    let (got, rx) = reader.await.unwrap();
    assert_eq!(got, (0..100).map(|i| format!("in{i}")).collect::<Vec<_>>());
    assert_eq!(
        received,
        (0..100).map(|i| format!("out{i}")).collect::<Vec<_>>()
    );
    let ws = rx.reunite(tx).unwrap();
    assert_eq!(ws.role(), Role::Server);
}

#[tokio::test]
async fn split_reader_flushes_pong_while_writer_idle() {
    let (ws, mut peer) = server_ws(Limits::default());
    let (mut rx, _tx) = ws.split();
    peer.send(Message::Ping(Bytes::from_static(b"x"))).await;
    assert!(matches!(rx.next().await, Some(Ok(Message::Ping(_)))));
    assert_eq!(
        peer.recv().await,
        Some(Message::Pong(Bytes::from_static(b"x")))
    );
}

#[tokio::test]
async fn send_after_close_is_closed_error() {
    let (mut ws, mut peer) = server_ws(Limits::default());
    peer.send(Message::Close(None)).await;
    assert!(matches!(ws.next().await, Some(Ok(Message::Close(None)))));
    let r = ws.send(Message::text("late")).await;
    assert!(matches!(r, Err(Error::Closed)), "{r:?}");
}

#[tokio::test]
async fn oversized_control_frame_send_is_rejected() {
    let (mut ws, _peer) = server_ws(Limits::default());
    let r = ws.send(Message::Ping(Bytes::from(vec![0u8; 200]))).await;
    assert!(matches!(r, Err(Error::Send(_))), "{r:?}");
}

#[tokio::test]
async fn close_reply_is_sent_even_if_caller_stops_polling() {
    let (mut ws, mut peer) = server_ws(Limits::default());
    peer.send(Message::Close(Some(CloseFrame::new(
        CloseCode::GOING_AWAY,
        "",
    ))))
    .await;
    assert!(matches!(ws.next().await, Some(Ok(Message::Close(_)))));
    // No further poll of `ws`: the reply and the server's EOF still arrive.
    match peer.recv().await {
        Some(Message::Close(Some(f))) => assert_eq!(f.code, CloseCode::GOING_AWAY),
        other => panic!("expected close reply, got {other:?}"),
    }
    assert!(peer.sees_eof().await);
    drop(ws);
}

#[tokio::test]
async fn split_writer_close_is_completed_by_reader() {
    let (ws, mut peer) = server_ws(Limits::default());
    let (mut rx, mut tx) = ws.split();
    tx.close(CloseCode::NORMAL, "writer done").await.unwrap();
    match peer.recv().await {
        Some(Message::Close(Some(f))) => assert_eq!(f.reason, "writer done"),
        other => panic!("expected close, got {other:?}"),
    }
    peer.flush_auto().await;
    assert!(matches!(rx.next().await, Some(Ok(Message::Close(_)))));
    assert!(rx.next().await.is_none());
    assert!(peer.sees_eof().await);
    assert!(matches!(
        tx.send(Message::text("late")).await,
        Err(Error::Closed)
    ));
}

#[tokio::test]
async fn split_writer_alone_waits_for_peer_close() {
    let (ws, mut peer) = server_ws(Limits::default());
    let (rx, mut tx) = ws.split();
    drop(rx);
    let closer = tokio::spawn(async move { SinkExt::close(&mut tx).await });
    assert!(matches!(peer.recv().await, Some(Message::Close(_))));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!closer.is_finished(), "returned before the peer's close");
    peer.flush_auto().await;
    closer.await.unwrap().unwrap();
    assert!(peer.sees_eof().await);
}

#[tokio::test]
async fn ping_flood_from_a_peer_that_never_reads_pauses_reading() {
    // 4 KiB pipe: the peer never reads our pongs.
    let (mut ws, mut peer) = pair(Role::Server, Limits::default(), 4096);
    let server = tokio::spawn(async move {
        let mut pings = 0usize;
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Ping(_)) {
                pings += 1;
            }
        }
        pings
    });
    let mut flood = Vec::new();
    for _ in 0..10_000 {
        flood.extend(peer.encode(Message::Ping(Bytes::from(vec![1u8; 125]))));
    }
    // 10 000 pongs of 127 bytes would be 1.2 MiB of output; the server stops
    // reading after 64 KiB of unsent replies, so the flood cannot be written.
    let r = tokio::time::timeout(Duration::from_millis(500), peer.write_raw(&flood)).await;
    assert!(
        r.is_err(),
        "the whole flood was accepted: output grew without bound"
    );
    drop(peer);
    let pings = server.await.unwrap();
    assert!(pings < 1000, "{pings} pings processed");
}

/// Counts `poll_write` calls that wrote something.
struct CountingWrites {
    inner: tokio::io::DuplexStream,
    writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tokio::io::AsyncRead for CountingWrites {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountingWrites {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            if *n > 0 {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn queued_frames_go_out_in_one_write() {
    let (a, b) = tokio::io::duplex(1 << 20);
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stream = CountingWrites {
        inner: a,
        writes: writes.clone(),
    };
    let mut ws = switchyard::WebSocket::from_raw(
        stream,
        Connection::new(Role::Server, Limits::default()),
        &[],
    );
    for i in 0..50 {
        ws.feed(Message::text(format!("message {i}")))
            .await
            .unwrap();
    }
    assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 0);
    ws.flush().await.unwrap();
    assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 1);
    let mut peer = common::RawPeer {
        io: b,
        conn: Connection::new(Role::Client, Limits::default()),
    };
    for i in 0..50 {
        assert_eq!(
            peer.recv().await,
            Some(Message::text(format!("message {i}")))
        );
    }
}

#[test]
fn types_can_cross_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    send::<switchyard::WebSocket<tokio::net::TcpStream>>();
    send::<switchyard::WebSocket<switchyard::MaybeTlsStream>>();
    send_sync::<switchyard::WsReader<tokio::net::TcpStream>>();
    send_sync::<switchyard::WsWriter<tokio::net::TcpStream>>();
    send_sync::<Error>();
    send::<switchyard::server::UpgradeFut>();
}

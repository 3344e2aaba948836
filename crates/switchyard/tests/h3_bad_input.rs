//! Bad HTTP/3 input to our RFC 9220 server, written byte by byte on raw
//! QUIC streams of a connection opened with `H3Connection` (which has
//! already exchanged SETTINGS).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::client::RootSource;
use switchyard::h3::{self, H3Connection};
use switchyard::server::AcceptConfig;
use switchyard::{ClientBuilder, Limits};

struct Server {
    port: u16,
    ca: std::path::PathBuf,
    accepted: Arc<AtomicUsize>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn server(cfg: AcceptConfig) -> Server {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let endpoint = h3::bind_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
    let port = endpoint.local_addr().unwrap().port();
    let ca = std::env::temp_dir().join(format!(
        "switchyard-h3-bad-{}-{port}.pem",
        std::process::id()
    ));
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(h3::serve(
        endpoint,
        cfg,
        move |_req, ws| {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(common::echo_data(ws));
        },
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        port,
        ca,
        accepted,
        _stop: stop,
    }
}

async fn connect(s: &Server) -> H3Connection {
    let b = ClientBuilder::new()
        .roots(RootSource::None)
        .add_ca_file(&s.ca);
    H3Connection::connect(&format!("wss://127.0.0.1:{}/", s.port), &b)
        .await
        .unwrap()
}

fn varint(out: &mut Vec<u8>, v: u64) {
    if v < 64 {
        out.push(v as u8);
    } else if v < 16384 {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes());
    } else {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes());
    }
}

fn frame(ty: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    varint(&mut out, ty);
    varint(&mut out, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// A QPACK field section of literals with literal names, no Huffman.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = vec![0, 0];
    for (n, v) in fields {
        // 001 N=0 H=0 + name length with a 3-bit prefix.
        if n.len() < 7 {
            out.push(0x20 | n.len() as u8);
        } else {
            out.push(0x27);
            let mut rest = n.len() - 7;
            while rest >= 128 {
                out.push((rest as u8 & 0x7f) | 0x80);
                rest >>= 7;
            }
            out.push(rest as u8);
        }
        out.extend_from_slice(n.as_bytes());
        assert!(v.len() < 127);
        out.push(v.len() as u8);
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// The full extended CONNECT head plus `extra` fields.
fn connect_block(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields: Vec<(&str, &str)> = vec![
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "https"),
        (":authority", "127.0.0.1"),
        (":path", "/"),
        ("sec-websocket-version", "13"),
    ];
    fields.extend_from_slice(extra);
    block(&fields)
}

/// Read the whole response stream: the raw bytes, or the reset code.
async fn read_all(mut recv: quinn::RecvStream) -> Result<Vec<u8>, String> {
    match tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(64 * 1024)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

/// The :status of a response as our server encodes it: an indexed static
/// line, or a literal with the static name reference 24 (`:status`).
fn status_of(bytes: &[u8]) -> u16 {
    assert_eq!(bytes[0], 0x01, "first frame is HEADERS: {bytes:?}");
    // Frame type, one-byte length, QPACK prefix (0, 0), then the line.
    let line = &bytes[4..];
    if line[0] & 0xc0 == 0xc0 {
        match line[0] & 0x3f {
            25 => 200,
            27 => 404,
            i => panic!("unexpected static index {i}"),
        }
    } else {
        // 0101 1111, 24 - 15 = 9, value length 3, three digits.
        assert_eq!(&line[..3], &[0x5f, 9, 3], "{bytes:?}");
        std::str::from_utf8(&line[3..6]).unwrap().parse().unwrap()
    }
}

#[tokio::test]
async fn malformed_requests_are_reset_with_h3_message_error() {
    let s = server(AcceptConfig::default()).await;
    let conn = connect(&s).await;
    let cases: Vec<Vec<u8>> = vec![
        // Connection-specific header.
        connect_block(&[("connection", "upgrade")]),
        // Uppercase header name.
        connect_block(&[("X-Upper", "1")]),
        // Pseudo-header after a regular one.
        connect_block(&[(":path", "/again")]),
    ];
    let mut all = cases;
    // :protocol on a GET.
    all.push(block(&[
        (":method", "GET"),
        (":protocol", "websocket"),
        (":scheme", "https"),
        (":authority", "x"),
        (":path", "/"),
    ]));
    // Extended CONNECT without :path.
    all.push(block(&[
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "https"),
        (":authority", "x"),
    ]));
    // Duplicate :method.
    all.push(block(&[(":method", "CONNECT"), (":method", "CONNECT")]));
    for (i, section) in all.into_iter().enumerate() {
        let (mut send, recv) = conn.quic().open_bi().await.unwrap();
        send.write_all(&frame(0x01, &section)).await.unwrap();
        let got = read_all(recv).await;
        let err = got.expect_err("expected a stream reset");
        assert!(
            err.ends_with("stream reset by peer: error 270"),
            "case {i}: expected reset H3_MESSAGE_ERROR (0x10e), got {err}"
        );
    }
    assert_eq!(s.accepted.load(Ordering::SeqCst), 0);
    // The connection survives stream errors.
    let (mut ws, _) = conn.websocket("/").await.unwrap();
    ws.send(switchyard::Message::text("ok")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
}

#[tokio::test]
async fn unknown_frames_before_headers_are_skipped() {
    let s = server(AcceptConfig::default()).await;
    let conn = connect(&s).await;
    let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
    let mut wire = frame(0x21, &[0xaa; 300]); // reserved (grease) type
    wire.extend(frame(0x01, &connect_block(&[])));
    send.write_all(&wire).await.unwrap();
    let mut head = [0u8; 5];
    recv.read_exact(&mut head).await.unwrap();
    assert_eq!(status_of(&head), 200);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn plain_get_is_404_and_connect_without_protocol_is_405() {
    let s = server(AcceptConfig::default()).await;
    let conn = connect(&s).await;
    let get = block(&[
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "x"),
        (":path", "/"),
    ]);
    let (mut send, recv) = conn.quic().open_bi().await.unwrap();
    send.write_all(&frame(0x01, &get)).await.unwrap();
    send.finish().unwrap();
    let got = read_all(recv).await.unwrap();
    assert_eq!(status_of(&got), 404);

    let plain_connect = block(&[(":method", "CONNECT"), (":authority", "example.com:443")]);
    let (mut send, recv) = conn.quic().open_bi().await.unwrap();
    send.write_all(&frame(0x01, &plain_connect)).await.unwrap();
    let got = read_all(recv).await.unwrap();
    assert_eq!(status_of(&got), 405);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oversized_header_section_gets_431() {
    let cfg = AcceptConfig::default().limits(Limits::default().max_head_bytes(512));
    let s = server(cfg).await;
    let conn = connect(&s).await;
    // Many fields, each small, over 512 bytes in total (RFC 9114 size).
    let extra: Vec<(&str, &str)> = (0..20).map(|_| ("x-pad", "0123456789")).collect();
    let (mut send, recv) = conn.quic().open_bi().await.unwrap();
    send.write_all(&frame(0x01, &connect_block(&extra)))
        .await
        .unwrap();
    let got = read_all(recv).await.unwrap();
    assert_eq!(status_of(&got), 431);
    assert_eq!(s.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn data_before_headers_closes_the_connection_with_frame_unexpected() {
    let s = server(AcceptConfig::default()).await;
    let conn = connect(&s).await;
    let (mut send, _recv) = conn.quic().open_bi().await.unwrap();
    send.write_all(&frame(0x00, b"hello")).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.quic().closed())
        .await
        .expect("the server did not close the connection");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(0x105))
        }
        other => panic!("expected H3_FRAME_UNEXPECTED, got {other:?}"),
    }
}

#[tokio::test]
async fn dynamic_table_reference_closes_with_qpack_decompression_failed() {
    let s = server(AcceptConfig::default()).await;
    let conn = connect(&s).await;
    let (mut send, _recv) = conn.quic().open_bi().await.unwrap();
    // Required Insert Count 1: we advertised a capacity of 0.
    send.write_all(&frame(0x01, &[0x01, 0x00, 0x80]))
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.quic().closed())
        .await
        .expect("the server did not close the connection");
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(0x200))
        }
        other => panic!("expected QPACK_DECOMPRESSION_FAILED, got {other:?}"),
    }
}

#[tokio::test]
async fn settings_frame_inside_a_websocket_stream_fails_it() {
    let s = server(AcceptConfig::default()).await;
    let conn = connect(&s).await;
    let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
    send.write_all(&frame(0x01, &connect_block(&[])))
        .await
        .unwrap();
    let mut head = [0u8; 5];
    recv.read_exact(&mut head).await.unwrap();
    assert_eq!(status_of(&head), 200);
    // A SETTINGS frame on a request stream is H3_FRAME_UNEXPECTED: the
    // WebSocket fails (the server's task ends and its stream with it).
    send.write_all(&frame(0x04, &[])).await.unwrap();
    let rest = read_all(recv).await;
    // The server ends its side: FIN (possibly after nothing) or a reset.
    assert!(
        rest.is_ok() || rest.as_ref().unwrap_err().contains("reset"),
        "{rest:?}"
    );
}

#[tokio::test]
async fn request_headers_must_arrive_within_the_handshake_timeout() {
    let cfg = AcceptConfig::default()
        .limits(Limits::default().handshake_timeout(Duration::from_millis(300)));
    let s = server(cfg).await;
    let conn = connect(&s).await;
    let (mut send, recv) = conn.quic().open_bi().await.unwrap();
    // Half a frame header, then nothing.
    send.write_all(&[0x01]).await.unwrap();
    let got = read_all(recv).await;
    let err = got.expect_err("expected a stream reset");
    assert!(
        err.ends_with("stream reset by peer: error 269"),
        "expected reset H3_REQUEST_INCOMPLETE (0x10d), got {err}"
    );
}

#[tokio::test]
async fn data_split_anywhere_and_grease_frames_between_still_make_the_message() {
    let s = server(AcceptConfig::default()).await;
    let conn = connect(&s).await;
    let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
    send.write_all(&frame(0x01, &connect_block(&[])))
        .await
        .unwrap();
    let mut head = [0u8; 5];
    recv.read_exact(&mut head).await.unwrap();
    assert_eq!(status_of(&head), 200);

    // A masked text frame "split h3", cut over three DATA frames with a
    // grease frame between, every byte written on its own.
    let mask = [9u8, 8, 7, 6];
    let text = b"split h3";
    let mut ws = vec![0x81, 0x80 | text.len() as u8];
    ws.extend_from_slice(&mask);
    ws.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let mut wire = frame(0x00, &ws[..1]);
    wire.extend(frame(0x2f, b"grease payload"));
    wire.extend(frame(0x00, &ws[1..7]));
    wire.extend(frame(0x00, &[])); // empty DATA is allowed
    wire.extend(frame(0x00, &ws[7..]));
    for b in wire {
        send.write_all(&[b]).await.unwrap();
        tokio::task::yield_now().await;
    }
    // The echo: one DATA frame (or more) carrying 0x81 len "split h3".
    let mut got = Vec::new();
    let want_len = 2 + text.len();
    while got.len() < want_len {
        let mut hdr = [0u8; 2];
        recv.read_exact(&mut hdr).await.unwrap();
        assert_eq!(hdr[0], 0x00, "DATA frame expected");
        let mut payload = vec![0u8; hdr[1] as usize];
        recv.read_exact(&mut payload).await.unwrap();
        got.extend(payload);
    }
    assert_eq!(&got[..2], &[0x81, text.len() as u8]);
    assert_eq!(&got[2..], text);
}

//! Our HTTP/3 client against hand-written servers on raw quinn: what a
//! broken or unwilling server sends, byte by byte.

use std::sync::Arc;
use std::time::Duration;

use switchyard::client::RootSource;
use switchyard::h3::{self, H3Connection};
use switchyard::{ClientBuilder, Deadline, Error, Limits};

/// A QUIC server speaking ALPN h3 whose connections are handed to `script`.
async fn raw_server<F, Fut>(script: F) -> (u16, std::path::PathBuf)
where
    F: Fn(quinn::Connection) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    // bind_endpoint only sets ALPN h3 on our config: reuse it for the raw server.
    let endpoint = h3::bind_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
    let port = endpoint.local_addr().unwrap().port();
    let ca = std::env::temp_dir().join(format!(
        "switchyard-h3-rawsrv-{}-{port}.pem",
        std::process::id()
    ));
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    script(conn).await;
                }
            });
        }
    });
    (port, ca)
}

fn builder(ca: &std::path::Path) -> ClientBuilder {
    ClientBuilder::new()
        .roots(RootSource::None)
        .add_ca_file(ca)
        .limits(Limits::default().handshake_timeout(Duration::from_secs(3)))
}

/// Open the control stream and send SETTINGS with these raw pairs.
async fn send_settings(conn: &quinn::Connection, pairs: &[u8]) -> quinn::SendStream {
    let mut control = conn.open_uni().await.unwrap();
    let mut out = vec![0x00, 0x04, pairs.len() as u8];
    out.extend_from_slice(pairs);
    control.write_all(&out).await.unwrap();
    control
}

/// Accept one request stream, skip its HEADERS, answer `response` bytes.
async fn answer_one(conn: &quinn::Connection, response: &[u8], finish: bool) {
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let mut buf = [0u8; 4096];
    let _ = recv.read(&mut buf).await;
    let _ = send.write_all(response).await;
    if finish {
        let _ = send.finish();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn server_without_extended_connect_setting_is_refused_before_any_request() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let (port, ca) = raw_server(move |conn| {
        let tx = tx.clone();
        async move {
            // QPACK_MAX_TABLE_CAPACITY = 0 only: no ENABLE_CONNECT_PROTOCOL.
            let _control = send_settings(&conn, &[0x01, 0x00]).await;
            // Report whether a request stream arrived within 2 s.
            let got = tokio::time::timeout(Duration::from_secs(2), conn.accept_bi()).await;
            let _ = tx.send(matches!(got, Ok(Ok(_))));
        }
    })
    .await;
    let url = format!("wss://127.0.0.1:{port}/");
    let conn = H3Connection::connect(&url, &builder(&ca)).await.unwrap();
    assert!(!conn.peer_settings().unwrap().enable_connect_protocol);
    let err = conn.websocket("/").await.unwrap_err();
    assert!(
        err.to_string().contains("SETTINGS_ENABLE_CONNECT_PROTOCOL"),
        "{err}"
    );
    assert_eq!(
        rx.recv().await,
        Some(false),
        "the client sent a request anyway"
    );
}

#[tokio::test]
async fn server_that_never_sends_settings_times_out() {
    let (port, ca) = raw_server(|conn| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(conn);
    })
    .await;
    let url = format!("wss://127.0.0.1:{port}/");
    let err = H3Connection::connect(&url, &builder(&ca))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout(Deadline::OpeningHandshake)),
        "{err:?}"
    );
}

#[tokio::test]
async fn first_control_frame_not_settings_closes_with_missing_settings() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<quinn::ConnectionError>();
    let (port, ca) = raw_server(move |conn| {
        let tx = tx.clone();
        async move {
            let mut control = conn.open_uni().await.unwrap();
            // GOAWAY (0x07) with id 0 before SETTINGS.
            control.write_all(&[0x00, 0x07, 0x01, 0x00]).await.unwrap();
            let _ = tx.send(conn.closed().await);
        }
    })
    .await;
    let url = format!("wss://127.0.0.1:{port}/");
    assert!(H3Connection::connect(&url, &builder(&ca)).await.is_err());
    match rx.recv().await {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(0x10a))
        }
        other => panic!("expected H3_MISSING_SETTINGS from the client, got {other:?}"),
    }
}

#[tokio::test]
async fn response_with_a_dynamic_table_reference_is_an_error() {
    let (port, ca) = raw_server(|conn| async move {
        let _control = send_settings(&conn, &[0x08, 0x01]).await;
        // HEADERS with Required Insert Count 1.
        answer_one(&conn, &[0x01, 0x03, 0x01, 0x00, 0x80], false).await;
    })
    .await;
    let url = format!("wss://127.0.0.1:{port}/");
    let conn = H3Connection::connect(&url, &builder(&ca)).await.unwrap();
    let err = conn.websocket("/").await.unwrap_err();
    assert!(err.to_string().contains("0x200"), "{err}");
}

#[tokio::test]
async fn refusal_body_is_reported() {
    let (port, ca) = raw_server(|conn| async move {
        let _control = send_settings(&conn, &[0x08, 0x01]).await;
        // :status 404 (static 27), then DATA "nope".
        let mut resp = vec![0x01, 0x03, 0x00, 0x00, 0xc0 | 27];
        resp.extend_from_slice(&[0x00, 0x04]);
        resp.extend_from_slice(b"nope");
        answer_one(&conn, &resp, true).await;
    })
    .await;
    let url = format!("wss://127.0.0.1:{port}/x");
    match h3::connect_h3(&url, &builder(&ca)).await {
        Err(Error::UpgradeRefused {
            status,
            body_preview,
            ..
        }) => {
            assert_eq!(status, http::StatusCode::NOT_FOUND);
            assert_eq!(body_preview, "nope");
        }
        other => panic!("expected 404, got {other:?}"),
    }
}

#[tokio::test]
async fn unoffered_subprotocol_in_200_is_a_handshake_error() {
    let (port, ca) = raw_server(|conn| async move {
        let _control = send_settings(&conn, &[0x08, 0x01]).await;
        // :status 200, sec-websocket-protocol: evil (literal name).
        let name = b"sec-websocket-protocol";
        let mut block = vec![0x00, 0x00, 0xc0 | 25, 0x27, (name.len() - 7) as u8];
        block.extend_from_slice(name);
        block.push(4);
        block.extend_from_slice(b"evil");
        let mut resp = vec![0x01, block.len() as u8];
        resp.extend_from_slice(&block);
        answer_one(&conn, &resp, false).await;
    })
    .await;
    let url = format!("wss://127.0.0.1:{port}/");
    let b = builder(&ca).subprotocols(["chat"]);
    match h3::connect_h3(&url, &b).await {
        Err(Error::Handshake(e)) => assert!(e.to_string().contains("evil"), "{e}"),
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_the_connection_and_its_websockets_closes_quic() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<quinn::ConnectionError>();
    let (port, ca) = raw_server(move |conn| {
        let tx = tx.clone();
        async move {
            let _control = send_settings(&conn, &[0x08, 0x01]).await;
            // Accept one extended CONNECT and answer 200.
            if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let mut buf = [0u8; 4096];
                let _ = recv.read(&mut buf).await;
                let _ = send.write_all(&[0x01, 0x03, 0x00, 0x00, 0xc0 | 25]).await;
                let _ = tx.send(conn.closed().await);
                drop((send, recv));
            }
        }
    })
    .await;
    let url = format!("wss://127.0.0.1:{port}/");
    let conn = H3Connection::connect(&url, &builder(&ca).no_deflate())
        .await
        .unwrap();
    let (ws, _) = conn.websocket("/").await.unwrap();
    drop(conn);
    // The WebSocket alone keeps the connection open.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "the connection closed while a WebSocket still used it"
    );
    drop(ws);
    let reason = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the connection stayed open after everything was dropped");
    match reason {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            assert_eq!(c.error_code, quinn::VarInt::from_u32(0x100))
        }
        other => panic!("expected H3_NO_ERROR, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_goaway_closes_with_id_or_frame_error() {
    // After SETTINGS (ENABLE_CONNECT_PROTOCOL = 1): the GOAWAY frames sent,
    // and the error code the client must close with (RFC 9114 §5.2, §7.2.6).
    let cases: [(&'static [u8], u32); 3] = [
        // Stream ID 2 is not a client-initiated bidirectional stream.
        (&[0x07, 0x01, 0x02], 0x108),
        // 8, then 12: a GOAWAY may not raise the ID.
        (&[0x07, 0x01, 0x08, 0x07, 0x01, 0x0c], 0x108),
        // Two varints where one belongs.
        (&[0x07, 0x02, 0x00, 0x00], 0x106),
    ];
    for (frames, code) in cases {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<quinn::ConnectionError>();
        let (port, ca) = raw_server(move |conn| {
            let tx = tx.clone();
            async move {
                let mut control = send_settings(&conn, &[0x08, 0x01]).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                control.write_all(frames).await.unwrap();
                let _ = tx.send(conn.closed().await);
            }
        })
        .await;
        let url = format!("wss://127.0.0.1:{port}/");
        let _conn = H3Connection::connect(&url, &builder(&ca)).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(quinn::ConnectionError::ApplicationClosed(c))) => {
                assert_eq!(c.error_code, quinn::VarInt::from_u32(code), "{frames:?}")
            }
            other => panic!("{frames:?}: expected error {code:#x} from the client, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn after_goaway_the_client_opens_no_request() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let (port, ca) = raw_server(move |conn| {
        let tx = tx.clone();
        async move {
            let mut control = send_settings(&conn, &[0x08, 0x01]).await;
            control.write_all(&[0x07, 0x01, 0x00]).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(2), conn.accept_bi()).await;
            let _ = tx.send(matches!(got, Ok(Ok(_))));
        }
    })
    .await;
    let url = format!("wss://127.0.0.1:{port}/");
    let conn = H3Connection::connect(&url, &builder(&ca)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.going_away().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "GOAWAY not seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(conn.going_away(), Some(0));
    let err = conn.websocket("/").await.unwrap_err();
    assert!(err.to_string().contains("GOAWAY"), "{err}");
    assert_eq!(
        rx.recv().await,
        Some(false),
        "the client sent a request anyway"
    );
}

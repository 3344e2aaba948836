//! Interop: aioquic (Python, PyPI) as the HTTP/3 client of our RFC 9220
//! server, and as the server for our client. Runs the scripts in
//! `tests/interop/` with the interpreter named by `SWITCHYARD_PYTHON`, by
//! default the repository's `.venv/bin/python`, which
//! `scripts/install-test-deps.sh` creates with `aioquic` installed. A missing
//! interpreter or package fails the test: it is a test dependency, not an
//! option.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::h3;
use switchyard::server::AcceptConfig;

/// The Python to run the aioquic scripts with; panics with the fix when it is
/// missing or lacks aioquic.
fn python_with_aioquic() -> std::ffi::OsString {
    let python = std::env::var_os("SWITCHYARD_PYTHON").unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../.venv/bin/python")
            .into_os_string()
    });
    let ok = std::process::Command::new(&python)
        .args(["-c", "import aioquic"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{python:?} cannot import aioquic: run scripts/install-test-deps.sh (or set SWITCHYARD_PYTHON)"
    );
    python
}

#[tokio::test]
async fn aioquic_client_echoes_through_our_h3_server() {
    let python = python_with_aioquic();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/h3_aioquic.py");

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
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
    let ca = std::env::temp_dir().join(format!("switchyard-h3-aioquic-{port}.pem"));
    std::fs::write(&ca, cert.cert.pem()).unwrap();

    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(h3::serve(
        endpoint,
        AcceptConfig::default(),
        move |req, ws| {
            assert_eq!(req.uri().path(), "/interop");
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(common::echo_data(ws));
        },
        async move {
            let _ = stopped.await;
        },
    ));

    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(&python)
            .arg(&script)
            .args(["127.0.0.1", &port.to_string(), "--path", "/interop"])
            .arg("--cafile")
            .arg(&ca)
            .output(),
    )
    .await
    .expect("the aioquic client did not finish in 30 s")
    .expect("cannot run SWITCHYARD_PYTHON");
    let _ = std::fs::remove_file(&ca);
    let _ = stop.send(());
    let _ = server.await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "aioquic client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("ok: WebSocket over HTTP/3"), "{stdout}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// Our client (`H3Connection`, `connect_h3`) against an aioquic server
/// (`tests/interop/h3_aioquic_server.py`): its QPACK encoder Huffman-codes
/// the `server` header, so this also checks our decoder on real input.
#[tokio::test]
async fn our_client_echoes_through_an_aioquic_server() {
    use switchyard::client::RootSource;
    use switchyard::{ClientBuilder, CloseCode, Error, Message};
    use tokio::io::AsyncBufReadExt;

    let python = python_with_aioquic();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/h3_aioquic_server.py");
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir =
        std::env::temp_dir().join(format!("switchyard-h3-aioquic-srv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();

    let mut child = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&cert_path)
        .arg(&key_path)
        .args(["--lifetime", "30"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot run SWITCHYARD_PYTHON");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the aioquic server did not start in 20 s")
        .unwrap()
        .expect("the aioquic server exited before listening");
    let port: u16 = line
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));

    let builder = ClientBuilder::new()
        .roots(RootSource::None)
        .add_ca_file(&cert_path);
    let url = format!("wss://127.0.0.1:{port}/echo");
    let (mut ws, resp) = h3::connect_h3(&url, &builder).await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    assert_eq!(resp.headers()["server"], "aioquic-interop-echo");
    assert!(ws.negotiated().deflate.is_none());
    ws.send(Message::text("hello aioquic")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello aioquic")
    );
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    ws.send(Message::binary(blob.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(blob));

    // A second WebSocket on a new connection, and a refused :protocol.
    let conn = h3::H3Connection::connect(&url, &builder).await.unwrap();
    let (mut ws2, _) = conn.websocket("/two").await.unwrap();
    ws2.send(Message::text("two")).await.unwrap();
    assert_eq!(ws2.next().await.unwrap().unwrap(), Message::text("two"));
    match conn
        .extended_connect("connect-udp", "/", &http::HeaderMap::new())
        .await
    {
        Err(Error::UpgradeRefused { status, .. }) => {
            assert_eq!(status, http::StatusCode::NOT_IMPLEMENTED)
        }
        other => panic!("expected 501 from aioquic, got {other:?}"),
    }

    ws.close(CloseCode::NORMAL, "done").await.unwrap();
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}

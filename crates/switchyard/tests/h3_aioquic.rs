//! Interop: aioquic (Python, PyPI) as the HTTP/3 client of our RFC 9220
//! server. Runs `tests/interop/h3_aioquic.py` with the interpreter named by
//! `SWITCHYARD_PYTHON` (a venv with `aioquic` installed); without it the
//! test says so and does nothing.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::h3;
use switchyard::server::AcceptConfig;

#[tokio::test]
async fn aioquic_client_echoes_through_our_h3_server() {
    let Some(python) = std::env::var_os("SWITCHYARD_PYTHON") else {
        eprintln!("SWITCHYARD_PYTHON not set: aioquic interop not run");
        return;
    };
    if !Path::new(&python).exists() {
        eprintln!("SWITCHYARD_PYTHON={python:?} does not exist: aioquic interop not run");
        return;
    }
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
        move |req, mut ws| {
            assert_eq!(req.uri().path(), "/interop");
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_data() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
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

//! A reload applies `[[listener]]` changes, over real sockets: an added
//! listener accepts, a removed one refuses new connections while a
//! WebSocket opened on it keeps working, a certificate swapped on disk is
//! what new TLS (and QUIC) clients get, and broken certificate files reject
//! the whole reload (422 from `POST /reload`) with the old pair still served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, ServerName};
use switchyard::Message;
use switchyard_gateway::{Gateway, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sy-reload-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn echo_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let cfg = switchyard::server::AcceptConfig::default();
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

/// A free port on `ip` (bound, then released).
fn free_port(ip: &str) -> SocketAddr {
    std::net::TcpListener::bind(format!("{ip}:0"))
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Running {
    gw: Arc<Gateway>,
    addrs: Vec<SocketAddr>,
    admin: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.task.abort();
    }
}

async fn start(file: &Path) -> Running {
    let gw = Gateway::load(file.to_path_buf()).unwrap();
    let server = Server::bind(gw.clone()).await.unwrap();
    let addrs = server.addresses().into_iter().map(|a| a.tcp).collect();
    let admin = server.admin_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        gw,
        addrs,
        admin,
        stop: Some(tx),
        task,
    }
}

async fn echo_once<S>(ws: &mut switchyard::WebSocket<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no echo within 5 s")
        .expect("stream ended")
        .expect("error");
    assert_eq!(got, Message::text(text));
}

#[tokio::test]
async fn reload_starts_added_listeners_and_stops_removed_ones() {
    let back = echo_backend().await;
    let dir = temp_dir("listeners");
    let file = dir.join("gw.toml");
    let routes = format!(
        "[[upstream]]\nname = \"back\"\nservers = [\"ws://{back}\"]\n\
         [[route]]\npath = \"/ws\"\nupstream = \"back\"\n"
    );
    std::fs::write(
        &file,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[listener]]\naddress = \"127.0.0.2:0\"\n{routes}"
        ),
    )
    .unwrap();
    let run = start(&file).await;
    let (kept, removed) = (run.addrs[0], run.addrs[1]);
    assert_eq!(removed.ip().to_string(), "127.0.0.2");

    // A WebSocket through the listener that the reload removes.
    let (mut old_ws, _) = switchyard::connect(&format!("ws://{removed}/ws"))
        .await
        .unwrap();
    echo_once(&mut old_ws, "before").await;

    let added = free_port("127.0.0.3");
    std::fs::write(
        &file,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[listener]]\naddress = \"{added}\"\n{routes}"
        ),
    )
    .unwrap();
    assert_eq!(run.gw.reload().unwrap(), 2);

    // The added listener accepts and proxies.
    let (mut new_ws, _) = switchyard::connect(&format!("ws://{added}/ws"))
        .await
        .expect("the listener added by the reload accepts");
    echo_once(&mut new_ws, "added").await;

    // The removed one refuses new connections (within a moment: its
    // accept loop sees the change) ...
    let start = Instant::now();
    loop {
        match TcpStream::connect(removed).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => {
                assert!(
                    start.elapsed() < Duration::from_secs(2),
                    "{removed} still accepts 2 s after the reload"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // ... while the WebSocket opened on it goes on.
    echo_once(&mut old_ws, "still open").await;
    // The kept listener is untouched.
    let (mut kept_ws, _) = switchyard::connect(&format!("ws://{kept}/ws"))
        .await
        .unwrap();
    echo_once(&mut kept_ws, "kept").await;

    // Re-applying the same file changes nothing and keeps them all.
    assert_eq!(run.gw.reload().unwrap(), 3);
    echo_once(&mut old_ws, "after a second reload").await;
    let (mut again, _) = switchyard::connect(&format!("ws://{added}/ws"))
        .await
        .unwrap();
    echo_once(&mut again, "again").await;

    // An added listener whose port is taken rejects the whole reload.
    let taken = std::net::TcpListener::bind("127.0.0.4:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    std::fs::write(
        &file,
        format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[listener]]\naddress = \"{taken_addr}\"\n{routes}"
        ),
    )
    .unwrap();
    let err = run.gw.reload().unwrap_err().to_string();
    assert!(err.contains(&taken_addr.to_string()), "{err}");
    assert_eq!(run.gw.live().generation, 3, "the old config stays");
    // ... and so the listener it would have removed still accepts.
    let (mut still, _) = switchyard::connect(&format!("ws://{added}/ws"))
        .await
        .unwrap();
    echo_once(&mut still, "still there").await;
    drop(taken);
    let _ = std::fs::remove_dir_all(dir);
}

/// (cert PEM, key PEM, DER) of a new self-signed pair for 127.0.0.1.
fn new_pair() -> (String, String, CertificateDer<'static>) {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (
        ck.cert.pem(),
        ck.key_pair.serialize_pem(),
        ck.cert.der().clone(),
    )
}

/// The SHA-256 fingerprint of the certificate a new TLS client gets.
async fn served_fingerprint(addr: SocketAddr, trusted: &[&CertificateDer<'static>]) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add((*c).clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .unwrap()
        .expect("TLS handshake");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    switchyard_gateway::tls::fingerprint_sha256(&leaf)
}

async fn post_reload(admin: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"POST /reload HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text[9..12].parse().unwrap();
    (status, text)
}

#[tokio::test]
async fn reload_serves_a_new_certificate_and_rejects_broken_files() {
    let dir = temp_dir("certs");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (c1, k1, der1) = new_pair();
    std::fs::write(&cert, &c1).unwrap();
    std::fs::write(&key, &k1).unwrap();
    let file = dir.join("gw.toml");
    let text = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"h1\", \"h3\"]\n\
         tls = {{ cert = {cert:?}, key = {key:?} }}\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[route]]\npath = \"/\"\napp = \"echo\"\n"
    );
    std::fs::write(&file, &text).unwrap();
    let run = start(&file).await;
    let addr = run.addrs[0];
    let admin = run.admin.unwrap();
    let (c2, k2, der2) = new_pair();
    let (fp1, fp2) = (
        switchyard_gateway::tls::fingerprint_sha256(&der1),
        switchyard_gateway::tls::fingerprint_sha256(&der2),
    );
    assert_eq!(served_fingerprint(addr, &[&der1, &der2]).await, fp1);

    // New files at the same paths, then POST /reload.
    std::fs::write(&cert, &c2).unwrap();
    std::fs::write(&key, &k2).unwrap();
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served_fingerprint(addr, &[&der1, &der2]).await, fp2);
    // QUIC (HTTP/3) on the same port gets the new pair too: a client that
    // trusts only the new certificate connects.
    let only_new = dir.join("only-new.pem");
    std::fs::write(&only_new, &c2).unwrap();
    let builder = switchyard::ClientBuilder::new().add_ca_file(&only_new);
    let url = format!("wss://127.0.0.1:{}/", addr.port());
    let (mut ws, _) = switchyard::h3::connect_h3(&url, &builder)
        .await
        .expect("HTTP/3 with the new certificate");
    echo_once(&mut ws, "h3 after the swap").await;
    drop(ws);

    // A broken certificate file: the whole reload is rejected with the
    // reason, and the pair served stays the last good one.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("cert.pem"),
        "the reason names the file: {body}"
    );
    assert_eq!(served_fingerprint(addr, &[&der1, &der2]).await, fp2);
    // A key that does not belong to the certificate: rejected as well.
    std::fs::write(&cert, &c2).unwrap();
    std::fs::write(&key, &k1).unwrap();
    let (status, body) = post_reload(admin).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(served_fingerprint(addr, &[&der1, &der2]).await, fp2);
    assert_eq!(run.gw.live().generation, 2);
    drop(run);
    let _ = std::fs::remove_dir_all(dir);
}

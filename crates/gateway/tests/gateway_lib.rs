//! The gateway (config + proxy + front) through the library, over real
//! sockets on 127.0.0.1: our own server as the echo backend, a gateway
//! built from TOML in front of it, the admin listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::{ClientBuilder, CloseCode, Error, Message};
use switchyard_gateway::config::{Config, Overrides};
use switchyard_gateway::{Gateway, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Our own server (echo at /echo) on a free port.
async fn echo_backend() -> SocketAddr {
    let mut flags = Overrides::new();
    flags.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let cfg = flags.apply(Config::embedded_default()).unwrap();
    let server = Server::bind(Gateway::new(cfg, None).unwrap())
        .await
        .unwrap();
    let addr = server.addresses()[0].tcp;
    tokio::spawn(server.run(std::future::pending()));
    addr
}

/// An echo backend that accepts WebSocket on any path.
async fn any_path_backend() -> SocketAddr {
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

fn config_text(backend: SocketAddr, route_path: &str, policy: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"back\"\nservers = [\"ws://{backend}\"]\n\
         [[route]]\npath = \"{route_path}\"\nupstream = \"back\"\n\
         [route.policy]\ndrain_timeout = \"2s\"\n{policy}\n\
         [[route]]\npath = \"/\"\napp = \"index\"\n"
    )
}

struct Running {
    addr: SocketAddr,
    admin: SocketAddr,
    gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .expect("drain finished")
            .unwrap();
    }
}

async fn start(gateway: Arc<Gateway>) -> Running {
    let server = Server::bind(gateway.clone()).await.unwrap();
    let addr = server.addresses()[0].tcp;
    let admin = server.admin_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        admin,
        gateway,
        stop: Some(tx),
        done,
    }
}

async fn start_text(text: &str) -> Running {
    let cfg = Config::from_toml_str(text, "gw.toml").unwrap();
    start(Gateway::new(cfg, None).unwrap()).await
}

async fn http(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("answer")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// The admin listener's `/status.json`.
async fn status_json(admin: SocketAddr) -> serde_json::Value {
    let answer = get(admin, "/status.json").await;
    let body = answer.split_once("\r\n\r\n").map_or("", |x| x.1);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

async fn get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
    )
    .await
}

async fn roundtrip(ws: &mut switchyard::WebSocket<switchyard::client::MaybeTlsStream>, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("open")
        .expect("no error");
    assert_eq!(got, Message::text(text));
}

#[tokio::test]
async fn echo_is_proxied_and_shows_in_metrics_and_status() {
    let back = echo_backend().await;
    let gw = start_text(&config_text(back, "/echo", "")).await;
    let (mut ws, resp) = switchyard::connect(&format!("ws://{}/echo", gw.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..10 {
        roundtrip(&mut ws, &format!("hello {i}")).await;
    }
    // /status.json lists the live connection with its upstream group.
    let status = status_json(gw.admin).await;
    assert_eq!(status["live_connections"], 1, "{status}");
    assert_eq!(status["routes"][0]["target"], "upstream back", "{status}");
    assert_eq!(
        status["connections"][0]["target"], "upstream back",
        "{status}"
    );
    assert_eq!(status["connections"][0]["protocol"], "h1", "{status}");
    let metrics = get(gw.admin, "/metrics").await;
    assert!(
        metrics.contains(
            "switchyard_open_connections{route=\"/echo\",protocol=\"h1\",transport=\"websocket\"} 1"
        ),
        "{metrics}"
    );
    ws.close(CloseCode::NORMAL, "bye").await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    // Counters moved once the tunnel ended.
    let mut ok = false;
    for _ in 0..50 {
        let m = gw.gateway.metrics();
        if m.upgrade_attempts("switched", "switched") == 1
            && m.messages(
                "/echo",
                switchyard_gateway::metrics::Direction::ClientToUpstream,
            ) >= 10
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "{}", gw.gateway.metrics().render());
    let metrics = get(gw.admin, "/metrics").await;
    assert!(
        metrics.contains(
            "switchyard_upgrade_attempts_total{route=\"/echo\",result=\"switched\",reason=\"switched\"} 1"
        ),
        "{metrics}"
    );
    assert_eq!(status_json(gw.admin).await["live_connections"], 0);
    // The built-in app route still answers, unknown paths are 404.
    assert!(get(gw.addr, "/").await.starts_with("HTTP/1.1 200"));
    gw.shutdown().await;
}

#[tokio::test]
async fn origin_not_allowed_is_403() {
    let back = echo_backend().await;
    let gw = start_text(&config_text(
        back,
        "/echo",
        "allowed_origins = [\"https://app.example\"]",
    ))
    .await;
    let url = format!("ws://{}/echo", gw.addr);
    let err = ClientBuilder::new()
        .origin("https://evil.example")
        .connect(&url)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::UpgradeRefused { status, .. } if status == 403),
        "{err}"
    );
    let (ws, _) = ClientBuilder::new()
        .origin("https://app.example")
        .connect(&url)
        .await
        .unwrap();
    drop(ws);
    gw.shutdown().await;
}

#[tokio::test]
async fn per_ip_cap_is_429_with_retry_after() {
    let back = echo_backend().await;
    let gw = start_text(&config_text(back, "/echo", "max_connections_per_ip = 1")).await;
    let url = format!("ws://{}/echo", gw.addr);
    let (mut first, _) = switchyard::connect(&url).await.unwrap();
    roundtrip(&mut first, "x").await;
    match switchyard::connect(&url).await.unwrap_err() {
        Error::UpgradeRefused {
            status, response, ..
        } => {
            assert_eq!(status, 429);
            assert!(response.headers().contains_key("retry-after"));
        }
        e => panic!("{e}"),
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn require_upgrade_is_426() {
    let back = echo_backend().await;
    let gw = start_text(&config_text(back, "/echo", "require_upgrade = true")).await;
    let answer = get(gw.addr, "/echo").await;
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("upgrade: websocket"),
        "{answer}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn drain_closes_every_proxied_websocket_with_1001() {
    let back = echo_backend().await;
    let gw = start_text(&config_text(back, "/echo", "")).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let (mut ws, _) = switchyard::connect(&format!("ws://{}/echo", gw.addr))
            .await
            .unwrap();
        roundtrip(&mut ws, &format!("c{i}")).await;
        clients.push(ws);
    }
    let addr = gw.addr;
    let drain = tokio::spawn(gw.shutdown());
    for mut ws in clients {
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("close in time");
        match got {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::GOING_AWAY),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    drain.await.unwrap();
    // No longer accepting.
    assert!(TcpStream::connect(addr).await.is_err());
}

fn write(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn reload_changes_routes_for_new_connections_only_and_rejects_a_broken_file() {
    let back = any_path_backend().await;
    let dir = std::env::temp_dir().join(format!("sy-gwlib-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    write(&file, &config_text(back, "/a", ""));
    let gw = start(Gateway::load(file.clone()).unwrap()).await;
    let (mut old, _) = switchyard::connect(&format!("ws://{}/a", gw.addr))
        .await
        .unwrap();
    roundtrip(&mut old, "before").await;

    // The route moves from /a to /b.
    let moved = config_text(back, "/b", "");
    write(&file, &moved);
    assert_eq!(gw.gateway.reload().unwrap(), 2);
    roundtrip(&mut old, "after reload").await;
    // A new connection to /a: no route proxies it any more (the index app on
    // "/" has no WebSocket): refused.
    let err = switchyard::connect(&format!("ws://{}/a", gw.addr))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UpgradeRefused { .. }), "{err}");
    // /b follows the new route.
    let (mut new, _) = switchyard::connect(&format!("ws://{}/b", gw.addr))
        .await
        .unwrap();
    roundtrip(&mut new, "new route").await;

    // A broken file is rejected; the old config stays in force.
    write(&file, &format!("{moved}\nunknown_key = 1\n"));
    let err = gw.gateway.reload().unwrap_err().to_string();
    assert!(err.contains("unknown_key"), "{err}");
    let answer = http(
        gw.admin,
        "POST /reload HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 422"), "{answer}");
    assert!(answer.contains("unknown_key"), "{answer}");
    assert_eq!(gw.gateway.live().generation, 2);
    roundtrip(&mut old, "still").await;
    roundtrip(&mut new, "still").await;
    let _ = std::fs::remove_dir_all(&dir);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_dropped_connections_across_five_reloads_under_load() {
    let back = echo_backend().await;
    let dir = std::env::temp_dir().join(format!("sy-gwlib-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gw.toml");
    write(&file, &config_text(back, "/echo", ""));
    let gw = start(Gateway::load(file.clone()).unwrap()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..8 {
        let url = format!("ws://{}/echo", gw.addr);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = switchyard::connect(&url).await.unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("client {c} message {n}");
                ws.send(Message::text(text.clone())).await.unwrap();
                match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                    Ok(Some(Ok(m))) => assert_eq!(m, Message::text(text)),
                    other => panic!("client {c} lost its connection: {other:?}"),
                }
                n += 1;
            }
            ws.close(CloseCode::NORMAL, "done").await.unwrap();
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..5 {
        // Each reload changes something (the per-IP cap) and is applied.
        write(
            &file,
            &config_text(
                back,
                "/echo",
                &format!("max_connections_per_ip = {}", 100 + i),
            ),
        );
        assert_eq!(gw.gateway.reload().unwrap(), 2 + i);
        // New connections keep working during the reloads too.
        let (mut extra, _) = switchyard::connect(&format!("ws://{}/echo", gw.addr))
            .await
            .unwrap();
        roundtrip(&mut extra, "extra").await;
        extra.close(CloseCode::NORMAL, "").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let n = t.await.unwrap();
        assert!(n > 5, "each client kept exchanging messages: {n}");
    }
    assert_eq!(gw.gateway.reload_count(), 5);
    let _ = std::fs::remove_dir_all(&dir);
    gw.shutdown().await;
}

#[tokio::test]
async fn per_route_cap_is_503_with_retry_after_and_unknown_paths_are_404() {
    let back = echo_backend().await;
    let gw = start_text(&config_text(back, "/echo", "max_connections = 1")).await;
    let url = format!("ws://{}/echo", gw.addr);
    let (mut first, _) = switchyard::connect(&url).await.unwrap();
    roundtrip(&mut first, "x").await;
    match switchyard::connect(&url).await.unwrap_err() {
        Error::UpgradeRefused {
            status, response, ..
        } => {
            assert_eq!(status, 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        e => panic!("{e}"),
    }
    // /x falls to the index app on "/" (a prefix of every path): the
    // WebSocket request gets the page, never a proxied upgrade.
    let err = switchyard::connect(&format!("ws://{}/x", gw.addr))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UpgradeRefused { .. }), "{err}");
    assert_eq!(
        gw.gateway
            .metrics()
            .upgrade_attempts("refused", "route_full"),
        1
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn explicit_transparent_tunnels_are_cut_at_drain_without_a_close_frame() {
    let back = echo_backend().await;
    let gw = start_text(&config_text(back, "/echo", "tunnel = \"transparent\"")).await;
    let (mut ws, _) = switchyard::connect(&format!("ws://{}/echo", gw.addr))
        .await
        .unwrap();
    roundtrip(&mut ws, "raw").await;
    let drain = tokio::spawn(gw.shutdown());
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("ended in time");
    assert!(
        !matches!(got, Some(Ok(Message::Close(_)))),
        "a transparent tunnel cannot inject a close frame: {got:?}"
    );
    drain.await.unwrap();
}

/// A backend that answers every request 200, ignoring `Upgrade`.
async fn ignores_upgrade_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tcp.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                    )
                    .await;
            });
        }
    });
    addr
}

/// The head of the answer to `req` (the connection may stay open).
async fn response_head(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn failed_upgrades_are_explained_in_status_failures() {
    let plain = ignores_upgrade_backend().await;
    let gw = start_text(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"plain\"\nservers = [\"ws://{plain}\"]\n\
         [[route]]\npath = \"/ignores\"\nupstream = \"plain\"\n\
         [[route]]\npath = \"/echo\"\napp = \"echo\"\n\
         [route.policy]\nallowed_origins = [\"https://good.example\"]\n"
    ))
    .await;
    let upgrade = |path: &str, connection: &str, origin: &str, version: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: {connection}\r\n\
             origin: {origin}\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             sec-websocket-version: {version}\r\n\r\n"
        )
    };
    let good = "https://good.example";
    // (request, status, reason, words of the explanation)
    let cases = [
        (
            upgrade("/echo", "Upgrade", "https://x.example", "13"),
            "HTTP/1.1 403",
            "origin",
            "Origin https://x.example is not allowed",
        ),
        (
            upgrade("/ignores", "Upgrade", good, "13"),
            "HTTP/1.1 200",
            "upstream_status",
            "backend answered 200 OK: it ignored Upgrade",
        ),
        (
            upgrade("/echo", "keep-alive", good, "13"),
            "HTTP/1.1 426",
            "upgrade_required",
            "Connection header without upgrade (\"keep-alive\"): a proxy in front is stripping it",
        ),
        (
            upgrade("/echo", "Upgrade", good, "8"),
            "HTTP/1.1 426",
            "handshake",
            "version 8: client too old",
        ),
    ];
    for (req, status, _, _) in &cases {
        let answer = response_head(gw.addr, req).await;
        assert!(answer.starts_with(status), "{req}\n->\n{answer}");
    }
    let answer = get(gw.admin, "/status/failures").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    let recent = json["recent"].as_array().unwrap();
    assert_eq!(recent.len(), cases.len(), "{json:#}");
    // Newest first.
    for ((_, _, reason, words), failure) in cases.iter().rev().zip(recent) {
        assert_eq!(failure["reason"], *reason, "{failure:#}");
        assert_eq!(json["counts"][reason], 1, "{json:#}");
        let explanation = failure["explanation"].as_str().unwrap();
        assert!(explanation.contains(words), "{explanation}");
        assert_eq!(failure["request"]["upgrade"], "websocket");
        assert_eq!(failure["protocol"], "h1");
        assert!(failure["client"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    }
    assert_eq!(recent[0]["request"]["sec_websocket_version"], "8");
    assert_eq!(recent[3]["route"], "/echo");
    assert_eq!(recent[2]["route"], "/ignores");
    gw.shutdown().await;
}

/// Every kind of switched connection counts its messages and bytes while
/// it relays (not when it ends), the pings the gateway sends give round
/// trips per route, and the upgrade attempts are counted per route (the
/// unmatched ones under `-`): in `/metrics` and `/status.json`.
#[tokio::test]
async fn routes_count_traffic_pings_and_upgrades_while_connections_live() {
    let back = any_path_backend().await;
    let gw = start_text(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"back\"\nservers = [\"ws://{back}\"]\n\
         [[route]]\npath = \"/frames\"\nupstream = \"back\"\n\
         [route.policy]\ntunnel = \"frames\"\nping_interval = \"200ms\"\n\
         [[route]]\npath = \"/raw\"\nupstream = \"back\"\n\
         [route.policy]\ntunnel = \"transparent\"\n\
         [[route]]\npath = \"/app\"\napp = \"echo\"\n\
         [route.policy]\nping_interval = \"200ms\"\n"
    ))
    .await;
    let mut clients = Vec::new();
    for route in ["/frames", "/raw", "/app"] {
        let (mut ws, _) = ClientBuilder::new()
            .no_deflate()
            .connect(&format!("ws://{}{route}", gw.addr))
            .await
            .unwrap();
        for _ in 0..3 {
            roundtrip(&mut ws, "hello").await;
        }
        clients.push(ws);
    }
    let m = gw.gateway.metrics();
    use switchyard_gateway::metrics::{Direction::*, PingSide};
    // The probes need answers: the clients answer pings while read.
    let pinged = |m: &switchyard_gateway::metrics::Metrics| {
        m.ping_rtt_count("/app", PingSide::Client) >= 2
            && m.ping_rtt_count("/frames", PingSide::Client) >= 2
            && m.ping_rtt_count("/frames", PingSide::Upstream) >= 2
    };
    for _ in 0..100 {
        if pinged(m) {
            break;
        }
        for ws in &mut clients {
            let r = tokio::time::timeout(Duration::from_millis(20), ws.next()).await;
            assert!(
                matches!(r, Err(_) | Ok(Some(Ok(Message::Ping(_))))),
                "{r:?}"
            );
        }
    }
    assert!(pinged(m), "{}", m.render());
    // Counted while the connections are open: payload bytes for messages
    // (frame-aware, app), frame bytes for the transparent tunnel (a
    // masked 5-byte frame is 11 bytes, the answer 7).
    let metrics = get(gw.admin, "/metrics").await;
    for (route, dir, messages, bytes) in [
        ("/frames", "client_to_upstream", 3, 15),
        ("/frames", "upstream_to_client", 3, 15),
        ("/app", "client_to_upstream", 3, 15),
        ("/app", "upstream_to_client", 3, 15),
        ("/raw", "client_to_upstream", 0, 33),
        ("/raw", "upstream_to_client", 0, 21),
    ] {
        let labels = format!("{{route=\"{route}\",direction=\"{dir}\"}}");
        let line = format!("switchyard_tunnel_messages_total{labels} {messages}\n");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
        let line = format!("switchyard_tunnel_bytes_total{labels} {bytes}\n");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    for route in ["/frames", "/raw", "/app"] {
        let line = format!(
            "switchyard_open_connections{{route=\"{route}\",protocol=\"h1\",transport=\"websocket\"}} 1\n"
        );
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    assert!(
        metrics.contains("switchyard_ping_rtt_seconds_count{route=\"/raw\",side=\"client\"} 0\n"),
        "a transparent tunnel sends no ping:\n{metrics}"
    );
    // A refused attempt on /app, one on no route.
    let refused = "GET /app HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                   sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 8\r\n\r\n";
    assert!(response_head(gw.addr, refused)
        .await
        .starts_with("HTTP/1.1 426"));
    let nowhere =
        "GET /nowhere HTTP/1.1\r\nhost: x\r\nupgrade: bad@token\r\nconnection: upgrade\r\n\r\n";
    assert!(response_head(gw.addr, nowhere)
        .await
        .starts_with("HTTP/1.1 400"));
    // A well-formed upgrade to a path no route serves, and a plain request
    // there: only the upgrade is an attempt.
    let unrouted = "GET /nowhere HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                    sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";
    assert!(response_head(gw.addr, unrouted)
        .await
        .starts_with("HTTP/1.1 404"));
    assert!(
        response_head(gw.addr, "GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404")
    );
    let metrics = get(gw.admin, "/metrics").await;
    for line in [
        "switchyard_upgrade_attempts_total{route=\"/app\",result=\"switched\",reason=\"switched\"} 1\n",
        "switchyard_upgrade_attempts_total{route=\"/app\",result=\"refused\",reason=\"handshake\"} 1\n",
        "switchyard_upgrade_attempts_total{route=\"/raw\",result=\"switched\",reason=\"switched\"} 1\n",
        "switchyard_upgrade_attempts_total{route=\"-\",result=\"refused\",reason=\"bad_upgrade\"} 1\n",
        "switchyard_upgrade_attempts_total{route=\"-\",result=\"refused\",reason=\"no_route\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    let status = status_json(gw.admin).await;
    let route = |path: &str| {
        status["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == path)
            .unwrap_or_else(|| panic!("{path} in {status}"))
            .clone()
    };
    let app = route("/app");
    assert_eq!(app["messages_total"], 6, "{app}");
    assert_eq!(app["bytes_total"], 30, "{app}");
    assert_eq!(app["upgrade_attempts"], 2, "{app}");
    assert_eq!(app["upgrade_success_ratio"], 0.5, "{app}");
    assert!(app["ping_rtt"][0]["count"].as_u64() >= Some(2), "{app}");
    assert!(app["ping_rtt"][0]["p50_seconds"].is_number(), "{app}");
    assert_eq!(route("/frames")["upgrade_success_ratio"], 1.0);
    assert_eq!(route("/raw")["bytes_total"], 54);
    // The app's connection in the list of live connections has its bytes
    // too (its messages' payloads: no byte stream under them).
    let app_conn = status["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["route"] == "/app")
        .unwrap_or_else(|| panic!("/app in {status}"))
        .clone();
    assert_eq!(
        (
            app_conn["bytes_in"].as_u64(),
            app_conn["bytes_out"].as_u64()
        ),
        (Some(15), Some(15)),
        "{app_conn}"
    );
    // 3 switched of 6 attempts, the two unmatched ones included.
    assert_eq!(status["upgrade_success_ratio"], 0.5, "{status}");
    let no_route = status["top_failure_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["reason"] == "no_route")
        .unwrap_or_else(|| panic!("no_route in {status}"))
        .clone();
    assert!(
        no_route["explanation"]
            .as_str()
            .is_some_and(|e| e.contains("/nowhere")),
        "{no_route}"
    );
    // The ends add nothing: it was all counted already.
    for mut ws in clients {
        ws.close(CloseCode::NORMAL, "bye").await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    for _ in 0..100 {
        if ["/frames", "/raw", "/app"]
            .iter()
            .all(|r| m.open_connections(r, "h1") == 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (route, dir, messages, bytes) in [
        ("/frames", ClientToUpstream, 3, 15),
        ("/frames", UpstreamToClient, 3, 15),
        ("/app", ClientToUpstream, 3, 15),
    ] {
        assert_eq!(m.messages(route, dir), messages, "{route}");
        assert_eq!(m.bytes(route, dir), bytes, "{route}");
    }
    // The transparent tunnel also carried both close frames (the client's:
    // 2 + 4 bytes of header, code and "bye"; the backend's reply: 2 + its
    // code).
    assert_eq!(m.bytes("/raw", ClientToUpstream), 33 + 11);
    assert_eq!(m.bytes("/raw", UpstreamToClient), 21 + 4);
    gw.shutdown().await;
}

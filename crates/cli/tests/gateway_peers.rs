//! `switchyard serve --config` (the gateway) with real peers over real
//! sockets, each a separate process:
//!
//! * Python `websockets` (PyPI) as a third-party backend: text and binary
//!   echoed, the backend's subprotocol choice and a close code it sends reach
//!   our client, in both tunnel modes;
//! * nginx (Debian) in front of the gateway, with nginx's documented WebSocket
//!   settings: a round trip, and SIGTERM to the gateway reaches the client
//!   through nginx as close 1001;
//! * the gateway in front of nginx (documented settings) in front of our echo;
//!   and in front of an nginx WITHOUT the Upgrade headers, whose non-101
//!   answer is relayed and logged as docs/configuration.md says;
//! * a client process stopped with SIGSTOP (no FIN): the heartbeat finds it
//!   within ping interval + pong timeout, the upstream gets 1001 and the
//!   client's socket is closed from the gateway side.
//!
//! nginx and the venv (scripts/install-test-deps.sh) are required: the tests
//! fail, never skip, without them.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixture, switchyard, temp_dir, venv_python, Nginx, Proc, BIN};
use futures_util::{SinkExt, StreamExt};
use switchyard::{ClientBuilder, CloseCode, CloseFrame, Error, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Ws = switchyard::WebSocket<switchyard::client::MaybeTlsStream>;

/// The next message within 5 s.
async fn next(ws: &mut Ws) -> Option<Result<Message, Error>> {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message or the end within 5 s")
}

async fn roundtrip(ws: &mut Ws, msg: Message) {
    ws.send(msg.clone()).await.unwrap();
    match next(ws).await {
        Some(Ok(got)) => assert_eq!(got, msg),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// Text, a small binary and a 200 KiB binary, each echoed unchanged.
async fn text_and_binary_roundtrips(ws: &mut Ws, tag: &str) {
    roundtrip(ws, Message::text(format!("hello ✓ {tag}"))).await;
    roundtrip(ws, Message::binary((0..=255u8).collect::<Vec<u8>>())).await;
    let big: Vec<u8> = (0..200 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    roundtrip(ws, Message::binary(big)).await;
}

/// The close frame the peer sends next, then the end of the stream; the
/// connection is dropped (closed) on return, as an application does.
async fn expect_close(mut ws: Ws) -> CloseFrame {
    let frame = match next(&mut ws).await {
        Some(Ok(Message::Close(Some(f)))) => f,
        other => panic!("expected a close frame, got {other:?}"),
    };
    // Then the end (or the error of a dropped connection), nothing else.
    match next(&mut ws).await {
        None | Some(Err(_)) => frame,
        Some(Ok(m)) => panic!("message after the close: {m:?}"),
    }
}

fn write_config(name: &str, text: &str) -> std::path::PathBuf {
    let dir = temp_dir(name);
    let file = dir.join("switchyard.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// `switchyard serve --config FILE`: the process and its listener address.
fn gateway(file: &Path) -> (Proc, SocketAddr) {
    let (p, a) = switchyard(&["serve", "--config", file.to_str().unwrap()], 1);
    (p, a[0])
}

/// A WebSocket echo backend in this process, any path; each close frame it
/// receives is recorded with the time it arrived.
type Closes = Arc<Mutex<Vec<(Option<CloseFrame>, Instant)>>>;
async fn recording_backend() -> (SocketAddr, Closes) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let closes: Closes = Arc::default();
    let seen = closes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let cfg = switchyard::server::AcceptConfig::default();
                let Ok(mut ws) = switchyard::accept(tcp, &cfg).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Close(f) = msg {
                        seen.lock().unwrap().push((f, Instant::now()));
                    } else if msg.is_data() && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, closes)
}

/// Send `request` on a fresh connection and read until the server closes.
async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the answer and the close within 10 s")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// The `upgrade attempt` log line that contains `needle` (within 10 s).
fn attempt_line(p: &Proc, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let log = p.wait_log("upgrade attempt");
        if let Some(l) = log
            .lines()
            .find(|l| l.contains("upgrade attempt") && l.contains(needle))
        {
            return l.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no upgrade attempt line with {needle:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------- Python websockets backend

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_backend_echoes_negotiates_the_subprotocol_and_sends_its_close_code() {
    let mut cmd = Command::new(venv_python("websockets"));
    cmd.arg(fixture("gateway_peers/ws_echo_server.py"));
    let python = Proc::spawn(cmd);
    let line = python.wait_stdout("listening on ");
    let port: u16 = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {line:?}"));
    let backend = SocketAddr::from(([127, 0, 0, 1], port));
    let file = write_config(
        "peers-python",
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"py\"\nservers = [\"ws://{backend}\"]\n\
             [[route]]\npath = \"/transparent\"\nupstream = \"py\"\n\
             [route.policy]\ntunnel = \"transparent\"\n\
             [[route]]\npath = \"/frames\"\nupstream = \"py\"\n\
             [route.policy]\ntunnel = \"frames\"\n"
        ),
    );
    let (gw, addr) = gateway(&file);

    for (route, mode) in [("/transparent", "Transparent"), ("/frames", "FrameAware")] {
        // The backend supports only chat.v2: it chooses it, the client sees it.
        let (mut ws, resp) = ClientBuilder::new()
            .subprotocols(["chat.v1", "chat.v2"])
            .connect(&format!("ws://{addr}{route}"))
            .await
            .unwrap_or_else(|e| panic!("{route}: {e}\n{}", gw.stderr()));
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v2");
        assert_eq!(ws.subprotocol(), Some("chat.v2"), "{route}");
        // permessage-deflate negotiated end to end (python accepts our offer).
        let ext = resp.headers()["sec-websocket-extensions"].to_str().unwrap();
        assert!(ext.starts_with("permessage-deflate"), "{route}: {ext}");

        text_and_binary_roundtrips(&mut ws, route).await;

        // What the backend saw.
        ws.send(Message::text("info")).await.unwrap();
        let info = match next(&mut ws).await {
            Some(Ok(Message::Text(t))) => serde_json::from_str::<serde_json::Value>(&t).unwrap(),
            other => panic!("{route}: expected the info text, got {other:?}"),
        };
        assert_eq!(info["subprotocol"], "chat.v2", "{route}: {info}");
        assert_eq!(info["path"], route, "{info}");
        assert_eq!(info["x_forwarded_for"], "127.0.0.1", "{route}: {info}");
        assert!(
            info["extensions"]
                .as_str()
                .is_some_and(|e| e.starts_with("permessage-deflate")),
            "{route}: our client's offer reached the backend: {info}"
        );

        // The backend closes with 4001: code and reason reach the client,
        // and the closing handshake completes back to the backend.
        ws.send(Message::text("close 4001 bye from python"))
            .await
            .unwrap();
        let f = expect_close(ws).await;
        assert_eq!(f.code, CloseCode(4001), "{route}");
        assert_eq!(f.reason, "bye from python", "{route}");
        python.wait_stdout(&format!("closed {route} rcvd=4001"));
        let line = attempt_line(&gw, &format!("route=\"{route}\""));
        assert!(line.contains("result=\"switched\""), "{line}");
        assert!(line.contains(&format!("tunnel ({mode}) ended")), "{line}");
    }
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

// ---------------------------------------------------- nginx in front of us

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_round_trips_and_a_sigterm_drain_reaches_the_client_as_1001() {
    let (backend, _) = recording_backend().await;
    let file = write_config(
        "peers-nginx-front",
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"back\"\nservers = [\"ws://{backend}\"]\n\
             [[route]]\npath = \"/ws\"\nupstream = \"back\"\n\
             [route.policy]\ndrain_timeout = \"2s\"\n\
             [[route]]\npath = \"/echo\"\napp = \"echo\"\n"
        ),
    );
    let (mut gw, gw_addr) = gateway(&file);
    let nginx = Nginx::start("gateway_peers/nginx-websocket.conf", gw_addr);

    // Through nginx: the built-in echo and a proxied route.
    let mut clients = Vec::new();
    for path in ["/echo", "/ws"] {
        let (mut ws, resp) = switchyard::connect(&format!("ws://{}{path}", nginx.addr))
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", nginx.error_log()));
        assert_eq!(resp.status(), 101);
        let server = resp.headers()["server"].to_str().unwrap();
        assert!(
            server.starts_with("nginx"),
            "answered through nginx: {server}"
        );
        text_and_binary_roundtrips(&mut ws, path).await;
        clients.push((path, ws));
    }

    gw.signal("TERM");
    for (path, ws) in clients {
        let f = expect_close(ws).await;
        assert_eq!(f.code, CloseCode::GOING_AWAY, "{path}: {f:?}");
    }
    let st = gw.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}\n{}", gw.stderr());
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

// --------------------------------------------------- us in front of nginx

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_in_front_of_nginx_in_front_of_our_echo_round_trips() {
    let (_echo, echo) = switchyard(&["serve", "--listen", "127.0.0.1:0"], 1);
    let nginx = Nginx::start("gateway_peers/nginx-websocket.conf", echo[0]);
    let file = write_config(
        "peers-nginx-upstream",
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"nginx\"\nservers = [\"ws://{}\"]\n\
             [[route]]\npath = \"/echo\"\nupstream = \"nginx\"\n",
            nginx.addr
        ),
    );
    let (gw, addr) = gateway(&file);
    let (mut ws, resp) = switchyard::connect(&format!("ws://{addr}/echo"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", gw.stderr(), nginx.error_log()));
    assert_eq!(resp.status(), 101);
    text_and_binary_roundtrips(&mut ws, "via nginx").await;
    ws.close(CloseCode::NORMAL, "done").await.unwrap();
    while let Some(Ok(_)) = next(&mut ws).await {}
    let line = attempt_line(&gw, "");
    assert!(line.contains("result=\"switched\""), "{line}");
    assert!(line.contains(&format!("ws://{}", nginx.addr)), "{line}");
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_without_upgrade_headers_as_upstream_gets_its_answer_relayed_and_logged() {
    let (_echo, echo) = switchyard(&["serve", "--listen", "127.0.0.1:0"], 1);
    // The classic mistake (doctor's fixture): no proxy_http_version 1.1, no
    // Upgrade / Connection headers. nginx sends a plain GET to our echo,
    // which answers 426 Upgrade Required, and nginx passes that on.
    let nginx = Nginx::start("doctor/nginx-no-upgrade.conf", echo[0]);
    let file = write_config(
        "peers-nginx-bad",
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"nginx\"\nservers = [\"ws://{}\"]\n\
             [[route]]\npath = \"/echo\"\nupstream = \"nginx\"\n",
            nginx.addr
        ),
    );
    let (gw, addr) = gateway(&file);

    // docs/configuration.md, "Upstream answers": a complete non-101 answer
    // is relayed to the client with `Connection: close` (no tunnel).
    let answer = raw_http(
        addr,
        "GET /echo HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    let lower = answer.to_ascii_lowercase();
    assert!(
        answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{answer}"
    );
    assert!(
        lower.contains("\r\nserver: nginx"),
        "nginx's answer: {answer}"
    );
    // The 426 keeps the upstream's Upgrade (RFC 9110 15.5.22), for this hop.
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{answer}");
    assert!(
        lower.contains("\r\nconnection: upgrade, close\r\n"),
        "{answer}"
    );
    assert!(!lower.contains("sec-websocket-accept"), "{answer}");
    let line = attempt_line(&gw, "");
    assert!(line.contains("result=\"relayed\""), "{line}");
    assert!(line.contains("reason=\"upstream_status\""), "{line}");
    assert!(
        line.contains("the upstream answered 426 Upgrade Required"),
        "{line}"
    );
    assert!(line.contains(&format!("ws://{}", nginx.addr)), "{line}");

    // Our client names the refusal.
    let err = switchyard::connect(&format!("ws://{addr}/echo"))
        .await
        .unwrap_err();
    match err {
        Error::UpgradeRefused { status, .. } => assert_eq!(status, 426),
        other => panic!("expected UpgradeRefused 426, got {other}"),
    }
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

// ------------------------------------------- a client that vanishes (SIGSTOP)

/// TCP states of /proc/net/tcp.
const ESTABLISHED: u8 = 0x01;
const CLOSE_WAIT: u8 = 0x08;

/// The states of the IPv4 sockets whose remote end is `remote` (the client
/// sockets connected to it; the machine's, but `remote` is a port of ours).
fn tcp_states_toward(remote: SocketAddr) -> Vec<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let parse = |s: &str| -> Option<SocketAddr> {
        let (ip, port) = s.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?;
        let port = u16::from_str_radix(port, 16).ok()?;
        // The address is printed as the in-memory (network order) word.
        Some(SocketAddr::from((Ipv4Addr::from(ip.to_ne_bytes()), port)))
    };
    let mut states = Vec::new();
    for line in table.lines().skip(1) {
        // sl local_address rem_address st ...
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 3 && parse(f[2]) == Some(remote) {
            states.push(u8::from_str_radix(f[3], 16).unwrap());
        }
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stopped_with_sigstop_is_found_by_the_heartbeat_and_the_upstream_gets_1001() {
    let interval = Duration::from_secs(1);
    let pong_timeout = Duration::from_secs(1);
    let slack = Duration::from_millis(750);
    let (backend, closes) = recording_backend().await;
    let file = write_config(
        "peers-sigstop",
        &format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"back\"\nservers = [\"ws://{backend}\"]\n\
             [[route]]\npath = \"/hb\"\nupstream = \"back\"\n\
             [route.policy]\nping_interval = \"1s\"\npong_timeout = \"1s\"\ntunnel = \"frames\"\n"
        ),
    );
    let (gw, addr) = gateway(&file);

    // The client: `switchyard connect` in pipe mode, its stdin held open.
    let mut cmd = Command::new(BIN);
    cmd.args(["connect", &format!("ws://{addr}/hb")])
        .env("NO_COLOR", "1");
    let mut client = Proc::spawn(cmd);
    client.write_stdin("before the stop\n");
    client.wait_stdout("before the stop\n");
    // Alive, it answers the gateway's pings: three intervals pass, the tunnel
    // stays open.
    tokio::time::sleep(interval * 3).await;
    client.write_stdin("still here\n");
    client.wait_stdout("still here\n");
    let early = closes.lock().unwrap().clone();
    assert!(early.is_empty(), "closed while alive: {early:?}");
    assert_eq!(tcp_states_toward(addr), [ESTABLISHED]);

    // SIGSTOP: no FIN, no RST, the kernel still acknowledges; only the
    // missing pong shows that the client is gone.
    let stopped = Instant::now();
    client.signal("STOP");
    let bound = interval + pong_timeout + slack;
    let (frame, at) = loop {
        if let Some(c) = closes.lock().unwrap().first().cloned() {
            break c;
        }
        assert!(
            stopped.elapsed() < bound + Duration::from_secs(5),
            "the backend saw no close\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let detected = at.saturating_duration_since(stopped);
    eprintln!("stopped client found and upstream closed after {detected:?} (bound {bound:?})");
    // docs: "the client missed the pong timeout: 1011 to it, 1001 to the upstream"
    let frame = frame.expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::GOING_AWAY, "{frame:?}");
    assert_eq!(frame.reason, "client did not answer ping");
    assert!(
        detected <= bound,
        "found after {detected:?}, more than ping interval + pong timeout + {slack:?}"
    );
    assert!(
        detected >= pong_timeout / 2,
        "found after {detected:?}: too early for a missed pong"
    );
    let line = attempt_line(&gw, "");
    assert!(line.contains("client_pong_timeout"), "{line}");

    // The client's socket is closed from the gateway side while the client
    // is still stopped: FIN received (CLOSE_WAIT), or reset (gone).
    let start = Instant::now();
    loop {
        let states = tcp_states_toward(addr);
        if states.iter().all(|&s| s == CLOSE_WAIT) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "client socket states {states:?}, expected CLOSE_WAIT or none"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Resumed, it reads the gateway's close (1011) and exits: 3 (closed by
    // the server with a code other than 1000) or 4 (its own pong could not
    // be written to the closed socket first).
    client.signal("CONT");
    let st = client.wait_exit(Duration::from_secs(10));
    assert!(
        matches!(st.code(), Some(3) | Some(4)),
        "{st:?}\n{}",
        client.stderr()
    );
    let _ = std::fs::remove_dir_all(file.parent().unwrap());
}

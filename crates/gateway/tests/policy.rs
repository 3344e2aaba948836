//! Every key of `[route.policy]`, end to end, on an app route (echo) and on
//! a proxied route (to a real echo backend), over HTTP/1.1, HTTP/2 extended
//! CONNECT and HTTP/3 extended CONNECT: the refused request gets the
//! documented status or close code, the accepted one works, and a refusal
//! is counted in the metrics and logged with its reason.
//!
//! One gateway serves a TLS listener (h1, h2, h3) and a cleartext one (h1,
//! h2 with prior knowledge, for `require_tls`). Each key has its own route
//! per route kind and protocol (`/{kind}/{key}/{protocol}`), so the caps of
//! one case never hold a slot another case needs.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use switchyard::client::{ClientBuilder, MaybeTlsStream};
use switchyard::h2::H2WebSocket;
use switchyard::h3::H3Stream;
use switchyard::server::AcceptConfig;
use switchyard::{CloseCode, Error, H2Error, Limits, Message, WebSocket};
use switchyard_gateway::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Hang guard for anything the gateway should do soon (never a measurement).
const GUARD: Duration = Duration::from_secs(10);

/// The keys under test with their policy, as TOML lines.
const KEYS: &[(&str, &str)] = &[
    ("origin", "allowed_origins = [\"https://good.example\"]"),
    ("cap", "max_connections = 1"),
    ("ipcap", "max_connections_per_ip = 1"),
    ("tls", "require_tls = true"),
    ("upgrade", "require_upgrade = true"),
    ("size", "max_message_size = \"1KiB\""),
    ("idle", "idle_timeout = \"300ms\""),
    (
        "ping",
        "ping_interval = \"200ms\"\npong_timeout = \"300ms\"",
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    App,
    Proxy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
    H3,
}

const KINDS: [Kind; 2] = [Kind::App, Kind::Proxy];
const PROTOS: [Proto; 3] = [Proto::H1, Proto::H2, Proto::H3];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::App => "app",
            Kind::Proxy => "proxy",
        }
    }
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
            Proto::H3 => "h3",
        }
    }
}

fn path(kind: Kind, key: &str, proto: Proto) -> String {
    format!("/{}/{key}/{}", kind.name(), proto.name())
}

// ---------------------------------------------------------------------------
// Log capture
// ---------------------------------------------------------------------------

/// Everything the gateway logs on the test's thread (the tests run on a
/// current-thread runtime, so the server's tasks log there too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The "request refused" lines of this route.
    fn refusals(&self, route: &str) -> Vec<String> {
        let route = format!("route={route:?}");
        self.text()
            .lines()
            .filter(|l| l.contains("request refused") && l.contains(&route))
            .map(String::from)
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Gateway, backend, clients
// ---------------------------------------------------------------------------

/// A WebSocket echo backend on any path.
async fn echo_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = switchyard::accept(tcp, &AcceptConfig::default()).await else {
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

struct Gw {
    run: common::Running,
    cert: common::TestCert,
    logs: Logs,
    _guard: tracing::subscriber::DefaultGuard,
}

/// The config: the two listeners, the backend, and one route per key
/// (`policies`), route kind and protocol.
/// `extra` is appended as is.
fn config_text(
    cert: &common::TestCert,
    back: SocketAddr,
    policies: &[(&str, &str)],
    extra: &str,
) -> String {
    let mut t = format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"h1\", \"h2\", \"h3\"]\n\
         tls = {{ cert = {:?}, key = {:?} }}\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"h1\", \"h2\"]\n\
         [[upstream]]\nname = \"back\"\nservers = [\"ws://{back}\"]\nretries = 0\n",
        cert.cert, cert.key
    );
    for (key, policy) in policies {
        for kind in KINDS {
            for proto in PROTOS {
                let target = match kind {
                    Kind::App => "app = \"echo\"".to_string(),
                    Kind::Proxy => "upstream = \"back\"".to_string(),
                };
                t.push_str(&format!(
                    "[[route]]\npath = \"{}\"\n{target}\n[route.policy]\n{policy}\n",
                    path(kind, key, proto)
                ));
            }
        }
    }
    t.push_str(extra);
    t
}

impl Gw {
    async fn start(policies: &[(&str, &str)]) -> Gw {
        Gw::start_with(policies, "").await
    }

    async fn start_with(policies: &[(&str, &str)], extra: &str) -> Gw {
        let (logs, guard) = Logs::capture();
        let cert = common::TestCert::new();
        let back = echo_backend().await;
        let cfg = Config::from_toml_str(&config_text(&cert, back, policies, extra), "policy.toml")
            .unwrap_or_else(|e| panic!("{e}"));
        let run = common::start(cfg).await;
        Gw {
            run,
            cert,
            logs,
            _guard: guard,
        }
    }

    fn client(&self) -> ClientBuilder {
        ClientBuilder::new()
            .add_ca_file(&self.cert.cert)
            .limits(Limits::default().handshake_timeout(GUARD))
    }

    /// `wss://` on the TLS listener (its UDP port for HTTP/3).
    fn url(&self, proto: Proto, path: &str) -> String {
        let a = &self.run.addrs[0];
        let port = match proto {
            Proto::H3 => a.http3.expect("h3 listener").port(),
            _ => a.tcp.port(),
        };
        format!("wss://127.0.0.1:{port}{path}")
    }

    /// `ws://` on the cleartext listener.
    fn clear_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.run.addrs[1].tcp)
    }

    async fn open(&self, proto: Proto, path: &str, origin: Option<&str>) -> Result<Ws, Error> {
        let mut b = self.client();
        if let Some(o) = origin {
            b = b.origin(o);
        }
        open(proto, &self.url(proto, path), &b).await
    }

    fn refused(&self, reason: &str) -> u64 {
        self.run
            .gateway
            .metrics()
            .upgrade_attempts("refused", reason)
    }

    /// The refusal of `route` was counted under `reason` (`before`: the
    /// count before the request) and logged with its reason and protocol.
    fn assert_recorded(&self, route: &str, reason: &str, proto: Proto, before: u64) {
        assert_eq!(
            self.refused(reason),
            before + 1,
            "{route}: {reason} counted"
        );
        let metrics = self.run.gateway.metrics().render();
        let labels = format!(",result=\"refused\",reason=\"{reason}\"}}");
        assert!(
            metrics.lines().any(
                |l| l.starts_with("switchyard_upgrade_attempts_total{route=")
                    && l.contains(&labels)
            ),
            "{labels} in\n{metrics}"
        );
        let logged = self.logs.refusals(route);
        assert!(
            logged
                .iter()
                .any(|l| l.contains(&format!("reason={reason:?}"))
                    && l.contains(&format!("protocol={:?}", proto.name()))),
            "{route}: no refusal logged with reason {reason}: {logged:#?}\n{}",
            self.logs.text()
        );
    }

    async fn stop(self) {
        self.run.stop().await;
    }
}

/// A client WebSocket over any of the three versions.
enum Ws {
    H1(WebSocket<MaybeTlsStream>),
    H2(H2WebSocket),
    H3(WebSocket<H3Stream>),
}

macro_rules! each {
    ($ws:expr, $w:ident => $e:expr) => {
        match $ws {
            Ws::H1($w) => $e,
            Ws::H2($w) => $e,
            Ws::H3($w) => $e,
        }
    };
}

impl Ws {
    async fn send(&mut self, m: Message) -> Result<(), Error> {
        each!(self, w => w.send(m).await)
    }

    async fn next(&mut self) -> Option<Result<Message, Error>> {
        each!(self, w => tokio::time::timeout(GUARD, w.next()).await.expect("no frame, no end"))
    }

    /// Send `text` and expect it back.
    async fn roundtrip(&mut self, text: &str) {
        self.send(Message::text(text)).await.unwrap();
        assert_eq!(self.next().await.unwrap().unwrap(), Message::text(text));
    }

    /// Read until the connection ends: the close code the peer sent, if any.
    async fn close_code(&mut self) -> Option<CloseCode> {
        loop {
            match self.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

async fn open(proto: Proto, url: &str, b: &ClientBuilder) -> Result<Ws, Error> {
    Ok(match proto {
        Proto::H1 => Ws::H1(b.connect(url).await?.0),
        Proto::H2 => Ws::H2(switchyard::h2::connect_h2(url, b).await?.0),
        Proto::H3 => Ws::H3(switchyard::h3::connect_h3(url, b).await?.0),
    })
}

/// The refusal's status and `Retry-After`.
fn refusal(r: Result<Ws, Error>) -> (StatusCode, Option<String>) {
    match r {
        Err(
            Error::UpgradeRefused {
                status, response, ..
            }
            | Error::H2(H2Error::Refused {
                status, response, ..
            }),
        ) => (
            status,
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned()),
        ),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a WebSocket"),
    }
}

// ---------------------------------------------------------------------------
// Admission: refused before the switch
// ---------------------------------------------------------------------------

#[tokio::test]
async fn allowed_origins_is_403_and_the_listed_origin_works() {
    let gw = Gw::start(&KEYS[0..1]).await;
    for kind in KINDS {
        for proto in PROTOS {
            let p = path(kind, "origin", proto);
            let before = gw.refused("origin");
            let got = gw.open(proto, &p, Some("https://evil.example")).await;
            assert_eq!(refusal(got).0, StatusCode::FORBIDDEN, "{p}");
            gw.assert_recorded(&p, "origin", proto, before);
            let mut ws = gw
                .open(proto, &p, Some("https://good.example"))
                .await
                .unwrap();
            ws.roundtrip("welcome").await;
            // Not a browser: no Origin, accepted.
            let mut ws = gw.open(proto, &p, None).await.unwrap();
            ws.roundtrip("no origin").await;
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn max_connections_is_503_and_max_connections_per_ip_is_429_with_retry_after() {
    let gw = Gw::start(&KEYS[1..3]).await;
    for (key, status, reason) in [
        ("cap", StatusCode::SERVICE_UNAVAILABLE, "route_full"),
        ("ipcap", StatusCode::TOO_MANY_REQUESTS, "ip_full"),
    ] {
        for kind in KINDS {
            for proto in PROTOS {
                let p = path(kind, key, proto);
                let mut first = gw.open(proto, &p, None).await.unwrap();
                first.roundtrip("first").await;
                let before = gw.refused(reason);
                let (got, retry_after) = refusal(gw.open(proto, &p, None).await);
                assert_eq!(got, status, "{p}");
                assert!(retry_after.is_some_and(|v| v.parse::<u32>().is_ok()), "{p}");
                gw.assert_recorded(&p, reason, proto, before);
                // The slot is the connection's: once it is gone, one more
                // fits (the gateway notices the close asynchronously).
                drop(first);
                let mut again = tokio::time::timeout(GUARD, async {
                    loop {
                        match gw.open(proto, &p, None).await {
                            Ok(ws) => break ws,
                            Err(e) => assert_eq!(refusal(Err(e)).0, status, "{p}"),
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("{p}: the slot was never released"));
                again.roundtrip("again").await;
            }
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn require_tls_is_426_over_cleartext_h1_403_over_h2_and_tls_works() {
    let gw = Gw::start(&KEYS[3..4]).await;
    for kind in KINDS {
        for proto in PROTOS {
            let p = path(kind, "tls", proto);
            if proto != Proto::H3 {
                // HTTP/3 is always TLS: no cleartext request can be made.
                let before = gw.refused("tls_required");
                let got = open(proto, &gw.clear_url(&p), &gw.client()).await;
                let want = match proto {
                    Proto::H1 => StatusCode::UPGRADE_REQUIRED,
                    _ => StatusCode::FORBIDDEN,
                };
                assert_eq!(refusal(got).0, want, "{p}");
                gw.assert_recorded(&p, "tls_required", proto, before);
            }
            let mut ws = gw.open(proto, &p, None).await.unwrap();
            ws.roundtrip("over tls").await;
        }
    }
    gw.stop().await;
}

/// A plain request (no upgrade): over HTTP/1.1 and HTTP/2 on the cleartext
/// listener, over HTTP/3 on the TLS one. Its status.
async fn plain_get(gw: &Gw, proto: Proto, path: &str) -> StatusCode {
    let addr = gw.run.addrs[1].tcp;
    match proto {
        Proto::H1 => {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let req =
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(GUARD, s.read_to_end(&mut out))
                .await
                .unwrap()
                .unwrap();
            let text = String::from_utf8_lossy(&out);
            let code = text.split(' ').nth(1).unwrap_or_default();
            StatusCode::from_bytes(code.as_bytes()).unwrap_or_else(|_| panic!("{text}"))
        }
        Proto::H2 => {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
            tokio::spawn(conn);
            let req = Request::builder()
                .method(Method::GET)
                .uri(format!("http://localhost{path}"))
                .body(())
                .unwrap();
            let (resp, _) = h2.send_request(req, true).unwrap();
            tokio::time::timeout(GUARD, resp)
                .await
                .unwrap()
                .unwrap()
                .status()
        }
        Proto::H3 => {
            let conn = switchyard::h3::H3Connection::connect(&gw.url(proto, path), &gw.client())
                .await
                .unwrap();
            let req = Request::builder()
                .method(Method::GET)
                .uri(path)
                .body(bytes::Bytes::new())
                .unwrap();
            tokio::time::timeout(GUARD, conn.send_request(req))
                .await
                .unwrap()
                .unwrap()
                .status()
        }
    }
}

#[tokio::test]
async fn require_upgrade_refuses_plain_requests_and_upgrades_work() {
    let gw = Gw::start(&KEYS[4..5]).await;
    for kind in KINDS {
        for proto in PROTOS {
            let p = path(kind, "upgrade", proto);
            // Over HTTP/2 and HTTP/3 there is no Upgrade header to name in a
            // 426: 400 says to use an extended CONNECT (see dispatch.rs).
            let want = match proto {
                Proto::H1 => StatusCode::UPGRADE_REQUIRED,
                _ => StatusCode::BAD_REQUEST,
            };
            let before = gw.refused("upgrade_required");
            assert_eq!(plain_get(&gw, proto, &p).await, want, "{p}");
            gw.assert_recorded(&p, "upgrade_required", proto, before);
            // The log says what was sent.
            let status = format!("status={}", want.as_u16());
            let logged = gw.logs.refusals(&p);
            assert!(logged.iter().any(|l| l.contains(&status)), "{logged:#?}");
            let mut ws = gw.open(proto, &p, None).await.unwrap();
            ws.roundtrip("upgraded").await;
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn allowed_upgrades_without_websocket_refuses_websocket_on_a_proxied_route() {
    // Over HTTP/1.1 the WebSocket offer is not selected, so the request is
    // plain and require_upgrade answers 426 naming the allowed token; over
    // HTTP/2 and HTTP/3 the extended CONNECT names a protocol the route
    // does not switch to: 501. (On an app route allowed_upgrades can only
    // name the app's own tokens; see `config_refuses_what_cannot_apply`.)
    let route = "[[route]]\npath = \"/only-lineecho\"\nupstream = \"back\"\n[route.policy]\n\
                 allowed_upgrades = [\"lineecho/1\"]\nrequire_upgrade = true\n";
    // The origin routes serve WebSocket, so the listener offers extended
    // CONNECT at all.
    let gw = Gw::start_with(&KEYS[0..1], route).await;
    for (proto, status, reason) in [
        (Proto::H1, StatusCode::UPGRADE_REQUIRED, "upgrade_required"),
        (
            Proto::H2,
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_protocol",
        ),
        (
            Proto::H3,
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_protocol",
        ),
    ] {
        let before = gw.refused(reason);
        let got = gw.open(proto, "/only-lineecho", None).await;
        assert_eq!(refusal(got).0, status, "{proto:?}");
        gw.assert_recorded("/only-lineecho", reason, proto, before);
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// Connection lifetime: applied after the switch
// ---------------------------------------------------------------------------

#[tokio::test]
async fn max_message_size_closes_with_1009_and_smaller_messages_pass() {
    let gw = Gw::start(&KEYS[5..6]).await;
    for kind in KINDS {
        for proto in PROTOS {
            let p = path(kind, "size", proto);
            let mut ws = gw.open(proto, &p, None).await.unwrap();
            ws.roundtrip(&"a".repeat(1000)).await;
            ws.send(Message::text("b".repeat(2048))).await.unwrap();
            assert_eq!(
                ws.close_code().await,
                Some(CloseCode::MESSAGE_TOO_BIG),
                "{p}"
            );
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn idle_timeout_closes_a_quiet_connection_with_1001() {
    let gw = Gw::start(&KEYS[6..7]).await;
    for kind in KINDS {
        for proto in PROTOS {
            let p = path(kind, "idle", proto);
            let mut ws = gw.open(proto, &p, None).await.unwrap();
            ws.roundtrip("then quiet").await;
            // The default idle timeout is minutes: the hang guard would fire.
            assert_eq!(ws.close_code().await, Some(CloseCode::GOING_AWAY), "{p}");
        }
    }
    gw.stop().await;
}

/// Open a WebSocket on `path` and never answer anything (no pong, no
/// close reply): every byte the gateway sends until it ends the stream.
async fn deaf_client(gw: &Gw, proto: Proto, path: &str) -> Vec<u8> {
    raw_client(gw, proto, path, &[]).await
}

/// A client that opens a WebSocket on `path`, writes `frames` (already
/// masked) as they are, never answers anything and returns what the
/// gateway sent after the handshake until it closed the connection.
async fn raw_client(gw: &Gw, proto: Proto, path: &str, frames: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let read_all = async {
        match proto {
            Proto::H1 => {
                let mut s = TcpStream::connect(gw.run.addrs[1].tcp).await.unwrap();
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n"
                );
                s.write_all(req.as_bytes()).await.unwrap();
                s.write_all(frames).await.unwrap();
                let _ = s.read_to_end(&mut out).await;
                let head = out
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .expect("a response head");
                assert!(out.starts_with(b"HTTP/1.1 101 "), "{path}");
                out.drain(..head + 4);
            }
            Proto::H2 => {
                let tcp = TcpStream::connect(gw.run.addrs[1].tcp).await.unwrap();
                let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
                tokio::spawn(conn);
                let mut h2 = h2.ready().await.unwrap();
                let req = Request::builder()
                    .method(Method::CONNECT)
                    .uri(format!("http://localhost{path}"))
                    .header("sec-websocket-version", "13")
                    .extension(h2::ext::Protocol::from("websocket"))
                    .body(())
                    .unwrap();
                let (resp, mut keep_open) = h2.send_request(req, false).unwrap();
                let resp = resp.await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK, "{path}");
                if !frames.is_empty() {
                    keep_open
                        .send_data(bytes::Bytes::copy_from_slice(frames), false)
                        .unwrap();
                }
                let mut body = resp.into_body();
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    out.extend_from_slice(&chunk);
                }
            }
            Proto::H3 => {
                let url = gw.url(proto, path);
                let conn = switchyard::h3::H3Connection::connect(&url, &gw.client())
                    .await
                    .unwrap();
                let mut headers = http::HeaderMap::new();
                headers.insert("sec-websocket-version", "13".parse().unwrap());
                let (mut stream, _) = conn
                    .extended_connect("websocket", path, &headers)
                    .await
                    .unwrap();
                stream.write_all(frames).await.unwrap();
                let _ = stream.read_to_end(&mut out).await;
            }
        }
    };
    tokio::time::timeout(GUARD, read_all)
        .await
        .unwrap_or_else(|_| panic!("{path}: the gateway kept a deaf client"));
    out
}

/// The server's frames in `bytes` (unmasked): opcode and payload.
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let (opcode, len7) = (bytes[0] & 0x0f, (bytes[1] & 0x7f) as usize);
        let (len, at) = match len7 {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 => panic!("no test frame is that large"),
            126 => break,
            n => (n, 2),
        };
        if bytes.len() < at + len {
            break;
        }
        out.push((opcode, bytes[at..at + len].to_vec()));
        bytes = &bytes[at + len..];
    }
    out
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_closed_with_1011() {
    let gw = Gw::start(&KEYS[7..8]).await;
    for kind in KINDS {
        for proto in PROTOS {
            let p = path(kind, "ping", proto);
            // Without a heartbeat the gateway would keep the connection
            // (the idle timeout is minutes) and the guard would fire.
            let got = frames(&deaf_client(&gw, proto, &p).await);
            assert!(got.iter().any(|(op, _)| *op == 0x9), "{p}: pinged: {got:?}");
            let close = got.iter().find(|(op, _)| *op == 0x8);
            let code = close.map(|(_, payload)| u16::from_be_bytes([payload[0], payload[1]]));
            assert_eq!(code, Some(1011), "{p}: {got:?}");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn drain_timeout_cuts_clients_that_do_not_answer_the_1001() {
    let gw = Gw::start(&[("drain", "drain_timeout = \"300ms\"")]).await;
    let mut clients = Vec::new();
    for kind in KINDS {
        for proto in PROTOS {
            let p = path(kind, "drain", proto);
            let mut ws = gw.open(proto, &p, None).await.unwrap();
            ws.roundtrip("before the drain").await;
            clients.push((p, ws));
        }
    }
    // The clients do not read, so none answers the 1001: the drain waits
    // drain_timeout, not the default 10 s (which the guard would not let
    // pass).
    tokio::time::timeout(GUARD / 2, gw.stop())
        .await
        .expect("the drain waited longer than drain_timeout");
    for (p, mut ws) in clients {
        assert_eq!(ws.close_code().await, Some(CloseCode::GOING_AWAY), "{p}");
    }
}

// ---------------------------------------------------------------------------
// [limits]: the protocol limits of every route without its own
// ---------------------------------------------------------------------------

#[tokio::test]
async fn limits_apply_to_app_and_proxied_routes_on_every_protocol() {
    let limits = "[limits]\nmax_message_size = \"1KiB\"\nmax_headers = 20\n";
    let gw = Gw::start_with(&[("plain", "")], limits).await;
    for kind in KINDS {
        for proto in PROTOS {
            let p = path(kind, "plain", proto);
            let mut ws = gw.open(proto, &p, None).await.unwrap();
            ws.roundtrip(&"a".repeat(1000)).await;
            ws.send(Message::text("b".repeat(2048))).await.unwrap();
            assert_eq!(
                ws.close_code().await,
                Some(CloseCode::MESSAGE_TOO_BIG),
                "{p}"
            );
        }
        // The head caps: more fields than max_headers is 431.
        let p = path(kind, "plain", Proto::H1);
        let mut s = TcpStream::connect(gw.run.addrs[1].tcp).await.unwrap();
        let fields: String = (0..30).map(|i| format!("X-F{i}: v\r\n")).collect();
        let req = format!("GET {p} HTTP/1.1\r\nHost: localhost\r\n{fields}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(GUARD, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 431 "), "{p}: {text}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_limits_heartbeat_applies_to_app_and_proxied_routes() {
    // No heartbeat in the route policies: the one of [limits] applies.
    let limits = "[limits]\nping_interval = \"200ms\"\npong_timeout = \"300ms\"\n";
    let gw = Gw::start_with(&[("plain", "")], limits).await;
    for kind in KINDS {
        for proto in PROTOS {
            let p = path(kind, "plain", proto);
            let got = frames(&deaf_client(&gw, proto, &p).await);
            let close = got.iter().find(|(op, _)| *op == 0x8);
            let code = close.map(|(_, payload)| u16::from_be_bytes([payload[0], payload[1]]));
            assert_eq!(code, Some(1011), "{p}: {got:?}");
        }
    }
    gw.stop().await;
}

/// A masked client frame (the mask is zeros, so the payload reads as is).
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

/// The close code of the gateway's close frame in `bytes`.
fn close_code_in(bytes: &[u8]) -> Option<u16> {
    frames(bytes)
        .into_iter()
        .find(|(op, _)| *op == 0x8)
        .map(|(_, payload)| u16::from_be_bytes([payload[0], payload[1]]))
}

#[tokio::test]
async fn limits_frame_keys_apply_where_the_gateway_reads_frames() {
    // App routes and frame-aware tunnels read the client's frames, so
    // [limits] applies there (a transparent tunnel leaves them to the
    // backend). close_timeout: the clients never answer the gateway's
    // close, so each connection ends only when the gateway gives up
    // waiting: far sooner than the default 5 s would allow within the
    // guard below.
    let extra = "[limits]\nmax_frame_size = \"1KiB\"\nmax_fragments = 3\n\
                 close_timeout = \"200ms\"\n\
                 [[route]]\npath = \"/proxy/frames\"\nupstream = \"back\"\n\
                 [route.policy]\ntunnel = \"frames\"\n";
    let gw = Gw::start_with(&[("plain", "")], extra).await;
    let big = client_frame(true, 0x2, &[7; 2000]);
    let mut fragmented = client_frame(false, 0x1, b"a");
    for fin in [false, false, true] {
        fragmented.extend(client_frame(fin, 0x0, b"b"));
    }
    for proto in PROTOS {
        for p in [path(Kind::App, "plain", proto), "/proxy/frames".into()] {
            for (frames, code) in [(&big, 1009), (&fragmented, 1008)] {
                let got = tokio::time::timeout(GUARD / 4, raw_client(&gw, proto, &p, frames))
                    .await
                    .unwrap_or_else(|_| panic!("{p}: the gateway waited past close_timeout"));
                assert_eq!(close_code_in(&got), Some(code), "{p} {proto:?}: {got:?}");
            }
        }
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// --check-config: what cannot apply is refused with the reason
// ---------------------------------------------------------------------------

#[test]
fn config_refuses_what_cannot_apply() {
    let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\npath = \"/r\"\n";
    for (target, policy, why) in [
        (
            "app = \"echo\"",
            "tunnel = \"frames\"",
            "applies to proxied routes only",
        ),
        (
            "app = \"echo\"",
            "preserve_host = false",
            "applies to proxied routes only",
        ),
        (
            "app = \"echo\"",
            "allowed_upgrades = [\"lineecho/1\"]",
            "speaks only websocket",
        ),
        (
            "app = \"echo\"",
            "require_upgrade = false",
            "answers only upgrades",
        ),
        (
            "app = \"lineecho\"",
            "max_message_size = \"1KiB\"",
            "speaks lines",
        ),
        (
            "app = \"lineecho\"",
            "ping_interval = \"1s\"",
            "speaks lines",
        ),
        (
            "app = \"lineecho\"",
            "pong_timeout = \"1s\"",
            "speaks lines",
        ),
        (
            "app = \"lineecho\"",
            "drain_timeout = \"1s\"",
            "no closing handshake",
        ),
        ("app = \"index\"", "max_connections = 1", "serves a page"),
        ("app = \"index\"", "idle_timeout = \"1s\"", "serves a page"),
    ] {
        let text = format!("{base}{target}\n[route.policy]\n{policy}\n");
        let err = Config::from_toml_str(&text, "c.toml")
            .err()
            .unwrap_or_else(|| panic!("accepted: {target} {policy}"))
            .to_string();
        let key = policy.split(' ').next().unwrap();
        assert!(
            err.contains(&format!("route[0].policy.{key}")) && err.contains(why),
            "{target} {policy}: {err}"
        );
    }
}

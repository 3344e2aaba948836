//! The gateway translating HTTP/3 extended CONNECT (RFC 9220) into an
//! HTTP/1.1 upgrade upstream, over real sockets: switchyard's own HTTP/3
//! client (`switchyard::h3::connect_h3`) -> the gateway's QUIC listener ->
//! an HTTP/1.1 echo backend that records each upgrade request it gets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use http::Request;
use switchyard::client::ClientBuilder;
use switchyard::proto::deflate::DeflateConfig;
use switchyard::server::AcceptConfig;
use switchyard::{CloseCode, Error, Message};
use switchyard_gateway::config::Config;
use switchyard_gateway::{Gateway, Server};

/// A certificate for 127.0.0.1 and localhost in PEM files.
fn cert_files(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("sy-gw-h3-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    (dir, cert, key)
}

/// An HTTP/1.1 WebSocket echo backend (any path, subprotocol `chat`,
/// permessage-deflate) that keeps every upgrade request it received.
async fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<Request<()>>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut cfg = AcceptConfig::default();
                cfg.handshake.subprotocols = vec!["chat".into()];
                cfg.handshake.deflate = Some(DeflateConfig::default());
                let Ok((req, leftover)) =
                    switchyard::read_request_head(&mut tcp, &cfg.limits).await
                else {
                    return;
                };
                log.lock().unwrap().push(req.clone());
                let Ok(mut ws) = switchyard::accept_request(tcp, &req, leftover, &cfg).await else {
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
    (addr, seen)
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

struct Running {
    gw: Arc<Gateway>,
    addr: SocketAddr,
    /// Every listener's TCP address (`addr` is the first).
    listeners: Vec<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("gateway did not stop")
            .unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn gateway(toml: &str) -> Running {
    let cfg = Config::from_toml_str(toml, "gw.toml").unwrap();
    let gw = Gateway::new(cfg, None).unwrap();
    let server = Server::bind(gw.clone()).await.unwrap();
    let listeners: Vec<SocketAddr> = server.addresses().iter().map(|a| a.tcp).collect();
    let addr = listeners[0];
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        gw,
        addr,
        listeners,
        stop: Some(tx),
        task,
    }
}

fn config(cert: &std::path::Path, key: &std::path::Path, back: SocketAddr) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"h1\", \"h3\"]\n\
         tls = {{ cert = {cert:?}, key = {key:?} }}\n\
         [[upstream]]\nname = \"back\"\nservers = [\"ws://{back}\"]\n\
         [[upstream]]\nname = \"dead\"\nservers = [\"ws://{dead}\"]\nretries = 0\n\
         [[route]]\npath = \"/ws\"\nupstream = \"back\"\n\
         [route.policy]\nallowed_origins = [\"https://good.example\"]\ndrain_timeout = \"2s\"\n\
         [[route]]\npath = \"/down\"\nupstream = \"dead\"\n\
         [[route]]\npath = \"/echo\"\napp = \"echo\"\n\
         [[route]]\npath = \"/small\"\napp = \"echo\"\n\
         [route.policy]\nfallback_max_body = \"1KiB\"\n",
        dead = closed_port(),
    )
}

fn client(cert: &std::path::Path) -> ClientBuilder {
    let limits = switchyard::Limits::default().handshake_timeout(Duration::from_secs(10));
    ClientBuilder::new().add_ca_file(cert).limits(limits)
}

#[tokio::test]
async fn h3_extended_connect_is_proxied_to_an_http11_upstream() {
    let (dir, cert, key) = cert_files("proxy");
    let (back, seen) = recording_backend().await;
    let gw = gateway(&config(&cert, &key, back)).await;
    let url = format!("wss://127.0.0.1:{}/ws/room?x=1", gw.addr.port());

    let builder = client(&cert)
        .origin("https://good.example")
        .subprotocols(["other", "chat"]);
    let (mut ws, resp) = switchyard::h3::connect_h3(&url, &builder)
        .await
        .expect("HTTP/3 WebSocket through the gateway");
    assert_eq!(resp.status(), 200);
    // Negotiated end to end: the backend picked `chat` and deflate.
    assert_eq!(ws.subprotocol(), Some("chat"));
    let ext = resp
        .headers()
        .get("sec-websocket-extensions")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(ext.contains("permessage-deflate"), "extensions: {ext:?}");

    // Echo through the tunnel, small and large (compressed) messages.
    ws.send(Message::text("over h3")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("over h3"));
    let big = "0123456789abcdef".repeat(20_000);
    ws.send(Message::text(big.clone())).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text(big));

    // The upstream got a real HTTP/1.1 upgrade with a key of our own.
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let req = &seen[0];
        assert_eq!(req.method(), http::Method::GET);
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/ws/room?x=1");
        let h = req.headers();
        assert!(h["upgrade"]
            .to_str()
            .unwrap()
            .eq_ignore_ascii_case("websocket"));
        assert_eq!(h["sec-websocket-version"], "13");
        let key = h["sec-websocket-key"].to_str().unwrap();
        assert_eq!(key.len(), 24, "a fresh base64 16-byte key: {key}");
        assert_eq!(h["sec-websocket-protocol"], "other, chat");
        assert!(h.contains_key("x-forwarded-for"), "{h:?}");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    // Counted as an h3 connection on the route, listed on /status, its
    // handshake (upstream included) timed.
    assert_eq!(
        gw.gw.metrics().open_connections("/ws", "h3"),
        1,
        "{}",
        gw.gw.metrics().render()
    );
    assert_eq!(
        gw.gw
            .metrics()
            .handshakes("/ws", switchyard::proto::HttpVersion::Http3),
        1
    );
    let conns = gw.gw.connections().snapshot();
    assert_eq!(conns.len(), 1, "{conns:?}");
    assert_eq!(
        (
            conns[0].info.tag.route.as_str(),
            conns[0].info.protocol.label()
        ),
        ("/ws", "h3")
    );

    // A second WebSocket from a disallowed Origin: 403 over HTTP/3, and
    // the upstream never sees it.
    let bad = client(&cert).origin("https://evil.example");
    match switchyard::h3::connect_h3(&url, &bad).await {
        Err(Error::UpgradeRefused { status, .. }) => assert_eq!(status, 403),
        other => panic!("expected 403, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(seen.lock().unwrap().len(), 1);

    // The upstream is down: 502, like HTTP/2.
    let down = format!("wss://127.0.0.1:{}/down", gw.addr.port());
    match switchyard::h3::connect_h3(&down, &client(&cert)).await {
        Err(Error::UpgradeRefused { status, .. }) => assert_eq!(status, 502),
        other => panic!("expected 502, got {:?}", other.map(|(_, r)| r.status())),
    }
    // ... kept in the failures ring, explained, like an HTTP/1.1 attempt.
    let failures = gw.gw.metrics().failures().recent();
    let down = failures
        .iter()
        .find(|f| f.route == "/down")
        .unwrap_or_else(|| panic!("/down in the failures ring: {failures:?}"));
    assert_eq!(down.protocol, "h3");
    assert_eq!(down.client.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_ne!(down.reason, "switched", "{down:?}");
    assert!(!down.explanation.is_empty(), "{down:?}");

    // An echo app route of the config is served by the front itself.
    let echo = format!("wss://127.0.0.1:{}/echo", gw.addr.port());
    let (mut e, _) = switchyard::h3::connect_h3(&echo, &client(&cert))
        .await
        .expect("echo app over h3");
    e.send(Message::text("app")).await.unwrap();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), e.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::text("app")
    );
    drop(e);

    let metrics = gw.gw.metrics().render();
    assert!(
        metrics.contains("result=\"refused\",reason=\"origin\""),
        "{metrics}"
    );
    assert!(metrics.contains("result=\"bad_gateway\""), "{metrics}");

    // Drain: the proxied HTTP/3 WebSocket gets close 1001.
    let running = gw;
    let stopping = tokio::spawn(running.stop());
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match m {
            Ok(Message::Close(f)) => {
                code = f.map(|f| f.code);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("unexpected error at drain: {e}"),
        }
    }
    assert_eq!(code, Some(CloseCode::GOING_AWAY), "close 1001 at drain");
    drop(ws);
    stopping.await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// One message there and back on an echo WebSocket.
async fn echo_once<S>(ws: &mut switchyard::WebSocket<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text(text));
}

#[tokio::test]
async fn echo_app_websockets_over_h1_h2_h3_appear_in_metrics_and_status_while_open() {
    let (dir, cert, key) = cert_files("app-metrics");
    let gw = gateway(&format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"h1\", \"h2\", \"h3\"]\n\
         tls = {{ cert = {cert:?}, key = {key:?} }}\n\
         [[route]]\npath = \"/echo\"\napp = \"echo\"\n"
    ))
    .await;
    let url = format!("wss://127.0.0.1:{}/echo", gw.addr.port());
    let (mut h1, _) = client(&cert).connect(&url).await.expect("echo over h1");
    let (mut h2, _) = switchyard::h2::connect_h2(&url, &client(&cert))
        .await
        .expect("echo over h2");
    let (mut h3, _) = switchyard::h3::connect_h3(&url, &client(&cert))
        .await
        .expect("echo over h3");
    echo_once(&mut h1, "one").await;
    echo_once(&mut h2, "two").await;
    echo_once(&mut h3, "three").await;

    let metrics = gw.gw.metrics().render();
    for proto in ["h1", "h2", "h3"] {
        let series = format!(
            "switchyard_open_connections{{route=\"/echo\",protocol=\"{proto}\",transport=\"websocket\"}} 1"
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
        let handshakes = format!(
            "switchyard_handshake_duration_seconds_count{{route=\"/echo\",protocol=\"{proto}\"}} 1"
        );
        assert!(metrics.contains(&handshakes), "{handshakes} in\n{metrics}");
    }
    assert_eq!(gw.gw.metrics().upgrade_attempts("switched", "switched"), 3);
    // Each front's echo counted its message as it echoed it (the
    // connections are still open): one each, 3 + 3 + 5 payload bytes.
    for dir in switchyard_gateway::metrics::Direction::BOTH {
        assert_eq!(gw.gw.metrics().messages("/echo", dir), 3, "{metrics}");
        assert_eq!(gw.gw.metrics().bytes("/echo", dir), 11, "{metrics}");
    }
    let conns = gw.gw.connections().snapshot();
    let mut seen: Vec<_> = conns
        .iter()
        .map(|c| (c.info.tag.target.as_str(), c.info.protocol.label()))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [("app echo", "h1"), ("app echo", "h2"), ("app echo", "h3")]
    );

    // Closed by the client with 1000: gone from the gauge and the table,
    // counted as the client's close.
    for ws_close in [
        h1.close(CloseCode::NORMAL, "bye").boxed(),
        h2.close(CloseCode::NORMAL, "bye").boxed(),
        h3.close(CloseCode::NORMAL, "bye").boxed(),
    ] {
        ws_close.await.unwrap();
    }
    let m = gw.gw.metrics();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while m.closes(
        "/echo",
        switchyard_gateway::outcome::Blame::Client,
        switchyard_gateway::metrics::CloseWhy::CloseFrame,
    ) < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "three closes counted: {}",
            m.render()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = m.render();
    for proto in ["h1", "h2", "h3"] {
        assert_eq!(m.open_connections("/echo", proto), 0, "{metrics}");
    }
    assert!(
        metrics.contains(
            "switchyard_closes_total{route=\"/echo\",by=\"client\",why=\"close_frame\",code=\"1000\"} 3"
        ),
        "{metrics}"
    );
    assert!(gw.gw.connections().is_empty());
    drop((h1, h2, h3));
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A whole HTTP/3 answer: its status and body.
async fn whole(resp: http::Response<switchyard::h3::H3Body>) -> (http::StatusCode, Vec<u8>) {
    use http_body_util::BodyExt;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the answer's body did not end")
        .unwrap();
    (status, body.to_bytes().to_vec())
}

#[tokio::test]
async fn a_fallback_session_runs_over_http3_with_the_event_stream_beside_the_sends() {
    use http_body_util::BodyExt;
    use switchyard::fallback::sse::SseParser;
    use switchyard::fallback::wire::{OpenResponse, Payload, PollResponse, SendAck, Seq};

    let (dir, cert, key) = cert_files("session");
    let gw = gateway(&config(&cert, &key, closed_port())).await;
    let url = format!("wss://127.0.0.1:{}/echo", gw.addr.port());
    let conn = switchyard::h3::H3Connection::connect(&url, &client(&cert))
        .await
        .unwrap();
    let request = |method: http::Method, target: &str, ct: &str, body: Vec<u8>| {
        Request::builder()
            .method(method)
            .uri(target)
            .header("content-type", ct)
            .body(bytes::Bytes::from(body))
            .unwrap()
    };
    let json = "application/json";
    let open = conn
        .send_request(request(
            http::Method::POST,
            "/echo?sw=open",
            json,
            b"{}".into(),
        ))
        .await
        .unwrap();
    let (status, body) = whole(open).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let s: OpenResponse = serde_json::from_slice(&body).unwrap();
    let q = |action: &str, extra: &str| {
        format!("/echo?sw={action}&sid={}&token={}{extra}", s.sid, s.token)
    };

    // The request body is read through the route's limit.
    let small = conn
        .send_request(request(
            http::Method::POST,
            "/small?sw=open",
            json,
            vec![b' '; 2048],
        ))
        .await
        .unwrap();
    let (status, body) = whole(small).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));

    // The event stream is one request stream; every send is another.
    let sse = conn
        .send_request(request(http::Method::GET, &q("sse", ""), "", Vec::new()))
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut events = sse.into_body();
    let mut parser = SseParser::new(1 << 20);
    let mut got = Vec::new();
    let n = 1000u64;
    let sending = async {
        for i in 1..=n {
            let target = q("send", &format!("&seq={i}"));
            let body = format!("m{i}").into_bytes();
            let resp = conn
                .send_request(request(http::Method::POST, &target, "text/plain", body))
                .await
                .unwrap();
            let (status, body) = whole(resp).await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            let ack: SendAck = serde_json::from_slice(&body).unwrap();
            assert_eq!(ack.acked, Seq(i));
        }
    };
    let receiving = async {
        while (got.len() as u64) < n {
            let frame = tokio::time::timeout(Duration::from_secs(10), events.frame())
                .await
                .expect("the event stream went quiet")
                .expect("the event stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                parser.feed(&data, &mut got).unwrap();
            }
        }
    };
    tokio::join!(sending, receiving);
    for (i, e) in got.iter().enumerate() {
        let seq = i + 1;
        assert_eq!(e.id.as_deref(), Some(seq.to_string().as_str()));
        assert_eq!(e.data, format!("m{seq}"));
    }

    // A poll over HTTP/3 (another reader: it ends the event stream).
    let poll = |after: u64| {
        let get = request(
            http::Method::GET,
            &q("poll", &format!("&after={after}")),
            "",
            Vec::new(),
        );
        let sent = conn.send_request(get);
        async move {
            let (status, body) = whole(sent.await.unwrap()).await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            serde_json::from_slice::<PollResponse>(&body).unwrap()
        }
    };
    let polled = poll(999).await;
    assert_eq!(polled.messages.len(), 1, "{polled:?}");
    assert_eq!(polled.messages[0].seq, Seq(1000));
    assert!(
        matches!(&polled.messages[0].payload, Payload::Text(t) if t.as_str() == "m1000"),
        "{polled:?}"
    );

    // The close reaches the backend, whose reply is the session's last message.
    let close = br#"{"code":1000,"reason":"done"}"#.to_vec();
    let (status, body) = whole(
        conn.send_request(request(http::Method::POST, &q("close", ""), json, close))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let polled = poll(1000).await;
    assert!(
        matches!(&polled.messages[..], [e] if matches!(&e.payload, Payload::Close(f) if f.code == switchyard::CloseCode::NORMAL)),
        "{polled:?}"
    );
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn answers_to_head_over_http3_have_the_get_headers_and_no_body() {
    let (dir, cert, key) = cert_files("head");
    let gw = gateway(&config(&cert, &key, closed_port())).await;
    let url = format!("wss://127.0.0.1:{}/echo", gw.addr.port());
    let conn = switchyard::h3::H3Connection::connect(&url, &client(&cert))
        .await
        .unwrap();
    let request = |method: http::Method, path: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .body(bytes::Bytes::new())
            .unwrap()
    };
    // Not found, a refusal (a plain request on a WebSocket route), a plain
    // request on a proxied route, the client script: the GET's status and
    // length, no body.
    for path in ["/nope", "/echo", "/ws", "/.switchyard/client.js"] {
        let get = conn.send_request(request(http::Method::GET, path)).await;
        let (get_status, get_body) = whole(get.unwrap()).await;
        assert!(!get_body.is_empty(), "{path}");
        let head = conn
            .send_request(request(http::Method::HEAD, path))
            .await
            .unwrap();
        let length = head.headers()["content-length"].clone();
        let (status, body) = whole(head).await;
        assert_eq!(status, get_status, "{path}");
        assert!(
            body.is_empty(),
            "HEAD {path} sent a body: {:?}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(length, get_body.len().to_string().as_str(), "{path}");
    }
    // A session request answers HEAD 405 (`sw=close` takes POST) without its JSON.
    let head = conn
        .send_request(request(http::Method::HEAD, CLOSE_QUERY))
        .await
        .unwrap();
    assert_eq!(
        head.headers().get("allow").map(|v| v.as_bytes()),
        Some(&b"POST"[..]),
        "{head:?}"
    );
    let (status, body) = whole(head).await;
    assert_eq!(status, 405);
    assert!(body.is_empty(), "{:?}", String::from_utf8_lossy(&body));
    drop(conn);
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_malformed_session_query_gets_400_over_http1_http2_and_http3() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (dir, cert, key) = cert_files("malformed");
    // The TLS listener (h1, h3), and a cleartext one for h1 and h2 (prior
    // knowledge).
    let plain = "[[listener]]\naddress = \"127.0.0.1:0\"\nprotocols = [\"h1\", \"h2\"]\n";
    let gw = gateway(&format!("{}{plain}", config(&cert, &key, closed_port()))).await;
    let cleartext = gw.listeners[1];
    let url = format!("wss://127.0.0.1:{}/echo", gw.addr.port());
    let h3 = switchyard::h3::H3Connection::connect(&url, &client(&cert))
        .await
        .unwrap();
    let (h2, h2_conn) =
        h2::client::handshake(tokio::net::TcpStream::connect(cleartext).await.unwrap())
            .await
            .unwrap();
    tokio::spawn(h2_conn);
    const SID: &str = "00000000000000000000000000000000";
    let queries = [
        "sw=nonsense".to_string(),
        format!("sw=close&sid={SID}&sid={SID}&token={SID}"),
        format!("sw=close&sid=xyz&token={SID}"),
        format!("sw=poll&sid={SID}&token={SID}"),
        format!("sw=send&sid={SID}&token={SID}&seq=-1"),
    ];
    for q in &queries {
        let path = format!("/echo?{q}");
        for method in [http::Method::HEAD, http::Method::GET] {
            // HTTP/1.1: the status line.
            let mut tcp = tokio::net::TcpStream::connect(cleartext).await.unwrap();
            let head =
                format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
            tcp.write_all(head.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            tcp.read_to_end(&mut answer).await.unwrap();
            let answer = String::from_utf8_lossy(&answer).into_owned();
            let h1_status: u16 = answer[9..12].parse().unwrap();
            // HTTP/2.
            let req = Request::builder()
                .method(method.clone())
                .uri(format!("http://localhost{path}"))
                .body(())
                .unwrap();
            let (resp, _) = h2
                .clone()
                .ready()
                .await
                .unwrap()
                .send_request(req, true)
                .unwrap();
            let h2_status = resp.await.unwrap().status().as_u16();
            // HTTP/3.
            let req = Request::builder()
                .method(method.clone())
                .uri(path.as_str())
                .body(bytes::Bytes::new())
                .unwrap();
            let h3_status = h3.send_request(req).await.unwrap().status().as_u16();
            assert_eq!(
                (h1_status, h2_status, h3_status),
                (400, 400, 400),
                "{method} {path}: {answer}"
            );
        }
    }
    drop(h3);
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A well-formed `sw=close` of a session that does not exist.
const CLOSE_QUERY: &str =
    "/echo?sw=close&sid=00000000000000000000000000000000&token=00000000000000000000000000000000";

#[tokio::test]
async fn the_library_session_client_runs_over_http3() {
    use switchyard::fallback::{FallbackBuilder, Transport};
    let (dir, cert, key) = cert_files("fallback-h3");
    let gw = gateway(&config(&cert, &key, closed_port())).await;
    let url = format!("https://127.0.0.1:{}/echo", gw.addr.port());
    for transport in [Transport::Sse, Transport::Poll] {
        let mut s = FallbackBuilder::new(transport)
            .http3(true)
            .tls(client(&cert))
            .connect(&url)
            .await
            .unwrap();
        for i in 0..20 {
            s.feed(Message::text(format!("m{i}"))).await.unwrap();
        }
        s.flush().await.unwrap();
        for i in 0..20 {
            let m = tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .expect("an echo")
                .unwrap()
                .unwrap();
            assert_eq!(m, Message::text(format!("m{i}")), "{transport}");
        }
        s.close(CloseCode::from(4000), "bye").await.unwrap();
        let last = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("the close")
            .unwrap()
            .unwrap();
        match last {
            Message::Close(Some(f)) => assert_eq!(f.code.0, 4000),
            other => panic!("{other:?}"),
        }
    }
    // The client speaks QUIC: a gateway serving only HTTP/1.1 on TLS does
    // not answer it.
    let h1_only = config(&cert, &key, closed_port()).replace("[\"h1\", \"h3\"]", "[\"h1\"]");
    let tcp = gateway(&h1_only).await;
    let err = FallbackBuilder::new(Transport::Sse)
        .http3(true)
        .tls(client(&cert))
        .request_timeout(Duration::from_millis(500))
        .connect(&format!("https://127.0.0.1:{}/echo", tcp.addr.port()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, switchyard::fallback::FallbackError::Timeout(_)),
        "{err}"
    );
    tcp.stop().await;
    // HTTP/3 needs TLS: a cleartext URL is refused up front.
    let err = FallbackBuilder::new(Transport::Sse)
        .http3(true)
        .connect(&format!("http://127.0.0.1:{}/echo", gw.addr.port()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("HTTP/3 always uses TLS"), "{err}");
    gw.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

//! `switchyard serve --config` as a process: the reverse proxy in front of a
//! real echo backend, --check-config, SIGHUP / `switchyard reload`, the
//! admin listener, SIGTERM drain.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{temp_dir, Proc, BIN};
use futures_util::{SinkExt, StreamExt};
use switchyard::{CloseCode, Error, Message};

/// Start `switchyard ARGS` and return the addresses of its first `lines`
/// stdout lines.
fn start(args: &[&str], lines: usize) -> (Proc, Vec<SocketAddr>) {
    common::switchyard(args, lines)
}

fn write(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn config(backend: SocketAddr, route_path: &str) -> String {
    format!(
        "[[listener]]\naddress = \"127.0.0.1:0\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\
         [[upstream]]\nname = \"back\"\nservers = [\"ws://{backend}\"]\n\
         [[route]]\npath = \"{route_path}\"\nupstream = \"back\"\n\
         [route.policy]\ndrain_timeout = \"2s\"\n\
         [[route]]\npath = \"/\"\napp = \"index\"\n"
    )
}

/// The gateway: proxy address and admin address.
fn gateway(cfg: &Path, extra: &[&str]) -> (Proc, SocketAddr, SocketAddr) {
    let mut args = vec!["serve", "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (p, a) = start(&args, 2);
    (p, a[0], a[1])
}

/// An echo backend accepting WebSocket on any path (in this process).
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

type Ws = switchyard::WebSocket<switchyard::client::MaybeTlsStream>;

async fn roundtrip(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo in time")
        .expect("open")
        .expect("no error");
    assert_eq!(got, Message::text(text));
}

async fn http(addr: SocketAddr, req: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("answer")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
    )
    .await
}

#[test]
fn check_config_accepts_a_good_file_and_the_default() {
    let dir = temp_dir("check-good");
    let file = dir.join("ok.toml");
    write(&file, &config("127.0.0.1:9".parse().unwrap(), "/ws"));
    let out = Command::new(BIN)
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no warning");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("configuration OK"), "{text}");
    assert!(text.contains("2 route(s)"), "{text}");
    let out = Command::new(BIN)
        .args(["serve", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("embedded default"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_warns_about_an_open_admin_listener_without_a_token() {
    let dir = temp_dir("check-admin");
    let file = dir.join("open.toml");
    let open = config("127.0.0.1:9".parse().unwrap(), "/ws").replace(
        "[admin]\naddress = \"127.0.0.1:0\"",
        "[admin]\naddress = \"0.0.0.0:0\"",
    );
    write(&file, &open);
    let check = |file: &Path| {
        Command::new(BIN)
            .args(["serve", "--check-config", "--config"])
            .arg(file)
            .output()
            .unwrap()
    };
    let out = check(&file);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: admin.address 0.0.0.0:0 is not a loopback address"),
        "{err}"
    );
    assert!(err.contains("token_file"), "{err}");
    // With a token (a path relative to the config file) it is quiet.
    write(&dir.join("admin.token"), "t0ken\n");
    write(
        &file,
        &open.replace("[admin]\n", "[admin]\ntoken_file = \"admin.token\"\n"),
    );
    let out = check(&file);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn admin_token_is_enforced_on_every_endpoint_and_rotated_by_reload() {
    let dir = temp_dir("admin-token");
    let file = dir.join("gw.toml");
    let token = dir.join("admin.token");
    write(&token, "first-T0KEN\n");
    write(
        &file,
        &config("127.0.0.1:9".parse().unwrap(), "/ws")
            .replace("[admin]\n", "[admin]\ntoken_file = \"admin.token\"\n"),
    );
    let (gw, _addr, admin) = gateway(&file, &[]);
    let ask = |method: &str, path: &str, auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("authorization: {a}\r\n"))
            .unwrap_or_default();
        format!("{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n")
    };
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/status.json"),
        ("GET", "/status/failures"),
        ("POST", "/reload"),
        ("GET", "/nothing"),
    ] {
        let none = http(admin, &ask(method, path, None)).await;
        assert!(none.starts_with("HTTP/1.1 401 "), "{path}: {none}");
        assert!(
            none.contains("www-authenticate: Bearer realm=\"switchyard admin\"\r\n"),
            "{none}"
        );
        assert!(!none.contains("switchyard_"), "{none}");
        let wrong = http(admin, &ask(method, path, Some("Bearer first-T0KE"))).await;
        assert!(wrong.starts_with("HTTP/1.1 401 "), "{path}: {wrong}");
        assert!(wrong.contains("error=\"invalid_token\""), "{wrong}");
    }
    let log = gw.wait_log("admin request refused: wrong bearer token");
    assert!(log.contains("127.0.0.1"), "{log}");
    // The dashboard page holds no data: served without the token, its
    // script sends the token of the URL fragment to /status.json.
    let page = http(admin, &ask("GET", "/status", None)).await;
    assert!(page.starts_with("HTTP/1.1 200 "), "{page}");
    assert!(page.contains("Authorization: `Bearer ${token}`"), "{page}");
    assert!(!page.contains("/ws"), "{page}");
    // `monitor --admin` needs the token too.
    let monitor = |token_file: Option<&Path>| {
        let mut c = Command::new(BIN);
        c.args(["monitor", "--admin", &admin.to_string(), "--once"]);
        if let Some(f) = token_file {
            c.arg("--token-file").arg(f);
        }
        c.output().unwrap()
    };
    let out = monitor(None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let out = monitor(Some(&token));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("generation 1"),
        "{out:?}"
    );
    let ok = http(admin, &ask("GET", "/metrics", Some("Bearer first-T0KEN"))).await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    assert!(ok.contains("switchyard_"), "{ok}");

    // `switchyard reload --admin` without the token is refused, with it
    // reloads; the reload reads the rotated token file.
    let reload = |token_file: Option<&Path>| {
        let mut c = Command::new(BIN);
        c.args(["reload", "--admin", &admin.to_string()]);
        if let Some(f) = token_file {
            c.arg("--token-file").arg(f);
        }
        c.output().unwrap()
    };
    let out = reload(None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let old = dir.join("old.token");
    std::fs::copy(&token, &old).unwrap();
    write(&token, "second-T0KEN\n");
    let out = reload(Some(&old));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("reloaded: generation 2"),
        "{out:?}"
    );
    let stale = http(
        admin,
        &ask("GET", "/status.json", Some("Bearer first-T0KEN")),
    )
    .await;
    assert!(stale.starts_with("HTTP/1.1 401 "), "{stale}");
    let out = reload(Some(&token));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_rejects_a_bad_file_naming_the_line_and_key() {
    let dir = temp_dir("check-bad");
    let file = dir.join("bad.toml");
    write(
        &file,
        "[[listener]]\naddress = \"127.0.0.1:0\"\nbogus = 1\n[[route]]\npath = \"/\"\napp = \"index\"\n",
    );
    let out = Command::new(BIN)
        .args(["serve", "--check-config", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus"), "{err}");
    // file:LINE: key path: what was expected
    assert!(err.contains("bad.toml:3: listener[0].bogus"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn proxies_to_our_own_serve_and_reports_metrics_and_status() {
    // The backend: `switchyard serve` (echo on /echo).
    let (_backend, b) = start(&["serve", "--listen", "127.0.0.1:0"], 1);
    let dir = temp_dir("e2e");
    let file = dir.join("gw.toml");
    write(&file, &config(b[0], "/echo"));
    let (gw, addr, admin) = gateway(&file, &[]);
    let (mut ws, resp) = switchyard::connect(&format!("ws://{addr}/echo"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        roundtrip(&mut ws, &format!("m{i}")).await;
    }
    let json = get(admin, "/status.json").await;
    assert!(json.contains("\"client\":\"127.0.0.1:"), "{json}");
    let json = json.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["live_connections"], 1, "{v}");
    let echo = v["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == "/echo"))
        .unwrap_or_else(|| panic!("/echo in {v}"));
    assert_eq!(
        echo["open"],
        serde_json::json!([{"protocol": "h1", "transport": "websocket", "connections": 1}]),
        "{v}"
    );
    assert_eq!(echo["handshakes"][0]["count"], 1, "{v}");
    // `monitor --admin --once` prints the same live table.
    let out = Command::new(BIN)
        .args(["monitor", "--admin", &admin.to_string(), "--once"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(table.contains("1 live connection(s)"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("/echo "))
        .unwrap_or_else(|| panic!("no /echo row in {table}"));
    assert!(row.contains("upstream back"), "{row}");
    assert!(row.contains("h1 websocket 1"), "{row}");
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let log = gw.wait_log("upgrade attempt");
    assert!(log.contains("route=\"/echo\""), "{log}");
    assert!(log.contains("result=\"switched\""), "{log}");
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = get(admin, "/metrics").await;
        if metrics.contains(
            "switchyard_upgrade_attempts_total{route=\"/echo\",result=\"switched\",reason=\"switched\"} 1",
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.contains(
            "switchyard_upgrade_attempts_total{route=\"/echo\",result=\"switched\",reason=\"switched\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "switchyard_handshake_duration_seconds_count{route=\"/echo\",protocol=\"h1\"} 1\n"
        ),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sighup_reload_changes_the_route_keeps_tunnels_and_rejects_a_broken_file() {
    let back = any_path_backend().await;
    let dir = temp_dir("hup");
    let file = dir.join("gw.toml");
    let pid = dir.join("gw.pid");
    write(&file, &config(back, "/a"));
    let (gw, addr, admin) = gateway(&file, &["--pid-file", pid.to_str().unwrap()]);
    let (mut old, _) = switchyard::connect(&format!("ws://{addr}/a"))
        .await
        .unwrap();
    roundtrip(&mut old, "before").await;

    write(&file, &config(back, "/b"));
    gw.signal("HUP");
    gw.wait_log("generation=2");
    roundtrip(&mut old, "after").await;
    let err = switchyard::connect(&format!("ws://{addr}/a"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UpgradeRefused { .. }), "{err}");
    let (mut new, _) = switchyard::connect(&format!("ws://{addr}/b"))
        .await
        .unwrap();
    roundtrip(&mut new, "new").await;

    // Broken file via `switchyard reload --pid-file`: logged, old config kept.
    write(&file, &format!("{}\nunknown_key = 1\n", config(back, "/c")));
    let out = Command::new(BIN)
        .args(["reload", "--pid-file"])
        .arg(&pid)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let log = gw.wait_log("reload rejected");
    assert!(log.contains("unknown_key"), "{log}");
    // ... and through the admin listener: exit 1 with the reason.
    let out = Command::new(BIN)
        .args(["reload", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("unknown_key"));
    let (mut again, _) = switchyard::connect(&format!("ws://{addr}/b"))
        .await
        .unwrap();
    roundtrip(&mut again, "still /b").await;
    roundtrip(&mut old, "still old").await;
    roundtrip(&mut new, "still new").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sigterm_drain_sends_1001_to_every_proxied_client() {
    let back = any_path_backend().await;
    let dir = temp_dir("term");
    let file = dir.join("gw.toml");
    write(&file, &config(back, "/ws"));
    let (mut gw, addr, _) = gateway(&file, &[]);
    let mut clients = Vec::new();
    for i in 0..4 {
        let (mut ws, _) = switchyard::connect(&format!("ws://{addr}/ws"))
            .await
            .unwrap();
        roundtrip(&mut ws, &format!("c{i}")).await;
        clients.push(ws);
    }
    gw.signal("TERM");
    for mut ws in clients {
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("close in time");
        match got {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::GOING_AWAY),
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    let st = gw.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_dropped_connections_across_five_sighup_reloads_under_load() {
    let back = any_path_backend().await;
    let dir = temp_dir("load");
    let file = dir.join("gw.toml");
    write(&file, &config(back, "/ws"));
    let (gw, addr, _) = gateway(&file, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..8 {
        let url = format!("ws://{addr}/ws");
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
    for i in 0..5u64 {
        let text = config(back, "/ws").replace(
            "drain_timeout = \"2s\"",
            &format!("drain_timeout = \"2s\"\nmax_connections = {}", 1000 + i),
        );
        write(&file, &text);
        gw.signal("HUP");
        gw.wait_log(&format!("generation={}", i + 2));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let n = t.await.unwrap();
        assert!(n > 5, "each client kept exchanging messages: {n}");
    }
    assert!(!gw.stderr().contains("reload rejected"), "{}", gw.stderr());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn json_logs_give_one_object_per_upgrade_attempt() {
    let back = any_path_backend().await;
    let dir = temp_dir("json-logs");
    let file = dir.join("gw.toml");
    write(&file, &config(back, "/ws"));
    let (p, proxy, _admin) = gateway(&file, &["--log-format", "json"]);
    let (mut ws, _) = switchyard::connect(&format!("ws://{proxy}/ws/json?q=1"))
        .await
        .unwrap();
    roundtrip(&mut ws, "json").await;
    ws.close(CloseCode::NORMAL, "").await.unwrap();
    drop(ws);
    // The attempt's line is written when the tunnel ends: wait for it.
    let mut line = None;
    for _ in 0..250 {
        line = p
            .stderr()
            .lines()
            .find(|l| l.contains("\"upgrade attempt\""))
            .map(str::to_owned);
        if line.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = p.stderr();
    // Every line is a JSON object (nothing else on stderr).
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        assert!(v.is_object(), "{l}");
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{l}"
        );
    }
    let line = line.unwrap_or_else(|| panic!("no upgrade attempt line:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["message"], "upgrade attempt", "{line}");
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["route"], "/ws", "{line}");
    assert!(
        v["upstream"].as_str().unwrap().contains(&back.to_string()),
        "{line}"
    );
    assert_eq!(v["result"], "switched", "{line}");
    assert_eq!(v["reason"], "switched", "{line}");
    let client: SocketAddr = v["client"].as_str().unwrap().parse().unwrap();
    assert!(client.ip().is_loopback(), "{line}");
    assert!(v["detail"].as_str().unwrap().contains("tunnel"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

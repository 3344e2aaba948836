//! `switchyard monitor`: JSON lines against our echo server, the Prometheus
//! endpoint, a target that is down, a server that closes with 1011.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use switchyard::server::AcceptConfig;
use switchyard::CloseCode;
use tokio::net::TcpListener;

mod common;
use common::echo_server;

const WAIT: Duration = Duration::from_secs(20);

/// A WebSocket server that closes every connection with 1011 right away.
fn closing_1011_server() -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let cfg = AcceptConfig::default();
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                if let Ok(mut ws) = switchyard::accept(s, &cfg).await {
                    let _ = ws
                        .close(CloseCode::INTERNAL_ERROR, "backend exploded")
                        .await;
                }
            }
        });
    });
    rx.recv().unwrap()
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Monitor {
    child: Child,
    events: mpsc::Receiver<Value>,
    metrics_addr: Option<String>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `switchyard monitor ARGS`; every stdout line must be a JSON object.
fn monitor(args: &[&str], with_metrics: bool) -> Monitor {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("monitor").args(args).env("RUST_LOG", "warn");
    if with_metrics {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, events) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
            assert!(v.is_object(), "{line}");
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let metrics_addr = with_metrics.then(|| {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("metrics on http://")
            .and_then(|r| r.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("unexpected stderr line {line:?}"))
            .to_owned()
    });
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stderr.read_to_string(&mut sink);
    });
    Monitor {
        child,
        events,
        metrics_addr,
    }
}

impl Monitor {
    /// Wait for an event matching `pred`.
    fn until(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} event in time"));
            if pred(&v) {
                return v;
            }
        }
    }

    fn get(&self, path: &str) -> (String, String) {
        let addr = self.metrics_addr.as_ref().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }
}

fn event(v: &Value) -> &str {
    v["event"].as_str().unwrap_or("")
}

/// The value of the sample line `name{labels}` in a Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn json_lines_against_the_echo_server() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let m = monitor(&[&url, "--interval", "100ms"], false);
    let c = m.until("connected", |v| event(v) == "connected");
    assert_eq!(c["target"], url.as_str());
    assert_eq!(c["up"], true);
    assert_eq!(c["connection"], 1);
    let hs = c["handshake_ms"].as_f64().unwrap();
    assert!(hs > 0.0 && hs < 10_000.0, "{c}");
    assert!(c["time"].as_str().unwrap().ends_with('Z'), "{c}");
    let mut rtts = Vec::new();
    for _ in 0..3 {
        let p = m.until("ping", |v| event(v) == "ping");
        assert_eq!(p["target"], url.as_str());
        let rtt = p["rtt_ms"].as_f64().unwrap();
        assert!((0.0..10_000.0).contains(&rtt), "{p}");
        let a = p["availability"].as_f64().unwrap();
        assert!(a > 0.0 && a <= 1.0, "{p}");
        rtts.push(rtt);
    }
    assert_eq!(rtts.len(), 3);
}

#[test]
fn duration_stops_with_status_0() {
    let addr = echo_server();
    let mut m = monitor(
        &[
            &format!("ws://{addr}/echo"),
            "--interval",
            "100ms",
            "--duration",
            "1500ms",
        ],
        false,
    );
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = m.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "monitor did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let pings = m.events.try_iter().filter(|v| event(v) == "ping").count();
    assert!(pings >= 2, "{pings} pings in 1.5 s at 100 ms interval");
}

#[test]
fn metrics_endpoint_reports_up_handshake_and_rtt() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let m = monitor(&[&url, "--interval", "100ms"], true);
    m.until("ping", |v| event(v) == "ping");
    m.until("second ping", |v| event(v) == "ping");
    let (status, body) = m.get("/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let t = format!("target=\"{url}\"");
    assert_eq!(
        sample(&body, &format!("switchyard_monitor_up{{{t}}}")),
        Some(1.0),
        "{body}"
    );
    let hs = sample(
        &body,
        &format!("switchyard_monitor_handshake_seconds{{{t}}}"),
    )
    .unwrap();
    assert!(hs > 0.0 && hs < 10.0, "{body}");
    let count = sample(
        &body,
        &format!("switchyard_monitor_ping_rtt_seconds_count{{{t}}}"),
    )
    .unwrap();
    assert!(count >= 2.0, "{body}");
    let inf = sample(
        &body,
        &format!("switchyard_monitor_ping_rtt_seconds_bucket{{{t},le=\"+Inf\"}}"),
    )
    .unwrap();
    assert_eq!(inf, count, "{body}");
    assert!(body.contains("# TYPE switchyard_monitor_ping_rtt_seconds histogram\n"));
    assert_eq!(
        sample(
            &body,
            &format!("switchyard_monitor_connect_attempts_total{{{t}}}")
        ),
        Some(1.0),
        "{body}"
    );

    let (status, _) = m.get("/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn a_target_that_is_down_shows_up_0_and_retries() {
    let down = free_port();
    let url = format!("ws://{down}/");
    let m = monitor(&[&url, "--interval", "100ms"], true);
    let f1 = m.until("connect_failed", |v| event(v) == "connect_failed");
    assert_eq!(f1["attempt"], 1);
    assert_eq!(f1["up"], false);
    assert_eq!(f1["retry_in_ms"], 250);
    assert!(
        f1["error"]
            .as_str()
            .unwrap()
            .contains("nothing is listening"),
        "{f1}"
    );
    let f2 = m.until("second connect_failed", |v| event(v) == "connect_failed");
    assert_eq!(f2["attempt"], 2);
    assert_eq!(f2["retry_in_ms"], 500);
    let (_, body) = m.get("/metrics");
    let t = format!("target=\"{url}\"");
    assert_eq!(
        sample(&body, &format!("switchyard_monitor_up{{{t}}}")),
        Some(0.0),
        "{body}"
    );
    assert!(
        sample(
            &body,
            &format!("switchyard_monitor_connect_failures_total{{{t}}}")
        )
        .unwrap()
            >= 2.0,
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            &format!("switchyard_monitor_availability_ratio{{{t}}}")
        ),
        Some(0.0),
        "{body}"
    );
}

#[test]
fn a_1011_close_is_counted_with_its_code() {
    let addr = closing_1011_server();
    let url = format!("ws://{addr}/");
    let m = monitor(&[&url, "--interval", "100ms"], true);
    m.until("connected", |v| event(v) == "connected");
    let d = m.until("disconnected", |v| event(v) == "disconnected");
    assert_eq!(d["code"], 1011, "{d}");
    assert_eq!(d["reason"], "backend exploded", "{d}");
    assert_eq!(d["up"], false);
    // It reconnects and is closed again.
    let c2 = m.until("second connection", |v| event(v) == "connected");
    assert_eq!(c2["connection"], 2);
    m.until("second disconnect", |v| event(v) == "disconnected");
    let (_, body) = m.get("/metrics");
    let n = sample(
        &body,
        &format!("switchyard_monitor_disconnects_total{{target=\"{url}\",code=\"1011\"}}"),
    )
    .unwrap();
    assert!(n >= 2.0, "{body}");
    assert!(!body.contains("code=\"1006\""), "{body}");
}

/// On a terminal (a pty from util-linux `script`): the live table, redrawn
/// with ANSI codes, no JSON.
#[test]
fn live_table_on_a_terminal() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let down = format!("ws://{}/", free_port());
    let cmd = format!(
        "'{}' monitor {url} {down} --interval 100ms --duration 1200ms",
        env!("CARGO_BIN_EXE_switchyard")
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("RUST_LOG", "warn")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("util-linux `script` is needed for the pty test");
    assert_eq!(out.status.code(), Some(0));
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("\x1b[H\x1b[J"), "{screen:?}");
    assert!(screen.contains("TARGET"), "{screen:?}");
    assert!(!screen.contains("\"event\""), "{screen:?}");
    // The last frame: the echo target is up, the other down with the reason.
    let last = screen.rsplit("\x1b[H\x1b[J").next().unwrap();
    let row = |target: &str| {
        last.lines()
            .find(|l| l.starts_with(target))
            .unwrap_or_else(|| panic!("no row for {target} in {last:?}"))
            .to_owned()
    };
    assert!(row(&url).contains("up"), "{last:?}");
    assert!(row(&url).contains(" ms"), "{last:?}");
    assert!(row(&down).contains("down"), "{last:?}");
    assert!(row(&down).contains("nothing is listening"), "{last:?}");
}

/// Answers the upgrade with a valid 101, then never reads nor writes again:
/// pings go unanswered.
fn silent_server() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            let mut held = Vec::new();
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let key = text
                    .lines()
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("sec-websocket-key")
                            .then(|| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                let accept = switchyard::proto::handshake::accept_key(key.as_bytes());
                let resp = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
                held.push(s); // keep it open, silent
            }
        });
    });
    rx.recv().unwrap()
}

#[test]
fn an_unanswered_ping_ends_the_connection_as_timeout() {
    let addr = silent_server();
    let url = format!("ws://{addr}/");
    let m = monitor(
        &[
            &url,
            "--interval",
            "100ms",
            "--ping-timeout",
            "300ms",
            "--no-deflate",
        ],
        true,
    );
    m.until("connected", |v| event(v) == "connected");
    let d = m.until("disconnected", |v| event(v) == "disconnected");
    assert_eq!(d["code"], "timeout", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("no pong"), "{d}");
    let secs = d["connected_for_s"].as_f64().unwrap();
    assert!(secs >= 0.3, "{d}");
    let (_, body) = m.get("/metrics");
    assert!(
        sample(
            &body,
            &format!("switchyard_monitor_disconnects_total{{target=\"{url}\",code=\"timeout\"}}")
        )
        .unwrap()
            >= 1.0,
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            &format!("switchyard_monitor_ping_rtt_seconds_count{{target=\"{url}\"}}")
        ),
        Some(0.0),
        "{body}"
    );
}

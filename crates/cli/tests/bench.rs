//! `switchyard bench` end to end: the built binary against our echo server (in-process) and
//! against servers that refuse.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{echo_server, spawn_server};

/// Answers every request with `status` (e.g. "403 Forbidden") and closes.
fn refusing_server(status: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            });
        }
    });
    addr
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("bench")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn bench_json(args: &[&str]) -> (Output, Value) {
    let out = bench(&[args, &["--json"]].concat());
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text:?}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, v)
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// Latency quantiles are ordered and positive.
fn assert_latency_sane(v: &Value) {
    let qs = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"].map(|k| f(v, k));
    assert!(qs[0] > 0.0, "{v}");
    for w in qs.windows(2) {
        assert!(w[0] <= w[1], "quantiles out of order {qs:?}");
    }
    // Against a local echo server nothing takes 10 s.
    assert!(qs[4] < 10e6, "{qs:?}");
}

#[test]
fn closed_loop_results_are_sane_and_consistent() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let (out, v) = bench_json(&[
        &url, "-c", "4", "-n", "3", "-s", "100", "-d", "1", "-w", "0.2",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(v["mode"], "echo");
    assert_eq!(v["loop"], "closed");
    assert_eq!(u(&v, "errors"), 0, "{v}");
    assert_eq!(v["errors_by_kind"], serde_json::json!({}));
    assert_eq!(
        (u(&v, "connections"), u(&v, "in_flight"), u(&v, "size")),
        (4, 3, 100)
    );
    assert_eq!(v["binary"], false);
    let msgs = u(&v, "messages");
    assert!(msgs > 0);
    assert!(u(&v, "messages_total") >= msgs);
    let secs = f(&v, "seconds");
    assert!((secs - 1.0).abs() < 1e-6, "{secs}");
    let rate = f(&v, "msgs_per_s");
    assert!((rate - msgs as f64 / secs).abs() < 1e-6 * rate.max(1.0));
    assert!((f(&v, "mb_per_s") - rate * 100.0 / 1e6).abs() < 1e-9 * rate.max(1.0));
    assert_latency_sane(&v);
    // The per-second series covers warm-up + measured window and adds up.
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{series:?}");
    let sum: u64 = series.iter().map(|b| u(b, "completed")).sum();
    assert!(
        sum >= msgs && sum <= u(&v, "messages_total"),
        "{sum} vs {msgs}"
    );
    assert!(f(&v, "client_cpu_seconds") >= 0.0);
    // Every CPU's busy fraction over the measured window; the echo kept some CPU busy.
    let busy = v["cpu_busy"].as_object().expect("cpu_busy per CPU");
    let cpus = std::fs::read_to_string("/proc/stat")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    assert_eq!(busy.len(), cpus, "{busy:?}");
    let vals: Vec<f64> = busy.values().map(|b| b.as_f64().unwrap()).collect();
    assert!(vals.iter().all(|b| (0.0..=1.0).contains(b)), "{vals:?}");
    assert!(vals.iter().any(|&b| b > 0.0), "{vals:?}");
}

#[test]
fn binary_messages_and_the_text_summary() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let out = bench(&[
        &url, "-c", "2", "-s", "70000", "--binary", "-d", "0.5", "-w", "0",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("switchyard bench {url}\n")),
        "{text}"
    );
    assert!(text.contains("2 connections, closed loop, 1 in flight each, 70000 B binary"));
    assert!(text.contains("  latency    p50 "), "{text}");
    assert!(text.contains("  CPUs busy  cpu0 "), "{text}");
    assert!(text.contains("\n  errors     0\n"), "{text}");
    // Not a terminal: no progress bar on stderr.
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\r'));
}

#[test]
fn fixed_rate_holds_within_20_percent() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let (out, v) = bench_json(&[&url, "--rate", "500", "-c", "5", "-d", "2s", "-w", "0.5s"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(v["loop"], "open");
    assert_eq!(f(&v, "rate"), 500.0);
    assert_eq!(u(&v, "errors"), 0, "{v}");
    // total == rate * duration, roughly.
    let msgs = u(&v, "messages") as f64;
    assert!(
        (800.0..=1200.0).contains(&msgs),
        "{msgs} messages in 2 s at 500/s"
    );
    assert!((f(&v, "msgs_per_s") - 500.0).abs() <= 100.0, "{v}");
    // And every whole second of the run holds it.
    let series = v["series"].as_array().unwrap();
    let full: Vec<f64> = series
        .iter()
        .filter(|b| f(b, "span") == 1.0)
        .map(|b| f(b, "per_s"))
        .collect();
    assert!(full.len() >= 2, "{series:?}");
    for r in &full {
        assert!((400.0..=600.0).contains(r), "per second {full:?}");
    }
    assert_latency_sane(&v);
}

#[test]
fn html_report_is_self_contained_with_the_plot_data() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let dir = std::env::temp_dir().join(format!("switchyard-bench-html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("report.html");
    let (out, v) = bench_json(&[
        &url,
        "-c",
        "2",
        "-d",
        "1",
        "-w",
        "0.5",
        "--html",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let html = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(
        html.matches("<svg").count(),
        2,
        "throughput and latency charts"
    );
    assert!(html.contains("Throughput") && html.contains("Latency"));
    assert!(html.contains(">p50<") && html.contains(">p99<"));
    // The plotted data, embedded: the same series the JSON has.
    let start = html.find(r#"id="bench-data">"#).unwrap() + r#"id="bench-data">"#.len();
    let end = start + html[start..].find("</script>").unwrap();
    let data: Value = serde_json::from_str(&html[start..end]).unwrap();
    assert_eq!(data["series"].as_array().unwrap().len(), 2);
    assert_eq!(data["messages"], v["messages"]);
    // One polyline per plotted series: throughput, p50, p99; a point per second.
    assert_eq!(html.matches("<polyline").count(), 3);
    // Nothing fetched from elsewhere.
    for bad in ["http://", "https://", "src=", "<link", "@import", "url("] {
        assert!(!html.contains(bad), "{bad} in the report");
    }
}

#[test]
fn handshake_mode_counts_handshakes() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    // Durations in the config's grammar ("500ms", "1.5s") and as bare seconds.
    let (out, v) = bench_json(&[
        &url,
        "--handshakes",
        "-c",
        "2",
        "--duration",
        "500ms",
        "--warmup",
        "0.1",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(v["mode"], "handshakes");
    assert_eq!(f(&v, "warmup"), 0.1);
    assert_eq!(u(&v, "errors"), 0, "{v}");
    let n = u(&v, "handshakes");
    assert!(n > 0);
    assert!(u(&v, "handshakes_total") >= n);
    assert!((f(&v, "handshakes_per_s") - n as f64 / 0.5).abs() < 1e-6 * n as f64 + 1e-9);
    assert_latency_sane(&v);
}

#[test]
fn refused_upgrades_are_counted_by_status() {
    let addr = refusing_server("403 Forbidden");
    let url = format!("ws://{addr}/echo");
    // Echo mode: each of the 3 connections fails its handshake once.
    let (out, v) = bench_json(&[&url, "-c", "3", "-d", "0.2", "-w", "0"]);
    assert_eq!(out.status.code(), Some(1), "nothing completed: failure");
    assert_eq!(u(&v, "messages"), 0);
    assert_eq!(u(&v, "errors"), 3);
    assert_eq!(
        v["errors_by_kind"],
        serde_json::json!({"handshake_status_403": 3})
    );
    assert!(v["first_error"].as_str().unwrap().contains("403 Forbidden"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no message completed"));
    // The text summary says the same.
    let out = bench(&[&url, "-c", "3", "-d", "0.2", "-w", "0"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("\n  latency    - (nothing completed)\n"),
        "{text}"
    );
    assert!(
        text.contains("\n  errors     3: handshake_status_403 3\n"),
        "{text}"
    );
    assert!(
        text.contains("first: the server answered \"HTTP/1.1 403 Forbidden\""),
        "{text}"
    );
    // Handshake mode keeps trying: every error is a 403.
    let (out, v) = bench_json(&[&url, "--handshakes", "-c", "2", "-d", "0.3", "-w", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let errors = u(&v, "errors");
    assert!(errors >= 2, "{v}");
    assert_eq!(u(&v["errors_by_kind"], "handshake_status_403"), errors);
}

#[test]
fn refused_connections_and_early_closes_are_their_own_kinds() {
    // A port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (out, v) = bench_json(&[&format!("ws://{addr}/"), "-c", "2", "-d", "0.2", "-w", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        v["errors_by_kind"],
        serde_json::json!({"connect_refused": 2})
    );
    // A server that accepts and closes without answering.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
        }
    });
    let (out, v) = bench_json(&[&format!("ws://{addr}/"), "-c", "2", "-d", "0.2", "-w", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        v["errors_by_kind"],
        serde_json::json!({"closed_early": 2}),
        "{v}"
    );
}

#[test]
fn ramp_up_opens_connections_gradually_before_measuring() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let t = Instant::now();
    let (out, v) = bench_json(&[&url, "-c", "4", "--ramp-up", "1", "-d", "0.5", "-w", "0"]);
    assert!(out.status.success(), "{out:?}");
    assert!(t.elapsed() >= Duration::from_millis(1500));
    assert_eq!(f(&v, "ramp_up"), 1.0);
    assert_eq!(u(&v, "errors"), 0, "{v}");
    assert!(u(&v, "messages") > 0);
    // Series: second 0 (ramp-up) and second 1 (the measured half second).
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 2, "{series:?}");
    assert_eq!(f(&series[1], "span"), 0.5);
}

#[test]
fn bad_arguments_are_rejected() {
    let out = bench(&["ws://127.0.0.1:1/", "--rate", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate must be"));
    let out = bench(&["ws://127.0.0.1:1/", "--rate", "10", "--handshakes"]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}

/// Accepts the upgrade, then never reads nor answers again.
fn silent_server() -> SocketAddr {
    use base64::Engine as _;
    use sha1::Digest as _;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let Some(key) = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            else {
                continue;
            };
            let mut h = sha1::Sha1::new();
            h.update(key.as_bytes());
            h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
            let accept = base64::engine::general_purpose::STANDARD.encode(h.finalize());
            let _ = write!(
                s,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            held.push(s);
        }
    });
    addr
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn open_loop_against_a_stalled_server_keeps_memory_bounded_and_ends() {
    let addr = silent_server();
    let url = format!("ws://{addr}/");
    let t = Instant::now();
    // 100 million 1 KiB messages per second would be 100 GB/s: far more than the socket takes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args([
            "bench",
            &url,
            "--rate",
            "100000000",
            "-c",
            "2",
            "-s",
            "1024",
        ])
        .args(["-d", "1.5", "-w", "0", "--json"])
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(rss_kib(child.id()).unwrap_or(0));
        assert!(t.elapsed() < Duration::from_secs(20), "bench did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "nothing echoed: failure");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&v, "messages"), 0);
    // Each connection queues at most 4 MiB (plus the socket buffers): far below what
    // 1.5 s of the schedule would take (150 million messages).
    assert!(peak < 100 * 1024, "peak RSS {peak} KiB");
}

/// Echoes every message, except that byte `at` of the third one comes back altered.
fn corrupting_server(at: usize) -> SocketAddr {
    use futures_util::{SinkExt as _, StreamExt as _};
    use switchyard::Message;
    spawn_server(move |listener| async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let cfg = switchyard::AcceptConfig::default();
                let Ok(mut ws) = switchyard::accept(s, &cfg).await else {
                    return;
                };
                let mut n = 0;
                while let Some(Ok(msg)) = ws.next().await {
                    let (mut bytes, binary) = match msg {
                        Message::Binary(b) => (b.to_vec(), true),
                        Message::Text(t) => (t.as_str().as_bytes().to_vec(), false),
                        _ => continue,
                    };
                    n += 1;
                    if n == 3 {
                        bytes[at] ^= 0x01; // ASCII stays ASCII: text stays valid UTF-8
                    }
                    let reply = if binary {
                        Message::Binary(bytes.into())
                    } else {
                        Message::text(String::from_utf8(bytes).unwrap())
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

#[test]
fn an_altered_echo_is_a_protocol_error() {
    // 70000 B binary takes the load generator's zero-copy path (shared body, checked as
    // body XOR key); 16 B text the copying one.
    for (size, binary, at) in [("70000", true, 40_000), ("16", false, 12)] {
        let addr = corrupting_server(at);
        let url = format!("ws://{addr}/");
        let mut args = vec![url.as_str(), "-c", "1", "-s", size, "-d", "1", "-w", "0"];
        if binary {
            args.push("--binary");
        }
        let (_, v) = bench_json(&args);
        assert_eq!(v["errors_by_kind"]["protocol_error"], 1, "size {size}: {v}");
        let first = v["first_error"].as_str().unwrap_or_default();
        assert!(
            first.contains("echoed payload differs") && first.contains("echo number 2"),
            "size {size}: {first}"
        );
        assert_eq!(u(&v, "messages_total"), 2, "size {size}: {v}");
    }
}

#[test]
fn a_malformed_duration_is_a_usage_error_that_says_the_grammar() {
    for bad in ["5 parsecs", "1.5d", "1.s"] {
        let out = bench(&["ws://127.0.0.1:9/", "--duration", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("expected a duration like"), "{bad}: {err}");
    }
}

/// The embedded default plus a route at /off whose policy turns fallback sessions off.
fn gateway_with_fallback_off() -> SocketAddr {
    use switchyard_gateway::config::Config;
    let toml = "[[listener]]\naddress = \"127.0.0.1:0\"\n\
                [[route]]\npath = \"/echo\"\napp = \"echo\"\n\
                [[route]]\npath = \"/off\"\napp = \"echo\"\n[route.policy]\nfallback = []\n";
    common::gateway_with(Config::from_toml_str(toml, "test").unwrap())
}

#[test]
fn echo_through_fallback_sessions_reports_figures_and_needs_them() {
    let addr = gateway_with_fallback_off();
    for transport in ["sse", "poll"] {
        let url = format!("ws://{addr}/echo");
        let (out, v) = bench_json(&[
            &url,
            "--transport",
            transport,
            "-c",
            "2",
            "-n",
            "2",
            "-s",
            "50",
            "-d",
            "1",
            "-w",
            "0.2",
        ]);
        assert!(out.status.success(), "{transport}: {out:?}");
        assert_eq!(v["transport"], transport);
        assert_eq!(u(&v, "errors"), 0, "{v}");
        assert!(u(&v, "messages") > 0, "{v}");
        assert!(
            (f(&v, "msgs_per_s") - u(&v, "messages") as f64 / f(&v, "seconds")).abs() < 1e-6,
            "{v}"
        );
        assert_latency_sane(&v);
        let text = bench(&[
            &url,
            "--transport",
            transport,
            "-c",
            "1",
            "-d",
            "0.3",
            "-w",
            "0",
        ]);
        let text = String::from_utf8(text.stdout).unwrap();
        assert!(
            text.contains(&format!("through fallback sessions ({transport})"))
                && text.contains("\n  errors     0\n"),
            "{text}"
        );
    }
    // The same route without fallback sessions: every open is refused (the
    // WebSocket still echoes), so the figures above did come from sessions.
    let off = format!("ws://{addr}/off");
    let (out, v) = bench_json(&[
        &off,
        "--transport",
        "sse",
        "-c",
        "2",
        "-d",
        "0.3",
        "-w",
        "0",
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(u(&v, "messages"), 0, "{v}");
    assert_eq!(v["errors_by_kind"], serde_json::json!({"session_open": 2}));
    let why = v["first_error"].as_str().unwrap();
    assert!(why.contains("refused to open a session: 405"), "{why}");
    let (out, v) = bench_json(&[&off, "-c", "1", "-d", "0.3", "-w", "0"]);
    assert!(out.status.success() && u(&v, "messages") > 0, "{v}");
}

#[test]
fn fallback_sessions_at_a_fixed_rate_send_on_schedule() {
    let addr = gateway_with_fallback_off();
    let url = format!("ws://{addr}/echo");
    for transport in ["sse", "poll"] {
        let (out, v) = bench_json(&[
            &url,
            "--transport",
            transport,
            "--rate",
            "200",
            "-c",
            "2",
            "-d",
            "1.5",
            "-w",
            "0.3",
        ]);
        assert!(out.status.success(), "{transport}: {out:?}");
        assert_eq!(v["loop"], "open", "{v}");
        assert_eq!(f(&v, "rate"), 200.0);
        assert_eq!(u(&v, "errors"), 0, "{v}");
        // No more than the schedule (a closed loop would echo far more).
        let msgs = u(&v, "messages");
        assert!(
            (1..=360).contains(&msgs),
            "{transport}: {msgs} messages in 1.5 s at 200/s"
        );
        assert_latency_sane(&v);
    }
}

#[test]
fn transport_flag_conflicts_are_usage_errors() {
    for extra in [["--http2"], ["--handshakes"], ["--ramp-up=1"]] {
        let out = bench(&[&["ws://127.0.0.1:1/echo", "--transport", "sse"], &extra[..]].concat());
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
            "{out:?}"
        );
    }
}

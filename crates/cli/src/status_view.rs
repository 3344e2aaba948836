//! `switchyard monitor --admin ADDR [--token-file F] [--once]`: the
//! gateway's own view in the terminal, from its admin listener's
//! `/status.json` (the data of the `/status` dashboard): per route the open
//! connections by protocol and transport, fallback sessions, messages,
//! bytes, upgrade success, handshake latency and ping round trips; the
//! overall upgrade success, the top failure reasons in the gateway's words,
//! backend health, drain and reload state. Refreshed every `--interval` (the screen redrawn when stdout is a
//! terminal, one table after the other otherwise); `--once` prints one
//! table and exits: 0, or 1 when the gateway cannot be asked.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::admin::AdminClient;

/// Ask, print, repeat (or once).
pub async fn run(addr: SocketAddr, token_file: Option<&Path>, once: bool, every: Duration) -> i32 {
    let client = match AdminClient::new(addr, token_file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 1;
        }
    };
    let redraw = !once && std::io::stdout().is_terminal();
    loop {
        match fetch(&client).await {
            Ok(status) => {
                let table = render(addr, &status);
                let mut out = std::io::stdout().lock();
                // Clear the screen and go home before each table.
                let _ = if redraw {
                    write!(out, "\x1b[H\x1b[2J{table}")
                } else {
                    writeln!(out, "{table}")
                };
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                if once {
                    return 1;
                }
            }
        }
        if once {
            return 0;
        }
        tokio::time::sleep(every).await;
    }
}

async fn fetch(client: &AdminClient) -> anyhow::Result<Value> {
    let answer = client.request("GET", "/status.json").await?;
    if answer.status != 200 {
        bail!(
            "GET /status.json answered {}: {} (a gateway older than this client?)",
            answer.status,
            answer.body.trim()
        );
    }
    serde_json::from_str(&answer.body).context("/status.json is not the gateway's status JSON")
}

/// A ratio as a percentage, `-` when there is none.
fn percent(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn seconds(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(s) if s < 1.0 => format!("≤{}ms", (s * 1e4).round() / 10.0),
        Some(s) => format!("≤{s}s"),
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1}GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1}MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1}KiB", n as f64 / 1024.0),
        n => format!("{n}B"),
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The table of one status report.
pub fn render(addr: SocketAddr, s: &Value) -> String {
    let mut o = String::with_capacity(2048);
    let success = percent(&s["upgrade_success_ratio"]);
    let _ = writeln!(
        o,
        "switchyard at {addr}: generation {}, {} reload(s), {}, {} live connection(s), upgrades switched {success}",
        s["generation"],
        s["reloads"],
        if s["draining"].as_bool() == Some(true) {
            "DRAINING"
        } else {
            "serving"
        },
        s["live_connections"],
    );
    if let Some(e) = s["reload_error"].as_str() {
        let _ = writeln!(o, "last reload rejected: {e}");
    }
    let _ = writeln!(
        o,
        "\n{:<24} {:<20} {:>5}  {:<28} {:>9} {:>9} {:>8}  HANDSHAKE p50/p99",
        "ROUTE", "TARGET", "LIVE", "OPEN (protocol transport n)", "MESSAGES", "BYTES", "SWITCHED"
    );
    let mut pings = Vec::new();
    for r in list(&s["routes"]) {
        let mut open: Vec<String> = list(&r["open"])
            .iter()
            .filter(|c| c["connections"].as_i64() > Some(0))
            .map(|c| {
                format!(
                    "{} {} {}",
                    text(&c["protocol"]),
                    text(&c["transport"]),
                    c["connections"]
                )
            })
            .collect();
        open.extend(
            list(&r["sessions"])
                .iter()
                .filter(|c| c["sessions"].as_i64() > Some(0))
                .map(|c| format!("fallback {} {}", text(&c["transport"]), c["sessions"])),
        );
        let live: i64 = list(&r["open"])
            .iter()
            .filter_map(|c| c["connections"].as_i64())
            .chain(
                list(&r["sessions"])
                    .iter()
                    .filter_map(|c| c["sessions"].as_i64()),
            )
            .sum();
        let handshakes = list(&r["handshakes"])
            .iter()
            .map(|h| {
                format!(
                    "{} {}/{}",
                    text(&h["protocol"]),
                    seconds(&h["p50_seconds"]),
                    seconds(&h["p99_seconds"])
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        pings.extend(
            list(&r["ping_rtt"])
                .iter()
                .filter(|p| p["count"].as_u64() > Some(0))
                .map(|p| {
                    format!(
                        "{} {} {} pings p50 {} p99 {}",
                        text(&r["route"]),
                        text(&p["side"]),
                        p["count"],
                        seconds(&p["p50_seconds"]),
                        seconds(&p["p99_seconds"])
                    )
                }),
        );
        let _ = writeln!(
            o,
            "{:<24} {:<20} {:>5}  {:<28} {:>9} {:>9} {:>8}  {}",
            text(&r["route"]),
            text(&r["target"]),
            live,
            if open.is_empty() {
                "-".into()
            } else {
                open.join(", ")
            },
            r["messages_total"].as_u64().unwrap_or(0),
            bytes(r["bytes_total"].as_u64().unwrap_or(0)),
            percent(&r["upgrade_success_ratio"]),
            if handshakes.is_empty() {
                "-"
            } else {
                &handshakes
            },
        );
    }
    let reasons = list(&s["top_failure_reasons"]);
    if !reasons.is_empty() {
        let _ = writeln!(o, "\ntop failure reasons:");
        for f in reasons {
            let _ = writeln!(
                o,
                "  {} x{}: {}",
                text(&f["reason"]),
                f["count"],
                f["explanation"].as_str().unwrap_or("-")
            );
        }
    }
    if !pings.is_empty() {
        let _ = writeln!(o, "\nping round trips: {}", pings.join("; "));
    }
    let backends = list(&s["upstreams"]);
    if !backends.is_empty() {
        let _ = writeln!(o, "\nbackends:");
        for b in backends {
            let _ = writeln!(
                o,
                "  {} {}: {}",
                text(&b["upstream"]),
                text(&b["backend"]),
                if b["healthy"].as_bool() == Some(true) {
                    "healthy"
                } else {
                    "OUT OF ROTATION"
                }
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_every_part_of_the_report() {
        let s = serde_json::json!({
            "generation": 3, "reloads": 2, "reload_error": "line 4: bad", "draining": true,
            "live_connections": 2,
            "routes": [{"route": "/echo", "target": "app echo",
                "open": [{"protocol": "h2", "transport": "websocket", "connections": 1},
                         {"protocol": "h1", "transport": "websocket", "connections": 0}],
                "sessions": [{"transport": "sse", "sessions": 1}],
                "handshakes": [{"protocol": "h2", "count": 1, "p50_seconds": 0.0005, "p99_seconds": 2.5}],
                "ping_rtt": [{"side": "client", "count": 3, "p50_seconds": 0.01, "p99_seconds": null},
                             {"side": "upstream", "count": 0, "p50_seconds": null, "p99_seconds": null}],
                "upgrade_attempts": 3, "upgrade_success_ratio": 0.6666,
                "messages_total": 12, "bytes_total": 3072}],
            "upgrade_success_ratio": 0.75,
            "top_failure_reasons": [{"reason": "origin", "count": 2, "explanation": "Origin x not allowed"}],
            "upstreams": [{"upstream": "chat", "backend": "ws://10.0.0.1:1/", "healthy": false}],
        });
        let t = render("127.0.0.1:9".parse().unwrap(), &s);
        for want in [
            "generation 3, 2 reload(s), DRAINING, 2 live connection(s), upgrades switched 75.0%",
            "last reload rejected: line 4: bad",
            "h2 websocket 1, fallback sse 1",
            "3.0KiB",
            "h2 ≤0.5ms/≤2.5s",
            "origin x2: Origin x not allowed",
            "/echo client 3 pings p50 ≤10ms p99 -",
            "66.7%",
            "chat ws://10.0.0.1:1/: OUT OF ROTATION",
        ] {
            assert!(t.contains(want), "{want:?} not in\n{t}");
        }
        let line = t.lines().find(|l| l.starts_with("/echo")).unwrap();
        assert!(line.contains(" 2  "), "live counts sessions too: {line}");
        assert!(line.contains(" 12 "), "{line}");
        assert!(!t.contains("h1 websocket 0"), "{t}");
        assert!(!t.contains("upstream 0 pings"), "{t}");
    }
}

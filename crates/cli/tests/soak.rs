//! `switchyard soak` against echo servers that misbehave on purpose: every
//! kind of fault must show in its count, a clean echo and a server's 1001
//! must not, and the exit status follows the verdict.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{spawn_server, BIN};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use switchyard::{CloseCode, Message};

/// What the echo server does to the n-th data message of a connection.
#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    /// Every 10th is not echoed.
    Drop,
    /// Every 10th is echoed twice.
    Duplicate,
    /// Every 10th comes back with its last byte changed.
    Corrupt,
    /// Messages 10 and 11 (20 and 21...) come back swapped (a 10th with no
    /// 11th within [`RELEASE`] comes back alone).
    Swap,
    /// The 10th is not echoed; the server closes with 1001 (going away).
    GoingAway,
    /// The 10th is not echoed; the server drops the TCP connection (no
    /// close frame) and goes on accepting.
    Cut,
}

/// How long a swapping server holds a message for the next one.
const RELEASE: Duration = Duration::from_millis(300);

fn corrupt(m: Message) -> Message {
    match m {
        Message::Binary(b) => {
            let mut v = b.to_vec();
            if let Some(last) = v.last_mut() {
                *last ^= 0x20;
            }
            Message::binary(v)
        }
        Message::Text(t) => {
            let mut s = t.as_str().to_string();
            let swap = if s.ends_with('.') { "!" } else { "." };
            s.pop();
            Message::text(s + swap)
        }
        other => other,
    }
}

/// An echo server with `fault`; the number of connections it accepted.
fn faulty_echo(fault: Fault) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let addr = spawn_server(move |l| async move {
        while let Ok((tcp, _)) = l.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let cfg = switchyard::server::AcceptConfig::default();
                let Ok(mut ws) = switchyard::accept(tcp, &cfg).await else {
                    return;
                };
                let mut n = 0u64;
                let mut held: Option<Message> = None;
                loop {
                    let next = match held.take() {
                        // A held message goes back in order when nothing
                        // follows it (the client's last before its close).
                        Some(h) => match tokio::time::timeout(RELEASE, ws.next()).await {
                            Ok(next) => {
                                held = Some(h);
                                next
                            }
                            Err(_) => {
                                if ws.send(h).await.is_err() {
                                    return;
                                }
                                continue;
                            }
                        },
                        None => ws.next().await,
                    };
                    let Some(Ok(m)) = next else { return };
                    if !m.is_data() {
                        continue;
                    }
                    n += 1;
                    let tenth = n.is_multiple_of(10);
                    let out = match fault {
                        Fault::Drop if tenth => vec![],
                        Fault::Duplicate if tenth => vec![m.clone(), m],
                        Fault::Corrupt if tenth => vec![corrupt(m)],
                        Fault::Swap if tenth => {
                            held = Some(m);
                            vec![]
                        }
                        Fault::Swap => held.take().map_or(vec![m.clone()], |h| vec![m, h]),
                        Fault::GoingAway if tenth => {
                            let _ = ws.close(CloseCode::GOING_AWAY, "going away").await;
                            return;
                        }
                        Fault::Cut if tenth => return,
                        _ => vec![m],
                    };
                    for m in out {
                        if ws.send(m).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Run the soak for 2 s against `fault`; its exit code and JSON summary.
fn soak(fault: Fault) -> (i32, Value) {
    let (addr, _) = faulty_echo(fault);
    let out = Command::new(BIN)
        .args(["soak", "--url", &format!("ws://{addr}/echo")])
        .args(["-c", "4", "-d", "2s", "--rate", "400", "--deflate", "50"])
        .args(["--settle", "0s", "--json", "--drain-wait"])
        // Only a dropping server leaves echoes that never come: a short wait
        // for them (anything then missing is lost, as this fault expects);
        // every other run keeps the default hang guard.
        .arg(if let Fault::Drop = fault { "2s" } else { "60s" })
        .output()
        .expect("switchyard soak runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "{fault:?}: no JSON ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// The messages counts, as (lost, duplicated, reordered, corrupted, drained).
fn counts(s: &Value) -> [u64; 5] {
    let m = &s["messages"];
    ["lost", "duplicated", "reordered", "corrupted", "drained"]
        .map(|k| m[k].as_u64().unwrap_or_else(|| panic!("no {k} in {m}")))
}

#[test]
fn every_fault_is_counted_and_fails_the_verdict() {
    let faults = [
        Fault::Drop,
        Fault::Duplicate,
        Fault::Corrupt,
        Fault::Swap,
        Fault::Cut,
    ];
    let runs: Vec<_> = faults
        .map(|f| std::thread::spawn(move || (f, soak(f))))
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for (fault, (code, s)) in runs {
        let [lost, duplicated, reordered, corrupted, drained] = counts(&s);
        let echoed = s["messages"]["echoed"].as_u64().unwrap();
        assert!(echoed > 0, "{fault:?}: {s}");
        let (name, n) = match fault {
            Fault::Drop | Fault::Cut => ("lost", lost),
            Fault::Duplicate => ("duplicated", duplicated),
            Fault::Corrupt => ("corrupted", corrupted),
            _ => ("reordered", reordered),
        };
        assert!(n > 0, "{fault:?}: nothing {name}: {}", s["messages"]);
        // Only that count: the checker tells the faults apart.
        let total = lost + duplicated + reordered + corrupted;
        assert_eq!(total, n, "{fault:?}: {}", s["messages"]);
        assert_eq!(drained, 0, "{fault:?}");
        assert_eq!(code, 1, "{fault:?}: the verdict fails");
        assert_eq!(s["verdict"]["pass"], false, "{fault:?}");
        if let Fault::Cut = fault {
            assert!(s["closes"]["1006"]["connections"].as_u64() > Some(0), "{s}");
        }
    }
}

#[test]
fn a_clean_echo_and_a_going_away_server_pass() {
    for fault in [Fault::None, Fault::GoingAway] {
        let (code, s) = soak(fault);
        let [lost, duplicated, reordered, corrupted, drained] = counts(&s);
        assert_eq!(
            (lost, duplicated, reordered, corrupted),
            (0, 0, 0, 0),
            "{fault:?}: {s}"
        );
        assert!(
            s["messages"]["echoed"].as_u64() > Some(100),
            "{fault:?}: {s}"
        );
        if let Fault::GoingAway = fault {
            // The unechoed 10th of each connection was in flight at the 1001.
            assert!(drained > 0, "{s}");
            assert!(s["closes"]["1001"]["connections"].as_u64() > Some(0), "{s}");
        } else {
            assert_eq!(drained, 0);
        }
        assert_eq!(code, 0, "{fault:?}: {s}");
    }
}

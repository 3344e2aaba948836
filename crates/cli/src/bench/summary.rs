//! The result of a run as JSON and as text.

use hdrhistogram::Histogram;

use super::plan::*;
use super::tally::*;

/// Nanoseconds to microseconds at quantile `q` (0 for an empty histogram).
pub(super) fn quantile_us(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The result as the JSON object `--json` prints and `--html` plots. The fields bench/run.sh
/// and bench/report.py read (msgs_per_s / handshakes_per_s, mb_per_s, p50_us, p99_us, errors,
/// client_cpu, client_cpu_seconds, messages_total / handshakes_total) keep their meaning.
pub(super) fn summary_json(plan: &Plan, mode: Mode, r: &Report) -> serde_json::Value {
    use serde_json::json;
    let secs = r.measured.as_secs_f64().max(1e-9);
    let rate = r.completed as f64 / secs;
    let max = if r.latency.is_empty() {
        0.0
    } else {
        r.latency.max() as f64 / 1000.0
    };
    // Buckets up to the end of the measured window (the closing grace is left out); the
    // last one may be shorter than a second.
    let run_len = (plan.ramp_up + plan.warmup + plan.duration.unwrap_or_default()).as_secs_f64();
    let series: Vec<serde_json::Value> = r
        .series
        .iter()
        .enumerate()
        .take_while(|(t, _)| (*t as f64) < run_len)
        .map(|(t, b)| {
            let span = (run_len - t as f64).clamp(1e-3, 1.0);
            json!({
                "t": t,
                "span": span,
                "completed": b.completed,
                "per_s": b.completed as f64 / span,
                "errors": b.errors,
                "p50_us": quantile_us(&b.latency, 0.5),
                "p99_us": quantile_us(&b.latency, 0.99),
            })
        })
        .collect();
    let mut v = json!({
        "mode": if mode == Mode::Echo { "echo" } else { "handshakes" },
        "url": plan.target.url,
        "connections": plan.connections,
        "threads": plan.threads,
        "http2_streams": plan.h2_streams,
        "transport": plan.fallback.map_or("ws", |t| t.as_str()),
        "ramp_up": plan.ramp_up.as_secs_f64(),
        "warmup": plan.warmup.as_secs_f64(),
        "seconds": secs,
        "client_cpu": r.client_cpu,
        "client_cpu_seconds": r.client_cpu_seconds,
        "cpu_busy": r.cpu_busy,
        "p50_us": quantile_us(&r.latency, 0.5),
        "p90_us": quantile_us(&r.latency, 0.9),
        "p99_us": quantile_us(&r.latency, 0.99),
        "p999_us": quantile_us(&r.latency, 0.999),
        "max_us": max,
        "errors": r.errors,
        "errors_by_kind": r.errors_by_kind,
        "first_error": r.first_error,
        "series": series,
    });
    let extra = match mode {
        Mode::Echo => json!({
            "loop": if plan.rate.is_some() { "open" } else { "closed" },
            "rate": plan.rate,
            "in_flight": plan.in_flight,
            "size": plan.size,
            "binary": plan.binary,
            "messages": r.completed,
            "messages_total": r.total,
            "msgs_per_s": rate,
            "mb_per_s": rate * plan.size as f64 / 1e6,
        }),
        Mode::Handshakes | Mode::Idle => json!({
            "handshakes": r.completed,
            "handshakes_total": r.total,
            "handshakes_per_s": rate,
        }),
    };
    if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

/// The human summary, several lines, from the JSON summary.
pub(super) fn summary_text(s: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    let u = |k: &str| s[k].as_u64().unwrap_or(0);
    let mut out = String::new();
    let echo = s["mode"] == "echo";
    let _ = writeln!(out, "switchyard bench {}", s["url"].as_str().unwrap_or(""));
    let mut ramp = if f("ramp_up") > 0.0 {
        format!(", {:.1} s ramp-up", f("ramp_up"))
    } else {
        String::new()
    };
    if let Some(t) = s["transport"].as_str().filter(|t| *t != "ws") {
        ramp.push_str(&format!(", through fallback sessions ({t})"));
    }
    if u("http2_streams") > 0 {
        ramp.push_str(&format!(
            ", over HTTP/2 ({} WebSocket streams per TCP connection)",
            u("http2_streams")
        ));
    }
    if echo {
        let how = match s["rate"].as_f64() {
            Some(r) => format!("open loop at {r:.0} msgs/s"),
            None => format!("closed loop, {} in flight each", u("in_flight")),
        };
        let _ = writeln!(
            out,
            "  setup      {} connections, {how}, {} B {} messages{ramp}",
            u("connections"),
            u("size"),
            if s["binary"] == true {
                "binary"
            } else {
                "text"
            },
        );
    } else {
        let _ = writeln!(
            out,
            "  setup      {} concurrent connect/upgrade/close loops{ramp}",
            u("connections")
        );
    }
    let _ = writeln!(
        out,
        "  measured   {:.2} s after {:.1} s warm-up, {} load-generator thread(s){}",
        f("seconds"),
        f("warmup"),
        u("threads"),
        s["client_cpu"]
            .as_f64()
            .map(|c| format!(" at {:.0}% CPU", c * 100.0))
            .unwrap_or_default()
    );
    if let Some(cpus) = s["cpu_busy"].as_object().filter(|m| !m.is_empty()) {
        // Loopback runs: the kernel's receive work for each packet lands on the sender's
        // CPU, so a CPU can be full while no process there shows 100%.
        let busy: Vec<String> = cpus
            .iter()
            .map(|(cpu, b)| format!("cpu{cpu} {:.0}%", b.as_f64().unwrap_or(0.0) * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "  CPUs busy  {} (all processes and the kernel)",
            busy.join(", ")
        );
    }
    if echo {
        let _ = writeln!(
            out,
            "  messages   {} echoed, {:.0} msgs/s, {:.2} MB/s each way",
            u("messages"),
            f("msgs_per_s"),
            f("mb_per_s")
        );
    } else {
        let _ = writeln!(
            out,
            "  handshakes {} completed, {:.0} handshakes/s",
            u("handshakes"),
            f("handshakes_per_s")
        );
    }
    let completed = if echo { u("messages") } else { u("handshakes") };
    if completed == 0 {
        let _ = writeln!(out, "  latency    - (nothing completed)");
    } else {
        let _ = writeln!(
            out,
            "  latency    p50 {} | p90 {} | p99 {} | p99.9 {} | max {}",
            us(f("p50_us")),
            us(f("p90_us")),
            us(f("p99_us")),
            us(f("p999_us")),
            us(f("max_us"))
        );
    }
    let kinds = s["errors_by_kind"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if u("errors") == 0 {
        let _ = writeln!(out, "  errors     0");
    } else {
        let _ = writeln!(out, "  errors     {}: {kinds}", u("errors"));
        if let Some(e) = s["first_error"].as_str() {
            let _ = writeln!(out, "             first: {e}");
        }
    }
    out
}

/// Microseconds, readable: "85 us", "1.25 ms", "2.10 s".
pub(crate) fn us(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2} ms", v / 1e3)
    } else {
        format!("{v:.0} us")
    }
}

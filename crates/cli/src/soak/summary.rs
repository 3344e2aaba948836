//! The result of a soak: the JSON that `--json` prints and `--html` plots,
//! with the verdict, and the same for people.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::plan::Plan;
use super::procs::Processes;

fn quantiles(h: &Histogram<u64>) -> Value {
    let q = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    json!({
        "count": h.len(),
        "p50_us": q(0.5),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": if h.is_empty() { 0 } else { h.max() },
    })
}

/// The result: what `--json` prints and `--html` plots.
pub(super) fn summary_json(plan: &Plan, procs: &Processes, load_end: f64) -> Value {
    let r = plan.rec();
    let last = procs
        .instances
        .iter()
        .map(|i| i.last_at)
        .fold(load_end, f64::max);
    let processes: Vec<Value> = procs
        .instances
        .iter()
        .map(|i| {
            let alive = i.last_at >= last;
            json!({
                "name": i.name,
                "pid": i.pid,
                "from_s": i.first_at,
                "to_s": i.last_at,
                "alive_at_end": alive,
                "before": {"rss_kib": i.first.rss_kib, "fds": i.first.fds},
                "peak": {"rss_kib": i.peak.rss_kib, "fds": i.peak.fds},
                "idle_after_first_load": i.idle.map(|s| json!({"rss_kib": s.rss_kib, "fds": s.fds})),
                "after": {"rss_kib": i.last.rss_kib, "fds": i.last.fds},
                "back_to_baseline": alive.then(|| i.back_to_baseline(plan.tolerance)),
                "series": i.series.iter().map(|(t, s)| json!([t, s.rss_kib, s.fds])).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut reasons = Vec::new();
    if r.echoed == 0 {
        reasons.push("nothing was echoed".to_string());
    }
    for (what, n) in [
        ("lost", r.lost),
        ("duplicated", r.duplicated),
        ("reordered", r.reordered),
        ("corrupted", r.corrupted),
    ] {
        if n > 0 {
            reasons.push(format!("{n} message(s) {what}"));
        }
    }
    for i in procs.alive_at(last) {
        if !i.back_to_baseline(plan.tolerance) {
            let base = i.baseline();
            reasons.push(format!(
                "{} (pid {}) did not come back within {} of its baseline ({} KiB and {} descriptors {}): {} KiB and {} at the end",
                i.name,
                i.pid,
                match plan.tolerance.rss_slack_kib {
                    0 => format!("{:.0}%", plan.tolerance.fraction * 100.0),
                    slack => format!(
                        "{:.0}% (memory: or {slack} KiB)",
                        plan.tolerance.fraction * 100.0
                    ),
                },
                base.rss_kib,
                base.fds,
                if i.idle.is_some() { "after the first leak-check load" } else { "at the start" },
                i.last.rss_kib,
                i.last.fds
            ));
        }
    }
    let series: Vec<Value> = r
        .series
        .iter()
        .enumerate()
        .map(|(t, s)| {
            json!({
                "t": t,
                "sent": s.sent,
                "echoed": s.echoed,
                "problems": s.problems,
                "open": s.open,
                "label": s.label,
                "p50_us": if s.latency.is_empty() { 0 } else { s.latency.value_at_quantile(0.5) },
                "p99_us": if s.latency.is_empty() { 0 } else { s.latency.value_at_quantile(0.99) },
            })
        })
        .collect();
    let closes: BTreeMap<&String, Value> = r
        .closes
        .iter()
        .map(|(k, (c, u))| (k, json!({"connections": c, "unanswered": u})))
        .collect();
    json!({
        "urls": plan.instances,
        "paths": plan.paths,
        "connections": plan.connections,
        "seconds": load_end,
        "ramp_up": plan.ramp_up.as_secs_f64(),
        "rate": plan.rate,
        "max_size": plan.max_size,
        "in_flight": plan.in_flight,
        "binary_percent": plan.binary,
        "deflate_percent": plan.deflate,
        "churn_percent_per_s": plan.churn,
        "messages": {
            "sent": r.sent,
            "echoed": r.echoed,
            "lost": r.lost,
            "duplicated": r.duplicated,
            "reordered": r.reordered,
            "corrupted": r.corrupted,
            "drained": r.drained,
            "cut_at_stop": r.cut_at_stop,
        },
        "corrupt_reasons": r.corrupt_reasons,
        "problems": r.problems,
        "connects": r.connects,
        "connect_failures": r.connect_failures,
        "closes": closes,
        "latency": quantiles(&r.latency),
        "latency_by_label": r.by_label.iter().map(|(k, h)| (k.clone(), quantiles(h))).collect::<BTreeMap<_, _>>(),
        "processes": processes,
        "tolerance_percent": plan.tolerance.fraction * 100.0,
        "rss_slack_kib": plan.tolerance.rss_slack_kib,
        "series": series,
        "verdict": {"pass": reasons.is_empty(), "reasons": reasons},
    })
}

/// The summary for people, from the JSON.
pub(super) fn summary_text(s: &Value) -> String {
    use std::fmt::Write as _;
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let m = &s["messages"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "switchyard soak: {} connections over {}, paths {}, {:.0} s",
        u(&s["connections"]),
        join(&s["urls"]),
        join(&s["paths"]),
        s["seconds"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "  load       {:.0} msgs/s, up to {} B, {}% binary, {}% with deflate, churn {}%/s",
        s["rate"].as_f64().unwrap_or(0.0),
        u(&s["max_size"]),
        u(&s["binary_percent"]),
        u(&s["deflate_percent"]),
        s["churn_percent_per_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "  messages   sent {}, echoed {}, lost {}, duplicated {}, reordered {}, corrupted {}",
        u(&m["sent"]),
        u(&m["echoed"]),
        u(&m["lost"]),
        u(&m["duplicated"]),
        u(&m["reordered"]),
        u(&m["corrupted"])
    );
    let _ = writeln!(
        out,
        "             in flight at a 1001 close {}, at a cut by a stopping instance {} (reported)",
        u(&m["drained"]),
        u(&m["cut_at_stop"])
    );
    let closes: Vec<String> = s["closes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {}", u(&v["connections"])))
        .collect();
    let _ = writeln!(
        out,
        "  closes     {}; connects {}",
        closes.join(", "),
        u(&s["connects"])
    );
    if let Some(f) = s["connect_failures"].as_object().filter(|f| !f.is_empty()) {
        let f: Vec<String> = f.iter().map(|(k, v)| format!("{k} {}", u(v))).collect();
        let _ = writeln!(out, "  connect    failures: {}", f.join(", "));
    }
    let lat = |l: &Value| {
        format!(
            "p50 {} | p99 {} | p99.9 {} | max {}",
            crate::bench::summary::us(l["p50_us"].as_f64().unwrap_or(0.0)),
            crate::bench::summary::us(l["p99_us"].as_f64().unwrap_or(0.0)),
            crate::bench::summary::us(l["p999_us"].as_f64().unwrap_or(0.0)),
            crate::bench::summary::us(l["max_us"].as_f64().unwrap_or(0.0))
        )
    };
    let _ = writeln!(out, "  latency    {}", lat(&s["latency"]));
    for (label, l) in s["latency_by_label"].as_object().into_iter().flatten() {
        let _ = writeln!(out, "    {label:<9}{} ({} echoes)", lat(l), u(&l["count"]));
    }
    let procs = s["processes"].as_array().cloned().unwrap_or_default();
    if !procs.is_empty() {
        let _ = writeln!(
            out,
            "  process          before                 peak                   idle after load 1      after"
        );
        for p in procs {
            let cell = |k: &str| match p[k].is_null() {
                true => format!("{:>22}", "-"),
                false => format!(
                    "{:>8.1} MiB {:>6} fds",
                    p[k]["rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
                    u(&p[k]["fds"])
                ),
            };
            let _ = writeln!(
                out,
                "    {:<13}{} {} {} {}{}",
                format!("{}#{}", p["name"].as_str().unwrap_or(""), u(&p["pid"])),
                cell("before"),
                cell("peak"),
                cell("idle_after_first_load"),
                cell("after"),
                match p["back_to_baseline"].as_bool() {
                    Some(true) => "  back",
                    Some(false) => "  NOT BACK",
                    None => "  (exited)",
                }
            );
        }
    }
    for p in s["problems"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  problem    {}", p.as_str().unwrap_or(""));
    }
    match s["verdict"]["reasons"].as_array() {
        Some(r) if !r.is_empty() => {
            for reason in r {
                let _ = writeln!(out, "  FAIL       {}", reason.as_str().unwrap_or(""));
            }
        }
        _ => {
            let _ = writeln!(out, "  PASS");
        }
    }
    out
}

fn join(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

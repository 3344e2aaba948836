//! `switchyard soak --html FILE`: the page of `bench --html` (inline SVG, the
//! data embedded as JSON) with the soak's plots: messages, latency, open
//! connections, and the memory and descriptors of each watched process.

use serde_json::Value;

use crate::bench::report::{chart, column, document, summary_rows};

/// Line colours, one per watched process name.
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];

/// The whole HTML document for the summary `s` (what `--json` prints).
pub(super) fn html(s: &Value) -> String {
    let series = s["series"].as_array().cloned().unwrap_or_default();
    let xs: Vec<f64> = series
        .iter()
        .map(|b| b["t"].as_f64().unwrap_or(0.0) + 0.5)
        .collect();
    let col = |name: &str| column(&series, name);
    // The load (after the ramp-up); what follows is the settling.
    let window = Some((
        s["ramp_up"].as_f64().unwrap_or(0.0),
        s["seconds"].as_f64().unwrap_or(0.0),
    ));
    let mut charts = vec![
        chart(
            "Messages per second",
            &xs,
            &[
                ("sent", "#1f77b4", col("sent")),
                ("echoed", "#2ca02c", col("echoed")),
                ("problems", "#d62728", col("problems")),
            ],
            window,
        ),
        chart(
            "Latency (microseconds, from when a message was due)",
            &xs,
            &[
                ("p50", "#2ca02c", col("p50_us")),
                ("p99", "#d62728", col("p99_us")),
            ],
            window,
        ),
        chart(
            "Open connections",
            &xs,
            &[("open", "#1f77b4", col("open"))],
            window,
        ),
    ];
    let procs = s["processes"].as_array().cloned().unwrap_or_default();
    if !procs.is_empty() {
        let (pxs, mem, fds) = process_lines(&procs);
        let named = |lines: Vec<(String, Vec<f64>)>| -> Vec<(String, &str, Vec<f64>)> {
            lines
                .into_iter()
                .enumerate()
                .map(|(i, (n, v))| (n, COLORS[i % COLORS.len()], v))
                .collect()
        };
        for (title, lines) in [
            ("Resident memory (MiB)", named(mem)),
            ("Open file descriptors", named(fds)),
        ] {
            let lines: Vec<(&str, &str, Vec<f64>)> = lines
                .iter()
                .map(|(n, c, v)| (n.as_str(), *c, v.clone()))
                .collect();
            charts.push(chart(title, &pxs, &lines, window));
        }
    }
    let title = format!(
        "{} connections over {}",
        s["connections"],
        s["urls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    );
    document(
        "switchyard soak",
        &title,
        "One point per second; the shaded band is the load (after the ramp-up), \
         then the clients close and the processes settle. A process redeployed \
         under the same name continues its line; a gap is a time it was not running.",
        &charts,
        &summary_rows(s, &["series", "processes"]),
        s,
    )
}

/// The sample times of all processes, and per process name its memory (MiB)
/// and descriptors at those times (NaN where it was not running).
#[allow(clippy::type_complexity)]
fn process_lines(procs: &[Value]) -> (Vec<f64>, Vec<(String, Vec<f64>)>, Vec<(String, Vec<f64>)>) {
    let mut times: Vec<f64> = procs
        .iter()
        .flat_map(|p| p["series"].as_array().cloned().unwrap_or_default())
        .filter_map(|pt| pt[0].as_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    let mut names: Vec<String> = Vec::new();
    for p in procs {
        let n = p["name"].as_str().unwrap_or("").to_string();
        if !names.contains(&n) {
            names.push(n);
        }
    }
    let mut mem = Vec::new();
    let mut fds = Vec::new();
    for name in names {
        let mut m = vec![f64::NAN; times.len()];
        let mut f = vec![f64::NAN; times.len()];
        for p in procs.iter().filter(|p| p["name"] == name.as_str()) {
            for pt in p["series"].as_array().into_iter().flatten() {
                let Some(t) = pt[0].as_f64() else { continue };
                if let Ok(i) = times.binary_search_by(|x| x.total_cmp(&t)) {
                    m[i] = pt[1].as_f64().unwrap_or(f64::NAN) / 1024.0;
                    f[i] = pt[2].as_f64().unwrap_or(f64::NAN);
                }
            }
        }
        mem.push((name.clone(), m));
        fds.push((name, f));
    }
    (times, mem, fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_every_process_with_gaps_between_instances() {
        let s = serde_json::json!({
            "connections": 2, "urls": ["ws://a<b"], "ramp_up": 0.0, "seconds": 3.0,
            "series": [
                {"t": 0, "sent": 5, "echoed": 5, "problems": 0, "open": 2, "p50_us": 100, "p99_us": 200},
                {"t": 1, "sent": 6, "echoed": 6, "problems": 0, "open": 2, "p50_us": 110, "p99_us": 250},
            ],
            "processes": [
                {"name": "gw", "pid": 1, "series": [[0.0, 2048, 10], [1.0, 4096, 12]]},
                {"name": "gw", "pid": 2, "series": [[3.0, 1024, 9]]},
                {"name": "echo", "pid": 3, "series": [[0.0, 1024, 5], [1.0, 1024, 5], [2.0, 1024, 5], [3.0, 1024, 5]]},
            ],
        });
        let h = html(&s);
        assert_eq!(h.matches("<svg").count(), 5);
        // gw: two runs (a gap at 2.0) in each process chart, echo: one.
        let mem = h.split("Resident memory (MiB)</text>").nth(1).unwrap();
        let mem = mem.split("</svg>").next().unwrap();
        assert_eq!(mem.matches("<polyline").count(), 3, "{mem}");
        assert!(h.contains("ws://a&lt;b"));
    }
}

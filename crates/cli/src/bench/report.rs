//! `switchyard bench --html FILE`: a self-contained report (no external resource: inline CSS,
//! inline SVG charts, the raw data embedded as JSON) built from the `--json` summary.

use std::fmt::Write as _;

use serde_json::Value;

/// The whole HTML document for the summary `s` (the object `--json` prints).
pub(super) fn html(s: &Value) -> String {
    let series = s["series"].as_array().cloned().unwrap_or_default();
    let unit = if s["mode"] == "handshakes" {
        "handshakes"
    } else {
        "messages"
    };
    let xs: Vec<f64> = series
        .iter()
        .map(|b| b["t"].as_f64().unwrap_or(0.0) + b["span"].as_f64().unwrap_or(1.0) / 2.0)
        .collect();
    let col = |name: &str| column(&series, name);
    let from = s["ramp_up"].as_f64().unwrap_or(0.0) + s["warmup"].as_f64().unwrap_or(0.0);
    let window = Some((from, from + s["seconds"].as_f64().unwrap_or(0.0)));
    let throughput = chart(
        &format!("Throughput ({unit} per second)"),
        &xs,
        &[("per second", "#1f77b4", col("per_s"))],
        window,
    );
    let latency = chart(
        "Latency (microseconds)",
        &xs,
        &[
            ("p50", "#2ca02c", col("p50_us")),
            ("p99", "#d62728", col("p99_us")),
        ],
        window,
    );
    document(
        "switchyard bench",
        s["url"].as_str().unwrap_or(""),
        "One point per second of the run; the shaded band is the measured window \
         (after ramp-up and warm-up), the only part the summary counts.",
        &[throughput, latency],
        &summary_rows(s, &["series"]),
        s,
    )
}

/// The field `name` of every point of a series (0 where it is missing).
pub(crate) fn column(series: &[Value], name: &str) -> Vec<f64> {
    series
        .iter()
        .map(|b| b[name].as_f64().unwrap_or(0.0))
        .collect()
}

/// The table rows of the fields of the object `s` (but `skip`), nested values as JSON.
pub(crate) fn summary_rows(s: &Value, skip: &[&str]) -> String {
    let mut rows = String::new();
    for (k, v) in s.as_object().into_iter().flatten() {
        if skip.contains(&k.as_str()) {
            continue;
        }
        let shown = match v {
            Value::Null => "-".to_string(),
            Value::String(t) => t.clone(),
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() => format!("{f:.2}"),
                _ => n.to_string(),
            },
            other => other.to_string(),
        };
        let _ = writeln!(
            rows,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(k),
            escape(&shown)
        );
    }
    rows
}

/// A self-contained HTML page: `heading`, the `title` line, a note, the
/// charts, a summary table of `rows`, and `data` embedded as JSON.
pub(crate) fn document(
    heading: &str,
    title: &str,
    note: &str,
    charts: &[String],
    rows: &str,
    data: &Value,
) -> String {
    // The data again, machine-readable; `<` escaped so no string can end the script element.
    let data = serde_json::to_string(data)
        .unwrap_or_default()
        .replace('<', "\\u003c");
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{heading}: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ text-align: left; padding: 2px 12px; border-bottom: 1px solid #ddd; font-size: 14px; }}
td {{ font-family: ui-monospace, monospace; }}
svg {{ display: block; margin: 1em 0; }}
.note {{ color: #666; font-size: 13px; }}
</style></head>
<body>
<h1>{heading}</h1>
<p>{title}</p>
<p class="note">{note}</p>
{charts}
<h2>Summary</h2>
<table>
{rows}</table>
<script type="application/json" id="bench-data">{data}</script>
</body></html>
"#,
        heading = escape(heading),
        title = escape(title),
        note = escape(note),
        charts = charts.join("\n"),
    )
}

/// An SVG line chart of `lines` over `xs` (seconds), with `window` shaded. A
/// value that is not finite (NaN) is a gap in its line.
pub(crate) fn chart(
    title: &str,
    xs: &[f64],
    lines: &[(&str, &str, Vec<f64>)],
    window: Option<(f64, f64)>,
) -> String {
    const W: f64 = 860.0;
    const H: f64 = 280.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 30.0;
    const B: f64 = 40.0;
    let x_max = xs.iter().cloned().fold(1.0f64, f64::max).ceil();
    let y_top = lines
        .iter()
        .flat_map(|l| l.2.iter().cloned())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let y_max = nice_ceiling(y_top);
    let px = |x: f64| L + (x / x_max) * (W - L - R);
    let py = |y: f64| H - B - (y / y_max) * (H - T - B);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="{t}">"#,
        t = escape(title)
    );
    let _ = write!(
        svg,
        r#"<text x="{L}" y="18" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    if let Some((a, b)) = window {
        let (a, b) = (px(a.min(x_max)), px(b.min(x_max)));
        let _ = write!(
            svg,
            r##"<rect x="{a:.1}" y="{T}" width="{:.1}" height="{:.1}" fill="#eef3fb"/>"##,
            (b - a).max(0.0),
            H - T - B
        );
    }
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = py(v);
        let _ = write!(
            svg,
            r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0,
            compact(v)
        );
    }
    let step = (x_max / 10.0).ceil().max(1.0);
    let mut x = 0.0;
    while x <= x_max {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{x:.0}</text>"#,
            px(x),
            H - B + 16.0
        );
        x += step;
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">seconds since start</text>"#,
        (L + W - R) / 2.0,
        H - 6.0
    );
    for (k, (name, color, ys)) in lines.iter().enumerate() {
        let pairs: Vec<(f64, f64)> = xs.iter().copied().zip(ys.iter().copied()).collect();
        for run in pairs.split(|(_, y)| !y.is_finite()) {
            if run.is_empty() {
                continue;
            }
            let mut pts = String::new();
            for (x, y) in run {
                let _ = write!(pts, "{:.1},{:.1} ", px(*x), py(*y));
            }
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                pts.trim_end()
            );
        }
        // Legends from the right edge, 75 px each.
        let lx = W - R - 75.0 * lines.len() as f64 + 75.0 * k as f64;
        let _ = write!(
            svg,
            r#"<rect x="{lx:.1}" y="8" width="12" height="12" fill="{color}"/><text x="{:.1}" y="18" font-size="12">{}</text>"#,
            lx + 16.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// 1, 2 or 5 times a power of ten, at least `v` (1 for 0).
fn nice_ceiling(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

/// 1234567 -> "1.2M", 2500 -> "2.5k", 12.5 -> "12.5".
fn compact(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceiling_and_compact() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(1.5), 2.0);
        assert_eq!(nice_ceiling(420.0), 500.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(compact(1_250_000.0), "1.2M");
        assert_eq!(compact(2500.0), "2.5k");
        assert_eq!(compact(12.4), "12");
        assert_eq!(compact(2.25), "2.2");
    }

    #[test]
    fn html_has_both_charts_the_data_and_escapes() {
        let s = serde_json::json!({
            "mode": "echo",
            "url": "ws://h/<script>",
            "seconds": 2.0, "warmup": 1.0, "ramp_up": 0.0,
            "series": [
                {"t": 0, "span": 1.0, "per_s": 100.0, "p50_us": 10.0, "p99_us": 20.0},
                {"t": 1, "span": 1.0, "per_s": 300.0, "p50_us": 11.0, "p99_us": 25.0},
                {"t": 2, "span": 1.0, "per_s": 200.0, "p50_us": 12.0, "p99_us": 30.0},
            ],
        });
        let h = html(&s);
        assert_eq!(h.matches("<svg").count(), 2);
        assert_eq!(h.matches("<polyline").count(), 3);
        assert!(!h.contains("<script>"), "the URL must be escaped");
        assert!(h.contains("ws://h/&lt;script&gt;"));
        assert!(h.contains(r#""per_s":300.0"#));
        // 300 -> axis up to 500; 30 us -> up to 50.
        assert!(h.contains(">500<") && h.contains(">50<"), "{h}");
        assert!(!h.contains("http://") && !h.contains("https://"));
    }

    #[test]
    fn a_missing_value_splits_the_line() {
        let xs = [0.0, 1.0, 2.0, 3.0, 4.0];
        let ys = vec![1.0, 2.0, f64::NAN, 3.0, 4.0];
        let svg = chart("t", &xs, &[("a", "#000", ys)], None);
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(!svg.contains("NaN"));
    }
}

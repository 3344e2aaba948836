//! The doctor's report: steps with a status, evidence and a fix, printed for
//! people (one line per step, evidence indented) or as one JSON document.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::fixes::Fix;

/// How a step went. Ordered: the worst status of the report decides the
/// exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn marker(self) -> &'static str {
        match self {
            Status::Pass => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// Exit status: 0 ok, 1 warnings, 2 failure.
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Pass => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        }
    }
}

/// One step of the walk along the path.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub status: Status,
    /// One line: what was found.
    pub summary: String,
    pub evidence: Vec<String>,
    pub fix: Option<Fix>,
}

impl Step {
    pub fn new(name: &'static str, status: Status, summary: impl Into<String>) -> Step {
        Step {
            name,
            status,
            summary: summary.into(),
            evidence: Vec::new(),
            fix: None,
        }
    }
    pub fn pass(name: &'static str, summary: impl Into<String>) -> Step {
        Step::new(name, Status::Pass, summary)
    }
    pub fn warn(name: &'static str, summary: impl Into<String>) -> Step {
        Step::new(name, Status::Warn, summary)
    }
    pub fn fail(name: &'static str, summary: impl Into<String>) -> Step {
        Step::new(name, Status::Fail, summary)
    }
    pub fn evidence(mut self, line: impl Into<String>) -> Step {
        self.evidence.push(line.into());
        self
    }
    pub fn evidence_all<I: IntoIterator<Item = String>>(mut self, lines: I) -> Step {
        self.evidence.extend(lines);
        self
    }
    pub fn fix(mut self, fix: Fix) -> Step {
        self.fix = Some(fix);
        self
    }
}

/// Every step, in the order they ran.
#[derive(Debug, Clone)]
pub struct Report {
    pub url: String,
    pub steps: Vec<Step>,
    /// Lines printed after the steps (e.g. how to run the idle probe).
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(url: &str) -> Report {
        Report {
            url: url.to_owned(),
            steps: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// The worst status (pass when empty).
    pub fn status(&self) -> Status {
        self.steps
            .iter()
            .map(|s| s.status)
            .max()
            .unwrap_or(Status::Pass)
    }

    fn count(&self, status: Status) -> usize {
        self.steps.iter().filter(|s| s.status == status).count()
    }

    /// The report for a terminal or a log.
    pub fn human(&self) -> String {
        let mut out = format!("switchyard doctor {}\n", self.url);
        for step in &self.steps {
            let _ = writeln!(
                out,
                "{} {}: {}",
                step.status.marker(),
                step.name,
                step.summary
            );
            for e in &step.evidence {
                let _ = writeln!(out, "    {e}");
            }
            if let Some(fix) = &step.fix {
                let _ = writeln!(out, "    fix: {}", fix.summary);
                for (server, line) in fix.per_server() {
                    let _ = writeln!(out, "      {server:<11} {line}");
                }
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        let verdict = match self.status() {
            Status::Pass => "ok",
            Status::Warn => "warnings",
            Status::Fail => "failure",
        };
        let _ = writeln!(
            out,
            "result: {verdict} ({} passed, {} warnings, {} failures)",
            self.count(Status::Pass),
            self.count(Status::Warn),
            self.count(Status::Fail)
        );
        out
    }

    /// The report as one JSON document.
    pub fn json(&self) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "status": s.status.name(),
                    "summary": s.summary,
                    "evidence": s.evidence,
                    "fix": s.fix.as_ref().map(Fix::json),
                })
            })
            .collect();
        json!({
            "url": self.url,
            "status": self.status().name(),
            "exit_code": self.status().exit_code(),
            "steps": steps,
            "notes": self.notes,
        })
    }
}

/// Milliseconds with a useful precision.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixes::Problem;

    #[test]
    fn worst_status_decides_exit_code() {
        let mut r = Report::new("ws://h/");
        assert_eq!(r.status().exit_code(), 0);
        r.push(Step::pass("dns", "ok"));
        assert_eq!(r.status().exit_code(), 0);
        r.push(Step::warn("idle", "closed"));
        assert_eq!(r.status().exit_code(), 1);
        r.push(Step::fail("tls", "expired"));
        r.push(Step::pass("ping", "ok"));
        assert_eq!(r.status().exit_code(), 2);
    }

    #[test]
    fn human_lines_have_markers_evidence_and_fixes() {
        let mut r = Report::new("ws://h/x");
        r.push(Step::pass("dns", "1 address").evidence("127.0.0.1"));
        r.push(Step::fail("http/1.1 upgrade", "200 OK").fix(Problem::ProxyDroppedUpgrade.fix()));
        let text = r.human();
        assert!(text.contains("✓ dns: 1 address\n    127.0.0.1\n"), "{text}");
        assert!(
            text.contains("✗ http/1.1 upgrade: 200 OK\n    fix: "),
            "{text}"
        );
        assert!(
            text.contains("      nginx       location /ws { proxy_pass http://backend; proxy_http_version 1.1;"),
            "{text}"
        );
        assert!(text.ends_with("result: failure (1 passed, 0 warnings, 1 failures)\n"));
    }

    #[test]
    fn json_has_every_step_with_name_status_evidence_fix() {
        let mut r = Report::new("ws://h/x");
        r.push(Step::pass("dns", "ok").evidence("a"));
        r.push(Step::warn("idle probe", "closed").fix(Problem::IdleTimeout.fix()));
        let v = r.json();
        assert_eq!(v["status"], "warn");
        assert_eq!(v["exit_code"], 1);
        assert_eq!(v["steps"][0]["name"], "dns");
        assert_eq!(v["steps"][0]["status"], "pass");
        assert_eq!(v["steps"][0]["evidence"][0], "a");
        assert!(v["steps"][0]["fix"].is_null());
        assert!(v["steps"][1]["fix"]["nginx"]
            .as_str()
            .unwrap()
            .contains("proxy_read_timeout"));
    }
}

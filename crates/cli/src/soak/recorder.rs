//! The counts of a soak: every message sent and echoed, every echo's
//! outcome, every connection's end and what became of its messages in flight,
//! latencies overall, by label and per second.

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;
use switchyard::{Error as WsError, Message};

use super::payload::{self, Echo};

/// Problems described one by one in the report (the rest are counted).
const MAX_PROBLEMS: usize = 20;

/// Where the messages in flight at the end of a connection go.
#[derive(Clone, Copy)]
pub(super) enum Fate {
    Lost,
    /// In flight at the server's 1001.
    Drained,
    /// Cut without a close frame: [`Recorder::cut`] decides.
    Undecided,
}

/// Counters and histograms of the whole run.
pub(super) struct Recorder {
    pub(super) start: Instant,
    pub(super) sent: u64,
    pub(super) echoed: u64,
    pub(super) lost: u64,
    pub(super) duplicated: u64,
    pub(super) reordered: u64,
    pub(super) corrupted: u64,
    pub(super) drained: u64,
    pub(super) cut_at_stop: u64,
    pub(super) connects: u64,
    pub(super) corrupt_reasons: BTreeMap<&'static str, u64>,
    /// The first problems, described.
    pub(super) problems: Vec<String>,
    /// Per close code (or broken kind): connections, messages unanswered.
    pub(super) closes: BTreeMap<String, (u64, u64)>,
    pub(super) connect_failures: BTreeMap<String, u64>,
    /// Microseconds from when a message was due to its echo.
    pub(super) latency: Histogram<u64>,
    pub(super) by_label: BTreeMap<String, Histogram<u64>>,
    pub(super) label: Option<String>,
    pub(super) series: Vec<Second>,
}

/// One second of the run.
pub(super) struct Second {
    pub(super) sent: u64,
    pub(super) echoed: u64,
    pub(super) problems: u64,
    pub(super) latency: Histogram<u64>,
    pub(super) open: u64,
    pub(super) label: Option<String>,
}

pub(super) fn histogram(digits: u8) -> Histogram<u64> {
    let mut h = Histogram::new(digits).unwrap_or_else(|_| unreachable!("1..=5 digits are valid"));
    h.auto(true);
    h
}

impl Recorder {
    pub(super) fn new(start: Instant) -> Self {
        Recorder {
            start,
            sent: 0,
            echoed: 0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            corrupted: 0,
            drained: 0,
            cut_at_stop: 0,
            connects: 0,
            corrupt_reasons: BTreeMap::new(),
            problems: Vec::new(),
            closes: BTreeMap::new(),
            connect_failures: BTreeMap::new(),
            latency: histogram(3),
            by_label: BTreeMap::new(),
            label: None,
            series: Vec::new(),
        }
    }

    pub(super) fn second(&mut self, at: Instant) -> &mut Second {
        let i = at.saturating_duration_since(self.start).as_secs() as usize;
        while self.series.len() <= i {
            self.series.push(Second {
                sent: 0,
                echoed: 0,
                problems: 0,
                latency: histogram(2),
                open: 0,
                label: self.label.clone(),
            });
        }
        &mut self.series[i]
    }

    pub(super) fn sent(&mut self, at: Instant) {
        self.sent += 1;
        self.second(at).sent += 1;
    }

    pub(super) fn problem(&mut self, at: Instant, what: impl FnOnce() -> String) {
        self.second(at).problems += 1;
        if self.problems.len() < MAX_PROBLEMS {
            let t = at.saturating_duration_since(self.start).as_secs_f64();
            self.problems.push(format!("{t:.1} s: {}", what()));
        }
    }

    pub(super) fn echo(&mut self, outcome: Echo, msg: &Message, at: Instant) {
        let head = || {
            let b = match msg {
                Message::Text(t) => t.as_bytes().clone(),
                Message::Binary(b) => b.clone(),
                _ => Default::default(),
            };
            String::from_utf8_lossy(&b[..b.len().min(payload::HEADER_LEN)]).into_owned()
        };
        let sent_at = match outcome {
            Echo::InOrder { sent_at } => sent_at,
            Echo::Reordered { sent_at } => {
                self.reordered += 1;
                self.problem(at, || format!("reordered: {}", head()));
                sent_at
            }
            Echo::Duplicate => {
                self.duplicated += 1;
                return self.problem(at, || format!("duplicate: {}", head()));
            }
            Echo::Corrupt(why) => {
                self.corrupted += 1;
                *self.corrupt_reasons.entry(why).or_insert(0) += 1;
                return self.problem(at, || format!("corrupt ({why}): {}", head()));
            }
        };
        self.echoed += 1;
        let us = at.saturating_duration_since(sent_at).as_micros() as u64;
        let _ = self.latency.record(us);
        if let Some(l) = &self.label {
            let _ = self
                .by_label
                .entry(l.clone())
                .or_insert_with(|| histogram(3))
                .record(us);
        }
        let s = self.second(at);
        s.echoed += 1;
        let _ = s.latency.record(us);
    }

    /// A connection ended (`kind`: its close code or how it broke) with
    /// `unanswered` messages in flight, which go to `fate`.
    pub(super) fn ended(&mut self, kind: &str, unanswered: usize, fate: Fate) {
        let n = unanswered as u64;
        let c = self.closes.entry(kind.to_string()).or_insert((0, 0));
        c.0 += 1;
        c.1 += n;
        match fate {
            Fate::Drained => self.drained += n,
            Fate::Lost if n > 0 => {
                self.lost += n;
                self.problem(Instant::now(), || {
                    format!("{n} message(s) lost with a connection that ended with {kind}")
                });
            }
            Fate::Lost | Fate::Undecided => {}
        }
    }

    /// `n` messages were in flight on a connection cut without a close frame;
    /// `stopped`: its instance refused a new connection right after.
    pub(super) fn cut(&mut self, n: usize, stopped: bool) {
        let n = n as u64;
        if stopped {
            self.cut_at_stop += n;
        } else if n > 0 {
            self.lost += n;
            self.problem(Instant::now(), || {
                format!("{n} message(s) lost: their connection was cut, its instance still accepts")
            });
        }
    }

    pub(super) fn connect_failed(&mut self, e: &WsError) {
        let kind = match e {
            WsError::UpgradeRefused { status, .. } => format!("http {}", status.as_u16()),
            WsError::Timeout(_) => "timeout".into(),
            WsError::Io(io) => format!("{:?}", io.kind()),
            other => broken_kind(other),
        };
        *self.connect_failures.entry(kind).or_insert(0) += 1;
    }
}

/// The label of a connection that broke: the close code our side used
/// (1006 for a dropped transport), or the I/O error's kind.
pub(super) fn broken_kind(e: &WsError) -> String {
    match e {
        WsError::Protocol(p) => p.code.0.to_string(),
        WsError::Io(io) => format!("io: {:?}", io.kind()),
        WsError::Timeout(what) => format!("timeout: {what}"),
        other => format!("error: {other}"),
    }
}

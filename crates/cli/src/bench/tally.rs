//! What a run counts: results per worker, merged into one report, and the kinds of failure.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::*;

/// Results of one worker thread, or of all of them merged.
pub(super) struct Report {
    /// Echoed messages or completed handshake cycles inside the measured window.
    pub(super) completed: u64,
    /// Echoed messages or completed cycles over the whole run, warm-up included (for the
    /// server CPU per message that bench/run.sh computes from the server's CPU time).
    pub(super) total: u64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    /// Latency in nanoseconds.
    pub(super) latency: Histogram<u64>,
    pub(super) measured: Duration,
    /// CPU time of this process divided by wall time and threads over the whole run, so
    /// that a saturated load generator (near 1.0) is visible.
    pub(super) client_cpu: Option<f64>,
    /// CPU seconds this process used over the whole run (all threads).
    pub(super) client_cpu_seconds: Option<f64>,
    /// How busy each CPU of the machine was during the measured window (0..1), from
    /// `/proc/stat`: everything but idle and iowait, so the kernel's work for other
    /// processes' packets (softirq) counts too.
    pub(super) cpu_busy: Option<BTreeMap<usize, f64>>,
    /// Errors counted by kind (see [`Fail::kind`] and [`error_kind`]).
    pub(super) errors_by_kind: BTreeMap<String, u64>,
    /// One bucket per second since the start of the run (ramp-up and warm-up included).
    pub(super) series: Vec<Bucket>,
    /// Start of the run (second 0 of `series`), once known.
    pub(super) origin: Option<Instant>,
    /// Counters shared with the progress bar.
    pub(super) live: Option<Arc<super::progress::Live>>,
}

/// Results of one second of the run.
pub(super) struct Bucket {
    pub(super) completed: u64,
    pub(super) errors: u64,
    /// Latency in nanoseconds (2 significant digits: enough for a plot, small).
    pub(super) latency: Histogram<u64>,
}

impl Bucket {
    pub(super) fn new() -> Self {
        let mut latency = Histogram::new(2).unwrap_or_else(|_| unreachable_histogram());
        latency.auto(true);
        Self {
            completed: 0,
            errors: 0,
            latency,
        }
    }
}

impl Report {
    pub(super) fn new() -> Self {
        Self {
            completed: 0,
            total: 0,
            errors: 0,
            first_error: None,
            latency: new_histogram(),
            measured: Duration::ZERO,
            client_cpu: None,
            client_cpu_seconds: None,
            cpu_busy: None,
            errors_by_kind: BTreeMap::new(),
            series: Vec::new(),
            origin: None,
            live: None,
        }
    }

    /// The bucket of the second `at` falls in, if the run has started.
    pub(super) fn bucket(&mut self, at: Instant) -> Option<&mut Bucket> {
        let origin = self.origin?;
        // Bounded by the length of the run (ramp-up + warm-up + duration + grace).
        let i = usize::try_from(at.saturating_duration_since(origin).as_secs()).ok()?;
        if i >= self.series.len() {
            self.series.resize_with(i + 1, Bucket::new);
        }
        self.series.get_mut(i)
    }

    /// Counts one echoed message or completed handshake that took `latency`, finished `at`.
    pub(super) fn complete(&mut self, at: Instant, latency: Duration, window: &Window) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.complete_all(at, &[ns], window);
    }

    /// Counts several messages that all finished `at`, with these latencies in nanoseconds:
    /// the window test and the per-second bucket are looked up once for the whole batch.
    pub(super) fn complete_all(&mut self, at: Instant, latencies_ns: &[u64], window: &Window) {
        let n = latencies_ns.len() as u64;
        self.total += n;
        if at >= window.measure_from && at < window.end {
            self.completed += n;
            for &ns in latencies_ns {
                let _ = self.latency.record(ns);
            }
        }
        if let Some(b) = self.bucket(at) {
            b.completed += n;
            for &ns in latencies_ns {
                let _ = b.latency.record(ns);
            }
        }
    }

    /// Counts an error of kind `kind`; `what` describes it (kept for the first one).
    pub(super) fn error_of(&mut self, kind: &str, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
        match self.errors_by_kind.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.errors_by_kind.insert(kind.to_string(), 1);
            }
        }
        if let Some(b) = self.bucket(Instant::now()) {
            b.errors += 1;
        }
        if let Some(live) = &self.live {
            live.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `e`, classified by [`error_kind`].
    pub(super) fn fail(&mut self, e: &anyhow::Error) {
        self.error_of(&error_kind(e), || format!("{e:#}"));
    }

    pub(super) fn merge(&mut self, other: Report) {
        self.completed += other.completed;
        self.total += other.total;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        // Both histograms have the same bounds and auto-resize, so `add` cannot fail.
        let _ = self.latency.add(&other.latency);
        self.measured = self.measured.max(other.measured);
        for (k, n) in other.errors_by_kind {
            *self.errors_by_kind.entry(k).or_insert(0) += n;
        }
        if self.series.len() < other.series.len() {
            self.series.resize_with(other.series.len(), Bucket::new);
        }
        for (mine, theirs) in self.series.iter_mut().zip(other.series) {
            mine.completed += theirs.completed;
            mine.errors += theirs.errors;
            let _ = mine.latency.add(&theirs.latency);
        }
    }
}

pub(super) fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 1 hour, 3 significant digits; auto-resize so no record is ever lost.
    let mut h = Histogram::new(3).unwrap_or_else(|_| unreachable_histogram());
    h.auto(true);
    h
}

#[cold]
pub(super) fn unreachable_histogram() -> Histogram<u64> {
    // `Histogram::new(3)` only fails for more than 5 significant digits.
    unreachable!("a 3-significant-digit histogram is always valid")
}

/// Why a connection or a cycle failed, for the errors-by-kind count.
#[derive(Debug, thiserror::Error)]
pub(super) enum Fail {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the server answered {status:?} instead of \"HTTP/1.1 101 Switching Protocols\"")]
    Status { code: Option<u16>, status: String },
    #[error("{0}")]
    BadHandshake(String),
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    ClosedEarly(String),
}

impl Fail {
    pub(super) fn kind(&self) -> String {
        match self {
            Fail::Connect { source, .. } => match source.kind() {
                std::io::ErrorKind::ConnectionRefused => "connect_refused".into(),
                std::io::ErrorKind::TimedOut => "connect_timeout".into(),
                _ => "connect_failed".into(),
            },
            Fail::Status { code: Some(c), .. } => format!("handshake_status_{c}"),
            Fail::Status { code: None, .. } => "handshake_status".into(),
            Fail::BadHandshake(_) => "handshake_invalid".into(),
            Fail::Protocol(_) => "protocol_error".into(),
            Fail::ClosedEarly(_) => "closed_early".into(),
        }
    }
}

/// The kind of an error: a [`Fail`] anywhere in its chain, else the kind of an I/O error.
pub(super) fn error_kind(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Fail>() {
            return f.kind();
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => "reset",
                K::UnexpectedEof => "closed_early",
                K::TimedOut => "timeout",
                _ => "io",
            }
            .into();
        }
    }
    "other".into()
}

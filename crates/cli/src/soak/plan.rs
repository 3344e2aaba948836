//! What every client of a soak shares: the plan, its counters and the recorder.

use anyhow::{bail, Context};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use switchyard::ClientBuilder;

use super::args::SoakArgs;
use super::procs::*;
use super::recorder::*;

/// One run of the load: clients open from `start` (over the ramp-up) and
/// close at `end`.
#[derive(Clone, Copy)]
pub(super) struct Load {
    pub(super) start: Instant,
    pub(super) end: Instant,
}

/// What every client shares.
pub(super) struct Plan {
    /// `ws://host:port` of each instance, without a path.
    pub(super) instances: Vec<String>,
    pub(super) paths: Vec<String>,
    pub(super) connections: usize,
    /// Between two messages of one client.
    pub(super) interval: Duration,
    pub(super) rate: f64,
    pub(super) max_size: usize,
    pub(super) in_flight: usize,
    pub(super) binary: u8,
    pub(super) deflate: u8,
    /// Mean lifetime of a connection (`None`: no churn).
    pub(super) lifetime: Option<Duration>,
    pub(super) churn: f64,
    /// Second 0 of the report.
    pub(super) start: Instant,
    pub(super) ramp_up: Duration,
    pub(super) settle: Duration,
    pub(super) drain_wait: Duration,
    pub(super) tolerance: Tolerance,
    pub(super) label_file: Option<PathBuf>,
    pub(super) with_deflate: ClientBuilder,
    pub(super) without_deflate: ClientBuilder,
    /// The instance clients try first (the last one that worked).
    pub(super) preferred: AtomicUsize,
    /// Open connections now.
    pub(super) open: AtomicUsize,
    /// The label file applies (the load, not the leak check).
    pub(super) labelling: AtomicBool,
    pub(super) rec: Mutex<Recorder>,
}

impl Plan {
    pub(super) fn new(a: &SoakArgs) -> anyhow::Result<Self> {
        let mut instances = Vec::new();
        let mut url_paths = Vec::new();
        for u in &a.urls {
            let uri: http::Uri = u.parse().with_context(|| format!("--url {u:?}"))?;
            match uri.scheme_str() {
                Some("ws") | Some("wss") => {}
                _ => bail!("--url {u:?}: the scheme must be ws:// or wss://"),
            }
            let (Some(scheme), Some(auth)) = (uri.scheme_str(), uri.authority()) else {
                bail!("--url {u:?}: no host");
            };
            instances.push(format!("{scheme}://{auth}"));
            url_paths.push(
                uri.path_and_query()
                    .map_or("/".to_string(), |p| p.to_string()),
            );
        }
        let paths = if a.paths.is_empty() {
            url_paths[..1].to_vec()
        } else {
            a.paths.clone()
        };
        if let Some(p) = paths.iter().find(|p| !p.starts_with('/')) {
            bail!("--path {p:?} must start with /");
        }
        if a.connections == 0 || !(a.rate > 0.0 && a.rate.is_finite()) {
            bail!("--connections and --rate must be above 0");
        }
        if a.max_size < MIN_SIZE || a.binary > 100 || a.deflate > 100 {
            bail!("--max-size is at least {MIN_SIZE}; --binary and --deflate are percentages");
        }
        if !(0.0..=100.0).contains(&a.churn) || a.tolerance.is_nan() || a.tolerance < 0.0 {
            bail!("--churn is a percentage per second; --tolerance at least 0");
        }
        let start = Instant::now();
        let rec = Recorder::new(start);
        Ok(Plan {
            instances,
            paths,
            connections: a.connections,
            interval: Duration::from_secs_f64(a.connections as f64 / a.rate),
            rate: a.rate,
            max_size: a.max_size,
            in_flight: a.in_flight.max(1),
            binary: a.binary,
            deflate: a.deflate,
            lifetime: (a.churn > 0.0).then(|| Duration::from_secs_f64(100.0 / a.churn)),
            churn: a.churn,
            start,
            ramp_up: a.ramp_up,
            settle: a.settle,
            drain_wait: a.drain_wait,
            tolerance: Tolerance {
                fraction: a.tolerance / 100.0,
                rss_slack_kib: a.rss_slack.saturating_mul(1024),
            },
            label_file: a.label_file.clone(),
            with_deflate: ClientBuilder::new().subprotocols(a.subprotocols.clone()),
            without_deflate: ClientBuilder::new()
                .subprotocols(a.subprotocols.clone())
                .no_deflate(),
            preferred: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            labelling: AtomicBool::new(true),
            rec: Mutex::new(rec),
        })
    }

    pub(super) fn rec(&self) -> MutexGuard<'_, Recorder> {
        lock(&self.rec)
    }

    pub(super) fn seconds(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }

    /// Move the clients off instance `i` (it refused, or went away).
    pub(super) fn leave(&self, i: usize) {
        let next = (i + 1) % self.instances.len();
        let _ = self
            .preferred
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Smallest message (the header and a body).
pub(super) const MIN_SIZE: usize = 64;

/// The guarded value, also after another holder panicked (the soak goes on counting).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

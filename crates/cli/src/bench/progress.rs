//! The progress bar of `switchyard bench`: one line on stderr, redrawn with `\r` four times a
//! second while the run lasts (only when stderr is a terminal).

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Counters the load-generator threads bump (once per batch of replies, not per message) and
/// the progress bar reads.
#[derive(Default)]
pub(super) struct Live {
    /// Echoed messages or completed handshakes so far (warm-up included).
    pub(super) done: AtomicU64,
    pub(super) errors: AtomicU64,
    /// When the connections started (set by the first thread past the start barrier).
    pub(super) started: OnceLock<Instant>,
}

/// The phases of a run, as the progress bar names them.
#[derive(Clone, Copy)]
pub(super) struct Phases {
    pub(super) ramp_up: Duration,
    pub(super) warmup: Duration,
    pub(super) duration: Duration,
}

const WIDTH: usize = 30;

/// Redraws the bar every 250 ms until dropped (the caller races it against the run).
pub(super) async fn show(live: &Live, phases: Phases, unit: &str) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = (Instant::now(), 0u64);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let done = live.done.load(Ordering::Relaxed);
        let dt = now.saturating_duration_since(last.0).as_secs_f64();
        let rate = if dt > 0.0 {
            done.saturating_sub(last.1) as f64 / dt
        } else {
            0.0
        };
        last = (now, done);
        let elapsed = live
            .started
            .get()
            .map(|t0| now.saturating_duration_since(*t0));
        let text = line(
            elapsed,
            phases,
            done,
            rate,
            live.errors.load(Ordering::Relaxed),
            unit,
        );
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{text}\x1b[K");
        let _ = err.flush();
    }
}

/// Erases the bar.
pub(super) fn clear() {
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r\x1b[K");
    let _ = err.flush();
}

/// One frame of the bar; `elapsed` is `None` while the connections are being opened.
pub(super) fn line(
    elapsed: Option<Duration>,
    p: Phases,
    done: u64,
    rate: f64,
    errors: u64,
    unit: &str,
) -> String {
    let total = p.ramp_up + p.warmup + p.duration;
    let Some(elapsed) = elapsed else {
        return format!("[{}] connecting...", " ".repeat(WIDTH));
    };
    let phase = if elapsed < p.ramp_up {
        "ramp-up"
    } else if elapsed < p.ramp_up + p.warmup {
        "warm-up"
    } else if elapsed < total {
        "measuring"
    } else {
        "closing"
    };
    let frac = if total.is_zero() {
        1.0
    } else {
        (elapsed.as_secs_f64() / total.as_secs_f64()).clamp(0.0, 1.0)
    };
    let filled = ((frac * WIDTH as f64) as usize).min(WIDTH);
    format!(
        "[{}{}] {:>5.1}/{:.1} s {:<9} {} {unit}, {:.0} {unit}/s, {} errors",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        elapsed.as_secs_f64().min(total.as_secs_f64()),
        total.as_secs_f64(),
        phase,
        done,
        rate,
        errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases() -> Phases {
        Phases {
            ramp_up: Duration::from_secs(2),
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(7),
        }
    }

    #[test]
    fn bar_fills_with_time_and_names_the_phase() {
        let l = line(None, phases(), 0, 0.0, 0, "msgs");
        assert!(l.ends_with("connecting..."), "{l}");
        let l = line(Some(Duration::from_secs(1)), phases(), 10, 10.0, 0, "msgs");
        assert!(
            l.starts_with(&format!("[{}{}]", "#".repeat(3), ".".repeat(27))),
            "{l}"
        );
        assert!(l.contains("ramp-up"), "{l}");
        let l = line(
            Some(Duration::from_millis(2500)),
            phases(),
            0,
            0.0,
            0,
            "msgs",
        );
        assert!(l.contains("warm-up"), "{l}");
        let l = line(
            Some(Duration::from_secs(5)),
            phases(),
            1234,
            99.6,
            3,
            "msgs",
        );
        assert!(
            l.starts_with(&format!("[{}{}]", "#".repeat(15), ".".repeat(15))),
            "{l}"
        );
        assert!(l.contains("measuring"), "{l}");
        assert!(l.contains("1234 msgs, 100 msgs/s, 3 errors"), "{l}");
        let l = line(Some(Duration::from_secs(11)), phases(), 0, 0.0, 0, "msgs");
        assert!(l.starts_with(&format!("[{}]", "#".repeat(WIDTH))), "{l}");
        assert!(l.contains(" 10.0/10.0 s closing"), "{l}");
    }
}

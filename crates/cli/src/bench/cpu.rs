//! CPU time of this process and busy time of the machine's CPUs, from /proc.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::plan::*;

/// User + system CPU seconds used by this process so far (Linux `/proc/self/stat`).
pub(super) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: f64 = f.next()?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux ABI tokio supports.
    Some((utime + stime) / 100.0)
}

/// Busy and total clock ticks of each CPU (`/proc/stat`; busy is all but idle and iowait).
pub(super) fn cpu_ticks() -> Option<BTreeMap<usize, (u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    Some(parse_cpu_ticks(&stat))
}

pub(super) fn parse_cpu_ticks(stat: &str) -> BTreeMap<usize, (u64, u64)> {
    let mut out = BTreeMap::new();
    for line in stat.lines() {
        let mut f = line.split_ascii_whitespace();
        let Some(cpu) = f.next().and_then(|n| n.strip_prefix("cpu")) else {
            continue;
        };
        let Ok(cpu) = cpu.parse::<usize>() else {
            continue; // the "cpu" line sums all of them
        };
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let v: Vec<u64> = f.take(8).filter_map(|x| x.parse().ok()).collect();
        if v.len() == 8 {
            let total: u64 = v.iter().sum();
            out.insert(cpu, (total - v[3] - v[4], total));
        }
    }
    out
}

/// Per CPU, the busy fraction between two `cpu_ticks` readings.
pub(super) fn cpu_busy_between(
    a: &BTreeMap<usize, (u64, u64)>,
    b: &BTreeMap<usize, (u64, u64)>,
) -> BTreeMap<usize, f64> {
    b.iter()
        .filter_map(|(cpu, &(busy1, total1))| {
            let &(busy0, total0) = a.get(cpu)?;
            let total = total1.checked_sub(total0).filter(|&t| t > 0)?;
            Some((*cpu, busy1.saturating_sub(busy0) as f64 / total as f64))
        })
        .collect()
}

/// Reads `/proc/stat` when the measured window opens and when it closes (the window is
/// known once the first thread sets `start`). Gives up, with `None`, as soon as `done`
/// is dropped: a run that ends early is not held up.
pub(super) fn sample_cpu_busy(
    plan: Arc<Plan>,
    start: Arc<OnceLock<Instant>>,
    done: std::sync::mpsc::Receiver<()>,
) -> Option<BTreeMap<usize, f64>> {
    let wait_until = |at: Instant| -> bool {
        // false: the run is over (the sender was dropped) before `at`.
        let left = at.saturating_duration_since(Instant::now());
        left.is_zero()
            || matches!(
                done.recv_timeout(left),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            )
    };
    let t0 = loop {
        if let Some(t0) = start.get() {
            break *t0;
        }
        if !wait_until(Instant::now() + Duration::from_millis(5)) {
            return None;
        }
    };
    let window = window_from(&plan, t0);
    if !wait_until(window.measure_from) {
        return None;
    }
    let a = cpu_ticks()?;
    if !wait_until(window.end) {
        return None;
    }
    Some(cpu_busy_between(&a, &cpu_ticks()?))
}

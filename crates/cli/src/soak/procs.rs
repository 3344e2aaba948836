//! `--pids`: the resident memory and open descriptors of other processes
//! (the gateway, the backends), sampled from /proc.
//!
//! A watched process is `NAME=PID`, or `NAME=@FILE` for one whose pid is read
//! from FILE at every sample (a gateway redeployed under the same pid file):
//! each pid seen under a name is one [`Instance`] with its own baseline (its
//! first sample), peak and last sample, and optionally its idle level after
//! a first load (`soak --leak-check`).

use std::path::PathBuf;

use anyhow::{bail, Context};

/// One `--pids` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub name: String,
    pub pid: PidSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidSource {
    Fixed(u32),
    File(PathBuf),
}

/// Parse `NAME=PID,NAME=@FILE,...` (a bare `PID` is named after itself).
pub fn parse_watches(list: &str) -> anyhow::Result<Vec<Watch>> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, what) = item.split_once('=').unwrap_or((item, item));
        let pid = match what.strip_prefix('@') {
            Some(file) => PidSource::File(PathBuf::from(file)),
            None => PidSource::Fixed(what.parse().with_context(|| {
                format!("--pids: {what:?} is not a process id (NAME=PID or NAME=@PIDFILE)")
            })?),
        };
        if out.iter().any(|w: &Watch| w.name == name) {
            bail!("--pids: the name {name:?} is given twice");
        }
        out.push(Watch {
            name: name.to_string(),
            pid,
        });
    }
    Ok(out)
}

/// One reading of one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub rss_kib: u64,
    pub fds: u64,
}

impl Watch {
    /// The pid to read now (`None`: the pid file is missing or unreadable,
    /// e.g. between two instances).
    pub fn current_pid(&self) -> Option<u32> {
        match &self.pid {
            PidSource::Fixed(p) => Some(*p),
            PidSource::File(f) => std::fs::read_to_string(f).ok()?.trim().parse().ok(),
        }
    }
}

/// Read `pid`'s resident size and open descriptors (`None`: it is gone).
pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample { rss_kib, fds })
}

/// One process seen under a watched name.
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub pid: u32,
    /// The first sample: the baseline.
    pub first: Sample,
    pub first_at: f64,
    pub peak: Sample,
    pub last: Sample,
    pub last_at: f64,
    /// Its level when idle after the first of two equal loads: the memory
    /// baseline of a leak check.
    pub idle: Option<Sample>,
    /// (seconds since the start, sample), one per sampling.
    pub series: Vec<(f64, Sample)>,
}

impl Instance {
    fn new(name: &str, pid: u32, at: f64, s: Sample) -> Self {
        Instance {
            name: name.to_string(),
            pid,
            first: s,
            first_at: at,
            peak: s,
            last: s,
            last_at: at,
            idle: None,
            series: vec![(at, s)],
        }
    }

    fn add(&mut self, at: f64, s: Sample) {
        self.peak.rss_kib = self.peak.rss_kib.max(s.rss_kib);
        self.peak.fds = self.peak.fds.max(s.fds);
        self.last = s;
        self.last_at = at;
        self.series.push((at, s));
    }

    /// The baseline: the idle level if there is one, else the first sample.
    pub fn baseline(&self) -> Sample {
        self.idle.unwrap_or(self.first)
    }

    /// Whether the last sample is within `tolerance` of the baseline,
    /// memory and descriptors.
    pub fn back_to_baseline(&self, tolerance: Tolerance) -> bool {
        let within = |now: u64, base: u64, slack: u64| {
            now as f64 <= (base as f64 * (1.0 + tolerance.fraction)).max((base + slack) as f64)
        };
        let base = self.baseline();
        within(self.last.rss_kib, base.rss_kib, tolerance.rss_slack_kib)
            && within(self.last.fds, base.fds, 0)
    }
}

/// How far above its baseline a process may end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Of memory and descriptors (0.05: 5%).
    pub fraction: f64,
    /// Memory above the baseline that passes whatever the fraction: a
    /// small baseline's few percent are below what an allocator keeps or
    /// frees from one run to the next.
    pub rss_slack_kib: u64,
}

/// Every instance of every watched process.
#[derive(Debug, Default)]
pub struct Processes {
    pub instances: Vec<Instance>,
}

impl Processes {
    /// Sample every watch once, at `at` seconds since the start.
    pub fn sample_all(&mut self, watches: &[Watch], at: f64) {
        for w in watches {
            let Some(pid) = w.current_pid() else { continue };
            let Some(s) = sample(pid) else { continue };
            match self
                .instances
                .iter_mut()
                .find(|i| i.name == w.name && i.pid == pid)
            {
                Some(i) => i.add(at, s),
                None => self.instances.push(Instance::new(&w.name, pid, at, s)),
            }
        }
    }

    /// The instances still alive at the sampling `at`.
    pub fn alive_at(&self, at: f64) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(move |i| i.last_at >= at)
    }

    /// When the last sample was taken.
    pub fn last_sampling(&self) -> f64 {
        self.instances.iter().map(|i| i.last_at).fold(0.0, f64::max)
    }

    /// Record the last sample of every instance alive at `at` as its idle level.
    pub fn mark_idle(&mut self, at: f64) {
        for i in self.instances.iter_mut().filter(|i| i.last_at >= at) {
            i.idle = Some(i.last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_PERCENT: Tolerance = Tolerance {
        fraction: 0.05,
        rss_slack_kib: 0,
    };

    #[test]
    fn parses_pids_and_pid_files() {
        let w = parse_watches("gw=@/tmp/gw.pid, echo=12,34").unwrap();
        assert_eq!(w[0].pid, PidSource::File("/tmp/gw.pid".into()));
        assert_eq!(
            (w[1].name.as_str(), &w[1].pid),
            ("echo", &PidSource::Fixed(12))
        );
        assert_eq!(
            (w[2].name.as_str(), &w[2].pid),
            ("34", &PidSource::Fixed(34))
        );
        let e = parse_watches("gw=x").unwrap_err().to_string();
        assert!(e.contains("not a process id"), "{e}");
        let e = parse_watches("a=1,a=2").unwrap_err().to_string();
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn tracks_a_process_baseline_peak_and_return() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        // A shell that opens three more descriptors after its first input
        // line and closes them after the second.
        let mut child = Command::new("sh")
            .args([
                "-c",
                "echo; read a; exec 3</dev/null 4</dev/null 5</dev/null; echo; read b; \
                 exec 3<&- 4<&- 5<&-; echo; read c",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let (mut stdin, stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        lines.next().unwrap().unwrap();
        let watches = parse_watches(&format!("sh={}", child.id())).unwrap();
        let mut p = Processes::default();
        p.sample_all(&watches, 0.0);
        for (step, at) in [(1, 1.0), (2, 2.0)] {
            writeln!(stdin, "{step}").unwrap();
            lines.next().unwrap().unwrap();
            p.sample_all(&watches, at);
        }
        let i = &p.instances[0];
        assert_eq!((i.pid, i.series.len()), (child.id(), 3));
        assert!(i.first.rss_kib > 0, "{i:?}");
        assert_eq!(i.peak.fds, i.first.fds + 3, "{i:?}");
        assert_eq!(i.last.fds, i.first.fds, "{i:?}");
        assert_eq!(p.alive_at(2.0).count(), 1);
        assert_eq!(p.alive_at(2.5).count(), 0);
        drop(stdin);
        child.wait().unwrap();
        assert_eq!(sample(child.id()), None, "a gone process has no sample");
    }

    #[test]
    fn more_descriptors_or_memory_than_the_baseline_allows_is_not_back() {
        let s = |rss_kib, fds| Sample { rss_kib, fds };
        let mut i = Instance::new("x", 1, 0.0, s(1000, 20));
        i.add(1.0, s(5000, 400));
        i.add(2.0, s(1050, 21));
        assert!(i.back_to_baseline(FIVE_PERCENT));
        i.add(3.0, s(1051, 21));
        assert!(!i.back_to_baseline(FIVE_PERCENT), "RSS 5.1% over");
        let slack = Tolerance {
            rss_slack_kib: 51,
            ..FIVE_PERCENT
        };
        assert!(i.back_to_baseline(slack), "within the slack");
        i.add(4.0, s(1000, 22));
        assert!(!i.back_to_baseline(slack), "descriptors 10% over: no slack");
        assert_eq!(i.peak, s(5000, 400));
    }

    #[test]
    fn an_idle_level_is_the_memory_baseline_of_a_leak_check() {
        let s = |rss_kib, fds| Sample { rss_kib, fds };
        let mut p = Processes::default();
        p.instances.push(Instance::new("gw", 1, 0.0, s(1000, 20)));
        p.instances.push(Instance::new("old", 2, 0.0, s(1000, 20)));
        p.instances[0].add(5.0, s(8000, 20));
        assert_eq!(p.last_sampling(), 5.0);
        p.mark_idle(5.0);
        assert_eq!(p.instances[0].idle, Some(s(8000, 20)));
        assert_eq!(p.instances[1].idle, None, "gone before: not marked");
        p.instances[0].add(9.0, s(8300, 20));
        assert!(
            p.instances[0].back_to_baseline(FIVE_PERCENT),
            "within 5% of 8000"
        );
        p.instances[0].add(10.0, s(8500, 20));
        assert!(
            !p.instances[0].back_to_baseline(FIVE_PERCENT),
            "a second load ended higher"
        );
        p.instances[0].add(11.0, s(8000, 22));
        assert!(
            !p.instances[0].back_to_baseline(FIVE_PERCENT),
            "two descriptors more than when idle"
        );
    }

    #[test]
    fn a_missing_pid_file_is_not_sampled() {
        let watches = vec![Watch {
            name: "x".into(),
            pid: PidSource::File("/nonexistent/pid".into()),
        }];
        let mut p = Processes::default();
        p.sample_all(&watches, 0.0);
        assert!(p.instances.is_empty());
    }
}

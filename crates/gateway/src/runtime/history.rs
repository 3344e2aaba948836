//! The traffic of the last 15 minutes for the `/status` charts: every
//! [`SAMPLE_INTERVAL`] the admin listener records each route's message and
//! byte totals ([`Totals`]); the rates between consecutive samples are the
//! `history` of `/status.json`. Bounded: [`SAMPLES_KEPT`] samples of the
//! configured routes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// How often the totals are sampled.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Samples kept: 90 rates of 10 s, 15 minutes.
pub(crate) const SAMPLES_KEPT: usize = 91;

/// What a route relayed since start, both directions together: tunnels
/// and fallback sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Totals {
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug)]
struct Sample {
    at_unix: u64,
    totals: BTreeMap<String, Totals>,
}

/// The samples, oldest first.
#[derive(Debug, Default)]
pub(crate) struct TrafficHistory {
    samples: Mutex<VecDeque<Sample>>,
}

/// One route's rates, oldest first.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct RouteRates {
    pub route: String,
    pub points: Vec<RatePoint>,
}

/// The rates over the interval that ended at `at_unix`.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct RatePoint {
    pub at_unix: u64,
    pub messages_per_second: f64,
    pub bytes_per_second: f64,
}

impl TrafficHistory {
    /// Record the totals of every route at `at_unix` (seconds), dropping
    /// the oldest sample beyond [`SAMPLES_KEPT`].
    pub(crate) fn record(&self, at_unix: u64, totals: BTreeMap<String, Totals>) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(Sample { at_unix, totals });
    }

    /// Per route, the rate between each pair of consecutive samples in
    /// which it appears (a route added by a reload starts at its first
    /// sample; a counter that went back, which does not happen, counts 0).
    pub(crate) fn rates(&self) -> Vec<RouteRates> {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let mut routes: BTreeMap<&str, Vec<RatePoint>> = BTreeMap::new();
        for (before, after) in samples.iter().zip(samples.iter().skip(1)) {
            let secs = after.at_unix.saturating_sub(before.at_unix).max(1) as f64;
            for (route, now) in &after.totals {
                let Some(then) = before.totals.get(route) else {
                    continue;
                };
                routes.entry(route).or_default().push(RatePoint {
                    at_unix: after.at_unix,
                    messages_per_second: now.messages.saturating_sub(then.messages) as f64 / secs,
                    bytes_per_second: now.bytes.saturating_sub(then.bytes) as f64 / secs,
                });
            }
        }
        routes
            .into_iter()
            .map(|(route, points)| RouteRates {
                route: route.to_string(),
                points,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(rows: &[(&str, u64, u64)]) -> BTreeMap<String, Totals> {
        rows.iter()
            .map(|(r, messages, bytes)| {
                (
                    r.to_string(),
                    Totals {
                        messages: *messages,
                        bytes: *bytes,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn rates_are_the_differences_between_samples() {
        let h = TrafficHistory::default();
        assert_eq!(h.rates(), vec![]);
        h.record(100, totals(&[("/a", 0, 0)]));
        assert_eq!(h.rates(), vec![], "one sample has no rate");
        h.record(110, totals(&[("/a", 50, 1000), ("/b", 7, 7)]));
        h.record(120, totals(&[("/a", 50, 1000), ("/b", 27, 107)]));
        let rates = h.rates();
        assert_eq!(rates.len(), 2);
        assert_eq!(rates[0].route, "/a");
        assert_eq!(
            rates[0].points,
            vec![
                RatePoint {
                    at_unix: 110,
                    messages_per_second: 5.0,
                    bytes_per_second: 100.0
                },
                RatePoint {
                    at_unix: 120,
                    messages_per_second: 0.0,
                    bytes_per_second: 0.0
                },
            ]
        );
        // /b appeared at 110: its first rate is at 120.
        assert_eq!(
            rates[1].points,
            vec![RatePoint {
                at_unix: 120,
                messages_per_second: 2.0,
                bytes_per_second: 10.0
            }]
        );
    }

    #[test]
    fn history_is_bounded_to_fifteen_minutes() {
        let h = TrafficHistory::default();
        for i in 0..(SAMPLES_KEPT as u64 + 50) {
            h.record(i * 10, totals(&[("/a", i, i)]));
        }
        let points = &h.rates()[0].points;
        assert_eq!(points.len(), SAMPLES_KEPT - 1);
        let span = points.last().unwrap().at_unix - points[0].at_unix;
        assert_eq!(span, 10 * (SAMPLES_KEPT as u64 - 2));
        assert_eq!(
            SAMPLE_INTERVAL.as_secs() * (SAMPLES_KEPT as u64 - 1),
            15 * 60
        );
    }
}

//! [`Feed`]: what one instance holds of a session's log for its readers.
//!
//! The owner publishes every entry it appends on the session's channel,
//! and every instance hears it; an instance with a reader of the session
//! keeps the entries in the session's feed, so that its readers take them
//! without asking Redis. The feed holds one run of consecutive entries;
//! a reader that needs what the feed does not hold (a resume, the first
//! read on this instance, notifications lost while the subscriber
//! reconnected) reads the log in Redis, and what it reads fills the feed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::fallback::wire::{Entry, Payload, Seq};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::store::entry_cost;
use crate::sync::lock;

/// How long a session's feed outlives its last reader on this instance:
/// long enough that the polls of a session, spread over the instances,
/// find their feed filled.
const KEEP: Duration = Duration::from_secs(10);

/// What a feed has for a reader after `after`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Take {
    /// The entries that follow (at least one).
    Entries(Vec<Entry>),
    /// Nothing yet: the feed holds up to `after`.
    Nothing,
    /// The feed does not hold what follows `after`: read the log.
    Unknown,
}

/// One session's feed on this instance.
#[derive(Default)]
pub(super) struct Feed {
    st: Mutex<FeedState>,
    /// New entries, a newer reader.
    pub(super) notify: Notify,
}

#[derive(Default)]
struct FeedState {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The newest reader the owner announced.
    reader: u64,
    /// What the entries may cost together (the session's replay window).
    max_bytes: usize,
    last_used: Option<Instant>,
    /// The delivered entries not yet reported to the owner: up to which,
    /// their cost, since when.
    unreported: Option<(Seq, usize, Instant)>,
}

impl Feed {
    /// Take the entries in `new` (consecutive) that extend or precede the
    /// run held; a run that does not join what is held replaces it.
    pub(super) fn offer(&self, new: Vec<Entry>) {
        let (Some(first), Some(last)) = (new.first(), new.last()) else {
            return;
        };
        let (first, last) = (first.seq, last.seq);
        {
            let mut st = lock(&self.st);
            let held = st
                .entries
                .front()
                .zip(st.entries.back())
                .map(|(f, b)| (f.seq, b.seq));
            match held {
                Some((_, back)) if first <= back.next() && last > back => {
                    for e in new.into_iter().filter(|e| e.seq > back) {
                        st.push(e);
                    }
                }
                Some((front, _)) if first < front && last.next() >= front => {
                    let rest: Vec<Entry> = st.entries.drain(..).filter(|e| e.seq > last).collect();
                    st.bytes = 0;
                    for e in new.into_iter().chain(rest) {
                        st.push(e);
                    }
                }
                Some((front, back)) if first >= front && last <= back => return,
                _ => {
                    st.entries.clear();
                    st.bytes = 0;
                    for e in new {
                        st.push(e);
                    }
                }
            }
            st.bound();
        }
        self.notify.notify_waiters();
    }

    /// What follows `after`, at most about `max_bytes` (at least one).
    pub(super) fn take(&self, after: Seq, max_bytes: usize) -> Take {
        let mut st = lock(&self.st);
        st.last_used = Some(Instant::now());
        let (Some(front), Some(back)) = (st.entries.front(), st.entries.back()) else {
            return Take::Unknown;
        };
        let (front, back, ends) = (
            front.seq,
            back.seq,
            matches!(back.payload, Payload::Close(_)),
        );
        if after == back && !ends {
            return Take::Nothing;
        }
        if after.next() < front || after >= back {
            return Take::Unknown;
        }
        let skip = usize::try_from(after.0 + 1 - front.0).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in st.entries.iter().skip(skip) {
            if !out.is_empty() && bytes + e.payload.len() > max_bytes {
                break;
            }
            bytes += e.payload.len();
            out.push(e.clone());
        }
        Take::Entries(out)
    }

    /// The newest reader announced.
    pub(super) fn reader(&self) -> u64 {
        lock(&self.st).reader
    }

    /// The owner announced reader `reader`.
    pub(super) fn set_reader(&self, reader: u64) {
        {
            let mut st = lock(&self.st);
            st.reader = st.reader.max(reader);
        }
        self.notify.notify_waiters();
    }

    /// Drop the entries before `first` (the owner trimmed the log).
    pub(super) fn trim(&self, first: Seq) {
        let mut st = lock(&self.st);
        while st.entries.front().is_some_and(|e| e.seq < first) {
            if let Some(e) = st.entries.pop_front() {
                st.bytes -= entry_cost(&e.payload);
            }
        }
    }

    /// Forget the entries (notifications may have been lost).
    pub(super) fn clear(&self) {
        {
            let mut st = lock(&self.st);
            st.entries.clear();
            st.bytes = 0;
        }
        self.notify.notify_waiters();
    }

    /// A reader here gave out the entries up to `upto` costing `cost`:
    /// whether to report it to the owner now (what is not yet reported
    /// reaches half the window, or `every` passed since the first of
    /// it), and then up to which.
    pub(super) fn delivered(&self, upto: Seq, cost: usize, every: Duration) -> Option<Seq> {
        let mut st = lock(&self.st);
        let now = Instant::now();
        let (_, bytes, since) = st.unreported.unwrap_or((upto, 0, now));
        let bytes = bytes + cost;
        if bytes >= st.max_bytes / 2 || now.duration_since(since) >= every {
            st.unreported = None;
            Some(upto)
        } else {
            st.unreported = Some((upto, bytes, since));
            None
        }
    }

    /// What was delivered but not reported once `every` has passed.
    pub(super) fn overdue(&self, every: Duration) -> Option<Seq> {
        let mut st = lock(&self.st);
        let (upto, _, since) = st.unreported?;
        if since.elapsed() >= every {
            st.unreported = None;
            Some(upto)
        } else {
            None
        }
    }
}

impl FeedState {
    fn push(&mut self, e: Entry) {
        self.bytes += entry_cost(&e.payload);
        self.entries.push_back(e);
    }

    /// Within the window, keeping the last entry.
    fn bound(&mut self) {
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= entry_cost(&e.payload);
            }
        }
    }
}

/// The feeds of the sessions read on this instance, by channel.
#[derive(Default)]
pub(super) struct Feeds {
    by_channel: Mutex<HashMap<String, Arc<Feed>>>,
}

impl Feeds {
    /// The feed of the session on `channel`, made if needed (holding up to
    /// `window` bytes).
    pub(super) fn feed(&self, channel: &str, window: usize) -> Arc<Feed> {
        let mut map = lock(&self.by_channel);
        if let Some(f) = map.get(channel) {
            return f.clone();
        }
        // Forget the feeds nobody used lately, each time the map doubles
        // (amortised, bounded).
        if map.len() >= 64 && map.len().is_power_of_two() {
            map.retain(|_, f| {
                Arc::strong_count(f) > 1
                    || lock(&f.st).last_used.is_some_and(|t| t.elapsed() < KEEP)
            });
        }
        let f = Arc::new(Feed::default());
        {
            let mut st = lock(&f.st);
            st.max_bytes = window;
            st.last_used = Some(Instant::now());
        }
        map.insert(channel.to_owned(), f.clone());
        f
    }

    /// The feed of `channel`, if this instance keeps one.
    pub(super) fn get(&self, channel: &str) -> Option<Arc<Feed>> {
        lock(&self.by_channel).get(channel).cloned()
    }

    /// Every feed forgets its entries (the subscription was lost).
    pub(super) fn clear_all(&self) {
        let feeds: Vec<_> = lock(&self.by_channel).values().cloned().collect();
        for f in feeds {
            f.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(from: u64, to: u64) -> Vec<Entry> {
        (from..=to)
            .map(|s| Entry {
                seq: Seq(s),
                payload: Payload::Text("x".into()),
            })
            .collect()
    }

    fn seqs(t: Take) -> Vec<u64> {
        match t {
            Take::Entries(e) => e.iter().map(|e| e.seq.0).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_feed_joins_runs_and_says_when_it_cannot_answer() {
        let feeds = Feeds::default();
        let f = feeds.feed("c", 1 << 20);
        assert_eq!(f.take(Seq(0), 100), Take::Unknown);
        f.offer(run(3, 4));
        assert_eq!(f.take(Seq(0), 100), Take::Unknown, "1 and 2 are not held");
        assert_eq!(seqs(f.take(Seq(2), 100)), [3, 4]);
        assert_eq!(f.take(Seq(4), 100), Take::Nothing);
        // What the log gives joins before, a repeat changes nothing.
        f.offer(run(1, 3));
        f.offer(run(2, 3));
        assert_eq!(seqs(f.take(Seq(0), 100)), [1, 2, 3, 4]);
        assert_eq!(seqs(f.take(Seq(0), 1)), [1], "at least one, then the bound");
        f.offer(run(5, 5));
        assert_eq!(seqs(f.take(Seq(4), 100)), [5]);
        // A run past a gap replaces what is held.
        f.offer(run(9, 9));
        assert_eq!(f.take(Seq(5), 100), Take::Unknown);
        assert_eq!(seqs(f.take(Seq(8), 100)), [9]);
        assert_eq!(f.take(Seq(12), 100), Take::Unknown, "ahead: the log says");
        f.trim(Seq(10));
        f.clear();
        assert_eq!(f.take(Seq(9), 100), Take::Unknown);
    }

    #[test]
    fn a_feed_stays_within_its_window_and_reports_in_batches() {
        let feeds = Feeds::default();
        let one = entry_cost(&Payload::Text("x".into()));
        let f = feeds.feed("c", 4 * one);
        f.offer(run(1, 10));
        assert_eq!(f.take(Seq(5), 1 << 20), Take::Unknown);
        assert_eq!(seqs(f.take(Seq(6), 1 << 20)), [7, 8, 9, 10]);
        let hour = Duration::from_secs(3600);
        assert_eq!(f.delivered(Seq(7), one, hour), None);
        assert_eq!(
            f.delivered(Seq(8), one, hour),
            Some(Seq(8)),
            "half the window"
        );
        assert_eq!(f.delivered(Seq(9), one, hour), None);
        assert_eq!(f.overdue(hour), None);
        assert_eq!(f.overdue(Duration::ZERO), Some(Seq(9)));
        assert_eq!(f.overdue(Duration::ZERO), None);
    }
}

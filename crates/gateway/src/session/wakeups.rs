//! The local side of [`super::redis::RedisStore`]'s notifications: who
//! waits for what on each session's channel.
//!
//! A script that changes a session publishes one letter on the session's
//! channel saying whom the change concerns ([`Audience`]), so that a
//! notification wakes only the waiters that have something new to find:
//! the owner's wait for room is not re-run when the log grows, nor a
//! reader's when a reader is given entries.
//!
//! Each audience also remembers the last check that found everything there
//! was to take ([`Settled`]): a caller that comes back for what follows
//! while no notification has arrived since that check began knows the
//! answer is "nothing yet" and waits without asking the server again. The
//! round trip that would find nothing is the one saved per message.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sync::lock;

/// Longest a waiter goes without re-checking, whatever the notifications.
pub(super) const RECHECK: Duration = Duration::from_secs(1);

/// How long a session's waiting state outlives its last use: long enough
/// to span the gap between two calls of a busy session's owner or reader.
const KEEP: Duration = Duration::from_secs(10);

/// Whom a change of a session concerns (the letter the scripts publish).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Audience {
    /// The log grew or a newer reader began (`r`): the reader.
    Reader,
    /// A reader was given entries, so the window has room (`m`): the owner's
    /// backend side.
    Room,
}

impl Audience {
    const ALL: [Audience; 2] = [Audience::Reader, Audience::Room];

    fn index(self) -> usize {
        self as usize
    }

    /// The audiences a published letter wakes; `a` (the session was
    /// aborted or ended by a reader) wakes every one.
    fn of(letter: &[u8]) -> &'static [Audience] {
        match letter {
            b"r" => &[Audience::Reader],
            b"m" => &[Audience::Room],
            _ => &Audience::ALL,
        }
    }
}

/// Where a reader stands: its ticket and the last number it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) ticket: u64,
    pub(super) after: u64,
}

/// A check that found everything up to its mark, begun at `generation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Settled {
    mark: Mark,
    generation: u64,
}

#[derive(Default)]
struct Waiting {
    notify: Notify,
    /// Counts the notifications; bumped before the waiters are woken.
    generation: AtomicU64,
    settled: Mutex<Option<Settled>>,
}

/// One session's waiting state.
struct Session {
    audiences: [Waiting; 2],
    last_used: Mutex<Instant>,
}

/// The waiting state of every session this instance waits on, by channel.
#[derive(Default)]
pub(super) struct Wakeups {
    by_channel: Mutex<HashMap<String, Arc<Session>>>,
}

impl Wakeups {
    /// A wait on `channel` for `audience`, ending `wait` from now.
    pub(super) fn waiter(&self, channel: &str, audience: Audience, wait: Duration) -> Waiter {
        let session = {
            let mut map = lock(&self.by_channel);
            match map.get(channel) {
                Some(s) => s.clone(),
                None => {
                    // Forget sessions nobody waits on and nobody used lately,
                    // each time the map doubles (amortised, bounded).
                    if map.len() >= 64 && map.len().is_power_of_two() {
                        map.retain(|_, s| {
                            Arc::strong_count(s) > 1 || lock(&s.last_used).elapsed() < KEEP
                        });
                    }
                    let s = Arc::new(Session {
                        audiences: Default::default(),
                        last_used: Mutex::new(Instant::now()),
                    });
                    map.insert(channel.to_owned(), s.clone());
                    s
                }
            }
        };
        *lock(&session.last_used) = Instant::now();
        Waiter {
            session,
            audience,
            deadline: Instant::now() + wait,
        }
    }

    /// A notification `letter` arrived on `channel`.
    pub(super) fn wake(&self, channel: &str, letter: &[u8]) {
        let Some(session) = lock(&self.by_channel).get(channel).cloned() else {
            return;
        };
        for a in Audience::of(letter) {
            let w = &session.audiences[a.index()];
            w.generation.fetch_add(1, Ordering::SeqCst);
            w.notify.notify_waiters();
        }
    }

    /// Every waiter re-checks now (the notifications may have been lost).
    pub(super) fn wake_all(&self) {
        let sessions: Vec<_> = lock(&self.by_channel).values().cloned().collect();
        for s in sessions {
            for w in &s.audiences {
                w.generation.fetch_add(1, Ordering::SeqCst);
                w.notify.notify_waiters();
            }
        }
    }
}

/// A wait for one audience of one session: [`Waiter::arm`] before each
/// check, [`Waiter::sleep`] after a check that found nothing.
pub(super) struct Waiter {
    session: Arc<Session>,
    audience: Audience,
    deadline: Instant,
}

/// A waiter listening from some moment on, with the generation seen then.
pub(super) struct Armed<'a> {
    notified: Pin<Box<Notified<'a>>>,
    generation: u64,
}

impl Waiter {
    fn waiting(&self) -> &Waiting {
        &self.session.audiences[self.audience.index()]
    }

    /// Listen from now on (a notification sent during the check that
    /// follows is not missed).
    pub(super) fn arm(&self) -> Armed<'_> {
        let w = self.waiting();
        let mut notified = Box::pin(w.notify.notified());
        notified.as_mut().enable();
        Armed {
            notified,
            generation: w.generation.load(Ordering::SeqCst),
        }
    }

    /// Whether a check at `mark` would find nothing new: an earlier check
    /// found everything up to it and no notification came since it began.
    pub(super) fn settled(&self, armed: &Armed<'_>, mark: Mark) -> bool {
        *lock(&self.waiting().settled)
            == Some(Settled {
                mark,
                generation: armed.generation,
            })
    }

    /// The check made under `armed` found everything up to `mark`.
    pub(super) fn settle(&self, armed: &Armed<'_>, mark: Mark) {
        *lock(&self.waiting().settled) = Some(Settled {
            mark,
            generation: armed.generation,
        });
    }

    /// Wait for a notification, at most [`RECHECK`]; `false` once the
    /// deadline has passed (no more checks).
    pub(super) async fn sleep(&self, armed: Armed<'_>) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let _ = tokio::time::timeout((self.deadline - now).min(RECHECK), armed.notified).await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CH: &str = "sy:ev:1";
    const MARK: Mark = Mark {
        ticket: 0,
        after: 7,
    };

    #[test]
    fn a_check_stays_settled_until_a_notification_for_its_audience() {
        let w = Wakeups::default();
        let owner = w.waiter(CH, Audience::Room, Duration::ZERO);
        let armed = owner.arm();
        owner.settle(&armed, MARK);
        // A change for the reader says nothing about the room.
        w.wake(CH, b"r");
        let again = w.waiter(CH, Audience::Room, Duration::ZERO);
        assert!(again.settled(&again.arm(), MARK));
        assert!(!again.settled(
            &again.arm(),
            Mark {
                ticket: 0,
                after: 8
            }
        ));
        w.wake(CH, b"m");
        assert!(!again.settled(&again.arm(), MARK));
    }

    #[test]
    fn an_abort_and_a_lost_subscription_wake_every_audience() {
        let w = Wakeups::default();
        for (i, a) in Audience::ALL.into_iter().enumerate() {
            let x = w.waiter(CH, a, Duration::ZERO);
            let armed = x.arm();
            x.settle(&armed, MARK);
            if i == 0 {
                w.wake(CH, b"a");
            } else {
                w.wake_all();
            }
            assert!(!x.settled(&x.arm(), MARK), "{a:?}");
        }
    }

    #[test]
    fn a_notification_during_a_check_is_not_missed() {
        use futures_util::FutureExt;
        let w = Wakeups::default();
        let reader = w.waiter(CH, Audience::Reader, Duration::from_secs(3600));
        let mut armed = reader.arm();
        w.wake(CH, b"r");
        assert!(armed.notified.as_mut().now_or_never().is_some());
    }

    #[test]
    fn idle_sessions_are_forgotten_as_the_map_grows() {
        let w = Wakeups::default();
        let kept = w.waiter("kept", Audience::Reader, Duration::ZERO);
        for i in 1..256 {
            drop(w.waiter(&format!("c{i}"), Audience::Reader, Duration::ZERO));
        }
        // Recently used: kept (a busy session's next call finds its state).
        drop(w.waiter("c256", Audience::Reader, Duration::ZERO));
        assert_eq!(lock(&w.by_channel).len(), 257);
        for s in lock(&w.by_channel).values() {
            let mut t = lock(&s.last_used);
            *t = t.checked_sub(KEEP).expect("the clock is past KEEP");
        }
        // 257 entries: the next insert at 512 forgets the idle ones.
        for i in 257..512 {
            drop(w.waiter(&format!("c{i}"), Audience::Reader, Duration::ZERO));
        }
        drop(w.waiter("one more", Audience::Reader, Duration::ZERO));
        let map = lock(&w.by_channel);
        assert!(map.contains_key("kept"), "a waiter holds it");
        assert!(!map.contains_key("c1"), "idle and unheld");
        assert!(map.len() < 300, "{}", map.len());
        drop(kept);
    }
}

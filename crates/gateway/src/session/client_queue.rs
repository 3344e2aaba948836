//! [`ClientQueue`]: a session's client messages on their way to the owner,
//! with the exactly-once rule of their numbers. Both stores keep it where
//! the owner runs: [`super::memory::MemoryStore`] in its session state,
//! [`super::redis::RedisStore`] on the owner's instance (the other
//! instances send it the client's messages and get its answer back).

use std::collections::VecDeque;

use switchyard::fallback::wire::{Payload, Seq};
use switchyard::CloseFrame;

use super::store::{entry_cost, Accepted};

/// The client's messages not yet handled by the owner, in order.
#[derive(Debug, Default)]
pub(super) struct ClientQueue {
    items: VecDeque<(Seq, Payload)>,
    /// What the messages in `items` cost ([`entry_cost`]); a close item
    /// costs nothing (it always fits).
    bytes: usize,
    /// The last number taken.
    last: Seq,
    /// A close is queued: nothing more is taken.
    closing: bool,
}

impl ClientQueue {
    /// Take the messages numbered from `first` that are new, unless the
    /// queue's `max_bytes` or `reserve` (the memory the store takes them
    /// from: `false` answers [`Accepted::OverBudget`]) cannot hold them, or
    /// the session is closing or `ended`. `payloads` is left as it was
    /// unless they are taken.
    pub(super) fn accept(
        &mut self,
        first: Seq,
        payloads: &mut Vec<Payload>,
        max_bytes: usize,
        ended: bool,
        reserve: impl FnOnce(usize) -> bool,
    ) -> Accepted {
        let count = payloads.len() as u64;
        if count == 0 {
            return Accepted::Acked(self.last);
        }
        let last = Seq(first.0.saturating_add(count - 1));
        if last <= self.last {
            return Accepted::Acked(self.last);
        }
        if first > self.last.next() {
            return Accepted::Gap {
                expected: self.last.next(),
            };
        }
        if self.closing || ended {
            return Accepted::Closed;
        }
        // The part already taken by an earlier copy of this request.
        let skip = usize::try_from(self.last.0 + 1 - first.0).unwrap_or(usize::MAX);
        let skip = skip.min(payloads.len());
        let bytes: usize = payloads[skip..].iter().map(entry_cost).sum();
        if self.bytes > 0 && self.bytes + bytes > max_bytes {
            return Accepted::Full;
        }
        if !reserve(bytes) {
            return Accepted::OverBudget;
        }
        self.bytes += bytes;
        for p in payloads.drain(skip..) {
            self.last = self.last.next();
            self.items.push_back((self.last, p));
        }
        Accepted::Acked(self.last)
    }

    /// Queue the client's close after its messages (once; later sends
    /// answer [`Accepted::Closed`]).
    pub(super) fn close(&mut self, frame: CloseFrame) {
        if !self.closing {
            self.closing = true;
            self.items
                .push_back((self.last.next(), Payload::Close(frame)));
        }
    }

    /// The last number taken.
    pub(super) fn last(&self) -> Seq {
        self.last
    }

    /// What the queued messages cost.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drop the items up to `after` (handled by the owner); the bytes freed.
    pub(super) fn drop_upto(&mut self, after: Seq) -> usize {
        let mut freed = 0;
        while self.items.front().is_some_and(|(s, _)| *s <= after) {
            if let Some((_, p)) = self.items.pop_front() {
                if !matches!(p, Payload::Close(_)) {
                    freed += entry_cost(&p);
                }
            }
        }
        self.bytes -= freed;
        freed
    }

    /// The items queued (their payloads share their bytes).
    pub(super) fn items(&self) -> Vec<(Seq, Payload)> {
        self.items.iter().cloned().collect()
    }
}

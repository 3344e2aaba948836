//! [`MemoryStore`]: the session state in this process, for a gateway that
//! runs alone. Waits are `tokio::sync::Notify`s, one per kind of waiter.
//!
//! Every byte a session buffers (its log and its queue for the backend) is
//! taken from one [`MemoryStore::new`] budget shared by all sessions, so
//! that many sessions' per-session bounds cannot add up beyond it. When a
//! message does not fit, entries already given to a reader are dropped
//! from every session first (their replay windows shrink: a resume that
//! needs them ends with 4410, never a gap); then a send is refused
//! ([`Accepted::OverBudget`], the client retries), a backend's message
//! waits in its owner ([`Pushed::OverBudget`]: the backend is not read
//! until it fits), and past
//! [`OPEN_REFUSED_ABOVE`] of the budget opens are refused.
//!
//! An owner waiting for memory ([`SessionStore::wait_memory`]) is woken by
//! the release itself, not by a timer: while any waits, readers drop the
//! entries they are given at once (as the shortage would drop them), and
//! every release of bytes wakes the waiters. Dropping given entries from
//! every session takes a pass over all sessions, done only when some read
//! kept entries since the last pass.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::fallback::wire::{Entry, Payload, Seq, SessionId};
use switchyard::CloseFrame;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::client_queue::ClientQueue;
use super::store::{
    entry_cost as cost, Aborted, Accepted, Inbound, Pushed, ReadOutcome, ReadStart, ReaderTicket,
    SessionRecord, SessionStore, StoreError, StoreFuture,
};
use crate::sync::lock;

/// Payloads up to this size are copied into the log ([`own_bytes`]).
const COPY_BELOW: usize = 4096;

/// The log keeps an entry until the client has it, so a small payload gets
/// its own copy: the backend's message is a slice of the receive buffer it
/// was read into (KiBs, shared with the messages read beside it), which the
/// entry would otherwise keep allocated beyond what the budget counts.
/// Larger payloads are most of the buffer they were read into.
fn own_bytes(payload: Payload) -> Payload {
    match payload {
        Payload::Text(t) if t.len() <= COPY_BELOW => Payload::Text(t.as_str().into()),
        Payload::Binary(b) if b.len() <= COPY_BELOW => {
            Payload::Binary(bytes::Bytes::copy_from_slice(&b))
        }
        other => other,
    }
}

/// Opens are refused while the sessions hold more than this part of the
/// budget (eighths): the rest is kept for the sessions already open.
pub const OPEN_REFUSED_ABOVE: (usize, usize) = (7, 8);

/// The bytes all sessions of a store may buffer together.
#[derive(Debug)]
struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Some log may keep entries a reader was given (what [`MemoryStore::shed`]
    /// drops): set by the reads that keep them, cleared by `shed`.
    kept: AtomicBool,
    /// Owners in [`SessionStore::wait_memory`].
    waiting: AtomicUsize,
    /// Bytes were given back while an owner waited.
    released: Notify,
}

/// One owner counted in [`Budget::waiting`] while it lives.
struct Waiting<'a>(&'a Budget);

impl<'a> Waiting<'a> {
    fn new(budget: &'a Budget) -> Self {
        budget.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(budget)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Budget {
    fn new(limit: usize) -> Self {
        Budget {
            limit,
            used: AtomicUsize::new(0),
            kept: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            released: Notify::new(),
        }
    }

    /// Whether `n` more bytes fit now.
    fn fits(&self, n: usize) -> bool {
        self.used().checked_add(n).is_some_and(|t| t <= self.limit)
    }

    /// Take `n` bytes if they fit.
    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.limit)
            })
            .is_ok()
    }

    /// Take `n` bytes whether they fit or not (a close entry: the end of a
    /// session must be recorded; its size is bounded).
    fn take(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    fn give(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.used.fetch_sub(n, Ordering::SeqCst);
        if self.pressed() {
            self.released.notify_waiters();
        }
    }

    /// Owners wait for memory: what readers are given is dropped at once.
    fn pressed(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) > 0
    }

    fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn opens_allowed(&self) -> bool {
        let (num, den) = OPEN_REFUSED_ABOVE;
        self.used() <= self.limit / den * num
    }
}

/// Fallback sessions in memory, bounded by a number of sessions (ended
/// ones included until they are forgotten), by the bytes they buffer
/// together, and, per session, by its settings' byte bounds.
#[derive(Debug)]
pub struct MemoryStore {
    sessions: Mutex<HashMap<SessionId, Arc<Slot>>>,
    capacity: usize,
    budget: Arc<Budget>,
    /// When ended sessions were last forgotten (at most once a second, on
    /// `create`): their logs do not wait for the store to fill up.
    swept: Mutex<Instant>,
}

/// How often `create` forgets the ended sessions whose time is over.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Slot {
    record: SessionRecord,
    state: Mutex<State>,
    /// New entries, a new reader, the end.
    to_reader: Notify,
    /// Client messages and closes.
    to_owner: Notify,
    /// Entries given to a reader (room in the window), the end.
    room: Notify,
}

#[derive(Debug)]
struct State {
    /// Where `log_bytes` and `inbound_bytes` are taken from (given back
    /// when the state is dropped).
    budget: Arc<Budget>,
    log: VecDeque<Entry>,
    log_bytes: usize,
    /// Bytes of the entries after `delivered`.
    unread_bytes: usize,
    last: Seq,
    delivered: Seq,
    /// The close entry's number and when it was appended.
    ended: Option<(Seq, Instant)>,
    reader: u64,
    reader_seen: Instant,
    client: ClientQueue,
}

impl Default for MemoryStore {
    /// Room for 20 000 sessions holding 256 MiB.
    fn default() -> Self {
        MemoryStore::new(20_000, 256 << 20)
    }
}

impl MemoryStore {
    /// A store for at most `capacity` sessions, ended ones included until
    /// they are forgotten (their idle timeout after the end), buffering at
    /// most `memory` bytes together (see the module docs).
    pub fn new(capacity: usize, memory: usize) -> Self {
        MemoryStore {
            sessions: Mutex::new(HashMap::new()),
            capacity,
            budget: Arc::new(Budget::new(memory)),
            swept: Mutex::new(Instant::now()),
        }
    }

    /// Bytes the sessions buffer now.
    pub fn memory_used(&self) -> usize {
        self.budget.used()
    }

    /// Drop the entries already given to a reader from every session's
    /// log, to make room in the budget (nothing to do unless a read kept
    /// some since the last time).
    fn shed(&self) {
        if !self.budget.kept.swap(false, Ordering::SeqCst) {
            return;
        }
        let slots: Vec<Arc<Slot>> = lock(&self.sessions).values().cloned().collect();
        for s in slots {
            lock(&s.state).trim(0);
        }
    }

    /// Sessions held now (ended ones not yet forgotten included).
    pub fn len(&self) -> usize {
        let mut map = lock(&self.sessions);
        sweep(&mut map);
        map.len()
    }

    /// Whether the store holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, id: SessionId) -> Result<Arc<Slot>, StoreError> {
        let mut map = lock(&self.sessions);
        match map.get(&id) {
            Some(s) if s.expired(Instant::now()) => {
                map.remove(&id);
                Err(StoreError::Unknown)
            }
            Some(s) => Ok(s.clone()),
            None => Err(StoreError::Unknown),
        }
    }
}

/// Forget the ended sessions whose linger is over.
fn sweep(map: &mut HashMap<SessionId, Arc<Slot>>) {
    let now = Instant::now();
    map.retain(|_, s| !s.expired(now));
}

impl Slot {
    fn expired(&self, now: Instant) -> bool {
        let st = lock(&self.state);
        st.ended
            .is_some_and(|(_, at)| now.duration_since(at) > self.record.settings.idle_timeout)
    }

    fn replay_bytes(&self) -> usize {
        self.record.settings.replay_bytes
    }

    /// Wait until `check` gives an answer or `wait` passes (then
    /// `on_timeout`). `notify` must be the one the state change that
    /// `check` looks for signals.
    async fn wait_for<T>(
        &self,
        notify: &Notify,
        wait: Duration,
        mut check: impl FnMut(&mut State) -> Option<T>,
        on_timeout: impl FnOnce(&mut State) -> T,
    ) -> T {
        let deadline = Instant::now() + wait;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&mut lock(&self.state)) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return on_timeout(&mut lock(&self.state));
            }
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.budget.give(self.log_bytes + self.client.bytes());
    }
}

impl State {
    /// The entries not yet given to a reader are below `window`, or the
    /// log ended: the owner may append more.
    fn has_room(&self, window: usize) -> bool {
        self.ended.is_some() || self.unread_bytes < window
    }

    fn new(budget: Arc<Budget>) -> Self {
        State {
            budget,
            log: VecDeque::new(),
            log_bytes: 0,
            unread_bytes: 0,
            last: Seq::ZERO,
            delivered: Seq::ZERO,
            ended: None,
            reader: 0,
            reader_seen: Instant::now(),
            client: ClientQueue::default(),
        }
    }

    /// Append `payload`, whose cost was taken from the budget.
    fn append_taken(&mut self, payload: Payload) {
        let payload = own_bytes(payload);
        self.last = self.last.next();
        let c = cost(&payload);
        self.log_bytes += c;
        self.unread_bytes += c;
        if matches!(payload, Payload::Close(_)) {
            self.ended = Some((self.last, Instant::now()));
        }
        self.log.push_back(Entry {
            seq: self.last,
            payload,
        });
    }

    /// Append the close entry, taking its cost whether it fits or not.
    fn append_close(&mut self, frame: CloseFrame) {
        let p = Payload::Close(frame);
        self.budget.take(cost(&p));
        self.append_taken(p);
    }

    /// Drop delivered entries from the front while the log is over the
    /// window; the close entry stays.
    fn trim(&mut self, window: usize) {
        let mut freed = 0;
        while self.log_bytes > window {
            match self.log.front() {
                Some(e) if e.seq <= self.delivered && !matches!(e.payload, Payload::Close(_)) => {
                    let c = cost(&e.payload);
                    self.log_bytes -= c;
                    freed += c;
                    self.log.pop_front();
                }
                _ => break,
            }
        }
        self.budget.give(freed);
    }

    /// After a read gave entries up to `seq`: keep them for resumes up to
    /// `window`, or drop them at once while owners wait for memory.
    fn given(&mut self, seq: Seq, window: usize) {
        self.deliver(seq);
        if self.budget.pressed() {
            self.trim(0);
        } else {
            self.trim(window);
            // Loaded first: every read would otherwise write the shared line.
            if !self.budget.kept.load(Ordering::SeqCst) {
                self.budget.kept.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Mark everything up to `seq` as given to a reader.
    fn deliver(&mut self, seq: Seq) {
        if seq <= self.delivered {
            return;
        }
        let given: usize = self
            .log
            .iter()
            .filter(|e| e.seq > self.delivered && e.seq <= seq)
            .map(|e| cost(&e.payload))
            .sum();
        self.unread_bytes = self.unread_bytes.saturating_sub(given);
        self.delivered = seq;
    }

    /// Drop the client messages up to `after` (handled by the owner).
    fn drop_inbound(&mut self, after: Seq) {
        let freed = self.client.drop_upto(after);
        self.budget.give(freed);
    }
}

impl SessionStore for MemoryStore {
    fn memory_used(&self) -> Option<usize> {
        Some(MemoryStore::memory_used(self))
    }

    fn create(&self, id: SessionId, record: SessionRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut map = lock(&self.sessions);
            let due = {
                let mut swept = lock(&self.swept);
                let due = swept.elapsed() >= SWEEP_EVERY;
                if due {
                    *swept = Instant::now();
                }
                due
            };
            if due || map.len() >= self.capacity {
                sweep(&mut map);
            }
            if map.len() >= self.capacity {
                return Err(StoreError::Full(self.capacity));
            }
            if !self.budget.opens_allowed() {
                drop(map);
                self.shed();
                if !self.budget.opens_allowed() {
                    return Err(StoreError::OverBudget(self.budget.limit));
                }
                map = lock(&self.sessions);
            }
            map.insert(
                id,
                Arc::new(Slot {
                    record,
                    state: Mutex::new(State::new(self.budget.clone())),
                    to_reader: Notify::new(),
                    to_owner: Notify::new(),
                    room: Notify::new(),
                }),
            );
            Ok(())
        })
    }

    fn record(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>> {
        Box::pin(async move {
            match self.slot(id) {
                Ok(s) => Ok(Some(s.record.clone())),
                Err(StoreError::Unknown) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn push(&self, id: SessionId, payloads: Vec<Payload>) -> StoreFuture<'_, Pushed> {
        Box::pin(async move {
            let slot = self.slot(id)?;
            let mut pending = payloads.into_iter().peekable();
            let mut taken = 0usize;
            let mut shed = false;
            let pushed = loop {
                let mut st = lock(&slot.state);
                if st.ended.is_some() {
                    break Pushed::Ended;
                }
                while let Some(p) = pending.peek() {
                    let c = cost(p);
                    if matches!(p, Payload::Close(_)) {
                        st.budget.take(c);
                    } else if !st.budget.try_take(c) {
                        break;
                    }
                    if let Some(p) = pending.next() {
                        st.append_taken(p);
                        taken += 1;
                    }
                    if st.ended.is_some() {
                        break;
                    }
                }
                st.trim(slot.replay_bytes());
                // What follows a close is dropped.
                if st.ended.is_some() || pending.peek().is_none() {
                    break Pushed::Appended {
                        last: st.last,
                        room: st.has_room(slot.replay_bytes()),
                    };
                }
                if shed {
                    break Pushed::OverBudget {
                        taken,
                        limit: self.budget.limit,
                    };
                }
                drop(st);
                self.shed();
                shed = true;
            };
            slot.to_reader.notify_waiters();
            Ok(pushed)
        })
    }

    fn wait_room(&self, id: SessionId, wait: Duration) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let slot = self.slot(id)?;
            let window = slot.replay_bytes();
            let room = slot
                .wait_for(
                    &slot.room,
                    wait,
                    |st| st.has_room(window).then_some(true),
                    |_| false,
                )
                .await;
            Ok(room)
        })
    }

    fn wait_memory(&self, need: usize, wait: Duration) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let budget = &self.budget;
            let deadline = Instant::now() + wait;
            // Counted before the check below: a release after it wakes this.
            let _waiting = Waiting::new(budget);
            loop {
                let released = budget.released.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                // What readers kept before this wait; from now on they drop
                // what they are given as they read.
                self.shed();
                if budget.fits(need) || tokio::time::timeout_at(deadline, released).await.is_err() {
                    return Ok(());
                }
            }
        })
    }

    fn take_inbound(&self, id: SessionId, after: Seq, wait: Duration) -> StoreFuture<'_, Inbound> {
        Box::pin(async move {
            let slot = self.slot(id)?;
            let collect = |st: &mut State| {
                st.drop_inbound(after);
                Inbound {
                    items: st.client.items(),
                    idle: st.reader_seen.elapsed(),
                }
            };
            let inbound = slot
                .wait_for(
                    &slot.to_owner,
                    wait,
                    |st| Some(collect(st)).filter(|i| !i.items.is_empty()),
                    collect,
                )
                .await;
            Ok(inbound)
        })
    }

    fn begin_read(&self, id: SessionId, after: Seq) -> StoreFuture<'_, ReadStart> {
        Box::pin(async move {
            let slot = self.slot(id)?;
            let start = {
                let mut st = lock(&slot.state);
                st.reader += 1;
                st.reader_seen = Instant::now();
                ReadStart {
                    ticket: ReaderTicket(st.reader),
                    replays: after < st.delivered,
                }
            };
            slot.to_reader.notify_waiters();
            Ok(start)
        })
    }

    fn read(
        &self,
        id: SessionId,
        ticket: ReaderTicket,
        after: Seq,
        max_bytes: usize,
        wait: Duration,
    ) -> StoreFuture<'_, ReadOutcome> {
        Box::pin(async move {
            let slot = self.slot(id)?;
            let window = slot.replay_bytes();
            let mut gave = false;
            let outcome = slot
                .wait_for(
                    &slot.to_reader,
                    wait,
                    |st| {
                        st.reader_seen = Instant::now();
                        let out = read_now(st, ticket, after, max_bytes)?;
                        if let ReadOutcome::Entries(e) = &out {
                            if let Some(last) = e.last() {
                                st.given(last.seq, window);
                                gave = true;
                            }
                        }
                        Some(out)
                    },
                    |st| {
                        st.reader_seen = Instant::now();
                        ReadOutcome::Entries(Vec::new())
                    },
                )
                .await;
            if gave {
                slot.room.notify_waiters();
            }
            Ok(outcome)
        })
    }

    fn accept(
        &self,
        id: SessionId,
        first: Seq,
        payloads: Vec<Payload>,
    ) -> StoreFuture<'_, Accepted> {
        Box::pin(async move {
            let slot = self.slot(id)?;
            let max = slot.record.settings.max_body;
            let mut payloads = payloads;
            let mut accepted = accept_now(&mut lock(&slot.state), first, &mut payloads, max);
            if accepted == Accepted::OverBudget {
                self.shed();
                accepted = accept_now(&mut lock(&slot.state), first, &mut payloads, max);
            }
            slot.to_owner.notify_waiters();
            Ok(accepted)
        })
    }

    fn request_close(&self, id: SessionId, frame: CloseFrame) -> StoreFuture<'_, Accepted> {
        Box::pin(async move {
            let slot = self.slot(id)?;
            let acked = {
                let mut st = lock(&slot.state);
                if st.ended.is_none() {
                    st.client.close(frame);
                }
                Accepted::Acked(st.client.last())
            };
            slot.to_owner.notify_waiters();
            Ok(acked)
        })
    }

    fn abort(
        &self,
        id: SessionId,
        to_client: CloseFrame,
        to_backend: CloseFrame,
    ) -> StoreFuture<'_, Aborted> {
        Box::pin(async move {
            let slot = self.slot(id)?;
            let aborted = {
                let mut st = lock(&slot.state);
                let now = st.ended.is_none();
                if now {
                    st.append_close(to_client);
                }
                st.client.close(to_backend);
                Aborted {
                    seq: st.ended.map_or(st.last, |(s, _)| s),
                    now,
                }
            };
            slot.to_reader.notify_waiters();
            slot.to_owner.notify_waiters();
            slot.room.notify_waiters();
            Ok(aborted)
        })
    }
}

/// The reader's answer now, or `None` to wait.
fn read_now(st: &State, ticket: ReaderTicket, after: Seq, max_bytes: usize) -> Option<ReadOutcome> {
    if ticket.0 != st.reader {
        return Some(ReadOutcome::Replaced);
    }
    if after > st.last {
        return Some(ReadOutcome::Ahead { last: st.last });
    }
    let first_kept = st.log.front().map_or(st.last.next(), |e| e.seq);
    if after.next() < first_kept {
        return Some(ReadOutcome::WindowExceeded);
    }
    if let Some((end, _)) = st.ended {
        if after >= end {
            // The reader has the close already: it gets it again (a
            // request after the end must still learn the end).
            let close = st.log.back().filter(|e| e.seq == end).cloned()?;
            return Some(ReadOutcome::Entries(vec![close]));
        }
    }
    let mut bytes = 0usize;
    let mut out = Vec::new();
    for e in st.log.iter().filter(|e| e.seq > after) {
        if !out.is_empty() && bytes + e.payload.len() > max_bytes {
            break;
        }
        bytes += e.payload.len();
        out.push(e.clone());
    }
    (!out.is_empty()).then_some(ReadOutcome::Entries(out))
}

fn accept_now(
    st: &mut State,
    first: Seq,
    payloads: &mut Vec<Payload>,
    max_bytes: usize,
) -> Accepted {
    let ended = st.ended.is_some();
    let budget = st.budget.clone();
    st.client
        .accept(first, payloads, max_bytes, ended, |n| budget.try_take(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::conformance::{record, seqs, ID};
    use crate::session::store::ENTRY_COST;
    use switchyard::CloseCode;

    const NOW: Duration = Duration::ZERO;

    async fn store(replay_bytes: usize, max_body: usize) -> MemoryStore {
        let s = MemoryStore::new(10, 1 << 30);
        s.create(ID, record(replay_bytes, max_body)).await.unwrap();
        s
    }

    crate::session::conformance::store_conformance!(async {
        let s: Arc<dyn SessionStore> = Arc::new(MemoryStore::new(10, 1 << 30));
        (s, ())
    });

    #[tokio::test(start_paused = true)]
    async fn ended_sessions_are_forgotten_after_their_idle_timeout_and_capacity_holds() {
        let s = MemoryStore::new(2, 1 << 30);
        let a = SessionId::from_bytes([1; 16]);
        let b = SessionId::from_bytes([2; 16]);
        s.create(a, record(1000, 1000)).await.unwrap();
        s.create(b, record(1000, 1000)).await.unwrap();
        assert_eq!(
            s.create(SessionId::from_bytes([3; 16]), record(1000, 1000))
                .await,
            Err(StoreError::Full(2))
        );
        s.push(
            a,
            vec![Payload::Close(CloseFrame::new(CloseCode::NORMAL, ""))],
        )
        .await
        .unwrap();
        assert!(
            s.record(a).await.unwrap().is_some(),
            "readable after the end"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(s.record(a).await, Ok(None));
        assert_eq!(s.len(), 1);
        s.create(SessionId::from_bytes([3; 16]), record(1000, 1000))
            .await
            .unwrap();
        assert_eq!(s.push(a, vec![]).await, Err(StoreError::Unknown));
    }

    #[tokio::test]
    async fn a_small_entry_does_not_keep_the_buffer_it_was_read_into() {
        let s = MemoryStore::new(10, 1 << 20);
        s.create(ID, record(1000, 1000)).await.unwrap();
        let read_buffer = bytes::Bytes::from(vec![b'a'; 16 * 1024]);
        let text = switchyard::Utf8Bytes::try_from_bytes(read_buffer.slice(16..21)).unwrap();
        s.push(
            ID,
            vec![
                Payload::Binary(read_buffer.slice(..16)),
                Payload::Text(text),
            ],
        )
        .await
        .unwrap();
        assert!(
            read_buffer.is_unique(),
            "the log refers to the 16 KiB buffer for entries of 16 and 5 bytes"
        );
        let big = bytes::Bytes::from(vec![1u8; 2 * COPY_BELOW]);
        s.push(ID, vec![Payload::Binary(big.slice(..))])
            .await
            .unwrap();
        assert!(!big.is_unique(), "a large payload is kept, not copied");
    }

    #[tokio::test(start_paused = true)]
    async fn opens_forget_ended_sessions_before_the_store_is_full() {
        let s = MemoryStore::new(100, 1 << 30);
        let a = SessionId::from_bytes([1; 16]);
        s.create(a, record(1000, 1000)).await.unwrap();
        let close = Payload::Close(CloseFrame::new(CloseCode::NORMAL, ""));
        s.push(a, vec![close]).await.unwrap();
        tokio::time::advance(Duration::from_secs(31)).await;
        s.create(SessionId::from_bytes([2; 16]), record(1000, 1000))
            .await
            .unwrap();
        assert_eq!(
            lock(&s.sessions).len(),
            1,
            "the ended session (and its log) is gone"
        );
    }

    #[tokio::test]
    async fn the_memory_budget_bounds_every_session_together() {
        let hundred = || Payload::Binary(vec![0u8; 100].into());
        let c = 100 + ENTRY_COST;
        // Room for eight entries of 100 bytes in all; opens stop above seven.
        let s = MemoryStore::new(10, 8 * c);
        let (a, b) = (
            SessionId::from_bytes([1; 16]),
            SessionId::from_bytes([2; 16]),
        );
        s.create(a, record(1 << 20, 1 << 20)).await.unwrap();
        s.create(b, record(1 << 20, 1 << 20)).await.unwrap();
        assert_eq!(
            s.push(a, vec![hundred(), hundred(), hundred(), hundred()])
                .await,
            Ok(Pushed::Appended {
                last: Seq(4),
                room: true
            })
        );
        assert_eq!(
            s.accept(b, Seq(1), vec![hundred(), hundred()]).await,
            Ok(Accepted::Acked(Seq(2)))
        );
        assert_eq!(s.memory_used(), 6 * c);
        // Two entries fit, the third does not: it and what follows are
        // left to the session's owner, to push again later.
        assert_eq!(
            s.push(b, vec![hundred(), hundred(), hundred(), hundred()])
                .await,
            Ok(Pushed::OverBudget {
                taken: 2,
                limit: 8 * c
            })
        );
        assert_eq!(s.memory_used(), 8 * c);
        // A send waits for room (the client retries), an open is refused.
        assert_eq!(
            s.accept(a, Seq(1), vec![hundred()]).await,
            Ok(Accepted::OverBudget)
        );
        let third = SessionId::from_bytes([3; 16]);
        assert_eq!(
            s.create(third, record(1 << 20, 1 << 20)).await,
            Err(StoreError::OverBudget(8 * c))
        );
        // The owner handles b's two messages: their bytes come back.
        s.take_inbound(b, Seq(2), NOW).await.unwrap();
        assert_eq!(s.memory_used(), 6 * c);
        // Entries given to a reader are dropped from every session to make
        // room: a's four, read, leave its log at the next shortage.
        let r = s.begin_read(a, Seq(0)).await.unwrap();
        assert_eq!(
            seqs(&s.read(a, r.ticket, Seq(0), 1 << 20, NOW).await.unwrap()),
            [1, 2, 3, 4]
        );
        assert_eq!(
            s.push(b, vec![hundred(), hundred(), hundred()]).await,
            Ok(Pushed::Appended {
                last: Seq(5),
                room: true
            })
        );
        assert_eq!(s.memory_used(), 5 * c);
        // A resume of what was dropped ends with the window's close, never a gap.
        let again = s.begin_read(a, Seq(0)).await.unwrap();
        assert_eq!(
            s.read(a, again.ticket, Seq(0), 1 << 20, NOW).await.unwrap(),
            ReadOutcome::WindowExceeded
        );
        // A close always fits; a forgotten session gives back all it held.
        let close = || CloseFrame::new(CloseCode::TRY_AGAIN_LATER, "full");
        s.create(third, record(1 << 20, 1 << 20)).await.unwrap();
        s.push(third, vec![hundred(), hundred(), hundred()])
            .await
            .unwrap();
        assert_eq!(
            s.push(third, vec![Payload::Close(close())]).await,
            Ok(Pushed::Appended {
                last: Seq(4),
                room: true
            })
        );
        assert!(s.memory_used() > 8 * c);
        lock(&s.sessions).clear();
        assert_eq!(s.memory_used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_waiting_for_memory_is_woken_by_a_read_that_releases_it() {
        let hundred = || Payload::Binary(vec![0u8; 100].into());
        let c = 100 + ENTRY_COST;
        let s = Arc::new(MemoryStore::new(10, 2 * c));
        let (a, b) = (
            SessionId::from_bytes([1; 16]),
            SessionId::from_bytes([2; 16]),
        );
        s.create(a, record(1 << 20, 1 << 20)).await.unwrap();
        s.create(b, record(1 << 20, 1 << 20)).await.unwrap();
        let t0 = Instant::now();
        // Room: no wait.
        s.wait_memory(c, Duration::from_secs(60)).await.unwrap();
        s.push(a, vec![hundred()]).await.unwrap();
        assert_eq!(
            s.push(b, vec![hundred(), hundred()]).await,
            Ok(Pushed::OverBudget {
                taken: 1,
                limit: 2 * c
            })
        );
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait_memory(c, Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "no room yet");
        // While an owner waits, a read drops what it gives at once (no
        // replay window) and that release wakes the owner.
        let r = s.begin_read(a, Seq(0)).await.unwrap();
        let got = s.read(a, r.ticket, Seq(0), 1 << 20, NOW).await.unwrap();
        assert_eq!(seqs(&got), [1]);
        assert_eq!(s.memory_used(), c);
        waiter.await.unwrap().unwrap();
        assert_eq!(Instant::now(), t0, "woken by a timer, not by the release");
        assert_eq!(
            s.push(b, vec![hundred()]).await,
            Ok(Pushed::Appended {
                last: Seq(2),
                room: true
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_owner_learns_how_long_no_reader_came() {
        let s = store(1000, 1000).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let idle = s.take_inbound(ID, Seq(0), NOW).await.unwrap().idle;
        assert!(idle >= Duration::from_secs(5), "{idle:?}");
        let r = s.begin_read(ID, Seq(0)).await.unwrap();
        s.read(ID, r.ticket, Seq(0), 10, NOW).await.unwrap();
        let idle = s.take_inbound(ID, Seq(0), NOW).await.unwrap().idle;
        assert!(idle < Duration::from_secs(1), "{idle:?}");
    }
}

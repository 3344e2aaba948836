//! [`Relay`]: what the instances of a cluster say to each other about a
//! session, over its pub/sub channel. The owner's instance keeps the
//! session's state in memory, as one instance alone does: the client
//! queue ([`ClientQueue`]: the exactly-once rule, its bound, the close),
//! and the log's numbers and bytes (what was appended, given to a reader,
//! the replay window, the current reader). Redis holds the record, the
//! log itself (so that a reader on any instance resumes from it) and the
//! liveness stamps; the message path runs no script.
//!
//! * A client message (`send`, `close`) on another instance is published
//!   as a request; the owner's instance decides and publishes its answer.
//!   One `PUBLISH` each way.
//! * The owner appends the backend's messages to the log and publishes
//!   them in the same pipeline (`XADD` per message, one `PUBLISH`); every
//!   instance with a reader of the session keeps them in its [`Feed`], and
//!   its readers take them from there.
//! * A new reader (an event stream, each poll) asks the owner for its
//!   number; the answer, heard by every instance, tells older readers
//!   anywhere that they are replaced.
//! * A reader reports what it gave out now and then (half the window or
//!   every 500 ms), which frees room in the owner's replay window.
//!
//! Every instance hears every session's channel (one pattern
//! subscription) and its own node's channel. Entries and the answers to
//! a new reader go to the session's channel (every instance with a reader
//! of the session needs them); a request goes to the owner's node channel
//! (named in the session's record), an answer to the asking node's: only
//! the instance concerned hears it.
//!
//! The messages (binary, the first byte says which): `S` send (node,
//! request number, session channel, first number, payloads), `C` close
//! (node, request, channel, zero, the close as a payload), `B` begin
//! reading (node, request, channel, after), `D` delivered (node, zero,
//! channel, up to), `X` abort (node, request, channel, zero, the client's
//! and the backend's closes), `K` answer (node, request, a letter, a
//! number, a second number), `E` entries (number and payload each). A node
//! is 16 hex digits, unique to one run of one instance; a channel is its
//! length (`u16`) and its bytes; numbers are big-endian `u64`; a payload is
//! its kind (`t`, `b`, `c`), its close code (`u16`), its length (`u32`)
//! and its bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use redis::Value;
use switchyard::fallback::wire::{Entry, Payload, Seq};
use switchyard::{CloseCode, CloseFrame, Utf8Bytes};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::client_queue::ClientQueue;
use super::feed::{Feed, Feeds};
use super::store::{entry_cost, Aborted, Accepted, Pushed, ReadStart, ReaderTicket, StoreError};
use crate::sync::lock;

/// Longest a request waits for the owner's answer: past it the owner's
/// instance is taken for unreachable (the client retries; a dead owner's
/// session is ended by its readers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a new reader waits for the owner's answer before it reads
/// without it: an owner that does not answer has ended or died, and the
/// log says how the session ended (a close, or the owner lost once its
/// stamps are older than its limit, at least 3 s).
const BEGIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a reader on another instance reports what it gave out, at
/// most (or once it reaches half the window).
pub(super) const REPORT_EVERY: Duration = Duration::from_millis(500);

/// The keys and channel of a session owned here.
pub(super) struct OwnedKeys {
    pub(super) meta: String,
    pub(super) log: String,
    pub(super) channel: String,
}

/// The TTLs of a session's keys (ms): while it is open, once it ended.
#[derive(Clone, Copy)]
pub(super) struct Ttls {
    pub(super) live: u64,
    pub(super) ended: u64,
}

/// A session owned by this instance.
pub(super) struct Owned {
    keys: OwnedKeys,
    state: Mutex<OwnedState>,
    /// Client messages or a close were queued.
    pub(super) notify: Notify,
    /// A reader was given entries (room in the window), or the log ended.
    pub(super) room: Notify,
    max_body: usize,
    window: usize,
    ttls: Ttls,
    /// How long the queue answers after the owner ended (sends then get
    /// [`Accepted::Closed`] rather than no answer).
    linger: Duration,
}

struct OwnedState {
    queue: ClientQueue,
    /// The owner ended: nothing more is taken.
    ended_at: Option<Instant>,
    log: LogState,
}

/// The numbers of the log (its entries are in Redis).
#[derive(Default)]
struct LogState {
    last: Seq,
    /// The close entry's number.
    ended: Option<Seq>,
    /// Given to a reader up to here.
    delivered: Seq,
    /// The newest reader.
    reader: u64,
    /// The entries in Redis, with their cost (for the trim).
    kept: VecDeque<(Seq, usize, bool)>,
    logb: usize,
    /// The cost of the entries after `delivered`.
    unread: usize,
    /// Last reader activity seen here (a begin, a report).
    seen: Option<Instant>,
}

impl LogState {
    fn has_room(&self, window: usize) -> bool {
        self.ended.is_some() || self.unread < window
    }

    /// Given up to `upto` (a report, or a reader's start).
    fn deliver(&mut self, upto: Seq) {
        let upto = upto.min(self.last);
        if upto <= self.delivered {
            return;
        }
        for (seq, cost, _) in &self.kept {
            if *seq > self.delivered && *seq <= upto {
                self.unread = self.unread.saturating_sub(*cost);
            }
        }
        self.delivered = upto;
    }

    /// Once the log is an eighth over the window, drop delivered entries
    /// from the front down to the window (the close stays): the first
    /// number kept, when something is to be dropped.
    fn trim(&mut self, window: usize) -> Option<Seq> {
        if self.logb <= window + window / 8 {
            return None;
        }
        let mut dropped = false;
        while self.logb > window {
            match self.kept.front() {
                Some(&(seq, cost, false)) if seq <= self.delivered => {
                    self.kept.pop_front();
                    self.logb -= cost;
                    dropped = true;
                }
                _ => break,
            }
        }
        dropped.then(|| self.kept.front().map_or(self.last.next(), |k| k.0))
    }
}

impl Owned {
    /// Take client messages numbered from `first`.
    pub(super) fn accept(&self, first: Seq, mut payloads: Vec<Payload>) -> Accepted {
        let accepted = {
            let mut st = lock(&self.state);
            let ended = st.ended_at.is_some() || st.log.ended.is_some();
            st.queue
                .accept(first, &mut payloads, self.max_body, ended, |_| true)
        };
        self.notify.notify_waiters();
        accepted
    }

    /// Queue a close for the backend after the client's messages (unless
    /// one is queued or the session ended).
    pub(super) fn close(&self, frame: CloseFrame) -> Accepted {
        let acked = {
            let mut st = lock(&self.state);
            if st.ended_at.is_none() && st.log.ended.is_none() {
                st.queue.close(frame);
            }
            Accepted::Acked(st.queue.last())
        };
        self.notify.notify_waiters();
        acked
    }

    /// Drop what the owner handled (up to `after`) and give what follows.
    pub(super) fn take(&self, after: Seq) -> Vec<(Seq, Payload)> {
        let mut st = lock(&self.state);
        st.queue.drop_upto(after);
        st.queue.items()
    }

    /// The owner ended: later sends are refused.
    pub(super) fn end(&self) {
        lock(&self.state).ended_at.get_or_insert_with(Instant::now);
        self.notify.notify_waiters();
        self.room.notify_waiters();
    }

    /// The entries not yet given to a reader are below the window, or the
    /// log ended.
    pub(super) fn has_room(&self) -> bool {
        lock(&self.state).log.has_room(self.window)
    }

    /// How long since a reader's last activity seen here.
    pub(super) fn idle(&self) -> Option<Duration> {
        lock(&self.state).log.seen.map(|t| t.elapsed())
    }

    /// A new reader starting after `after`.
    fn begin(&self, after: Seq) -> ReadStart {
        let mut st = lock(&self.state);
        let log = &mut st.log;
        log.reader += 1;
        log.seen = Some(Instant::now());
        let replays = after < log.delivered;
        // The client has what it says it has: given out.
        log.deliver(after);
        ReadStart {
            ticket: ReaderTicket(log.reader),
            replays,
        }
    }

    fn last(&self) -> Seq {
        lock(&self.state).log.last
    }

    fn forgotten(&self, now: Instant) -> bool {
        lock(&self.state)
            .ended_at
            .is_some_and(|t| now.duration_since(t) >= self.linger)
    }
}

/// This instance's part: the sessions it owns, its feeds, its requests
/// waiting for another instance's answer.
pub(super) struct Relay {
    node: String,
    /// The node channels' names: this prefix and the node.
    node_prefix: String,
    /// By the session's channel.
    owned: Mutex<HashMap<String, Arc<Owned>>>,
    pub(super) feeds: Feeds,
    pending: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_request: AtomicU64,
    conn: ConnectionManager,
}

/// An answer: a letter, a number and a second number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    letter: u8,
    seq: Seq,
    extra: u64,
}

impl Relay {
    /// A relay publishing through `conn`, named `node` (unique to this run).
    pub(super) fn new(node: String, node_prefix: String, conn: ConnectionManager) -> Self {
        Relay {
            node,
            node_prefix,
            owned: Mutex::default(),
            feeds: Feeds::default(),
            pending: Mutex::default(),
            next_request: AtomicU64::new(1),
            conn,
        }
    }

    /// This instance owns the session with `keys` from now on; the queues
    /// of owners ended longer ago than their linger are forgotten.
    pub(super) fn own(
        &self,
        keys: OwnedKeys,
        max_body: usize,
        window: usize,
        ttls: Ttls,
        linger: Duration,
    ) -> Arc<Owned> {
        let channel = keys.channel.clone();
        let owned = Arc::new(Owned {
            keys,
            state: Mutex::new(OwnedState {
                queue: ClientQueue::default(),
                ended_at: None,
                log: LogState {
                    seen: Some(Instant::now()),
                    ..LogState::default()
                },
            }),
            notify: Notify::new(),
            room: Notify::new(),
            max_body,
            window,
            ttls,
            linger,
        });
        let mut map = lock(&self.owned);
        let now = Instant::now();
        map.retain(|_, o| !o.forgotten(now));
        map.insert(channel, owned.clone());
        owned
    }

    /// This instance's node name.
    pub(super) fn node(&self) -> &str {
        &self.node
    }

    /// The channel of `node`.
    pub(super) fn node_channel(&self, node: &str) -> String {
        format!("{}{node}", self.node_prefix)
    }

    /// The session on `channel`, when this instance owns it.
    pub(super) fn owned(&self, channel: &str) -> Option<Arc<Owned>> {
        lock(&self.owned).get(channel).cloned()
    }

    // ---- the owner's side

    /// Append the backend's messages to the log of a session owned here
    /// and publish them to the readers: one pipeline.
    pub(super) async fn push(
        &self,
        owned: &Owned,
        payloads: Vec<Payload>,
    ) -> Result<Pushed, StoreError> {
        let keys = &owned.keys;
        let (entries, first, trim, room) = {
            let mut st = lock(&owned.state);
            let log = &mut st.log;
            if log.ended.is_some() {
                return Ok(Pushed::Ended);
            }
            let first = log.last == Seq::ZERO;
            let mut entries = Vec::new();
            for p in payloads {
                log.last = log.last.next();
                let cost = entry_cost(&p);
                let close = matches!(p, Payload::Close(_));
                log.logb += cost;
                log.unread += cost;
                log.kept.push_back((log.last, cost, close));
                entries.push(Entry {
                    seq: log.last,
                    payload: p,
                });
                if close {
                    log.ended = Some(log.last);
                    break;
                }
            }
            let trim = log.trim(owned.window);
            let room = log.has_room(owned.window);
            (entries, first, trim, room)
        };
        let Some(last) = entries.last().map(|e| e.seq) else {
            return Ok(Pushed::Appended {
                last: owned.last(),
                room,
            });
        };
        let ended = entries
            .last()
            .is_some_and(|e| matches!(e.payload, Payload::Close(_)));
        let mut pipe = redis::pipe();
        for e in &entries {
            let x = pipe.cmd("XADD").arg(&keys.log);
            // Only the first push makes the log: a later one that finds
            // no log finds a server that lost the session.
            if !first {
                x.arg("NOMKSTREAM");
            }
            x.arg(format!("{}-1", e.seq.0));
            let (k, d, code) = fields(&e.payload);
            x.arg("k")
                .arg(k)
                .arg("n")
                .arg(entry_cost(&e.payload))
                .arg("d")
                .arg(d);
            if let Some(c) = code {
                x.arg("c").arg(c);
            }
        }
        if first || ended {
            let ttl = if ended {
                owned.ttls.ended
            } else {
                owned.ttls.live
            };
            pipe.cmd("PEXPIRE").arg(&keys.log).arg(ttl).ignore();
        }
        if ended {
            pipe.cmd("HSET")
                .arg(&keys.meta)
                .arg("ended")
                .arg(last.0)
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(&keys.meta)
                .arg(owned.ttls.ended)
                .ignore();
        }
        if let Some(first_kept) = trim {
            pipe.cmd("XTRIM")
                .arg(&keys.log)
                .arg("MINID")
                .arg(format!("{}-1", first_kept.0))
                .ignore();
        }
        pipe.cmd("PUBLISH")
            .arg(&keys.channel)
            .arg(entries_message(&entries))
            .ignore();
        if let Some(feed) = self.feeds.get(&keys.channel) {
            if let Some(first_kept) = trim {
                feed.trim(first_kept);
            }
            feed.offer(entries.clone());
        }
        if ended {
            owned.room.notify_waiters();
        }
        let mut conn = self.conn.clone();
        let ids: Vec<Value> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        if ids.iter().any(|v| matches!(v, Value::Nil)) {
            return Err(StoreError::Unknown);
        }
        Ok(Pushed::Appended { last, room })
    }

    /// A reader gave out entries up to `upto`: room in the window, and the
    /// log trimmed when due.
    async fn delivered_here(&self, owned: &Owned, upto: Seq) -> Result<(), StoreError> {
        let trim = {
            let mut st = lock(&owned.state);
            st.log.seen = Some(Instant::now());
            st.log.deliver(upto);
            st.log.trim(owned.window)
        };
        owned.room.notify_waiters();
        if let Some(first_kept) = trim {
            if let Some(feed) = self.feeds.get(&owned.keys.channel) {
                feed.trim(first_kept);
            }
            let mut conn = self.conn.clone();
            redis::cmd("XTRIM")
                .arg(&owned.keys.log)
                .arg("MINID")
                .arg(format!("{}-1", first_kept.0))
                .query_async::<()>(&mut conn)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// End the log of a session owned here with `to_client` (unless it
    /// ended) and queue `to_backend` for the backend.
    async fn abort_here(
        &self,
        owned: &Owned,
        to_client: CloseFrame,
        to_backend: CloseFrame,
    ) -> Result<Aborted, StoreError> {
        owned.close(to_backend);
        let pushed = self.push(owned, vec![Payload::Close(to_client)]).await?;
        let ended = lock(&owned.state).log.ended.unwrap_or(Seq::ZERO);
        Ok(Aborted {
            seq: ended,
            now: matches!(pushed, Pushed::Appended { .. }),
        })
    }

    // ---- any instance

    /// Take the client's messages numbered from `first`.
    pub(super) async fn send(
        &self,
        channel: &str,
        owner: Option<&str>,
        first: Seq,
        payloads: Vec<Payload>,
    ) -> Result<Accepted, StoreError> {
        if let Some(owned) = self.owned(channel) {
            return Ok(owned.accept(first, payloads));
        }
        let a = self
            .ask(channel, owner, b'S', first.0, &payloads, ANSWER_TIMEOUT)
            .await
            .map_err(or_unanswered(ANSWER_TIMEOUT))?;
        accepted(a.letter, a.seq).ok_or_else(|| malformed("send"))
    }

    /// Queue the client's close.
    pub(super) async fn close(
        &self,
        channel: &str,
        owner: Option<&str>,
        frame: CloseFrame,
    ) -> Result<Accepted, StoreError> {
        if let Some(owned) = self.owned(channel) {
            return Ok(owned.close(frame));
        }
        let a = self
            .ask(
                channel,
                owner,
                b'C',
                0,
                &[Payload::Close(frame)],
                ANSWER_TIMEOUT,
            )
            .await
            .map_err(or_unanswered(ANSWER_TIMEOUT))?;
        accepted(a.letter, a.seq).ok_or_else(|| malformed("close"))
    }

    /// Become the session's reader, starting after `after`: the owner's
    /// answer is heard by every instance, so older readers anywhere learn
    /// that they are replaced.
    pub(super) async fn begin_read(
        &self,
        channel: &str,
        owner: Option<&str>,
        after: Seq,
        window: usize,
    ) -> Result<ReadStart, StoreError> {
        let feed = self.feeds.feed(channel, window);
        if let Some(owned) = self.owned(channel) {
            let start = owned.begin(after);
            feed.set_reader(start.ticket.0);
            let m = answer_message("", 0, reader_answer(start, owned.last()));
            self.publish(channel, m).await?;
            return Ok(start);
        }
        let start = match self
            .ask(channel, owner, b'B', after.0, &[], BEGIN_TIMEOUT)
            .await
        {
            Ok(a) if matches!(a.letter, b'R' | b'r') => ReadStart {
                ticket: ReaderTicket(a.extra),
                replays: a.letter == b'R',
            },
            Ok(_) => return Err(malformed("begin")),
            Err(None) => {
                tracing::debug!(channel, "a reader starts without the session's owner");
                ReadStart {
                    ticket: ReaderTicket(feed.reader()),
                    replays: false,
                }
            }
            Err(Some(e)) => return Err(e),
        };
        feed.set_reader(start.ticket.0);
        Ok(start)
    }

    /// A reader here gave out entries up to `upto` costing `cost`: tell the
    /// owner (at once on its own instance, in batches from elsewhere).
    pub(super) async fn delivered(
        &self,
        channel: &str,
        owner: Option<&str>,
        feed: &Feed,
        upto: Seq,
        cost: usize,
    ) -> Result<(), StoreError> {
        if let Some(owned) = self.owned(channel) {
            return self.delivered_here(&owned, upto).await;
        }
        match feed.delivered(upto, cost, REPORT_EVERY) {
            Some(upto) => self.report(channel, owner, upto).await,
            None => Ok(()),
        }
    }

    /// Report what a reader here gave out, once it is overdue.
    pub(super) async fn report_overdue(
        &self,
        channel: &str,
        owner: Option<&str>,
        feed: &Feed,
    ) -> Result<(), StoreError> {
        match feed.overdue(REPORT_EVERY) {
            Some(upto) => self.report(channel, owner, upto).await,
            None => Ok(()),
        }
    }

    async fn report(
        &self,
        channel: &str,
        owner: Option<&str>,
        upto: Seq,
    ) -> Result<(), StoreError> {
        let mut m = head(b'D', &self.node, 0);
        put_channel(&mut m, channel);
        m.extend_from_slice(&upto.0.to_be_bytes());
        self.publish(&self.target(channel, owner), m).await
    }

    /// Where a request for the session on `channel` goes: its owner's node
    /// channel, or (the owner unknown) the session's.
    fn target(&self, channel: &str, owner: Option<&str>) -> String {
        owner.map_or_else(|| channel.to_owned(), |o| self.node_channel(o))
    }

    /// End the session from the request side (see `SessionStore::abort`).
    pub(super) async fn abort(
        &self,
        channel: &str,
        owner: Option<&str>,
        to_client: CloseFrame,
        to_backend: CloseFrame,
    ) -> Result<Aborted, StoreError> {
        if let Some(owned) = self.owned(channel) {
            return self.abort_here(&owned, to_client, to_backend).await;
        }
        let closes = [Payload::Close(to_client), Payload::Close(to_backend)];
        let a = self
            .ask(channel, owner, b'X', 0, &closes, ANSWER_TIMEOUT)
            .await
            .map_err(or_unanswered(ANSWER_TIMEOUT))?;
        Ok(Aborted {
            seq: a.seq,
            now: a.letter == b'N',
        })
    }

    async fn publish(&self, channel: &str, m: Vec<u8>) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(m)
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn ask(
        &self,
        channel: &str,
        owner: Option<&str>,
        kind: u8,
        number: u64,
        payloads: &[Payload],
        timeout: Duration,
    ) -> Result<Answer, Option<StoreError>> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut m = head(kind, &self.node, request);
        put_channel(&mut m, channel);
        m.extend_from_slice(&number.to_be_bytes());
        for p in payloads {
            put_payload(&mut m, p);
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(request, tx);
        let answer = async {
            let to = self.target(channel, owner);
            self.publish(&to, m).await.map_err(Some)?;
            tokio::time::timeout(timeout, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or(None)
        };
        let answer = answer.await;
        lock(&self.pending).remove(&request);
        answer
    }

    /// Every feed forgets what it holds (the subscription was lost, so
    /// were the notifications meanwhile).
    pub(super) fn resubscribed(&self) {
        self.feeds.clear_all();
        let owned: Vec<_> = lock(&self.owned).values().cloned().collect();
        for o in owned {
            o.notify.notify_waiters();
            o.room.notify_waiters();
        }
    }

    /// A message on a session's channel.
    pub(super) fn on_message(self: &Arc<Self>, channel: &str, message: &[u8]) {
        if self.handle(channel, message).is_none() {
            tracing::debug!(channel, "malformed message on a session channel dropped");
        }
    }

    fn handle(self: &Arc<Self>, channel: &str, message: &[u8]) -> Option<()> {
        let (&kind, rest) = message.split_first()?;
        let mut r = Reader(rest);
        if kind == b'E' {
            if let Some(feed) = self.feeds.get(channel) {
                let mut entries = Vec::new();
                while !r.0.is_empty() {
                    entries.push(Entry {
                        seq: Seq(r.u64()?),
                        payload: r.payload()?,
                    });
                }
                feed.offer(entries);
            }
            return Some(());
        }
        let node = r.take_str()?.to_owned();
        let request = r.u64()?;
        if kind == b'K' {
            let a = Answer {
                letter: r.u8()?,
                seq: Seq(r.u64()?),
                extra: r.u64()?,
            };
            // A new reader: every instance learns it.
            if matches!(a.letter, b'R' | b'r') {
                if let Some(feed) = self.feeds.get(channel) {
                    feed.set_reader(a.extra);
                }
            }
            if node == self.node {
                if let Some(tx) = lock(&self.pending).remove(&request) {
                    let _ = tx.send(a);
                }
            }
            return Some(());
        }
        let channel = r.take_channel()?;
        let Some(owned) = self.owned(channel) else {
            return Some(());
        };
        let number = Seq(r.u64()?);
        let mut payloads = Vec::new();
        while !r.0.is_empty() {
            payloads.push(r.payload()?);
        }
        let answer = match kind {
            b'S' => answer_of(owned.accept(number, payloads)),
            b'C' => match payloads.pop() {
                Some(Payload::Close(f)) if payloads.is_empty() => answer_of(owned.close(f)),
                _ => return None,
            },
            b'B' => {
                // On the session's channel: older readers anywhere learn it.
                let m = answer_message(
                    &node,
                    request,
                    reader_answer(owned.begin(number), owned.last()),
                );
                let relay = self.clone();
                let channel = channel.to_owned();
                tokio::spawn(async move {
                    if let Err(e) = relay.publish(&channel, m).await {
                        tracing::debug!(error = %e, "cannot answer a new reader (it retries)");
                    }
                });
                return Some(());
            }
            b'D' => {
                let relay = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay.delivered_here(&owned, number).await {
                        tracing::debug!(error = %e, "cannot trim a session's log");
                    }
                });
                return Some(());
            }
            b'X' => {
                let (Some(Payload::Close(to_backend)), Some(Payload::Close(to_client)), true) =
                    (payloads.pop(), payloads.pop(), payloads.is_empty())
                else {
                    return None;
                };
                let relay = self.clone();
                tokio::spawn(async move {
                    let a = match relay.abort_here(&owned, to_client, to_backend).await {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot end an aborted session's log");
                            return;
                        }
                    };
                    let letter = if a.now { b'N' } else { b'P' };
                    let answer = Answer {
                        letter,
                        seq: a.seq,
                        extra: 0,
                    };
                    relay.answer(&node, request, answer).await;
                });
                return Some(());
            }
            _ => return None,
        };
        let relay = self.clone();
        tokio::spawn(async move { relay.answer(&node, request, answer).await });
        Some(())
    }

    /// Answer `node`'s request on its channel.
    async fn answer(&self, node: &str, request: u64, a: Answer) {
        let to = self.node_channel(node);
        if let Err(e) = self.publish(&to, answer_message(node, request, a)).await {
            tracing::debug!(error = %e, "cannot answer another instance (it retries)");
        }
    }
}

/// The error of a request that failed (`Some`) or went unanswered for
/// `timeout` (`None`).
fn or_unanswered(timeout: Duration) -> impl Fn(Option<StoreError>) -> StoreError {
    move |e| {
        e.unwrap_or_else(|| {
            StoreError::Unavailable(format!(
                "the instance owning the session did not answer within {}s (it may have \
                 stopped); the client retries",
                timeout.as_secs()
            ))
        })
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected answer from another instance: {what}"))
}

/// A payload's log fields: kind, data, close code.
pub(super) fn fields(p: &Payload) -> (&'static str, &[u8], Option<u16>) {
    match p {
        Payload::Text(t) => ("t", t.as_bytes(), None),
        Payload::Binary(b) => ("b", b, None),
        Payload::Close(f) => ("c", f.reason.as_bytes(), Some(f.code.0)),
    }
}

fn reader_answer(start: ReadStart, last: Seq) -> Answer {
    Answer {
        letter: if start.replays { b'R' } else { b'r' },
        seq: last,
        extra: start.ticket.0,
    }
}

fn answer_message(node: &str, request: u64, a: Answer) -> Vec<u8> {
    let mut m = head(b'K', node, request);
    m.push(a.letter);
    m.extend_from_slice(&a.seq.0.to_be_bytes());
    m.extend_from_slice(&a.extra.to_be_bytes());
    m
}

fn entries_message(entries: &[Entry]) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(16 + entries.iter().map(|e| e.payload.len() + 15).sum::<usize>());
    m.push(b'E');
    for e in entries {
        m.extend_from_slice(&e.seq.0.to_be_bytes());
        put_payload(&mut m, &e.payload);
    }
    m
}

/// A node name: 16 hex digits from the system's CSPRNG.
pub(super) fn fresh_node() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // Without randomness two instances could share a name: then the time
    // and the process id keep them apart.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id()) << 40).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn head(kind: u8, node: &str, request: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.push(kind);
    // Node names are 16 bytes: the length fits.
    m.push(u8::try_from(node.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(&node.as_bytes()[..node.len().min(255)]);
    m.extend_from_slice(&request.to_be_bytes());
    m
}

fn put_channel(m: &mut Vec<u8>, channel: &str) {
    // Key prefixes are short: a channel name fits.
    let b = &channel.as_bytes()[..channel.len().min(usize::from(u16::MAX))];
    m.extend_from_slice(&u16::try_from(b.len()).unwrap_or(u16::MAX).to_be_bytes());
    m.extend_from_slice(b);
}

fn put_payload(m: &mut Vec<u8>, p: &Payload) {
    let (kind, code, data): (u8, u16, &[u8]) = match p {
        Payload::Text(t) => (b't', 0, t.as_bytes()),
        Payload::Binary(b) => (b'b', 0, b),
        Payload::Close(f) => (b'c', f.code.0, f.reason.as_bytes()),
    };
    m.push(kind);
    m.extend_from_slice(&code.to_be_bytes());
    // A payload is bounded by the route's max_body, far below 4 GiB.
    m.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    m.extend_from_slice(data);
}

fn answer_of(a: Accepted) -> Answer {
    let (letter, seq) = match a {
        Accepted::Acked(s) => (b'K', s),
        Accepted::Gap { expected } => (b'G', expected),
        Accepted::Full => (b'F', Seq::ZERO),
        Accepted::OverBudget => (b'O', Seq::ZERO),
        Accepted::Closed => (b'C', Seq::ZERO),
    };
    Answer {
        letter,
        seq,
        extra: 0,
    }
}

fn accepted(letter: u8, seq: Seq) -> Option<Accepted> {
    Some(match letter {
        b'K' => Accepted::Acked(seq),
        b'G' => Accepted::Gap { expected: seq },
        b'F' => Accepted::Full,
        b'O' => Accepted::OverBudget,
        b'C' => Accepted::Closed,
        _ => return None,
    })
}

/// Reads a relay message; `None` when it is cut short or malformed.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn take_channel(&mut self) -> Option<&'a str> {
        let n = usize::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?));
        std::str::from_utf8(self.take(n)?).ok()
    }

    fn take_str(&mut self) -> Option<&'a str> {
        let n = usize::from(self.u8()?);
        std::str::from_utf8(self.take(n)?).ok()
    }

    fn payload(&mut self) -> Option<Payload> {
        let kind = self.u8()?;
        let code = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        let n = usize::try_from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)).ok()?;
        let data = self.take(n)?;
        Some(match kind {
            b't' => Payload::Text(Utf8Bytes::try_from_bytes(Bytes::copy_from_slice(data))?),
            b'b' => Payload::Binary(Bytes::copy_from_slice(data)),
            b'c' => Payload::Close(CloseFrame::new(
                CloseCode(code),
                std::str::from_utf8(data).ok()?.to_owned(),
            )),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_and_answers_round_trip() {
        let ps = [
            Payload::Text("héllo".into()),
            Payload::Binary(Bytes::from_static(&[0, 1, 255])),
            Payload::Close(CloseFrame::new(CloseCode::NORMAL, "bye")),
        ];
        let mut m = Vec::new();
        for p in &ps {
            put_payload(&mut m, p);
        }
        let mut r = Reader(&m);
        for p in &ps {
            assert_eq!(r.payload().as_ref(), Some(p));
        }
        assert!(r.0.is_empty());
        for a in [
            Accepted::Acked(Seq(7)),
            Accepted::Gap { expected: Seq(3) },
            Accepted::Full,
            Accepted::OverBudget,
            Accepted::Closed,
        ] {
            let x = answer_of(a);
            assert_eq!(accepted(x.letter, x.seq), Some(a));
        }
    }

    #[test]
    fn a_cut_or_unknown_payload_is_refused_not_a_panic() {
        let mut m = Vec::new();
        put_payload(&mut m, &Payload::Text("abc".into()));
        for n in 0..m.len() {
            assert!(Reader(&m[..n]).payload().is_none(), "cut at {n}");
        }
        m[0] = b'x';
        assert!(Reader(&m).payload().is_none());
        // Text that is not UTF-8.
        let bad = [b't', 0, 0, 0, 0, 0, 1, 0xff];
        assert!(Reader(&bad).payload().is_none());
    }
}

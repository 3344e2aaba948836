//! [`Relay`]: how a client's messages reach the owner of a session in a
//! cluster. The owner's instance keeps the session's [`ClientQueue`] (its
//! exactly-once rule, its bound, its close) in memory, as one instance
//! alone does; an instance that serves a `send` or `close` of a session
//! owned elsewhere publishes the request on the session's channel, and the
//! owner's instance publishes its answer there. One `PUBLISH` each way, no
//! stream, no script: the owner holds what it has not handed to the backend
//! yet, and the session ends with its owner anyway.
//!
//! Every instance hears every session's channel (one pattern
//! subscription): a request is handled by the instance that owns the
//! session, an answer by the instance whose request it answers (named in
//! both), everyone else drops them.
//!
//! The messages (binary, the first byte says which):
//!
//! * `S` send: node, request number, first number, the payloads;
//! * `C` close: node, request number, the close frame (as one payload);
//! * `K` answer: node, request number, the [`Accepted`] (a letter and a
//!   number).
//!
//! A node is 16 hex digits, unique to one run of one instance; numbers are
//! big-endian `u64`; a payload is its kind (`t`, `b`, `c`), its close code
//! (`u16`), its length (`u32`) and its bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use switchyard::fallback::wire::{Payload, Seq};
use switchyard::{CloseCode, CloseFrame, Utf8Bytes};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::client_queue::ClientQueue;
use super::store::{Accepted, StoreError};
use crate::sync::lock;

/// Longest a request waits for the owner's answer: past it the owner's
/// instance is taken for unreachable (the client retries; a dead owner's
/// session is ended by its readers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The client side of a session owned by this instance.
pub(super) struct Owned {
    state: Mutex<OwnedState>,
    /// Client messages or a close were queued.
    pub(super) notify: Notify,
    max_body: usize,
    /// How long the queue answers after the owner ended (sends then get
    /// [`Accepted::Closed`] rather than no answer).
    linger: Duration,
}

struct OwnedState {
    queue: ClientQueue,
    /// The owner ended (or the log did): nothing more is taken.
    ended: Option<Instant>,
}

impl Owned {
    /// Take client messages numbered from `first`.
    pub(super) fn accept(&self, first: Seq, mut payloads: Vec<Payload>) -> Accepted {
        let accepted = {
            let mut st = lock(&self.state);
            let ended = st.ended.is_some();
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
            if st.ended.is_none() {
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

    /// The log ended or the owner did: later sends are refused.
    pub(super) fn end(&self) {
        lock(&self.state).ended.get_or_insert_with(Instant::now);
        self.notify.notify_waiters();
    }

    fn forgotten(&self, now: Instant) -> bool {
        lock(&self.state)
            .ended
            .is_some_and(|t| now.duration_since(t) >= self.linger)
    }
}

/// This instance's part in relaying client messages: the queues of the
/// sessions it owns, its requests waiting for another instance's answer.
pub(super) struct Relay {
    node: String,
    /// By the session's channel.
    owned: Mutex<HashMap<String, Arc<Owned>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Accepted>>>,
    next_request: AtomicU64,
    conn: ConnectionManager,
}

impl Relay {
    /// A relay publishing through `conn`, named `node` (unique to this run).
    pub(super) fn new(node: String, conn: ConnectionManager) -> Self {
        Relay {
            node,
            owned: Mutex::default(),
            pending: Mutex::default(),
            next_request: AtomicU64::new(1),
            conn,
        }
    }

    /// This instance owns the session on `channel` from now on; the queues
    /// of owners ended longer ago than their linger are forgotten.
    pub(super) fn own(&self, channel: &str, max_body: usize, linger: Duration) -> Arc<Owned> {
        let owned = Arc::new(Owned {
            state: Mutex::new(OwnedState {
                queue: ClientQueue::default(),
                ended: None,
            }),
            notify: Notify::new(),
            max_body,
            linger,
        });
        let mut map = lock(&self.owned);
        let now = Instant::now();
        map.retain(|_, o| !o.forgotten(now));
        map.insert(channel.to_owned(), owned.clone());
        owned
    }

    /// The session on `channel`, when this instance owns it.
    pub(super) fn owned(&self, channel: &str) -> Option<Arc<Owned>> {
        lock(&self.owned).get(channel).cloned()
    }

    /// Send the client's messages to the owner's instance and wait for its
    /// answer.
    pub(super) async fn send(
        &self,
        channel: &str,
        first: Seq,
        payloads: &[Payload],
    ) -> Result<Accepted, StoreError> {
        self.ask(channel, b'S', first, payloads).await
    }

    /// Send the client's close to the owner's instance.
    pub(super) async fn close(
        &self,
        channel: &str,
        frame: CloseFrame,
    ) -> Result<Accepted, StoreError> {
        self.ask(channel, b'C', Seq::ZERO, &[Payload::Close(frame)])
            .await
    }

    async fn ask(
        &self,
        channel: &str,
        kind: u8,
        first: Seq,
        payloads: &[Payload],
    ) -> Result<Accepted, StoreError> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut m = head(kind, &self.node, request);
        m.extend_from_slice(&first.0.to_be_bytes());
        for p in payloads {
            put_payload(&mut m, p);
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(request, tx);
        let answer = async {
            let mut conn = self.conn.clone();
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(m)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            tokio::time::timeout(ANSWER_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .ok_or_else(|| {
                    StoreError::Unavailable(format!(
                        "the instance owning the session did not answer within {}s \
                         (it may have stopped); the client retries",
                        ANSWER_TIMEOUT.as_secs()
                    ))
                })
        };
        let answer = answer.await;
        lock(&self.pending).remove(&request);
        answer
    }

    /// A message on a session's channel: `true` when it was the relay's
    /// (a request, which this instance answers if it owns the session, or
    /// an answer, which it takes if it asked).
    pub(super) fn on_message(&self, channel: &str, message: &[u8]) -> bool {
        let Some(&kind) = message.first() else {
            return false;
        };
        match kind {
            b'S' | b'C' | b'K' => {
                if self.handle(channel, kind, message).is_none() {
                    tracing::debug!(
                        channel,
                        "malformed relay message on a session channel dropped"
                    );
                }
                true
            }
            _ => false,
        }
    }

    fn handle(&self, channel: &str, kind: u8, message: &[u8]) -> Option<()> {
        let mut r = Reader(&message[1..]);
        let node = r.take_str()?;
        let request = r.u64()?;
        if kind == b'K' {
            if node == self.node {
                let answer = accepted(r.u8()?, Seq(r.u64()?))?;
                if let Some(tx) = lock(&self.pending).remove(&request) {
                    let _ = tx.send(answer);
                }
            }
            return Some(());
        }
        let Some(owned) = self.owned(channel) else {
            return Some(());
        };
        let first = Seq(r.u64()?);
        let mut payloads = Vec::new();
        while !r.0.is_empty() {
            payloads.push(r.payload()?);
        }
        let answer = match (kind, payloads.pop()) {
            (b'C', Some(Payload::Close(frame))) if payloads.is_empty() => owned.close(frame),
            (b'S', last) => {
                payloads.extend(last);
                owned.accept(first, payloads)
            }
            _ => return None,
        };
        let mut m = head(b'K', node, request);
        let (letter, seq) = answer_parts(answer);
        m.push(letter);
        m.extend_from_slice(&seq.0.to_be_bytes());
        let mut conn = self.conn.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            if let Err(e) = redis::cmd("PUBLISH")
                .arg(channel)
                .arg(m)
                .query_async::<()>(&mut conn)
                .await
            {
                tracing::debug!(error = %e, "cannot answer a relayed client message (the client retries)");
            }
        });
        Some(())
    }
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

fn answer_parts(a: Accepted) -> (u8, Seq) {
    match a {
        Accepted::Acked(s) => (b'K', s),
        Accepted::Gap { expected } => (b'G', expected),
        Accepted::Full => (b'F', Seq::ZERO),
        Accepted::OverBudget => (b'O', Seq::ZERO),
        Accepted::Closed => (b'C', Seq::ZERO),
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

/// The backend's close of an abort's notification (`A<code> <reason>`).
pub(super) fn abort_frame(message: &[u8]) -> Option<CloseFrame> {
    let rest = std::str::from_utf8(message.strip_prefix(b"A")?).ok()?;
    let (code, reason) = rest.split_once(' ')?;
    Some(CloseFrame::new(CloseCode(code.parse().ok()?), reason))
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
            let (l, s) = answer_parts(a);
            assert_eq!(accepted(l, s), Some(a));
        }
        assert_eq!(
            abort_frame(b"A1011 session aborted"),
            Some(CloseFrame::new(CloseCode(1011), "session aborted"))
        );
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
        assert_eq!(abort_frame(b"A10x1 r"), None);
    }
}

//! The whole shared state of the fallback sessions, behind one interface.
//!
//! Two sides talk only through it:
//!
//! * the **owner** (the task holding the backend WebSocket, on the instance
//!   that opened the session) appends the backend's messages to the
//!   session's log ([`SessionStore::push`]), waits for room in the replay
//!   window ([`SessionStore::wait_room`]) or the memory budget
//!   ([`SessionStore::wait_memory`]), and takes the client's messages
//!   in order ([`SessionStore::take_inbound`]);
//! * the **request side** (serving `sse`, `poll`, `send`, `close` on any
//!   instance) checks the record ([`SessionStore::record`]), reads the log
//!   as the single reader ([`SessionStore::begin_read`],
//!   [`SessionStore::read`]), and appends client messages with their
//!   sequence numbers ([`SessionStore::accept`]).
//!
//! Every method returns a boxed future so that the store can be chosen at
//! run time (in memory on one instance, shared by several) and every call
//! may be a network round trip. Waiting methods take a `wait` bound and
//! return when something happened or the bound passed, like a blocking
//! stream read: a store shared through a server implements them with its
//! blocking reads and notifications.
//!
//! The rules the implementations keep:
//!
//! * **Log.** Entries are numbered from 1 in push order. A `Close` entry
//!   ends the log: later pushes are refused ([`Pushed::Ended`]).
//! * **Replay window.** Entries a reader has been given (up to `delivered`)
//!   are dropped from the front while the log holds more than
//!   `replay_bytes`; entries not yet given are never dropped. The owner
//!   waits for room while the entries not yet given reach `replay_bytes`.
//! * **Single reader.** [`SessionStore::begin_read`] makes the caller the
//!   reader; the previous reader's calls answer [`ReadOutcome::Replaced`].
//! * **Exactly once.** Client messages carry the client's numbers;
//!   [`SessionStore::accept`] takes each number once, in order, and
//!   answers a repeat with the same acknowledgement.
//! * **Idle.** Every reader call is activity; the owner learns how long the
//!   session has been without it.
//! * **Lifetime.** An ended session stays readable (its close entry) for
//!   its idle timeout, then it is forgotten.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use switchyard::fallback::wire::{Entry, Payload, Seq, SessionId, Token, Transport};
use switchyard::CloseFrame;

use super::settings::FallbackSettings;

/// What one entry costs besides its payload in the byte bounds (replay
/// window, queue for the backend): an empty message still takes room, so
/// the byte bounds also bound the number of entries.
pub const ENTRY_COST: usize = 64;

/// What `payload` costs in the byte bounds: its bytes and [`ENTRY_COST`].
pub fn entry_cost(payload: &Payload) -> usize {
    payload.len() + ENTRY_COST
}

/// What every store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store holds its maximum of sessions.
    #[error("the session store holds its maximum of {0} sessions; try again later")]
    Full(usize),
    /// The sessions' buffers fill the store's memory budget.
    #[error(
        "the fallback sessions' buffers fill the gateway's budget of {0} bytes \
         ([fallback] memory); try again later"
    )]
    OverBudget(usize),
    /// No such session (never opened, or forgotten after it ended).
    #[error("no such session")]
    Unknown,
    /// The store itself failed (a shared store's server unreachable).
    #[error("the session store failed: {0}")]
    Unavailable(String),
}

/// SHA-256 of a session token: the store never holds the token itself, so
/// reading the store does not give access to the sessions.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &Token) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        TokenDigest(out)
    }

    /// A digest kept elsewhere (a shared store's copy).
    pub fn from_bytes(b: [u8; 32]) -> Self {
        TokenDigest(b)
    }

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `token` is the session's (in time independent of where the
    /// bytes differ).
    pub fn matches(&self, token: &Token) -> bool {
        let other = TokenDigest::of(token);
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(..)")
    }
}

/// What a session is, fixed at its open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The route label it was opened on (requests on another route do not
    /// find it).
    pub route: String,
    /// Its token's digest.
    pub token: TokenDigest,
    /// The subprotocol the backend chose.
    pub subprotocol: Option<String>,
    /// The settings it was opened with.
    pub settings: FallbackSettings,
    /// Opened by a bare `EventSource` (`sw=sse` without a session): its
    /// event ids carry the session.
    pub receive_only: bool,
    /// The transport the client announced (a metrics label).
    pub transport: Option<Transport>,
}

/// The answer to [`SessionStore::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Appended.
    Appended {
        /// The number of the last entry.
        last: Seq,
        /// The entries not yet given to a reader are below the replay
        /// window (or the log ended): the owner may read the backend on
        /// without asking [`SessionStore::wait_room`].
        room: bool,
    },
    /// The log had already ended (the request side aborted the session):
    /// nothing was appended, the owner stops.
    Ended,
    /// The store's memory budget (`limit` bytes) cannot take the rest of
    /// the messages now: the first `taken` were appended, the others were
    /// not. The owner holds them, reads nothing more from the backend, and
    /// pushes them again once [`SessionStore::wait_memory`] returns
    /// (backpressure, as for the replay window).
    OverBudget {
        /// How many of the messages were appended.
        taken: usize,
        /// The budget.
        limit: usize,
    },
}

/// A reader's claim, from [`SessionStore::begin_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderTicket(pub u64);

/// The answer to [`SessionStore::begin_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadStart {
    /// The claim to pass to [`SessionStore::read`].
    pub ticket: ReaderTicket,
    /// The reader starts before what earlier readers were given (a resume
    /// that replays messages).
    pub replays: bool,
}

/// The answer to [`SessionStore::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The entries after `after` (in order, at least one unless the wait
    /// passed). The last may be the session's close.
    Entries(Vec<Entry>),
    /// A newer reader took over: end this one.
    Replaced,
    /// Entries after `after` have left the replay window: the session
    /// cannot be resumed without a gap. It is to be ended with
    /// [`SessionStore::abort`].
    WindowExceeded,
    /// `after` is beyond the last entry (the client claims messages that
    /// were never sent).
    Ahead {
        /// The last entry.
        last: Seq,
    },
}

/// The answer to [`SessionStore::accept`] and [`SessionStore::request_close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Every client message up to this number is accepted (a repeat is
    /// acknowledged again and not taken twice).
    Acked(Seq),
    /// The first message's number is past the next expected one.
    Gap {
        /// The number expected next.
        expected: Seq,
    },
    /// The messages for the backend already fill the queue; retry later.
    Full,
    /// The store's memory budget cannot take the messages; retry later.
    OverBudget,
    /// The session is closing or ended: nothing more is taken.
    Closed,
}

/// The answer to [`SessionStore::abort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted {
    /// The number of the log's close entry.
    pub seq: Seq,
    /// This call ended the log (else it had ended before).
    pub now: bool,
}

/// The answer to [`SessionStore::take_inbound`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// Client messages after the owner's cursor, in order, with their
    /// numbers. A `Close` item asks the owner to close the backend with it
    /// (the client's close, or an abort's).
    pub items: Vec<(Seq, Payload)>,
    /// How long the session has been without reader activity. A shared
    /// store may measure it on some calls only (at least once a second
    /// while the owner waits) and answer zero on the others.
    pub idle: Duration,
}

/// The shared state of the fallback sessions (see the module docs for the
/// rules every implementation keeps).
pub trait SessionStore: Send + Sync + 'static {
    /// Create a session. [`StoreError::Full`] when the store holds its
    /// maximum.
    fn create(&self, id: SessionId, record: SessionRecord) -> StoreFuture<'_, ()>;

    /// The session's record; `None` when there is no such session.
    fn record(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>>;

    // ---- owner side

    /// Append the backend's messages (a `Close` last ends the log; a close
    /// always fits).
    fn push(&self, id: SessionId, payloads: Vec<Payload>) -> StoreFuture<'_, Pushed>;

    /// Wait up to `wait` until the entries not yet given to a reader are
    /// below the replay window (or the log ended). `true`: there is room.
    fn wait_room(&self, id: SessionId, wait: Duration) -> StoreFuture<'_, bool>;

    /// After a push answered [`Pushed::OverBudget`]: wait up to `wait`
    /// until the memory budget may take `need` more bytes (what the first
    /// held message costs, [`entry_cost`]), then push again. A store whose
    /// pushes never answer `OverBudget` keeps this default, which only
    /// waits.
    fn wait_memory(&self, need: usize, wait: Duration) -> StoreFuture<'_, ()> {
        let _ = need;
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            Ok(())
        })
    }

    /// The client's messages after `after` (the owner's cursor: every item
    /// up to it has been handled and may be dropped), waiting up to `wait`
    /// for some.
    fn take_inbound(&self, id: SessionId, after: Seq, wait: Duration) -> StoreFuture<'_, Inbound>;

    // ---- request side

    /// Become the session's reader, starting after `after`.
    fn begin_read(&self, id: SessionId, after: Seq) -> StoreFuture<'_, ReadStart>;

    /// The entries after `after` (at most about `max_bytes`, at least one),
    /// waiting up to `wait` for some.
    fn read(
        &self,
        id: SessionId,
        ticket: ReaderTicket,
        after: Seq,
        max_bytes: usize,
        wait: Duration,
    ) -> StoreFuture<'_, ReadOutcome>;

    /// Take client messages numbered from `first`.
    fn accept(
        &self,
        id: SessionId,
        first: Seq,
        payloads: Vec<Payload>,
    ) -> StoreFuture<'_, Accepted>;

    /// Queue the client's close after its messages; later sends answer
    /// [`Accepted::Closed`]. Closing twice acknowledges again.
    fn request_close(&self, id: SessionId, frame: CloseFrame) -> StoreFuture<'_, Accepted>;

    /// End the session now from the request side: append `to_client` as
    /// the close entry (unless the log has ended) and have the owner close
    /// the backend with `to_backend` (unless it is closing).
    fn abort(
        &self,
        id: SessionId,
        to_client: CloseFrame,
        to_backend: CloseFrame,
    ) -> StoreFuture<'_, Aborted>;

    /// The owner of `id` on this instance has ended (whatever the path): a
    /// store that keeps the owner's side in this process answers the
    /// session's sends with [`Accepted::Closed`] from now on, and forgets
    /// it later.
    fn owner_ended(&self, id: SessionId) {
        let _ = id;
    }

    /// Bytes this process buffers for the sessions now, for the
    /// `switchyard_fallback_memory_used_bytes` gauge; `None` for a store
    /// that keeps them elsewhere (Redis).
    fn memory_used(&self) -> Option<usize> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_digest_matches_only_its_token() {
        let t = Token::from_bytes([9; 16]);
        let d = TokenDigest::of(&t);
        assert!(d.matches(&t));
        assert!(!d.matches(&Token::from_bytes([8; 16])));
        assert_eq!(format!("{d:?}"), "TokenDigest(..)");
    }
}

//! Fallback sessions: SSE or long polling plus POSTs for clients that
//! cannot upgrade, bridged to an unchanged WebSocket backend
//! (`docs/fallback.md` has the wire format).
//!
//! The gateway holds a real WebSocket to the backend (a route's upstream
//! group or the built-in echo); the client reads the backend's messages as
//! an event stream or by polling and sends its own with numbered POSTs.
//! Every message has a sequence number in each direction: resume is exact
//! or the session ends with an explicit close, never a silent gap.
//!
//! * [`Sessions::serve`] is the one entry point: it answers every request
//!   of the protocol (`?sw=open|sse|poll|send|close`) on a route. The caller
//!   (the dispatcher) gives it the request with its body, and a
//!   [`SessionCall`]: the route's label and [`FallbackSettings`], the
//!   client's address, the route's [`BackendConnector`], and an admission
//!   check (Origin and caps) that runs only when a request opens a session
//!   and whose guard the session holds until it ends.
//! * [`store`]: the [`SessionStore`] interface, the whole shared state;
//!   [`MemoryStore`] keeps it in this process. The owner of a session (the
//!   task holding the backend WebSocket, `owner`) and the request side
//!   talk only through it, so that the request side may run elsewhere.
//! * [`connector`]: [`ProxiedBackend`] and [`EchoBackend`].
//! * [`metrics`]: Prometheus families and the log lines (one per session
//!   open and end, with the reason).
//!
//! Bad input gets a precise status with a JSON body (`{"error", "detail"}`)
//! and a log line: 400 malformed query, body, `seq`, `after` or
//! `Last-Event-ID`; 403 wrong or missing token; 404 unknown session (or
//! fallback off); 405 wrong method; 409 a gap in the client's numbers
//! (with the expected one); 410 sending after the close; 413 body over
//! `max_body`; 415 an unknown `Content-Type`; 503 with `Retry-After` when
//! the sessions, a session's queue or the gateway's memory budget for
//! sessions are full (a backend message beyond that budget waits, its
//! backend unread, until it fits). A resume that asks for what
//! left the replay window ends the session with close 4410.

mod client_queue;
#[cfg(test)]
mod conformance;
pub mod connector;
mod cors;
mod feed;
pub mod memory;
pub mod metrics;
mod owner;
pub mod redis;
#[cfg(test)]
#[path = "../../tests/session/redis_server.rs"]
pub(crate) mod redis_server;
mod relay;
mod serve;
pub mod settings;
pub mod store;
mod stream;

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http_body_util::combinators::UnsyncBoxBody;
use switchyard::fallback::wire::{SessionId, Token};
use switchyard::{CloseCode, CloseFrame};
use tokio::sync::{watch, Notify};

pub use self::redis::RedisStore;
pub use connector::{
    BackendConnector, BackendOpen, BackendRefusal, BackendSocket, BackendStream, EchoBackend,
    ProxiedBackend,
};
pub use memory::MemoryStore;
pub use metrics::SessionMetrics;
pub use settings::FallbackSettings;
pub use store::{SessionRecord, SessionStore, StoreError};

use crate::outcome::Refusal;
use crate::proxy::ClientInfo;

/// The browser client, `SwitchyardSocket` (an ES module, served as
/// `text/javascript` at [`CLIENT_JS_PATH`]).
pub const CLIENT_JS: &str = include_str!("../client.js");

/// Where every host of the gateway serves [`CLIENT_JS`].
pub const CLIENT_JS_PATH: &str = "/.switchyard/client.js";

/// The content type of [`CLIENT_JS`].
pub const CLIENT_JS_TYPE: &str = "text/javascript; charset=utf-8";

/// The response body of every session request: JSON, or an event stream.
pub type SessionBody = UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>;

/// What a session holds for its whole life on behalf of the dispatcher
/// (a connection slot of the route's caps), dropped when it ends.
pub type Admission = Box<dyn Any + Send>;

/// The admission check of a request that opens a session: the route's
/// Origin policy and caps, applied to the client's request head.
pub type Admit<'a> = &'a (dyn Fn(&http::request::Parts) -> Result<Admission, Refusal> + Sync);

/// What the dispatcher gives [`Sessions::serve`] with each request.
#[derive(Clone, Copy)]
pub struct SessionCall<'a> {
    /// The route's label (metrics, logs; a session is found only on the
    /// route that opened it).
    pub route: &'a str,
    /// The route's settings (a session keeps those it was opened with).
    pub settings: &'a FallbackSettings,
    /// The client.
    pub client: ClientInfo,
    /// Opens the backend WebSocket.
    pub backend: &'a dyn BackendConnector,
    /// Called once, only when the request opens a session.
    pub admit: Admit<'a>,
    /// The route's `allowed_origins`: the pages of those origins may use
    /// sessions across origins (CORS); `None`: same-origin pages only.
    pub allowed_origins: Option<&'a [String]>,
}

/// The fallback sessions of a gateway: the store, the owners running on
/// this instance, metrics. Keep one across configuration reloads (open
/// sessions keep their settings); `Clone` shares it.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn SessionStore>,
    metrics: Arc<SessionMetrics>,
    /// Turned true by [`Sessions::drain`].
    stop: watch::Sender<bool>,
    /// Sessions owned here, from admission to end.
    live: AtomicUsize,
    /// Signalled when `live` drops.
    ended: Notify,
    max_sessions: usize,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("live", &self.live())
            .field("max_sessions", &self.inner.max_sessions)
            .finish_non_exhaustive()
    }
}

/// One of `live`, given back when dropped.
struct LiveSlot(Arc<Inner>);

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

impl Sessions {
    /// Sessions in `store`, at most `max_sessions` owned by this instance
    /// at once (opening ones included; more are answered 503 with
    /// `Retry-After`), reporting to `metrics`.
    pub fn new(
        store: Arc<dyn SessionStore>,
        max_sessions: usize,
        metrics: Arc<SessionMetrics>,
    ) -> Self {
        let (stop, _) = watch::channel(false);
        Sessions {
            inner: Arc::new(Inner {
                store,
                metrics,
                stop,
                live: AtomicUsize::new(0),
                ended: Notify::new(),
                max_sessions,
                rng: ring::rand::SystemRandom::new(),
            }),
        }
    }

    /// In memory: a [`MemoryStore`] for twice `max_sessions` (room for ended
    /// sessions until they are forgotten), buffering at most `memory` bytes.
    pub fn in_memory(max_sessions: usize, memory: usize) -> Self {
        let store = Arc::new(MemoryStore::new(max_sessions.saturating_mul(2), memory));
        Sessions::new(store, max_sessions, Arc::new(SessionMetrics::new()))
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<SessionMetrics> {
        &self.inner.metrics
    }

    /// The Prometheus text of the sessions: their metrics, and the bytes
    /// the store buffers in this process (in memory only).
    pub fn render_metrics(&self) -> String {
        let mut out = self.inner.metrics.render();
        if let Some(used) = self.inner.store.memory_used() {
            out.push_str(
                "# HELP switchyard_fallback_memory_used_bytes Bytes the in-memory session store buffers now (the budget is [fallback] memory).\n\
                 # TYPE switchyard_fallback_memory_used_bytes gauge\n",
            );
            out.push_str(&format!("switchyard_fallback_memory_used_bytes {used}\n"));
        }
        out
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    /// Sessions owned by this instance now.
    pub fn live(&self) -> usize {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Close every session owned here with 1001 (the backend gets 1001, the
    /// client `close` 1001), refuse new ones, and wait up to `grace` for
    /// them to end.
    pub async fn drain(&self, grace: Duration) {
        self.inner.stop.send_replace(true);
        let all_ended = async {
            loop {
                let ended = self.inner.ended.notified();
                if self.live() == 0 {
                    return;
                }
                ended.await;
            }
        };
        let _ = tokio::time::timeout(grace, all_ended).await;
    }

    fn draining(&self) -> bool {
        *self.inner.stop.borrow()
    }

    /// A slot of `live`, unless this instance holds its maximum.
    fn live_slot(&self) -> Option<LiveSlot> {
        let i = &self.inner;
        let taken = i
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < i.max_sessions).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| LiveSlot(i.clone()))
    }

    /// A fresh session id and token from the system's CSPRNG.
    fn fresh_ids(&self) -> Option<(SessionId, Token)> {
        use ring::rand::SecureRandom;
        let mut b = [0u8; 32];
        self.inner.rng.fill(&mut b).ok()?;
        let mut id = [0u8; 16];
        let mut token = [0u8; 16];
        id.copy_from_slice(&b[..16]);
        token.copy_from_slice(&b[16..]);
        Some((SessionId::from_bytes(id), Token::from_bytes(token)))
    }

    /// Run the owner of a new session in a task of its own; what it holds
    /// (admission, live slot, metrics guard, backend lease) is released
    /// when it ends, whatever the path (a panic included: the session is
    /// then aborted with 1011).
    fn spawn_owner(
        &self,
        id: SessionId,
        record: &SessionRecord,
        socket: BackendSocket,
        held: (Admission, LiveSlot),
    ) {
        let transport = record.transport.map_or("-", |t| t.as_str());
        let open = self.inner.metrics.open_session(&record.route, transport);
        let owner = owner::Owner {
            store: self.inner.store.clone(),
            id,
            route: record.route.clone(),
            backend: socket.backend,
            settings: record.settings.clone(),
            metrics: self.inner.metrics.clone(),
        };
        let (rx, tx) = socket.ws.split();
        let lease = socket.lease;
        let stop = self.inner.stop.subscribe();
        let store = self.inner.store.clone();
        tokio::spawn(async move {
            let held = (held, open, lease);
            if AssertUnwindSafe(owner.run(rx, tx, stop))
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!(sid = %id, "fallback session owner panicked; the session is aborted");
                let f = CloseFrame::new(CloseCode::INTERNAL_ERROR, "gateway error");
                let _ = store.abort(id, f.clone(), f).await;
            }
            store.owner_ended(id);
            drop(held);
        });
    }
}

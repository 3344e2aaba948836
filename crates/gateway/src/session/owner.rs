//! The owner of a session: the task that holds the backend WebSocket and
//! bridges it to the store, two loops over the split WebSocket:
//!
//! * backend to client: wait for room in the replay window (the backend's
//!   own TCP window then holds it back, as a slow WebSocket client would),
//!   read the messages that are ready, append them to the log in one push;
//!   what the gateway's memory budget for sessions cannot take now is held
//!   and pushed again once the store says memory was released, the backend
//!   unread meanwhile (the same backpressure);
//! * client to backend: take the accepted client messages in order and
//!   write them; a close item closes the backend with its frame; no reader
//!   for the idle timeout closes it with 1001.
//!
//! The session ends when either loop ends or the gateway drains (1001); the
//! log's last entry is then the close the client sees.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use switchyard::fallback::wire::{Payload, Seq, SessionId};
use switchyard::{CloseCode, CloseFrame, Message, WsReader, WsWriter};
use tokio::sync::watch;
use tokio::time::Instant;

use super::connector::BackendStream;
use super::metrics::SessionMetrics;
use super::settings::FallbackSettings;
use super::store::{entry_cost, Pushed, SessionStore, StoreError};
use crate::metrics::Direction;

/// Backend messages ready at once are appended together up to this many
/// bytes (one store call for a burst).
const PUSH_BATCH_BYTES: usize = 64 << 10;
/// Longest wait for the backend's close reply.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// What one session's owner needs.
pub(super) struct Owner {
    pub store: Arc<dyn SessionStore>,
    pub id: SessionId,
    pub route: String,
    pub backend: String,
    pub settings: FallbackSettings,
    pub metrics: Arc<SessionMetrics>,
}

/// Why a session ended (the log line's and the metric's reason).
#[derive(Debug)]
enum End {
    /// The backend sent its close.
    BackendClosed(Option<CloseFrame>),
    /// The backend connection failed or ended without a close.
    BackendFailed(String),
    /// The client's close (or an abort's) was sent to the backend.
    CloseSent(CloseFrame),
    /// No reader for the idle timeout.
    Idle,
    /// The gateway is shutting down.
    Drain,
    /// The request side ended the log (an abort) while messages came.
    Aborted,
    /// The store failed.
    Store(StoreError),
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    messages: u64,
    bytes: u64,
}

impl Owner {
    /// Count a batch relayed in `dir` now (the route's figures move while
    /// the session lives), and in the session's `total` for its log line.
    fn relayed(&self, dir: Direction, batch: Counts, total: &mut Counts) {
        self.metrics
            .relayed(&self.route, dir, batch.messages, batch.bytes);
        total.messages += batch.messages;
        total.bytes += batch.bytes;
    }

    /// Bridge `rx`/`tx` (the backend) and the store until the session ends.
    pub(super) async fn run(
        self,
        mut rx: WsReader<BackendStream>,
        mut tx: WsWriter<BackendStream>,
        mut stop: watch::Receiver<bool>,
    ) {
        let opened = Instant::now();
        let mut to_client = Counts::default();
        let mut to_backend = Counts::default();
        let end = {
            let up = self.backend_to_store(&mut rx, &mut to_client);
            let down = self.store_to_backend(&mut tx, &mut to_backend);
            tokio::select! {
                e = up => e,
                e = down => e,
                () = stopped(&mut stop) => End::Drain,
            }
        };
        let (reason, last) = match end {
            End::BackendClosed(frame) => (
                "backend_closed",
                Payload::Close(frame.unwrap_or_else(|| CloseFrame::new(CloseCode::NO_STATUS, ""))),
            ),
            End::BackendFailed(why) => (
                "backend_failed",
                Payload::Close(CloseFrame::new(CloseCode::ABNORMAL, cut(&why))),
            ),
            End::CloseSent(frame) => {
                // The client closed: the backend's reply is the close the
                // client sees (its own frame if the backend sends none).
                let reply = close_reply(&mut rx).await.unwrap_or(frame);
                ("client_closed", Payload::Close(reply))
            }
            End::Idle => {
                let f = CloseFrame::new(CloseCode::GOING_AWAY, "no reader: idle timeout");
                close_backend(&mut rx, &mut tx, f.clone()).await;
                ("idle", Payload::Close(f))
            }
            End::Drain => {
                let f = CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down");
                close_backend(&mut rx, &mut tx, f.clone()).await;
                ("drain", Payload::Close(f))
            }
            End::Aborted => {
                let f = CloseFrame::new(CloseCode::INTERNAL_ERROR, "session aborted");
                close_backend(&mut rx, &mut tx, f.clone()).await;
                ("aborted", Payload::Close(f))
            }
            End::Store(e) => {
                let f = CloseFrame::new(CloseCode::INTERNAL_ERROR, "session state lost");
                close_backend(&mut rx, &mut tx, f.clone()).await;
                tracing::warn!(sid = %self.id, error = %e, "fallback session store failed");
                ("store_failed", Payload::Close(f))
            }
        };
        drop((rx, tx));
        let code = match &last {
            Payload::Close(f) => f.code,
            _ => CloseCode::ABNORMAL,
        };
        // After an abort the log already ends with the abort's close.
        let aborted = matches!(
            self.store.push(self.id, vec![last]).await,
            Ok(Pushed::Ended)
        );
        let reason = if aborted && reason == "client_closed" {
            "aborted"
        } else {
            reason
        };
        self.metrics.session_end(&self.route, reason);
        tracing::info!(
            sid = %self.id,
            route = %self.route,
            backend = %self.backend,
            reason,
            code = code.0,
            to_client = to_client.messages,
            to_backend = to_backend.messages,
            seconds = opened.elapsed().as_secs_f64(),
            "fallback session ended"
        );
    }

    async fn backend_to_store(&self, rx: &mut WsReader<BackendStream>, n: &mut Counts) -> End {
        // Whether the replay window has room; each push says so, so the
        // store is asked only at the start and once the window has filled.
        let mut room = false;
        loop {
            if !room {
                match self
                    .store
                    .wait_room(self.id, self.settings.idle_timeout)
                    .await
                {
                    Ok(true) => room = true,
                    Ok(false) => continue,
                    Err(e) => return End::Store(e),
                }
            }
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            let mut end = None;
            let mut next = rx.next().await;
            loop {
                match next {
                    Some(Ok(Message::Close(frame))) => end = Some(End::BackendClosed(frame)),
                    // Data; pings and pongs are answered by the connection.
                    Some(Ok(m)) => {
                        if let Some(p) = Payload::from_message(m) {
                            bytes += p.len();
                            batch.push(p);
                        }
                    }
                    Some(Err(e)) => end = Some(End::BackendFailed(e.to_string())),
                    None => end = Some(End::BackendFailed("the backend connection ended".into())),
                }
                if end.is_some() || bytes >= PUSH_BATCH_BYTES {
                    break;
                }
                // Only what is ready now: a burst is one push.
                match rx.next().now_or_never() {
                    Some(m) => next = m,
                    None => break,
                }
            }
            if !batch.is_empty() {
                let counts = Counts {
                    messages: batch.len() as u64,
                    bytes: bytes as u64,
                };
                self.relayed(Direction::UpstreamToClient, counts, n);
                match self.push_all(batch).await {
                    Ok(r) => room = r,
                    Err(e) => return e,
                }
            }
            if let Some(e) = end {
                return e;
            }
        }
    }

    /// Append `batch` to the log. While the sessions' memory budget cannot
    /// take it, hold the rest until memory is released and try again (the
    /// backend is not read meanwhile); the session ends only as it would
    /// anyway: its reader gone for the idle timeout, the gateway draining,
    /// the backend gone. Whether the replay window still has room after it.
    async fn push_all(&self, mut batch: Vec<Payload>) -> Result<bool, End> {
        let mut held = false;
        loop {
            // A clone shares the payloads' bytes.
            match self.store.push(self.id, batch.clone()).await {
                Ok(Pushed::Appended { room, .. }) => {
                    if held {
                        tracing::debug!(sid = %self.id, "fallback session: the held messages fit again");
                    }
                    return Ok(room);
                }
                Ok(Pushed::Ended) => return Err(End::Aborted),
                Ok(Pushed::OverBudget { taken, limit }) => {
                    batch.drain(..taken.min(batch.len()));
                    if !held {
                        held = true;
                        tracing::info!(
                            sid = %self.id,
                            route = %self.route,
                            limit,
                            "fallback session holds its backend back: the sessions' buffers \
                             fill the gateway's budget ([fallback] memory) until readers \
                             take their messages; raise it or lower the routes' \
                             fallback_replay_bytes if this is frequent"
                        );
                    }
                    let need = batch.first().map_or(0, entry_cost);
                    let wait = self.settings.idle_timeout;
                    if let Err(e) = self.store.wait_memory(need, wait).await {
                        return Err(End::Store(e));
                    }
                }
                Err(e) => return Err(End::Store(e)),
            }
        }
    }

    async fn store_to_backend(&self, tx: &mut WsWriter<BackendStream>, n: &mut Counts) -> End {
        let mut cursor = Seq::ZERO;
        // The idle check runs at least this often.
        let wait = (self.settings.idle_timeout / 4).max(Duration::from_millis(10));
        loop {
            let inbound = match self.store.take_inbound(self.id, cursor, wait).await {
                Ok(i) => i,
                Err(e) => return End::Store(e),
            };
            let mut counts = Counts::default();
            for (_, p) in &inbound.items {
                if !matches!(p, Payload::Close(_)) {
                    counts.messages += 1;
                    counts.bytes += p.len() as u64;
                }
            }
            self.relayed(Direction::ClientToUpstream, counts, n);
            for (seq, p) in inbound.items {
                cursor = seq;
                let close = match p {
                    Payload::Close(f) => f,
                    data => {
                        if let Err(e) = tx.feed(data.into_message()).await {
                            return End::BackendFailed(e.to_string());
                        }
                        continue;
                    }
                };
                return match tx.send(Message::Close(Some(close.clone()))).await {
                    Ok(()) => End::CloseSent(close),
                    Err(e) => End::BackendFailed(e.to_string()),
                };
            }
            if let Err(e) = tx.flush().await {
                return End::BackendFailed(e.to_string());
            }
            if inbound.idle >= self.settings.idle_timeout {
                return End::Idle;
            }
        }
    }
}

/// Resolves once `stop` turns true (never if its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Send `frame` to the backend and wait (bounded) for its reply.
async fn close_backend(
    rx: &mut WsReader<BackendStream>,
    tx: &mut WsWriter<BackendStream>,
    frame: CloseFrame,
) {
    if tx.close(frame.code, &frame.reason).await.is_ok() {
        close_reply(rx).await;
    }
}

/// The backend's close frame, after ours was sent; messages that arrive
/// meanwhile are dropped (a WebSocket API drops them once it is closing).
async fn close_reply(rx: &mut WsReader<BackendStream>) -> Option<CloseFrame> {
    let wait = async {
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Close(f) = m {
                return f;
            }
        }
        None
    };
    tokio::time::timeout(CLOSE_WAIT, wait).await.ok().flatten()
}

/// A close reason fits in 123 bytes.
fn cut(s: &str) -> String {
    let mut end = s.len().min(123);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::conformance::{record, seqs, ID};
    use crate::session::memory::MemoryStore;
    use crate::session::store::ENTRY_COST;
    use switchyard::proto::{Connection, Limits, Role};
    use switchyard::WebSocket;

    #[test]
    fn reasons_fit_a_close_frame() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(100);
        let c = cut(&long);
        assert!(c.len() <= 123 && long.starts_with(&c), "{}", c.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_backend_is_read_again_as_soon_as_its_reader_catches_up() {
        // Room for three messages of 100 bytes in all sessions' buffers.
        let budget = 3 * (100 + ENTRY_COST);
        let store = Arc::new(MemoryStore::new(10, budget));
        let rec = record(1 << 20, 1 << 20);
        store.create(ID, rec.clone()).await.unwrap();
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let ours: BackendStream = Box::new(ours);
        let client = Connection::new(Role::Client, Limits::default());
        let (rx, tx) = WebSocket::from_raw(ours, client, &[]).split();
        let server = Connection::new(Role::Server, Limits::default());
        let mut backend = WebSocket::from_raw(theirs, server, &[]);
        let (_stop, stop) = watch::channel(false);
        let owner = Owner {
            store: store.clone(),
            id: ID,
            route: rec.route.clone(),
            backend: "test".into(),
            settings: rec.settings.clone(),
            metrics: Arc::new(SessionMetrics::new()),
        };
        tokio::spawn(owner.run(rx, tx, stop));
        for i in 1..=4u8 {
            let m = Message::Binary(vec![i; 100].into());
            backend.send(m).await.unwrap();
        }
        // Three fit; the fourth waits in the owner, the backend unread.
        tokio::time::sleep(Duration::from_secs(5)).await;
        // What else is due at this instant (a retry timer) runs first.
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        assert_eq!(store.memory_used(), budget);
        // The reader takes the three: the owner appends the fourth at once,
        // woken by the release (the paused clock does not move: no timer
        // was needed).
        let held = Instant::now();
        let r = store.begin_read(ID, Seq::ZERO).await.unwrap();
        let read = store.read(ID, r.ticket, Seq::ZERO, 1 << 20, Duration::ZERO);
        assert_eq!(seqs(&read.await.unwrap()), [1, 2, 3]);
        let read = store.read(ID, r.ticket, Seq(3), 1 << 20, Duration::from_secs(60));
        assert_eq!(seqs(&read.await.unwrap()), [4]);
        assert_eq!(Instant::now(), held, "woken by a timer, not by the release");
    }
}

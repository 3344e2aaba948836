//! The `sse` response: `text/event-stream` of the session's log, from the
//! store, as a streaming body. It ends (and the client resumes with
//! `Last-Event-ID`) after the route's byte or time budget, so that a
//! buffering proxy cannot hold it forever; it ends for good after the
//! session's close, or when a newer reader replaced it.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use switchyard::fallback::sse::{write_comment, write_entry, write_retry};
use switchyard::fallback::wire::{EventId, Payload, Seq, SessionId, Token};
use tokio::time::Instant;

use super::settings::FallbackSettings;
use super::store::{ReadOutcome, ReaderTicket};
use super::{SessionBody, Sessions};

/// How an `EventSource` waits before it reconnects after a network error.
const RECONNECT_MILLIS: u64 = 2000;
/// Most bytes one read of the store adds to the stream at once.
const CHUNK_BYTES: usize = 64 << 10;

/// The form of the events' ids.
#[derive(Debug, Clone, Copy)]
pub(super) enum EventIds {
    /// `SEQ` (the stream's URL names the session).
    Seq,
    /// `SID.TOKEN.SEQ` (a receive-only session: the browser reconnects to a
    /// URL without the session).
    Resume { sid: SessionId, token: Token },
}

impl EventIds {
    fn id(self, seq: Seq) -> EventId {
        match self {
            EventIds::Seq => EventId::Seq(seq),
            EventIds::Resume { sid, token } => EventId::Resume { sid, token, seq },
        }
    }
}

/// One SSE response's state.
pub(super) struct SseStream {
    pub sessions: Sessions,
    pub id: SessionId,
    pub ticket: ReaderTicket,
    /// The last entry written.
    pub after: Seq,
    pub ids: EventIds,
    pub settings: FallbackSettings,
    pub route: String,
    /// The answer of the read done before the response started.
    pub first: Option<ReadOutcome>,
}

/// Where a stream is.
enum Step {
    /// Writing events.
    Open {
        s: Box<SseStream>,
        started: Instant,
        sent: usize,
    },
    /// Nothing more to write.
    Done,
}

/// The `200 text/event-stream` response for `s`.
pub(super) fn response(s: SseStream) -> Response<SessionBody> {
    let mut head = BytesMut::new();
    write_retry(&mut head, RECONNECT_MILLIS);
    let start = Step::Open {
        s: Box::new(s),
        started: Instant::now(),
        sent: 0,
    };
    let events = futures_util::stream::unfold(start, next_chunk);
    let body = futures_util::stream::iter([head.freeze()])
        .chain(events)
        .map(|b| Ok(Frame::data(b)));
    let mut resp = Response::new(StreamBody::new(body).boxed_unsync());
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx: do not buffer this response.
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    resp
}

async fn next_chunk(step: Step) -> Option<(Bytes, Step)> {
    let Step::Open {
        mut s,
        started,
        sent,
    } = step
    else {
        return None;
    };
    let mut out = BytesMut::new();
    let budget_left = s.settings.response_max_bytes.saturating_sub(sent);
    let time_left = s
        .settings
        .sse_max_duration
        .saturating_sub(started.elapsed());
    if budget_left == 0 || time_left.is_zero() {
        // The budget is spent: the client resumes at once.
        write_retry(&mut out, 0);
        return Some((out.freeze(), Step::Done));
    }
    let outcome = match s.first.take() {
        Some(o) => o,
        None => {
            let wait = s.settings.reader_wake().min(time_left);
            let store = s.sessions.store().clone();
            let read = store.read(s.id, s.ticket, s.after, budget_left.min(CHUNK_BYTES), wait);
            match read.await {
                Ok(o) => o,
                // The session is gone or the store failed: end the response;
                // the client's resume learns which.
                Err(_) => return None,
            }
        }
    };
    let mut done = false;
    match outcome {
        ReadOutcome::Entries(entries) if entries.is_empty() => write_comment(&mut out, "hb"),
        ReadOutcome::Entries(entries) => {
            for e in &entries {
                write_entry(&mut out, &s.ids.id(e.seq), e);
                s.after = e.seq;
                done |= matches!(e.payload, Payload::Close(_));
            }
        }
        ReadOutcome::Replaced => {
            write_comment(&mut out, "replaced by a newer reader of this session");
            done = true;
        }
        ReadOutcome::WindowExceeded => {
            match s.sessions.window_exceeded(s.id, &s.route).await {
                Ok(close) => write_entry(&mut out, &s.ids.id(close.seq), &close),
                Err(_) => return None,
            }
            done = true;
        }
        // `after` only moves to what the store gave.
        ReadOutcome::Ahead { .. } => return None,
    }
    let sent = sent + out.len();
    let next = if done {
        Step::Done
    } else {
        Step::Open { s, started, sent }
    };
    Some((out.freeze(), next))
}

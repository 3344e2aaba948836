//! The request side: [`Sessions::serve`] answers `open`, `sse`, `poll`,
//! `send` and `close`, through the store only (and, for `open`, the
//! backend connector).

use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use serde::Serialize;
use switchyard::fallback::wire::{
    Action, CloseRequest, Credentials, Entry, ErrorBody, EventId, OpenRequest, OpenResponse,
    Payload, PollResponse, SendAck, SendBody, Seq, SessionId, SessionQuery, Token, Transport,
    WireError, CLOSE_RESUME_WINDOW, RESUME_WINDOW_REASON,
};
use switchyard::{CloseCode, CloseFrame};
use tokio::time::Instant;

use super::connector::{BackendOpen, BackendRefusal};
use super::cors::Cors;
use super::store::{Accepted, ReadOutcome, SessionRecord, StoreError, TokenDigest};
use super::stream::{self, EventIds};
use super::{SessionBody, SessionCall, Sessions};
// No session can be opened now: the caps' `Retry-After`.
use crate::admission::RETRY_AFTER_SECS;

/// Seconds in `Retry-After` when a session's queue is full or the store
/// failed: the condition is short-lived.
const RETRY_AFTER_FULL: u32 = 1;

/// An answer other than success.
#[derive(Debug)]
pub(super) enum Reject {
    /// Ours: a status, a label, a sentence (JSON body).
    Own {
        status: StatusCode,
        reason: &'static str,
        detail: String,
        retry_after: Option<u32>,
        /// For 409: the `seq` expected next.
        expected: Option<Seq>,
        /// For 405: the method to use.
        allow: Option<http::Method>,
    },
    /// What an upgrade would have got: an admission refusal (Origin, caps)
    /// or the backend's answer.
    Backend(Box<BackendRefusal>),
}

impl Reject {
    fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Reject::Own {
            status,
            reason,
            detail: detail.into(),
            retry_after: None,
            expected: None,
            allow: None,
        }
    }

    fn retry_after(mut self, secs: u32) -> Self {
        if let Reject::Own { retry_after, .. } = &mut self {
            *retry_after = Some(secs);
        }
        self
    }

    fn status(&self) -> StatusCode {
        match self {
            Reject::Own { status, .. } => *status,
            Reject::Backend(b) => b.status,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Reject::Own { reason, .. } => reason,
            Reject::Backend(b) => b.reason,
        }
    }

    fn detail(&self) -> &str {
        match self {
            Reject::Own { detail, .. } => detail,
            Reject::Backend(b) => &b.detail,
        }
    }

    fn into_response(self) -> Response<SessionBody> {
        match self {
            Reject::Own {
                status,
                reason,
                detail,
                retry_after,
                expected,
                allow,
            } => {
                let body = ErrorBody {
                    error: reason.to_string(),
                    detail,
                    expected,
                };
                let mut resp = json(status, &body);
                let h = resp.headers_mut();
                if let Some(s) = retry_after {
                    h.insert(RETRY_AFTER, HeaderValue::from(s));
                }
                if let Some(m) = allow.and_then(|m| HeaderValue::from_str(m.as_str()).ok()) {
                    h.insert(ALLOW, m);
                }
                resp
            }
            Reject::Backend(b) => {
                let b = *b;
                let mut resp = Response::new(full(b.body));
                *resp.status_mut() = b.status;
                *resp.headers_mut() = b.headers;
                resp
            }
        }
    }
}

fn bad_request(e: WireError) -> Reject {
    Reject::new(StatusCode::BAD_REQUEST, "malformed", e.to_string())
}

fn store_failed(e: StoreError) -> Reject {
    match e {
        StoreError::Unknown => unknown_session(),
        StoreError::Full(_) => {
            Reject::new(StatusCode::SERVICE_UNAVAILABLE, "store_full", e.to_string())
                .retry_after(RETRY_AFTER_SECS)
        }
        StoreError::OverBudget(_) => Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "memory_full",
            e.to_string(),
        )
        .retry_after(RETRY_AFTER_FULL),
        StoreError::Unavailable(_) => Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
        .retry_after(RETRY_AFTER_FULL),
    }
}

fn unknown_session() -> Reject {
    Reject::new(
        StatusCode::NOT_FOUND,
        "unknown_session",
        "no session with this id on this route (it ended, or never existed); open a new one",
    )
}

fn transport_off(t: Transport) -> Reject {
    Reject::new(
        StatusCode::NOT_FOUND,
        "transport_off",
        format!("this route does not offer the {t} transport (see its fallback setting)"),
    )
}

fn full(b: Bytes) -> SessionBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<SessionBody> {
    // Our own types serialize without error.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The body, refused (413) as soon as it is known to exceed `limit`.
async fn read_body<B>(head: &http::request::Parts, body: B, limit: usize) -> Result<Bytes, Reject>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        Reject::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than the route's limit of {limit} bytes (max_body)"),
        )
    };
    let declared = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "body",
            format!("reading the body failed: {e}"),
        )),
    }
}

/// A session that was just opened.
struct Opened {
    id: SessionId,
    token: Token,
    record: SessionRecord,
}

impl Sessions {
    /// Answer one request of the fallback protocol (its query has `sw=`)
    /// on the route described by `call`. Never fails: errors are answered
    /// with their status (and logged).
    pub async fn serve<B>(&self, req: Request<B>, call: SessionCall<'_>) -> Response<SessionBody>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (head, body) = req.into_parts();
        let cors = Cors::of(&head.headers, call.allowed_origins);
        if head.method == http::Method::OPTIONS {
            return cors.preflight();
        }
        let mut resp = match self.handle(&head, body, &call).await {
            Ok(resp) => resp,
            Err(r) => {
                self.inner.metrics.refused(r.reason());
                tracing::info!(
                    route = call.route,
                    client = %call.client.addr,
                    status = r.status().as_u16(),
                    reason = r.reason(),
                    detail = r.detail(),
                    "fallback request refused"
                );
                r.into_response()
            }
        };
        cors.apply(resp.headers_mut());
        resp
    }

    async fn handle<B>(
        &self,
        head: &http::request::Parts,
        body: B,
        call: &SessionCall<'_>,
    ) -> Result<Response<SessionBody>, Reject>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let q = SessionQuery::parse(head.uri.query().unwrap_or_default()).map_err(bad_request)?;
        let method = q.action.method();
        if head.method != method {
            return Err(Reject::Own {
                status: StatusCode::METHOD_NOT_ALLOWED,
                reason: "method",
                detail: format!("sw={} takes {method}", q.action),
                retry_after: None,
                expected: None,
                allow: Some(method),
            });
        }
        self.inner.metrics.request(call.route, q.action.as_str());
        match q.action {
            Action::Open => {
                let body = read_body(head, body, call.settings.max_body).await?;
                let req = OpenRequest::parse(&body).map_err(bad_request)?;
                let transport = req.transport;
                let o = self
                    .open(head, &req.protocols, transport, false, call)
                    .await?;
                let s = &o.record.settings;
                let answer = OpenResponse {
                    sid: o.id,
                    token: o.token,
                    protocol: o.record.subprotocol.clone(),
                    heartbeat_ms: millis(s.reader_wake()),
                    poll_timeout_ms: millis(s.poll_timeout),
                    idle_timeout_ms: millis(s.idle_timeout),
                    max_body: s.max_body,
                    transports: s.transports.clone(),
                };
                Ok(json(StatusCode::OK, &answer))
            }
            Action::Sse => self.sse(head, q.session, call).await,
            Action::Poll => {
                let (id, rec) = self.session(q.session, call.route).await?;
                self.poll(id, &rec, q.after.unwrap_or_default()).await
            }
            Action::Send => {
                let (id, rec) = self.session(q.session, call.route).await?;
                let ct = head.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
                let kind = SendBody::from_content_type(ct).ok_or_else(|| {
                    Reject::new(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "media_type",
                        "send a text/plain, application/octet-stream or application/json body",
                    )
                })?;
                let body = read_body(head, body, rec.settings.max_body).await?;
                let payloads = kind.parse(body).map_err(bad_request)?;
                let seq = q.seq.unwrap_or_default();
                let accepted = self.inner.store.accept(id, seq, payloads).await;
                acked(accepted.map_err(store_failed)?)
            }
            Action::Close => {
                let (id, rec) = self.session(q.session, call.route).await?;
                let body = read_body(head, body, rec.settings.max_body).await?;
                let frame = CloseRequest::parse(&body).map_err(bad_request)?;
                let accepted = self.inner.store.request_close(id, frame).await;
                acked(accepted.map_err(store_failed)?)
            }
        }
    }

    /// The session a request names, checked: on this route (404), with its
    /// token (403; nothing else is said about the session).
    async fn session(
        &self,
        creds: Option<Credentials>,
        route: &str,
    ) -> Result<(SessionId, SessionRecord), Reject> {
        let c = creds.ok_or_else(unknown_session)?;
        let record = self
            .inner
            .store
            .record(c.sid)
            .await
            .map_err(store_failed)?
            .filter(|r| r.route == route)
            .ok_or_else(unknown_session)?;
        match c.token {
            Some(t) if record.token.matches(&t) => Ok((c.sid, record)),
            _ => Err(Reject::new(
                StatusCode::FORBIDDEN,
                "token",
                "the token is missing or does not belong to this session",
            )),
        }
    }

    /// Open a session: admission (Origin, caps), a slot of this instance,
    /// the backend, the store's record, the owner.
    async fn open(
        &self,
        head: &http::request::Parts,
        protocols: &[String],
        transport: Option<Transport>,
        receive_only: bool,
        call: &SessionCall<'_>,
    ) -> Result<Opened, Reject> {
        if let Some(t) = transport.filter(|t| !call.settings.offers(*t)) {
            return Err(transport_off(t));
        }
        if call.settings.transports.is_empty() {
            return Err(Reject::new(
                StatusCode::NOT_FOUND,
                "fallback_off",
                "this route offers no fallback sessions",
            ));
        }
        if self.draining() {
            return Err(Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "the gateway is shutting down; open the session elsewhere",
            )
            .retry_after(RETRY_AFTER_SECS));
        }
        let admission = (call.admit)(head).map_err(|r| Reject::Backend(Box::new(r.into())))?;
        let live = self.live_slot().ok_or_else(|| {
            Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sessions_full",
                format!(
                    "this gateway holds its maximum of {} fallback sessions; try again later",
                    self.inner.max_sessions
                ),
            )
            .retry_after(RETRY_AFTER_SECS)
        })?;
        let open = BackendOpen {
            head,
            client: call.client,
            protocols,
        };
        let socket = call
            .backend
            .connect(open)
            .await
            .map_err(|r| Reject::Backend(Box::new(r)))?;
        let (id, token) = self.fresh_ids().ok_or_else(|| {
            Reject::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "random",
                "the system's random number generator failed",
            )
        })?;
        let record = SessionRecord {
            route: call.route.to_string(),
            token: TokenDigest::of(&token),
            subprotocol: socket.subprotocol.clone(),
            settings: call.settings.clone(),
            receive_only,
            transport,
        };
        if let Err(e) = self.inner.store.create(id, record.clone()).await {
            // The backend learns why its connection ends, as the client does.
            let reason = match e {
                StoreError::Unavailable(_) => "session store unavailable",
                StoreError::Full(_) | StoreError::OverBudget(_) | StoreError::Unknown => {
                    "gateway full"
                }
            };
            let mut ws = socket.ws;
            tokio::spawn(async move {
                let _ = ws.close(CloseCode::TRY_AGAIN_LATER, reason).await;
            });
            return Err(store_failed(e));
        }
        tracing::info!(
            sid = %id,
            route = call.route,
            client = %call.client.addr,
            backend = %socket.backend,
            subprotocol = socket.subprotocol.as_deref().unwrap_or("-"),
            transport = transport.map_or("-", |t| t.as_str()),
            receive_only,
            "fallback session opened"
        );
        self.spawn_owner(id, &record, socket, (admission, live));
        Ok(Opened { id, token, record })
    }

    /// `sse`: the session's event stream, or a receive-only session opened
    /// by a bare `EventSource` (no session in the query; its reconnects
    /// carry the session in `Last-Event-ID`).
    async fn sse(
        &self,
        head: &http::request::Parts,
        creds: Option<Credentials>,
        call: &SessionCall<'_>,
    ) -> Result<Response<SessionBody>, Reject> {
        let last = match head.headers.get("last-event-id") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| {
                        bad_request(WireError::BadEvent("Last-Event-ID is not text".into()))
                    })
                    .and_then(|s| EventId::parse(s.trim()).map_err(bad_request))?,
            ),
        };
        let (id, record, ids, after) = match (creds, last) {
            (Some(c), last) => {
                let (id, record) = self.session(Some(c), call.route).await?;
                let after = match last {
                    None => Seq::ZERO,
                    Some(EventId::Seq(s)) => s,
                    Some(EventId::Resume { sid, seq, .. }) if sid == id => seq,
                    Some(EventId::Resume { .. }) => {
                        return Err(bad_request(WireError::BadEvent(
                            "Last-Event-ID names another session".into(),
                        )))
                    }
                };
                let ids = match (record.receive_only, c.token) {
                    (true, Some(token)) => EventIds::Resume { sid: id, token },
                    _ => EventIds::Seq,
                };
                (id, record, ids, after)
            }
            (None, Some(EventId::Resume { sid, token, seq })) => {
                let creds = Credentials {
                    sid,
                    token: Some(token),
                };
                let (id, record) = self.session(Some(creds), call.route).await?;
                (id, record, EventIds::Resume { sid, token }, seq)
            }
            (None, Some(EventId::Seq(_))) => {
                return Err(bad_request(WireError::BadEvent(
                    "Last-Event-ID without a session: add sid and token to the query".into(),
                )))
            }
            (None, None) => {
                let o = self
                    .open(head, &[], Some(Transport::Sse), true, call)
                    .await?;
                let ids = EventIds::Resume {
                    sid: o.id,
                    token: o.token,
                };
                (o.id, o.record, ids, Seq::ZERO)
            }
        };
        if !record.settings.offers(Transport::Sse) {
            return Err(transport_off(Transport::Sse));
        }
        let store = &self.inner.store;
        let start = store.begin_read(id, after).await.map_err(store_failed)?;
        if start.replays {
            self.inner
                .metrics
                .resume(&record.route, Transport::Sse.as_str());
        }
        let first = store
            .read(
                id,
                start.ticket,
                after,
                record.settings.response_max_bytes,
                Duration::ZERO,
            )
            .await
            .map_err(store_failed)?;
        let first = match first {
            ReadOutcome::Ahead { last } => return Err(ahead(after, last)),
            ReadOutcome::WindowExceeded => {
                ReadOutcome::Entries(vec![self.window_exceeded(id, &record.route).await?])
            }
            other => other,
        };
        Ok(stream::response(stream::SseStream {
            sessions: self.clone(),
            id,
            ticket: start.ticket,
            after,
            ids,
            settings: record.settings,
            route: record.route,
            first: Some(first),
        }))
    }

    /// `poll`: what follows `after` at once, or held up to the poll timeout.
    async fn poll(
        &self,
        id: SessionId,
        record: &SessionRecord,
        after: Seq,
    ) -> Result<Response<SessionBody>, Reject> {
        if !record.settings.offers(Transport::Poll) {
            return Err(transport_off(Transport::Poll));
        }
        let store = &self.inner.store;
        let s = &record.settings;
        let start = store.begin_read(id, after).await.map_err(store_failed)?;
        if start.replays {
            self.inner
                .metrics
                .resume(&record.route, Transport::Poll.as_str());
        }
        let deadline = Instant::now() + s.poll_timeout;
        let messages = loop {
            let wait = s
                .reader_wake()
                .min(deadline.saturating_duration_since(Instant::now()));
            let outcome = store
                .read(id, start.ticket, after, s.response_max_bytes, wait)
                .await
                .map_err(store_failed)?;
            match outcome {
                ReadOutcome::Entries(e) if !e.is_empty() || Instant::now() >= deadline => break e,
                ReadOutcome::Entries(_) => {}
                ReadOutcome::Replaced => break Vec::new(),
                ReadOutcome::WindowExceeded => {
                    break vec![self.window_exceeded(id, &record.route).await?]
                }
                ReadOutcome::Ahead { last } => return Err(ahead(after, last)),
            }
        };
        Ok(json(StatusCode::OK, &PollResponse { messages }))
    }

    /// A reader asked for messages that left the replay window: end the
    /// session (the client gets 4410, the backend 1011) and answer with
    /// the client's close.
    pub(super) async fn window_exceeded(
        &self,
        id: SessionId,
        route: &str,
    ) -> Result<Entry, Reject> {
        let to_client = CloseFrame::new(CLOSE_RESUME_WINDOW, RESUME_WINDOW_REASON);
        let to_backend = CloseFrame::new(
            CloseCode::INTERNAL_ERROR,
            "the fallback client missed messages: resume window exceeded",
        );
        let aborted = self
            .inner
            .store
            .abort(id, to_client.clone(), to_backend)
            .await
            .map_err(store_failed)?;
        if aborted.now {
            self.inner.metrics.window_close(route);
            tracing::info!(sid = %id, route, "fallback session ended: a resume asked for messages out of the replay window");
        }
        Ok(Entry {
            seq: aborted.seq,
            payload: Payload::Close(to_client),
        })
    }
}

fn ahead(after: Seq, last: Seq) -> Reject {
    Reject::new(
        StatusCode::BAD_REQUEST,
        "ahead",
        format!("the client claims message {after}, but the session has sent up to {last}"),
    )
}

fn acked(a: Accepted) -> Result<Response<SessionBody>, Reject> {
    match a {
        Accepted::Acked(acked) => Ok(json(StatusCode::OK, &SendAck { acked })),
        Accepted::Gap { expected } => Err(Reject::Own {
            status: StatusCode::CONFLICT,
            reason: "gap",
            detail: format!("messages must come in order without a gap: send seq={expected} next"),
            retry_after: None,
            expected: Some(expected),
            allow: None,
        }),
        Accepted::Full => Err(Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            "the session's messages for the backend fill its queue; send again shortly",
        )
        .retry_after(RETRY_AFTER_FULL)),
        Accepted::OverBudget => Err(Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "memory_full",
            "the gateway's fallback sessions fill their memory budget ([fallback] memory); \
             send again shortly",
        )
        .retry_after(RETRY_AFTER_FULL)),
        Accepted::Closed => Err(Reject::new(
            StatusCode::GONE,
            "closed",
            "the session is closing or closed; nothing more can be sent",
        )),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

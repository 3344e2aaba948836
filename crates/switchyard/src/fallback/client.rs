//! The fallback session client over HTTP/1.1 or HTTP/3: `open`, then a
//! reader task (SSE stream or long polls) and a sender task (numbered
//! POSTs), behind a `Stream + Sink` of [`Message`]s.
//!
//! Two connections: the reader's request is long-lived (a stream, a held
//! poll), so the POSTs have their own (over HTTP/3 each task has its own
//! QUIC connection too, so that one task's reconnect leaves the other's
//! alone). Both are re-established after a
//! network error and the interrupted request repeated: the reader resumes
//! after the last sequence number it delivered (`Last-Event-ID` / `after`),
//! the sender re-sends the same numbered batch, which the gateway accepts
//! once. A server that stays unreachable longer than the session's idle
//! timeout has closed the session: the client then reports it lost.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_sink::Sink;
use http::header::{ACCEPT, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use switchyard_proto::{CloseCode, CloseFrame, Message};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::sse::SseParser;
use super::wire::{
    batch_body, Action, CloseRequest, Credentials, Entry, ErrorBody, EventId, OpenRequest,
    OpenResponse, Payload, PollResponse, SendAck, SendBody, Seq, SessionId, SessionQuery,
    Transport,
};
use crate::client::{tls_error, ClientBuilder, MaybeTlsStream, Target};
use crate::h3::{H3Body, H3Connection};

/// Why a fallback session failed.
#[derive(Debug, thiserror::Error)]
pub enum FallbackError {
    /// The URL, TCP or TLS failed before any HTTP exchange.
    #[error(transparent)]
    Connect(#[from] crate::Error),
    /// An HTTP exchange failed (connection reset, malformed response).
    #[error("HTTP request to the gateway failed: {0}")]
    Http(String),
    /// The gateway did not answer in time.
    #[error("the gateway did not answer within {0:?}")]
    Timeout(Duration),
    /// `open` was refused (Origin, a cap, the backend's own answer...).
    #[error("the gateway refused to open a session: {status} {detail}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// The body, or its `detail` when it is our JSON.
        detail: String,
    },
    /// The session no longer exists on the gateway (closed after an idle
    /// timeout, unknown, or the token was refused): open a new one.
    #[error("the session is gone: the gateway answered {status} ({detail}); open a new session")]
    SessionGone {
        /// 403, 404 or 410.
        status: StatusCode,
        /// Why.
        detail: String,
    },
    /// The gateway stayed unreachable longer than the session's idle timeout.
    #[error("the gateway was unreachable for {0:?}, longer than the session's idle timeout; the session is lost")]
    Unreachable(Duration),
    /// The gateway broke the protocol (a gap in the sequence, bad JSON or SSE).
    #[error("the gateway broke the fallback protocol: {0}")]
    Protocol(String),
    /// The session is closed; nothing more can be sent.
    #[error("the session is closed; no more messages can be sent")]
    Closed,
    /// Sending failed earlier (this says why); nothing more can be sent.
    #[error("the session failed: {0}")]
    Failed(String),
}

/// Options for [`FallbackBuilder::connect`].
#[derive(Debug, Clone)]
pub struct FallbackBuilder {
    transport: Transport,
    open: OpenRequest,
    headers: HeaderMap,
    tls: ClientBuilder,
    request_timeout: Duration,
    max_event: usize,
    max_queue: usize,
    http3: bool,
}

impl FallbackBuilder {
    /// A client reading with `transport`; requests time out after 10 s,
    /// received messages up to 32 MiB, send queue up to 1 MiB.
    pub fn new(transport: Transport) -> Self {
        FallbackBuilder {
            transport,
            open: OpenRequest {
                protocols: Vec::new(),
                transport: Some(transport),
            },
            headers: HeaderMap::new(),
            tls: ClientBuilder::new(),
            request_timeout: Duration::from_secs(10),
            max_event: 48 << 20,
            max_queue: 1 << 20,
            http3: false,
        }
    }

    /// Speak HTTP/3 (QUIC, `https://` or `wss://` URLs only) instead of
    /// HTTP/1.1: the gateway serves sessions the same over both.
    pub fn http3(mut self, on: bool) -> Self {
        self.http3 = on;
        self
    }

    /// Offer these subprotocols, in preference order.
    pub fn subprotocols<I, T>(mut self, protos: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.open.protocols = protos.into_iter().map(Into::into).collect();
        self
    }

    /// Send this header with every request (`Origin`, `Authorization`,
    /// `Cookie`...); the gateway forwards those of `open` to the backend
    /// like a WebSocket upgrade's.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// TLS settings (roots, CA files) for `https://`, from a WebSocket
    /// client builder.
    pub fn tls(mut self, tls: ClientBuilder) -> Self {
        self.tls = tls;
        self
    }

    /// How long one request (connect included) may take before it is
    /// repeated; a held poll or stream gets its timeout on top.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Open a session at `url` (`http://`, `https://`, or the `ws://` /
    /// `wss://` URL of the WebSocket endpoint).
    pub async fn connect(&self, url: &str) -> Result<FallbackSocket, FallbackError> {
        let endpoint = Arc::new(Endpoint::parse(
            url,
            &self.tls,
            self.http3,
            self.headers.clone(),
        )?);
        let mut conn = Conn::default();
        let body =
            serde_json::to_vec(&self.open).map_err(|e| FallbackError::Http(e.to_string()))?;
        let q = SessionQuery {
            action: Action::Open,
            session: None,
            seq: None,
            after: None,
        };
        let req = endpoint.request(&q, Bytes::from(body), Some("application/json"));
        let resp = conn.exchange(&endpoint, req, self.request_timeout).await?;
        let status = resp.status();
        let body = read_body(resp, 1 << 20, self.request_timeout).await?;
        if status != StatusCode::OK {
            return Err(FallbackError::Refused {
                status,
                detail: error_detail(&body),
            });
        }
        let info: OpenResponse = serde_json::from_slice(&body)
            .map_err(|e| FallbackError::Protocol(format!("open answer: {e}")))?;
        let session = Arc::new(Session {
            endpoint,
            creds: Credentials {
                sid: info.sid,
                token: Some(info.token),
            },
            request_timeout: self.request_timeout,
            idle_timeout: Duration::from_millis(info.idle_timeout_ms),
            heartbeat: Duration::from_millis(info.heartbeat_ms),
            poll_timeout: Duration::from_millis(info.poll_timeout_ms),
            max_body: info.max_body,
            max_event: self.max_event,
        });
        let (tx, incoming) = mpsc::channel(64);
        let reader = tokio::spawn(read_loop(session.clone(), self.transport, tx));
        let outbox = Arc::new(Outbox {
            state: Mutex::new(OutboxState::default()),
            work: Notify::new(),
            max_queue: self.max_queue,
        });
        let sender = tokio::spawn(send_loop(session.clone(), outbox.clone(), conn));
        Ok(FallbackSocket {
            incoming,
            outbox,
            info,
            transport: self.transport,
            tasks: [reader, sender],
            ended: false,
        })
    }
}

/// A fallback session as a WebSocket: `Stream` of received messages (the
/// last is `Message::Close` with the code the session ended with), `Sink`
/// of messages to send (`flush` waits until the gateway accepted them;
/// `close` sends the close and waits until it is accepted).
#[derive(Debug)]
pub struct FallbackSocket {
    incoming: mpsc::Receiver<Result<Message, FallbackError>>,
    outbox: Arc<Outbox>,
    info: OpenResponse,
    transport: Transport,
    tasks: [JoinHandle<()>; 2],
    ended: bool,
}

impl Drop for FallbackSocket {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl FallbackSocket {
    /// The subprotocol the backend chose.
    pub fn subprotocol(&self) -> Option<&str> {
        self.info.protocol.as_deref()
    }

    /// How this socket reads.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The session's id.
    pub fn session_id(&self) -> SessionId {
        self.info.sid
    }

    /// What the gateway answered to `open` (heartbeat, timeouts, limits).
    pub fn session_info(&self) -> &OpenResponse {
        &self.info
    }

    /// Close with `code` (1000 or 3000-4999) and `reason`: sent after every
    /// queued message, returns once the gateway accepted it. The backend's
    /// close reply then arrives on the stream as `Message::Close`.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), FallbackError> {
        self.outbox
            .push(Message::Close(Some(CloseFrame::new(code, reason))))?;
        std::future::poll_fn(|cx| self.outbox.poll_closed(cx)).await
    }
}

impl Stream for FallbackSocket {
    type Item = Result<Message, FallbackError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(this.incoming.poll_recv(cx));
        if matches!(item, None | Some(Ok(Message::Close(_))) | Some(Err(_))) {
            this.ended = true;
        }
        Poll::Ready(item)
    }
}

impl Sink<Message> for FallbackSocket {
    type Error = FallbackError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FallbackError>> {
        self.outbox.poll_room(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), FallbackError> {
        self.outbox.push(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FallbackError>> {
        self.outbox.poll_flushed(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FallbackError>> {
        self.outbox.push(Message::Close(None))?;
        self.outbox.poll_closed(cx)
    }
}

// ------------------------------------------------------------ HTTP plumbing

/// Where the session lives: address, TLS, the path and the application's
/// own query, the headers sent with every request.
#[derive(Debug)]
struct Endpoint {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Set for HTTP/3.
    h3: Option<H3Peer>,
    authority: HeaderValue,
    path: String,
    app_query: Option<String>,
    headers: HeaderMap,
}

impl Endpoint {
    fn parse(
        url: &str,
        tls: &ClientBuilder,
        http3: bool,
        headers: HeaderMap,
    ) -> Result<Self, FallbackError> {
        // One parser for every URL the library takes: http(s) maps to ws(s).
        let as_ws = match url.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => format!("ws://{rest}"),
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => format!("wss://{rest}"),
            _ => url.to_string(),
        };
        let t = Target::parse(&as_ws)?;
        let authority = t
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or(crate::Error::Url {
                url: url.to_string(),
                why: "missing host",
            })?;
        let h3 = if http3 {
            if !t.tls {
                return Err(crate::Error::Url {
                    url: url.to_string(),
                    why: "HTTP/3 always uses TLS: use https:// or wss://",
                }
                .into());
            }
            // Each exchange has its own deadline, the request timeout plus
            // a held poll's: the connection's handshake bound must not cut
            // a poll whose answer (its head) comes only after the hold.
            let limits = tls.get_limits().clone().handshake_timeout(H3_HEAD_WAIT);
            let authority = authority.to_str().unwrap_or_default();
            Some(H3Peer {
                url: format!("wss://{authority}/"),
                client: tls.clone().limits(limits),
            })
        } else {
            None
        };
        Ok(Endpoint {
            tls: if t.tls && !http3 {
                Some(tls.tls_config()?)
            } else {
                None
            },
            h3,
            path: t.uri.path().to_string(),
            app_query: t.uri.query().and_then(super::wire::strip_session_params),
            host: t.host,
            port: t.port,
            authority,
            headers,
        })
    }

    async fn connect(&self) -> Result<Link, FallbackError> {
        if let Some(p) = &self.h3 {
            return Ok(Link::H3(Box::new(
                H3Connection::connect(&p.url, &p.client).await?,
            )));
        }
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(crate::Error::Io)?;
        tcp.set_nodelay(true).map_err(crate::Error::Io)?;
        let stream = match &self.tls {
            None => MaybeTlsStream::Plain(tcp),
            Some(cfg) => {
                let name =
                    ServerName::try_from(self.host.clone()).map_err(|_| crate::Error::Url {
                        url: self.host.clone(),
                        why: "the host is not a valid DNS name or IP address for TLS",
                    })?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| tls_error(&self.host, e))?;
                MaybeTlsStream::Tls(Box::new(tls))
            }
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| FallbackError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Link::H1(sender))
    }

    fn uri(&self, q: &SessionQuery) -> Uri {
        let query = match &self.app_query {
            Some(app) => format!("{app}&{}", q.to_query()),
            None => q.to_query(),
        };
        // The path came from a parsed URI and the query is ours: valid.
        format!("{}?{query}", self.path)
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"))
    }

    fn request(
        &self,
        q: &SessionQuery,
        body: Bytes,
        content_type: Option<&'static str>,
    ) -> Request<Bytes> {
        let mut req = Request::new(body);
        *req.method_mut() = q.action.method();
        *req.uri_mut() = self.uri(q);
        let h = req.headers_mut();
        h.clone_from(&self.headers);
        h.insert(HOST, self.authority.clone());
        if let Some(ct) = content_type {
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        }
        req
    }
}

/// Where an HTTP/3 session's connections go.
#[derive(Debug)]
struct H3Peer {
    /// The `wss://` URL of the gateway's host.
    url: String,
    /// TLS roots and limits.
    client: ClientBuilder,
}

/// The head of an HTTP/3 response may come only after a held poll.
const H3_HEAD_WAIT: Duration = Duration::from_secs(3600);

/// A response from either protocol.
type Answer = Response<Either<Incoming, H3Body>>;

/// A connection to the gateway.
#[derive(Debug)]
enum Link {
    H1(SendRequest<Full<Bytes>>),
    H3(Box<H3Connection>),
}

impl Link {
    fn usable(&self) -> bool {
        match self {
            Link::H1(s) => !s.is_closed(),
            Link::H3(c) => c.quic().close_reason().is_none() && c.going_away().is_none(),
        }
    }

    async fn send(&mut self, req: Request<Bytes>) -> Result<Answer, FallbackError> {
        match self {
            Link::H1(s) => {
                s.ready()
                    .await
                    .map_err(|e| FallbackError::Http(e.to_string()))?;
                let resp = s
                    .send_request(req.map(Full::new))
                    .await
                    .map_err(|e| FallbackError::Http(e.to_string()))?;
                Ok(resp.map(Either::Left))
            }
            Link::H3(c) => Ok(c.send_request(req).await?.map(Either::Right)),
        }
    }
}

/// One connection, re-established when it fails.
#[derive(Debug, Default)]
struct Conn {
    sender: Option<Link>,
}

impl Conn {
    /// Send `req` (connecting first if needed) and wait for the response
    /// head, all within `timeout`. On any failure the connection is dropped.
    async fn exchange(
        &mut self,
        ep: &Endpoint,
        req: Request<Bytes>,
        timeout: Duration,
    ) -> Result<Answer, FallbackError> {
        let attempt = async {
            if !matches!(&self.sender, Some(s) if s.usable()) {
                self.sender = Some(ep.connect().await?);
            }
            let Some(sender) = self.sender.as_mut() else {
                return Err(FallbackError::Http("no connection".into()));
            };
            sender.send(req).await
        };
        let r = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(FallbackError::Timeout(timeout)),
        };
        if r.is_err() {
            self.sender = None;
        }
        r
    }
}

/// The whole body, at most `limit` bytes, within `timeout`.
async fn read_body(resp: Answer, limit: usize, timeout: Duration) -> Result<Bytes, FallbackError> {
    let collect = Limited::new(resp.into_body(), limit).collect();
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(FallbackError::Http(format!("reading the body: {e}"))),
        Err(_) => Err(FallbackError::Timeout(timeout)),
    }
}

/// The `detail` of our JSON error bodies, else the body as text.
fn error_detail(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.detail,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(512)])
            .trim()
            .to_string(),
    }
}

/// What an answer other than 200 means for the session.
enum Failure {
    /// Lost for good.
    Fatal(FallbackError),
    /// Try again (after the server's `Retry-After`, if any).
    Retry(Option<Duration>),
}

fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Failure {
    match status {
        StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE => {
            Failure::Fatal(FallbackError::SessionGone {
                status,
                detail: error_detail(body),
            })
        }
        // A proxy or a gateway that restarts, or a full queue: not the
        // session's end.
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            let after = headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(30)));
            Failure::Retry(after)
        }
        _ => Failure::Fatal(FallbackError::Protocol(format!(
            "unexpected answer {status}: {}",
            error_detail(body)
        ))),
    }
}

/// What both tasks share.
#[derive(Debug)]
struct Session {
    endpoint: Arc<Endpoint>,
    creds: Credentials,
    request_timeout: Duration,
    idle_timeout: Duration,
    heartbeat: Duration,
    poll_timeout: Duration,
    max_body: usize,
    max_event: usize,
}

impl Session {
    fn query(&self, action: Action) -> SessionQuery {
        SessionQuery {
            action,
            session: Some(self.creds),
            seq: None,
            after: None,
        }
    }
}

/// Retries after network errors: growing pauses, and the verdict that the
/// session is lost once failures have lasted longer than the idle timeout
/// (the gateway has closed it by then).
struct Backoff {
    since: Option<Instant>,
    pause: Duration,
    give_up: Duration,
}

impl Backoff {
    fn new(give_up: Duration) -> Self {
        Backoff {
            since: None,
            pause: Duration::from_millis(50),
            give_up,
        }
    }

    fn reset(&mut self) {
        self.since = None;
        self.pause = Duration::from_millis(50);
    }

    /// Wait before the next attempt, or say that it is over.
    async fn wait(&mut self, server_says: Option<Duration>) -> Result<(), FallbackError> {
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.give_up {
            return Err(FallbackError::Unreachable(since.elapsed()));
        }
        tokio::time::sleep(server_says.unwrap_or(self.pause)).await;
        self.pause = (self.pause * 2).min(Duration::from_secs(2));
        Ok(())
    }
}

// ------------------------------------------------------------------ reader

type Incoming2App = mpsc::Sender<Result<Message, FallbackError>>;

/// Read the server-to-client messages until the session ends; deliver each
/// exactly once, in order.
async fn read_loop(s: Arc<Session>, transport: Transport, tx: Incoming2App) {
    let mut reader = Reader {
        last: Seq::ZERO,
        tx,
    };
    let end = match transport {
        Transport::Sse => reader.sse(&s).await,
        Transport::Poll => reader.poll(&s).await,
    };
    if let Err(e) = end {
        let _ = reader.tx.send(Err(e)).await;
    }
}

struct Reader {
    /// The last sequence number delivered.
    last: Seq,
    tx: Incoming2App,
}

/// The reader stops: the session ended (close delivered) or the
/// application dropped the socket.
struct Stop;

impl Reader {
    /// Deliver one entry unless it is a repeat; `Err(Stop)` after the close.
    async fn deliver(&mut self, e: Entry) -> Result<Result<(), Stop>, FallbackError> {
        let close = matches!(e.payload, Payload::Close(_));
        if !close {
            if e.seq <= self.last {
                return Ok(Ok(()));
            }
            if e.seq != self.last.next() {
                return Err(FallbackError::Protocol(format!(
                    "message {} follows {}: a gap",
                    e.seq, self.last
                )));
            }
        }
        self.last = e.seq;
        if self.tx.send(Ok(e.payload.into_message())).await.is_err() || close {
            return Ok(Err(Stop));
        }
        Ok(Ok(()))
    }

    async fn sse(&mut self, s: &Session) -> Result<(), FallbackError> {
        let mut conn = Conn::default();
        let mut backoff = Backoff::new(s.idle_timeout);
        // Silence longer than this (heartbeats included) is a dead stream.
        let silence = s.heartbeat * 2 + s.request_timeout;
        loop {
            let mut req = s
                .endpoint
                .request(&s.query(Action::Sse), Bytes::new(), None);
            req.headers_mut()
                .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
            if self.last > Seq::ZERO {
                if let Ok(v) = HeaderValue::from_str(&EventId::Seq(self.last).to_string()) {
                    req.headers_mut().insert("last-event-id", v);
                }
            }
            let resp = match conn.exchange(&s.endpoint, req, s.request_timeout).await {
                Ok(r) => r,
                Err(_) => {
                    backoff.wait(None).await?;
                    continue;
                }
            };
            if resp.status() != StatusCode::OK {
                let (status, headers) = (resp.status(), resp.headers().clone());
                let body = read_body(resp, 64 << 10, s.request_timeout)
                    .await
                    .unwrap_or_default();
                match classify(status, &headers, &body) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Retry(after) => backoff.wait(after).await?,
                }
                continue;
            }
            backoff.reset();
            let mut body = resp.into_body();
            let mut parser = SseParser::new(s.max_event);
            let mut events = Vec::new();
            loop {
                let frame = match tokio::time::timeout(silence, body.frame()).await {
                    Ok(Some(Ok(f))) => f,
                    // The end of the response (its budget): resume at once.
                    Ok(None) => break,
                    Ok(Some(Err(_))) | Err(_) => {
                        conn = Conn::default();
                        backoff.wait(None).await?;
                        break;
                    }
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                parser
                    .feed(&data, &mut events)
                    .map_err(|e| FallbackError::Protocol(e.to_string()))?;
                for ev in events.drain(..) {
                    let entry = ev
                        .to_entry()
                        .map_err(|e| FallbackError::Protocol(e.to_string()))?;
                    if self.deliver(entry).await?.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    async fn poll(&mut self, s: &Session) -> Result<(), FallbackError> {
        let mut conn = Conn::default();
        let mut backoff = Backoff::new(s.idle_timeout);
        let timeout = s.poll_timeout + s.request_timeout;
        loop {
            let mut q = s.query(Action::Poll);
            q.after = Some(self.last);
            let req = s.endpoint.request(&q, Bytes::new(), None);
            let answer = match conn.exchange(&s.endpoint, req, timeout).await {
                Ok(resp) => {
                    let (status, headers) = (resp.status(), resp.headers().clone());
                    read_body(resp, s.max_event, timeout)
                        .await
                        .map(|body| (status, headers, body))
                }
                Err(e) => Err(e),
            };
            let (status, headers, body) = match answer {
                Ok(a) => a,
                Err(_) => {
                    conn = Conn::default();
                    backoff.wait(None).await?;
                    continue;
                }
            };
            if status != StatusCode::OK {
                match classify(status, &headers, &body) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Retry(after) => backoff.wait(after).await?,
                }
                continue;
            }
            backoff.reset();
            let page: PollResponse = serde_json::from_slice(&body)
                .map_err(|e| FallbackError::Protocol(format!("poll answer: {e}")))?;
            for entry in page.messages {
                if self.deliver(entry).await?.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

// ------------------------------------------------------------------ sender

/// Messages the application queued and the gateway has not acknowledged.
#[derive(Debug)]
struct Outbox {
    state: Mutex<OutboxState>,
    /// Wakes the sender task.
    work: Notify,
    max_queue: usize,
}

#[derive(Debug, Default)]
struct OutboxState {
    /// Not yet acknowledged; the front has number `acked + 1`.
    queue: VecDeque<Payload>,
    queued_bytes: usize,
    acked: Seq,
    /// The close to send after the queue.
    close: Option<CloseFrame>,
    close_acked: bool,
    failed: Option<String>,
    /// The application's tasks waiting for room, a flush or the close.
    waiters: Vec<Waker>,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(st: &OutboxState) -> Result<(), FallbackError> {
        match &st.failed {
            Some(why) => Err(FallbackError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn poll_room(&self, cx: &mut Context<'_>) -> Poll<Result<(), FallbackError>> {
        let mut st = self.lock();
        Self::check(&st)?;
        if st.close.is_some() {
            return Poll::Ready(Err(FallbackError::Closed));
        }
        if st.queued_bytes < self.max_queue {
            return Poll::Ready(Ok(()));
        }
        st.waiters.push(cx.waker().clone());
        Poll::Pending
    }

    fn push(&self, m: Message) -> Result<(), FallbackError> {
        let mut st = self.lock();
        Self::check(&st)?;
        match m {
            Message::Close(frame) => {
                if st.close.is_none() {
                    st.close =
                        Some(frame.unwrap_or_else(|| CloseFrame::new(CloseCode::NORMAL, "")));
                }
            }
            _ if st.close.is_some() => return Err(FallbackError::Closed),
            m => match Payload::from_message(m) {
                Some(p) => {
                    st.queued_bytes += p.len();
                    st.queue.push_back(p);
                }
                // Pings and pongs: the gateway runs the backend's heartbeat.
                None => return Ok(()),
            },
        }
        drop(st);
        self.work.notify_one();
        Ok(())
    }

    fn poll_flushed(&self, cx: &mut Context<'_>) -> Poll<Result<(), FallbackError>> {
        let mut st = self.lock();
        Self::check(&st)?;
        if st.queue.is_empty() {
            return Poll::Ready(Ok(()));
        }
        st.waiters.push(cx.waker().clone());
        Poll::Pending
    }

    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<Result<(), FallbackError>> {
        let mut st = self.lock();
        Self::check(&st)?;
        if st.close_acked {
            return Poll::Ready(Ok(()));
        }
        st.waiters.push(cx.waker().clone());
        Poll::Pending
    }

    fn update(&self, f: impl FnOnce(&mut OutboxState)) {
        let mut st = self.lock();
        f(&mut st);
        for w in st.waiters.drain(..) {
            w.wake();
        }
    }
}

/// What the sender does next.
enum Job {
    /// POST these messages, the first numbered `first`.
    Send {
        first: Seq,
        batch: Vec<Payload>,
    },
    /// POST the close.
    Close(CloseFrame),
    Done,
}

async fn send_loop(s: Arc<Session>, outbox: Arc<Outbox>, conn: Conn) {
    let mut sender = Sender {
        conn,
        backoff: Backoff::new(s.idle_timeout),
    };
    if let Err(e) = sender.run(&s, &outbox).await {
        outbox.update(|st| st.failed = Some(e.to_string()));
    }
}

struct Sender {
    conn: Conn,
    backoff: Backoff,
}

impl Sender {
    async fn run(&mut self, s: &Session, outbox: &Outbox) -> Result<(), FallbackError> {
        loop {
            let notified = outbox.work.notified();
            let job = {
                let st = outbox.lock();
                next_job(&st, s.max_body)
            };
            match job {
                None => notified.await,
                Some(Job::Done) => return Ok(()),
                Some(Job::Send { first, batch }) => {
                    let (body, ct) = match batch.as_slice() {
                        [Payload::Text(t)] => (t.as_bytes().clone(), SendBody::Text),
                        [Payload::Binary(b)] => (b.clone(), SendBody::Binary),
                        many => (Bytes::from(batch_body(many)), SendBody::Batch),
                    };
                    let mut q = s.query(Action::Send);
                    q.seq = Some(first);
                    let body = self.post(s, &q, body, ct.content_type()).await?;
                    let ack: SendAck = serde_json::from_slice(&body)
                        .map_err(|e| FallbackError::Protocol(format!("send answer: {e}")))?;
                    outbox.update(|st| {
                        while st.acked < ack.acked {
                            let Some(p) = st.queue.pop_front() else { break };
                            st.queued_bytes -= p.len();
                            st.acked = st.acked.next();
                        }
                    });
                }
                Some(Job::Close(frame)) => {
                    let body = CloseRequest {
                        code: frame.code.0,
                        reason: frame.reason,
                    };
                    let body = serde_json::to_vec(&body)
                        .map_err(|e| FallbackError::Protocol(e.to_string()))?;
                    let body = Bytes::from(body);
                    self.post(s, &s.query(Action::Close), body, "application/json")
                        .await?;
                    outbox.update(|st| st.close_acked = true);
                    return Ok(());
                }
            }
        }
    }

    /// POST until the gateway answers 200 (the same request again after a
    /// network error: it is numbered, the gateway takes it once).
    async fn post(
        &mut self,
        s: &Session,
        q: &SessionQuery,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<Bytes, FallbackError> {
        loop {
            let req = s.endpoint.request(q, body.clone(), Some(content_type));
            let answer = match self
                .conn
                .exchange(&s.endpoint, req, s.request_timeout)
                .await
            {
                Ok(resp) => {
                    let (status, headers) = (resp.status(), resp.headers().clone());
                    read_body(resp, 64 << 10, s.request_timeout)
                        .await
                        .map(|b| (status, headers, b))
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok((StatusCode::OK, _, b)) => {
                    self.backoff.reset();
                    return Ok(b);
                }
                Ok((status, headers, b)) => match classify(status, &headers, &b) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Retry(after) => self.backoff.wait(after).await?,
                },
                Err(_) => {
                    self.conn = Conn::default();
                    self.backoff.wait(None).await?;
                }
            }
        }
    }
}

/// The next POST: the queued messages from the front (as many as fit in
/// the gateway's body limit, at least one), else the close once the queue
/// is empty.
fn next_job(st: &OutboxState, max_body: usize) -> Option<Job> {
    if st.close_acked {
        return Some(Job::Done);
    }
    if !st.queue.is_empty() {
        let mut bytes = 0usize;
        let mut batch = Vec::new();
        for p in &st.queue {
            // Base64 and JSON grow a message by about a third.
            let cost = p.len() / 3 * 4 + 32;
            if !batch.is_empty() && bytes + cost > max_body {
                break;
            }
            bytes += cost;
            batch.push(p.clone());
        }
        return Some(Job::Send {
            first: st.acked.next(),
            batch,
        });
    }
    st.close.clone().map(Job::Close)
}

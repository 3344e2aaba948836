//! The fallback session wire format (`docs/fallback.md`), as types: the query
//! parameters of each request, session ids and tokens, sequence numbers,
//! SSE event ids, and the JSON bodies. Parsed and produced here only, by the
//! gateway's session engine and by the client in [`super`].
//!
//! Sans-IO: no sockets, no clocks.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use switchyard_proto::message::Utf8Bytes;
use switchyard_proto::{CloseCode, CloseFrame, Message};

/// The query parameter that makes a request a session request.
pub const ACTION_PARAM: &str = "sw";
const SID_PARAM: &str = "sid";
const TOKEN_PARAM: &str = "token";
const SEQ_PARAM: &str = "seq";
const AFTER_PARAM: &str = "after";
/// Every parameter the session protocol owns (removed from the query that
/// reaches the backend).
const SESSION_PARAMS: [&str; 5] = [ACTION_PARAM, SID_PARAM, TOKEN_PARAM, SEQ_PARAM, AFTER_PARAM];

/// The close code a session ends with when a reader asks for messages that
/// have left the replay window: it cannot be resumed without a gap.
pub const CLOSE_RESUME_WINDOW: CloseCode = CloseCode(4410);
/// Its reason.
pub const RESUME_WINDOW_REASON: &str = "resume window exceeded";

/// What is wrong with a request of the session protocol (the gateway answers
/// 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// `sw` names no action.
    #[error("unknown sw={0:?}; use open, sse, poll, send or close")]
    UnknownAction(String),
    /// A parameter appears twice.
    #[error("the query parameter {0} appears more than once")]
    Duplicate(&'static str),
    /// A parameter the action needs is missing.
    #[error("sw={action} needs the query parameter {param}")]
    Missing {
        /// The action.
        action: Action,
        /// The parameter.
        param: &'static str,
    },
    /// A session id that is not 32 hexadecimal digits.
    #[error("sid {0:?} is not a session id (32 hexadecimal digits)")]
    BadSessionId(String),
    /// `seq`, `after` or `Last-Event-ID` is not a sequence number.
    #[error("{what} {value:?} is not a sequence number (decimal digits, at most 2^64-1)")]
    BadSeq {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// `seq` is 0 (client messages are numbered from 1).
    #[error("seq=0: client messages are numbered from 1")]
    ZeroSeq,
    /// A JSON body that does not parse.
    #[error("malformed JSON body: {0}")]
    Json(String),
    /// A binary payload that is not base64.
    #[error("binary data is not base64: {0}")]
    Base64(String),
    /// A text body that is not UTF-8.
    #[error("a text message must be UTF-8")]
    NotUtf8,
    /// An empty message batch.
    #[error("the message batch is empty")]
    EmptyBatch,
    /// A close code the client may not send.
    #[error("close code {0} may not be sent by a client (use 1000 or 3000-4999)")]
    BadCloseCode(u16),
    /// A close reason over 123 bytes.
    #[error("the close reason is {0} bytes; at most 123 fit in a close frame")]
    LongReason(usize),
    /// An SSE event that is not one of ours.
    #[error("unexpected SSE event: {0}")]
    BadEvent(String),
}

/// The five requests of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `POST ?sw=open`: open a session.
    Open,
    /// `GET ?sw=sse`: the server-to-client messages as `text/event-stream`.
    Sse,
    /// `GET ?sw=poll`: a long poll for the server-to-client messages.
    Poll,
    /// `POST ?sw=send`: client-to-server messages.
    Send,
    /// `POST ?sw=close`: close the session.
    Close,
}

impl Action {
    /// The `sw` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Open => "open",
            Action::Sse => "sse",
            Action::Poll => "poll",
            Action::Send => "send",
            Action::Close => "close",
        }
    }

    /// The HTTP method the action is requested with.
    pub fn method(self) -> http::Method {
        match self {
            Action::Sse | Action::Poll => http::Method::GET,
            Action::Open | Action::Send | Action::Close => http::Method::POST,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, WireError> {
        Ok(match s {
            "open" => Action::Open,
            "sse" => Action::Sse,
            "poll" => Action::Poll,
            "send" => Action::Send,
            "close" => Action::Close,
            other => return Err(WireError::UnknownAction(other.to_string())),
        })
    }
}

/// The two fallback transports (how the client reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Server-Sent Events (`sw=sse`) plus POSTs.
    Sse,
    /// Long polling (`sw=poll`) plus POSTs.
    Poll,
}

impl Transport {
    /// The name used in JSON, metrics and `SwitchyardSocket.transport`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// 128 bits written as 32 lowercase hexadecimal digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Hex128([u8; 16]);

impl Hex128 {
    fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            *o = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(Hex128(out))
    }
}

impl fmt::Display for Hex128 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A session's id: 128 random bits (the gateway draws them from a CSPRNG).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(Hex128);

/// The secret that authenticates the requests of a session after its open:
/// 128 random bits, known only to the client that opened it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token(Hex128);

macro_rules! hex128_type {
    ($t:ident, $what:literal) => {
        impl $t {
            /// From 16 random bytes.
            pub const fn from_bytes(b: [u8; 16]) -> Self {
                $t(Hex128(b))
            }

            /// The 16 bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0 .0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Hex128::parse(&s)
                    .map($t)
                    .ok_or_else(|| de::Error::custom(concat!("not a ", $what)))
            }
        }
    };
}

hex128_type!(SessionId, "session id");
hex128_type!(Token, "token");

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// Never shows the secret.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

impl FromStr for SessionId {
    type Err = WireError;
    fn from_str(s: &str) -> Result<Self, WireError> {
        Hex128::parse(s)
            .map(SessionId)
            .ok_or_else(|| WireError::BadSessionId(s.chars().take(40).collect()))
    }
}

impl Token {
    /// Parse; `None` when it cannot be a token (the gateway answers that
    /// like a wrong token: 403).
    pub fn parse(s: &str) -> Option<Token> {
        Hex128::parse(s).map(Token)
    }
}

/// A sequence number: server-to-client messages of a session are numbered
/// from 1 by the gateway, client-to-server messages from 1 by the client.
/// 0 means "before the first".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// Before the first message.
    pub const ZERO: Seq = Seq(0);

    /// The next number (saturating: 2^64 messages do not happen).
    pub fn next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }

    /// Parse decimal digits only (no sign, no space, no overflow).
    pub fn parse(what: &'static str, s: &str) -> Result<Seq, WireError> {
        let bad = || WireError::BadSeq {
            what,
            value: s.chars().take(40).collect(),
        };
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map(Seq).map_err(|_| bad())
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Seq {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Seq {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Seq)
    }
}

/// The session a request names: its id and token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    /// The session.
    pub sid: SessionId,
    /// Its token as sent (`None`: missing or not even shaped like a token;
    /// answered 403 like a wrong one).
    pub token: Option<Token>,
}

/// The session parameters of a request's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionQuery {
    /// `sw`.
    pub action: Action,
    /// `sid` and `token`; `None` for `open` (and for a receive-only `sse`
    /// that opens a session by itself).
    pub session: Option<Credentials>,
    /// `seq` of `send` (the number of its first message).
    pub seq: Option<Seq>,
    /// `after` of `poll` (the last message the client has).
    pub after: Option<Seq>,
}

/// The `key=value` pairs of a query (a pair without `=` has an empty value).
fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Whether a request with this query is a session request (`sw` present).
pub fn is_session_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| session_action(q).is_some())
}

/// The value of the query's first `sw` parameter, the rest of the query
/// unchecked (a dispatcher's quick look; [`SessionQuery::parse`] checks all).
pub fn session_action(query: &str) -> Option<&str> {
    pairs(query)
        .find(|(k, _)| *k == ACTION_PARAM)
        .map(|(_, v)| v)
}

/// The query without the session parameters (what the backend sees of it),
/// `None` when nothing is left.
pub fn strip_session_params(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| {
            let key = p.split_once('=').map_or(*p, |(k, _)| k);
            !p.is_empty() && !SESSION_PARAMS.contains(&key)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

impl SessionQuery {
    /// Parse the session parameters of a query; other parameters are left
    /// alone (they belong to the application). Values are taken as they are
    /// (ours never need percent-encoding).
    pub fn parse(query: &str) -> Result<SessionQuery, WireError> {
        let mut found: [Option<&str>; 5] = [None; 5];
        for (k, v) in pairs(query) {
            if let Some(i) = SESSION_PARAMS.iter().position(|p| *p == k) {
                if found[i].replace(v).is_some() {
                    return Err(WireError::Duplicate(SESSION_PARAMS[i]));
                }
            }
        }
        let [action, sid, token, seq, after] = found;
        let action: Action = action
            .ok_or_else(|| WireError::UnknownAction(String::new()))?
            .parse()?;
        let session = match sid {
            Some(s) => Some(Credentials {
                sid: s.parse()?,
                token: token.and_then(Token::parse),
            }),
            None => None,
        };
        let missing = |param| WireError::Missing { action, param };
        if session.is_none() && matches!(action, Action::Poll | Action::Send | Action::Close) {
            return Err(missing(SID_PARAM));
        }
        let seq = seq.map(|s| Seq::parse(SEQ_PARAM, s)).transpose()?;
        let after = after.map(|s| Seq::parse(AFTER_PARAM, s)).transpose()?;
        match action {
            Action::Send if seq.is_none() => return Err(missing(SEQ_PARAM)),
            Action::Send if seq == Some(Seq::ZERO) => return Err(WireError::ZeroSeq),
            Action::Poll if after.is_none() => return Err(missing(AFTER_PARAM)),
            _ => {}
        }
        Ok(SessionQuery {
            action,
            session,
            seq,
            after,
        })
    }

    /// The query string (without `?`), as a client sends it.
    pub fn to_query(&self) -> String {
        let mut q = format!("{ACTION_PARAM}={}", self.action);
        if let Some(c) = &self.session {
            q.push_str(&format!("&{SID_PARAM}={}", c.sid));
            if let Some(t) = &c.token {
                q.push_str(&format!("&{TOKEN_PARAM}={t}"));
            }
        }
        if let Some(s) = self.seq {
            q.push_str(&format!("&{SEQ_PARAM}={s}"));
        }
        if let Some(a) = self.after {
            q.push_str(&format!("&{AFTER_PARAM}={a}"));
        }
        q
    }
}

/// The `id:` of an SSE event, sent back by the client as `Last-Event-ID`.
///
/// A session opened with `sw=open` numbers its events with the bare
/// sequence number (the stream's URL names the session). A session that a
/// bare `new EventSource('...?sw=sse')` opened by itself has nothing else to
/// resume with (the browser reconnects to the same URL), so its ids carry
/// the session too: `SID.TOKEN.SEQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventId {
    /// `SEQ`.
    Seq(Seq),
    /// `SID.TOKEN.SEQ`.
    Resume {
        /// The session.
        sid: SessionId,
        /// Its token.
        token: Token,
        /// The sequence number.
        seq: Seq,
    },
}

impl EventId {
    /// The sequence number.
    pub fn seq(&self) -> Seq {
        match self {
            EventId::Seq(s) | EventId::Resume { seq: s, .. } => *s,
        }
    }

    /// Parse a `Last-Event-ID` value.
    pub fn parse(s: &str) -> Result<EventId, WireError> {
        const WHAT: &str = "Last-Event-ID";
        let mut parts = s.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(seq), None, None, None) => Seq::parse(WHAT, seq).map(EventId::Seq),
            (Some(sid), Some(token), Some(seq), None) => Ok(EventId::Resume {
                sid: sid.parse()?,
                token: Token::parse(token).ok_or_else(|| WireError::BadSeq {
                    what: WHAT,
                    value: s.chars().take(80).collect(),
                })?,
                seq: Seq::parse(WHAT, seq)?,
            }),
            _ => Err(WireError::BadSeq {
                what: WHAT,
                value: s.chars().take(80).collect(),
            }),
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventId::Seq(s) => s.fmt(f),
            EventId::Resume { sid, token, seq } => write!(f, "{sid}.{token}.{seq}"),
        }
    }
}

/// One message of a session, in either direction: what a WebSocket message
/// is, minus control frames, plus the end (`Close`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// The end of the session: the close code and reason. From the gateway
    /// it may carry 1005 (the backend sent no code) or 1006 (the backend
    /// went away without a close frame), as a WebSocket API reports them.
    Close(CloseFrame),
}

impl Payload {
    /// Payload bytes (what the replay window and the body limits count).
    pub fn len(&self) -> usize {
        match self {
            Payload::Text(t) => t.len(),
            Payload::Binary(b) => b.len(),
            Payload::Close(f) => 2 + f.reason.len(),
        }
    }

    /// Whether it carries no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A data message of a WebSocket (`None` for pings, pongs and close).
    pub fn from_message(m: Message) -> Option<Payload> {
        match m {
            Message::Text(t) => Some(Payload::Text(t)),
            Message::Binary(b) => Some(Payload::Binary(b)),
            _ => None,
        }
    }

    /// As a WebSocket message.
    pub fn into_message(self) -> Message {
        match self {
            Payload::Text(t) => Message::Text(t),
            Payload::Binary(b) => Message::Binary(b),
            Payload::Close(f) => Message::Close(Some(f)),
        }
    }
}

/// One server-to-client message with its sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its number in the session (from 1).
    pub seq: Seq,
    /// The message.
    pub payload: Payload,
}

/// The JSON of a payload: `{"type":"text","data":"..."}`,
/// `{"type":"binary","data":"<base64>"}`, `{"type":"close","code":1000,"reason":"..."}`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum JsonPayload {
    Text {
        data: String,
    },
    Binary {
        data: String,
    },
    Close {
        code: u16,
        #[serde(default)]
        reason: String,
    },
}

impl JsonPayload {
    fn into_payload(self) -> Result<Payload, WireError> {
        Ok(match self {
            JsonPayload::Text { data } => Payload::Text(data.into()),
            JsonPayload::Binary { data } => Payload::Binary(decode_base64(&data)?),
            JsonPayload::Close { code, reason } => {
                Payload::Close(CloseFrame::new(code.into(), reason))
            }
        })
    }
}

/// Decode standard base64 (with or without padding).
pub fn decode_base64(s: &str) -> Result<Bytes, WireError> {
    let trimmed = s.trim_end_matches('=');
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .map(Bytes::from)
        .map_err(|e| WireError::Base64(e.to_string()))
}

/// Encode standard base64 (padded).
pub fn encode_base64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

fn serialize_payload<M: SerializeMap>(map: &mut M, p: &Payload) -> Result<(), M::Error> {
    match p {
        Payload::Text(t) => {
            map.serialize_entry("type", "text")?;
            map.serialize_entry("data", t.as_str())
        }
        Payload::Binary(b) => {
            map.serialize_entry("type", "binary")?;
            map.serialize_entry("data", &encode_base64(b))
        }
        Payload::Close(f) => {
            map.serialize_entry("type", "close")?;
            map.serialize_entry("code", &f.code.0)?;
            map.serialize_entry("reason", &f.reason)
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        serialize_payload(&mut map, self)?;
        map.end()
    }
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("seq", &self.seq)?;
        serialize_payload(&mut map, &self.payload)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            seq: Seq,
            #[serde(flatten)]
            payload: serde_json::Value,
        }
        let w = Wire::deserialize(d)?;
        let payload = JsonPayload::deserialize(w.payload)
            .map_err(de::Error::custom)?
            .into_payload()
            .map_err(de::Error::custom)?;
        Ok(Entry {
            seq: w.seq,
            payload,
        })
    }
}

/// The JSON body of `open` (all optional; an empty body is `{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// The subprotocols the client offers, in its order of preference.
    #[serde(default)]
    pub protocols: Vec<String>,
    /// The transport the client means to read with (for metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

impl OpenRequest {
    /// Parse an `open` body: empty, or the JSON object. Every subprotocol
    /// must be an HTTP token, as in `Sec-WebSocket-Protocol`.
    pub fn parse(body: &[u8]) -> Result<OpenRequest, WireError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OpenRequest::default());
        }
        let r: OpenRequest =
            serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
        if let Some(bad) = r
            .protocols
            .iter()
            .find(|p| !switchyard_proto::extensions::is_token(p))
        {
            return Err(WireError::Json(format!(
                "subprotocol {bad:?} is not an HTTP token"
            )));
        }
        Ok(r)
    }
}

/// The JSON answer to `open`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenResponse {
    /// The session id.
    pub sid: SessionId,
    /// The token for every later request.
    pub token: Token,
    /// The subprotocol the backend chose, if any.
    pub protocol: Option<String>,
    /// SSE heartbeat comments come at least this often (milliseconds).
    pub heartbeat_ms: u64,
    /// A poll is held at most this long (milliseconds).
    pub poll_timeout_ms: u64,
    /// The session is closed when no reader came for this long (milliseconds).
    pub idle_timeout_ms: u64,
    /// The largest request body (`send`) in bytes.
    pub max_body: usize,
    /// The transports the route offers.
    pub transports: Vec<Transport>,
}

/// The JSON answer to `poll`: the messages after `after` (empty when the
/// poll timed out); a `close` entry ends the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollResponse {
    /// In order.
    pub messages: Vec<Entry>,
}

/// The JSON answer to `send` and `close`: every client message up to and
/// including `acked` has been accepted (a retried message is not accepted
/// twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAck {
    /// The highest client sequence number accepted.
    pub acked: Seq,
}

/// The JSON body of `close` (optional: 1000 with no reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    /// 1000 or 3000-4999.
    #[serde(default = "normal_code")]
    pub code: u16,
    /// At most 123 bytes.
    #[serde(default)]
    pub reason: String,
}

fn normal_code() -> u16 {
    1000
}

impl CloseRequest {
    /// Parse a `close` body (empty: 1000) and check what a client may send.
    pub fn parse(body: &[u8]) -> Result<CloseFrame, WireError> {
        let r = if body.iter().all(u8::is_ascii_whitespace) {
            CloseRequest {
                code: normal_code(),
                reason: String::new(),
            }
        } else {
            serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?
        };
        if !(r.code == 1000 || (3000..=4999).contains(&r.code)) {
            return Err(WireError::BadCloseCode(r.code));
        }
        if r.reason.len() > 123 {
            return Err(WireError::LongReason(r.reason.len()));
        }
        Ok(CloseFrame::new(r.code.into(), r.reason))
    }
}

/// How a `send` body is to be read, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendBody {
    /// `text/plain` (UTF-8): one text message.
    Text,
    /// `application/octet-stream`: one binary message.
    Binary,
    /// `application/json`: a batch, `[{"type":"text","data":"..."}, ...]`.
    Batch,
}

impl SendBody {
    /// From the `Content-Type` value (parameters ignored); `None` for any
    /// other media type.
    pub fn from_content_type(ct: Option<&str>) -> Option<SendBody> {
        let essence = ct?.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "text/plain" => Some(SendBody::Text),
            "application/octet-stream" => Some(SendBody::Binary),
            "application/json" => Some(SendBody::Batch),
            _ => None,
        }
    }

    /// The `Content-Type` a client sends.
    pub fn content_type(self) -> &'static str {
        match self {
            SendBody::Text => "text/plain; charset=utf-8",
            SendBody::Binary => "application/octet-stream",
            SendBody::Batch => "application/json",
        }
    }

    /// The messages of a body.
    pub fn parse(self, body: Bytes) -> Result<Vec<Payload>, WireError> {
        match self {
            SendBody::Text => Utf8Bytes::try_from_bytes(body)
                .map(|t| vec![Payload::Text(t)])
                .ok_or(WireError::NotUtf8),
            SendBody::Binary => Ok(vec![Payload::Binary(body)]),
            SendBody::Batch => {
                let items: Vec<JsonPayload> =
                    serde_json::from_slice(&body).map_err(|e| WireError::Json(e.to_string()))?;
                if items.is_empty() {
                    return Err(WireError::EmptyBatch);
                }
                items
                    .into_iter()
                    .map(|i| match i {
                        JsonPayload::Close { .. } => Err(WireError::Json(
                            "a batch carries text and binary messages; close with sw=close".into(),
                        )),
                        other => other.into_payload(),
                    })
                    .collect()
            }
        }
    }
}

/// A batch of client messages as the JSON body of `send`.
pub fn batch_body(messages: &[Payload]) -> Vec<u8> {
    // Serializing our own payload types cannot fail.
    serde_json::to_vec(messages).unwrap_or_default()
}

/// The JSON body of an error answer: a fixed label, a sentence, and for a
/// gap (409) the client sequence number the gateway expects next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A fixed label (`unknown_session`, `token`, `gap`, `body_too_large`...).
    pub error: String,
    /// What happened and what to do.
    pub detail: String,
    /// For 409: the `seq` to send next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Seq>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn session_id_and_token_round_trip_as_hex() {
        let id: SessionId = SID.parse().unwrap();
        assert_eq!(id.to_string(), SID);
        assert_eq!(id.as_bytes()[0], 0x01);
        let upper: SessionId = SID.to_uppercase().parse().unwrap();
        assert_eq!(upper, id);
        for bad in [
            "",
            "0123",
            &format!("{SID}0"),
            &SID.replace('a', "g"),
            "+123456789abcdef0123456789abcdef",
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad:?}");
            assert!(Token::parse(bad).is_none(), "{bad:?}");
        }
        let t = Token::from_bytes([7; 16]);
        assert_eq!(
            format!("{t:?}"),
            "Token(..)",
            "Debug never shows the secret"
        );
        assert_eq!(Token::parse(&t.to_string()), Some(t));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{SID}\""));
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
    }

    #[test]
    fn seq_accepts_digits_only() {
        assert_eq!(Seq::parse("seq", "0").unwrap(), Seq(0));
        assert_eq!(
            Seq::parse("seq", "18446744073709551615").unwrap(),
            Seq(u64::MAX)
        );
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "1e3",
            "0x10",
            "18446744073709551616",
            "١",
        ] {
            assert!(
                matches!(
                    Seq::parse("after", bad),
                    Err(WireError::BadSeq { what: "after", .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(Seq(u64::MAX).next(), Seq(u64::MAX));
    }

    #[test]
    fn query_parse_per_action() {
        let q = SessionQuery::parse("sw=open").unwrap();
        assert_eq!((q.action, q.session), (Action::Open, None));
        let q =
            SessionQuery::parse(&format!("room=1&sw=send&sid={SID}&token={SID}&seq=3")).unwrap();
        assert_eq!(q.action, Action::Send);
        assert_eq!(q.seq, Some(Seq(3)));
        let c = q.session.unwrap();
        assert_eq!(c.sid.to_string(), SID);
        assert!(c.token.is_some());
        // A malformed token is kept as "no token" (answered 403, not 400).
        let q = SessionQuery::parse(&format!("sw=poll&sid={SID}&token=zz&after=0")).unwrap();
        assert_eq!(q.session.unwrap().token, None);
        // Receive-only SSE: no sid.
        assert_eq!(SessionQuery::parse("sw=sse").unwrap().session, None);
        // The round trip of what a client sends.
        let q = SessionQuery::parse(&format!("sw=poll&sid={SID}&token={SID}&after=12")).unwrap();
        assert_eq!(SessionQuery::parse(&q.to_query()).unwrap(), q);
    }

    #[test]
    fn query_errors() {
        let cases = [
            ("sw=nope", "unknown sw"),
            ("x=1", "unknown sw"),
            ("sw=open&sw=open", "more than once"),
            ("sw=poll", "needs the query parameter sid"),
            (
                &format!("sw=poll&sid={SID}&token={SID}") as &str,
                "needs the query parameter after",
            ),
            (
                &format!("sw=send&sid={SID}&token={SID}"),
                "needs the query parameter seq",
            ),
            (
                &format!("sw=send&sid={SID}&token={SID}&seq=0"),
                "numbered from 1",
            ),
            (
                &format!("sw=send&sid={SID}&token={SID}&seq=x"),
                "not a sequence number",
            ),
            (
                &format!("sw=poll&sid={SID}&token={SID}&after=-1"),
                "not a sequence number",
            ),
            ("sw=poll&sid=123&after=1", "not a session id"),
        ];
        for (q, want) in cases {
            let e = SessionQuery::parse(q).unwrap_err().to_string();
            assert!(e.contains(want), "{q}: {e}");
        }
    }

    #[test]
    fn session_params_are_stripped_for_the_backend() {
        assert!(is_session_query(Some("a=1&sw=open")));
        assert!(!is_session_query(Some("a=1&swx=open")));
        assert!(!is_session_query(None));
        assert_eq!(session_action("a=1&sw=open&sw=send"), Some("open"));
        assert_eq!(session_action("a=1&sw&x"), Some(""));
        assert_eq!(session_action("a=1&swx=open"), None);
        assert_eq!(
            strip_session_params(&format!("room=7&sw=send&sid={SID}&x&seq=1")).as_deref(),
            Some("room=7&x")
        );
        assert_eq!(strip_session_params("sw=open"), None);
    }

    #[test]
    fn event_ids() {
        assert_eq!(EventId::parse("42").unwrap(), EventId::Seq(Seq(42)));
        let long = format!("{SID}.{SID}.7");
        let id = EventId::parse(&long).unwrap();
        assert_eq!(id.seq(), Seq(7));
        assert_eq!(id.to_string(), long);
        for bad in [
            "",
            "x",
            "1.2",
            &format!("{SID}.zz.1"),
            &format!("{SID}.{SID}.1.2"),
        ] {
            assert!(EventId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn entries_as_json() {
        let entries = vec![
            Entry {
                seq: Seq(1),
                payload: Payload::Text("a\r\nb \"q\"".into()),
            },
            Entry {
                seq: Seq(2),
                payload: Payload::Binary(Bytes::from_static(&[0, 1, 255])),
            },
            Entry {
                seq: Seq(3),
                payload: Payload::Close(CloseFrame::new(CloseCode(4000), "bye")),
            },
        ];
        let json = serde_json::to_string(&PollResponse {
            messages: entries.clone(),
        })
        .unwrap();
        assert_eq!(
            json,
            r#"{"messages":[{"seq":1,"type":"text","data":"a\r\nb \"q\""},{"seq":2,"type":"binary","data":"AAH/"},{"seq":3,"type":"close","code":4000,"reason":"bye"}]}"#
        );
        let back: PollResponse = serde_json::from_str(&json).unwrap();
        assert_eq!(back.messages, entries);
        assert!(serde_json::from_str::<Entry>(r#"{"seq":1,"type":"binary","data":"!!"}"#).is_err());
        assert!(serde_json::from_str::<Entry>(r#"{"seq":1,"type":"nope"}"#).is_err());
    }

    #[test]
    fn send_bodies() {
        assert_eq!(
            SendBody::from_content_type(Some("text/plain; charset=utf-8")),
            Some(SendBody::Text)
        );
        assert_eq!(
            SendBody::from_content_type(Some("Application/JSON")),
            Some(SendBody::Batch)
        );
        assert_eq!(
            SendBody::from_content_type(Some("application/octet-stream")),
            Some(SendBody::Binary)
        );
        assert_eq!(SendBody::from_content_type(Some("image/png")), None);
        assert_eq!(SendBody::from_content_type(None), None);

        let text = SendBody::Text
            .parse(Bytes::from_static("héllo".as_bytes()))
            .unwrap();
        assert_eq!(text, vec![Payload::Text("héllo".into())]);
        assert_eq!(
            SendBody::Text.parse(Bytes::from_static(&[0xff])),
            Err(WireError::NotUtf8)
        );
        let batch = vec![
            Payload::Text("x".into()),
            Payload::Binary(Bytes::from_static(b"\x00\x01")),
        ];
        assert_eq!(
            SendBody::Batch.parse(batch_body(&batch).into()).unwrap(),
            batch
        );
        assert_eq!(
            SendBody::Batch.parse(Bytes::from_static(b"[]")),
            Err(WireError::EmptyBatch)
        );
        for bad in [
            &b"{"[..],
            b"[{\"type\":\"close\",\"code\":1000}]",
            b"[{\"type\":\"text\"}]",
            b"[{\"type\":\"text\",\"data\":\"x\",\"extra\":1}]",
        ] {
            assert!(
                SendBody::Batch.parse(Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn open_and_close_bodies() {
        assert_eq!(OpenRequest::parse(b"").unwrap(), OpenRequest::default());
        let r = OpenRequest::parse(br#"{"protocols":["chat.v1","chat.v2"],"transport":"poll"}"#)
            .unwrap();
        assert_eq!(r.protocols, ["chat.v1", "chat.v2"]);
        assert_eq!(r.transport, Some(Transport::Poll));
        assert!(OpenRequest::parse(br#"{"protocols":["a b"]}"#).is_err());
        assert!(
            OpenRequest::parse(br#"{"protocol":["a"]}"#).is_err(),
            "unknown field"
        );
        assert!(OpenRequest::parse(b"[").is_err());

        assert_eq!(
            CloseRequest::parse(b"").unwrap(),
            CloseFrame::new(CloseCode::NORMAL, "")
        );
        assert_eq!(
            CloseRequest::parse(br#"{"code":4001,"reason":"done"}"#).unwrap(),
            CloseFrame::new(CloseCode(4001), "done")
        );
        for (body, want) in [
            (
                r#"{"code":1001}"#.to_string(),
                WireError::BadCloseCode(1001),
            ),
            (
                r#"{"code":2999}"#.to_string(),
                WireError::BadCloseCode(2999),
            ),
            (
                format!(r#"{{"code":1000,"reason":"{}"}}"#, "x".repeat(124)),
                WireError::LongReason(124),
            ),
        ] {
            assert_eq!(CloseRequest::parse(body.as_bytes()), Err(want));
        }
    }
}

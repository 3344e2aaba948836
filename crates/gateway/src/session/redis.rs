//! [`RedisStore`]: the session state in Redis, shared by every gateway
//! instance of a cluster (`docs/cluster.md` has the key layout, the TTLs
//! and the commands per message).
//!
//! Each store operation is one Lua script (one round trip, atomic on the
//! session's keys), so the rules of [`SessionStore`] hold across instances
//! exactly as in [`super::memory::MemoryStore`]. Every script that changes what a
//! waiter looks for publishes on the session's channel whom the change
//! concerns (`session::wakeups::Audience`); those waiters re-run their check when the
//! message arrives, and at least every `RECHECK` (1 s) so that a notification
//! lost while the subscriber reconnects delays a waiter but never strands
//! it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use switchyard::fallback::wire::{Entry, Payload, Seq, SessionId, Transport};
use switchyard::{CloseCode, CloseFrame, Utf8Bytes};

use super::settings::FallbackSettings;
use super::store::{
    Aborted, Accepted, Inbound, Pushed, ReadOutcome, ReadStart, ReaderTicket, SessionRecord,
    SessionStore, StoreError, StoreFuture, TokenDigest, ENTRY_COST,
};
use super::wakeups::{Audience, Mark, Wakeups, RECHECK};
use crate::sync::lock;

/// Longest wait for a connection to the server (per attempt).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for the answer to one command: every script is short, so
/// a server that does not answer within this is treated as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Records kept by one instance; past this the cache starts over (the
/// sessions still in use read theirs again, once).
const RECORDS_CACHED: usize = 4096;

/// How long the keys of a live session outlive the last activity beyond its
/// idle timeout: the owner ends a session without reader after the idle
/// timeout; the keys of a session whose owner died go after this.
const LIVE_GRACE_MS: u64 = 60_000;

/// How long the owner of a session may go without polling the store
/// before a reader ends the session with close 1011 "session owner lost":
/// twice the heartbeat interval the client was promised, and at least
/// three of the owner's one-second re-checks.
fn owner_limit(s: &FallbackSettings) -> Duration {
    (s.heartbeat_interval * 2).max(RECHECK * 3)
}

/// Lua shared by every script. `KEYS`: the session's meta hash, its log
/// stream, its inbound stream. The last `ARGV` is the session's channel.
const PRELUDE: &str = r#"
local M, LOG, IN = KEYS[1], KEYS[2], KEYS[3]
local CH = ARGV[#ARGV]
if redis.call('EXISTS', M) == 0 then return {'U'} end
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function get(f) return tonumber(redis.call('HGET', M, f) or '0') end
local function touch()
  local idle = get('idle')
  local ttl = idle * 2 + tonumber(redis.call('HGET', M, 'grace'))
  if get('ended') > 0 then ttl = idle end
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ttl) end
end
local function seq_of(id) return tonumber(string.match(id, '^(%d+)')) end
local function field(e, name)
  local f = e[2]
  for i = 1, #f, 2 do if f[i] == name then return f[i + 1] end end
  return nil
end
-- Drop delivered entries from the front while the log is over the window;
-- the close entry stays.
local function trim()
  local window, delivered = get('window'), get('delivered')
  local logb = get('logb')
  while logb > window do
    local e = redis.call('XRANGE', LOG, '-', '+', 'COUNT', 1)[1]
    if not e then break end
    local s = seq_of(e[1])
    if s > delivered or field(e, 'k') == 'c' then break end
    redis.call('XDEL', LOG, e[1])
    logb = logb - tonumber(field(e, 'n'))
  end
  redis.call('HSET', M, 'logb', logb)
end
-- Append one entry (kind, data, cost, code) to the log.
local function append(k, d, n, c)
  local last = get('last') + 1
  if k == 'c' then
    redis.call('XADD', LOG, last .. '-1', 'k', k, 'n', n, 'd', d, 'c', c)
    redis.call('HSET', M, 'ended', last, 'ended_at', now())
  else
    redis.call('XADD', LOG, last .. '-1', 'k', k, 'n', n, 'd', d)
  end
  redis.call('HSET', M, 'last', last)
  redis.call('HINCRBY', M, 'logb', n)
  redis.call('HINCRBY', M, 'unread', n)
  return last
end
-- Queue a close for the owner after the client's messages.
local function close_item(c, d, n)
  redis.call('HSET', M, 'closing', 1)
  redis.call('XADD', IN, (get('cseq') + 1) .. '-1', 'k', 'c', 'n', n, 'd', d, 'c', c)
end
"#;

/// ARGV: (kind, data, cost, code) per payload.
const PUSH: &str = r#"
if get('ended') > 0 then return {'E'} end
redis.call('HSET', M, 'owner_at', now())
for i = 1, #ARGV - 1, 4 do
  append(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3])
  if ARGV[i] == 'c' then break end
end
trim()
touch()
redis.call('PUBLISH', CH, 'r')
local room = 0
if get('ended') > 0 or get('unread') < get('window') then room = 1 end
return {'A', get('last'), room}
"#;

const ROOM: &str = r#"
if get('ended') > 0 or get('unread') < get('window') then return {'Y'} end
return {'N'}
"#;

/// ARGV: after.
const TAKE_INBOUND: &str = r#"
local after = tonumber(ARGV[1])
local gone = redis.call('XRANGE', IN, '-', after .. '-1')
local inb = get('inb')
for _, e in ipairs(gone) do
  inb = inb - tonumber(field(e, 'n'))
  redis.call('XDEL', IN, e[1])
end
if inb < 0 then inb = 0 end
redis.call('HSET', M, 'inb', inb, 'owner_at', now())
touch()
local out = {'I', now() - get('seen')}
for _, e in ipairs(redis.call('XRANGE', IN, '(' .. after .. '-1', '+')) do
  table.insert(out, seq_of(e[1]))
  table.insert(out, field(e, 'k'))
  table.insert(out, field(e, 'd'))
  table.insert(out, field(e, 'c') or '0')
end
return out
"#;

/// ARGV: after.
const BEGIN_READ: &str = r#"
local reader = redis.call('HINCRBY', M, 'reader', 1)
redis.call('HSET', M, 'seen', now())
touch()
redis.call('PUBLISH', CH, 'r')
local replays = 0
if tonumber(ARGV[1]) < get('delivered') then replays = 1 end
return {'B', reader, replays}
"#;

/// ARGV: ticket, after, max_bytes, the cost of an entry besides its payload.
const READ: &str = r#"
local ticket, after, max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('HSET', M, 'seen', now())
touch()
if ticket ~= get('reader') then return {'R'} end
-- The owner polls its inbound stream at least every second while it lives:
-- silence past the limit means its instance died. End the log so that the
-- reader learns it, whichever instance it is on.
if get('ended') == 0 and now() - get('owner_at') > get('owner_limit') then
  local why = 'session owner lost'
  append('c', why, #why + 2 + tonumber(ARGV[4]), 1011)
  redis.call('HSET', M, 'closing', 1)
  touch()
  redis.call('PUBLISH', CH, 'a')
end
local last = get('last')
if after > last then return {'H', last} end
local first = redis.call('XRANGE', LOG, '-', '+', 'COUNT', 1)[1]
local first_kept = last + 1
if first then first_kept = seq_of(first[1]) end
if after + 1 < first_kept then return {'W'} end
local out = {'E', 0}
local function put(e)
  table.insert(out, seq_of(e[1]))
  table.insert(out, field(e, 'k'))
  table.insert(out, field(e, 'd'))
  table.insert(out, field(e, 'c') or '0')
end
local ended = get('ended')
if ended > 0 and after >= ended then
  put(redis.call('XRANGE', LOG, ended .. '-1', ended .. '-1')[1])
  return out
end
local bytes, given, cursor = 0, 0, '(' .. after .. '-1'
local upto = 0
while true do
  local batch = redis.call('XRANGE', LOG, cursor, '+', 'COUNT', 64)
  if #batch == 0 then break end
  local full = false
  for _, e in ipairs(batch) do
    local len = #field(e, 'd')
    if field(e, 'k') == 'c' then len = len + 2 end
    if upto > 0 and bytes + len > max then full = true break end
    bytes = bytes + len
    put(e)
    upto = seq_of(e[1])
    if upto > get('delivered') then given = given + tonumber(field(e, 'n')) end
  end
  if full then out[2] = 1 break end
  cursor = '(' .. batch[#batch][1]
end
if upto > get('delivered') then
  local unread = get('unread') - given
  if unread < 0 then unread = 0 end
  redis.call('HSET', M, 'delivered', upto, 'unread', unread)
  trim()
  redis.call('PUBLISH', CH, 'm')
end
return out
"#;

/// ARGV: first, then (kind, data, cost) per payload.
const ACCEPT: &str = r#"
local first = tonumber(ARGV[1])
local count = (#ARGV - 2) / 3
local cseq = get('cseq')
if count == 0 then return {'K', cseq} end
local last = first + count - 1
if last <= cseq then return {'K', cseq} end
if first > cseq + 1 then return {'G', cseq + 1} end
if get('closing') > 0 or get('ended') > 0 then return {'C'} end
local skip = cseq + 1 - first
local bytes = 0
for i = skip, count - 1 do bytes = bytes + tonumber(ARGV[2 + i * 3 + 2]) end
local inb = get('inb')
if inb > 0 and inb + bytes > get('maxbody') then return {'F'} end
for i = skip, count - 1 do
  cseq = cseq + 1
  redis.call('XADD', IN, cseq .. '-1', 'k', ARGV[2 + i * 3], 'n', ARGV[2 + i * 3 + 2], 'd', ARGV[2 + i * 3 + 1])
end
redis.call('HSET', M, 'cseq', cseq, 'inb', inb + bytes)
touch()
redis.call('PUBLISH', CH, 'o')
return {'K', cseq}
"#;

/// ARGV: code, reason, cost.
const REQUEST_CLOSE: &str = r#"
if get('closing') == 0 and get('ended') == 0 then
  close_item(ARGV[1], ARGV[2], ARGV[3])
  touch()
  redis.call('PUBLISH', CH, 'o')
end
return {'K', get('cseq')}
"#;

/// ARGV: client code, reason, cost, backend code, reason, cost.
const ABORT: &str = r#"
local now_ = 0
if get('ended') == 0 then
  append('c', ARGV[2], tonumber(ARGV[3]), ARGV[1])
  now_ = 1
end
if get('closing') == 0 then close_item(ARGV[4], ARGV[5], ARGV[6]) end
touch()
redis.call('PUBLISH', CH, 'a')
return {'X', get('ended'), now_}
"#;

/// ARGV: the record's fields as name, value pairs.
const CREATE: &str = r#"
redis.call('HSET', M, unpack(ARGV, 1, #ARGV - 1))
redis.call('HSET', M, 'seen', now(), 'owner_at', now())
touch()
return {'K', 0}
"#;

/// The scripts, hashed once.
struct Scripts {
    create: Script,
    push: Script,
    room: Script,
    take_inbound: Script,
    begin_read: Script,
    read: Script,
    accept: Script,
    request_close: Script,
    abort: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            create: Script::new(&format!(
                "{}{CREATE}",
                PRELUDE.replace(
                    "if redis.call('EXISTS', M) == 0 then return {'U'} end",
                    "if redis.call('EXISTS', M) == 1 then return {'D'} end"
                )
            )),
            push: s(PUSH),
            room: s(ROOM),
            take_inbound: s(TAKE_INBOUND),
            begin_read: s(BEGIN_READ),
            read: s(READ),
            accept: s(ACCEPT),
            request_close: s(REQUEST_CLOSE),
            abort: s(ABORT),
        }
    }
}

/// The key names of one session: every key carries the session id as its
/// hash tag, so a Redis Cluster keeps them in one slot.
struct Keys {
    meta: String,
    log: String,
    inbound: String,
    channel: String,
}

impl Keys {
    fn of(prefix: &str, id: SessionId) -> Self {
        Keys {
            meta: format!("{prefix}{{{id}}}:meta"),
            log: format!("{prefix}{{{id}}}:log"),
            inbound: format!("{prefix}{{{id}}}:in"),
            channel: format!("{prefix}ev:{id}"),
        }
    }
}

/// Fallback sessions in Redis, shared by every instance that uses the same
/// server and key prefix.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    scripts: Scripts,
    wakeups: Arc<Wakeups>,
    /// Records already read: a record never changes, so each instance reads
    /// it once per session (bounded by [`RECORDS_CACHED`]).
    records: Mutex<HashMap<SessionId, SessionRecord>>,
    /// The task that feeds `wakeups` from the server's notifications.
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// A store on `client`'s server, keys starting with `prefix`. It
    /// connects on first use and again whenever the connection is lost (a
    /// multiplexed connection, plus a subscriber for the notifications);
    /// while the server cannot be reached every operation answers
    /// [`StoreError::Unavailable`] within [`CONNECT_TIMEOUT`] or so, and the
    /// subscriber logs when it is lost and when it is back. Needs a tokio
    /// runtime.
    pub fn new(client: redis::Client, prefix: &str) -> Result<Self, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let conn =
            ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unavailable)?;
        let wakeups = Arc::new(Wakeups::default());
        let pattern = format!("{prefix}ev:*");
        let listener = tokio::spawn(listen(client, pattern, wakeups.clone()));
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                prefix: prefix.to_owned(),
                scripts: Scripts::new(),
                wakeups,
                records: Mutex::default(),
                listener,
            }),
        })
    }

    /// [`RedisStore::new`], then one round trip: an error when the server
    /// cannot be reached now.
    pub async fn connect(client: redis::Client, prefix: &str) -> Result<Self, StoreError> {
        let store = Self::new(client, prefix)?;
        store.ping().await?;
        Ok(store)
    }

    /// One round trip to the server.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.inner.conn.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Keep `record`: a session's requests check it on every call, and
    /// it never changes. A cached record of a session that has since gone
    /// costs nothing wrong: every operation on the session runs a script
    /// that answers [`StoreError::Unknown`].
    fn cache_record(&self, id: SessionId, record: SessionRecord) {
        let mut records = lock(&self.inner.records);
        if records.len() >= RECORDS_CACHED {
            records.clear();
        }
        records.insert(id, record);
    }

    fn keys(&self, id: SessionId) -> Keys {
        Keys::of(&self.inner.prefix, id)
    }

    /// Run `script` on the session's keys with `args` (the channel is added
    /// last); [`StoreError::Unknown`] when the session does not exist.
    async fn run(
        &self,
        script: &Script,
        id: SessionId,
        args: Vec<Vec<u8>>,
    ) -> Result<Reply, StoreError> {
        let k = self.keys(id);
        let mut inv = script.key(&k.meta);
        inv.key(&k.log).key(&k.inbound);
        for a in args {
            inv.arg(a);
        }
        inv.arg(&k.channel);
        let mut conn = self.inner.conn.clone();
        let v: Vec<Value> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        let reply = Reply::new(v)?;
        if reply.tag == "U" {
            return Err(StoreError::Unknown);
        }
        Ok(reply)
    }

    /// Run `check` until it finds something or `wait` has passed: again
    /// whenever the session's channel notifies `audience`, and at least
    /// every [`RECHECK`]. A caller at `mark` whose previous check took
    /// everything up to it, with no notification since that check began,
    /// waits before its first check instead of asking the server for
    /// nothing.
    async fn wait_for<T, F, Fut>(
        &self,
        id: SessionId,
        audience: Audience,
        wait: Duration,
        mark: Option<Mark>,
        mut check: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Checked<T>, StoreError>>,
    {
        let channel = self.keys(id).channel;
        let w = self.inner.wakeups.waiter(&channel, audience, wait);
        let mut first = true;
        loop {
            let armed = w.arm();
            if std::mem::take(&mut first) && mark.is_some_and(|m| w.settled(&armed, m)) {
                w.sleep(armed).await;
                continue;
            }
            match check().await? {
                Checked::Found(found, settled) => {
                    if let Some(m) = settled {
                        w.settle(&armed, m);
                    }
                    return Ok(found);
                }
                Checked::Nothing(nothing) => {
                    if !w.sleep(armed).await {
                        return Ok(nothing);
                    }
                }
            }
        }
    }
}

/// What one check of [`RedisStore::wait_for`] found.
enum Checked<T> {
    /// Something to return, with the mark up to which it took everything
    /// there was (when it did).
    Found(T, Option<Mark>),
    /// Nothing yet (returned once the wait has passed).
    Nothing(T),
}

/// Feed `wakeups` from the notifications until the store is dropped,
/// subscribing again after the connection is lost. The subscriber is the
/// one connection always open, so it is what logs the server's
/// reachability: once when it is lost (with the reason), once when it is
/// back.
async fn listen(client: redis::Client, pattern: String, wakeups: Arc<Wakeups>) {
    let server = client.get_connection_info().addr().to_string();
    let mut reachable = None;
    loop {
        let subscribe = async {
            let mut p = client.get_async_pubsub().await?;
            p.psubscribe(&pattern).await.map(|()| p)
        };
        let subscribed = tokio::time::timeout(CONNECT_TIMEOUT, subscribe)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                )))
            });
        match subscribed {
            Ok(pubsub) => {
                tracing::info!(%server, "connected to Redis: fallback sessions are shared through it");
                reachable = Some(true);
                // What was published while there was no subscriber is lost.
                wakeups.wake_all();
                let mut messages = pubsub.into_on_message();
                while let Some(m) = messages.next().await {
                    wakeups.wake(m.get_channel_name(), m.get_payload_bytes());
                }
                tracing::warn!(%server, "lost the connection to Redis; reconnecting (new fallback sessions get 503 meanwhile)");
            }
            Err(e) if reachable != Some(false) => {
                tracing::warn!(%server, error = %e, "cannot reach Redis: new fallback sessions get 503 until it is reachable (WebSocket tunnels are not affected); retrying every second");
                reachable = Some(false);
            }
            Err(e) => tracing::debug!(%server, error = %e, "Redis still unreachable"),
        }
        tokio::time::sleep(RECHECK).await;
    }
}

/// A script's answer: a tag and its values.
struct Reply {
    tag: String,
    rest: std::vec::IntoIter<Value>,
}

fn malformed(what: &str) -> StoreError {
    StoreError::Unavailable(format!("unexpected answer from Redis: {what}"))
}

impl Reply {
    fn new(v: Vec<Value>) -> Result<Self, StoreError> {
        let mut rest = v.into_iter();
        let tag = match rest.next() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Some(Value::SimpleString(s)) => s,
            _ => return Err(malformed("no tag")),
        };
        Ok(Reply { tag, rest })
    }

    fn int(&mut self) -> Result<i64, StoreError> {
        match self.rest.next() {
            Some(Value::Int(i)) => Ok(i),
            _ => Err(malformed("a number expected")),
        }
    }

    fn seq(&mut self) -> Result<Seq, StoreError> {
        u64::try_from(self.int()?)
            .map(Seq)
            .map_err(|_| malformed("negative sequence number"))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StoreError> {
        match self.rest.next() {
            Some(Value::BulkString(b)) => Ok(b),
            Some(Value::SimpleString(s)) => Ok(s.into_bytes()),
            _ => Err(malformed("a string expected")),
        }
    }

    fn text(&mut self) -> Result<String, StoreError> {
        String::from_utf8(self.bytes()?).map_err(|_| malformed("text is not UTF-8"))
    }

    /// The (seq, kind, data, code) items that follow.
    fn items(mut self) -> Result<Vec<(Seq, Payload)>, StoreError> {
        let mut out = Vec::new();
        while self.rest.len() > 0 {
            let seq = self.seq()?;
            let kind = self.text()?;
            let data = self.bytes()?;
            let code: u16 = self.text()?.parse().map_err(|_| malformed("close code"))?;
            out.push((seq, decode(&kind, data, code)?));
        }
        Ok(out)
    }
}

/// A payload as (kind, data, cost, code) script arguments.
fn encode(p: &Payload) -> [Vec<u8>; 4] {
    let cost = (p.len() + ENTRY_COST).to_string().into_bytes();
    match p {
        Payload::Text(t) => [b"t".to_vec(), t.as_bytes().to_vec(), cost, b"0".to_vec()],
        Payload::Binary(b) => [b"b".to_vec(), b.to_vec(), cost, b"0".to_vec()],
        Payload::Close(f) => [
            b"c".to_vec(),
            f.reason.clone().into_bytes(),
            cost,
            f.code.0.to_string().into_bytes(),
        ],
    }
}

fn decode(kind: &str, data: Vec<u8>, code: u16) -> Result<Payload, StoreError> {
    match kind {
        "t" => Utf8Bytes::try_from_bytes(Bytes::from(data))
            .map(Payload::Text)
            .ok_or_else(|| malformed("text entry is not UTF-8")),
        "b" => Ok(Payload::Binary(Bytes::from(data))),
        "c" => Ok(Payload::Close(CloseFrame::new(
            CloseCode(code),
            String::from_utf8(data).map_err(|_| malformed("close reason"))?,
        ))),
        _ => Err(malformed("entry kind")),
    }
}

fn ms(d: Duration) -> Vec<u8> {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .to_string()
        .into_bytes()
}

/// The record as the meta hash's fields (with the state's initial values).
fn record_fields(r: &SessionRecord) -> Vec<Vec<u8>> {
    let s = &r.settings;
    let transports: Vec<&str> = s.transports.iter().map(|t| t.as_str()).collect();
    let pairs: Vec<(&str, Vec<u8>)> = vec![
        ("route", r.route.clone().into_bytes()),
        ("token", r.token.as_bytes().to_vec()),
        (
            "sub",
            r.subprotocol
                .as_ref()
                .map_or(Vec::new(), |p| format!("={p}").into_bytes()),
        ),
        ("ro", vec![b'0' + u8::from(r.receive_only)]),
        ("tr", r.transport.map_or("", |t| t.as_str()).into()),
        ("transports", transports.join(",").into_bytes()),
        ("idle", ms(s.idle_timeout)),
        ("heartbeat", ms(s.heartbeat_interval)),
        ("poll", ms(s.poll_timeout)),
        ("resp_max", s.response_max_bytes.to_string().into_bytes()),
        ("sse_max", ms(s.sse_max_duration)),
        ("maxbody", s.max_body.to_string().into_bytes()),
        ("window", s.replay_bytes.to_string().into_bytes()),
        ("grace", LIVE_GRACE_MS.to_string().into_bytes()),
        ("owner_limit", ms(owner_limit(s))),
    ];
    let mut out = Vec::with_capacity(pairs.len() * 2 + 20);
    for (k, v) in pairs {
        out.push(k.as_bytes().to_vec());
        out.push(v);
    }
    for k in [
        "last",
        "delivered",
        "ended",
        "reader",
        "cseq",
        "closing",
        "unread",
        "logb",
        "inb",
    ] {
        out.push(k.as_bytes().to_vec());
        out.push(b"0".to_vec());
    }
    out
}

fn transport(s: &str) -> Option<Transport> {
    [Transport::Sse, Transport::Poll]
        .into_iter()
        .find(|t| t.as_str() == s)
}

/// The record from the meta hash's fields.
fn parse_record(mut h: HashMap<String, Vec<u8>>) -> Result<SessionRecord, StoreError> {
    let mut take = |k: &str| h.remove(k).ok_or_else(|| malformed("record field missing"));
    let text = |v: Vec<u8>| String::from_utf8(v).map_err(|_| malformed("record text"));
    let num = |v: Vec<u8>| -> Result<u64, StoreError> {
        std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("record number"))
    };
    let size = |v| num(v).and_then(|n| usize::try_from(n).map_err(|_| malformed("size")));
    let dur = |v| num(v).map(Duration::from_millis);
    let token: [u8; 32] = take("token")?
        .try_into()
        .map_err(|_| malformed("token digest"))?;
    let sub = text(take("sub")?)?;
    let transports = text(take("transports")?)?;
    Ok(SessionRecord {
        route: text(take("route")?)?,
        token: TokenDigest::from_bytes(token),
        subprotocol: sub.strip_prefix('=').map(str::to_owned),
        receive_only: take("ro")? == b"1",
        transport: transport(&text(take("tr")?)?),
        settings: FallbackSettings {
            transports: transports.split(',').filter_map(transport).collect(),
            idle_timeout: dur(take("idle")?)?,
            heartbeat_interval: dur(take("heartbeat")?)?,
            poll_timeout: dur(take("poll")?)?,
            response_max_bytes: size(take("resp_max")?)?,
            sse_max_duration: dur(take("sse_max")?)?,
            max_body: size(take("maxbody")?)?,
            replay_bytes: size(take("window")?)?,
        },
    })
}

impl SessionStore for RedisStore {
    fn create(&self, id: SessionId, record: SessionRecord) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let reply = self
                .run(&self.inner.scripts.create, id, record_fields(&record))
                .await?;
            match reply.tag.as_str() {
                "K" => {
                    self.cache_record(id, record);
                    Ok(())
                }
                // 128 random bits do not collide; a duplicate is a bug.
                _ => Err(malformed("the session exists already")),
            }
        })
    }

    fn record(&self, id: SessionId) -> StoreFuture<'_, Option<SessionRecord>> {
        Box::pin(async move {
            if let Some(r) = lock(&self.inner.records).get(&id) {
                return Ok(Some(r.clone()));
            }
            let mut conn = self.inner.conn.clone();
            let h: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
                .arg(self.keys(id).meta)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if h.is_empty() {
                return Ok(None);
            }
            let record = parse_record(h)?;
            self.cache_record(id, record.clone());
            Ok(Some(record))
        })
    }

    fn push(&self, id: SessionId, payloads: Vec<Payload>) -> StoreFuture<'_, Pushed> {
        Box::pin(async move {
            let args = payloads.iter().flat_map(encode).collect();
            let mut r = self.run(&self.inner.scripts.push, id, args).await?;
            match r.tag.as_str() {
                "A" => Ok(Pushed::Appended {
                    last: r.seq()?,
                    room: r.int()? == 1,
                }),
                "E" => Ok(Pushed::Ended),
                _ => Err(malformed("push")),
            }
        })
    }

    fn wait_room(&self, id: SessionId, wait: Duration) -> StoreFuture<'_, bool> {
        Box::pin(
            self.wait_for(id, Audience::Room, wait, None, move || async move {
                let r = self.run(&self.inner.scripts.room, id, Vec::new()).await?;
                Ok(match r.tag.as_str() {
                    "Y" => Checked::Found(true, None),
                    _ => Checked::Nothing(false),
                })
            }),
        )
    }

    fn take_inbound(&self, id: SessionId, after: Seq, wait: Duration) -> StoreFuture<'_, Inbound> {
        let mark = Mark {
            ticket: 0,
            after: after.0,
        };
        Box::pin(self.wait_for(
            id,
            Audience::Inbound,
            wait,
            Some(mark),
            move || async move {
                let args = vec![after.0.to_string().into_bytes()];
                let mut r = self.run(&self.inner.scripts.take_inbound, id, args).await?;
                let idle = Duration::from_millis(u64::try_from(r.int()?).unwrap_or(0));
                let items = r.items()?;
                let took = items.last().map(|(seq, _)| Mark {
                    ticket: 0,
                    after: seq.0,
                });
                let inbound = Inbound { items, idle };
                Ok(match took {
                    Some(m) => Checked::Found(inbound, Some(m)),
                    None => Checked::Nothing(inbound),
                })
            },
        ))
    }

    fn begin_read(&self, id: SessionId, after: Seq) -> StoreFuture<'_, ReadStart> {
        Box::pin(async move {
            let args = vec![after.0.to_string().into_bytes()];
            let mut r = self.run(&self.inner.scripts.begin_read, id, args).await?;
            let reader = u64::try_from(r.int()?).map_err(|_| malformed("reader"))?;
            Ok(ReadStart {
                ticket: ReaderTicket(reader),
                replays: r.int()? == 1,
            })
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
            let args = vec![
                ticket.0.to_string().into_bytes(),
                after.0.to_string().into_bytes(),
                max_bytes.to_string().into_bytes(),
                ENTRY_COST.to_string().into_bytes(),
            ];
            let mark = Mark {
                ticket: ticket.0,
                after: after.0,
            };
            self.wait_for(id, Audience::Reader, wait, Some(mark), || async {
                let mut r = self.run(&self.inner.scripts.read, id, args.clone()).await?;
                Ok(match r.tag.as_str() {
                    "R" => Checked::Found(ReadOutcome::Replaced, None),
                    "W" => Checked::Found(ReadOutcome::WindowExceeded, None),
                    "H" => Checked::Found(ReadOutcome::Ahead { last: r.seq()? }, None),
                    "E" => {
                        let more = r.int()? == 1;
                        let entries: Vec<Entry> = r
                            .items()?
                            .into_iter()
                            .map(|(seq, payload)| Entry { seq, payload })
                            .collect();
                        let took = entries.last().filter(|_| !more).map(|e| Mark {
                            ticket: ticket.0,
                            after: e.seq.0,
                        });
                        if entries.is_empty() {
                            Checked::Nothing(ReadOutcome::Entries(entries))
                        } else {
                            Checked::Found(ReadOutcome::Entries(entries), took)
                        }
                    }
                    _ => return Err(malformed("read")),
                })
            })
            .await
        })
    }

    fn accept(
        &self,
        id: SessionId,
        first: Seq,
        payloads: Vec<Payload>,
    ) -> StoreFuture<'_, Accepted> {
        Box::pin(async move {
            let mut args = vec![first.0.to_string().into_bytes()];
            for p in &payloads {
                let [k, d, n, _] = encode(p);
                args.extend([k, d, n]);
            }
            let mut r = self.run(&self.inner.scripts.accept, id, args).await?;
            match r.tag.as_str() {
                "K" => Ok(Accepted::Acked(r.seq()?)),
                "G" => Ok(Accepted::Gap { expected: r.seq()? }),
                "F" => Ok(Accepted::Full),
                "C" => Ok(Accepted::Closed),
                _ => Err(malformed("accept")),
            }
        })
    }

    fn request_close(&self, id: SessionId, frame: CloseFrame) -> StoreFuture<'_, Accepted> {
        Box::pin(async move {
            let [_, d, n, c] = encode(&Payload::Close(frame));
            let mut r = self
                .run(&self.inner.scripts.request_close, id, vec![c, d, n])
                .await?;
            Ok(Accepted::Acked(r.seq()?))
        })
    }

    fn abort(
        &self,
        id: SessionId,
        to_client: CloseFrame,
        to_backend: CloseFrame,
    ) -> StoreFuture<'_, Aborted> {
        Box::pin(async move {
            let [_, cd, cn, cc] = encode(&Payload::Close(to_client));
            let [_, bd, bn, bc] = encode(&Payload::Close(to_backend));
            let mut r = self
                .run(&self.inner.scripts.abort, id, vec![cc, cd, cn, bc, bd, bn])
                .await?;
            Ok(Aborted {
                seq: r.seq()?,
                now: r.int()? == 1,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::conformance::{record, ID};
    use crate::session::redis_server::RedisServer;

    async fn fresh() -> (Arc<dyn SessionStore>, RedisServer) {
        let server = RedisServer::start().await;
        let store = RedisStore::connect(server.client(), "sy:")
            .await
            .expect("connects");
        (Arc::new(store), server)
    }

    crate::session::conformance::store_conformance!(fresh());

    #[tokio::test]
    async fn the_record_round_trips_and_every_key_shares_the_session_tag() {
        let (s, server) = fresh().await;
        let mut r = record(1000, 2000);
        r.subprotocol = Some("chat".into());
        r.receive_only = true;
        r.transport = Some(Transport::Poll);
        s.create(ID, r.clone()).await.unwrap();
        s.push(ID, vec![Payload::Text("x".into())]).await.unwrap();
        s.accept(ID, Seq(1), vec![Payload::Text("y".into())])
            .await
            .unwrap();
        assert_eq!(s.record(ID).await, Ok(Some(r)));
        assert_eq!(s.record(SessionId::from_bytes([1; 16])).await, Ok(None));
        let mut c = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        keys.sort();
        let tag = format!("{{{ID}}}");
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(
            keys.iter()
                .all(|k| k.starts_with("sy:") && k.contains(&tag)),
            "{keys:?}"
        );
        // Every key expires (a session whose owner died goes away).
        for k in keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&k)
                .query_async(&mut c)
                .await
                .unwrap();
            assert!(ttl > 0, "{k} has no TTL");
        }
    }

    #[tokio::test]
    async fn a_reader_on_another_instance_is_woken_by_a_push() {
        let (a, server) = fresh().await;
        let b = RedisStore::connect(server.client(), "sy:").await.unwrap();
        a.create(ID, record(1 << 20, 1 << 20)).await.unwrap();
        let r = b.begin_read(ID, Seq(0)).await.unwrap();
        let waiting = tokio::spawn(async move {
            b.read(ID, r.ticket, Seq(0), 1000, Duration::from_secs(60))
                .await
        });
        tokio::task::yield_now().await;
        a.push(ID, vec![Payload::Text("x".into())]).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("woken")
            .unwrap()
            .unwrap();
        assert!(matches!(got, ReadOutcome::Entries(e) if e.len() == 1 && e[0].seq == Seq(1)));
    }

    async fn scripts_run(server: &RedisServer) -> u64 {
        let mut c = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut c)
            .await
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_busy_owner_takes_each_client_message_in_one_round_trip() {
        let (s, server) = fresh().await;
        s.create(ID, record(1 << 20, 1 << 20)).await.unwrap();
        let take = |after: u64| {
            let s = s.clone();
            tokio::spawn(async move {
                s.take_inbound(ID, Seq(after), Duration::from_secs(60))
                    .await
                    .unwrap()
                    .items
            })
        };
        let text = |t: &str| Payload::Text(t.into());
        // Each script's first call loads it (a failed EVALSHA, then another).
        let other = SessionId::from_bytes([8; 16]);
        s.create(other, record(1 << 20, 1 << 20)).await.unwrap();
        s.accept(other, Seq(1), vec![text("1")]).await.unwrap();
        s.take_inbound(other, Seq(0), Duration::ZERO).await.unwrap();
        s.push(other, vec![text("1")]).await.unwrap();

        s.accept(ID, Seq(1), vec![text("1")]).await.unwrap();
        assert_eq!(take(0).await.unwrap(), [(Seq(1), text("1"))]);

        let started = std::time::Instant::now();
        let before = scripts_run(&server).await;
        let n = 20;
        for i in 2..n + 2 {
            // Back for what follows: nothing came since its last check, so
            // it waits without asking; the log growing is not for it.
            let owner = take(i - 1);
            s.push(ID, vec![text("echo")]).await.unwrap();
            s.accept(ID, Seq(i), vec![text("m")]).await.unwrap();
            assert_eq!(owner.await.unwrap(), [(Seq(i), text("m"))]);
        }
        // One push, one accept, one take per message; one more check if
        // the first accept's notification came after the first take began,
        // and one per RECHECK that a slow machine may see.
        let ran = scripts_run(&server).await - before;
        let slack = started.elapsed().as_secs();
        assert!((3 * n..=3 * n + 1 + slack).contains(&ran), "{ran} scripts");
    }

    #[tokio::test]
    async fn a_lost_server_is_an_error_not_a_hang() {
        let (s, server) = fresh().await;
        drop(server);
        let r = tokio::time::timeout(Duration::from_secs(30), s.record(ID))
            .await
            .expect("answers");
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    }
}

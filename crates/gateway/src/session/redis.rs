//! [`RedisStore`]: the session state shared by every gateway instance of a
//! cluster through Redis (`docs/cluster.md` has the key layout, the TTLs
//! and the commands per message).
//!
//! The owner's instance keeps the session's state in memory and Redis
//! holds what the other instances need: the record, the log (a stream, for
//! readers anywhere to resume from) and the liveness stamps. The instances
//! talk through the session's pub/sub channel (`session::relay`): client messages
//! go to the owner's instance and its answers come back, the owner's
//! appended entries go to every instance's readers. The message path runs
//! no script; scripts run for the open, the chores (liveness stamps, TTL
//! refresh, at most every `STAMP_EVERY` per session and instance) and a
//! reader's look at the log when its instance's feed cannot answer (a
//! resume, a first read, notifications lost, a quiet second).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use switchyard::fallback::wire::{Entry, Payload, Seq, SessionId, Transport};
use switchyard::{CloseCode, CloseFrame, Utf8Bytes};

use super::feed::Take;
use super::relay::{fresh_node, OwnedKeys, Relay, Ttls};
use super::settings::FallbackSettings;
use super::store::{
    entry_cost, Aborted, Accepted, Inbound, Pushed, ReadOutcome, ReadStart, ReaderTicket,
    SessionRecord, SessionStore, StoreError, StoreFuture, TokenDigest,
};
use crate::sync::lock;

/// Longest wait for a connection to the server (per attempt).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for the answer to one command: every script is short, so
/// a server that does not answer within this is treated as unreachable.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions one instance keeps what it knows of ([`Known`]); past this
/// it starts over (the sessions still in use read their record again, once,
/// and do their chores at their next call).
const SESSIONS_KNOWN: usize = 4096;

/// Longest a waiter goes without looking at the server: a notification
/// lost while the subscriber reconnects delays it by at most this; a
/// reader with nothing new checks the owner's liveness this often.
const RECHECK: Duration = Duration::from_secs(1);

/// How often one instance stamps a session's liveness as its owner
/// (`owner_at`) or reader (`seen`): often enough for the owner's limit
/// (its checks come at least every [`RECHECK`], so two stamps are at most
/// `RECHECK` + this apart) and for the idle timeout, rarely enough that a
/// busy session's messages do not each pay for it.
const STAMP_EVERY: Duration = Duration::from_millis(500);

/// How often one instance refreshes the TTL of a session's keys while it
/// calls: far within [`LIVE_GRACE_MS`], so a live session never expires.
const TOUCH_EVERY: Duration = Duration::from_secs(10);

/// How long the keys of a live session outlive the last activity beyond its
/// idle timeout: the owner ends a session without reader after the idle
/// timeout; the keys of a session whose owner died go after this.
const LIVE_GRACE_MS: u64 = 60_000;

/// How long the owner of a session may go without stamping its liveness
/// before a reader ends the session with close 1011 "session owner lost":
/// twice the heartbeat interval the client was promised, and at least
/// twice the longest gap between two stamps ([`STAMP_EVERY`] after a
/// re-check, which comes at least every [`RECHECK`]).
fn owner_limit(s: &FallbackSettings) -> Duration {
    (s.heartbeat_interval * 2).max(RECHECK * 3)
}

/// Lua shared by every script. `KEYS`: the session's meta hash, its log
/// stream. `ARGV[1]`: the chores the call carries
/// ([`Chores`]: `s` stamp the caller's liveness, `t` refresh the keys'
/// TTL).
///
/// A script reads the fields it needs in one `HMGET` (`load`, into `S`)
/// and writes those it changed in one `HSET` (`set`, then `done`), so that
/// what a message costs does not grow with the fields it touches.
const PRELUDE: &str = r#"
local M, LOG = KEYS[1], KEYS[2]
local CHORES = ARGV[1]
local S, W = {}, {}
-- A key was created or the log ended: the TTLs are set whatever is due.
local retouch = false
local function has(chore) return string.find(CHORES, chore, 1, true) ~= nil end
-- Read the fields named, and those every script needs, into S; false when
-- the session does not exist.
local function load(...)
  local names = {'idle', 'grace', 'ended', ...}
  local v = redis.call('HMGET', M, unpack(names))
  if not v[1] then return false end
  for i, n in ipairs(names) do S[n] = tonumber(v[i]) or 0 end
  return true
end
local function set(f, v) S[f] = v W[f] = v end
local NOW
local function now()
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return NOW
end
local function touch()
  local ttl = S.idle * 2 + S.grace
  if S.ended > 0 then ttl = S.idle end
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ttl) end
end
-- Write the fields set, refresh the TTLs when due, answer r.
local function done(r)
  local a = {}
  for f, v in pairs(W) do a[#a + 1] = f a[#a + 1] = v end
  if #a > 0 then redis.call('HSET', M, unpack(a)) end
  if retouch or has('t') then touch() end
  return r
end
local function seq_of(id) return tonumber(string.match(id, '^(%d+)')) end
local function field(e, name)
  local f = e[2]
  for i = 1, #f, 2 do if f[i] == name then return f[i + 1] end end
  return nil
end
"#;

/// Due with the owner's chores only (see `RedisStore::take_inbound`):
/// stamp its liveness, measure the time without reader (-1: not now).
const OWNER_TICK: &str = r#"
if not load('seen') then return {'U'} end
local idle = -1
if has('s') then
  set('owner_at', now())
  idle = now() - S.seen
end
return done({'I', idle})
"#;

/// A reader's look at the log, when its instance's feed cannot answer.
/// ARGV: after, max_bytes. Answers the entries after `after` (`E`, a flag
/// for more, then the entries), `W` (they left the window), `H` (after is
/// past the last entry), or `L` with the number after the last entry: the
/// owner has been silent past its limit (its instance died), and the
/// session ends there with 1011, in every reader's view the same.
const READ_LOG: &str = r#"
if not load('owner_at', 'owner_limit') then return {'U'} end
local after, max = tonumber(ARGV[2]), tonumber(ARGV[3])
if has('s') then set('seen', now()) end
local out = {'E', 0}
local function put(e)
  table.insert(out, seq_of(e[1]))
  table.insert(out, field(e, 'k'))
  table.insert(out, field(e, 'd'))
  table.insert(out, field(e, 'c') or '0')
end
if S.ended > 0 and after >= S.ended then
  if after > S.ended then return done({'H', S.ended}) end
  put(redis.call('XRANGE', LOG, S.ended .. '-1', S.ended .. '-1')[1])
  return done(out)
end
local top = redis.call('XREVRANGE', LOG, '+', '-', 'COUNT', 1)
local last = 0
if #top > 0 then last = seq_of(top[1][1]) end
if after >= last and S.ended == 0 then
  local lost = now() - S.owner_at > S.owner_limit
  if lost and after <= last + 1 then return done({'L', last + 1}) end
  if after > last then return done({'H', last}) end
  return done(out)
end
local bytes, upto = 0, after
local batch = redis.call('XRANGE', LOG, '(' .. after .. '-1', '+', 'COUNT', 64)
-- Entries are numbered without gaps and dropped from the front only: a
-- first entry past after + 1 means those between have left the window.
if #batch == 0 or seq_of(batch[1][1]) ~= after + 1 then return done({'W'}) end
for _, e in ipairs(batch) do
  local len = #field(e, 'd')
  if field(e, 'k') == 'c' then len = len + 2 end
  if upto > after and bytes + len > max then
    out[2] = 1
    break
  end
  bytes = bytes + len
  put(e)
  upto = seq_of(e[1])
end
return done(out)
"#;

/// ARGV: the record's fields as name, value pairs (with the state's
/// initial values).
const CREATE: &str = r#"
if redis.call('EXISTS', M) == 1 then return {'D'} end
redis.call('HSET', M, 'seen', now(), 'owner_at', now(), unpack(ARGV, 2, #ARGV))
load()
retouch = true
return done({'K', 0})
"#;

/// The scripts, hashed once.
struct Scripts {
    create: Script,
    owner_tick: Script,
    read_log: Script,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            create: s(CREATE),
            owner_tick: s(OWNER_TICK),
            read_log: s(READ_LOG),
        }
    }
}

/// The key names of one session: every key carries the session id as its
/// hash tag, so a Redis Cluster keeps them in one slot.
struct Keys {
    meta: String,
    log: String,
    channel: String,
}

impl Keys {
    fn of(prefix: &str, id: SessionId) -> Self {
        Keys {
            meta: format!("{prefix}{{{id}}}:meta"),
            log: format!("{prefix}{{{id}}}:log"),
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
    /// The client queues of the sessions owned here, and the requests to
    /// other owners.
    relay: Arc<Relay>,
    /// What this instance knows of the sessions it serves (bounded by
    /// [`SESSIONS_KNOWN`]).
    known: Mutex<HashMap<SessionId, Known>>,
    /// The task that feeds `relay` from the server's notifications.
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
        let relay = Arc::new(Relay::new(
            fresh_node(),
            format!("{prefix}node:"),
            conn.clone(),
        ));
        let pattern = format!("{prefix}ev:*");
        let listener = tokio::spawn(listen(client, pattern, relay.clone()));
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conn,
                prefix: prefix.to_owned(),
                scripts: Scripts::new(),
                relay,
                known: Mutex::default(),
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
        self.known(id, |k| k.record = Some(record));
    }

    /// Run `f` on what this instance knows of session `id`.
    fn known<T>(&self, id: SessionId, f: impl FnOnce(&mut Known) -> T) -> T {
        let mut known = lock(&self.inner.known);
        if known.len() >= SESSIONS_KNOWN && !known.contains_key(&id) {
            known.clear();
        }
        f(known.entry(id).or_default())
    }

    /// The chores due with a call on session `id` from `side`, counted as
    /// done from now on.
    fn chores(&self, id: SessionId, side: Side) -> Chores {
        let due = |at: &mut Option<Instant>, every: Duration| {
            let due = at.is_none_or(|t| t.elapsed() >= every);
            if due {
                *at = Some(Instant::now());
            }
            due
        };
        self.known(id, |k| Chores {
            stamp: match side {
                Side::Owner => due(&mut k.owner_stamped, STAMP_EVERY),
                Side::Reader => due(&mut k.reader_stamped, STAMP_EVERY),
            },
            touch: due(&mut k.touched, TOUCH_EVERY),
        })
    }

    fn keys(&self, id: SessionId) -> Keys {
        Keys::of(&self.inner.prefix, id)
    }

    /// Run `script` on the session's keys for `side` with `args` (the
    /// chores due come first); [`StoreError::Unknown`]
    /// when the session does not exist.
    async fn run(
        &self,
        script: &Script,
        id: SessionId,
        side: Side,
        args: Vec<Vec<u8>>,
    ) -> Result<Reply, StoreError> {
        self.run_with(script, id, self.chores(id, side), args).await
    }

    /// [`RedisStore::run`] with the chores given.
    async fn run_with(
        &self,
        script: &Script,
        id: SessionId,
        chores: Chores,
        args: Vec<Vec<u8>>,
    ) -> Result<Reply, StoreError> {
        let k = self.keys(id);
        let mut inv = script.key(&k.meta);
        inv.key(&k.log).arg(chores.arg());
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.inner.conn.clone();
        let v: Vec<Value> = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
        let reply = Reply::new(v)?;
        if reply.tag == "U" {
            return Err(StoreError::Unknown);
        }
        Ok(reply)
    }

    /// The owner's chores, when due: its liveness stamp, which also
    /// measures how long the session has been without reader (`None` when
    /// not measured now), and the TTL refresh. [`StoreError::Unknown`]
    /// when the session is gone (the server lost it).
    async fn owner_tick(&self, id: SessionId) -> Result<Option<Duration>, StoreError> {
        let chores = self.chores(id, Side::Owner);
        if !chores.stamp && !chores.touch {
            return Ok(None);
        }
        let mut r = self
            .run_with(&self.inner.scripts.owner_tick, id, chores, Vec::new())
            .await?;
        // -1 when this call stamped nothing, so measured nothing.
        Ok(u64::try_from(r.int()?).ok().map(Duration::from_millis))
    }

    /// The session as owned here ([`StoreError::Unknown`] elsewhere: only
    /// its owner calls the owner's methods).
    fn owned(&self, id: SessionId) -> Result<Arc<super::relay::Owned>, StoreError> {
        self.inner
            .relay
            .owned(&self.keys(id).channel)
            .ok_or(StoreError::Unknown)
    }

    /// The node of the session's owner, as its record names it.
    fn owner_node(&self, id: SessionId) -> Option<String> {
        lock(&self.inner.known)
            .get(&id)
            .and_then(|k| k.owner.clone())
    }

    /// The session's replay window (from its record).
    async fn window(&self, id: SessionId) -> Result<usize, StoreError> {
        let record = self.record(id).await?.ok_or(StoreError::Unknown)?;
        Ok(record.settings.replay_bytes)
    }

    /// Look at the log after `after` (see [`READ_LOG`]).
    async fn read_log(
        &self,
        id: SessionId,
        after: Seq,
        max_bytes: usize,
    ) -> Result<Logged, StoreError> {
        let args = vec![
            after.0.to_string().into_bytes(),
            max_bytes.to_string().into_bytes(),
        ];
        let mut r = self
            .run(&self.inner.scripts.read_log, id, Side::Reader, args)
            .await?;
        Ok(match r.tag.as_str() {
            "W" => Logged::Outcome(ReadOutcome::WindowExceeded),
            "H" => Logged::Outcome(ReadOutcome::Ahead { last: r.seq()? }),
            "L" => Logged::OwnerLost(r.seq()?),
            "E" => {
                // The flag for more: the reader asks again for the rest.
                r.int()?;
                Logged::Entries(
                    r.items()?
                        .into_iter()
                        .map(|(seq, payload)| Entry { seq, payload })
                        .collect(),
                )
            }
            _ => return Err(malformed("read")),
        })
    }

    /// The answer of the owner's instance to a request; when there was none,
    /// whether the session is gone ([`StoreError::Unknown`]) or its owner is.
    async fn answered<T>(
        &self,
        id: SessionId,
        answer: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Err(e) = answer else {
            return answer;
        };
        let mut conn = self.inner.conn.clone();
        let exists: Result<bool, _> = redis::cmd("EXISTS")
            .arg(self.keys(id).meta)
            .query_async(&mut conn)
            .await;
        match exists {
            Ok(false) => Err(StoreError::Unknown),
            _ => Err(e),
        }
    }
}

/// What this instance knows of one session without asking the server.
#[derive(Default)]
struct Known {
    /// Its record, which never changes: each instance reads it once.
    record: Option<SessionRecord>,
    /// Its owner's node (from the record).
    owner: Option<String>,
    /// When this instance last stamped it as its owner, as its reader, and
    /// last refreshed its TTLs ([`Chores`]).
    owner_stamped: Option<Instant>,
    reader_stamped: Option<Instant>,
    touched: Option<Instant>,
}

/// Who calls: the liveness a call stamps.
#[derive(Debug, Clone, Copy)]
enum Side {
    /// The owner (`owner_at`, which readers check).
    Owner,
    /// A reader (`seen`, the activity the idle timeout counts from).
    Reader,
}

/// What a call does besides its work, due at most every [`STAMP_EVERY`]
/// or [`TOUCH_EVERY`] per session and instance (this instance's clock), so
/// that a busy session's messages do not each pay for it.
#[derive(Debug, Clone, Copy)]
struct Chores {
    /// Stamp the caller's liveness (server time).
    stamp: bool,
    /// Refresh the TTLs of the session's keys.
    touch: bool,
}

impl Chores {
    /// The scripts' `ARGV[1]`.
    fn arg(self) -> &'static str {
        match (self.stamp, self.touch) {
            (true, true) => "st",
            (true, false) => "s",
            (false, true) => "t",
            (false, false) => "",
        }
    }
}

/// Feed `relay` from the notifications until the store is dropped,
/// subscribing again after the connection is lost. The subscriber is the
/// one connection always open, so it is what logs the server's
/// reachability: once when it is lost (with the reason), once when it is
/// back.
async fn listen(client: redis::Client, pattern: String, relay: Arc<Relay>) {
    let server = client.get_connection_info().addr().to_string();
    let mut reachable = None;
    loop {
        let subscribe = async {
            let mut p = client.get_async_pubsub().await?;
            p.psubscribe(&pattern).await?;
            p.subscribe(relay.node_channel(relay.node()))
                .await
                .map(|()| p)
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
                relay.resubscribed();
                let mut messages = pubsub.into_on_message();
                while let Some(m) = messages.next().await {
                    relay.on_message(m.get_channel_name(), m.get_payload_bytes());
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

/// The record as the meta hash's fields (with the state's initial value).
fn record_fields(r: &SessionRecord, owner: &str) -> Vec<Vec<u8>> {
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
        ("owner", owner.as_bytes().to_vec()),
        ("ended", b"0".to_vec()),
    ];
    let mut out = Vec::with_capacity(pairs.len() * 2);
    for (k, v) in pairs {
        out.push(k.as_bytes().to_vec());
        out.push(v);
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
                .run(
                    &self.inner.scripts.create,
                    id,
                    Side::Owner,
                    record_fields(&record, self.inner.relay.node()),
                )
                .await?;
            match reply.tag.as_str() {
                "K" => {
                    let s = &record.settings;
                    let k = self.keys(id);
                    let idle = u64::try_from(s.idle_timeout.as_millis()).unwrap_or(u64::MAX);
                    let ttls = Ttls {
                        live: idle.saturating_mul(2).saturating_add(LIVE_GRACE_MS),
                        ended: idle,
                    };
                    let keys = OwnedKeys {
                        meta: k.meta,
                        log: k.log,
                        channel: k.channel,
                    };
                    self.inner
                        .relay
                        .own(keys, s.max_body, s.replay_bytes, ttls, s.idle_timeout);
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
            if let Some(r) = lock(&self.inner.known)
                .get(&id)
                .and_then(|k| k.record.clone())
            {
                return Ok(Some(r));
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
            let owner = h
                .get("owner")
                .and_then(|o| String::from_utf8(o.clone()).ok());
            let record = parse_record(h)?;
            self.known(id, |k| k.owner = owner);
            self.cache_record(id, record.clone());
            Ok(Some(record))
        })
    }

    fn push(&self, id: SessionId, payloads: Vec<Payload>) -> StoreFuture<'_, Pushed> {
        Box::pin(async move {
            let owned = self.owned(id)?;
            self.inner.relay.push(&owned, payloads).await
        })
    }

    fn wait_room(&self, id: SessionId, wait: Duration) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let owned = self.owned(id)?;
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let notified = owned.room.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if owned.has_room() {
                    return Ok(true);
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                let _ = tokio::time::timeout(left.min(RECHECK), notified).await;
            }
        })
    }

    fn take_inbound(&self, id: SessionId, after: Seq, wait: Duration) -> StoreFuture<'_, Inbound> {
        Box::pin(async move {
            let owned = self.owned(id)?;
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let notified = owned.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let items = owned.take(after);
                // At least every RECHECK while it waits: the owner's
                // liveness stamps go on.
                let measured = self.owner_tick(id).await?;
                // The readers' activity: stamped in Redis by those that
                // wait with nothing to read, reported here by the others.
                let idle = match (measured, owned.idle()) {
                    (Some(m), Some(here)) => m.min(here),
                    _ => Duration::ZERO,
                };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if !items.is_empty() || left.is_zero() {
                    return Ok(Inbound { items, idle });
                }
                let _ = tokio::time::timeout(left.min(RECHECK), notified).await;
            }
        })
    }

    fn begin_read(&self, id: SessionId, after: Seq) -> StoreFuture<'_, ReadStart> {
        Box::pin(async move {
            let window = self.window(id).await?;
            let channel = self.keys(id).channel;
            let owner = self.owner_node(id);
            let begun = self
                .inner
                .relay
                .begin_read(&channel, owner.as_deref(), after, window);
            self.answered(id, begun.await).await
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
            let window = self.window(id).await?;
            let channel = self.keys(id).channel;
            let relay = &self.inner.relay;
            let feed = relay.feeds.feed(&channel, window);
            let owner = self.owner_node(id);
            let deadline = tokio::time::Instant::now() + wait;
            // Whether to look at the log even if the feed says nothing new.
            let mut look = false;
            loop {
                let notified = feed.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if feed.reader() > ticket.0 {
                    return Ok(ReadOutcome::Replaced);
                }
                let took = match feed.take(after, max_bytes) {
                    Take::Nothing if look => Take::Unknown,
                    t => t,
                };
                let entries = match took {
                    Take::Entries(e) => e,
                    Take::Nothing => Vec::new(),
                    Take::Unknown => match self.read_log(id, after, max_bytes).await? {
                        Logged::Entries(e) => {
                            feed.offer(e.clone());
                            e
                        }
                        Logged::OwnerLost(seq) => {
                            let why =
                                CloseFrame::new(CloseCode::INTERNAL_ERROR, "session owner lost");
                            return Ok(ReadOutcome::Entries(vec![Entry {
                                seq,
                                payload: Payload::Close(why),
                            }]));
                        }
                        Logged::Outcome(o) => return Ok(o),
                    },
                };
                if let Some(last) = entries.last() {
                    let cost = entries.iter().map(|e| entry_cost(&e.payload)).sum();
                    relay
                        .delivered(&channel, owner.as_deref(), &feed, last.seq, cost)
                        .await?;
                    return Ok(ReadOutcome::Entries(entries));
                }
                relay
                    .report_overdue(&channel, owner.as_deref(), &feed)
                    .await?;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(ReadOutcome::Entries(Vec::new()));
                }
                look = tokio::time::timeout(left.min(RECHECK), notified)
                    .await
                    .is_err();
            }
        })
    }

    fn accept(
        &self,
        id: SessionId,
        first: Seq,
        payloads: Vec<Payload>,
    ) -> StoreFuture<'_, Accepted> {
        Box::pin(async move {
            let channel = self.keys(id).channel;
            let owner = self.owner_node(id);
            let sent = self
                .inner
                .relay
                .send(&channel, owner.as_deref(), first, payloads);
            self.answered(id, sent.await).await
        })
    }

    fn request_close(&self, id: SessionId, frame: CloseFrame) -> StoreFuture<'_, Accepted> {
        Box::pin(async move {
            let channel = self.keys(id).channel;
            let owner = self.owner_node(id);
            let closed = self.inner.relay.close(&channel, owner.as_deref(), frame);
            self.answered(id, closed.await).await
        })
    }

    fn owner_ended(&self, id: SessionId) {
        if let Some(owned) = self.inner.relay.owned(&self.keys(id).channel) {
            owned.end();
        }
    }

    fn abort(
        &self,
        id: SessionId,
        to_client: CloseFrame,
        to_backend: CloseFrame,
    ) -> StoreFuture<'_, Aborted> {
        Box::pin(async move {
            let channel = self.keys(id).channel;
            let owner = self.owner_node(id);
            let aborted = self
                .inner
                .relay
                .abort(&channel, owner.as_deref(), to_client, to_backend);
            self.answered(id, aborted.await).await
        })
    }
}

/// What a reader's look at the log found.
enum Logged {
    /// The entries after its cursor (none: nothing new).
    Entries(Vec<Entry>),
    /// The owner is lost: the session ends with this number.
    OwnerLost(Seq),
    /// Another answer for the reader.
    Outcome(ReadOutcome),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::conformance::{record, ID};
    use crate::session::redis_server::RedisServer;
    use crate::session::store::ENTRY_COST;

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
        assert_eq!(keys.len(), 2, "{keys:?}");
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

    /// The calls of each command the server ran (a script's inner
    /// commands under their own names), from `INFO commandstats`.
    async fn commandstats(server: &RedisServer) -> HashMap<String, u64> {
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
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
                Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
            })
            .collect()
    }

    /// Every command run but those of the connections that count them.
    async fn commands_run(server: &RedisServer) -> u64 {
        commandstats(server)
            .await
            .iter()
            .filter(|(name, _)| {
                !matches!(name.split('|').next(), Some("info" | "client" | "hello"))
            })
            .map(|(_, calls)| calls)
            .sum()
    }

    #[tokio::test]
    async fn a_message_costs_a_few_commands_each_way_inner_ones_included() {
        // The owner on one instance, the client's requests on another.
        let (owner, server) = fresh().await;
        let client: Arc<dyn SessionStore> =
            Arc::new(RedisStore::connect(server.client(), "sy:").await.unwrap());
        owner.create(ID, record(1 << 20, 1 << 20)).await.unwrap();
        let text = |t: &str| Payload::Text(t.into());
        let take = |after: u64| {
            let s = owner.clone();
            tokio::spawn(async move {
                s.take_inbound(ID, Seq(after), Duration::from_secs(60))
                    .await
                    .unwrap()
                    .items
            })
        };
        let reader = client.begin_read(ID, Seq(0)).await.unwrap().ticket;
        let read = |after: u64| {
            let s = client.clone();
            tokio::spawn(async move {
                let got = s.read(ID, reader, Seq(after), 1 << 20, Duration::from_secs(60));
                crate::session::conformance::seqs(&got.await.unwrap())
            })
        };
        // Scripts loaded, the first stamps and TTLs done.
        client.accept(ID, Seq(1), vec![text("0")]).await.unwrap();
        assert_eq!(take(0).await.unwrap().len(), 1);
        owner.push(ID, vec![text("0")]).await.unwrap();
        assert_eq!(read(0).await.unwrap(), [1]);

        let n = 50;
        let started = std::time::Instant::now();
        let before = commands_run(&server).await;
        for i in 2..n + 2 {
            let taken = take(i - 1);
            client.accept(ID, Seq(i), vec![text("m")]).await.unwrap();
            assert_eq!(taken.await.unwrap(), [(Seq(i), text("m"))]);
        }
        let up = commands_run(&server).await - before;
        let before = commands_run(&server).await;
        for i in 2..n + 2 {
            let got = read(i - 1);
            owner.push(ID, vec![text("echo")]).await.unwrap();
            assert_eq!(got.await.unwrap(), [i]);
        }
        let down = commands_run(&server).await - before;
        // Up: the request to the owner's instance and its answer (a
        // PUBLISH each); the owner takes the message from its queue. Down:
        // the owner's XADD and PUBLISH in one pipeline; the reader takes the
        // entry from its instance's feed. The stamps, TTL refreshes,
        // reports of what was read and re-checks come with time, not
        // messages: a slow machine may see more of them.
        let slack = 40 * (1 + started.elapsed().as_secs());
        assert!(up <= 2 * n + slack, "{up} commands for {n} messages up");
        assert!(
            down <= 2 * n + slack,
            "{down} commands for {n} messages down"
        );
    }

    #[tokio::test]
    async fn a_long_queue_for_the_backend_is_taken_and_freed_at_once() {
        let (s, _server) = fresh().await;
        s.create(ID, record(1 << 20, 1 << 20)).await.unwrap();
        // More entries than one Lua unpack takes.
        let n = 10_000u64;
        let batch = || {
            (0..n)
                .map(|_| Payload::Text("x".into()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            s.accept(ID, Seq(1), batch()).await,
            Ok(Accepted::Acked(Seq(n)))
        );
        let got = s.take_inbound(ID, Seq(0), Duration::ZERO).await.unwrap();
        assert_eq!(got.items.len(), n as usize);
        assert!(s
            .take_inbound(ID, Seq(n), Duration::ZERO)
            .await
            .unwrap()
            .items
            .is_empty());
        // The queue's bytes were given back: as many again fit.
        assert_eq!(
            s.accept(ID, Seq(n + 1), batch()).await,
            Ok(Accepted::Acked(Seq(2 * n)))
        );
    }

    #[tokio::test]
    async fn another_instance_gets_the_owners_answers_to_sends_and_closes() {
        let (owner, server) = fresh().await;
        let other = RedisStore::connect(server.client(), "sy:").await.unwrap();
        let ten = || Payload::Binary(vec![1u8; 10].into());
        owner
            .create(ID, record(1 << 20, 3 * (10 + ENTRY_COST)))
            .await
            .unwrap();
        let send = |first: u64, n: usize| other.accept(ID, Seq(first), vec![ten(); n]);
        assert_eq!(send(1, 2).await, Ok(Accepted::Acked(Seq(2))));
        assert_eq!(send(1, 2).await, Ok(Accepted::Acked(Seq(2))), "a repeat");
        assert_eq!(send(4, 1).await, Ok(Accepted::Gap { expected: Seq(3) }));
        assert_eq!(send(3, 2).await, Ok(Accepted::Full));
        let got = owner
            .take_inbound(ID, Seq(0), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.items, [(Seq(1), ten()), (Seq(2), ten())]);
        // The owner's cursor frees the queue.
        owner
            .take_inbound(ID, Seq(2), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(send(3, 2).await, Ok(Accepted::Acked(Seq(4))));
        let bye = CloseFrame::new(CloseCode::NORMAL, "bye");
        assert_eq!(
            other.request_close(ID, bye.clone()).await,
            Ok(Accepted::Acked(Seq(4)))
        );
        assert_eq!(send(5, 1).await, Ok(Accepted::Closed));
        let got = owner
            .take_inbound(ID, Seq(4), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(got.items, [(Seq(5), Payload::Close(bye))]);

        // Once the owner has ended, sends are refused, not left unanswered.
        let second = SessionId::from_bytes([3; 16]);
        owner
            .create(second, record(1 << 20, 1 << 20))
            .await
            .unwrap();
        owner.owner_ended(second);
        assert_eq!(
            other.accept(second, Seq(1), vec![ten()]).await,
            Ok(Accepted::Closed)
        );
    }

    #[tokio::test]
    async fn an_abort_on_another_instance_closes_the_owners_backend_side() {
        let (owner, server) = fresh().await;
        let other = RedisStore::connect(server.client(), "sy:").await.unwrap();
        owner.create(ID, record(1 << 20, 1 << 20)).await.unwrap();
        let waiting = {
            let owner = owner.clone();
            tokio::spawn(async move {
                owner
                    .take_inbound(ID, Seq(0), Duration::from_secs(60))
                    .await
            })
        };
        let to_backend = CloseFrame::new(CloseCode(4410), "gone");
        let aborted = other
            .abort(
                ID,
                CloseFrame::new(CloseCode(4410), "x"),
                to_backend.clone(),
            )
            .await
            .unwrap();
        assert!(aborted.now);
        let got = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("woken by the notification")
            .unwrap()
            .unwrap();
        assert_eq!(got.items, [(Seq(1), Payload::Close(to_backend))]);
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

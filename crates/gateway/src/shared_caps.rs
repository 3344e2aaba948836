//! The route caps of a cluster: every connection that a route's
//! `max_connections` or `max_connections_per_ip` counts holds a lease in
//! Redis, so that the caps hold across instances (`docs/cluster.md`).
//!
//! A lease is a member of a sorted set whose score is its expiry (server
//! ms): one set per capped route, one per (route, client IP). Taking one is
//! one script (drop the expired members, count, add), so two instances
//! cannot both take the last place. Each instance refreshes all its leases
//! in one script every third of `lease_ttl` and removes a lease when its
//! connection ends; the leases of an instance that dies expire on their
//! own after `lease_ttl`.
//!
//! Redis unreachable: the connection is admitted on the local count alone
//! (logged, counted in [`SharedCaps::unchecked`]); the refresh adds its
//! lease once Redis answers again, so the shared count catches up with
//! the connections really open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::mpsc;

/// Longest wait for Redis when a connection asks for its lease: past it
/// the connection is admitted on the local count (a cap must not make
/// every upgrade as slow as an unreachable server).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// `KEYS`: the route's set, the client IP's set. `ARGV`: the lease id, its
/// TTL (ms), the route's cap and the IP's cap (0: none). Returns 0 (taken),
/// 1 (the route is full) or 2 (the IP has its share).
const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, ttl = ARGV[1], tonumber(ARGV[2])
local caps = {tonumber(ARGV[3]), tonumber(ARGV[4])}
for i = 1, 2 do
  if caps[i] > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if redis.call('ZCARD', KEYS[i]) >= caps[i] then return i end
  end
end
for i = 1, 2 do
  if caps[i] > 0 then
    redis.call('ZADD', KEYS[i], now + ttl, id)
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 0
"#;

/// `KEYS`: sets; `ARGV`: the TTL (ms), then the lease id for each key.
/// Sets the expiry of each lease to now + TTL, adding it when it is
/// missing (Redis restarted, or the lease was given while it was away).
const REFRESH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, k in ipairs(KEYS) do
  redis.call('ZADD', k, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', k, ttl)
end
return 0
"#;

/// What Redis said about a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Taken: the connection counts on every instance.
    Taken,
    /// The route has its `max_connections` open across the cluster.
    RouteFull,
    /// The client IP has its `max_connections_per_ip` open across the
    /// cluster.
    IpFull,
    /// Redis did not answer: admitted on the local count (the reason).
    Unchecked(String),
}

/// The sets one lease is a member of (a set only where the route has
/// that cap).
#[derive(Debug, Clone)]
struct Held {
    route: Option<String>,
    ip: Option<String>,
    /// Whether the refresh keeps it (false while it is being taken, so
    /// that a refresh never adds a lease the cap has not admitted).
    admitted: bool,
}

struct Shared {
    conn: ConnectionManager,
    prefix: String,
    leases_of: String,
    ttl: Duration,
    next: AtomicU64,
    held: Mutex<HashMap<u64, Held>>,
    /// Leases whose connection ended: the member and its sets.
    releases: mpsc::UnboundedSender<(String, Held)>,
    take: Script,
    refresh: Script,
    unchecked: AtomicU64,
    /// Whether the last take found Redis unreachable.
    unreachable: AtomicBool,
}

impl Shared {
    fn held(&self) -> MutexGuard<'_, HashMap<u64, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn member(&self, n: u64) -> String {
        format!("{}:{n}", self.leases_of)
    }
}

/// The leases of this instance in the cluster's caps.
pub struct SharedCaps {
    shared: Arc<Shared>,
    /// Refreshes the leases and removes those that ended.
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for SharedCaps {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl std::fmt::Debug for SharedCaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCaps")
            .field("leases_of", &self.shared.leases_of)
            .field("ttl", &self.shared.ttl)
            .finish_non_exhaustive()
    }
}

/// One connection's place in the cluster's caps; dropping it removes the
/// lease (queued: the keeper sends the removals).
pub struct Lease {
    shared: Arc<Shared>,
    n: u64,
    route_max: u32,
    ip_max: u32,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("member", &self.shared.member(self.n))
            .finish_non_exhaustive()
    }
}

impl SharedCaps {
    /// The caps on `client`'s server under `prefix`, leases named
    /// `<leases_of>:<n>` (unique to this process), each living `ttl` past
    /// its last refresh. Connects lazily; needs a tokio runtime (the
    /// keeper task).
    pub fn start(
        client: redis::Client,
        prefix: &str,
        leases_of: &str,
        ttl: Duration,
    ) -> Result<SharedCaps, redis::RedisError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(ANSWER_TIMEOUT))
            .set_response_timeout(Some(ANSWER_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        let (releases, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            conn,
            prefix: prefix.to_owned(),
            leases_of: leases_of.to_owned(),
            ttl,
            next: AtomicU64::new(0),
            held: Mutex::new(HashMap::new()),
            releases,
            take: Script::new(TAKE),
            refresh: Script::new(REFRESH),
            unchecked: AtomicU64::new(0),
            unreachable: AtomicBool::new(false),
        });
        let keeper = tokio::spawn(keep(Arc::downgrade(&shared), rx));
        Ok(SharedCaps { shared, keeper })
    }

    /// The connection the caps use (a clone shares it): other bookkeeping
    /// whose answers are bounded to a second too goes over it rather than
    /// opening one more.
    pub fn connection(&self) -> ConnectionManager {
        self.shared.conn.clone()
    }

    /// A lease for a connection from `ip` on `route` under the caps
    /// (`None`: no such cap), not yet taken: [`Lease::take`] asks Redis.
    pub fn lease(
        &self,
        route: &str,
        ip: IpAddr,
        route_max: Option<u32>,
        ip_max: Option<u32>,
    ) -> Lease {
        let s = &self.shared;
        let n = s.next.fetch_add(1, Ordering::Relaxed);
        let base = format!("{}caps:{{{route}}}", s.prefix);
        let held = Held {
            route: route_max.map(|_| base.clone()),
            ip: ip_max.map(|_| format!("{base}:{ip}")),
            admitted: false,
        };
        s.held().insert(n, held);
        Lease {
            shared: s.clone(),
            n,
            route_max: route_max.unwrap_or(0),
            ip_max: ip_max.unwrap_or(0),
        }
    }

    /// Connections admitted without Redis's word since start.
    pub fn unchecked(&self) -> u64 {
        self.shared.unchecked.load(Ordering::Relaxed)
    }

    /// Leases this instance holds now.
    pub fn held(&self) -> usize {
        self.shared.held().len()
    }

    /// The figures above in Prometheus text.
    pub fn render(&self) -> String {
        format!(
            "# HELP switchyard_cluster_caps_unchecked_total Connections admitted on this \
             instance's count alone because Redis did not answer.\n\
             # TYPE switchyard_cluster_caps_unchecked_total counter\n\
             switchyard_cluster_caps_unchecked_total {}\n\
             # HELP switchyard_cluster_leases Leases this instance holds in the cluster's \
             connection caps.\n\
             # TYPE switchyard_cluster_leases gauge\n\
             switchyard_cluster_leases {}\n",
            self.unchecked(),
            self.held()
        )
    }
}

impl Lease {
    /// The route's cap it is taken under (0: none).
    pub fn route_max(&self) -> u32 {
        self.route_max
    }

    /// The client IP's cap it is taken under (0: none).
    pub fn ip_max(&self) -> u32 {
        self.ip_max
    }

    /// Ask Redis for the place (one script): taken, refused, or admitted
    /// on the local count when Redis does not answer (logged, counted).
    pub async fn take(&self) -> Verdict {
        let s = &self.shared;
        let Some(held) = s.held().get(&self.n).cloned() else {
            return Verdict::Unchecked("the lease was already given back".into());
        };
        // Unused keys keep the script's shape; with a cap of 0 it never
        // touches them.
        let none = String::new();
        let mut inv = s.take.key(held.route.as_ref().unwrap_or(&none));
        inv.key(held.ip.as_ref().unwrap_or(&none))
            .arg(s.member(self.n))
            .arg(s.ttl.as_millis() as u64)
            .arg(self.route_max)
            .arg(self.ip_max);
        let mut conn = s.conn.clone();
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, inv.invoke_async::<i64>(&mut conn)).await;
        let verdict = match answer {
            Ok(Ok(0)) => Verdict::Taken,
            Ok(Ok(1)) => Verdict::RouteFull,
            Ok(Ok(2)) => Verdict::IpFull,
            Ok(Ok(n)) => Verdict::Unchecked(format!("the script answered {n}")),
            Ok(Err(e)) => Verdict::Unchecked(e.to_string()),
            Err(_) => Verdict::Unchecked(format!("no answer within {ANSWER_TIMEOUT:?}")),
        };
        match verdict {
            Verdict::Taken | Verdict::Unchecked(_) => {
                if let Some(h) = s.held().get_mut(&self.n) {
                    h.admitted = true;
                }
            }
            // Not in Redis: nothing to remove when it is dropped.
            Verdict::RouteFull | Verdict::IpFull => {
                s.held().remove(&self.n);
            }
        }
        // One line per outage, not per connection.
        if let Verdict::Unchecked(why) = &verdict {
            s.unchecked.fetch_add(1, Ordering::Relaxed);
            if !s.unreachable.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    reason = %why,
                    "cannot check the shared connection caps in Redis: admitting on this \
                     instance's count alone (switchyard_cluster_caps_unchecked_total) until \
                     Redis answers; their leases are added then"
                );
            }
        } else if s.unreachable.swap(false, Ordering::Relaxed) {
            tracing::info!("the shared connection caps are checked in Redis again");
        }
        verdict
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let held = self.shared.held().remove(&self.n);
        if let Some(h) = held {
            let _ = self.shared.releases.send((self.shared.member(self.n), h));
        }
    }
}

/// The keeper: refreshes the admitted leases every third of the TTL and
/// removes ended ones as they come (batched), one at a time so that a
/// removal is never overtaken by a refresh that still had the lease.
async fn keep(shared: std::sync::Weak<Shared>, mut ended: mpsc::UnboundedReceiver<(String, Held)>) {
    let Some(ttl) = shared.upgrade().map(|s| s.ttl) else {
        return;
    };
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(s) = shared.upgrade() else { return };
                refresh(&s).await;
            }
            first = ended.recv() => {
                let Some(first) = first else { return };
                let mut batch = vec![first];
                while let Ok(h) = ended.try_recv() {
                    batch.push(h);
                }
                let Some(s) = shared.upgrade() else { return };
                release(&s, batch).await;
            }
        }
    }
}

/// One script for every admitted lease of this instance.
async fn refresh(s: &Shared) {
    let mut inv = s.refresh.prepare_invoke();
    inv.arg(s.ttl.as_millis() as u64);
    let mut any = false;
    for (n, h) in s.held().iter().filter(|(_, h)| h.admitted) {
        for key in [&h.route, &h.ip].into_iter().flatten() {
            inv.key(key).arg(s.member(*n));
            any = true;
        }
    }
    if !any {
        return;
    }
    let mut conn = s.conn.clone();
    if let Err(e) = inv.invoke_async::<()>(&mut conn).await {
        tracing::warn!(
            error = %e,
            "cannot refresh the leases of the shared connection caps in Redis; retrying in {:?}",
            s.ttl / 3
        );
    }
}

/// One pipeline of `ZREM`s for the leases of connections that ended.
/// A lease that cannot be removed now expires after the TTL.
async fn release(s: &Shared, batch: Vec<(String, Held)>) {
    let mut pipe = redis::pipe();
    for (member, h) in &batch {
        for key in [&h.route, &h.ip].into_iter().flatten() {
            pipe.zrem(key, member).ignore();
        }
    }
    let mut conn = s.conn.clone();
    if let Err(e) = pipe.query_async::<()>(&mut conn).await {
        tracing::warn!(
            error = %e,
            leases = batch.len(),
            "cannot remove ended leases of the shared connection caps from Redis; they \
             expire within {:?}",
            s.ttl
        );
    }
}

//! The cluster's count of fallback sessions, for `/metrics`
//! (`switchyard_cluster_fallback_sessions`) and `/status.json` of every
//! instance (`docs/cluster.md`).
//!
//! Each instance writes how many sessions it owns into one hash, a field
//! per running instance holding `<count>:<expiry>` (server ms), and reads
//! the sum back in the same script, every third of `lease_ttl`. The cost
//! is one round trip per instance per period, whatever the number of
//! sessions or scrapes; the hash holds one field per instance. An instance
//! that dies stops refreshing its field, and the next script of any other
//! instance drops it once expired, so its sessions leave the count within
//! `lease_ttl`, as they leave the shared caps.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use crate::session::Sessions;

/// `KEYS`: the hash. `ARGV`: this instance's field, the TTL (ms), its
/// count. Returns the sum of the fields not expired.
const COUNT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ':' .. (now + ttl))
local all = redis.call('HGETALL', KEYS[1])
local sum = 0
for i = 1, #all, 2 do
  local n, expiry = string.match(all[i + 1], '^(%d+):(%d+)$')
  if n and tonumber(expiry) >= now then
    sum = sum + tonumber(n)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return sum
"#;

/// The cluster's session count as this instance last read it.
#[derive(Debug)]
pub struct SessionCensus {
    node_id: String,
    /// The last sum read; negative while unknown (not read yet, or Redis
    /// did not answer the last time).
    total: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SessionCensus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SessionCensus {
    /// Count `sessions` (owned here) as the field `member` of the hash
    /// under `prefix`, every `ttl / 3`, each count living `ttl`, over
    /// `conn`: the connection of the shared caps, whose answers are bounded
    /// to a second too (a count that late is shown as unknown). Needs a
    /// tokio runtime.
    pub fn start(
        conn: ConnectionManager,
        prefix: &str,
        node_id: &str,
        member: &str,
        ttl: Duration,
        sessions: Sessions,
    ) -> SessionCensus {
        let total = Arc::new(AtomicI64::new(-1));
        let task = tokio::spawn(count(
            conn,
            format!("{prefix}sessions"),
            member.to_owned(),
            ttl,
            sessions,
            total.clone(),
        ));
        SessionCensus {
            node_id: node_id.to_owned(),
            total,
            task,
        }
    }

    /// This instance's name in the cluster.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The fallback sessions open across the cluster at the last count;
    /// `None` before the first one or while Redis does not answer.
    pub fn sessions(&self) -> Option<u64> {
        u64::try_from(self.total.load(Ordering::Relaxed)).ok()
    }

    /// The count in Prometheus text (no sample while it is unknown).
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP switchyard_cluster_fallback_sessions Fallback sessions open on every \
             instance of the cluster, as last counted in Redis.\n\
             # TYPE switchyard_cluster_fallback_sessions gauge\n",
        );
        if let Some(n) = self.sessions() {
            out.push_str(&format!("switchyard_cluster_fallback_sessions {n}\n"));
        }
        out
    }
}

async fn count(
    mut conn: ConnectionManager,
    key: String,
    member: String,
    ttl: Duration,
    sessions: Sessions,
    total: Arc<AtomicI64>,
) {
    let script = Script::new(COUNT);
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let counted = script
            .key(&key)
            .arg(&member)
            .arg(ttl_ms)
            .arg(sessions.live())
            .invoke_async::<i64>(&mut conn)
            .await;
        match counted {
            Ok(n) => total.store(n, Ordering::Relaxed),
            Err(e) => {
                // The session store logs Redis's reachability; this only
                // stops showing a count it cannot vouch for.
                tracing::debug!(error = %e, "cannot count the cluster's fallback sessions");
                total.store(-1, Ordering::Relaxed);
            }
        }
    }
}

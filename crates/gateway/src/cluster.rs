//! `[cluster]` at run time: the Redis client several gateways share and
//! this instance's name among them (`docs/cluster.md`).

use std::sync::Arc;
use std::time::Duration;

use crate::census::SessionCensus;
use crate::config::Cluster;
use crate::session::{RedisStore, SessionStore, Sessions};
use crate::shared_caps::SharedCaps;

/// Why the cluster's store could not be set up (a Redis server that cannot
/// be reached is not one of them: the gateway starts and retries).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The CA file of a `rediss://` URL no longer loads.
    #[error(transparent)]
    Ca(#[from] crate::tls::TlsError),
    /// redis-rs refused the URL or the TLS settings.
    #[error("cannot use the Redis URL {url}: {source}; check [cluster] redis")]
    Client {
        /// The URL without its credentials.
        url: String,
        /// redis-rs's reason.
        source: redis::RedisError,
    },
    /// The store needs a tokio runtime (its connection tasks).
    #[error("[cluster] needs a tokio runtime: create the Gateway inside one")]
    NoRuntime,
    /// The store refused to start.
    #[error(transparent)]
    Store(#[from] crate::session::StoreError),
}

/// This instance in the cluster: the store and caps it shares and its name.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    /// `node_id`, or the one generated at start.
    pub node_id: String,
    /// The session store in Redis.
    pub store: Arc<RedisStore>,
    /// The route caps in Redis.
    pub caps: Arc<SharedCaps>,
    key_prefix: String,
    /// This run of this instance (`node_id` may be reused by a restart).
    member: String,
    lease_ttl: Duration,
}

impl ClusterNode {
    /// The store on `c`'s server (connecting lazily: an unreachable server
    /// is logged and retried, not an error) and this instance's name.
    pub fn start(c: &Cluster) -> Result<ClusterNode, ClusterError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ClusterError::NoRuntime);
        }
        let client = client(c)?;
        let node_id = c.node_id.clone().unwrap_or_else(generated_node_id);
        tracing::info!(
            node_id,
            redis = %c.redis.redacted(),
            key_prefix = c.key_prefix,
            "cluster member: fallback sessions and route caps live in Redis"
        );
        // A configured node_id may be reused at once by a restart (or, by
        // mistake, by two instances): the leases carry a name of their own.
        let leases_of = format!("{node_id}.{}", random_hex());
        let caps = SharedCaps::start(client.clone(), &c.key_prefix, &leases_of, c.lease_ttl)
            .map_err(|source| ClusterError::Client {
                url: c.redis.redacted(),
                source,
            })?;
        // The store has connections of its own: its scripts may wait for an
        // answer longer than the caps' second (a session gives up only after
        // that), and its subscriber cannot carry commands. The census shares
        // the caps' connection.
        let store = Arc::new(RedisStore::new(client, &c.key_prefix)?);
        Ok(ClusterNode {
            node_id,
            store,
            caps: Arc::new(caps),
            key_prefix: c.key_prefix.clone(),
            member: leases_of,
            lease_ttl: c.lease_ttl,
        })
    }

    /// Start counting the cluster's sessions, `sessions` being this
    /// instance's.
    pub fn census(&self, sessions: Sessions) -> SessionCensus {
        SessionCensus::start(
            self.caps.connection(),
            &self.key_prefix,
            &self.node_id,
            &self.member,
            self.lease_ttl,
            sessions,
        )
    }

    /// The store as the sessions take it.
    pub fn session_store(&self) -> Arc<dyn SessionStore> {
        self.store.clone()
    }
}

/// The redis-rs client for `c`: the URL, with `ca_file` as the only roots
/// when given (else the system's for `rediss://`).
fn client(c: &Cluster) -> Result<redis::Client, ClusterError> {
    let refused = |source| ClusterError::Client {
        url: c.redis.redacted(),
        source,
    };
    match &c.ca_file {
        None => redis::Client::open(c.redis.as_str()).map_err(refused),
        Some(ca) => {
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(crate::tls::load_ca_pem(ca)?),
            };
            redis::Client::build_with_tls(c.redis.as_str(), certs).map_err(refused)
        }
    }
}

/// `<hostname>-<8 random hex digits>`: readable in logs, unique across
/// restarts on the same host.
fn generated_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                .take(40)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gw".to_string());
    format!("{host}-{}", random_hex())
}

/// 8 random hex digits.
fn random_hex() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    // The system's CSPRNG does not fail on Linux; zeros would still be a name.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    format!("{:08x}", u32::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::redis_server::RedisServer;

    fn cluster(lines: &str) -> Cluster {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\npath = \"/\"\napp = \"index\"\n\
             [cluster]\n{lines}"
        );
        let c = crate::Config::from_toml_str(&text, "t.toml").unwrap();
        c.cluster.unwrap()
    }

    #[tokio::test]
    async fn rediss_with_a_ca_file_connects_and_without_it_the_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("switchyard-rediss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
        let server = RedisServer::start_tls(&cert, &key).await;

        let trusted = cluster(&format!(
            "redis = \"{}\"\nca_file = \"{}\"\n",
            server.url,
            cert.display()
        ));
        let node = ClusterNode::start(&trusted).unwrap();
        node.store.ping().await.expect("TLS with the CA file");

        // The system's roots do not know this certificate.
        let system = cluster(&format!("redis = \"{}\"\n", server.url));
        let node = ClusterNode::start(&system).unwrap();
        let err = node.store.ping().await.unwrap_err().to_string();
        assert!(err.to_lowercase().contains("certificate"), "{err}");

        // Cleartext to the TLS port fails too (no silent downgrade).
        let plain = cluster(&format!("redis = \"redis://localhost:{}/\"\n", server.port));
        assert!(ClusterNode::start(&plain)
            .unwrap()
            .store
            .ping()
            .await
            .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_instance_holds_three_connections_to_redis() {
        let server = RedisServer::start().await;
        let node = ClusterNode::start(&cluster(&format!("redis = \"{}\"\n", server.url))).unwrap();
        let census = node.census(Sessions::in_memory(10, 1 << 20));
        node.store.ping().await.unwrap();
        let mut c = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let clients = loop {
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut c)
                .await
                .unwrap();
            // Everything connected: the count made, the store's subscriber in.
            if census.sessions().is_some() && clients.contains("psub=1") {
                break clients;
            }
            assert!(std::time::Instant::now() < deadline, "{clients}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // The store's, its subscriber's, the caps' (shared by the census),
        // and this test's.
        assert_eq!(clients.lines().count(), 4, "{clients}");
    }

    #[test]
    fn a_generated_node_id_is_a_valid_one_and_differs_each_time() {
        let a = generated_node_id();
        let b = generated_node_id();
        assert_ne!(a, b);
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\npath = \"/\"\napp = \"index\"\n\
             [cluster]\nredis = \"redis://127.0.0.1:6379\"\nnode_id = \"{a}\"\n"
        );
        let c = crate::Config::from_toml_str(&text, "t.toml").unwrap();
        assert_eq!(c.cluster.unwrap().node_id.as_deref(), Some(a.as_str()));
    }
}

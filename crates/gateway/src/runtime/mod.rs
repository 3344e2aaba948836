//! The process side of a gateway: every `[[listener]]` bound and run
//! (`listener`), the `[admin]` listener (`admin`), reload of the
//! listener list, and the drain at shutdown.
//!
//! [`Server::bind`] binds everything a [`Gateway`]'s configuration names;
//! [`Server::run`] serves until its shutdown future completes, then stops
//! accepting, closes every WebSocket with 1001 (apps and proxied tunnels,
//! over HTTP/1.1, HTTP/2 and HTTP/3, and fallback sessions) and waits up to the longest
//! `drain_timeout` of the routes for the closing handshakes.
//!
//! While it runs, a reload (SIGHUP, `POST /reload`) also applies the
//! `[[listener]]` list: added listeners start, removed ones stop accepting
//! (their connections go on), TLS certificate files are read again.
//! Everything is prepared first (binds, certificate loads); any failure
//! rejects the whole reload and nothing changes. A self-signed certificate
//! is generated once per process and kept across reloads.

use crate::sync::lock;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::config::{Config, Listener};
use crate::dispatch::Dispatcher;
use crate::live::{Gateway, ListenerControl};
use crate::tls;
use switchyard::proto::HttpVersion;

pub(crate) mod admin;
mod certificates;
mod error;
mod history;
mod listener;
mod status;
#[cfg(target_os = "linux")]
mod uring_workers;

use certificates::Certificates;
pub use error::ServeError;

use listener::{BoundListener, ListenerHandle};

/// A bound listener, as the caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundAddress {
    /// The TCP address actually bound (port 0 resolved).
    pub tcp: SocketAddr,
    /// Whether it speaks TLS from the first byte (`https://`, `wss://`).
    pub tls: bool,
    /// The UDP address serving HTTP/3, if any.
    pub http3: Option<SocketAddr>,
}

/// Bound listeners of a gateway, ready to run.
pub struct Server {
    gateway: Arc<Gateway>,
    dispatcher: Dispatcher,
    listeners: Vec<(Listener, BoundListener)>,
    admin: Option<TcpListener>,
    certs: Arc<Certificates>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addresses", &self.addresses())
            .field("admin", &self.admin_addr())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Bind every listener of the gateway's current config, and `[admin]`.
    /// Needs a tokio runtime.
    pub async fn bind(gateway: Arc<Gateway>) -> Result<Server, ServeError> {
        let live = gateway.live();
        let cfg = &live.config;
        let dispatcher = Dispatcher::new(gateway.clone());
        let certs = Arc::new(Certificates::default());
        let mut listeners = Vec::with_capacity(cfg.listeners.len());
        for l in &cfg.listeners {
            let bound = BoundListener::bind(cfg, l, &dispatcher, &certs)?;
            listeners.push((l.clone(), bound));
        }
        let admin =
            match &cfg.admin {
                Some(a) => Some(TcpListener::bind(a.address).await.map_err(|source| {
                    ServeError::Admin {
                        addr: a.address,
                        source,
                    }
                })?),
                None => None,
            };
        Ok(Server {
            gateway,
            dispatcher,
            listeners,
            admin,
            certs,
        })
    }

    /// The bound listeners, in the order of the configuration.
    pub fn addresses(&self) -> Vec<BoundAddress> {
        self.listeners
            .iter()
            .filter_map(|(_, l)| {
                Some(BoundAddress {
                    tcp: l.local_addr()?,
                    tls: l.is_tls(),
                    http3: l.http3_addr(),
                })
            })
            .collect()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The SHA-256 fingerprint of the self-signed certificate, when a
    /// listener uses one (compare it with what a client shows).
    pub fn self_signed_fingerprint(&self) -> Option<String> {
        self.certs.self_signed_fingerprint()
    }

    /// The gateway (reload, metrics, status).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Serve until `shutdown` completes, then drain: stop accepting, close
    /// every WebSocket with 1001, wait up to the drain timeout.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let admin = self
            .admin
            .map(|l| tokio::spawn(admin::admin_loop(l, self.gateway.clone())));
        let set = Arc::new_cyclic(|me| ListenerSet {
            me: me.clone(),
            gateway: Arc::downgrade(&self.gateway),
            dispatcher: self.dispatcher.clone(),
            certs: self.certs.clone(),
            stop: stop_rx,
            state: Mutex::new(ListenerState::default()),
        });
        {
            let mut state = lock(&set.state);
            for (cfg, l) in self.listeners {
                set.start(&mut state, cfg, l);
            }
        }
        self.gateway.set_listener_control(Some(set.clone()));
        shutdown.await;
        info!("shutting down: closing open WebSockets with 1001");
        self.gateway.start_draining();
        self.gateway.set_listener_control(None);
        let _ = stop_tx.send(true);
        // Fallback sessions get close 1001 like the WebSockets (the client
        // as `event: close`, the backend as a close frame).
        let sessions = self.gateway.sessions().clone();
        let grace = self.gateway.drain_timeout();
        let sessions_drained = tokio::spawn(async move { sessions.drain(grace).await });
        let tasks = std::mem::take(&mut lock(&set.state).tasks);
        for t in tasks {
            let _ = t.await;
        }
        let _ = sessions_drained.await;
        if let Some(a) = admin {
            a.abort();
        }
    }
}

/// What identifies a listener across reloads is its configured address.
/// The same address with other protocols or TLS on/off cannot be changed
/// in place (see [`ListenerSet::prepare`]).
fn shape(l: &Listener) -> (Option<crate::config::TlsMode>, bool, bool) {
    (
        l.tls.as_ref().map(|t| t.mode),
        l.protocols.contains(&HttpVersion::Http2),
        l.protocols.contains(&HttpVersion::Http3),
    )
}

/// The running listeners of a gateway, changed by reloads.
struct ListenerSet {
    me: Weak<ListenerSet>,
    gateway: Weak<Gateway>,
    dispatcher: Dispatcher,
    certs: Arc<Certificates>,
    stop: watch::Receiver<bool>,
    state: Mutex<ListenerState>,
}

#[derive(Default)]
struct ListenerState {
    /// Accepting, by configured address.
    active: Vec<(Listener, ListenerHandle)>,
    /// Every listener's run task (removed ones still drain at shutdown).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ListenerSet {
    fn start(&self, state: &mut ListenerState, cfg: Listener, listener: BoundListener) {
        state.active.push((cfg, listener.handle()));
        state
            .tasks
            .push(tokio::spawn(listener.run(self.stop.clone())));
    }
}

impl ListenerControl for ListenerSet {
    fn prepare(&self, new: &Config) -> Result<Box<dyn FnOnce() + Send>, String> {
        if self.gateway.upgrade().is_none() {
            return Err("the gateway is shutting down".into());
        }
        let state = lock(&self.state);
        let mut swaps = Vec::new();
        let mut added = Vec::new();
        for l in &new.listeners {
            match state.active.iter().find(|(c, _)| c.address == l.address) {
                Some((old, handle)) => {
                    if shape(old) != shape(l) {
                        return Err(format!(
                            "listener {}: its protocols or TLS on/off changed; that needs a \
                             restart (or remove the listener in one reload and add it back in \
                             the next)",
                            l.address
                        ));
                    }
                    if let (Some(t), Some(cert)) = (&l.tls, handle.certificate()) {
                        let key = self
                            .certs
                            .load(&t.certificate)
                            .and_then(|(chain, key)| tls::certified_key(chain, key))
                            .map_err(|e| format!("listener {}: {e}", l.address))?;
                        swaps.push((cert.clone(), key));
                    }
                }
                None => {
                    let bound = BoundListener::bind(new, l, &self.dispatcher, &self.certs)
                        .map_err(|e| e.to_string())?;
                    added.push((l.clone(), bound));
                }
            }
        }
        let removed: Vec<SocketAddr> = state
            .active
            .iter()
            .map(|(c, _)| c.address)
            .filter(|a| !new.listeners.iter().any(|l| l.address == *a))
            .collect();
        drop(state);
        let set = self.me.clone();
        Ok(Box::new(move || {
            let Some(set) = set.upgrade() else { return };
            let mut state = lock(&set.state);
            for (cert, key) in swaps {
                cert.replace(key);
            }
            state.active.retain(|(c, h)| {
                if removed.contains(&c.address) {
                    info!(address = %c.address, "listener removed by the reload: no longer accepting; its open connections go on");
                    h.stop_accepting();
                    false
                } else {
                    true
                }
            });
            for (cfg, l) in added {
                info!(address = %cfg.address, bound = ?l.local_addr(), "listener added by the reload");
                set.start(&mut state, cfg, l);
            }
        }))
    }
}

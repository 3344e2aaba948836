//! The gateway process: listeners built from the config, the admin
//! listener, reload and drain.
//!
//! [`GatewayServer::bind`] turns a [`Config`] into one [`Server`] per
//! `[[listener]]` (each with its own TLS and protocols, all sharing one
//! [`Gateway`]) plus the `[admin]` listener:
//!
//! | admin request  | answer |
//! |----------------|--------|
//! | `GET /metrics` | 200, Prometheus text ([`crate::proxy::metrics`]) |
//! | `GET /status`  | 200, HTML: live proxied connections per route (client, upstream, protocol, age, bytes) |
//! | `POST /reload` | 200 `reloaded: generation N`, or 422 with the reason (the old config stays) |
//! | other paths    | 404; other methods on those paths 405 |
//!
//! While [`GatewayServer::run`] runs, a reload (SIGHUP, `POST /reload`)
//! also applies the `[[listener]]` list: added listeners start, removed ones
//! stop accepting (their connections go on), TLS certificate files are read
//! again. Everything is prepared first (binds, certificate loads); any
//! failure rejects the whole reload and nothing changes.
//!
//! The admin listener speaks HTTP/1.1, one request per connection
//! (`Connection: close`). Keep it on loopback or a private network: it has
//! no authentication.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, StatusCode};
use switchyard::server::read_request_head;
use switchyard::Limits;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::config::{Config, Protocol};
use crate::routing::{Gateway, GatewayError};
use crate::server::{ServeConfig, ServeError, Server, TlsMode, TlsSettings};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Config or upstream setup.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// A listener.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// A listener's certificate or key.
    #[error("listener {addr}: {source}")]
    Tls {
        /// The listener.
        addr: SocketAddr,
        /// Why.
        source: crate::tls::TlsError,
    },
    /// The admin listener.
    #[error(
        "cannot listen on the admin address {addr}: {source} (is another process using the port?)"
    )]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Bound listeners of a gateway, ready to run.
pub struct GatewayServer {
    gateway: Arc<Gateway>,
    servers: Vec<(crate::config::Listener, Server)>,
    admin: Option<TcpListener>,
}

/// What identifies a listener across reloads: its configured address.
/// The same address with other protocols or TLS on/off cannot be changed
/// in place (see [`ListenerSet::prepare`]).
fn shape(l: &crate::config::Listener) -> (bool, bool, bool) {
    (
        l.tls.is_some(),
        l.protocols.contains(&Protocol::H2),
        l.protocols.contains(&Protocol::H3),
    )
}

/// The running listeners of a gateway, changed by reloads
/// ([`crate::routing::ListenerControl`]).
struct ListenerSet {
    me: std::sync::Weak<ListenerSet>,
    gateway: std::sync::Weak<Gateway>,
    stop: tokio::sync::watch::Receiver<bool>,
    state: std::sync::Mutex<ListenerState>,
}

#[derive(Default)]
struct ListenerState {
    /// Accepting, by configured address.
    active: Vec<(crate::config::Listener, crate::server::ServerHandle)>,
    /// Every server's run task (removed ones still drain at shutdown).
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ListenerSet {
    fn start(&self, state: &mut ListenerState, cfg: crate::config::Listener, server: Server) {
        state.active.push((cfg, server.handle()));
        let stop = crate::routing::stopped(self.stop.clone());
        state.tasks.push(tokio::spawn(server.run(stop)));
    }
}

impl crate::routing::ListenerControl for ListenerSet {
    fn prepare(&self, new: &Config) -> Result<Box<dyn FnOnce() + Send>, String> {
        let Some(gateway) = self.gateway.upgrade() else {
            return Err("the gateway is shutting down".into());
        };
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
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
                        let key = crate::tls::load_certified_key(&t.cert, &t.key)
                            .map_err(|e| format!("listener {}: {e}", l.address))?;
                        swaps.push((cert.clone(), key));
                    }
                }
                None => {
                    let sc = serve_config(new, l, &gateway).map_err(|e| e.to_string())?;
                    let server = Server::bind_now(sc).map_err(|e| e.to_string())?;
                    added.push((l.clone(), server));
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
            let mut state = set.state.lock().unwrap_or_else(|p| p.into_inner());
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
            for (cfg, server) in added {
                info!(address = %cfg.address, bound = ?server.local_addrs(), "listener added by the reload");
                set.start(&mut state, cfg, server);
            }
        }))
    }
}

/// The front settings of one `[[listener]]`.
pub fn serve_config(
    cfg: &Config,
    listener: &crate::config::Listener,
    gateway: &Arc<Gateway>,
) -> Result<ServeConfig, StartError> {
    let mut sc = ServeConfig {
        listen: vec![listener.address],
        limits: cfg.limits.clone(),
        shutdown_grace: gateway.drain_timeout(),
        gateway: Some(gateway.clone()),
        ..ServeConfig::default()
    };
    sc.http2.enabled = listener.protocols.contains(&Protocol::H2);
    // Validation guarantees h3 only with tls.
    sc.http3 = listener.protocols.contains(&Protocol::H3) && listener.tls.is_some();
    if let Some(t) = &listener.tls {
        let (certs, key) =
            crate::tls::load_pem(&t.cert, &t.key).map_err(|source| StartError::Tls {
                addr: listener.address,
                source,
            })?;
        sc.tls = Some(TlsSettings {
            certs,
            key,
            mode: TlsMode::Listener,
        });
    }
    Ok(sc)
}

impl GatewayServer {
    /// Bind every listener of the gateway's current config, and `[admin]`.
    pub async fn bind(gateway: Arc<Gateway>) -> Result<GatewayServer, StartError> {
        let live = gateway.live();
        let cfg = &live.config;
        let mut servers = Vec::with_capacity(cfg.listeners.len());
        for l in &cfg.listeners {
            let sc = serve_config(cfg, l, &gateway)?;
            servers.push((l.clone(), Server::bind(sc).await?));
        }
        let admin =
            match &cfg.admin {
                Some(a) => Some(TcpListener::bind(a.address).await.map_err(|source| {
                    StartError::Admin {
                        addr: a.address,
                        source,
                    }
                })?),
                None => None,
            };
        Ok(GatewayServer {
            gateway,
            servers,
            admin,
        })
    }

    /// The bound proxy listeners: (address, TLS).
    pub fn local_addrs(&self) -> Vec<(SocketAddr, bool)> {
        self.servers
            .iter()
            .flat_map(|(_, s)| {
                let tls = s.is_tls();
                s.local_addrs().into_iter().map(move |a| (a, tls))
            })
            .collect()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The gateway (reload, metrics, status).
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// Serve until `shutdown` completes, then drain: stop accepting, close
    /// every proxied WebSocket with 1001, wait up to the drain timeout.
    ///
    /// While it runs, a reload of the gateway also applies `[[listener]]`
    /// changes: added listeners start, removed ones stop accepting (their
    /// connections go on, and are drained at shutdown), and the TLS
    /// certificate and key files of the others are read again (new
    /// handshakes get the new pair). A listener that cannot be bound or a
    /// certificate that cannot be loaded rejects the whole reload.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let admin = self
            .admin
            .map(|l| tokio::spawn(admin_loop(l, self.gateway.clone())));
        let set = Arc::new_cyclic(|me| ListenerSet {
            me: me.clone(),
            gateway: Arc::downgrade(&self.gateway),
            stop: stop_rx,
            state: std::sync::Mutex::new(ListenerState::default()),
        });
        {
            let mut state = set.state.lock().unwrap_or_else(|p| p.into_inner());
            for (cfg, server) in self.servers {
                set.start(&mut state, cfg, server);
            }
        }
        self.gateway.set_listener_control(Some(set.clone()));
        shutdown.await;
        self.gateway.set_listener_control(None);
        let _ = stop_tx.send(true);
        let tasks = std::mem::take(&mut set.state.lock().unwrap_or_else(|p| p.into_inner()).tasks);
        for t in tasks {
            let _ = t.await;
        }
        if let Some(a) = admin {
            a.abort();
        }
    }
}

async fn admin_loop(listener: TcpListener, gw: Arc<Gateway>) {
    info!(local = ?listener.local_addr().ok(), "admin listening (/metrics, /status, POST /reload)");
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(admin_conn(s, gw.clone()));
            }
            Err(e) => {
                warn!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn admin_conn(mut s: TcpStream, gw: Arc<Gateway>) {
    let limits = Limits::default();
    let Ok((req, _)) = read_request_head(&mut s, &limits).await else {
        return;
    };
    let (status, ctype, body) = admin_answer(req.method(), req.uri().path(), &gw);
    let mut out = Vec::with_capacity(body.len() + 160);
    let _ = write!(
        ByteWriter(&mut out),
        "HTTP/1.1 {} {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if req.method() != Method::HEAD {
        out.extend_from_slice(body.as_bytes());
    }
    let _ = s.write_all(&out).await;
    let _ = s.shutdown().await;
}

struct ByteWriter<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The admin answer for a method and path: (status, content type, body).
pub fn admin_answer(
    method: &Method,
    path: &str,
    gw: &Gateway,
) -> (StatusCode, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/metrics" if get => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            gw.metrics().render(),
        ),
        "/status" if get => (StatusCode::OK, "text/html; charset=utf-8", status_page(gw)),
        "/reload" if method == Method::POST => match gw.reload() {
            Ok(g) => (StatusCode::OK, TEXT, format!("reloaded: generation {g}\n")),
            Err(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                TEXT,
                format!("reload rejected, the previous configuration stays in force: {e}\n"),
            ),
        },
        "/metrics" | "/status" | "/reload" => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed: GET /metrics, GET /status, POST /reload\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /metrics, /status, POST /reload\n".into(),
        ),
    }
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// The `/status` page.
pub fn status_page(gw: &Gateway) -> String {
    let live = gw.live();
    let conns = gw.connections();
    let mut h = String::with_capacity(1024 + conns.len() * 160);
    h.push_str("<!doctype html><meta charset=utf-8><title>switchyard status</title>\n");
    let _ = writeln!(
        h,
        "<h1>switchyard gateway</h1><p>config generation {}, {} reload(s), {} live proxied connection(s)</p>",
        live.generation,
        gw.reload_count(),
        conns.len()
    );
    for (label, route) in live.labels.iter().zip(&live.config.routes) {
        let target = match route.target() {
            crate::config::RouteTarget::Upstream(u) => format!("upstream {u}"),
            crate::config::RouteTarget::App(a) => format!("app {a:?}"),
        };
        let here: Vec<_> = conns.iter().filter(|c| &c.0 == label).collect();
        let _ = writeln!(
            h,
            "<h2>{} &rarr; {}</h2><p>{} live</p>",
            esc(label),
            esc(&target),
            here.len()
        );
        if here.is_empty() {
            continue;
        }
        h.push_str("<table border=1><tr><th>client</th><th>upstream</th><th>protocol</th><th>age (s)</th><th>bytes in</th><th>bytes out</th></tr>\n");
        for c in here {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                c.1,
                esc(&c.2),
                c.3,
                c.4,
                c.5,
                c.6
            );
        }
        h.push_str("</table>\n");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> Arc<Gateway> {
        let cfg = Config::from_toml_str(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"a\"\nservers = [\"ws://127.0.0.1:9\"]\n\
             [[route]]\nhost = \"x.example\"\npath = \"/ws\"\nupstream = \"a\"\n",
            "t.toml",
        )
        .unwrap();
        Gateway::new(cfg, None).unwrap()
    }

    #[tokio::test]
    async fn admin_routes() {
        let g = gw();
        let (s, t, body) = admin_answer(&Method::GET, "/metrics", &g);
        assert_eq!(s, StatusCode::OK);
        assert!(t.starts_with("text/plain; version=0.0.4"));
        assert_eq!(body, g.metrics().render());
        let (s, t, body) = admin_answer(&Method::GET, "/status", &g);
        assert_eq!(s, StatusCode::OK);
        assert!(t.starts_with("text/html"));
        assert!(body.contains("x.example/ws &rarr; upstream a"), "{body}");
        assert!(body.contains("0 live proxied connection(s)"), "{body}");
        assert_eq!(
            admin_answer(&Method::POST, "/metrics", &g).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            admin_answer(&Method::GET, "/x", &g).0,
            StatusCode::NOT_FOUND
        );
        let (s, _, body) = admin_answer(&Method::POST, "/reload", &g);
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body.contains("no config file"), "{body}");
    }

    #[test]
    fn escaping() {
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}

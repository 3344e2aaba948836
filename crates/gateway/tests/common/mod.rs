//! Shared by the gateway's socket tests: a gateway [`Server`] on 127.0.0.1
//! port 0 that the test stops itself, built from a [`Config`] like
//! `switchyard serve` builds it.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use switchyard_gateway::config::{App, CertificateSource, Config, Overrides, TlsOverride};
use switchyard_gateway::{Gateway, Server};
use tokio::sync::oneshot;

pub struct Running {
    /// The first listener's TCP address.
    pub addr: SocketAddr,
    /// Every listener's address, and its HTTP/3 address.
    pub addrs: Vec<switchyard_gateway::BoundAddress>,
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Trigger the graceful shutdown and wait (at most 10 s) for it to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server did not stop")
            .unwrap();
    }
}

/// The embedded default on 127.0.0.1 port 0.
pub fn default_config() -> Config {
    with(Overrides::new())
}

/// The embedded default with these flags (on 127.0.0.1 port 0).
pub fn with(mut overrides: Overrides) -> Config {
    overrides.listen = vec!["127.0.0.1:0".parse().unwrap()];
    overrides.apply(Config::embedded_default()).unwrap()
}

/// The embedded default with `--lineecho` and a TLS-only page at
/// `/secure`, on 127.0.0.1 port 0.
pub fn with_lineecho_and_secure(mut overrides: Overrides) -> Config {
    overrides.lineecho = true;
    let mut cfg = with(overrides);
    let mut secure = cfg
        .routes
        .iter()
        .find(|r| r.app == Some(App::Index))
        .unwrap()
        .clone();
    secure.path = "/secure".into();
    secure.policy.require_tls = true;
    cfg.routes.push(secure);
    revalidate(cfg)
}

/// `cfg` through its TOML form: validated (and normalized) like a file.
pub fn revalidate(cfg: Config) -> Config {
    Config::from_toml_str(&cfg.to_toml_string(), "test.toml").unwrap()
}

/// A certificate for localhost, 127.0.0.1 and ::1 in PEM files (removed
/// with the value), and its DER for clients to trust.
pub struct TestCert {
    dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    pub fn new() -> TestCert {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-gw-cert-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        let c = rcgen::generate_simple_self_signed(names).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
        TestCert {
            dir,
            cert,
            key,
            der: c.cert.der().clone(),
        }
    }

    /// Where the listeners' certificate comes from.
    pub fn source(&self) -> CertificateSource {
        CertificateSource::Files {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// `--tls-cert ... --tls-key ...`.
    pub fn listener(&self) -> Option<TlsOverride> {
        Some(TlsOverride::Listener(self.source()))
    }

    /// `--tls-upgrade --tls-cert ... --tls-key ...`.
    pub fn upgrade(&self) -> Option<TlsOverride> {
        Some(TlsOverride::Upgrade(self.source()))
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Flags with `tls` set.
pub fn tls_flags(tls: Option<TlsOverride>) -> Overrides {
    let mut o = Overrides::new();
    o.tls = tls;
    o
}

/// Run `cfg` (every listener address as configured) until `Running::stop`.
pub async fn start(cfg: Config) -> Running {
    let gateway = Gateway::new(cfg, None).unwrap();
    let server = Server::bind(gateway.clone()).await.unwrap();
    let addrs = server.addresses();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        addr: addrs[0].tcp,
        addrs,
        gateway,
        stop: Some(tx),
        task,
    }
}

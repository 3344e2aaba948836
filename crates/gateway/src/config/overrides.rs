//! Command-line flags as shorthands for config keys: [`Overrides`] applied
//! on top of a configuration (the embedded default or a file), the result
//! validated like a file. A reload applies them again on top of the file
//! it re-reads ([`ConfigSource`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use switchyard_proto::HttpVersion;

use super::diagnostics::ConfigError;
use super::embedded::EMBEDDED_DEFAULT_TOML;
use super::model::{
    App, CertificateSource, Config, ListenerTls, PathMatch, Policy, Route, TlsMode,
};

/// Where the listeners' certificate comes from, on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsOverride {
    /// `--tls` (with `--tls-cert`/`--tls-key` or self-signed): every listener
    /// speaks TLS from the first byte.
    Listener(CertificateSource),
    /// `--tls-upgrade`: every listener is cleartext and offers RFC 2817.
    Upgrade(CertificateSource),
}

/// The command line's changes to a configuration. Each is a shorthand for
/// config keys (see each field); the empty value changes nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Overrides {
    /// `--listen`: the listeners' addresses. Each address gets a listener
    /// like the configuration's first one (`[[listener]] address`).
    pub listen: Vec<SocketAddr>,
    /// `--tls`, `--tls-cert`/`--tls-key`, `--tls-upgrade`: every listener's
    /// `tls`.
    pub tls: Option<TlsOverride>,
    /// `--no-http2`: `h2` removed from every listener's `protocols`.
    pub no_http2: bool,
    /// `--http3`: `h3` added to every listener's `protocols`.
    pub http3: bool,
    /// `--lineecho`: a route `/lineecho` (exact) to the `lineecho` app.
    pub lineecho: bool,
    /// `--io-uring`: `[runtime] io_uring = true`.
    pub io_uring: bool,
    /// `--threads N`: `[runtime] threads = N`.
    pub threads: Option<usize>,
}

impl Overrides {
    /// No change.
    pub fn new() -> Self {
        Overrides::default()
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// `cfg` with the overrides applied, validated again (errors name the
    /// key the flag sets).
    pub fn apply(&self, mut cfg: Config) -> Result<Config, ConfigError> {
        if self.is_empty() {
            return Ok(cfg);
        }
        if !self.listen.is_empty() {
            let template = cfg.listeners.first().cloned();
            cfg.listeners = match template {
                Some(t) => self
                    .listen
                    .iter()
                    .map(|a| {
                        let mut l = t.clone();
                        l.address = *a;
                        l
                    })
                    .collect(),
                None => Vec::new(),
            };
        }
        for l in &mut cfg.listeners {
            if let Some(tls) = &self.tls {
                let (certificate, mode) = match tls {
                    TlsOverride::Listener(c) => (c.clone(), TlsMode::Listener),
                    TlsOverride::Upgrade(c) => (c.clone(), TlsMode::Upgrade),
                };
                l.tls = Some(ListenerTls { certificate, mode });
            }
            if self.no_http2 {
                l.protocols.retain(|p| *p != HttpVersion::Http2);
            }
            if self.http3 && !l.protocols.contains(&HttpVersion::Http3) {
                l.protocols.push(HttpVersion::Http3);
            }
        }
        if self.lineecho && !cfg.routes.iter().any(|r| r.path == "/lineecho") {
            cfg.routes.push(Route {
                host: None,
                path: "/lineecho".into(),
                path_match: PathMatch::Exact,
                upstream: None,
                app: Some(App::LineEcho),
                policy: Policy {
                    allowed_upgrades: vec!["lineecho/1".into()],
                    ..Policy::default()
                },
            });
        }
        if self.io_uring {
            cfg.runtime.io_uring = true;
        }
        if self.threads.is_some() {
            cfg.runtime.threads = self.threads;
        }
        Config::from_toml_str(&cfg.to_toml_string(), "the command line").map_err(|e| match e {
            ConfigError::Invalid { key, message, .. } => ConfigError::Flags { key, message },
            other => other,
        })
    }
}

/// What a gateway runs and re-reads on reload: a file or the embedded
/// default, with the command line's overrides on top.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    /// `--config FILE`; `None`: the embedded default.
    pub file: Option<PathBuf>,
    /// The command line's flags.
    pub overrides: Overrides,
}

impl ConfigSource {
    /// A file without overrides.
    pub fn file(path: PathBuf) -> Self {
        ConfigSource {
            file: Some(path),
            overrides: Overrides::default(),
        }
    }

    /// Read (the file, or the embedded default), apply the overrides,
    /// validate.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let base = match &self.file {
            Some(path) => Config::load(path)?,
            None => Config::from_toml_str(EMBEDDED_DEFAULT_TOML, "the embedded default")?,
        };
        self.overrides.apply(base)
    }

    /// What the configuration is called in messages.
    pub fn name(&self) -> String {
        match &self.file {
            Some(p) => p.display().to_string(),
            None => "the embedded default".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded_with(o: Overrides) -> Result<Config, ConfigError> {
        ConfigSource {
            file: None,
            overrides: o,
        }
        .load()
    }

    #[test]
    fn no_overrides_is_the_embedded_default() {
        assert_eq!(
            embedded_with(Overrides::new()).unwrap(),
            Config::embedded_default()
        );
    }

    #[test]
    fn flags_set_their_keys() {
        let o = Overrides {
            listen: vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
            tls: Some(TlsOverride::Listener(CertificateSource::SelfSigned)),
            http3: true,
            lineecho: true,
            ..Overrides::default()
        };
        let c = embedded_with(o).unwrap();
        assert_eq!(c.listeners.len(), 2);
        for l in &c.listeners {
            assert_eq!(
                l.protocols,
                [HttpVersion::Http1, HttpVersion::Http2, HttpVersion::Http3]
            );
            assert_eq!(
                l.tls.as_ref().unwrap().certificate,
                CertificateSource::SelfSigned
            );
        }
        let r = c.routes.iter().find(|r| r.path == "/lineecho").unwrap();
        assert_eq!(r.app, Some(App::LineEcho));
        assert_eq!(r.policy.allowed_upgrades, ["lineecho/1"]);
        let c = embedded_with(Overrides {
            no_http2: true,
            io_uring: true,
            threads: Some(1),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(c.listeners[0].protocols, [HttpVersion::Http1]);
        assert!(c.runtime.io_uring);
        assert_eq!(c.runtime.threads, Some(1));
    }

    #[test]
    fn a_flag_the_config_cannot_take_names_the_key() {
        let err = embedded_with(Overrides {
            http3: true,
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("the command line: listener[0].protocols[2]: h3 runs over QUIC"),
            "{err}"
        );
    }
}

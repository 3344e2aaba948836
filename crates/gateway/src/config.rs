//! The TOML configuration of `switchyard serve --config switchyard.toml`.
//!
//! ```toml
//! [[listener]]
//! address = "0.0.0.0:8443"
//! protocols = ["h1", "h2"]              # h1 | h2 | h3 (h3 needs tls)
//! tls = { cert = "cert.pem", key = "key.pem" }   # relative to this file
//!
//! [admin]                               # optional: /metrics and /status
//! address = "127.0.0.1:9090"
//!
//! [limits]                              # optional: switchyard_proto::Limits
//! max_message_size = "1MiB"
//!
//! [[upstream]]
//! name = "chat"
//! servers = ["ws://10.0.0.5:9000", "wss://chat-2.internal:443"]
//! balance = "least_connections"         # or "round_robin" (default)
//!
//! [[route]]
//! host = "chat.example.com"             # optional, exact, case-insensitive
//! path = "/ws"                          # prefix, segment-aware
//! upstream = "chat"                     # or: app = "echo" | "index"
//! [route.policy]
//! allowed_origins = ["https://chat.example.com"]
//! idle_timeout = "10m"
//! ```
//!
//! Durations are strings: a whole number and a unit, `ms`, `s`, `m` or `h`
//! (`"500ms"`, `"30s"`, `"2m"`, `"1h"`). Sizes are a number of bytes or a
//! string with a unit, `B`, `KiB`, `MiB`, `GiB` (binary) or `KB`, `MB`, `GB`
//! (decimal): `1000`, `"16KiB"`, `"1MiB"`.
//!
//! Every table rejects keys it does not know. Every error names the file, the
//! line, the key path (arrays indexed from 0, as in `route[1].policy.idle_timeout`)
//! and what was expected; `switchyard serve --check-config` prints it and exits.
//!
//! Relative TLS paths are resolved against the directory of the config file
//! ([`Config::load`]) or the current directory ([`Config::from_toml_str`]).

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use switchyard_proto::Limits;
use toml::de::{DeTable, DeValue};

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}; check the path given to --config", path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{origin}:{line}: TOML syntax error: {message}")]
    Syntax {
        /// File name (or another label) the text came from.
        origin: String,
        /// 1-based line of the error.
        line: usize,
        /// What the TOML parser expected.
        message: String,
    },
    /// The TOML is valid but a key is unknown, of the wrong type or has a
    /// value the gateway cannot use.
    #[error("{origin}:{line}: {key}: {message}")]
    Invalid {
        /// File name (or another label) the text came from.
        origin: String,
        /// 1-based line of the offending key.
        line: usize,
        /// The key path, like `route[1].policy.idle_timeout`.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line of the error, when it comes from the text.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => Some(*line),
        }
    }

    /// The key path of the error, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------

/// The whole configuration of `switchyard serve`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[[listener]]`: where to accept connections. At least one.
    #[serde(rename = "listener", default)]
    pub listeners: Vec<Listener>,
    /// `[[route]]`: which requests go where. At least one.
    #[serde(rename = "route", default)]
    pub routes: Vec<Route>,
    /// `[[upstream]]`: named groups of backends routes can point to.
    #[serde(rename = "upstream", default)]
    pub upstreams: Vec<Upstream>,
    /// `[admin]`: an optional listener for `/metrics` (Prometheus text) and
    /// `/status`. Keep it on loopback or a private network.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// `[limits]`: per-connection limits of the protocol layer; each key is
    /// optional and defaults to [`Limits::default()`].
    #[serde(default, deserialize_with = "de_limits")]
    pub limits: Limits,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// IP and port, like `"0.0.0.0:8080"` or `"[::]:443"`.
    #[serde(deserialize_with = "de_socket_addr")]
    pub address: SocketAddr,
    /// Certificate chain and key in PEM; without it the listener is
    /// cleartext.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Protocols served. Default `["h1"]`, or `["h1", "h2"]` with `tls`.
    /// `h2` without TLS is HTTP/2 with prior knowledge (h2c); `h3` needs TLS.
    #[serde(default)]
    pub protocols: Vec<Protocol>,
}

/// `tls = { cert = "...", key = "..." }` of a listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// An HTTP version a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (`Upgrade`, RFC 9110 §7.8).
    H1,
    /// HTTP/2 (extended CONNECT, RFC 8441).
    H2,
    /// HTTP/3 over QUIC (extended CONNECT, RFC 9220).
    H3,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// IP and port of the metrics / status listener.
    #[serde(deserialize_with = "de_socket_addr")]
    pub address: SocketAddr,
}

/// One `[[route]]`. Exactly one of `upstream` and `app` is set in a
/// validated [`Config`]; [`Route::target`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Host to match (exact, case-insensitive, port ignored). None: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, segment-aware: `/ws` matches `/ws` and `/ws/x`, not `/wsx`.
    pub path: String,
    /// Name of the `[[upstream]]` to proxy to.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Built-in application to serve.
    #[serde(default)]
    pub app: Option<App>,
    /// `[route.policy]`: what the route accepts.
    #[serde(default)]
    pub policy: Policy,
}

/// A built-in application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum App {
    /// WebSocket echo: every message back to its sender.
    Echo,
    /// The index page (HTML) describing the server.
    Index,
}

/// What a route sends its requests to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget<'a> {
    /// The upstream group of that name.
    Upstream(&'a str),
    /// A built-in application.
    App(App),
}

impl Route {
    /// The route's target. A validated config always has exactly one; a
    /// hand-built `Route` with neither falls back to the index app.
    pub fn target(&self) -> RouteTarget<'_> {
        match (&self.upstream, self.app) {
            (Some(name), _) => RouteTarget::Upstream(name),
            (None, Some(app)) => RouteTarget::App(app),
            (None, None) => RouteTarget::App(App::Index),
        }
    }
}

/// `[route.policy]`: what a route accepts and how long connections live.
///
/// | key | default | meaning |
/// |---|---|---|
/// | `allowed_origins` | any | `Origin` values accepted (`"https://host[:port]"` or `"null"`), compared case-insensitively; a request without `Origin` (not a browser) is accepted. Others get 403. |
/// | `allowed_upgrades` | `["websocket"]` | `Upgrade` tokens the route may switch to; `h2c` is never allowed. |
/// | `max_connections` | no cap | open upgraded connections on this route; beyond it 503. |
/// | `max_connections_per_ip` | no cap | the same, per client IP; beyond it 429. |
/// | `max_message_size` | `[limits].max_message_size` | largest message accepted on this route, after decompression; beyond it close 1009. |
/// | `require_upgrade` | `false` | answer 426 Upgrade Required to requests that do not ask for an allowed upgrade. |
/// | `idle_timeout` | `"5m"` | close a tunnel when neither side sent anything for this long. Long enough for applications that heartbeat every 30-60 s, short enough to reclaim half-open connections. |
/// | `ping_interval` | `"off"` | ping each side after this long without a frame from it. |
/// | `pong_timeout` | `"20s"` | close a side that did not answer a ping within this. |
/// | `drain_timeout` | `"10s"` | on shutdown, how long connections get after the 1001 close before they are cut. |
/// | `preserve_host` | `true` | send the client's `Host` upstream; `false` sends the backend's host and port. |
/// | `tunnel` | `"auto"` | `"transparent"` (bytes copied), `"frames"` (WebSocket messages relayed: heartbeats, limits, message metrics) or `"auto"`: frames when `ping_interval` or `max_message_size` is set, else transparent. Tokens other than websocket are always transparent. |
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// See the table on [`Policy`].
    pub allowed_origins: Option<Vec<String>>,
    /// See the table on [`Policy`]. Lowercase after validation.
    pub allowed_upgrades: Vec<String>,
    /// See the table on [`Policy`].
    pub max_connections: Option<u32>,
    /// See the table on [`Policy`].
    pub max_connections_per_ip: Option<u32>,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_opt_size")]
    pub max_message_size: Option<usize>,
    /// See the table on [`Policy`].
    pub require_upgrade: bool,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_duration_or_off")]
    pub ping_interval: Option<Duration>,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_duration")]
    pub pong_timeout: Duration,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// See the table on [`Policy`].
    pub preserve_host: bool,
    /// See the table on [`Policy`].
    pub tunnel: TunnelSetting,
}

/// `tunnel` of a route policy: how a proxied WebSocket is relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelSetting {
    /// Frames when the policy needs them (heartbeat, message limit).
    #[default]
    Auto,
    /// Bytes copied both ways.
    Transparent,
    /// WebSocket messages relayed.
    Frames,
}

impl TunnelSetting {
    /// The TOML value.
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelSetting::Auto => "auto",
            TunnelSetting::Transparent => "transparent",
            TunnelSetting::Frames => "frames",
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_origins: None,
            allowed_upgrades: vec!["websocket".to_string()],
            max_connections: None,
            max_connections_per_ip: None,
            max_message_size: None,
            require_upgrade: false,
            idle_timeout: Duration::from_secs(300),
            ping_interval: None,
            pong_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(10),
            preserve_host: true,
            tunnel: TunnelSetting::Auto,
        }
    }
}

impl Policy {
    /// Whether a request with this `Origin` header value (None: no header)
    /// may upgrade on this route.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match (&self.allowed_origins, origin) {
            (None, _) | (Some(_), None) => true,
            (Some(list), Some(origin)) => {
                let origin = origin.trim();
                list.iter().any(|o| o.eq_ignore_ascii_case(origin))
            }
        }
    }

    /// Whether this `Upgrade` token (case-insensitive) is allowed here.
    pub fn upgrade_allowed(&self, token: &str) -> bool {
        self.allowed_upgrades
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    }
}

/// One `[[upstream]]`: a named group of backends.
///
/// | key | default | meaning |
/// |---|---|---|
/// | `name` | required | what routes refer to |
/// | `servers` | required | `ws://` or `wss://` URLs, at least one |
/// | `balance` | `"round_robin"` | or `"least_connections"` |
/// | `connect_timeout` | `"5s"` | TCP + TLS + upgrade handshake to one backend |
/// | `retries` | `2` | further backends tried when one fails, as long as nothing was sent to the client |
/// | `health.passive` | 3 fails, `"30s"` | see [`PassiveHealth`] |
/// | `health.active` | off | see [`ActiveHealth`] |
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Unique name.
    pub name: String,
    /// The backends.
    pub servers: Vec<Backend>,
    /// How a backend is chosen.
    #[serde(default)]
    pub balance: Balance,
    /// Deadline for reaching one backend (TCP, TLS, 101).
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Further backends tried after a failed attempt.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// `[upstream.health]`.
    #[serde(default)]
    pub health: Health,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_retries() -> u32 {
    2
}

/// One backend: a `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The URL as given, parsed.
    pub url: http::Uri,
}

impl Backend {
    /// Whether the backend is reached over TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.url.scheme_str() == Some("wss")
    }

    /// The port to connect to, defaulting to 80 / 443.
    fn port(&self) -> u16 {
        self.url
            .port_u16()
            .unwrap_or(if self.is_tls() { 443 } else { 80 })
    }

    /// `host:port` to connect to, the port defaulting to 80 / 443.
    pub fn authority(&self) -> String {
        let host = self.url.host().unwrap_or_default();
        format!("{host}:{}", self.port())
    }

    /// The host without the brackets of an IPv6 literal (what a TLS
    /// server name or an address parse takes).
    pub fn bare_host(&self) -> &str {
        let host = self.url.host().unwrap_or_default();
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The address to connect to when the host is an IP literal (no name
    /// to resolve, nothing to format on every connection).
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        let ip: std::net::IpAddr = self.bare_host().parse().ok()?;
        Some(std::net::SocketAddr::new(ip, self.port()))
    }
}

impl<'de> Deserialize<'de> for Backend {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_backend(&text).map_err(de::Error::custom)
    }
}

fn parse_backend(text: &str) -> Result<Backend, String> {
    let expected = "expected a ws:// or wss:// URL like \"ws://10.0.0.5:9000\"";
    let url: http::Uri = text
        .parse()
        .map_err(|e| format!("{expected}, found \"{text}\" ({e})"))?;
    match url.scheme_str() {
        Some("ws") | Some("wss") => {}
        Some(other) => {
            return Err(format!(
                "{expected}, found scheme \"{other}\" in \"{text}\""
            ))
        }
        None => return Err(format!("{expected}, found \"{text}\" (no scheme)")),
    }
    match url.host() {
        Some(h) if !h.is_empty() => {}
        _ => return Err(format!("{expected}, found \"{text}\" (no host)")),
    }
    Ok(Backend { url })
}

/// How an upstream picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each backend in turn.
    #[default]
    RoundRobin,
    /// The backend with the fewest open tunnels.
    LeastConnections,
}

/// `[upstream.health]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// `[upstream.health.passive]`, always on unless `max_fails = 0`.
    pub passive: PassiveHealth,
    /// `[upstream.health.active]`, off unless the table is present.
    pub active: Option<ActiveHealth>,
}

/// Passive health: a backend that failed `max_fails` attempts in a row
/// (connect error, timeout, no valid 101) is skipped for `fail_timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassiveHealth {
    /// Consecutive failures before the backend is skipped; 0 disables. Default 3.
    pub max_fails: u32,
    /// How long it is skipped. Default 30 s.
    #[serde(deserialize_with = "de_duration")]
    pub fail_timeout: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            max_fails: 3,
            fail_timeout: Duration::from_secs(30),
        }
    }
}

/// Active health: every `interval`, a WebSocket handshake to `path` on each
/// backend; no 101 within `timeout` marks it down until one succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActiveHealth {
    /// Between two checks of a backend. Default 10 s, at least 100 ms.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// Deadline of one check. Default 2 s.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Request path of the check. Default `/`.
    pub path: String,
}

impl Default for ActiveHealth {
    fn default() -> Self {
        ActiveHealth {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            path: "/".to_string(),
        }
    }
}

/// `[limits]` as written: every key optional, over [`Limits::default()`].
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsToml {
    #[serde(default, deserialize_with = "de_opt_size")]
    max_head_bytes: Option<usize>,
    #[serde(default)]
    max_headers: Option<usize>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_size")]
    max_frame_size: Option<usize>,
    #[serde(default, deserialize_with = "de_opt_size")]
    max_message_size: Option<usize>,
    #[serde(default)]
    max_fragments: Option<usize>,
    #[serde(default, deserialize_with = "de_opt_size")]
    max_write_buffer: Option<usize>,
    #[serde(default, deserialize_with = "de_opt_duration_or_off")]
    ping_interval: Option<Option<Duration>>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pong_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    close_timeout: Option<Duration>,
}

fn de_limits<'de, D: Deserializer<'de>>(d: D) -> Result<Limits, D::Error> {
    let t = LimitsToml::deserialize(d)?;
    let mut l = Limits::default();
    macro_rules! apply {
        ($($f:ident),*) => { $( if let Some(v) = t.$f { l.$f = v; } )* };
    }
    apply!(
        max_head_bytes,
        max_headers,
        handshake_timeout,
        max_frame_size,
        max_message_size,
        max_fragments,
        max_write_buffer,
        ping_interval,
        pong_timeout,
        close_timeout
    );
    Ok(l)
}

// ---------------------------------------------------------------------------
// Durations, sizes, addresses
// ---------------------------------------------------------------------------

const DURATION_EXPECTED: &str = "expected a duration like \"30s\" or \"500ms\"";
const DURATION_HINT: &str = "(a whole number followed by ms, s, m or h)";
const SIZE_EXPECTED: &str = "expected a size like \"16KiB\", \"1MiB\" or 1000";
const SIZE_HINT: &str = "(bytes, or a whole number followed by B, KiB, MiB, GiB, KB, MB or GB)";

/// Parses `"500ms"`, `"30s"`, `"2m"`, `"1h"`. The message of the error is
/// ready to show: what was expected and what was found.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let fail = || format!("{DURATION_EXPECTED}, found \"{text}\" {DURATION_HINT}");
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(fail());
    }
    let n: u64 = number.parse().map_err(|_| fail())?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(fail()),
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration \"{text}\" is too large"))
}

/// Parses `"1000"`, `"16KiB"`, `"1MiB"`, `"2GB"` (an optional space between
/// number and unit is accepted).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let fail = || format!("{SIZE_EXPECTED}, found \"{text}\" {SIZE_HINT}");
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(fail());
    }
    let n: u64 = number.parse().map_err(|_| fail())?;
    let multiplier: u64 = match unit.strip_prefix(' ').unwrap_or(unit) {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(fail()),
    };
    n.checked_mul(multiplier)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("size \"{text}\" is too large"))
}

struct DurationVisitor {
    allow_off: bool,
}

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration like \"30s\" or \"500ms\"")?;
        if self.allow_off {
            f.write_str(" or \"off\"")?;
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        if self.allow_off && v == "off" {
            return Ok(None);
        }
        parse_duration(v).map(Some).map_err(|m| {
            if self.allow_off {
                E::custom(m.replacen(
                    DURATION_EXPECTED,
                    &format!("{DURATION_EXPECTED} or \"off\""),
                    1,
                ))
            } else {
                E::custom(m)
            }
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "{DURATION_EXPECTED}, found the number {v}; durations need a unit, like \"{v}s\""
        )))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Err(E::custom(format!(
            "{DURATION_EXPECTED}, found the number {v}; durations need a unit, like \"{v}s\""
        )))
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor { allow_off: false })?
        .ok_or_else(|| de::Error::custom(DURATION_EXPECTED))
}

fn de_duration_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_any(DurationVisitor { allow_off: true })
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_opt_duration_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<Duration>>, D::Error> {
    de_duration_or_off(d).map(Some)
}

struct SizeVisitor;

impl<'de> Visitor<'de> for SizeVisitor {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size like \"16KiB\", \"1MiB\" or 1000")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        parse_size(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        usize::try_from(v).map_err(|_| {
            E::custom(format!(
                "{SIZE_EXPECTED}, found {v} (a size cannot be negative)"
            ))
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        usize::try_from(v).map_err(|_| E::custom(format!("size {v} is too large")))
    }
}

fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    d.deserialize_any(SizeVisitor).map(Some)
}

fn de_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        de::Error::custom(format!(
            "expected an address like \"127.0.0.1:8080\" or \"[::1]:8443\" (IP and port, \
             no host name), found \"{text}\""
        ))
    })
}

// ---------------------------------------------------------------------------
// Spans: from a byte offset to a key path and back
// ---------------------------------------------------------------------------

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
    }
    out
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && (offset < span.end || span.start == span.end)
}

/// The path of the deepest key whose key or value covers `offset`.
fn path_at(table: &DeTable<'_>, offset: usize, path: &mut Vec<Seg>) -> bool {
    for (key, value) in table.iter() {
        path.push(Seg::Key(key.get_ref().to_string()));
        if value_path_at(value.get_ref(), offset, path)
            || contains(&key.span(), offset)
            || contains(&value.span(), offset)
        {
            return true;
        }
        path.pop();
    }
    false
}

fn value_path_at(value: &DeValue<'_>, offset: usize, path: &mut Vec<Seg>) -> bool {
    match value {
        DeValue::Table(t) => path_at(t, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                if value_path_at(item.get_ref(), offset, path) || contains(&item.span(), offset) {
                    return true;
                }
                path.pop();
            }
            false
        }
        _ => false,
    }
}

/// The span of the deepest existing prefix of `path`: the key's own span for
/// a table entry, the item's span for an array element.
fn span_of(root: &DeTable<'_>, path: &[Seg]) -> Option<Range<usize>> {
    let mut current: Option<&DeValue<'_>> = None;
    let mut best = None;
    for seg in path {
        let step = match (seg, current) {
            (Seg::Key(k), None) => root.get(k.as_str()).map(|v| (root_key_span(root, k), v)),
            (Seg::Key(k), Some(DeValue::Table(t))) => {
                t.get(k.as_str()).map(|v| (root_key_span(t, k), v))
            }
            (Seg::Index(i), Some(DeValue::Array(a))) => a.get(*i).map(|v| (Some(v.span()), v)),
            _ => None,
        };
        match step {
            Some((span, value)) => {
                if let Some(span) = span {
                    best = Some(span);
                }
                current = Some(value.get_ref());
            }
            None => break,
        }
    }
    best
}

fn root_key_span(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref() == key)
        .map(|(k, _)| k.span())
}

/// Builds semantic errors against the parsed document.
struct Reporter<'a> {
    text: &'a str,
    origin: &'a str,
    doc: &'a DeTable<'a>,
}

impl Reporter<'_> {
    fn err(&self, path: &[Seg], message: impl Into<String>) -> ConfigError {
        let line = span_of(self.doc, path)
            .map(|s| line_of(self.text, s.start))
            .unwrap_or(1);
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            line,
            key: path_string(path),
            message: message.into(),
        }
    }

    fn has(&self, path: &[Seg]) -> bool {
        let mut current: Option<&DeValue<'_>> = None;
        for seg in path {
            let next = match (seg, current) {
                (Seg::Key(k), None) => self.doc.get(k.as_str()),
                (Seg::Key(k), Some(DeValue::Table(t))) => t.get(k.as_str()),
                (Seg::Index(i), Some(DeValue::Array(a))) => a.get(*i),
                _ => None,
            };
            match next {
                Some(v) => current = Some(v.get_ref()),
                None => return false,
            }
        }
        true
    }
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

fn at(base: &[Seg], rest: &[Seg]) -> Vec<Seg> {
    let mut v = base.to_vec();
    v.extend_from_slice(rest);
    v
}

// ---------------------------------------------------------------------------
// Loading and validation
// ---------------------------------------------------------------------------

/// Largest size any size key accepts: larger messages should be streamed.
pub const MAX_SIZE: usize = 1 << 30;

/// [`Config::embedded_default`] written as a config file, for
/// `switchyard serve` users who want to start from it.
pub const EMBEDDED_DEFAULT_TOML: &str = r#"# What `switchyard serve` runs without --config.
[[listener]]
address = "127.0.0.1:8080"
protocols = ["h1"]

[[route]]
path = "/echo"
app = "echo"

[[route]]
path = "/"
app = "index"
"#;

impl Config {
    /// What `switchyard serve` runs without `--config`: one cleartext
    /// HTTP/1.1 listener on 127.0.0.1:8080, `/echo` to the echo app and
    /// everything else to the index page, default policy and limits.
    pub fn embedded_default() -> Config {
        let route = |path: &str, app: App| Route {
            host: None,
            path: path.to_string(),
            upstream: None,
            app: Some(app),
            policy: Policy::default(),
        };
        Config {
            listeners: vec![Listener {
                address: SocketAddr::from(([127, 0, 0, 1], 8080)),
                tls: None,
                protocols: vec![Protocol::H1],
            }],
            routes: vec![route("/echo", App::Echo), route("/", App::Index)],
            upstreams: Vec::new(),
            admin: None,
            limits: Limits::default(),
        }
    }

    /// Reads and validates a config file. Relative TLS paths are resolved
    /// against the file's directory; errors are prefixed with `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// Parses and validates config text; `origin_name` (usually the file
    /// name) starts every error message. Relative TLS paths are resolved
    /// against the current directory.
    pub fn from_toml_str(text: &str, origin_name: &str) -> Result<Config, ConfigError> {
        Self::parse(text, origin_name, Path::new(""))
    }

    fn parse(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_string(),
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().to_string(),
        })?;
        let doc = doc.get_ref();
        let reporter = Reporter { text, origin, doc };
        // Backend URLs are checked on the document first: an error found while
        // deserializing an array element would point at the whole array.
        check_backend_urls(&reporter)?;
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let mut path = Vec::new();
            if let Some(span) = &span {
                path_at(doc, span.start, &mut path);
            }
            let span = span.unwrap_or(0..0);
            let key = if path.is_empty() {
                "(top level)".to_string()
            } else {
                path_string(&path)
            };
            ConfigError::Invalid {
                origin: origin.to_string(),
                line: line_of(text, span.start),
                key,
                message: e.message().to_string(),
            }
        })?;
        config.validate(&reporter, base)?;
        Ok(config)
    }

    fn validate(&mut self, r: &Reporter<'_>, base: &Path) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(r.err(
                &[key("listener")],
                "no [[listener]]: add one with an address, like address = \"127.0.0.1:8080\"",
            ));
        }
        if self.routes.is_empty() {
            return Err(r.err(
                &[key("route")],
                "no [[route]]: every request would get 404; add one with a path and an \
                 upstream or app",
            ));
        }
        for (i, listener) in self.listeners.iter_mut().enumerate() {
            validate_listener(listener, &[key("listener"), Seg::Index(i)], r, base)?;
        }
        for (i, a) in self.listeners.iter().enumerate() {
            if let Some(j) = self.listeners[..i]
                .iter()
                .position(|b| addresses_conflict(b.address, a.address))
            {
                return Err(r.err(
                    &[key("listener"), Seg::Index(i), key("address")],
                    format!(
                        "address {} overlaps listener[{j}] ({}); each listener needs its own \
                         port, or distinct IPs none of which is 0.0.0.0 / [::]",
                        a.address, self.listeners[j].address
                    ),
                ));
            }
        }
        if let Some(admin) = &self.admin {
            if let Some(j) = self
                .listeners
                .iter()
                .position(|l| addresses_conflict(l.address, admin.address))
            {
                return Err(r.err(
                    &[key("admin"), key("address")],
                    format!(
                        "address {} overlaps listener[{j}] ({}); give the admin listener \
                         its own port",
                        admin.address, self.listeners[j].address
                    ),
                ));
            }
        }
        validate_limits(&self.limits, r)?;

        for (i, u) in self.upstreams.iter().enumerate() {
            let base_path = [key("upstream"), Seg::Index(i)];
            if u.name.is_empty() {
                return Err(r.err(
                    &at(&base_path, &[key("name")]),
                    "an upstream name cannot be empty",
                ));
            }
            if let Some(j) = self.upstreams[..i].iter().position(|o| o.name == u.name) {
                return Err(r.err(
                    &at(&base_path, &[key("name")]),
                    format!(
                        "upstream name \"{}\" is already used by upstream[{j}]",
                        u.name
                    ),
                ));
            }
            if u.servers.is_empty() {
                return Err(r.err(
                    &at(&base_path, &[key("servers")]),
                    "expected at least one server, like servers = [\"ws://10.0.0.5:9000\"]",
                ));
            }
            nonzero(
                u.connect_timeout,
                &at(&base_path, &[key("connect_timeout")]),
                r,
            )?;
            nonzero(
                u.health.passive.fail_timeout,
                &at(
                    &base_path,
                    &[key("health"), key("passive"), key("fail_timeout")],
                ),
                r,
            )?;
            if let Some(active) = &u.health.active {
                let p = at(&base_path, &[key("health"), key("active")]);
                if active.interval < Duration::from_millis(100) {
                    return Err(r.err(
                        &at(&p, &[key("interval")]),
                        format!(
                            "expected at least \"100ms\", found {:?}; checks that often would \
                             load the backends",
                            active.interval
                        ),
                    ));
                }
                nonzero(active.timeout, &at(&p, &[key("timeout")]), r)?;
                if !active.path.starts_with('/') {
                    return Err(r.err(
                        &at(&p, &[key("path")]),
                        format!(
                            "expected a path starting with '/', found \"{}\"",
                            active.path
                        ),
                    ));
                }
            }
        }

        for (i, route) in self.routes.iter_mut().enumerate() {
            let p = [key("route"), Seg::Index(i)];
            validate_route(route, &p, r)?;
            if let Some(name) = &route.upstream {
                if !self.upstreams.iter().any(|u| &u.name == name) {
                    let known: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
                    return Err(r.err(
                        &at(&p, &[key("upstream")]),
                        format!(
                            "no [[upstream]] is named \"{name}\" (known: {}); define it or fix \
                             the name",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
            }
        }
        for (i, a) in self.routes.iter().enumerate() {
            if let Some(j) = self.routes[..i]
                .iter()
                .position(|b| b.host == a.host && b.path == a.path)
            {
                return Err(r.err(
                    &[key("route"), Seg::Index(i), key("path")],
                    format!(
                        "route[{j}] already matches this host and path \"{}\"; the second one \
                         would never be used",
                        a.path
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The route for a request: among the routes whose host matches (exact,
    /// case-insensitive, port and trailing dot ignored; a route without host
    /// matches any), a route naming the host wins over one that does not,
    /// then the longest matching path prefix wins, then the first in the
    /// file. Prefixes match whole segments: `/ws` matches `/ws`, `/ws/x` and
    /// `/ws?q`, not `/wsx`. The query string is ignored.
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let host = host.map(strip_port);
        let mut best: Option<(bool, usize, &Route)> = None;
        for route in &self.routes {
            let host_specific = match (&route.host, host) {
                (None, _) => false,
                (Some(want), Some(have)) if host_eq(want, have) => true,
                (Some(_), _) => continue,
            };
            if !prefix_matches(&route.path, path) {
                continue;
            }
            let score = (host_specific, route.path.len());
            let better = match best {
                None => true,
                Some((h, l, _)) => score > (h, l),
            };
            if better {
                best = Some((score.0, score.1, route));
            }
        }
        best.map(|(_, _, r)| r)
    }

    /// The upstream group of that name.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    /// The effective configuration as TOML, every default written out (what
    /// `--check-config` can show). Parsing it gives back an equal `Config`.
    pub fn to_toml_string(&self) -> String {
        use toml::{Table, Value};
        fn table(entries: Vec<(&str, Value)>) -> Value {
            Value::Table(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        }
        fn string(s: &str) -> Value {
            Value::String(s.to_string())
        }
        fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
            Value::Array(items.into_iter().map(string).collect())
        }
        fn duration(d: Duration) -> Value {
            Value::String(format_duration(d))
        }
        fn size(n: usize) -> Value {
            format_size(n)
        }
        fn count(n: usize) -> Value {
            Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
        }
        fn path(p: &Path) -> Value {
            Value::String(p.display().to_string())
        }

        let mut root = Table::new();
        let listeners = self
            .listeners
            .iter()
            .map(|l| {
                let mut entries = vec![
                    ("address", Value::String(l.address.to_string())),
                    (
                        "protocols",
                        strings(l.protocols.iter().map(|p| match p {
                            Protocol::H1 => "h1",
                            Protocol::H2 => "h2",
                            Protocol::H3 => "h3",
                        })),
                    ),
                ];
                if let Some(tls) = &l.tls {
                    entries.push((
                        "tls",
                        table(vec![("cert", path(&tls.cert)), ("key", path(&tls.key))]),
                    ));
                }
                table(entries)
            })
            .collect();
        root.insert("listener".into(), Value::Array(listeners));
        if let Some(admin) = &self.admin {
            root.insert(
                "admin".into(),
                table(vec![("address", Value::String(admin.address.to_string()))]),
            );
        }
        let l = &self.limits;
        root.insert(
            "limits".into(),
            table(vec![
                ("max_head_bytes", size(l.max_head_bytes)),
                ("max_headers", count(l.max_headers)),
                ("handshake_timeout", duration(l.handshake_timeout)),
                ("max_frame_size", size(l.max_frame_size)),
                ("max_message_size", size(l.max_message_size)),
                ("max_fragments", count(l.max_fragments)),
                ("max_write_buffer", size(l.max_write_buffer)),
                (
                    "ping_interval",
                    l.ping_interval.map_or_else(|| string("off"), duration),
                ),
                ("pong_timeout", duration(l.pong_timeout)),
                ("close_timeout", duration(l.close_timeout)),
            ]),
        );
        let upstreams: Vec<Value> = self
            .upstreams
            .iter()
            .map(|u| {
                let mut health = vec![(
                    "passive",
                    table(vec![
                        (
                            "max_fails",
                            Value::Integer(i64::from(u.health.passive.max_fails)),
                        ),
                        ("fail_timeout", duration(u.health.passive.fail_timeout)),
                    ]),
                )];
                if let Some(a) = &u.health.active {
                    health.push((
                        "active",
                        table(vec![
                            ("interval", duration(a.interval)),
                            ("timeout", duration(a.timeout)),
                            ("path", string(&a.path)),
                        ]),
                    ));
                }
                table(vec![
                    ("name", string(&u.name)),
                    (
                        "servers",
                        Value::Array(
                            u.servers
                                .iter()
                                .map(|b| Value::String(b.url.to_string()))
                                .collect(),
                        ),
                    ),
                    (
                        "balance",
                        string(match u.balance {
                            Balance::RoundRobin => "round_robin",
                            Balance::LeastConnections => "least_connections",
                        }),
                    ),
                    ("connect_timeout", duration(u.connect_timeout)),
                    ("retries", Value::Integer(i64::from(u.retries))),
                    ("health", table(health)),
                ])
            })
            .collect();
        if !upstreams.is_empty() {
            root.insert("upstream".into(), Value::Array(upstreams));
        }
        let routes = self
            .routes
            .iter()
            .map(|r| {
                let mut entries = vec![("path", string(&r.path))];
                if let Some(host) = &r.host {
                    entries.push(("host", string(host)));
                }
                match r.target() {
                    RouteTarget::Upstream(name) => entries.push(("upstream", string(name))),
                    RouteTarget::App(app) => entries.push((
                        "app",
                        string(match app {
                            App::Echo => "echo",
                            App::Index => "index",
                        }),
                    )),
                }
                let p = &r.policy;
                let mut policy = vec![
                    (
                        "allowed_upgrades",
                        strings(p.allowed_upgrades.iter().map(String::as_str)),
                    ),
                    ("require_upgrade", Value::Boolean(p.require_upgrade)),
                    ("idle_timeout", duration(p.idle_timeout)),
                    (
                        "ping_interval",
                        p.ping_interval.map_or_else(|| string("off"), duration),
                    ),
                    ("pong_timeout", duration(p.pong_timeout)),
                    ("drain_timeout", duration(p.drain_timeout)),
                    ("preserve_host", Value::Boolean(p.preserve_host)),
                    ("tunnel", string(p.tunnel.as_str())),
                ];
                if let Some(origins) = &p.allowed_origins {
                    policy.push((
                        "allowed_origins",
                        strings(origins.iter().map(String::as_str)),
                    ));
                }
                if let Some(n) = p.max_connections {
                    policy.push(("max_connections", Value::Integer(i64::from(n))));
                }
                if let Some(n) = p.max_connections_per_ip {
                    policy.push(("max_connections_per_ip", Value::Integer(i64::from(n))));
                }
                if let Some(n) = p.max_message_size {
                    policy.push(("max_message_size", size(n)));
                }
                entries.push(("policy", table(policy)));
                table(entries)
            })
            .collect();
        root.insert("route".into(), Value::Array(routes));
        // Serializing a table of strings, integers and booleans cannot fail.
        toml::to_string(&root).unwrap_or_default()
    }
}

/// Whether `n` is a whole number of `unit`s (`unit` > 0). Spelled without
/// `%` to stay within the MSRV (1.80) and clippy's `is_multiple_of` lint.
fn exact<T>(n: T, unit: T) -> bool
where
    T: Copy + PartialEq + std::ops::Div<Output = T> + std::ops::Mul<Output = T>,
{
    n / unit * unit == n
}

/// The shortest exact spelling of a duration: `"2m"`, `"90s"`, `"1500ms"`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        _ if exact(ms, 3_600_000) => format!("{}h", ms / 3_600_000),
        _ if exact(ms, 60_000) => format!("{}m", ms / 60_000),
        _ if exact(ms, 1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

fn format_size(n: usize) -> toml::Value {
    const UNITS: [(usize, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (unit, name) in UNITS {
        if n != 0 && exact(n, unit) {
            return toml::Value::String(format!("{}{name}", n / unit));
        }
    }
    toml::Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Whether two listeners could not both bind: same port (not 0, which picks
/// a free one) and the same IP, or one of them the wildcard of the family.
fn addresses_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port or [v6]
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn host_eq(want: &str, have: &str) -> bool {
    let want = want.trim_end_matches('.');
    let have = have.trim_end_matches('.');
    let want = want
        .strip_prefix('[')
        .and_then(|w| w.strip_suffix(']'))
        .unwrap_or(want);
    want.eq_ignore_ascii_case(have)
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

fn check_backend_urls(r: &Reporter<'_>) -> Result<(), ConfigError> {
    let Some(DeValue::Array(upstreams)) = r.doc.get("upstream").map(|v| v.get_ref()) else {
        return Ok(());
    };
    for (i, upstream) in upstreams.iter().enumerate() {
        let Some(DeValue::Array(servers)) = upstream.get_ref().get("servers").map(|v| v.get_ref())
        else {
            continue;
        };
        for (j, server) in servers.iter().enumerate() {
            if let Some(text) = server.get_ref().as_str() {
                if let Err(message) = parse_backend(text) {
                    return Err(r.err(
                        &[
                            key("upstream"),
                            Seg::Index(i),
                            key("servers"),
                            Seg::Index(j),
                        ],
                        message,
                    ));
                }
            }
        }
    }
    Ok(())
}

fn nonzero(d: Duration, path: &[Seg], r: &Reporter<'_>) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(r.err(path, "expected a duration above zero, like \"5s\""));
    }
    Ok(())
}

fn size_in(
    v: usize,
    min: usize,
    max: usize,
    path: &[Seg],
    r: &Reporter<'_>,
) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(r.err(
            path,
            format!("expected a size from {min} to {max} bytes, found {v}"),
        ));
    }
    Ok(())
}

fn validate_limits(l: &Limits, r: &Reporter<'_>) -> Result<(), ConfigError> {
    let p = |k: &str| vec![key("limits"), key(k)];
    size_in(l.max_head_bytes, 1024, 1 << 20, &p("max_head_bytes"), r)?;
    if l.max_headers == 0 || l.max_headers > 10_000 {
        return Err(r.err(
            &p("max_headers"),
            format!("expected a count from 1 to 10000, found {}", l.max_headers),
        ));
    }
    nonzero(l.handshake_timeout, &p("handshake_timeout"), r)?;
    // Below 125 bytes valid control frames (ping, close) would be refused.
    size_in(l.max_frame_size, 125, MAX_SIZE, &p("max_frame_size"), r)?;
    size_in(l.max_message_size, 1, MAX_SIZE, &p("max_message_size"), r)?;
    if l.max_fragments == 0 {
        return Err(r.err(
            &p("max_fragments"),
            "expected a count of at least 1, found 0",
        ));
    }
    size_in(
        l.max_write_buffer,
        1024,
        MAX_SIZE,
        &p("max_write_buffer"),
        r,
    )?;
    if let Some(d) = l.ping_interval {
        nonzero(d, &p("ping_interval"), r)?;
    }
    nonzero(l.pong_timeout, &p("pong_timeout"), r)?;
    nonzero(l.close_timeout, &p("close_timeout"), r)?;
    Ok(())
}

fn validate_listener(
    l: &mut Listener,
    p: &[Seg],
    r: &Reporter<'_>,
    base: &Path,
) -> Result<(), ConfigError> {
    if l.protocols.is_empty() {
        if r.has(&at(p, &[key("protocols")])) {
            return Err(r.err(
                &at(p, &[key("protocols")]),
                "expected at least one of \"h1\", \"h2\", \"h3\"",
            ));
        }
        l.protocols = if l.tls.is_some() {
            vec![Protocol::H1, Protocol::H2]
        } else {
            vec![Protocol::H1]
        };
    }
    for (i, proto) in l.protocols.iter().enumerate() {
        if l.protocols[..i].contains(proto) {
            return Err(r.err(
                &at(p, &[key("protocols"), Seg::Index(i)]),
                "this protocol is listed twice",
            ));
        }
    }
    if l.protocols.contains(&Protocol::H3) && l.tls.is_none() {
        let i = l
            .protocols
            .iter()
            .position(|x| *x == Protocol::H3)
            .unwrap_or(0);
        return Err(r.err(
            &at(p, &[key("protocols"), Seg::Index(i)]),
            "h3 runs over QUIC, which always uses TLS: add tls = { cert = ..., key = ... } to \
             this listener or remove \"h3\"",
        ));
    }
    if let Some(tls) = &mut l.tls {
        tls.cert = base.join(&tls.cert);
        tls.key = base.join(&tls.key);
        let tls_path = at(p, &[key("tls")]);
        let (certs, key_der) = crate::tls::load_pem(&tls.cert, &tls.key).map_err(|e| {
            let which = match &e {
                crate::tls::TlsError::Unreadable { what, .. }
                | crate::tls::TlsError::MalformedPem { what, .. }
                    if *what == "certificate" =>
                {
                    "cert"
                }
                crate::tls::TlsError::NoCertificate { .. } => "cert",
                _ => "key",
            };
            r.err(&at(&tls_path, &[key(which)]), e.to_string())
        })?;
        crate::tls::server_config(certs, key_der, crate::tls::ALPN_H2_HTTP11)
            .map_err(|e| r.err(&at(&tls_path, &[key("key")]), e.to_string()))?;
    }
    Ok(())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn validate_route(route: &mut Route, p: &[Seg], r: &Reporter<'_>) -> Result<(), ConfigError> {
    match (&route.upstream, &route.app) {
        (Some(_), Some(_)) => {
            return Err(r.err(
                &at(p, &[key("app")]),
                "a route has either upstream or app, not both; remove one",
            ))
        }
        (None, None) => {
            return Err(r.err(
                p,
                "a route needs a target: add upstream = \"<name>\" or app = \"echo\" / \"index\"",
            ))
        }
        _ => {}
    }
    if !route.path.starts_with('/') {
        return Err(r.err(
            &at(p, &[key("path")]),
            format!(
                "expected a path prefix starting with '/', found \"{}\"",
                route.path
            ),
        ));
    }
    if route.path.contains(['?', '#']) {
        return Err(r.err(
            &at(p, &[key("path")]),
            format!(
                "a path prefix cannot contain '?' or '#' (the query is not matched), found \"{}\"",
                route.path
            ),
        ));
    }
    if let Some(host) = &mut route.host {
        let bad = host.is_empty()
            || host.contains(['/', ' ', '@'])
            || (!host.starts_with('[') && host.contains(':') && host.matches(':').count() == 1);
        if bad {
            return Err(r.err(
                &at(p, &[key("host")]),
                format!(
                    "expected a host name without scheme, port or path, like \"example.com\", \
                     found \"{host}\""
                ),
            ));
        }
        *host = host.to_ascii_lowercase();
    }
    let pp = at(p, &[key("policy")]);
    let pol = &mut route.policy;
    if let Some(origins) = &mut pol.allowed_origins {
        for (i, o) in origins.iter_mut().enumerate() {
            let ok = o == "null"
                || o.split_once("://").is_some_and(|(scheme, rest)| {
                    !scheme.is_empty()
                        && scheme
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                        && !rest.is_empty()
                        && !rest.contains(['/', '?', '#', ' '])
                });
            if !ok {
                return Err(r.err(
                    &at(&pp, &[key("allowed_origins"), Seg::Index(i)]),
                    format!(
                        "expected an origin like \"https://example.com\" or \
                         \"http://localhost:3000\" (scheme, host, optional port, no path), \
                         found \"{o}\""
                    ),
                ));
            }
            *o = o.to_ascii_lowercase();
        }
    }
    if pol.allowed_upgrades.is_empty() {
        return Err(r.err(
            &at(&pp, &[key("allowed_upgrades")]),
            "expected at least one Upgrade token, like [\"websocket\"]; to serve no upgrades, \
             remove the route",
        ));
    }
    for (i, t) in pol.allowed_upgrades.iter_mut().enumerate() {
        let kp = at(&pp, &[key("allowed_upgrades"), Seg::Index(i)]);
        let token = t.split('/').next().unwrap_or(t);
        if t.is_empty() || !t.bytes().all(|b| is_tchar(b) || b == b'/') || token.is_empty() {
            return Err(r.err(
                &kp,
                format!("expected an Upgrade token like \"websocket\", found \"{t}\""),
            ));
        }
        if token.eq_ignore_ascii_case("h2c") {
            return Err(r.err(
                &kp,
                "h2c is never selected by switchyard (RFC 9113 deprecated the h2c upgrade); \
                 serve HTTP/2 with protocols = [\"h2\"] on a listener instead",
            ));
        }
        *t = t.to_ascii_lowercase();
    }
    for (name, v) in [
        ("max_connections", pol.max_connections),
        ("max_connections_per_ip", pol.max_connections_per_ip),
    ] {
        if v == Some(0) {
            return Err(r.err(
                &at(&pp, &[key(name)]),
                "expected at least 1, found 0; remove the key for no cap",
            ));
        }
    }
    if let Some(size) = pol.max_message_size {
        size_in(size, 1, MAX_SIZE, &at(&pp, &[key("max_message_size")]), r)?;
    }
    nonzero(pol.idle_timeout, &at(&pp, &[key("idle_timeout")]), r)?;
    if let Some(d) = pol.ping_interval {
        nonzero(d, &at(&pp, &[key("ping_interval")]), r)?;
    }
    nonzero(pol.pong_timeout, &at(&pp, &[key("pong_timeout")]), r)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "switchyard.toml")
    }

    /// Parses `text`, expects an error, and checks it names the line and the key.
    #[track_caller]
    fn expect_err(text: &str, line: usize, key_path: &str, fragment: &str) -> String {
        let err = parse(text).expect_err("config should be rejected");
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!("switchyard.toml:{line}: {key_path}: ")),
            "wanted line {line} and key {key_path}, got: {msg}"
        );
        assert_eq!(err.line(), Some(line), "{msg}");
        assert_eq!(err.key(), Some(key_path), "{msg}");
        assert!(msg.contains(fragment), "wanted {fragment:?} in: {msg}");
        msg
    }

    const MINIMAL: &str =
        "[[listener]]\naddress = \"127.0.0.1:8080\"\n\n[[route]]\npath = \"/\"\napp = \"index\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].protocols, vec![Protocol::H1]);
        assert_eq!(c.routes[0].policy, Policy::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.admin, None);
        assert_eq!(c.routes[0].target(), RouteTarget::App(App::Index));
    }

    #[test]
    fn policy_defaults_are_the_documented_ones() {
        let p = Policy::default();
        assert_eq!(p.allowed_origins, None);
        assert_eq!(p.allowed_upgrades, vec!["websocket"]);
        assert_eq!(p.max_connections, None);
        assert_eq!(p.max_connections_per_ip, None);
        assert_eq!(p.max_message_size, None);
        assert!(!p.require_upgrade);
        assert_eq!(p.idle_timeout, Duration::from_secs(300));
        assert_eq!(p.ping_interval, None);
        assert_eq!(p.pong_timeout, Duration::from_secs(20));
        assert_eq!(p.drain_timeout, Duration::from_secs(10));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "30 sec", "30", "s", "", "-1s", "1.5s", "30S", "1d", "30s ", "１s",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("found \"{bad}\"")), "{e}");
            assert!(e.starts_with(DURATION_EXPECTED), "{e}");
        }
        assert!(parse_duration("99999999999999999999h").is_err());
        assert!(parse_duration("18446744073709551615h")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("16KiB"), Ok(16 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3KB"), Ok(3000));
        assert_eq!(parse_size("3MB"), Ok(3_000_000));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("7B"), Ok(7));
        for bad in ["16 kib", "1.5MiB", "MiB", "", "-1", "1TiB", "1  MiB"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("found \"{bad}\"")), "{e}");
        }
        assert!(parse_size("18446744073709551615GiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn bad_duration_names_line_and_key_path() {
        let text = format!(
            "{MINIMAL}\n[[route]]\npath = \"/ws\"\napp = \"echo\"\n[route.policy]\nidle_timeout = \"30 sec\"\n"
        );
        let msg = expect_err(&text, 12, "route[1].policy.idle_timeout", "");
        assert!(
            msg.ends_with(
                "expected a duration like \"30s\" or \"500ms\", found \"30 sec\" (a whole number \
                 followed by ms, s, m or h)"
            ),
            "{msg}"
        );
    }

    #[test]
    fn duration_as_number_suggests_a_unit() {
        let text = MINIMAL.replace(
            "app = \"index\"",
            "app = \"index\"\npolicy = { drain_timeout = 30 }",
        );
        expect_err(&text, 7, "route[0].policy.drain_timeout", "like \"30s\"");
    }

    #[test]
    fn ping_interval_accepts_off() {
        let text = MINIMAL.replace(
            "app = \"index\"",
            "app = \"index\"\npolicy = { ping_interval = \"off\" }",
        );
        assert_eq!(parse(&text).unwrap().routes[0].policy.ping_interval, None);
        let text = text.replace("\"off\"", "\"15s\"");
        assert_eq!(
            parse(&text).unwrap().routes[0].policy.ping_interval,
            Some(Duration::from_secs(15))
        );
        let text = text.replace("\"15s\"", "\"never\"");
        expect_err(
            &text,
            7,
            "route[0].policy.ping_interval",
            "or \"off\", found \"never\"",
        );
    }

    #[test]
    fn unknown_keys_at_every_level() {
        expect_err(
            &format!("colour = 1\n{MINIMAL}"),
            1,
            "colour",
            "unknown field `colour`",
        );
        expect_err(
            &MINIMAL.replace(
                "address = \"127.0.0.1:8080\"",
                "address = \"127.0.0.1:8080\"\nport = 1",
            ),
            3,
            "listener[0].port",
            "unknown field `port`",
        );
        expect_err(
            &format!("{MINIMAL}[route.policy]\nallowed_origin = [\"https://a.example\"]\n"),
            8,
            "route[0].policy.allowed_origin",
            "unknown field `allowed_origin`, expected one of",
        );
        expect_err(
            &format!("{MINIMAL}[limits]\nmax_head_size = \"8KiB\"\n"),
            8,
            "limits.max_head_size",
            "unknown field `max_head_size`",
        );
        expect_err(
            &format!(
                "{MINIMAL}[[upstream]]\nname = \"a\"\nservers = [\"ws://10.0.0.1:1\"]\n\
                 [upstream.health.active]\nintervall = \"1s\"\n"
            ),
            11,
            "upstream[0].health.active.intervall",
            "unknown field `intervall`",
        );
        expect_err(
            &MINIMAL.replace(
                "address = \"127.0.0.1:8080\"",
                "address = \"127.0.0.1:8080\"\ntls = { cert = \"c\", key = \"k\", chain = \"x\" }",
            ),
            3,
            "listener[0].tls.chain",
            "unknown field `chain`",
        );
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = parse("[[listener]]\naddress = \n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 2, .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("switchyard.toml:2: TOML syntax error"),
            "{err}"
        );
    }

    #[test]
    fn wrong_types_name_the_key() {
        expect_err(
            &MINIMAL.replace("app = \"index\"", "app = \"chat\""),
            6,
            "route[0].app",
            "unknown variant `chat`, expected `echo` or `index`",
        );
        expect_err(
            &MINIMAL.replace("\"127.0.0.1:8080\"", "\"localhost:8080\""),
            2,
            "listener[0].address",
            "found \"localhost:8080\"",
        );
        expect_err(
            &MINIMAL.replace(
                "address = \"127.0.0.1:8080\"",
                "address = \"127.0.0.1:8080\"\nprotocols = [\"h1\", \"h4\"]",
            ),
            3,
            "listener[0].protocols[1]",
            "unknown variant `h4`",
        );
        expect_err(
            &MINIMAL.replace(
                "app = \"index\"",
                "app = \"index\"\npolicy.require_upgrade = \"yes\"",
            ),
            7,
            "route[0].policy.require_upgrade",
            "expected a boolean",
        );
    }

    #[test]
    fn missing_required_key() {
        let text = "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[route]]\napp = \"echo\"\n";
        expect_err(text, 3, "route[0]", "missing field `path`");
        let text = format!("{MINIMAL}[[upstream]]\nservers = [\"ws://a:1\"]\n");
        expect_err(&text, 7, "upstream[0]", "missing field `name`");
    }

    const UPSTREAM: &str = "\n[[upstream]]\nname = \"chat\"\nservers = [\"ws://10.0.0.5:9000\"]\n";

    #[test]
    fn route_to_unknown_upstream() {
        let text =
            format!("{MINIMAL}{UPSTREAM}\n[[route]]\npath = \"/chat\"\nupstream = \"caht\"\n");
        expect_err(
            &text,
            14,
            "route[1].upstream",
            "no [[upstream]] is named \"caht\" (known: chat)",
        );
    }

    #[test]
    fn route_with_both_or_neither_target() {
        let text = MINIMAL.replace("app = \"index\"", "app = \"index\"\nupstream = \"chat\"");
        expect_err(&format!("{text}{UPSTREAM}"), 6, "route[0].app", "not both");
        let text = MINIMAL.replace("app = \"index\"", "");
        expect_err(&text, 4, "route[0]", "a route needs a target");
    }

    #[test]
    fn upstream_errors() {
        let text = format!("{MINIMAL}\n[[upstream]]\nname = \"chat\"\nservers = []\n");
        expect_err(&text, 10, "upstream[0].servers", "at least one server");

        let text = format!(
            "{MINIMAL}\n[[upstream]]\nname = \"chat\"\nservers = [\n  \"ws://a:1\",\n  \"http://b:2\",\n]\n"
        );
        expect_err(&text, 12, "upstream[0].servers[1]", "found scheme \"http\"");

        let text =
            format!("{MINIMAL}\n[[upstream]]\nname = \"chat\"\nservers = [\"10.0.0.1:80\"]\n");
        expect_err(&text, 10, "upstream[0].servers[0]", "ws:// or wss://");

        let text = format!("{MINIMAL}{UPSTREAM}{UPSTREAM}");
        expect_err(&text, 13, "upstream[1].name", "already used by upstream[0]");

        let text = format!("{MINIMAL}{UPSTREAM}connect_timeout = \"0s\"\n");
        expect_err(&text, 11, "upstream[0].connect_timeout", "above zero");

        let text = format!("{MINIMAL}{UPSTREAM}[upstream.health.active]\ninterval = \"10ms\"\n");
        expect_err(
            &text,
            12,
            "upstream[0].health.active.interval",
            "at least \"100ms\"",
        );

        let text = format!("{MINIMAL}{UPSTREAM}balance = \"random\"\n");
        expect_err(&text, 11, "upstream[0].balance", "unknown variant `random`");
    }

    #[test]
    fn listener_errors() {
        let text = format!("{MINIMAL}[[listener]]\naddress = \"127.0.0.1:8080\"\n");
        expect_err(&text, 8, "listener[1].address", "overlaps listener[0]");

        let text = MINIMAL.replace(
            "address = \"127.0.0.1:8080\"",
            "address = \"127.0.0.1:8080\"\nprotocols = [\"h1\", \"h3\"]",
        );
        expect_err(&text, 3, "listener[0].protocols[1]", "h3 runs over QUIC");

        let text = MINIMAL.replace(
            "address = \"127.0.0.1:8080\"",
            "address = \"127.0.0.1:8080\"\nprotocols = []",
        );
        expect_err(&text, 3, "listener[0].protocols", "at least one");

        let text = format!("{MINIMAL}[admin]\naddress = \"127.0.0.1:8080\"\n");
        expect_err(&text, 8, "admin.address", "overlaps listener[0]");

        let text = format!("{MINIMAL}[[listener]]\naddress = \"0.0.0.0:8080\"\n");
        expect_err(
            &text,
            8,
            "listener[1].address",
            "overlaps listener[0] (127.0.0.1:8080)",
        );

        // Different ports, different IPs, other family, or port 0: all fine.
        for other in [
            "127.0.0.1:8081",
            "127.0.0.2:8080",
            "[::]:8080",
            "127.0.0.1:0",
        ] {
            let text = format!(
                "{}[[listener]]\naddress = \"{other}\"\n",
                MINIMAL.replace("127.0.0.1:8080", "127.0.0.1:0").replace(
                    "[[route]]",
                    "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[route]]"
                )
            );
            parse(&text).unwrap_or_else(|e| panic!("{other}: {e}"));
        }

        expect_err(
            "[[route]]\npath = \"/\"\napp = \"echo\"\n",
            1,
            "listener",
            "no [[listener]]",
        );
        expect_err(
            "[[listener]]\naddress = \"127.0.0.1:1\"\n",
            1,
            "route",
            "no [[route]]",
        );
    }

    #[test]
    fn tls_file_errors() {
        let dir =
            std::env::temp_dir().join(format!("switchyard-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = MINIMAL.replace(
            "address = \"127.0.0.1:8080\"",
            &format!(
                "address = \"127.0.0.1:8080\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"",
                dir.join("missing-cert.pem").display(),
                dir.join("missing-key.pem").display()
            ),
        );
        expect_err(&text, 4, "listener[0].tls.cert", "missing-cert.pem");

        let (certs, key) = crate::tls::self_signed(&[]).unwrap();
        let _ = (certs, key);
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("c.pem"), certified.cert.pem()).unwrap();
        std::fs::write(dir.join("k.pem"), certified.key_pair.serialize_pem()).unwrap();
        let good = text
            .replace("missing-cert.pem", "c.pem")
            .replace("missing-key.pem", "k.pem");
        let c = parse(&good).unwrap();
        assert_eq!(c.listeners[0].protocols, vec![Protocol::H1, Protocol::H2]);

        // The certificate given as the key: no private key in it.
        let swapped = good.replace("k.pem", "c.pem");
        expect_err(&swapped, 5, "listener[0].tls.key", "no private key found");

        // A key that does not belong to the certificate.
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        std::fs::write(dir.join("other-k.pem"), other.key_pair.serialize_pem()).unwrap();
        let mismatched = good.replace("k.pem", "other-k.pem");
        expect_err(
            &mismatched,
            5,
            "listener[0].tls.key",
            "TLS configuration rejected",
        );
    }

    #[test]
    fn range_errors() {
        expect_err(
            &format!("{MINIMAL}[limits]\nmax_head_bytes = \"16MiB\"\n"),
            8,
            "limits.max_head_bytes",
            "from 1024 to 1048576 bytes",
        );
        expect_err(
            &format!("{MINIMAL}[limits]\nmax_frame_size = 100\n"),
            8,
            "limits.max_frame_size",
            "from 125 to",
        );
        expect_err(
            &format!("{MINIMAL}[limits]\nmax_headers = 0\n"),
            8,
            "limits.max_headers",
            "from 1 to 10000",
        );
        expect_err(
            &format!("{MINIMAL}[limits]\nmax_message_size = -5\n"),
            8,
            "limits.max_message_size",
            "cannot be negative",
        );
        expect_err(
            &format!("{MINIMAL}[route.policy]\nmax_message_size = \"2GiB\"\n"),
            8,
            "route[0].policy.max_message_size",
            "from 1 to 1073741824",
        );
        expect_err(
            &format!("{MINIMAL}[route.policy]\nmax_connections_per_ip = 0\n"),
            8,
            "route[0].policy.max_connections_per_ip",
            "remove the key for no cap",
        );
        expect_err(
            &format!("{MINIMAL}[route.policy]\nidle_timeout = \"0ms\"\n"),
            8,
            "route[0].policy.idle_timeout",
            "above zero",
        );
    }

    #[test]
    fn route_field_errors() {
        expect_err(
            &MINIMAL.replace("path = \"/\"", "path = \"ws\""),
            5,
            "route[0].path",
            "starting with '/'",
        );
        expect_err(
            &MINIMAL.replace("path = \"/\"", "path = \"/\"\nhost = \"example.com:8080\""),
            6,
            "route[0].host",
            "without scheme, port or path",
        );
        expect_err(
            &format!("{MINIMAL}[route.policy]\nallowed_origins = [\"https://a.example/\"]\n"),
            8,
            "route[0].policy.allowed_origins[0]",
            "no path",
        );
        expect_err(
            &format!("{MINIMAL}[route.policy]\nallowed_upgrades = [\"websocket\", \"h2c\"]\n"),
            8,
            "route[0].policy.allowed_upgrades[1]",
            "h2c is never selected",
        );
        expect_err(
            &format!("{MINIMAL}[route.policy]\nallowed_upgrades = [\"web socket\"]\n"),
            8,
            "route[0].policy.allowed_upgrades[0]",
            "Upgrade token",
        );
        expect_err(
            &format!("{MINIMAL}[route.policy]\nallowed_upgrades = []\n"),
            8,
            "route[0].policy.allowed_upgrades",
            "at least one",
        );
        expect_err(
            &format!("{MINIMAL}\n[[route]]\npath = \"/\"\napp = \"echo\"\n"),
            9,
            "route[1].path",
            "already matches",
        );
    }

    #[test]
    fn limits_map_onto_proto_limits() {
        let text = format!(
            "{MINIMAL}[limits]\nmax_head_bytes = \"8KiB\"\nmax_headers = 50\nhandshake_timeout = \"3s\"\n\
             max_frame_size = \"1MiB\"\nmax_message_size = 2000000\nmax_fragments = 64\n\
             max_write_buffer = \"64KiB\"\nping_interval = \"25s\"\npong_timeout = \"5s\"\n\
             close_timeout = \"1s\"\n"
        );
        let l = parse(&text).unwrap().limits;
        assert_eq!(
            l,
            Limits::default()
                .max_head_bytes(8192)
                .max_headers(50)
                .handshake_timeout(Duration::from_secs(3))
                .max_frame_size(1 << 20)
                .max_message_size(2_000_000)
                .max_fragments(64)
                .max_write_buffer(64 * 1024)
                .ping_interval(Some(Duration::from_secs(25)))
                .pong_timeout(Duration::from_secs(5))
                .close_timeout(Duration::from_secs(1))
        );
        let partial = parse(&format!("{MINIMAL}[limits]\nmax_headers = 7\n"))
            .unwrap()
            .limits;
        assert_eq!(partial, Limits::default().max_headers(7));
    }

    #[test]
    fn embedded_default_is_valid_and_routes() {
        let c = Config::embedded_default();
        assert_eq!(c.listeners[0].address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.listeners[0].protocols, vec![Protocol::H1]);
        assert!(c.listeners[0].tls.is_none());
        let target = |p: &str| c.route_for(Some("localhost:8080"), p).map(Route::target);
        assert_eq!(target("/echo"), Some(RouteTarget::App(App::Echo)));
        assert_eq!(target("/echo/"), Some(RouteTarget::App(App::Echo)));
        assert_eq!(target("/echoes"), Some(RouteTarget::App(App::Index)));
        assert_eq!(target("/"), Some(RouteTarget::App(App::Index)));
        assert_eq!(target("/anything"), Some(RouteTarget::App(App::Index)));
        // Written out as TOML, it passes validation and gives the same config.
        assert_eq!(parse(EMBEDDED_DEFAULT_TOML).unwrap(), c);
    }

    #[test]
    fn route_matching() {
        let text = format!(
            "{MINIMAL}{UPSTREAM}\
             [[route]]\npath = \"/ws\"\napp = \"echo\"\n\
             [[route]]\npath = \"/ws/chat\"\nupstream = \"chat\"\n\
             [[route]]\nhost = \"Chat.Example.com\"\npath = \"/\"\nupstream = \"chat\"\n\
             [[route]]\npath = \"/dir/\"\napp = \"echo\"\n"
        );
        let c = parse(&text).unwrap();
        let idx = |host: Option<&str>, path: &str| {
            c.route_for(host, path)
                .and_then(|r| c.routes.iter().position(|x| std::ptr::eq(x, r)))
        };
        assert_eq!(idx(None, "/"), Some(0));
        assert_eq!(idx(None, "/ws"), Some(1));
        assert_eq!(idx(None, "/ws/"), Some(1));
        assert_eq!(idx(None, "/ws/x"), Some(1));
        assert_eq!(idx(None, "/ws?token=1"), Some(1));
        assert_eq!(idx(None, "/wsx"), Some(0));
        assert_eq!(idx(None, "/ws/chat"), Some(2));
        assert_eq!(idx(None, "/ws/chat/room"), Some(2));
        assert_eq!(idx(None, "/ws/chatter"), Some(1));
        assert_eq!(idx(None, "/dir/a"), Some(4));
        assert_eq!(idx(None, "/dir"), Some(0));
        // Host-specific routes win, case-insensitively, port and final dot ignored.
        assert_eq!(idx(Some("chat.example.com"), "/ws"), Some(3));
        assert_eq!(idx(Some("CHAT.example.COM:8443"), "/ws/chat"), Some(3));
        assert_eq!(idx(Some("chat.example.com."), "/"), Some(3));
        assert_eq!(idx(Some("other.example.com"), "/ws"), Some(1));
        assert_eq!(idx(Some("chat.example.com.evil"), "/ws"), Some(1));
        assert_eq!(c.routes[3].host.as_deref(), Some("chat.example.com"));

        // No catch-all: unmatched paths have no route.
        let c = parse(
            "[[listener]]\naddress = \"127.0.0.1:1\"\n[[route]]\npath = \"/ws\"\napp = \"echo\"\n",
        )
        .unwrap();
        assert!(c.route_for(None, "/").is_none());
        assert!(c.route_for(None, "/w").is_none());
        assert!(c.route_for(None, "/wsx").is_none());
    }

    #[test]
    fn ipv6_hosts_match() {
        let c = parse(
            "[[listener]]\naddress = \"[::1]:1\"\n[[route]]\nhost = \"[::1]\"\npath = \"/\"\napp = \"echo\"\n",
        )
        .unwrap();
        assert!(c.route_for(Some("[::1]:8080"), "/").is_some());
        assert!(c.route_for(Some("[::1]"), "/").is_some());
        assert!(c.route_for(Some("[::2]:8080"), "/").is_none());
        assert!(c.route_for(None, "/").is_none());
    }

    #[test]
    fn policy_helpers() {
        let text = format!(
            "{MINIMAL}[route.policy]\nallowed_origins = [\"https://App.example\", \"null\"]\n\
             allowed_upgrades = [\"WebSocket\", \"TLS/1.3\"]\n"
        );
        let c = parse(&text).unwrap();
        let p = &c.routes[0].policy;
        assert!(p.origin_allowed(Some("https://app.example")));
        assert!(p.origin_allowed(Some("null")));
        assert!(p.origin_allowed(None));
        assert!(!p.origin_allowed(Some("https://evil.example")));
        assert!(!p.origin_allowed(Some("http://app.example")));
        assert!(p.upgrade_allowed("websocket"));
        assert!(p.upgrade_allowed("tls/1.3"));
        assert!(!p.upgrade_allowed("h2c"));
        assert!(Policy::default().origin_allowed(Some("https://anything.example")));
        assert!(!Policy::default().upgrade_allowed("TLS/1.3"));
    }

    #[test]
    fn backend_authority() {
        let b = parse_backend("wss://chat.internal/ws").unwrap();
        assert!(b.is_tls());
        assert_eq!(b.authority(), "chat.internal:443");
        let b = parse_backend("ws://10.0.0.1:9000").unwrap();
        assert!(!b.is_tls());
        assert_eq!(b.authority(), "10.0.0.1:9000");
        assert_eq!(parse_backend("ws://h").unwrap().authority(), "h:80");
        // IP literals are connected to without resolving; names are not.
        assert_eq!(
            parse_backend("ws://10.0.0.1:9000").unwrap().socket_addr(),
            Some("10.0.0.1:9000".parse().unwrap())
        );
        assert_eq!(
            parse_backend("wss://[::1]").unwrap().socket_addr(),
            Some("[::1]:443".parse().unwrap())
        );
        assert_eq!(parse_backend("ws://h:9000").unwrap().socket_addr(), None);
        assert_eq!(
            parse_backend("wss://[::1]:8443").unwrap().bare_host(),
            "::1"
        );
    }

    #[test]
    fn full_example_round_trip() {
        let example = include_str!("../examples/switchyard.toml");
        let dir =
            std::env::temp_dir().join(format!("switchyard-config-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), certified.key_pair.serialize_pem()).unwrap();
        let path = dir.join("switchyard.toml");
        std::fs::write(&path, example).unwrap();
        let c = Config::load(&path).unwrap();

        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.listeners[0].address, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.listeners[0].protocols, vec![Protocol::H1]);
        let tls = c.listeners[1].tls.as_ref().unwrap();
        assert_eq!(tls.cert, dir.join("cert.pem"));
        assert_eq!(tls.key, dir.join("key.pem"));
        assert_eq!(c.listeners[1].protocols, vec![Protocol::H1, Protocol::H2]);
        assert_eq!(
            c.admin.as_ref().unwrap().address,
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(c.limits.max_message_size, 4 << 20);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(5));

        let chat = c.upstream("chat").unwrap();
        assert_eq!(chat.servers.len(), 2);
        assert!(chat.servers[1].is_tls());
        assert_eq!(chat.balance, Balance::LeastConnections);
        assert_eq!(chat.connect_timeout, Duration::from_secs(3));
        assert_eq!(chat.retries, 1);
        assert_eq!(
            chat.health.passive,
            PassiveHealth {
                max_fails: 2,
                fail_timeout: Duration::from_secs(15)
            }
        );
        assert_eq!(
            chat.health.active,
            Some(ActiveHealth {
                interval: Duration::from_secs(5),
                timeout: Duration::from_millis(1500),
                path: "/healthz".into()
            })
        );
        let feed = c.upstream("feed").unwrap();
        assert_eq!(feed.balance, Balance::RoundRobin);
        assert_eq!(feed.health, Health::default());

        let r = c.route_for(Some("chat.example.com"), "/ws/room/1").unwrap();
        assert_eq!(r.target(), RouteTarget::Upstream("chat"));
        let p = &r.policy;
        assert_eq!(
            p.allowed_origins.as_deref(),
            Some(&["https://chat.example.com".to_string()][..])
        );
        assert_eq!(p.max_connections, Some(10_000));
        assert_eq!(p.max_connections_per_ip, Some(20));
        assert_eq!(p.max_message_size, Some(1 << 20));
        assert!(p.require_upgrade);
        assert_eq!(p.idle_timeout, Duration::from_secs(600));
        assert_eq!(p.ping_interval, Some(Duration::from_secs(30)));
        assert_eq!(p.pong_timeout, Duration::from_secs(10));
        assert_eq!(p.drain_timeout, Duration::from_secs(30));
        assert!(p.preserve_host);
        assert_eq!(p.tunnel, TunnelSetting::Auto);

        let r = c.route_for(Some("example.com"), "/feed").unwrap();
        assert_eq!(r.target(), RouteTarget::Upstream("feed"));
        assert_eq!(r.policy, Policy::default());
        assert_eq!(
            c.route_for(None, "/echo").unwrap().target(),
            RouteTarget::App(App::Echo)
        );
        assert_eq!(
            c.route_for(None, "/").unwrap().target(),
            RouteTarget::App(App::Index)
        );

        // The effective config written out parses back to the same config.
        let written = c.to_toml_string();
        assert_eq!(parse(&written).unwrap(), c, "{written}");
        assert!(written.contains("idle_timeout = \"10m\""), "{written}");

        // Loading the same file twice gives the same config (nothing depends
        // on state), and a broken copy reports the file's path.
        assert_eq!(Config::load(&path).unwrap(), c);
        let broken = dir.join("broken.toml");
        std::fs::write(
            &broken,
            example.replace("balance = \"least_connections\"", "balance = 1"),
        )
        .unwrap();
        let msg = Config::load(&broken).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{}:", broken.display())), "{msg}");
        assert!(msg.contains("upstream[0].balance"), "{msg}");
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let c = Config::embedded_default();
        let written = c.to_toml_string();
        assert_eq!(parse(&written).unwrap(), c, "{written}");
        assert!(written.contains("max_head_bytes = \"16KiB\""), "{written}");
        assert!(written.contains("ping_interval = \"off\""), "{written}");
    }

    #[test]
    fn preserve_host_and_tunnel_parse_and_round_trip() {
        let c = parse(&format!(
            "{MINIMAL}[route.policy]\npreserve_host = false\ntunnel = \"frames\"\n"
        ))
        .unwrap();
        assert!(!c.routes[0].policy.preserve_host);
        assert_eq!(c.routes[0].policy.tunnel, TunnelSetting::Frames);
        assert_eq!(parse(&c.to_toml_string()).unwrap(), c);
        let d = parse(MINIMAL).unwrap();
        assert!(d.routes[0].policy.preserve_host);
        assert_eq!(d.routes[0].policy.tunnel, TunnelSetting::Auto);
        expect_err(
            &format!("{MINIMAL}[route.policy]\ntunnel = \"splice\"\n"),
            8,
            "route[0].policy.tunnel",
            "transparent",
        );
    }

    #[test]
    fn durations_format_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(7200), "2h"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
        assert_eq!(format_size(16 * 1024), toml::Value::String("16KiB".into()));
        assert_eq!(format_size(3 << 30), toml::Value::String("3GiB".into()));
        assert_eq!(format_size(1000), toml::Value::Integer(1000));
        assert_eq!(format_size(0), toml::Value::Integer(0));
    }

    #[test]
    fn load_missing_file() {
        let err = Config::load(Path::new("/nonexistent/switchyard.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(
            err.to_string().contains("/nonexistent/switchyard.toml"),
            "{err}"
        );
        assert_eq!(err.line(), None);
    }
}

//! The schema: every table and key of the configuration, with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use switchyard::fallback::Transport;
use switchyard_proto::upgrade::ProtocolToken;
use switchyard_proto::{HttpVersion, Limits};

use super::units::{
    de_duration, de_duration_or_off, de_opt_duration, de_opt_duration_or_off, de_opt_size, de_size,
    de_socket_addr,
};

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
    /// `[runtime]`: threads and the I/O driver.
    #[serde(default)]
    pub runtime: Runtime,
    /// `[http1]`: HTTP/1.1 keep-alive and request bodies.
    #[serde(default)]
    pub http1: Http1,
    /// `[http2]`: the HTTP/2 server (TLS with ALPN `h2`, or prior knowledge).
    #[serde(default)]
    pub http2: Http2,
    /// `[fallback]`: what the fallback sessions of the whole gateway may
    /// hold (each route's sessions have their own `fallback_*` keys).
    #[serde(default)]
    pub fallback: Fallback,
    /// `[cluster]`: several gateways sharing fallback sessions through
    /// Redis (`docs/cluster.md`). Without it, everything stays in process.
    #[serde(default)]
    pub cluster: Option<Cluster>,
}

/// `[cluster]`: the Redis server several gateways share.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// `redis://[user:pass@]host:port/db`, or `rediss://` for TLS.
    pub redis: RedisUrl,
    /// This instance's name in the cluster (logs, session owners). None:
    /// generated at start.
    #[serde(default)]
    pub node_id: Option<String>,
    /// What every key and channel of the gateway starts with, so that
    /// several clusters can share one Redis. Default `"switchyard:"`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// With `rediss://`: the CA certificates (PEM) that sign the server's
    /// certificate, instead of the system's roots. Relative to the config
    /// file.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long a connection's lease in the shared caps outlives the last
    /// refresh by its instance: the time a dead instance's connections
    /// still count. Default 15 s, at least 1 s.
    #[serde(default = "default_lease_ttl", deserialize_with = "de_duration")]
    pub lease_ttl: Duration,
}

fn default_key_prefix() -> String {
    "switchyard:".to_string()
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(15)
}

/// A Redis URL, checked: scheme `redis` or `rediss`, a host, an optional
/// user and password, an optional database number.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the connection uses TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("rediss://")
    }

    /// Where it points, without the credentials (for logs).
    pub fn redacted(&self) -> String {
        match self.0.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
                format!("{scheme}://{host}")
            }
            None => self.0.clone(),
        }
    }

    /// The URL with its password, if any, written `***`: what
    /// `--print-config` shows, since printed configurations get shared and
    /// committed (put the real one back before using such a copy).
    pub fn password_masked(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => self.0.clone(),
            },
            None => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl std::str::FromStr for RedisUrl {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let expected = "expected a Redis URL like \"redis://127.0.0.1:6379/0\" or \
                        \"rediss://user:pass@redis.internal:6380/0\"";
        let scheme = text.split_once("://").map(|(s, _)| s);
        match scheme {
            Some("redis" | "rediss") => {}
            Some(other) => {
                return Err(format!(
                    "{expected}, found scheme \"{other}\" (redis:// or rediss:// for TLS)"
                ))
            }
            None => return Err(format!("{expected}, found \"{text}\" (no scheme)")),
        }
        let url = redis::parse_redis_url(text)
            .ok_or_else(|| format!("{expected}, found \"{text}\" (not a URL)"))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{expected}, found \"{text}\" (no host)"));
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(format!(
                "{expected}, found database \"{db}\" (a number, like /0)"
            ));
        }
        Ok(RedisUrl(text.to_string()))
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

/// `[runtime]`: how the process runs its connections.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Worker threads of the async runtime; 1 runs everything on one thread.
    /// None: one per core.
    pub threads: Option<usize>,
    /// Drive cleartext connections with io_uring instead of epoll (Linux):
    /// one `io_uring_enter` per batch of ready connections instead of a
    /// `recv` and a `send` per message. One ring per thread: with more than
    /// one thread, connections run on io_uring worker threads (as many as
    /// `threads`). Where the kernel refuses io_uring the server logs why and
    /// uses epoll. TLS connections too (rustls over the ring's stream).
    pub io_uring: bool,
}

/// `[http1]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http1 {
    /// How long an idle keep-alive connection waits for its next request
    /// before it is closed. Once a byte arrives, `[limits].handshake_timeout`
    /// applies. Default 60 s.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// Largest request body read and discarded (`Content-Length` or
    /// chunked); larger gets 413 and the connection is closed. Default 1 MiB.
    #[serde(deserialize_with = "de_size")]
    pub max_request_body: usize,
}

impl Default for Http1 {
    fn default() -> Self {
        Http1 {
            idle_timeout: Duration::from_secs(60),
            max_request_body: 1 << 20,
        }
    }
}

/// `[http2]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2 {
    /// Send `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1` (RFC 8441), so that
    /// clients open WebSockets over HTTP/2; sent only when a route serves
    /// WebSocket. Off: HTTP/2 clients open their WebSockets over HTTP/1.1.
    /// Default on.
    pub enable_connect_protocol: bool,
}

impl Default for Http2 {
    fn default() -> Self {
        Http2 {
            enable_connect_protocol: true,
        }
    }
}

/// `[fallback]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fallback {
    /// Bytes the fallback sessions of this gateway hold at once in their
    /// buffers (replay windows and messages queued for the backends, both
    /// directions together). Per session the route's keys bound them; this
    /// bounds their sum, which those keys times the number of sessions
    /// would put far above a machine's memory. Beyond it, opens and sends
    /// get 503 with `Retry-After`, and a session whose backend sends more
    /// stops reading its backend until its messages fit. Read at start (a
    /// reload keeps it). Default 256 MiB.
    #[serde(deserialize_with = "de_size")]
    pub memory: usize,
}

impl Default for Fallback {
    fn default() -> Self {
        Fallback { memory: 256 << 20 }
    }
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
    /// Protocols served. Default `["h1"]`, or `["h1", "h2"]` with a TLS
    /// listener. `h2` without TLS is HTTP/2 with prior knowledge; `h3` needs
    /// a TLS listener.
    #[serde(default, deserialize_with = "de_protocols")]
    pub protocols: Vec<HttpVersion>,
    /// Let the response carry the ACK of the request (Linux: `TCP_QUICKACK`
    /// off on the listening socket, inherited by every accepted one), like
    /// HAProxy's `tcp-smart-accept`: one packet fewer per new connection.
    /// A client that writes its request head in two pieces without
    /// `TCP_NODELAY` waits the kernel's delayed-ACK time (40 ms) once.
    /// Default on.
    #[serde(default = "yes")]
    pub ack_with_response: bool,
}

fn yes() -> bool {
    true
}

/// `protocols = ["h1", "h2", "h3"]`: [`HttpVersion`] labels.
/// Each label is parsed inside its own deserializer call, so that an error
/// carries the element's position (`protocols[1]`).
fn de_protocols<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<HttpVersion>, D::Error> {
    struct Label(HttpVersion);
    struct LabelVisitor;
    impl de::Visitor<'_> for LabelVisitor {
        type Value = Label;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an HTTP version: \"h1\", \"h2\" or \"h3\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Label, E> {
            v.parse().map(Label).map_err(E::custom)
        }
    }
    impl<'de> Deserialize<'de> for Label {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(LabelVisitor)
        }
    }
    Ok(Vec::<Label>::deserialize(d)?
        .into_iter()
        .map(|l| l.0)
        .collect())
}

/// `tls = { ... }` of a listener: the certificate and how it is used.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ListenerTlsToml")]
pub struct ListenerTls {
    /// Where the certificate comes from.
    pub certificate: CertificateSource,
    /// TLS from the first byte, or on request (RFC 2817).
    pub mode: TlsMode,
}

/// A listener's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    /// `cert = "..."`, `key = "..."`: PEM files (chain leaf first; key in
    /// PKCS#8, PKCS#1 or SEC1), read at start and again on every reload.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// `self_signed = true`: a certificate for `localhost`, `127.0.0.1` and
    /// `::1` generated at start (its SHA-256 fingerprint is printed), kept
    /// across reloads. For development.
    SelfSigned,
}

/// How a listener uses its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Every connection speaks TLS from the first byte (`https://`,
    /// `wss://`), ALPN `h2` and `http/1.1`.
    #[default]
    Listener,
    /// Connections start in cleartext; `Upgrade: TLS/1.3` (RFC 2817)
    /// switches one to TLS in place.
    Upgrade,
}

/// `tls` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerTlsToml {
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    self_signed: bool,
    #[serde(default)]
    mode: TlsMode,
}

impl TryFrom<ListenerTlsToml> for ListenerTls {
    type Error = String;

    fn try_from(t: ListenerTlsToml) -> Result<Self, String> {
        let certificate = match (t.cert, t.key, t.self_signed) {
            (Some(cert), Some(key), false) => CertificateSource::Files { cert, key },
            (None, None, true) => CertificateSource::SelfSigned,
            (Some(_), Some(_), true) => {
                return Err("give either cert and key, or self_signed = true, not both".into())
            }
            (Some(_), None, _) => return Err("cert without key: add key = \"key.pem\"".into()),
            (None, Some(_), _) => return Err("key without cert: add cert = \"cert.pem\"".into()),
            (None, None, false) => {
                return Err(
                    "expected cert = \"cert.pem\" and key = \"key.pem\", or self_signed = true"
                        .into(),
                )
            }
        };
        Ok(ListenerTls {
            certificate,
            mode: t.mode,
        })
    }
}

impl TlsMode {
    /// The TOML value.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Listener => "listener",
            TlsMode::Upgrade => "upgrade",
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// IP and port of the metrics / status listener.
    #[serde(deserialize_with = "de_socket_addr")]
    pub address: SocketAddr,
    /// A file holding the bearer token every admin request must present
    /// (`Authorization: Bearer TOKEN`); relative to the config file. A file
    /// rather than the token itself keeps the secret out of the config
    /// (which `--print-config` prints and people commit) and out of the
    /// environment children inherit; a reload reads it again (rotation).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The token read from `token_file` by validation.
    #[serde(skip)]
    pub token: Option<AdminToken>,
}

/// The admin bearer token. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token of a token file's text: surrounding whitespace (the final
    /// newline of an editor) is not part of it; what remains must be a
    /// non-empty RFC 6750 `b64token` (letters, digits, `-._~+/`, trailing `=`).
    pub fn parse(text: &str) -> Result<AdminToken, &'static str> {
        let t = text.trim();
        if t.is_empty() {
            return Err("the token file is empty");
        }
        let body = t.trim_end_matches('=');
        let ok = !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        if !ok {
            return Err(
                "the token may only hold letters, digits and - . _ ~ + / (then = \
                        padding), as RFC 6750 bearer tokens do",
            );
        }
        Ok(AdminToken(t.to_string()))
    }

    /// The token itself, for a client to send.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token. Both sides are hashed first, so the
    /// time taken says nothing about how much of the token was right, nor
    /// its length.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use ring::digest::{digest, SHA256};
        let a = digest(&SHA256, self.0.as_bytes());
        let b = digest(&SHA256, presented);
        a.as_ref()
            .iter()
            .zip(b.as_ref())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// One `[[route]]`. Exactly one of `upstream` and `app` is set in a
/// validated [`Config`]; [`Route::target`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Host to match (exact, case-insensitive, port ignored). None: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, segment-aware: `/ws` matches `/ws` and `/ws/x`, not
    /// `/wsx`; with `match = "exact"` the path itself only.
    pub path: String,
    /// How `path` matches. Default `"prefix"`.
    #[serde(rename = "match", default)]
    pub path_match: PathMatch,
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

/// How a route's `path` matches the request path (the query is ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    /// The path and everything below it, by whole segments.
    #[default]
    Prefix,
    /// The path itself only.
    Exact,
}

impl PathMatch {
    /// The TOML value.
    pub fn as_str(self) -> &'static str {
        match self {
            PathMatch::Prefix => "prefix",
            PathMatch::Exact => "exact",
        }
    }
}

/// A built-in application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum App {
    /// WebSocket echo: every message back to its sender.
    Echo,
    /// The index page (HTML) describing the server.
    Index,
    /// `lineecho/1`, the smallest Upgrade protocol: every line back.
    LineEcho,
}

impl App {
    /// The TOML value (and the name in logs and metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            App::Echo => "echo",
            App::Index => "index",
            App::LineEcho => "lineecho",
        }
    }

    /// The `[route.policy]` keys the app honours; its route refuses any other
    /// (a key that is accepted always has an effect).
    pub fn policy_keys(self) -> &'static [&'static str] {
        match self {
            App::Echo => &[
                "allowed_origins",
                "allowed_upgrades",
                "max_connections",
                "max_connections_per_ip",
                "require_upgrade",
                "require_tls",
                "max_message_size",
                "idle_timeout",
                "ping_interval",
                "pong_timeout",
                "drain_timeout",
                "fallback",
                "fallback_idle_timeout",
                "fallback_poll_timeout",
                "fallback_heartbeat",
                "fallback_stream_duration",
                "fallback_stream_bytes",
                "fallback_max_body",
                "fallback_replay_bytes",
            ],
            App::LineEcho => &[
                "allowed_origins",
                "allowed_upgrades",
                "max_connections",
                "max_connections_per_ip",
                "require_upgrade",
                "require_tls",
                "idle_timeout",
            ],
            App::Index => &["allowed_origins", "require_tls"],
        }
    }

    /// The Upgrade tokens the app switches to (none: it answers pages).
    pub fn upgrade_tokens(self) -> &'static [&'static str] {
        match self {
            App::Echo => &["websocket"],
            App::Index => &[],
            App::LineEcho => &["lineecho/1"],
        }
    }
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
/// | `require_tls` | `false` | serve only over TLS: a cleartext request gets 426 `Upgrade: TLS/1.3, HTTP/1.1` where the listener offers RFC 2817, 403 elsewhere. |
/// | `idle_timeout` | `"5m"` | close a tunnel when neither side sent anything for this long. Long enough for applications that heartbeat every 30-60 s, short enough to reclaim half-open connections. |
/// | `ping_interval` | `[limits].ping_interval` | ping each side after this long without a frame from it; `"off"` turns a `[limits]` heartbeat off for the route. |
/// | `pong_timeout` | `[limits].pong_timeout` | close a side that did not answer a ping within this; refused on a route without a heartbeat (neither its own `ping_interval` nor one in `[limits]`). |
/// | `drain_timeout` | `"10s"` | on shutdown, how long connections get after the 1001 close before they are cut. |
/// | `preserve_host` | `true` | send the client's `Host` upstream; `false` sends the backend's host and port. |
/// | `tunnel` | `"auto"` | `"transparent"` (bytes copied), `"frames"` (WebSocket messages relayed: heartbeats, limits, message metrics) or `"auto"`: frames when `ping_interval` or `max_message_size` is set, else transparent. Tokens other than websocket are always transparent. |
/// | `fallback` | `["sse", "poll"]` | fallback sessions (`?sw=`, docs/fallback.md) offered on a route that serves WebSocket, for clients that cannot upgrade; `[]` turns them off. |
/// | `fallback_idle_timeout` | `"30s"` | close a fallback session that had no reader this long (the backend gets 1001). |
/// | `fallback_poll_timeout` | `"25s"` | longest hold of a long poll; below nginx's 60 s `proxy_read_timeout`. |
/// | `fallback_heartbeat` | `"15s"` | SSE comment sent when nothing else was, below common proxy read timeouts. |
/// | `fallback_stream_duration` | `"30s"` | an SSE response ends after this long (the client resumes at once), so a buffering proxy releases it. |
/// | `fallback_stream_bytes` | `"256KiB"` | an SSE response ends after this many bytes; a poll answer carries at most this. |
/// | `fallback_max_body` | `"1MiB"` | largest body of an open, send or close request (413 beyond); also bounds what a session queues for the backend. |
/// | `fallback_replay_bytes` | `"1MiB"` | server-to-client bytes a session keeps for resumes; a resume beyond it ends the session with close 4410. |
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
    pub require_tls: bool,
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
    /// See the table on [`Policy`].
    pub fallback: Vec<Transport>,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_duration")]
    pub fallback_idle_timeout: Duration,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_duration")]
    pub fallback_poll_timeout: Duration,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_duration")]
    pub fallback_heartbeat: Duration,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_duration")]
    pub fallback_stream_duration: Duration,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_size")]
    pub fallback_stream_bytes: usize,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_size")]
    pub fallback_max_body: usize,
    /// See the table on [`Policy`].
    #[serde(deserialize_with = "de_size")]
    pub fallback_replay_bytes: usize,
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
            require_tls: false,
            idle_timeout: Duration::from_secs(300),
            ping_interval: None,
            pong_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(10),
            preserve_host: true,
            tunnel: TunnelSetting::Auto,
            fallback: vec![Transport::Sse, Transport::Poll],
            fallback_idle_timeout: Duration::from_secs(30),
            fallback_poll_timeout: Duration::from_secs(25),
            fallback_heartbeat: Duration::from_secs(15),
            fallback_stream_duration: Duration::from_secs(30),
            fallback_stream_bytes: 256 << 10,
            fallback_max_body: 1 << 20,
            fallback_replay_bytes: 1 << 20,
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

    /// [`Policy::upgrade_allowed`] for a parsed token (per request: no
    /// string is built).
    pub fn token_allowed(&self, token: &ProtocolToken) -> bool {
        self.allowed_upgrades.iter().any(|t| token.written_as(t))
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

pub(crate) fn parse_backend(text: &str) -> Result<Backend, String> {
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

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
//! token_file = "admin.token"            # optional: Authorization: Bearer
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
//! Durations are strings: a number and a unit, `ms`, `s`, `m` or `h`
//! (`"500ms"`, `"30s"`, `"1.5s"`, `"2m"`, `"1h"`); the command line's flags
//! take the same grammar, and there a bare number means seconds. Sizes are a number of bytes or a
//! string with a unit, `B`, `KiB`, `MiB`, `GiB` (binary) or `KB`, `MB`, `GB`
//! (decimal): `1000`, `"16KiB"`, `"1MiB"`.
//!
//! Every table rejects keys it does not know. Every error names the file, the
//! line, the key path (arrays indexed from 0, as in `route[1].policy.idle_timeout`)
//! and what was expected; `switchyard serve --check-config` prints it and exits.
//!
//! Relative TLS paths are resolved against the directory of the config file
//! ([`Config::load`]) or the current directory ([`Config::from_toml_str`]).
//!
//! Modules: `model` (the schema), [`units`] (durations, sizes,
//! addresses), `diagnostics` (errors with line and key path), `validate`,
//! `emit` (the TOML writer), `overrides` (the flags), `embedded` (the default).

use std::path::Path;

use toml::de::DeTable;

mod diagnostics;
mod embedded;
mod emit;
mod model;
mod overrides;
pub mod units;
mod validate;

pub use diagnostics::ConfigError;
pub use embedded::EMBEDDED_DEFAULT_TOML;
pub use model::*;
pub use overrides::{ConfigSource, Overrides, TlsOverride};
pub use units::{format_duration, parse_duration, parse_flag_duration, parse_size, MAX_SIZE};

use diagnostics::{line_of, path_at, path_string, Reporter};
use validate::check_backend_urls;

impl Config {
    /// [`EMBEDDED_DEFAULT_TOML`]: one cleartext listener on 127.0.0.1:8080
    /// (HTTP/1.1, and HTTP/2 with prior knowledge), the echo app at `/echo`,
    /// the index page at `/` and `/index.html`, 404 elsewhere.
    pub fn embedded_default() -> Config {
        // A constant of this crate, parsed by a test on every build.
        Self::from_toml_str(EMBEDDED_DEFAULT_TOML, "the embedded default")
            .expect("the embedded default configuration is valid")
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

    /// The route for a request: among the routes whose host matches (exact,
    /// case-insensitive, port and trailing dot ignored; a route without host
    /// matches any), a route naming the host wins over one that does not,
    /// then the longest matching path wins (an exact match over a prefix of
    /// the same length), then the first in the file. Prefixes match whole
    /// segments: `/ws` matches `/ws`, `/ws/x` and `/ws?q`, not `/wsx`. The
    /// query string is ignored.
    pub fn route_for(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let host = host.map(strip_port);
        let mut best: Option<((bool, usize, bool), &Route)> = None;
        for route in &self.routes {
            let host_specific = match (&route.host, host) {
                (None, _) => false,
                (Some(want), Some(have)) if host_eq(want, have) => true,
                (Some(_), _) => continue,
            };
            let matches = match route.path_match {
                PathMatch::Prefix => prefix_matches(&route.path, path),
                PathMatch::Exact => route.path == path,
            };
            if !matches {
                continue;
            }
            let exact = route.path_match == PathMatch::Exact;
            let score = (host_specific, route.path.len(), exact);
            let better = match best {
                None => true,
                Some((b, _)) => score > b,
            };
            if better {
                best = Some((score, route));
            }
        }
        best.map(|(_, r)| r)
    }

    /// What shutdown waits for the closing handshakes: the longest
    /// `drain_timeout` of the routes whose connections have one (proxied
    /// routes, the echo app); 2 s without any.
    pub fn drain_timeout(&self) -> std::time::Duration {
        self.routes
            .iter()
            .filter(|r| match r.target() {
                RouteTarget::Upstream(_) => true,
                RouteTarget::App(app) => app.policy_keys().contains(&"drain_timeout"),
            })
            .map(|r| r.policy.drain_timeout)
            .max()
            .unwrap_or(std::time::Duration::from_secs(2))
    }

    /// The upstream group of that name.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use switchyard_proto::{HttpVersion, Limits};

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

    /// One listener, one route to an upstream group.
    const PROXIED: &str = "[[listener]]\naddress = \"127.0.0.1:8080\"\n\n\
        [[upstream]]\nname = \"u\"\nservers = [\"ws://127.0.0.1:9\"]\n\n\
        [[route]]\npath = \"/\"\nupstream = \"u\"\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].protocols, vec![HttpVersion::Http1]);
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
    fn bad_duration_names_line_and_key_path() {
        let text = format!(
            "{MINIMAL}\n[[route]]\npath = \"/ws\"\napp = \"echo\"\n[route.policy]\nidle_timeout = \"30 sec\"\n"
        );
        let msg = expect_err(&text, 12, "route[1].policy.idle_timeout", "");
        assert!(
            msg.ends_with(
                "expected a duration like \"30s\", \"1.5s\" or \"500ms\", found \"30 sec\" (a number \
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
            "app = \"echo\"\npolicy = { ping_interval = \"off\" }",
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
    fn route_heartbeat_inherits_limits_key_by_key() {
        let route = |policy: &str| {
            format!(
                "[limits]\nping_interval = \"40s\"\npong_timeout = \"7s\"\n\n{}",
                PROXIED.replace("upstream = \"u\"", &format!("upstream = \"u\"\n{policy}"))
            )
        };
        let p = parse(&route("")).unwrap().routes[0].policy.clone();
        assert_eq!(p.ping_interval, Some(Duration::from_secs(40)));
        assert_eq!(p.pong_timeout, Duration::from_secs(7));
        let p = parse(&route("policy = { pong_timeout = \"3s\" }"))
            .unwrap()
            .routes[0]
            .policy
            .clone();
        assert_eq!(p.ping_interval, Some(Duration::from_secs(40)));
        assert_eq!(p.pong_timeout, Duration::from_secs(3));
        let p = parse(&route("policy = { ping_interval = \"9s\" }"))
            .unwrap()
            .routes[0]
            .policy
            .clone();
        assert_eq!(p.ping_interval, Some(Duration::from_secs(9)));
        assert_eq!(p.pong_timeout, Duration::from_secs(7));
        // "off" on the route turns the heartbeat of [limits] off.
        let p = parse(&route("policy = { ping_interval = \"off\" }"))
            .unwrap()
            .routes[0]
            .policy
            .clone();
        assert_eq!(p.ping_interval, None);
    }

    #[test]
    fn pong_timeout_without_a_heartbeat_is_refused() {
        let text = PROXIED.replace(
            "upstream = \"u\"",
            "upstream = \"u\"\npolicy = { pong_timeout = \"5s\" }",
        );
        expect_err(
            &text,
            11,
            "route[0].policy.pong_timeout",
            "applies only with a heartbeat, and this route has none",
        );
        let off = PROXIED.replace(
            "upstream = \"u\"",
            "upstream = \"u\"\npolicy = { ping_interval = \"off\", pong_timeout = \"5s\" }",
        );
        let text = format!("[limits]\nping_interval = \"30s\"\n\n{off}");
        expect_err(
            &text,
            14,
            "route[0].policy.pong_timeout",
            "set ping_interval on the route or in [limits]",
        );
        // The same route with a heartbeat in [limits] is accepted.
        let text = format!(
            "[limits]\nping_interval = \"30s\"\n\n{}",
            text.split("\n\n").skip(1).collect::<Vec<_>>().join("\n\n")
        )
        .replace("ping_interval = \"off\", ", "");
        assert_eq!(
            parse(&text).unwrap().routes[0].policy.pong_timeout,
            Duration::from_secs(5)
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
            "unknown variant `chat`, expected one of `echo`, `index`, `lineecho`",
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
            "unknown HTTP version \"h4\"; use h1, h2 or h3",
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
    fn admin_token_file_is_read_checked_and_never_printed() {
        let dir = std::env::temp_dir().join(format!("sy-admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "abc-DEF_123~+/=\n").unwrap();
        let text = format!(
            "{MINIMAL}[admin]\naddress = \"0.0.0.0:9090\"\ntoken_file = \"{}\"\n",
            good.display()
        );
        let c = Config::from_toml_str(&text, "t.toml").unwrap();
        let admin = c.admin.as_ref().unwrap();
        assert!(admin.token.as_ref().unwrap().matches(b"abc-DEF_123~+/="));
        assert!(!admin.token.as_ref().unwrap().matches(b"abc-DEF_123~+/"));
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        assert!(!format!("{c:?}").contains("abc-DEF"));
        let printed = c.to_toml_string();
        assert!(!printed.contains("abc-DEF"), "{printed}");
        assert_eq!(Config::from_toml_str(&printed, "again").unwrap(), c);

        let bad = dir.join("bad");
        std::fs::write(&bad, "two words\n").unwrap();
        let text = format!(
            "{MINIMAL}[admin]\naddress = \"127.0.0.1:9090\"\ntoken_file = \"{}\"\n",
            bad.display()
        );
        expect_err(&text, 9, "admin.token_file", "may only hold letters");
        std::fs::write(&bad, " \n").unwrap();
        expect_err(&text, 9, "admin.token_file", "the token file is empty");
        let text = format!(
            "{MINIMAL}[admin]\naddress = \"127.0.0.1:9090\"\ntoken_file = \"{}\"\n",
            dir.join("missing").display()
        );
        expect_err(&text, 9, "admin.token_file", "cannot read the admin token");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn non_loopback_admin_without_token_is_warned_about() {
        let open = format!("{MINIMAL}[admin]\naddress = \"0.0.0.0:9090\"\n");
        let w = Config::from_toml_str(&open, "t.toml").unwrap().warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("0.0.0.0:9090 is not a loopback address"),
            "{w:?}"
        );
        assert!(w[0].contains("token_file"), "{w:?}");
        for quiet in ["127.0.0.1:9090", "[::1]:9090"] {
            let text = format!("{MINIMAL}[admin]\naddress = \"{quiet}\"\n");
            let c = Config::from_toml_str(&text, "t.toml").unwrap();
            assert!(c.warnings().is_empty(), "{quiet}");
        }
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
        assert_eq!(
            c.listeners[0].protocols,
            vec![HttpVersion::Http1, HttpVersion::Http2]
        );

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
        assert_eq!(
            c.listeners[0].protocols,
            vec![HttpVersion::Http1, HttpVersion::Http2]
        );
        assert!(c.listeners[0].tls.is_none());
        let target = |p: &str| c.route_for(Some("localhost:8080"), p).map(Route::target);
        assert_eq!(target("/echo"), Some(RouteTarget::App(App::Echo)));
        assert_eq!(target("/echo?x=1"), Some(RouteTarget::App(App::Echo)));
        assert_eq!(target("/echo/"), None, "exact paths");
        assert_eq!(target("/echoes"), None);
        assert_eq!(target("/"), Some(RouteTarget::App(App::Index)));
        assert_eq!(target("/index.html"), Some(RouteTarget::App(App::Index)));
        assert_eq!(target("/anything"), None);
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
            "{PROXIED}[route.policy]\nallowed_origins = [\"https://App.example\", \"null\"]\n\
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
        let token = |s| switchyard::proto::upgrade::ProtocolToken::parse(s).unwrap();
        assert!(p.token_allowed(&token("TLS/1.3")));
        assert!(!p.token_allowed(&token("TLS")));
        assert!(!p.token_allowed(&token("h2c")));
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
        let example = include_str!("../../examples/switchyard.toml");
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
        assert_eq!(c.listeners[0].protocols, vec![HttpVersion::Http1]);
        let tls = c.listeners[1].tls.as_ref().unwrap();
        assert_eq!(
            tls.certificate,
            CertificateSource::Files {
                cert: dir.join("cert.pem"),
                key: dir.join("key.pem")
            }
        );
        assert_eq!(
            c.listeners[1].protocols,
            vec![HttpVersion::Http1, HttpVersion::Http2]
        );
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
            "{PROXIED}[route.policy]\npreserve_host = false\ntunnel = \"frames\"\n"
        ))
        .unwrap();
        assert!(!c.routes[0].policy.preserve_host);
        assert_eq!(c.routes[0].policy.tunnel, TunnelSetting::Frames);
        assert_eq!(parse(&c.to_toml_string()).unwrap(), c);
        let d = parse(PROXIED).unwrap();
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
    fn fallback_keys_parse_round_trip_and_are_checked() {
        let c = parse(&format!(
            "{PROXIED}[route.policy]\nfallback = [\"poll\"]\nfallback_idle_timeout = \"1m\"\n\
             fallback_poll_timeout = \"20s\"\nfallback_heartbeat = \"5s\"\n\
             fallback_stream_duration = \"10s\"\nfallback_stream_bytes = \"64KiB\"\n\
             fallback_max_body = \"2MiB\"\nfallback_replay_bytes = \"4MiB\"\n"
        ))
        .unwrap();
        let p = &c.routes[0].policy;
        assert_eq!(p.fallback, vec![switchyard::fallback::Transport::Poll]);
        assert_eq!(p.fallback_idle_timeout, Duration::from_secs(60));
        assert_eq!(p.fallback_poll_timeout, Duration::from_secs(20));
        assert_eq!(p.fallback_heartbeat, Duration::from_secs(5));
        assert_eq!(p.fallback_stream_duration, Duration::from_secs(10));
        assert_eq!(p.fallback_stream_bytes, 64 << 10);
        assert_eq!(p.fallback_max_body, 2 << 20);
        assert_eq!(p.fallback_replay_bytes, 4 << 20);
        let written = c.to_toml_string();
        assert!(written.contains("fallback = [\"poll\"]"), "{written}");
        assert_eq!(parse(&written).unwrap(), c, "{written}");
        // The gateway-wide budget of the sessions' buffers.
        assert_eq!(c.fallback.memory, 256 << 20);
        let budget = parse(&format!("[fallback]\nmemory = \"64MiB\"\n{PROXIED}")).unwrap();
        assert_eq!(budget.fallback.memory, 64 << 20);
        assert_eq!(parse(&budget.to_toml_string()).unwrap(), budget);
        expect_err(
            &format!("[fallback]\nmemory = \"64KiB\"\n{PROXIED}"),
            2,
            "fallback.memory",
            "from 1048576",
        );
        // Off, and the echo app takes the keys too.
        let off = parse(&format!("{PROXIED}[route.policy]\nfallback = []\n")).unwrap();
        assert!(off.routes[0].policy.fallback.is_empty());
        assert_eq!(parse(&off.to_toml_string()).unwrap(), off);
        let echo = "[[listener]]\naddress = \"127.0.0.1:8080\"\n[[route]]\npath = \"/e\"\n\
                    app = \"echo\"\n[route.policy]\nfallback_replay_bytes = \"2MiB\"\n";
        let echo = parse(echo).unwrap();
        assert_eq!(echo.routes[0].policy.fallback_replay_bytes, 2 << 20);
        assert_eq!(parse(&echo.to_toml_string()).unwrap(), echo);

        expect_err(
            &format!("{PROXIED}[route.policy]\nfallback = [\"sse\", \"sse\"]\n"),
            12,
            "route[0].policy.fallback[1]",
            "listed twice",
        );
        expect_err(
            &format!("{PROXIED}[route.policy]\nfallback = [\"websocket\"]\n"),
            12,
            "route[0].policy.fallback[0]",
            "expected `sse` or `poll`",
        );
        expect_err(
            &format!("{PROXIED}[route.policy]\nfallback_poll_timeout = \"0s\"\n"),
            12,
            "route[0].policy.fallback_poll_timeout",
            "above zero",
        );
        expect_err(
            &format!("{PROXIED}[route.policy]\nfallback_max_body = 0\n"),
            12,
            "route[0].policy.fallback_max_body",
            "from 1",
        );
        expect_err(
            &format!(
                "{PROXIED}[route.policy]\nallowed_upgrades = [\"lineecho/1\"]\n\
                 fallback = [\"sse\"]\n"
            ),
            13,
            "route[0].policy.fallback",
            "serve WebSocket",
        );
        expect_err(
            &format!("{MINIMAL}[route.policy]\nfallback = []\n"),
            8,
            "route[0].policy.fallback",
            "index",
        );
    }

    #[test]
    fn cluster_parses_round_trips_and_is_checked() {
        assert_eq!(parse(MINIMAL).unwrap().cluster, None);
        let c = parse(&format!(
            "{MINIMAL}[cluster]\nredis = \"redis://app:s3cret@10.0.0.7:6380/2\"\n"
        ))
        .unwrap();
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(cl.redis.as_str(), "redis://app:s3cret@10.0.0.7:6380/2");
        assert!(!cl.redis.is_tls());
        assert_eq!(cl.redis.redacted(), "redis://10.0.0.7:6380/2");
        assert!(!format!("{cl:?}").contains("s3cret"));
        assert_eq!(cl.node_id, None);
        assert_eq!(cl.key_prefix, "switchyard:");
        assert_eq!(cl.lease_ttl, Duration::from_secs(15));
        // The printed configuration keeps everything but the password.
        let written = c.to_toml_string();
        assert!(
            written.contains("redis = \"redis://app:***@10.0.0.7:6380/2\""),
            "{written}"
        );
        assert!(!written.contains("s3cret"), "{written}");
        let mut masked = c.clone();
        if let Some(cl) = masked.cluster.as_mut() {
            cl.redis = "redis://app:***@10.0.0.7:6380/2".parse().unwrap();
        }
        assert_eq!(parse(&written).unwrap(), masked, "{written}");
        for (url, printed) in [
            ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
            ("rediss://u:p:w@x@h", "rediss://u:***@h"),
            ("redis://user@h", "redis://user@h"),
            ("redis://h:6379", "redis://h:6379"),
        ] {
            let u: RedisUrl = url.parse().unwrap();
            assert_eq!(u.password_masked(), printed);
        }

        let full = parse(&format!(
            "{MINIMAL}[cluster]\nredis = \"rediss://redis.internal:6380\"\nnode_id = \"gw-1\"\n\
             key_prefix = \"chat:\"\nlease_ttl = \"3s\"\n"
        ))
        .unwrap();
        let cl = full.cluster.as_ref().unwrap();
        assert_eq!(cl.lease_ttl, Duration::from_secs(3));
        assert!(cl.redis.is_tls());
        assert_eq!(cl.node_id.as_deref(), Some("gw-1"));
        assert_eq!(cl.key_prefix, "chat:");
        assert_eq!(parse(&full.to_toml_string()).unwrap(), full);

        // A CA file resolves against the file's directory and must hold a
        // certificate.
        let dir =
            std::env::temp_dir().join(format!("switchyard-config-cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert.pem()).unwrap();
        std::fs::write(dir.join("not-a-cert.pem"), "hello").unwrap();
        let file = dir.join("sw.toml");
        std::fs::write(
            &file,
            format!(
                "{MINIMAL}[cluster]\nredis = \"rediss://localhost:6380\"\nca_file = \"ca.pem\"\n"
            ),
        )
        .unwrap();
        let loaded = Config::load(&file).unwrap();
        assert_eq!(
            loaded.cluster.as_ref().unwrap().ca_file.as_deref(),
            Some(dir.join("ca.pem").as_path())
        );
        assert_eq!(parse(&loaded.to_toml_string()).unwrap(), loaded);
        std::fs::write(
            &file,
            format!(
                "{MINIMAL}[cluster]\nredis = \"rediss://localhost:6380\"\nca_file = \"not-a-cert.pem\"\n"
            ),
        )
        .unwrap();
        let msg = Config::load(&file).unwrap_err().to_string();
        assert!(
            msg.contains("cluster.ca_file") && msg.contains("no certificate"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(&dir);

        for (value, fragment) in [
            ("http://10.0.0.7:6379", "found scheme \"http\""),
            ("10.0.0.7:6379", "no scheme"),
            ("redis://", "no host"),
            ("redis://10.0.0.7:6379/db", "database \"db\""),
            ("redis://10.0.0.7:notaport", "not a URL"),
        ] {
            expect_err(
                &format!("{MINIMAL}[cluster]\nredis = \"{value}\"\n"),
                8,
                "cluster.redis",
                fragment,
            );
        }
        expect_err(&format!("{MINIMAL}[cluster]\n"), 7, "cluster", "redis");
        expect_err(
            &format!("{MINIMAL}[cluster]\nredis = \"redis://h\"\nnode_id = \"a b\"\n"),
            9,
            "cluster.node_id",
            "letters, digits",
        );
        expect_err(
            &format!("{MINIMAL}[cluster]\nredis = \"redis://h\"\nkey_prefix = \"{{x}}\"\n"),
            9,
            "cluster.key_prefix",
            "hash tag",
        );
        expect_err(
            &format!("{MINIMAL}[cluster]\nredis = \"redis://h\"\nca_file = \"ca.pem\"\n"),
            9,
            "cluster.ca_file",
            "rediss://",
        );
        expect_err(
            &format!("{MINIMAL}[cluster]\nredis = \"redis://h\"\nport = 1\n"),
            9,
            "cluster.port",
            "unknown field",
        );
        expect_err(
            &format!("{MINIMAL}[cluster]\nredis = \"redis://h\"\nlease_ttl = \"500ms\"\n"),
            9,
            "cluster.lease_ttl",
            "at least \"1s\"",
        );
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

//! The checks a parsed configuration must pass before it runs: ranges,
//! references between tables, listener conflicts, TLS files that load.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use switchyard_proto::{HttpVersion, Limits};
use toml::de::DeValue;

use super::diagnostics::{at, key, ConfigError, Reporter, Seg};
use super::model::*;
use super::units::MAX_SIZE;

impl Config {
    /// What is valid but probably not meant: `--check-config` prints these
    /// and `serve` logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(a) = &self.admin {
            if a.token.is_none() && !a.address.ip().is_loopback() {
                out.push(format!(
                    "admin.address {} is not a loopback address and [admin] has no token_file: \
                     anyone who reaches it can read /status and /metrics and POST /reload; \
                     add token_file = \"FILE\" or listen on 127.0.0.1",
                    a.address
                ));
            }
        }
        out
    }

    pub(super) fn validate(&mut self, r: &Reporter<'_>, base: &Path) -> Result<(), ConfigError> {
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
        if let Some(admin) = &mut self.admin {
            admin.token = match &mut admin.token_file {
                None => None,
                Some(file) => {
                    *file = base.join(&*file);
                    Some(read_admin_token(file, r)?)
                }
            };
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
        self.validate_runtime(r)?;
        if let Some(cluster) = &mut self.cluster {
            validate_cluster(cluster, r, base)?;
        }
        nonzero(
            self.http1.idle_timeout,
            &[key("http1"), key("idle_timeout")],
            r,
        )?;
        size_in(
            self.http1.max_request_body,
            0,
            MAX_SIZE,
            &[key("http1"), key("max_request_body")],
            r,
        )?;
        size_in(
            self.fallback.memory,
            1 << 20,
            usize::MAX,
            &[key("fallback"), key("memory")],
            r,
        )?;

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
            validate_route(route, &self.limits, &p, r)?;
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
                .position(|b| b.host == a.host && b.path == a.path && b.path_match == a.path_match)
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
}

impl Config {
    fn validate_runtime(&self, r: &Reporter<'_>) -> Result<(), ConfigError> {
        let rt = &self.runtime;
        if rt.threads == Some(0) {
            return Err(r.err(
                &[key("runtime"), key("threads")],
                "expected at least 1 thread; remove the key for one per core",
            ));
        }
        Ok(())
    }
}

/// `[cluster]`: names that keep the keys and logs readable, and a CA file
/// that loads (only with `rediss://`).
fn validate_cluster(c: &mut Cluster, r: &Reporter<'_>, base: &Path) -> Result<(), ConfigError> {
    let p = |k: &str| vec![key("cluster"), key(k)];
    if let Some(id) = &c.node_id {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(r.err(
                &p("node_id"),
                format!(
                    "expected 1 to 64 letters, digits, '.', '_' or '-', like \"gw-1\", found \
                     \"{id}\"; remove the key to have one generated"
                ),
            ));
        }
    }
    if c.key_prefix.len() > 64
        || c.key_prefix
            .bytes()
            .any(|b| b == b'{' || b == b'}' || !b.is_ascii_graphic())
    {
        return Err(r.err(
            &p("key_prefix"),
            format!(
                "expected at most 64 printable characters without spaces, '{{' or '}}' (the \
                 session keys carry their own hash tag), found \"{}\"",
                c.key_prefix
            ),
        ));
    }
    if c.lease_ttl < std::time::Duration::from_secs(1) {
        return Err(r.err(
            &p("lease_ttl"),
            "expected at least \"1s\": an instance refreshes its leases three times per \
             lease_ttl, and a shorter one would cost more Redis calls than it saves",
        ));
    }
    if let Some(ca) = &mut c.ca_file {
        if !c.redis.is_tls() {
            return Err(r.err(
                &p("ca_file"),
                "ca_file applies to TLS connections only: use a rediss:// URL, or remove the key",
            ));
        }
        *ca = base.join(&*ca);
        crate::tls::load_ca_pem(ca).map_err(|e| r.err(&p("ca_file"), e.to_string()))?;
    }
    Ok(())
}

/// Whether two listeners could not both bind: same port (not 0, which picks
/// a free one) and the same IP, or one of them the wildcard of the family.
fn addresses_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

pub(super) fn check_backend_urls(r: &Reporter<'_>) -> Result<(), ConfigError> {
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

/// The token in `[admin] token_file`.
fn read_admin_token(file: &Path, r: &Reporter<'_>) -> Result<AdminToken, ConfigError> {
    let p = [key("admin"), key("token_file")];
    let text = std::fs::read_to_string(file).map_err(|e| {
        r.err(
            &p,
            format!(
                "cannot read the admin token from {}: {e}; write the token (one line) there",
                file.display()
            ),
        )
    })?;
    AdminToken::parse(&text).map_err(|why| r.err(&p, format!("{}: {why}", file.display())))
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
        l.protocols = if l.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Listener) {
            vec![HttpVersion::Http1, HttpVersion::Http2]
        } else {
            vec![HttpVersion::Http1]
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
    let tls_listener = l.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Listener);
    if l.protocols.contains(&HttpVersion::Http3) && !tls_listener {
        let i = l
            .protocols
            .iter()
            .position(|x| *x == HttpVersion::Http3)
            .unwrap_or(0);
        return Err(r.err(
            &at(p, &[key("protocols"), Seg::Index(i)]),
            "h3 runs over QUIC, which always uses TLS: add tls = { cert = ..., key = ... } \
             (TLS from the first byte, not mode = \"upgrade\") to this listener or remove \"h3\"",
        ));
    }
    if let Some(tls) = &mut l.tls {
        let tls_path = at(p, &[key("tls")]);
        if let CertificateSource::Files {
            cert,
            key: key_file,
        } = &mut tls.certificate
        {
            *cert = base.join(&*cert);
            *key_file = base.join(&*key_file);
            let (certs, key_der) = crate::tls::load_pem(cert, key_file).map_err(|e| {
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
    }
    Ok(())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn validate_route(
    route: &mut Route,
    limits: &Limits,
    p: &[Seg],
    r: &Reporter<'_>,
) -> Result<(), ConfigError> {
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
    validate_fallback(pol, &pp, r)?;
    if let Some(app) = route.app {
        validate_app_policy(&mut route.policy, app, &pp, r)?;
    }
    inherit_heartbeat(&mut route.policy, limits, &pp, r)
}

/// The route's heartbeat is the one of `[limits]` for each key the route
/// does not set, so that the policy holds what runs (`ping_interval =
/// "off"` on a route turns a `[limits]` heartbeat off). A route's
/// `pong_timeout` without any heartbeat would be accepted and ignored:
/// refused.
fn inherit_heartbeat(
    pol: &mut Policy,
    limits: &Limits,
    pp: &[Seg],
    r: &Reporter<'_>,
) -> Result<(), ConfigError> {
    let pong = at(pp, &[key("pong_timeout")]);
    if !r.has(&at(pp, &[key("ping_interval")])) {
        pol.ping_interval = limits.ping_interval;
    }
    if !r.has(&pong) {
        pol.pong_timeout = limits.pong_timeout;
    } else if pol.ping_interval.is_none() {
        return Err(r.err(
            &pong,
            "pong_timeout applies only with a heartbeat, and this route has none: set \
             ping_interval on the route or in [limits], or remove the key",
        ));
    }
    Ok(())
}

/// The fallback session keys: no transport twice, no zero duration or
/// size, and on an upstream route only when it may switch to WebSocket
/// (the sessions are WebSockets seen from the backend).
fn validate_fallback(pol: &Policy, pp: &[Seg], r: &Reporter<'_>) -> Result<(), ConfigError> {
    for (i, t) in pol.fallback.iter().enumerate() {
        if pol.fallback[..i].contains(t) {
            return Err(r.err(
                &at(pp, &[key("fallback"), Seg::Index(i)]),
                format!("\"{t}\" is listed twice; list each transport once"),
            ));
        }
    }
    for (name, d) in [
        ("fallback_idle_timeout", pol.fallback_idle_timeout),
        ("fallback_poll_timeout", pol.fallback_poll_timeout),
        ("fallback_heartbeat", pol.fallback_heartbeat),
        ("fallback_stream_duration", pol.fallback_stream_duration),
    ] {
        nonzero(d, &at(pp, &[key(name)]), r)?;
    }
    for (name, n) in [
        ("fallback_stream_bytes", pol.fallback_stream_bytes),
        ("fallback_max_body", pol.fallback_max_body),
        ("fallback_replay_bytes", pol.fallback_replay_bytes),
    ] {
        size_in(n, 1, MAX_SIZE, &at(pp, &[key(name)]), r)?;
    }
    if !pol.upgrade_allowed("websocket") {
        if let Some(DeValue::Table(written)) = r.get(pp) {
            if let Some((k, _)) = written
                .iter()
                .find(|(k, _)| k.get_ref().starts_with("fallback"))
            {
                return Err(r.err(
                    &at(pp, &[key(k.get_ref())]),
                    format!(
                        "{} applies to routes that serve WebSocket (fallback sessions are \
                         WebSockets seen from the backend); this route's allowed_upgrades has \
                         no \"websocket\": remove the key",
                        k.get_ref()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Why `policy_key` cannot apply to `app` (see [`App::policy_keys`]).
fn why_not_for_app(app: App, policy_key: &str) -> String {
    let name = app.as_str();
    match policy_key {
        "preserve_host" | "tunnel" => format!(
            "{policy_key} applies to proxied routes only; app \"{name}\" is served by the \
             gateway itself: remove the key"
        ),
        _ if app == App::Index => format!(
            "app \"index\" serves a page, not upgraded connections: {policy_key} cannot apply \
             to it; remove the key (only allowed_origins and require_tls apply)"
        ),
        "max_message_size" | "ping_interval" | "pong_timeout" => format!(
            "app \"{name}\" speaks lines, not WebSocket messages: {policy_key} cannot apply to \
             it; remove the key"
        ),
        "drain_timeout" => format!(
            "app \"{name}\" has no closing handshake: its connections are closed at once on \
             shutdown, so drain_timeout cannot apply; remove the key"
        ),
        _ => format!("{policy_key} cannot apply to app \"{name}\"; remove the key"),
    }
}

fn validate_app_policy(
    pol: &mut Policy,
    app: App,
    pp: &[Seg],
    r: &Reporter<'_>,
) -> Result<(), ConfigError> {
    if let Some(DeValue::Table(written)) = r.get(pp) {
        for (k, _) in written.iter() {
            let k = k.get_ref();
            if !app.policy_keys().contains(&k.as_ref()) {
                return Err(r.err(&at(pp, &[key(k)]), why_not_for_app(app, k)));
            }
        }
    }
    let tokens = app.upgrade_tokens();
    let name = app.as_str();
    if r.has(&at(pp, &[key("require_upgrade")])) && !pol.require_upgrade {
        return Err(r.err(
            &at(pp, &[key("require_upgrade")]),
            format!(
                "app \"{name}\" answers only upgrades (426 to anything else): \
                 require_upgrade = false cannot apply; remove the key"
            ),
        ));
    }
    if tokens.is_empty() {
        return Ok(());
    }
    // An app that only switches requires an upgrade (426 otherwise).
    pol.require_upgrade = true;
    if !r.has(&at(pp, &[key("allowed_upgrades")])) {
        pol.allowed_upgrades = tokens.iter().map(|t| t.to_string()).collect();
        return Ok(());
    }
    for (i, t) in pol.allowed_upgrades.iter().enumerate() {
        if !tokens.iter().any(|a| a.eq_ignore_ascii_case(t)) {
            return Err(r.err(
                &at(pp, &[key("allowed_upgrades"), Seg::Index(i)]),
                format!(
                    "app \"{name}\" speaks only {}; \"{t}\" would never be switched to: \
                     remove it",
                    tokens.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

//! The configuration written back as TOML (`serve --print-config`).

use std::path::Path;
use std::time::Duration;

use super::model::*;
use super::units::{format_duration, format_size};
use super::Config;

impl Config {
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
                    ("protocols", strings(l.protocols.iter().map(|p| p.label()))),
                    ("ack_with_response", Value::Boolean(l.ack_with_response)),
                ];
                if let Some(tls) = &l.tls {
                    let mut t = match &tls.certificate {
                        CertificateSource::Files { cert, key } => {
                            vec![("cert", path(cert)), ("key", path(key))]
                        }
                        CertificateSource::SelfSigned => {
                            vec![("self_signed", Value::Boolean(true))]
                        }
                    };
                    t.push(("mode", string(tls.mode.as_str())));
                    entries.push(("tls", table(t)));
                }
                table(entries)
            })
            .collect();
        root.insert("listener".into(), Value::Array(listeners));
        if let Some(admin) = &self.admin {
            let mut entries = vec![("address", Value::String(admin.address.to_string()))];
            if let Some(f) = &admin.token_file {
                entries.push(("token_file", path(f)));
            }
            root.insert("admin".into(), table(entries));
        }
        if let Some(c) = &self.cluster {
            let mut cluster = vec![
                ("redis", string(&c.redis.password_masked())),
                ("key_prefix", string(&c.key_prefix)),
                ("lease_ttl", duration(c.lease_ttl)),
            ];
            if let Some(id) = &c.node_id {
                cluster.push(("node_id", string(id)));
            }
            if let Some(ca) = &c.ca_file {
                cluster.push(("ca_file", path(ca)));
            }
            root.insert("cluster".into(), table(cluster));
        }
        let mut runtime = vec![("io_uring", Value::Boolean(self.runtime.io_uring))];
        if let Some(n) = self.runtime.threads {
            runtime.push(("threads", count(n)));
        }
        root.insert("runtime".into(), table(runtime));
        root.insert(
            "http1".into(),
            table(vec![
                ("idle_timeout", duration(self.http1.idle_timeout)),
                ("max_request_body", size(self.http1.max_request_body)),
            ]),
        );
        root.insert(
            "http2".into(),
            table(vec![(
                "enable_connect_protocol",
                Value::Boolean(self.http2.enable_connect_protocol),
            )]),
        );
        root.insert(
            "fallback".into(),
            table(vec![("memory", size(self.fallback.memory))]),
        );
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
                let mut entries = vec![
                    ("path", string(&r.path)),
                    ("match", string(r.path_match.as_str())),
                ];
                if let Some(host) = &r.host {
                    entries.push(("host", string(host)));
                }
                match r.target() {
                    RouteTarget::Upstream(name) => entries.push(("upstream", string(name))),
                    RouteTarget::App(app) => entries.push(("app", string(app.as_str()))),
                }
                let p = &r.policy;
                let mut policy = vec![
                    (
                        "allowed_upgrades",
                        strings(p.allowed_upgrades.iter().map(String::as_str)),
                    ),
                    ("require_upgrade", Value::Boolean(p.require_upgrade)),
                    ("require_tls", Value::Boolean(p.require_tls)),
                    ("idle_timeout", duration(p.idle_timeout)),
                    (
                        "ping_interval",
                        p.ping_interval.map_or_else(|| string("off"), duration),
                    ),
                    ("drain_timeout", duration(p.drain_timeout)),
                    ("preserve_host", Value::Boolean(p.preserve_host)),
                    ("tunnel", string(p.tunnel.as_str())),
                    ("fallback", strings(p.fallback.iter().map(|t| t.as_str()))),
                    ("fallback_idle_timeout", duration(p.fallback_idle_timeout)),
                    ("fallback_poll_timeout", duration(p.fallback_poll_timeout)),
                    ("fallback_heartbeat", duration(p.fallback_heartbeat)),
                    (
                        "fallback_stream_duration",
                        duration(p.fallback_stream_duration),
                    ),
                    ("fallback_stream_bytes", size(p.fallback_stream_bytes)),
                    ("fallback_max_body", size(p.fallback_max_body)),
                    ("fallback_replay_bytes", size(p.fallback_replay_bytes)),
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
                if p.ping_interval.is_some() {
                    // Without a heartbeat the key would have no effect.
                    policy.push(("pong_timeout", duration(p.pong_timeout)));
                }
                if !p.upgrade_allowed("websocket") {
                    // Fallback sessions need a route that serves WebSocket.
                    policy.retain(|(k, _)| !k.starts_with("fallback"));
                }
                if let RouteTarget::App(app) = r.target() {
                    // An app's route takes only the keys the app honours;
                    // whether it requires an upgrade is the app's own.
                    policy
                        .retain(|(k, _)| app.policy_keys().contains(k) && *k != "require_upgrade");
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

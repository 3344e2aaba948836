//! The configuration `switchyard serve` runs without `--config`.

/// What `switchyard serve` runs without `--config`
/// ([`super::Config::embedded_default`]); `switchyard serve --print-config` shows it
/// with every default written out.
pub const EMBEDDED_DEFAULT_TOML: &str = r#"# What `switchyard serve` runs without --config.
[[listener]]
address = "127.0.0.1:8080"
protocols = ["h1", "h2"]

# The WebSocket echo: 101 then every message back; 426 without an upgrade.
[[route]]
path = "/echo"
match = "exact"
app = "echo"
[route.policy]
drain_timeout = "2s"

# A page that talks to /echo from the browser.
[[route]]
path = "/"
match = "exact"
app = "index"

[[route]]
path = "/index.html"
match = "exact"
app = "index"
"#;

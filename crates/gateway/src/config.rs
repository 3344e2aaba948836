//! The TOML configuration of `switchyard serve --config` (in progress).

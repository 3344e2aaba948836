//! Fallback sessions, and the cluster's shared caps, over real sockets on 127.0.0.1: through the real
//! gateway (`gateway`), and the session engine behind a small hyper server
//! that calls `Sessions::serve` directly (the rest; it counts and cuts
//! requests where the tests need it), with real backends (the echo app over an in-memory
//! WebSocket, Python `websockets` through the proxy's verified upgrade) and
//! real clients (raw HTTP, the library's `FallbackSocket`, `SwitchyardSocket`
//! in Chromium).
//!
//! The venv (Python `websockets`), Node with playwright-core, Chromium,
//! nginx, redis-server and HAProxy come from scripts/install-test-deps.sh; the tests fail, never skip,
//! without them.

mod browser;
mod client;
mod cluster;
mod cluster_caps;
mod dashboard;
mod engine;
mod gateway;
mod haproxy;
mod harness;
mod nginx;
mod python;
mod redis_server;

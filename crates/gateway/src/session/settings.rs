//! The settings of a route's fallback sessions, with their safe defaults.
//! A session keeps the settings it was opened with (they travel in its
//! record), so a configuration reload changes only new sessions.
//!
//! They come from the route's `[route.policy]` `fallback*` keys
//! ([`FallbackSettings::of`]).
//!
//! | setting | default | why |
//! |---|---|---|
//! | `transports` | `sse`, `poll` | what the route offers; empty: no fallback |
//! | `idle_timeout` | 30 s | a session without a reader this long is closed (backend gets 1001) |
//! | `heartbeat_interval` | 15 s | SSE comment when nothing else was sent, below common proxy read timeouts |
//! | `poll_timeout` | 25 s | longest hold of a poll, below nginx's 60 s `proxy_read_timeout` |
//! | `response_max_bytes` | 256 KiB | an SSE response ends after this many bytes (the client resumes at once); a poll answer carries at most this |
//! | `sse_max_duration` | 30 s | an SSE response ends after this long, so that a buffering proxy releases it |
//! | `max_body` | 1 MiB | largest `open`/`send`/`close` body (413); also bounds the client messages queued for the backend |
//! | `replay_bytes` | 1 MiB | server-to-client bytes kept for resumes; also how far the backend may run ahead of the reader |
//!
//! How many sessions an instance holds is not a route's setting: see
//! [`super::Sessions::new`].

use std::time::Duration;

use switchyard::fallback::Transport;

use crate::config::Policy;

/// The settings of a route's fallback sessions (see the module table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackSettings {
    /// The transports offered; empty disables fallback sessions.
    pub transports: Vec<Transport>,
    /// Close a session that had no reader for this long.
    pub idle_timeout: Duration,
    /// SSE heartbeat comment interval.
    pub heartbeat_interval: Duration,
    /// Longest hold of a poll.
    pub poll_timeout: Duration,
    /// Bytes after which an SSE response ends; most bytes in a poll answer.
    pub response_max_bytes: usize,
    /// Time after which an SSE response ends.
    pub sse_max_duration: Duration,
    /// Largest request body.
    pub max_body: usize,
    /// Server-to-client bytes kept for resumes.
    pub replay_bytes: usize,
}

impl Default for FallbackSettings {
    fn default() -> Self {
        FallbackSettings {
            transports: vec![Transport::Sse, Transport::Poll],
            idle_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(15),
            poll_timeout: Duration::from_secs(25),
            response_max_bytes: 256 << 10,
            sse_max_duration: Duration::from_secs(30),
            max_body: 1 << 20,
            replay_bytes: 1 << 20,
        }
    }
}

impl FallbackSettings {
    /// The settings a route's policy gives its sessions.
    pub fn of(policy: &Policy) -> Self {
        FallbackSettings {
            transports: policy.fallback.clone(),
            idle_timeout: policy.fallback_idle_timeout,
            heartbeat_interval: policy.fallback_heartbeat,
            poll_timeout: policy.fallback_poll_timeout,
            response_max_bytes: policy.fallback_stream_bytes,
            sse_max_duration: policy.fallback_stream_duration,
            max_body: policy.fallback_max_body,
            replay_bytes: policy.fallback_replay_bytes,
        }
    }

    /// How long a reader may wait in one store call: it shows activity to
    /// the idle check at least this often (half the idle timeout at most),
    /// and an SSE stream sends a heartbeat when it waited this long.
    pub fn reader_wake(&self) -> Duration {
        self.heartbeat_interval
            .min(self.idle_timeout / 2)
            .max(Duration::from_millis(10))
    }

    /// Whether the route offers `t`.
    pub fn offers(&self, t: Transport) -> bool {
        self.transports.contains(&t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_wake_stays_below_the_idle_timeout() {
        let d = FallbackSettings::default();
        assert_eq!(d.reader_wake(), Duration::from_secs(15));
        let short = FallbackSettings {
            idle_timeout: Duration::from_secs(4),
            ..FallbackSettings::default()
        };
        assert_eq!(short.reader_wake(), Duration::from_secs(2));
        assert!(d.offers(Transport::Poll));
        let none = FallbackSettings {
            transports: vec![],
            ..d
        };
        assert!(!none.offers(Transport::Sse));
    }

    #[test]
    fn the_policy_defaults_are_the_settings_defaults() {
        assert_eq!(
            FallbackSettings::of(&Policy::default()),
            FallbackSettings::default()
        );
        let p = Policy {
            fallback: vec![Transport::Poll],
            fallback_replay_bytes: 4096,
            ..Policy::default()
        };
        let s = FallbackSettings::of(&p);
        assert_eq!(
            (s.transports, s.replay_bytes),
            (vec![Transport::Poll], 4096)
        );
    }
}

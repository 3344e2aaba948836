//! Every limit and timeout in one place, each with a safe default.
//!
//! The async layer enforces the durations (proto has no clock); proto enforces
//! the sizes and counts.

use std::time::Duration;

/// Limits applied to one connection. `Limits::default()` is safe to expose to
/// the internet; raise a value only when you know why, with the setters:
/// `Limits::default().max_message_size(64 << 20)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Bytes of an HTTP/1.1 request or response head (request line + headers +
    /// blank line). Exceeding it answers 431. Default 16 KiB.
    pub max_head_bytes: usize,
    /// Header fields in one head. Exceeding it answers 431. Default 100.
    pub max_headers: usize,
    /// Deadline for the whole request head, from the first byte the async
    /// layer waits for. Exceeding it answers 408 and closes. Default 10 s.
    pub handshake_timeout: Duration,
    /// Payload bytes of one frame (as sent on the wire). Exceeding it closes
    /// with 1009. Default 16 MiB.
    pub max_frame_size: usize,
    /// Payload bytes of one message, counted after decompression. Exceeding it
    /// closes with 1009. Default 32 MiB.
    pub max_message_size: usize,
    /// Frames in one message, empty fragments included. Exceeding it closes
    /// with 1008. Default 131072.
    pub max_fragments: usize,
    /// Bytes of encoded frames waiting to be written before the sender is told
    /// to wait (backpressure). Default 1 MiB.
    pub max_write_buffer: usize,
    /// Send a ping after this much time without a received frame. Default off.
    pub ping_interval: Option<Duration>,
    /// Close with 1011 (going away on our side) when no pong arrives this long
    /// after a ping. Default 20 s.
    pub pong_timeout: Duration,
    /// Longest wait for the peer's closing frame (and, as a client, for the
    /// server to close TCP) after we sent ours. Default 5 s.
    pub close_timeout: Duration,
}

crate::setters!(Limits {
    max_head_bytes: usize,
    max_headers: usize,
    handshake_timeout: Duration,
    max_frame_size: usize,
    max_message_size: usize,
    max_fragments: usize,
    max_write_buffer: usize,
    ping_interval: Option<Duration>,
    pong_timeout: Duration,
    close_timeout: Duration,
});

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            handshake_timeout: Duration::from_secs(10),
            max_frame_size: 16 << 20,
            max_message_size: 32 << 20,
            max_fragments: 1 << 17,
            max_write_buffer: 1 << 20,
            ping_interval: None,
            pong_timeout: Duration::from_secs(20),
            close_timeout: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setter_sets_its_own_field() {
        let l = Limits::default()
            .max_frame_size(5)
            .ping_interval(Some(Duration::from_secs(1)))
            .close_timeout(Duration::from_millis(7));
        let expected = Limits {
            max_frame_size: 5,
            ping_interval: Some(Duration::from_secs(1)),
            close_timeout: Duration::from_millis(7),
            ..Limits::default()
        };
        assert_eq!(l, expected);
    }
}

//! Probe pings: the pings the gateway sends to measure round trips (a
//! frame-aware tunnel toward either side, a built-in app toward its
//! client). A probe's 8-byte payload is the time it was sent, in
//! microseconds since the connection's start; the pong echoes it and gives
//! the round trip with no state kept per ping. A forged pong payload can
//! only give a wrong sample, bounded by the connection's age. Probes go
//! out every 9/10 of the heartbeat's `ping_interval`: a live peer answers
//! them, which resets the heartbeat's silence timer, so the heartbeat's
//! own (unmeasured) ping only goes out when the peer stopped answering.

use std::time::Duration;

use bytes::Bytes;
use switchyard::proto::Message;
use tokio::time::Instant;

/// The period of the probes for a heartbeat pinging after `ping_interval`
/// of silence; `None` without a heartbeat.
pub(crate) fn period(ping_interval: Option<Duration>) -> Option<Duration> {
    let d = ping_interval?;
    Some((d - d / 10).max(Duration::from_millis(1)))
}

/// Microseconds from `start` to now.
pub(crate) fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A probe sent `now_micros` after the connection's start.
pub(crate) fn ping(now_micros: u64) -> Message {
    Message::Ping(Bytes::copy_from_slice(&now_micros.to_be_bytes()))
}

/// The round trip a pong with `payload` gives, received `now_micros` after
/// the connection's start; `None` when it does not answer a probe.
pub(crate) fn round_trip(payload: &[u8], now_micros: u64) -> Option<Duration> {
    let sent = u64::from_be_bytes(<[u8; 8]>::try_from(payload).ok()?);
    (sent <= now_micros).then(|| Duration::from_micros(now_micros - sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pong_of_a_probe_gives_its_round_trip_and_nothing_else_does() {
        let Message::Ping(p) = ping(1_000) else {
            panic!("a probe is a ping");
        };
        assert_eq!(round_trip(&p, 1_250), Some(Duration::from_micros(250)));
        assert_eq!(round_trip(&p, 999), None, "from the future");
        assert_eq!(round_trip(b"", 5), None, "an empty pong");
        assert_eq!(round_trip(b"123456789", 5), None, "not 8 bytes");
        assert_eq!(
            period(Some(Duration::from_secs(10))),
            Some(Duration::from_secs(9))
        );
        assert_eq!(period(None), None);
    }
}

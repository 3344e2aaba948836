//! `lineecho/1`: the smallest complete Upgrade protocol. After
//! `101 Switching Protocols` with `Upgrade: lineecho/1`, every line the
//! client sends (bytes up to and including `\n`) is sent back unchanged. A
//! line longer than [`MAX_LINE`] bytes gets `error: line too long` and the
//! connection is closed, so memory stays bounded whatever the peer sends; a
//! connection silent for the route's `idle_timeout` gets `error: idle
//! timeout` and is closed. On server shutdown the connection is closed.
//! Each batch of lines echoed is counted (lines as messages, their bytes)
//! in the route's counters.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::metrics::{Close, CloseWhy, Direction};
use crate::outcome::Blame;
use crate::tracking::AppCounters;

/// Longest line, `\n` included.
pub(crate) const MAX_LINE: usize = 8 * 1024;

/// Why a line-echo session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineEchoEnd {
    /// The client closed its side.
    PeerClosed,
    /// A line exceeded [`MAX_LINE`].
    LineTooLong,
    /// The server is shutting down.
    Shutdown,
    /// Nothing arrived for the route's idle timeout.
    Idle,
    /// Reading or writing failed.
    Io(std::io::ErrorKind),
}

impl LineEchoEnd {
    /// Who ended the session and why, for `switchyard_closes_total` (no
    /// close codes: the protocol has none).
    pub(crate) fn close(&self) -> Close {
        let (by, why) = match self {
            LineEchoEnd::PeerClosed => (Blame::Client, CloseWhy::Eof),
            LineEchoEnd::LineTooLong => (Blame::Gateway, CloseWhy::Limit),
            LineEchoEnd::Shutdown => (Blame::Gateway, CloseWhy::Drain),
            LineEchoEnd::Idle => (Blame::Gateway, CloseWhy::Idle),
            LineEchoEnd::Io(_) => (Blame::Client, CloseWhy::IoError),
        };
        Close {
            by,
            why,
            code: None,
        }
    }
}

/// Echo `\n`-terminated lines from `buf` (bytes already received) and then
/// from `io`, until the peer closes, a line is too long, nothing arrives for
/// `idle`, or `shutdown` fires. What is echoed is counted in `counters`.
pub(crate) async fn line_echo<S>(
    mut io: S,
    mut buf: BytesMut,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
    counters: Option<AppCounters>,
) -> LineEchoEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        // Every complete line in the buffer goes back in one write.
        if let Some(last) = buf.iter().rposition(|&b| b == b'\n') {
            let lines = buf.split_to(last + 1);
            if let Err(e) = io.write_all(&lines).await {
                return LineEchoEnd::Io(e.kind());
            }
            if let Some(c) = &counters {
                let n = lines.iter().filter(|&&b| b == b'\n').count() as u64;
                for dir in Direction::BOTH {
                    c.relayed(dir, n, lines.len() as u64);
                }
            }
        }
        if buf.len() > MAX_LINE {
            let _ = io.write_all(b"error: line too long\n").await;
            let _ = io.shutdown().await;
            return LineEchoEnd::LineTooLong;
        }
        if *shutdown.borrow() {
            let _ = io.shutdown().await;
            return LineEchoEnd::Shutdown;
        }
        // At most one line plus one read chunk is ever buffered.
        buf.reserve(4096);
        tokio::select! {
            r = tokio::time::timeout(idle, io.read_buf(&mut buf)) => match r {
                Ok(Ok(0)) => {
                    let _ = io.shutdown().await;
                    return LineEchoEnd::PeerClosed;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return LineEchoEnd::Io(e.kind()),
                Err(_) => {
                    let _ = io.write_all(b"error: idle timeout\n").await;
                    let _ = io.shutdown().await;
                    return LineEchoEnd::Idle;
                }
            },
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RouteMetrics;
    use crate::tracking::Counters;
    use std::sync::Arc;

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn a_silent_client_is_closed_after_the_idle_timeout() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (_tx, rx) = watch::channel(false);
        let idle = Duration::from_millis(50);
        let task = tokio::spawn(line_echo(server, BytesMut::new(), idle, rx, None));
        client.write_all(b"hi\n").await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hi\nerror: idle timeout\n");
        assert_eq!(task.await.unwrap(), LineEchoEnd::Idle);
    }

    #[tokio::test]
    async fn echoes_lines_including_leftover_and_split_ones() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (_tx, rx) = watch::channel(false);
        let counters = Arc::new(RouteMetrics::default());
        let conn = Arc::new(Counters::default());
        let task = tokio::spawn(line_echo(
            server,
            BytesMut::from(&b"first\nsec"[..]),
            IDLE,
            rx,
            Some(AppCounters::new(counters.clone(), conn.clone())),
        ));
        client.write_all(b"ond\nthird").await.unwrap();
        client.write_all(b"\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"first\nsecond\nthird\n");
        assert_eq!(task.await.unwrap(), LineEchoEnd::PeerClosed);
        for dir in Direction::BOTH {
            assert_eq!(counters.messages(dir), 3, "lines");
            assert_eq!(counters.bytes(dir), 19);
        }
        assert_eq!(
            (conn.bytes_in(), conn.bytes_out()),
            (19, 19),
            "the connection's own"
        );
    }

    #[tokio::test]
    async fn a_line_over_8_kib_closes() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (_tx, rx) = watch::channel(false);
        let task = tokio::spawn(line_echo(server, BytesMut::new(), IDLE, rx, None));
        client.write_all(b"ok\n").await.unwrap();
        client.write_all(&vec![b'a'; MAX_LINE + 1]).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"ok\nerror: line too long\n");
        assert_eq!(task.await.unwrap(), LineEchoEnd::LineTooLong);
    }

    #[tokio::test]
    async fn a_line_of_exactly_8_kib_is_echoed() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (_tx, rx) = watch::channel(false);
        let task = tokio::spawn(line_echo(server, BytesMut::new(), IDLE, rx, None));
        let mut line = vec![b'b'; MAX_LINE - 1];
        line.push(b'\n');
        client.write_all(&line).await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, line);
        assert_eq!(task.await.unwrap(), LineEchoEnd::PeerClosed);
    }

    #[tokio::test]
    async fn shutdown_closes() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(line_echo(server, BytesMut::new(), IDLE, rx, None));
        tx.send(true).unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(out.is_empty());
        assert_eq!(task.await.unwrap(), LineEchoEnd::Shutdown);
    }
}

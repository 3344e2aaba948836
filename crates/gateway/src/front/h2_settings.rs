//! The limits of the HTTP/2 front.

use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The HTTP/2 server's limits.
#[derive(Debug, Clone)]
pub(crate) struct Http2Settings {
    /// Send SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441).
    pub enable_connect_protocol: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE; also bounds CONTINUATION floods.
    pub max_header_list_size: u32,
    /// Streams reset by the client before we answered, kept at once (rapid
    /// reset, CVE-2023-44487); more is a GOAWAY.
    pub max_pending_accept_reset_streams: usize,
    /// Streams we reset because of client errors before the connection gets
    /// a GOAWAY.
    pub max_local_error_reset_streams: usize,
    /// HTTP/2 PING interval on an idle connection.
    pub keep_alive_interval: Duration,
    /// How long to wait for the PING ack before closing.
    pub keep_alive_timeout: Duration,
    /// Bytes buffered per stream for sending.
    pub max_send_buf_size: usize,
}

impl Http2Settings {
    /// The server's limits: 256 streams, 16 KiB of header list (the
    /// HTTP/1.1 head cap), rapid-reset and error-reset caps, a PING every
    /// 30 s on an idle connection (20 s to answer), 1 MiB send buffer per
    /// stream.
    pub(crate) fn new(enable_connect_protocol: bool) -> Self {
        Http2Settings {
            enable_connect_protocol,
            max_concurrent_streams: 256,
            max_header_list_size: 16 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(20),
            max_send_buf_size: 1 << 20,
        }
    }

    /// The hyper builder with every limit set.
    pub(crate) fn builder(&self) -> http2::Builder<TokioExecutor> {
        let mut b = http2::Builder::new(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(self.max_local_error_reset_streams)
            .keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_timeout)
            .max_send_buf_size(self.max_send_buf_size);
        if self.enable_connect_protocol {
            b.enable_connect_protocol();
        }
        b
    }
}

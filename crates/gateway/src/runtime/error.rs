//! Why a server cannot start.

use std::net::SocketAddr;

use crate::live::GatewayError;
use crate::tls::TlsError;

/// Why the server could not start (or a listener could not be added).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Config or upstream setup.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// A TCP port that cannot be bound.
    #[error("cannot listen on {addr}: {source} (is another process using the port? try --listen 127.0.0.1:0)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A listener's certificate or key.
    #[error("listener {addr}: {source}")]
    Tls {
        /// The listener.
        addr: SocketAddr,
        /// Why.
        source: TlsError,
    },
    /// `h3` on a listener without TLS from the first byte.
    #[error("listener {addr}: HTTP/3 needs a TLS listener (QUIC is always TLS)")]
    Http3NeedsTls {
        /// The listener.
        addr: SocketAddr,
    },
    /// The UDP port of HTTP/3.
    #[error(
        "cannot serve HTTP/3 on UDP {addr}: {reason} (is another process using the UDP port?)"
    )]
    Http3 {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The admin listener.
    #[error(
        "cannot listen on the admin address {addr}: {source} (is another process using the port?)"
    )]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

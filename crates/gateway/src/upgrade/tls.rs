//! RFC 2817: upgrading a cleartext HTTP/1.1 connection to TLS in place.
//!
//! `Upgrade: TLS/1.3` (or `TLS/1.2`) with `Connection: Upgrade` on a
//! cleartext connection of a server that has a certificate gets
//! `101 Switching Protocols` (`Upgrade: TLS/1.x, HTTP/1.1`); the same socket
//! then runs a TLS handshake (ALPN `http/1.1` only) and, as RFC 2817 §3.3
//! requires, the original request is answered over TLS before the HTTP/1.1
//! loop goes on. Plaintext bytes pipelined after the upgrade request could be
//! injected by anyone on the path, so they are never served: the request is
//! refused with 400 and the connection closed ([`UpgradeProtocol::accepts_early_data`]).
//!
//! A listener with `tls = { ..., mode = "upgrade" }` offers it on every
//! path; a route with `require_tls` answers cleartext requests with 426
//! naming it.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use switchyard::proto::upgrade::{header_tokens, ProtocolToken};
use tokio_rustls::TlsAcceptor;
use tracing::info;

use super::protocol::{
    BoxFuture, ConnInfo, Session, SessionCtx, SessionEnd, Switch, UpgradeProtocol,
};
use crate::io::ServerIo;
use crate::outcome::Refusal;

/// The `TLS/1.3` and `TLS/1.2` tokens.
pub struct TlsUpgrade {
    tokens: [ProtocolToken; 2],
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsUpgrade")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl TlsUpgrade {
    /// `config` should offer ALPN `http/1.1` only: the connection stays HTTP/1.1.
    pub fn new(config: Arc<rustls::ServerConfig>, handshake_timeout: Duration) -> Self {
        let tok = |v: &str| ProtocolToken {
            name: "TLS".into(),
            version: Some(v.into()),
        };
        TlsUpgrade {
            tokens: [tok("1.3"), tok("1.2")],
            acceptor: TlsAcceptor::from(config),
            handshake_timeout,
        }
    }
}

/// `req` without its `Upgrade` header and without `upgrade` in `Connection`.
pub(crate) fn without_upgrade(req: &Request<()>) -> Request<()> {
    let mut out = Request::new(());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    let mut headers = req.headers().clone();
    let rest: Vec<&str> = header_tokens(req.headers(), &CONNECTION)
        .filter(|t| !t.eq_ignore_ascii_case("upgrade"))
        .collect();
    headers.remove(UPGRADE);
    headers.remove(CONNECTION);
    if !rest.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&rest.join(", ")) {
            headers.insert(CONNECTION, v);
        }
    }
    *out.headers_mut() = headers;
    out
}

impl UpgradeProtocol for TlsUpgrade {
    fn tokens(&self) -> &[ProtocolToken] {
        &self.tokens
    }

    fn accepts_early_data(&self) -> bool {
        false
    }

    fn available(&self, conn: &ConnInfo) -> bool {
        !conn.tls && conn.has_certificate
    }

    fn prepare(
        &self,
        req: &Request<()>,
        token: &ProtocolToken,
        _conn: &ConnInfo,
    ) -> Result<Switch, Refusal> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        // RFC 2817 §3.3's example: the TLS token, then the protocol spoken over it.
        let value = format!("{token}, HTTP/1.1");
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(UPGRADE, v);
        }
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        Ok(Switch {
            response,
            session: Box::new(TlsSession {
                acceptor: self.acceptor.clone(),
                timeout: self.handshake_timeout,
                pending: without_upgrade(req),
            }),
        })
    }
}

struct TlsSession {
    acceptor: TlsAcceptor,
    timeout: Duration,
    pending: Request<()>,
}

impl Session for TlsSession {
    fn run(
        self: Box<Self>,
        io: ServerIo,
        leftover: BytesMut,
        _ctx: SessionCtx,
    ) -> BoxFuture<SessionEnd> {
        Box::pin(async move {
            // The HTTP layer refuses early data for this protocol; stay safe anyway.
            if !leftover.is_empty() || io.is_tls() {
                return SessionEnd::Done;
            }
            match tokio::time::timeout(self.timeout, io.accept_tls(&self.acceptor)).await {
                Ok(Ok(io)) => {
                    info!("connection upgraded to TLS (RFC 2817)");
                    SessionEnd::ContinueHttp {
                        io,
                        pending: Some(self.pending),
                    }
                }
                Ok(Err(e)) => {
                    info!("TLS handshake after 101 failed: {e}");
                    SessionEnd::Done
                }
                Err(_) => {
                    info!(
                        "TLS handshake after 101 took longer than {:?}",
                        self.timeout
                    );
                    SessionEnd::Done
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pending_request_loses_only_the_upgrade() {
        let mut r = Request::new(());
        *r.uri_mut() = "/x".parse().unwrap();
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("TLS/1.3"));
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("Upgrade, close"));
        r.headers_mut().insert("x-a", HeaderValue::from_static("1"));
        let p = without_upgrade(&r);
        assert_eq!(p.uri(), "/x");
        assert!(p.headers().get(UPGRADE).is_none());
        assert_eq!(p.headers()[CONNECTION], "close");
        assert_eq!(p.headers()["x-a"], "1");
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        assert!(without_upgrade(&r).headers().get(CONNECTION).is_none());
    }
}

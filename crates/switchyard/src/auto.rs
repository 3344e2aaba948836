//! Choosing HTTP/1.1 or HTTP/2 for a WebSocket by ALPN, like a browser that
//! is willing to use RFC 8441.
//!
//! The rule ([`connect_auto`]):
//!
//! * `ws://`: HTTP/1.1 Upgrade (cleartext HTTP/2 needs prior knowledge, which
//!   a client cannot assume).
//! * `wss://`: TLS offering ALPN `h2, http/1.1`. If the server picks `h2`
//!   *and* its SETTINGS carry `SETTINGS_ENABLE_CONNECT_PROTOCOL = 1`, the
//!   WebSocket is an extended CONNECT stream (RFC 8441). If it picks `h2`
//!   without the setting, that connection cannot carry a WebSocket: a new
//!   TLS connection offering only `http/1.1` is opened and the HTTP/1.1
//!   Upgrade used. Any other ALPN answer (`http/1.1`, none) means HTTP/1.1
//!   on the same connection.
//!
//! HTTP/3 is never chosen here: it needs a QUIC connection of its own and
//! is used only when asked for ([`crate::h3::connect_h3`]).

use http::Response;
use rustls::pki_types::ServerName;
use switchyard_proto::HttpVersion;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::client::{tls_error, ClientBuilder, MaybeTlsStream, Target};
use crate::error::{Deadline, H2Error};
use crate::h2::{H2Connection, H2WebSocket};
use crate::h3::H3Stream;
use crate::{Error, WebSocket};

/// The ALPN list offered by [`connect_auto`], in order of preference.
pub const AUTO_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// What was chosen and why, e.g. `HTTP/2 (ALPN h2, extended CONNECT)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The HTTP version that carries the WebSocket.
    pub version: HttpVersion,
    /// Why.
    pub reason: ChoiceReason,
}

/// Why a version was chosen; shown as `ALPN h2, extended CONNECT` and so on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChoiceReason {
    /// The server picked `h2` and enables extended CONNECT (RFC 8441).
    AlpnH2ExtendedConnect,
    /// The server picked `http/1.1`.
    AlpnHttp1,
    /// The server answered ALPN with something else than `h2`.
    AlpnNotH2,
    /// A TLS server without ALPN.
    NoAlpn,
    /// The server picked `h2` without extended CONNECT: HTTP/1.1 on a new
    /// connection.
    H2WithoutExtendedConnect,
    /// `ws://`: HTTP/1.1 (cleartext HTTP/2 needs prior knowledge).
    Cleartext,
    /// The caller asked for this version.
    AskedFor,
}

impl std::fmt::Display for ChoiceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChoiceReason::AlpnH2ExtendedConnect => "ALPN h2, extended CONNECT",
            ChoiceReason::AlpnHttp1 => "ALPN http/1.1",
            ChoiceReason::AlpnNotH2 => "ALPN answer not h2",
            ChoiceReason::NoAlpn => "no ALPN",
            ChoiceReason::H2WithoutExtendedConnect => {
                "ALPN h2 without extended CONNECT; HTTP/1.1 on a new connection"
            }
            ChoiceReason::Cleartext => "cleartext",
            ChoiceReason::AskedFor => "asked for",
        })
    }
}

impl std::fmt::Display for Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.version, self.reason)
    }
}

/// A WebSocket over any of the three HTTP versions. `S` is the HTTP/1.1
/// stream type.
pub enum AnyWebSocket<S = MaybeTlsStream> {
    /// Over HTTP/1.1 `Upgrade`.
    Http1(WebSocket<S>),
    /// On an HTTP/2 stream (extended CONNECT).
    Http2(H2WebSocket),
    /// On an HTTP/3 stream (extended CONNECT).
    Http3(WebSocket<H3Stream>),
}

impl<S> AnyWebSocket<S> {
    /// The HTTP version carrying it.
    pub fn version(&self) -> HttpVersion {
        match self {
            AnyWebSocket::Http1(_) => HttpVersion::Http1,
            AnyWebSocket::Http2(_) => HttpVersion::Http2,
            AnyWebSocket::Http3(_) => HttpVersion::Http3,
        }
    }
}

impl<S> std::fmt::Debug for AnyWebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AnyWebSocket({})", self.version())
    }
}

/// Whether `e` says the server spoke HTTP/2 without extended CONNECT (the
/// case where HTTP/1.1 on a new connection is the way forward).
pub fn is_no_connect_protocol(e: &Error) -> bool {
    matches!(e, Error::H2(H2Error::NoConnectProtocol { .. }))
}

/// Open the WebSocket on a TLS connection whose ALPN answer is `alpn`:
/// `h2` means HTTP/2 (extended CONNECT, which fails with an error for which
/// [`is_no_connect_protocol`] holds when the server did not enable it; the
/// connection is then used up), anything else HTTP/1.1 on `io`.
pub async fn websocket_on<S>(
    io: S,
    alpn: Option<&[u8]>,
    url: &str,
    builder: &ClientBuilder,
) -> Result<(AnyWebSocket<S>, Response<()>, Choice), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = Target::parse(url)?;
    if alpn == Some(b"h2".as_slice()) {
        let conn = H2Connection::handshake(io, url, builder).await?;
        let pq = target
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let (ws, resp) = conn.websocket(&pq, builder).await?;
        let choice = Choice {
            version: HttpVersion::Http2,
            reason: ChoiceReason::AlpnH2ExtendedConnect,
        };
        return Ok((AnyWebSocket::Http2(ws), resp, choice));
    }
    let (ws, resp) = builder.handshake_on(io, &target.uri).await?;
    let reason = match alpn {
        Some(b"http/1.1") => ChoiceReason::AlpnHttp1,
        Some(_) => ChoiceReason::AlpnNotH2,
        None if target.tls => ChoiceReason::NoAlpn,
        None => ChoiceReason::Cleartext,
    };
    let choice = Choice {
        version: HttpVersion::Http1,
        reason,
    };
    Ok((AnyWebSocket::Http1(ws), resp, choice))
}

/// The builder's TLS configuration with ALPN `alpn`.
pub fn tls_config_with_alpn(
    builder: &ClientBuilder,
    alpn: &[&[u8]],
) -> Result<std::sync::Arc<rustls::ClientConfig>, Error> {
    let mut cfg = (*builder.tls_config()?).clone();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(std::sync::Arc::new(cfg))
}

/// Open a WebSocket to a `ws://` or `wss://` URL choosing the HTTP version
/// by the rule of the module docs; says which one was used and why. The
/// whole exchange is bounded by `Limits::handshake_timeout` (twice when a
/// fallback connection is needed).
pub async fn connect_auto(
    url: &str,
    builder: &ClientBuilder,
) -> Result<(AnyWebSocket, Response<()>, Choice), Error> {
    let target = Target::parse(url)?;
    if !target.tls {
        let (ws, resp) = builder.connect(url).await?;
        let choice = Choice {
            version: HttpVersion::Http1,
            reason: ChoiceReason::Cleartext,
        };
        return Ok((AnyWebSocket::Http1(ws), resp, choice));
    }
    let limit = builder.get_limits().handshake_timeout;
    let first = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        tcp.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(tls_config_with_alpn(builder, AUTO_ALPN)?);
        let name = ServerName::try_from(target.host.clone()).map_err(|_| Error::Url {
            url: url.to_owned(),
            why: "the host is not a valid DNS name or IP address for TLS",
        })?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(&target.host, e))?;
        let io = MaybeTlsStream::Tls(Box::new(tls));
        let alpn = io.alpn_protocol().map(<[u8]>::to_vec);
        websocket_on(io, alpn.as_deref(), &target.uri.to_string(), builder).await
    };
    let first = Deadline::OpeningHandshake.bound(limit, first).await;
    match first {
        Err(e) if is_no_connect_protocol(&e) => {
            // `builder.connect` offers ALPN http/1.1 only.
            let (ws, resp) = builder.connect(url).await?;
            let choice = Choice {
                version: HttpVersion::Http1,
                reason: ChoiceReason::H2WithoutExtendedConnect,
            };
            Ok((AnyWebSocket::Http1(ws), resp, choice))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_reads_like_the_cli_line() {
        let c = Choice {
            version: HttpVersion::Http2,
            reason: ChoiceReason::AlpnH2ExtendedConnect,
        };
        assert_eq!(c.to_string(), "HTTP/2 (ALPN h2, extended CONNECT)");
        assert_eq!(HttpVersion::Http1.to_string(), "HTTP/1.1");
    }

    #[test]
    fn alpn_list_prefers_h2() {
        let b = ClientBuilder::new();
        let cfg = tls_config_with_alpn(&b, AUTO_ALPN).unwrap();
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // The builder's own configuration is untouched (HTTP/1.1 only).
        assert_eq!(
            b.tls_config().unwrap().alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn only_the_missing_setting_triggers_the_fallback() {
        let no = Error::H2(H2Error::NoConnectProtocol {
            authority: "x:1".into(),
        });
        assert!(is_no_connect_protocol(&no));
        assert!(!is_no_connect_protocol(&Error::Closed));
    }
}

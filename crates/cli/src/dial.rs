//! Opening a WebSocket the way the CLI commands need it: TCP directly or
//! through a proxy tunnel, TLS with our own rustls configuration (client
//! certificates), the handshake with `ClientBuilder::handshake_on`, the time
//! of each step, and (optionally) a transcript of the two HTTP heads.
//!
//! Shared by `connect` and `monitor` (and `doctor` next).

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Response, Uri};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switchyard::{ClientBuilder, WebSocket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use switchyard_gateway::config::parse_flag_duration;

use crate::proxy::{Proxy, ProxyError};

/// Any byte stream the WebSocket can run on (TCP, TLS, a proxy tunnel).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// Which HTTP version carries the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersion {
    #[default]
    Http1,
    Http2,
    Http3,
    /// `wss://`: offer ALPN `h2, http/1.1`; HTTP/2 when the server picks h2
    /// and enables extended CONNECT, else HTTP/1.1 (see `switchyard::auto`).
    /// `ws://`: HTTP/1.1.
    Auto,
}

/// Everything needed to open connections to one URL, built once.
#[derive(Clone)]
pub struct Dialer {
    pub builder: ClientBuilder,
    pub target: Target,
    pub proxy: Option<Proxy>,
    /// The rustls configuration for wss (with the client certificate, if any).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// TCP + proxy + TLS + upgrade must finish within this.
    pub timeout: Duration,
    pub http: HttpVersion,
    /// A client certificate is configured (HTTP/1.1 only for now).
    pub client_cert: bool,
}

/// A parsed ws:// or wss:// URL (http:// and https:// are accepted as their
/// WebSocket equivalents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub uri: Uri,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid URL {url:?}: {why}")]
    Url { url: String, why: &'static str },
    #[error("cannot connect to {addr}: {source}")]
    Tcp { addr: String, source: io::Error },
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("{what} did not finish within {limit:?} (--connect-timeout)")]
    Timeout { what: &'static str, limit: Duration },
    #[error("client certificate: {0}")]
    ClientCert(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Ws(#[from] switchyard::Error),
}

/// How long each step took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// TCP connect (to the server, or to the proxy plus the tunnel setup).
    pub tcp: Duration,
    pub tls: Option<Duration>,
    /// From sending the upgrade request to the validated 101.
    pub upgrade: Duration,
    /// Everything: the handshake time monitor reports.
    pub total: Duration,
}

/// An open WebSocket over HTTP/1.1, HTTP/2 or HTTP/3.
pub enum AnyWs {
    H1(WebSocket<BoxIo>),
    H2(switchyard::h2::H2WebSocket),
    H3(WebSocket<switchyard::h3::H3Stream>),
}

/// Run `$body` with `$ws` bound to the WebSocket inside an [`AnyWs`],
/// whatever its transport (the body is instantiated once per transport).
#[macro_export]
macro_rules! with_ws {
    ($any:expr, $ws:ident => $body:expr) => {
        match $any {
            $crate::dial::AnyWs::H1($ws) => $body,
            $crate::dial::AnyWs::H2($ws) => $body,
            $crate::dial::AnyWs::H3($ws) => $body,
        }
    };
}

impl AnyWs {
    pub fn negotiated(&self) -> &switchyard::proto::handshake::Negotiated {
        with_ws!(self, ws => ws.negotiated())
    }
    /// "HTTP/1.1", "HTTP/2" or "HTTP/3".
    pub fn transport(&self) -> &'static str {
        match self {
            AnyWs::H1(_) => "HTTP/1.1",
            AnyWs::H2(_) => "HTTP/2",
            AnyWs::H3(_) => "HTTP/3",
        }
    }
}

/// An open WebSocket and how it was opened.
pub struct Dialed {
    pub ws: AnyWs,
    /// The 101 response (for `doctor`'s evidence).
    #[allow(dead_code)]
    pub response: Response<()>,
    pub timings: Timings,
    /// Which HTTP version carries it, and why.
    pub choice: switchyard::Choice,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, DialError> {
        let bad = |why| DialError::Url {
            url: url.to_owned(),
            why,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
        let tls = match uri.scheme_str().map(|s| s.to_ascii_lowercase()).as_deref() {
            Some("ws") | Some("http") => false,
            Some("wss") | Some("https") => true,
            Some(_) => return Err(bad("the scheme must be ws:// or wss://")),
            None => return Err(bad("missing scheme; use ws://host/path or wss://host/path")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("missing host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        // Normalize the scheme to ws/wss for the handshake.
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(
            (if tls { "wss" } else { "ws" })
                .parse()
                .map_err(|_| bad("not a valid URL"))?,
        );
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        let uri = Uri::from_parts(parts).map_err(|_| bad("not a valid URL"))?;
        Ok(Target {
            url: url.to_owned(),
            uri,
            host,
            port,
            tls,
        })
    }

    /// `host:port` (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Take the builder's TLS configuration (roots, --ca, --insecure) and add the
/// client certificate and key from PEM files.
pub fn tls_config(
    builder: &ClientBuilder,
    client_cert: Option<(&PathBuf, &PathBuf)>,
) -> Result<Arc<rustls::ClientConfig>, DialError> {
    let base = builder.tls_config()?;
    let Some((cert, key)) = client_cert else {
        return Ok(base);
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| DialError::ClientCert(format!("cannot read {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| DialError::ClientCert(format!("bad PEM in {}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(DialError::ClientCert(format!(
            "{} holds no PEM CERTIFICATE block",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        DialError::ClientCert(format!(
            "cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from {}: {e}",
            key.display()
        ))
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        rustls::sign::CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| {
            DialError::ClientCert(format!(
                "{} and {} do not make a usable certificate and key: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    let mut cfg = (*base).clone();
    cfg.client_auth_cert_resolver = Arc::new(rustls::sign::SingleCertAndKey::from(certified));
    Ok(Arc::new(cfg))
}

/// The request and response heads as they crossed the wire.
#[derive(Debug, Default)]
pub struct Transcript {
    pub sent: Vec<u8>,
    pub received: Vec<u8>,
}

/// Cap on each recorded head.
const TRANSCRIPT_CAP: usize = 64 * 1024;

fn head_done(b: &[u8]) -> bool {
    b.windows(4).any(|w| w == b"\r\n\r\n") || b.len() >= TRANSCRIPT_CAP
}

impl Transcript {
    /// A head as text, cut at its blank line.
    fn head_text(b: &[u8]) -> String {
        let end = b
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(b.len(), |p| p + 2);
        String::from_utf8_lossy(&b[..end]).replace("\r\n", "\n")
    }
    pub fn request_head(&self) -> String {
        Self::head_text(&self.sent)
    }
    pub fn response_head(&self) -> String {
        Self::head_text(&self.received)
    }
}

/// A stream that copies the first HTTP head in each direction into a
/// [`Transcript`], then passes bytes through.
struct Tap<S> {
    inner: S,
    log: Arc<Mutex<Transcript>>,
    done_read: bool,
    done_write: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.done_read {
            if let Poll::Ready(Ok(())) = r {
                let mut log = this.log.lock().unwrap_or_else(|p| p.into_inner());
                let room = TRANSCRIPT_CAP.saturating_sub(log.received.len());
                let new = &buf.filled()[before..];
                log.received.extend_from_slice(&new[..new.len().min(room)]);
                this.done_read = head_done(&log.received);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if !this.done_write {
            if let Poll::Ready(Ok(n)) = r {
                let mut log = this.log.lock().unwrap_or_else(|p| p.into_inner());
                let room = TRANSCRIPT_CAP.saturating_sub(log.sent.len());
                let n = n.min(buf.len());
                log.sent.extend_from_slice(&buf[..n.min(room)]);
                this.done_write = head_done(&log.sent);
            }
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn tls_error(host: &str, e: io::Error) -> DialError {
    let is_rustls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
    if is_rustls {
        if let Some(inner) = e.into_inner() {
            if let Ok(r) = inner.downcast::<rustls::Error>() {
                return DialError::Ws(switchyard::Error::Tls {
                    host: host.to_owned(),
                    source: *r,
                });
            }
        }
        return DialError::Ws(switchyard::Error::TlsConfig("TLS failed".into()));
    }
    DialError::Ws(switchyard::Error::Io(e))
}

impl Dialer {
    /// Open a WebSocket; with `transcript`, record the two heads into it.
    pub async fn dial(
        &self,
        transcript: Option<&Arc<Mutex<Transcript>>>,
    ) -> Result<Dialed, DialError> {
        match self.http {
            HttpVersion::Http2 | HttpVersion::Http3 => self.dial_h2_h3(transcript).await,
            HttpVersion::Http1 => self.dial_tcp(transcript, false).await,
            HttpVersion::Auto => match self.dial_tcp(transcript, self.target.tls).await {
                Err(DialError::Ws(e)) if switchyard::auto::is_no_connect_protocol(&e) => {
                    let mut d = self.dial_tcp(transcript, false).await?;
                    d.choice.reason = switchyard::ChoiceReason::H2WithoutExtendedConnect;
                    Ok(d)
                }
                r => r,
            },
        }
    }

    /// Over TCP (and TLS): HTTP/1.1, or with `offer_h2` (wss only) ALPN
    /// `h2, http/1.1` and HTTP/2 when the server picks it.
    async fn dial_tcp(
        &self,
        transcript: Option<&Arc<Mutex<Transcript>>>,
        offer_h2: bool,
    ) -> Result<Dialed, DialError> {
        let start = Instant::now();
        let mut timings = Timings::default();
        let limit = self.timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let timeout = |what| DialError::Timeout { what, limit };

        let tcp = match &self.proxy {
            None => {
                let addr = self.target.authority();
                let fut = TcpStream::connect((self.target.host.as_str(), self.target.port));
                match tokio::time::timeout_at(deadline, fut).await {
                    Err(_) => return Err(timeout("the TCP connection")),
                    Ok(Err(source)) => return Err(DialError::Tcp { addr, source }),
                    Ok(Ok(s)) => s,
                }
            }
            Some(p) => {
                let fut = p.tunnel(&self.target.host, self.target.port);
                match tokio::time::timeout_at(deadline, fut).await {
                    Err(_) => return Err(timeout("the proxy tunnel")),
                    Ok(r) => r?,
                }
            }
        };
        let _ = tcp.set_nodelay(true);
        timings.tcp = start.elapsed();

        let stream: BoxIo = if self.target.tls {
            let t0 = Instant::now();
            let mut cfg = match &self.tls {
                Some(c) => c.clone(),
                None => tls_config(&self.builder, None)?,
            };
            if offer_h2 {
                let mut c = (*cfg).clone();
                c.alpn_protocols = switchyard::auto::AUTO_ALPN
                    .iter()
                    .map(|p| p.to_vec())
                    .collect();
                cfg = Arc::new(c);
            }
            let connector = tokio_rustls::TlsConnector::from(cfg);
            let name =
                ServerName::try_from(self.target.host.clone()).map_err(|_| DialError::Url {
                    url: self.target.url.clone(),
                    why: "the host is not a valid DNS name or IP address for TLS",
                })?;
            let tls = match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
                Err(_) => return Err(timeout("the TLS handshake")),
                Ok(r) => r.map_err(|e| tls_error(&self.target.host, e))?,
            };
            timings.tls = Some(t0.elapsed());
            if offer_h2 && tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
                return self.h2_on(Box::new(tls), transcript, start, timings).await;
            }
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let stream: BoxIo = match transcript {
            Some(log) => Box::new(Tap {
                inner: stream,
                log: log.clone(),
                done_read: false,
                done_write: false,
            }),
            None => stream,
        };
        let t0 = Instant::now();
        let (ws, response) = match tokio::time::timeout_at(
            deadline,
            self.builder.handshake_on(stream, &self.target.uri),
        )
        .await
        {
            Err(_) => return Err(timeout("the WebSocket handshake")),
            Ok(r) => r?,
        };
        timings.upgrade = t0.elapsed();
        timings.total = start.elapsed();
        let reason = match (offer_h2, self.target.tls) {
            (_, false) => switchyard::ChoiceReason::Cleartext,
            (true, true) => switchyard::ChoiceReason::AlpnHttp1,
            (false, true) => switchyard::ChoiceReason::AskedFor,
        };
        Ok(Dialed {
            ws: AnyWs::H1(ws),
            response,
            timings,
            choice: switchyard::Choice {
                version: switchyard::HttpVersion::Http1,
                reason,
            },
        })
    }

    /// ALPN chose h2 on `io`: extended CONNECT if the server enables it.
    async fn h2_on(
        &self,
        io: BoxIo,
        transcript: Option<&Arc<Mutex<Transcript>>>,
        start: Instant,
        mut timings: Timings,
    ) -> Result<Dialed, DialError> {
        let limit = self.timeout;
        let t0 = Instant::now();
        let url = self.target.uri.to_string();
        let fut = switchyard::auto::websocket_on(io, Some(b"h2"), &url, &self.builder);
        let (ws, response, choice) =
            tokio::time::timeout(limit.saturating_sub(start.elapsed()), fut)
                .await
                .map_err(|_| DialError::Timeout {
                    what: "the HTTP/2 WebSocket handshake",
                    limit,
                })??;
        let ws = match ws {
            switchyard::AnyWebSocket::Http2(ws) => AnyWs::H2(ws),
            // websocket_on with ALPN h2 only returns HTTP/2.
            other => {
                return Err(DialError::Unsupported(format!(
                    "unexpected {} WebSocket after ALPN h2",
                    other.version()
                )))
            }
        };
        if let Some(t) = transcript {
            record_h2(t, &url, &response, choice);
        }
        timings.upgrade = t0.elapsed();
        timings.total = start.elapsed();
        Ok(Dialed {
            ws,
            response,
            timings,
            choice,
        })
    }

    /// WebSocket over HTTP/2 (RFC 8441) or HTTP/3 (RFC 9220) with the
    /// library's clients, which open their own TCP/QUIC connection.
    async fn dial_h2_h3(
        &self,
        transcript: Option<&Arc<Mutex<Transcript>>>,
    ) -> Result<Dialed, DialError> {
        let name = if self.http == HttpVersion::Http2 {
            "--http2"
        } else {
            "--http3"
        };
        if self.proxy.is_some() {
            return Err(DialError::Unsupported(format!(
                "--proxy works with HTTP/1.1 only; drop {name} or --proxy"
            )));
        }
        if self.client_cert {
            return Err(DialError::Unsupported(format!(
                "--cert/--key work with HTTP/1.1 only; drop {name} or the client certificate"
            )));
        }
        let start = Instant::now();
        let url = self.target.uri.to_string();
        let limit = self.timeout;
        let timeout = |what| DialError::Timeout { what, limit };
        let (ws, response) = if self.http == HttpVersion::Http2 {
            let fut = switchyard::h2::connect_h2(&url, &self.builder);
            let (ws, r) = tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| timeout("the HTTP/2 WebSocket handshake"))??;
            (AnyWs::H2(ws), r)
        } else {
            let fut = switchyard::h3::connect_h3(&url, &self.builder);
            let (ws, r) = tokio::time::timeout(limit, fut)
                .await
                .map_err(|_| timeout("the HTTP/3 WebSocket handshake"))??;
            (AnyWs::H3(ws), r)
        };
        let total = start.elapsed();
        let choice = switchyard::Choice {
            version: match ws {
                AnyWs::H3(_) => switchyard::HttpVersion::Http3,
                _ => switchyard::HttpVersion::Http2,
            },
            reason: switchyard::ChoiceReason::AskedFor,
        };
        if let Some(t) = transcript {
            record_h2(t, &url, &response, choice);
        }
        Ok(Dialed {
            ws,
            response,
            timings: Timings {
                total,
                upgrade: total,
                ..Timings::default()
            },
            choice,
        })
    }
}

/// HTTP/2 and HTTP/3 heads are binary (HPACK/QPACK): record them as text
/// (`--show-handshake`), the request as a summary, the response in full.
fn record_h2(
    t: &Arc<Mutex<Transcript>>,
    url: &str,
    response: &Response<()>,
    choice: switchyard::Choice,
) {
    use std::fmt::Write;
    let mut log = t.lock().unwrap_or_else(|p| p.into_inner());
    let mut sent = String::new();
    let _ = write!(
        sent,
        "CONNECT {url} {} (extended CONNECT, :protocol websocket; {})\r\n\r\n",
        choice.version, choice.reason
    );
    let mut received = String::new();
    let _ = write!(received, "{} {}\r\n", choice.version, response.status());
    for (name, value) in response.headers() {
        let _ = write!(
            received,
            "{name}: {}\r\n",
            String::from_utf8_lossy(value.as_bytes())
        );
    }
    received.push_str("\r\n");
    log.sent = sent.into_bytes();
    log.received = received.into_bytes();
}

/// `Name: value` from `-H`.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not a header; write it as \"Name: value\""))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{:?} is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of {name} has characters a header cannot carry"))?;
    Ok((name, value))
}

/// The connection options `connect` and `monitor` share.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnOpts {
    /// Add a request header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Offer this subprotocol (repeatable, in preference order).
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Vec<String>,
    /// Send this Origin header.
    #[arg(long)]
    pub origin: Option<String>,
    /// Accept any server certificate (tests only: anyone on the path can read the traffic).
    #[arg(short = 'k', long)]
    pub insecure: bool,
    /// Also trust the CA certificates in this PEM file (repeatable).
    #[arg(long = "ca", value_name = "FILE")]
    pub ca: Vec<PathBuf>,
    /// Client certificate chain (PEM) for TLS client authentication; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Tunnel through a proxy: http://[user:pass@]host:port (CONNECT) or
    /// socks5://[user:pass@]host:port.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// WebSocket over HTTP/1.1 (the default for ws://; for wss:// without a
    /// flag, `connect` lets ALPN choose: HTTP/2 when the server offers h2 and
    /// extended CONNECT, else HTTP/1.1).
    #[arg(long, conflicts_with_all = ["http2", "http3"])]
    pub http1: bool,
    /// WebSocket over HTTP/2 (RFC 8441).
    #[arg(long, conflicts_with = "http3")]
    pub http2: bool,
    /// WebSocket over HTTP/3 (RFC 9220).
    #[arg(long)]
    pub http3: bool,
    /// Do not offer permessage-deflate.
    #[arg(long)]
    pub no_deflate: bool,
    /// Give up opening the connection after this long (TCP, proxy, TLS and upgrade).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_flag_duration)]
    pub connect_timeout: Duration,
}

impl ConnOpts {
    /// The dialer for `url` with these options; `limits` for the connection.
    pub fn dialer(&self, url: &str, limits: switchyard::Limits) -> Result<Dialer, DialError> {
        let target = Target::parse(url)?;
        let mut b = ClientBuilder::new()
            .subprotocols(self.subprotocols.iter().cloned())
            .limits(limits);
        if self.no_deflate {
            b = b.no_deflate();
        }
        if let Some(o) = &self.origin {
            b = b.origin(o.clone());
        }
        for (n, v) in &self.headers {
            b = b.header(n.clone(), v.clone());
        }
        for ca in &self.ca {
            b = b.add_ca_file(ca);
        }
        if self.insecure {
            b = b.danger_accept_invalid_certs();
        }
        let proxy = self.proxy.as_deref().map(Proxy::parse).transpose()?;
        let tls = if target.tls {
            Some(tls_config(&b, self.cert.as_ref().zip(self.key.as_ref()))?)
        } else {
            None
        };
        let http = if self.http2 {
            HttpVersion::Http2
        } else if self.http3 {
            HttpVersion::Http3
        } else {
            HttpVersion::Http1
        };
        Ok(Dialer {
            builder: b,
            target,
            proxy,
            tls,
            timeout: self.connect_timeout,
            http,
            client_cert: self.cert.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parsing_normalizes_scheme_and_path() {
        let t = Target::parse("http://example.com:81").unwrap();
        assert_eq!(t.uri.to_string(), "ws://example.com:81/");
        assert_eq!((t.port, t.tls), (81, false));
        let t = Target::parse("wss://[::1]/x?y=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 443, true));
        assert_eq!(t.authority(), "[::1]:443");
        assert!(matches!(
            Target::parse("ftp://x/"),
            Err(DialError::Url { .. })
        ));
        assert!(matches!(Target::parse("x"), Err(DialError::Url { .. })));
    }

    #[test]
    fn header_parsing() {
        let (n, v) = parse_header("X-Token:  abc ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-token", "abc"));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
    }

    #[test]
    fn transcript_cuts_heads_at_blank_line() {
        let t = Transcript {
            sent: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            received: b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n\r\n\x81\x02hi".to_vec(),
        };
        assert_eq!(t.request_head(), "GET / HTTP/1.1\nHost: x\n");
        assert_eq!(t.response_head(), "HTTP/1.1 101 OK\nUpgrade: websocket\n");
    }
}

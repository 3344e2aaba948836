//! Client side: `connect("ws://..." | "wss://...")`, a builder for the
//! options, TLS through rustls (ring provider), and the handshake over any
//! stream.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::{HeaderName, HeaderValue, Response, StatusCode, Uri};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use switchyard_proto::deflate::DeflateConfig;
use switchyard_proto::handshake::{ClientConfig, ClientHandshake};
use switchyard_proto::head::{self, ResponseParser};
use switchyard_proto::{Connection, Limits, Role};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::error::{Deadline, Error};
use crate::websocket::WebSocket;

/// A TCP stream, with or without TLS.
#[derive(Debug)]
pub enum MaybeTlsStream {
    /// `ws://`: plain TCP.
    Plain(TcpStream),
    /// `wss://`: TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl MaybeTlsStream {
    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTlsStream::Plain(s) => s,
            MaybeTlsStream::Tls(s) => s.get_ref().0,
        }
    }

    /// The ALPN protocol the TLS server chose, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            MaybeTlsStream::Plain(_) => None,
            MaybeTlsStream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTlsStream::Plain(s) => s.is_write_vectored(),
            MaybeTlsStream::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Where trusted root certificates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RootSource {
    /// The operating system's store; Mozilla's (webpki-roots) if none load.
    #[default]
    SystemWithFallback,
    /// Only the operating system's store.
    System,
    /// Only Mozilla's roots compiled in (webpki-roots).
    Webpki,
    /// None: only the CA files added with `add_ca_file`.
    None,
}

/// Options for [`ClientBuilder::connect`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    handshake: ClientConfig,
    limits: Limits,
    roots: RootSource,
    ca_files: Vec<PathBuf>,
    insecure: bool,
    tls: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder::new()
    }
}

impl ClientBuilder {
    /// Defaults: permessage-deflate offered (as browsers do), default limits,
    /// system roots with the webpki fallback.
    pub fn new() -> Self {
        ClientBuilder {
            handshake: ClientConfig::default().deflate(Some(DeflateConfig::default())),
            limits: Limits::default(),
            roots: RootSource::default(),
            ca_files: Vec::new(),
            insecure: false,
            tls: Arc::new(OnceLock::new()),
        }
    }

    fn tls_changed(mut self) -> Self {
        self.tls = Arc::new(OnceLock::new());
        self
    }

    /// Offer these subprotocols, in preference order.
    pub fn subprotocols<I, T>(mut self, protos: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.handshake.subprotocols = protos.into_iter().map(Into::into).collect();
        self
    }

    /// Offer permessage-deflate with these parameters.
    pub fn deflate(mut self, cfg: DeflateConfig) -> Self {
        self.handshake.deflate = Some(cfg);
        self
    }

    /// Do not offer permessage-deflate.
    pub fn no_deflate(mut self) -> Self {
        self.handshake.deflate = None;
        self
    }

    /// Send this `Origin`.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.handshake.origin = Some(origin.into());
        self
    }

    /// Add a header to the request (e.g. `Authorization`).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.handshake.headers.append(name, value);
        self
    }

    /// Use these limits (sizes, handshake deadline, heartbeat).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits in use.
    pub fn get_limits(&self) -> &Limits {
        &self.limits
    }

    /// The handshake settings (subprotocols, deflate, origin, extra headers).
    pub fn handshake_config(&self) -> &ClientConfig {
        &self.handshake
    }

    /// Where root certificates come from (wss).
    pub fn roots(self, roots: RootSource) -> Self {
        ClientBuilder { roots, ..self }.tls_changed()
    }

    /// Also trust the CA certificates in this PEM file (wss).
    pub fn add_ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.ca_files.push(path.as_ref().to_path_buf());
        self.tls_changed()
    }

    /// Accept ANY server certificate, without verification. Anyone on the
    /// path can read and change the traffic: for tests only.
    pub fn danger_accept_invalid_certs(mut self) -> Self {
        self.insecure = true;
        self.tls_changed()
    }

    /// The rustls configuration used for wss (built once per builder).
    pub fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        if let Some(c) = self.tls.get() {
            return Ok(c.clone());
        }
        let cfg = Arc::new(build_tls_config(self.roots, &self.ca_files, self.insecure)?);
        Ok(self.tls.get_or_init(|| cfg).clone())
    }

    /// Connect to a `ws://` or `wss://` URL and run the handshake, all within
    /// `Limits::handshake_timeout`.
    pub async fn connect(
        &self,
        url: &str,
    ) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
        let target = Target::parse(url)?;
        let timeout = self.limits.handshake_timeout;
        let fut = async {
            let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
            tcp.set_nodelay(true)?;
            let stream = if target.tls {
                let connector = tokio_rustls::TlsConnector::from(self.tls_config()?);
                let name = ServerName::try_from(target.host.clone()).map_err(|_| Error::Url {
                    url: url.to_owned(),
                    why: "the host is not a valid DNS name or IP address for TLS",
                })?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| tls_error(&target.host, e))?;
                MaybeTlsStream::Tls(Box::new(tls))
            } else {
                MaybeTlsStream::Plain(tcp)
            };
            self.handshake_on(stream, &target.uri).await
        };
        Deadline::OpeningHandshake.bound(timeout, fut).await
    }

    /// Run the client handshake over an already connected stream (TCP, TLS,
    /// a proxy tunnel, an in-memory pipe). `uri` is `ws://` or `wss://`.
    pub async fn handshake_on<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        uri: &Uri,
    ) -> Result<(WebSocket<S>, Response<()>), Error> {
        let hs = ClientHandshake::new(uri, self.handshake.clone())?;
        let mut out = Vec::with_capacity(512);
        head::write_request_head(&hs.request, &mut out);
        stream.write_all(&out).await?;
        stream.flush().await?;

        let (resp, leftover) = Deadline::OpeningHandshake
            .bound(
                self.limits.handshake_timeout,
                read_response_head(&mut stream, &self.limits),
            )
            .await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let preview_len = leftover.len().min(512);
            let body_preview = String::from_utf8_lossy(&leftover[..preview_len]).into_owned();
            return Err(Error::UpgradeRefused {
                status: resp.status(),
                hint: crate::refusal::hint(resp.status(), switchyard_proto::HttpVersion::Http1),
                response: Box::new(resp),
                body_preview,
            });
        }
        let negotiated = hs.verify(&resp)?;
        let conn = Connection::negotiated(
            Role::Client,
            self.limits.clone(),
            &negotiated,
            self.handshake.deflate.as_ref(),
        );
        let ws = WebSocket::from_raw(stream, conn, &leftover).with_negotiated(negotiated);
        Ok((ws, resp))
    }
}

/// Connect with the default options (see [`ClientBuilder::new`]).
pub async fn connect(url: &str) -> Result<(WebSocket<MaybeTlsStream>, Response<()>), Error> {
    static DEFAULT: OnceLock<ClientBuilder> = OnceLock::new();
    DEFAULT.get_or_init(ClientBuilder::new).connect(url).await
}

/// The client handshake over any stream, with `builder`'s options.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    url: &str,
    builder: &ClientBuilder,
) -> Result<(WebSocket<S>, Response<()>), Error> {
    let target = Target::parse(url)?;
    builder.handshake_on(stream, &target.uri).await
}

async fn read_response_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    limits: &Limits,
) -> Result<(Response<()>, BytesMut), Error> {
    let mut parser = ResponseParser::new(limits);
    let mut buf = BytesMut::with_capacity(4096);
    let mut total = 0usize;
    loop {
        buf.clear();
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(Error::HeadEof { got: total });
        }
        total += n;
        if let Some((resp, used)) = parser.feed(&buf[..n])? {
            let _ = buf.split_to(used.min(n));
            return Ok((resp, buf));
        }
    }
}

/// A parsed ws:// or wss:// URL.
pub(crate) struct Target {
    pub(crate) uri: Uri,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, Error> {
        let bad = |why| Error::Url {
            url: url.to_owned(),
            why,
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a valid URI"))?;
        let tls = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("ws") => false,
            Some(s) if s.eq_ignore_ascii_case("wss") => true,
            Some(_) => return Err(bad("the scheme must be ws:// or wss://")),
            None => return Err(bad("missing scheme; use ws://host/path or wss://host/path")),
        };
        let host = uri.host().ok_or_else(|| bad("missing host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            uri,
            host,
            port,
            tls,
        })
    }
}

pub(crate) fn tls_error(host: &str, e: io::Error) -> Error {
    let is_rustls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
    if is_rustls {
        if let Some(inner) = e.into_inner() {
            if let Ok(r) = inner.downcast::<rustls::Error>() {
                return Error::Tls {
                    host: host.to_owned(),
                    source: *r,
                };
            }
        }
        return Error::TlsConfig("TLS failed".into());
    }
    Error::Io(e)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_tls_config(
    roots: RootSource,
    ca_files: &[PathBuf],
    insecure: bool,
) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::TlsConfig(format!("no usable TLS versions: {e}")))?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth()
    } else {
        let mut store = RootCertStore::empty();
        let add_system = |store: &mut RootCertStore| {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
            added
        };
        let add_webpki = |store: &mut RootCertStore| {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        };
        match roots {
            RootSource::SystemWithFallback => {
                if add_system(&mut store) == 0 {
                    add_webpki(&mut store);
                }
            }
            RootSource::System => {
                add_system(&mut store);
            }
            RootSource::Webpki => add_webpki(&mut store),
            RootSource::None => {}
        }
        for path in ca_files {
            let mut n = 0;
            let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
                Error::TlsConfig(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            for cert in iter {
                let cert = cert.map_err(|e| {
                    Error::TlsConfig(format!("bad PEM in CA file {}: {e}", path.display()))
                })?;
                store.add(cert).map_err(|e| {
                    Error::TlsConfig(format!(
                        "unusable CA certificate in {}: {e}",
                        path.display()
                    ))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(Error::TlsConfig(format!(
                    "CA file {} holds no PEM CERTIFICATE block",
                    path.display()
                )));
            }
        }
        if store.is_empty() {
            return Err(Error::TlsConfig(
                "no trusted root certificates: the system store is empty and no CA file was \
                 added; use RootSource::Webpki or add_ca_file"
                    .into(),
            ));
        }
        builder.with_root_certificates(store).with_no_client_auth()
    };
    // WebSocket over HTTP/1.1 (RFC 6455); h2 needs RFC 8441 extended CONNECT.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A certificate verifier that accepts anything (signatures are still checked
/// for well-formedness by the provider). Only for `danger_accept_invalid_certs`.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        let t = Target::parse("ws://example.com/chat?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("example.com", 80, false));
        let t = Target::parse("wss://[::1]:8443/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("::1", 8443, true));
        assert!(matches!(Target::parse("http://x/"), Err(Error::Url { .. })));
        assert!(matches!(
            Target::parse("example.com"),
            Err(Error::Url { .. })
        ));
    }

    #[test]
    fn ca_file_errors_are_reported() {
        let e = build_tls_config(
            RootSource::None,
            &[PathBuf::from("/nonexistent/ca.pem")],
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = build_tls_config(RootSource::None, &[], false).unwrap_err();
        assert!(matches!(e, Error::TlsConfig(_)));
        let cfg = build_tls_config(RootSource::Webpki, &[], false).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}

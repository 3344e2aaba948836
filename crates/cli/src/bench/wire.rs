//! The hand-written client side of WebSocket: frames, masks, the opening handshake, the transports.

use anyhow::{bail, Context};
use base64::Engine as _;
use sha1::{Digest, Sha1};
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::frame::*;
use super::plan::*;
use super::tally::*;
/// Largest upgrade response head accepted.
pub(super) const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Masking keys and handshake keys: a CSPRNG (`rand`'s `StdRng`, ChaCha12) seeded once per
/// connection from the thread's OS-seeded generator, so that masks are unpredictable as
/// RFC 6455 §5.3 asks, at a few nanoseconds per key.
pub(super) struct Rng(rand::rngs::StdRng);

impl Rng {
    pub(super) fn new() -> Self {
        use rand::SeedableRng as _;
        Rng(rand::rngs::StdRng::from_rng(&mut rand::rng()))
    }

    pub(super) fn next(&mut self) -> u64 {
        use rand::Rng as _;
        self.0.random()
    }
}

/// The next complete server frame in `buf[*pos..len]`, checked to be unmasked, final and
/// without RSV bits; advances `*pos` past it and returns its header and the payload's range
/// in `buf`. `None` when more bytes are needed; an error for a frame larger than `buf` can
/// hold (bigger than `largest` expected) or a malformed one.
pub(super) fn next_frame(
    buf: &[u8],
    pos: &mut usize,
    len: usize,
    largest: usize,
) -> Result<Option<(FrameHead, std::ops::Range<usize>)>, Fail> {
    let avail = &buf[*pos..len];
    let Some(head) = parse_head(avail) else {
        return Ok(None);
    };
    let total = head.header_len as u64 + head.payload_len;
    if total > avail.len() as u64 {
        if total > buf.len() as u64 {
            return Err(Fail::Protocol(format!(
                "the server sent a {} byte frame; the largest expected is {largest}",
                head.payload_len
            )));
        }
        return Ok(None);
    }
    let start = *pos + head.header_len;
    *pos += total as usize;
    if head.masked || head.rsv != 0 || !head.fin {
        return Err(Fail::Protocol(format!(
            "bad server frame: fin={} rsv={} masked={} (servers must send \
             unmasked, unfragmented frames without extensions here)",
            head.fin, head.rsv, head.masked
        )));
    }
    Ok(Some((head, start..*pos)))
}

/// Sends the upgrade request on `stream` and checks the 101 response. Returns the bytes read
/// after the response head (the start of the frame stream).
pub(super) async fn handshake(
    stream: &mut Stream,
    plan: &Plan,
    rng: &mut Rng,
) -> anyhow::Result<Vec<u8>> {
    let mut raw_key = [0u8; 16];
    raw_key[..8].copy_from_slice(&rng.next().to_ne_bytes());
    raw_key[8..].copy_from_slice(&rng.next().to_ne_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(raw_key);
    let mut req = String::with_capacity(plan.request_head.len() + 32);
    req.push_str(&plan.request_head);
    req.push_str(&key);
    req.push_str("\r\n\r\n");
    // Flushed: a TLS stream keeps what the socket did not take at once until a flush
    // (or the next write, which would never come: the server waits for the request).
    stream
        .write_all(req.as_bytes())
        .await
        .context("cannot send the upgrade request")?;
    stream
        .flush()
        .await
        .context("cannot send the upgrade request")?;
    let mut buf = Vec::with_capacity(512);
    let head_end = loop {
        if let Some(p) = find_head_end(&buf) {
            break p;
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(Fail::BadHandshake(format!(
                "the upgrade response head is larger than {MAX_RESPONSE_HEAD} bytes"
            ))
            .into());
        }
        buf.reserve(512);
        let n = stream
            .read_buf(&mut buf)
            .await
            .context("cannot read the upgrade response")?;
        if n == 0 {
            return Err(Fail::ClosedEarly(
                "the server closed the connection before answering the upgrade request".into(),
            )
            .into());
        }
    };
    check_upgrade_response(&buf[..head_end], &key)?;
    Ok(buf.split_off(head_end))
}

/// Index just past the blank line ending an HTTP head, if it is in `buf`.
pub(super) fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The `Sec-WebSocket-Accept` value for `key` (RFC 6455 §4.2.2), computed here rather than
/// with switchyard's own code so that the benchmark checks the server independently.
pub(super) fn expected_accept(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Checks a response head: status 101, `Upgrade: websocket`, the right accept value, and no
/// extension (none was offered).
pub(super) fn check_upgrade_response(head: &[u8], key: &str) -> anyhow::Result<()> {
    let bad = |m: String| -> anyhow::Error { Fail::BadHandshake(m).into() };
    let Ok(text) = std::str::from_utf8(head) else {
        return Err(bad("the upgrade response head is not UTF-8".into()));
    };
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    if version != "HTTP/1.1" || code != "101" {
        return Err(Fail::Status {
            code: code.parse().ok(),
            status: status.to_string(),
        }
        .into());
    }
    let mut upgrade_ok = false;
    let mut accept = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!(
                "malformed header line {line:?} in the upgrade response"
            )));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade_ok = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accept = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            return Err(bad(format!(
                "the server accepted extension {value:?} that was not offered"
            )));
        }
    }
    if !upgrade_ok {
        return Err(bad(
            "the 101 response has no \"Upgrade: websocket\" header".into()
        ));
    }
    let want = expected_accept(key);
    match accept {
        Some(a) if a == want => Ok(()),
        Some(a) => Err(bad(format!(
            "Sec-WebSocket-Accept is {a:?}, expected {want:?}"
        ))),
        None => Err(bad(
            "the 101 response has no Sec-WebSocket-Accept header".into()
        )),
    }
}

/// The transport under the hand-written framing.
pub(super) enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// An HTTP/2 stream after the extended CONNECT.
    Other(Box<dyn crate::dial::Io>),
}

impl Stream {
    /// Reset instead of FIN + TIME_WAIT when dropped (see the callers).
    pub(super) fn set_zero_linger(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_zero_linger(),
            Stream::Tls(s) => s.get_ref().0.set_zero_linger(),
            Stream::Other(_) => Ok(()),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Tls($s) => $e,
            Stream::Other($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

pub(super) async fn connect(plan: &Plan) -> anyhow::Result<Stream> {
    let s = TcpStream::connect(plan.addr)
        .await
        .map_err(|source| Fail::Connect {
            addr: plan.addr,
            source,
        })?;
    s.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    let Some(tls) = &plan.tls else {
        return Ok(Stream::Tcp(s));
    };
    let name = rustls::pki_types::ServerName::try_from(plan.target.authority.0.clone())
        .with_context(|| {
            format!(
                "{}: the host is not a valid TLS server name",
                plan.target.url
            )
        })?;
    let s = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, s)
        .await
        .with_context(|| format!("TLS handshake with {} failed", plan.addr))?;
    Ok(Stream::Tls(Box::new(s)))
}

/// Opens `n` WebSockets as streams of one HTTP/2 connection (RFC 8441) and hands over
/// their byte streams (the extended CONNECT and its 200 were checked by switchyard).
pub(super) async fn open_h2_streams(
    plan: &Plan,
    n: usize,
) -> Vec<anyhow::Result<(Stream, Vec<u8>)>> {
    let conn = match switchyard::h2::H2Connection::connect(&plan.target.url, &plan.client).await {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("cannot open the HTTP/2 connection: {e}");
            return (0..n).map(|_| Err(anyhow::anyhow!(msg.clone()))).collect();
        }
    };
    let opens = (0..n).map(|_| async {
        let (ws, _) = conn
            .websocket(&plan.target.path, &plan.client)
            .await
            .context("extended CONNECT failed")?;
        if ws.negotiated().deflate.is_some() {
            bail!("the server negotiated permessage-deflate, which was not offered");
        }
        Ok((Stream::Other(Box::new(ws.into_inner())), Vec::new()))
    });
    futures_util::future::join_all(opens).await
}

//! The upstream side of one attempt: send the request head on a fresh
//! upstream connection, read the answer head (with the head parser's caps)
//! and decide.
//!
//! * A 101 that passes [`verify_switch`] (the token we offered, `Connection:
//!   upgrade`, and for websocket the `Sec-WebSocket-Accept` of the key we
//!   sent) -> [`UpstreamAnswer::Switched`]; only then may the caller turn the
//!   client connection into a tunnel and write the client's leftover bytes.
//! * Any other complete answer (200, 426, 3xx...) -> [`UpstreamAnswer::Response`]
//!   with its body read in full (Content-Length, chunked or until close, at
//!   most `max_body` bytes), to be relayed by [`write_relayed_response`]
//!   with `Connection: close`. The upstream connection is dropped: never
//!   reused.
//! * A 101 that fails the checks, garbage, EOF, a timeout, a body over the
//!   cap -> [`ExchangeError`], which the caller answers with 502 / 504 (or
//!   retries on the next backend when nothing was sent to the client).
//!
//! This module never writes a byte of the client's after-head data: the
//! caller holds it until `Switched`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderValue, Response, StatusCode};
use switchyard_proto::chunked::{ChunkedDecoder, ChunkedError};
use switchyard_proto::head::{self, HeadError, ResponseParser};
use switchyard_proto::upgrade::header_tokens;
use switchyard_proto::Limits;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::forward::{strip_hop_by_hop, verify_switch, SwitchError, UpstreamRequest};
use crate::outcome::Reason;

/// Default cap of a relayed (non-101) response body.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
/// Interim (1xx other than 101) answers skipped before giving up.
const MAX_INTERIM: usize = 8;

/// What the upstream answered.
#[derive(Debug)]
pub enum UpstreamAnswer {
    /// A valid 101: the caller may tunnel.
    Switched {
        /// The upstream's 101.
        response: Response<()>,
        /// The token switched to (lowercase).
        token: String,
        /// Bytes the upstream sent after its 101 head (the new protocol's).
        leftover: BytesMut,
    },
    /// Another complete answer, to relay as a normal HTTP response.
    Response {
        /// The head.
        response: Response<()>,
        /// The whole body.
        body: Bytes,
    },
}

/// Why an attempt produced nothing to relay.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Reading or writing the upstream failed.
    #[error("upstream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The upstream closed before a complete answer head.
    #[error(
        "the upstream closed the connection after {got} bytes, before a complete response head"
    )]
    Eof {
        /// Bytes received.
        got: usize,
    },
    /// No complete head (or body) within the deadline.
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The answer is not valid HTTP/1.1 (or exceeds the head caps).
    #[error("the upstream's response head is invalid: {0}")]
    Head(#[from] HeadError),
    /// A 101 that cannot be trusted.
    #[error("{0}")]
    Switch(#[from] SwitchError),
    /// The body is larger than the cap.
    #[error("the upstream's response body exceeds {limit} bytes; not relayed")]
    BodyTooLarge {
        /// The cap.
        limit: usize,
    },
    /// The body framing is broken (bad chunk, short Content-Length).
    #[error("the upstream's response body is malformed: {0}")]
    Body(&'static str),
    /// Too many 1xx interim answers.
    #[error("the upstream sent more than {MAX_INTERIM} interim (1xx) responses")]
    TooManyInterim,
}

impl ExchangeError {
    /// Why, for metrics and logs.
    pub fn reason(&self) -> Reason {
        match self {
            ExchangeError::Io(_) => Reason::UpstreamIo,
            ExchangeError::Eof { .. } => Reason::UpstreamEof,
            ExchangeError::Timeout(_) => Reason::UpstreamTimeout,
            ExchangeError::Head(_) => Reason::UpstreamGarbage,
            ExchangeError::Switch(e) => e.reason(),
            ExchangeError::BodyTooLarge { .. } => Reason::UpstreamBodyTooLarge,
            ExchangeError::Body(_) => Reason::UpstreamBadBody,
            ExchangeError::TooManyInterim => Reason::UpstreamInterim,
        }
    }

    /// The status to answer the client with: 504 for a timeout, else 502.
    pub fn status(&self) -> StatusCode {
        match self {
            ExchangeError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether another backend may be tried (the answer was not a
    /// deliberate, complete one).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ExchangeError::Io(_)
                | ExchangeError::Eof { .. }
                | ExchangeError::Timeout(_)
                | ExchangeError::Head(_)
        )
    }
}

/// Send `sent.head` and read the answer within `timeout` (the head and the
/// relayed body each get `timeout`).
pub async fn exchange<U: AsyncRead + AsyncWrite + Unpin>(
    upstream: &mut U,
    sent: &UpstreamRequest,
    limits: &Limits,
    timeout: Duration,
    max_body: usize,
) -> Result<UpstreamAnswer, ExchangeError> {
    let (response, leftover) = match tokio::time::timeout(timeout, async {
        upstream.write_all(&sent.head).await?;
        upstream.flush().await?;
        read_final_head(upstream, limits).await
    })
    .await
    {
        Ok(r) => r?,
        Err(_) => return Err(ExchangeError::Timeout(timeout)),
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let token = verify_switch(&response, sent)?;
        return Ok(UpstreamAnswer::Switched {
            response,
            token,
            leftover,
        });
    }
    let head_request = sent.method == http::Method::HEAD;
    let body = match tokio::time::timeout(
        timeout,
        read_body(upstream, &response, leftover, head_request, max_body),
    )
    .await
    {
        Ok(r) => r?,
        Err(_) => return Err(ExchangeError::Timeout(timeout)),
    };
    Ok(UpstreamAnswer::Response { response, body })
}

/// Read response heads, skipping interim 1xx answers other than 101.
async fn read_final_head<U: AsyncRead + Unpin>(
    upstream: &mut U,
    limits: &Limits,
) -> Result<(Response<()>, BytesMut), ExchangeError> {
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    for _ in 0..=MAX_INTERIM {
        let mut parser = ResponseParser::new(limits);
        // Bytes already buffered after an interim head come first.
        let mut pending = std::mem::take(&mut buf);
        loop {
            if !pending.is_empty() {
                let fed = pending.len();
                if let Some((resp, used)) = parser.feed(&pending)? {
                    let rest = pending.split_off(used.min(fed));
                    if resp.status().is_informational()
                        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
                    {
                        buf = rest;
                        break;
                    }
                    return Ok((resp, rest));
                }
                pending.clear();
            }
            pending.reserve(4096);
            let n = upstream.read_buf(&mut pending).await?;
            if n == 0 {
                return Err(ExchangeError::Eof { got: total });
            }
            total += n;
        }
    }
    Err(ExchangeError::TooManyInterim)
}

async fn read_more<U: AsyncRead + Unpin>(
    upstream: &mut U,
    buf: &mut BytesMut,
    max: usize,
) -> Result<usize, ExchangeError> {
    if buf.len() > max {
        return Err(ExchangeError::BodyTooLarge { limit: max });
    }
    Ok(upstream.read_buf(buf).await?)
}

/// The response body, per RFC 9112 §6.3, at most `max` bytes.
async fn read_body<U: AsyncRead + Unpin>(
    upstream: &mut U,
    resp: &Response<()>,
    mut buf: BytesMut,
    head_request: bool,
    max: usize,
) -> Result<Bytes, ExchangeError> {
    let status = resp.status();
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Bytes::new());
    }
    let h = resp.headers();
    if h.contains_key(TRANSFER_ENCODING) {
        let chunked = header_tokens(h, &TRANSFER_ENCODING)
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        if chunked {
            // Incremental: each byte read is decoded once, whatever the reads.
            let mut dec = ChunkedDecoder::new(max as u64, MAX_TRAILER);
            let mut body = BytesMut::new();
            loop {
                let p = dec.feed(&buf).map_err(chunked_error)?;
                for r in p.data {
                    body.extend_from_slice(&buf[r]);
                }
                if p.done {
                    return Ok(body.freeze());
                }
                buf.clear();
                if upstream.read_buf(&mut buf).await? == 0 {
                    return Err(ExchangeError::Body(
                        "the connection closed inside a chunked body",
                    ));
                }
            }
        }
        return read_to_close(upstream, buf, max).await;
    }
    if let Some(v) = h.get(CONTENT_LENGTH) {
        let len: usize = v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(ExchangeError::Body("Content-Length is not a number"))?;
        if len > max {
            return Err(ExchangeError::BodyTooLarge { limit: max });
        }
        while buf.len() < len {
            if read_more(upstream, &mut buf, max).await? == 0 {
                return Err(ExchangeError::Body(
                    "the connection closed before Content-Length bytes arrived",
                ));
            }
        }
        buf.truncate(len);
        return Ok(buf.freeze());
    }
    read_to_close(upstream, buf, max).await
}

async fn read_to_close<U: AsyncRead + Unpin>(
    upstream: &mut U,
    mut buf: BytesMut,
    max: usize,
) -> Result<Bytes, ExchangeError> {
    loop {
        if buf.len() > max {
            return Err(ExchangeError::BodyTooLarge { limit: max });
        }
        if upstream.read_buf(&mut buf).await? == 0 {
            return Ok(buf.freeze());
        }
    }
}

/// Bytes of trailer fields accepted after a chunked response body.
const MAX_TRAILER: usize = 16 * 1024;

fn chunked_error(e: ChunkedError) -> ExchangeError {
    match e {
        ChunkedError::TooLarge { limit } => ExchangeError::BodyTooLarge {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
        },
        ChunkedError::Size => ExchangeError::Body("chunk size is not hexadecimal"),
        ChunkedError::LineEnding => ExchangeError::Body("a chunked body line does not end in CRLF"),
        ChunkedError::DataEnd => ExchangeError::Body("chunk data not followed by CRLF"),
        ChunkedError::Invalid(why) => ExchangeError::Body(why),
        ChunkedError::LineTooLong => ExchangeError::Body("chunk size line too long"),
        ChunkedError::TrailerTooLarge { .. } => {
            ExchangeError::Body("chunked trailer fields too large")
        }
        _ => ExchangeError::Body("malformed chunked body"),
    }
}

/// The `Upgrade` value a relayed 426 keeps: the upstream's tokens (every
/// line, in order) without `h2c` (never advertised through the gateway: the
/// gateway does not serve it, and a client following it would try to switch
/// the connection to cleartext HTTP/2). `None` when no token remains.
///
/// RFC 9110 §15.5.22: a 426 MUST send `Upgrade`; the field is hop-by-hop,
/// so it is stripped like the others and rebuilt here for this hop.
pub fn relayed_upgrade(response: &Response<()>) -> Option<HeaderValue> {
    let tokens: Vec<&str> = header_tokens(response.headers(), &UPGRADE)
        .filter(|t| {
            let name = t.split('/').next().unwrap_or(t);
            !name.trim().eq_ignore_ascii_case("h2c")
        })
        .collect();
    if tokens.is_empty() {
        return None;
    }
    HeaderValue::from_str(&tokens.join(", ")).ok()
}

/// Write a relayed answer to the client: hop-by-hop fields removed, the
/// body framed with `Content-Length`, `Connection: close`. A 426 keeps the
/// upstream's `Upgrade` tokens ([`relayed_upgrade`]) with
/// `Connection: upgrade, close`.
pub async fn write_relayed_response<C: AsyncWrite + Unpin>(
    client: &mut C,
    response: &Response<()>,
    body: &Bytes,
    head_request: bool,
) -> std::io::Result<()> {
    let mut headers = response.headers().clone();
    strip_hop_by_hop(&mut headers);
    let upgrade = if response.status() == StatusCode::UPGRADE_REQUIRED {
        relayed_upgrade(response)
    } else {
        None
    };
    headers.remove(CONTENT_LENGTH);
    let status = response.status();
    if !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
    {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    match upgrade {
        Some(u) => {
            headers.insert(UPGRADE, u);
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade, close"));
        }
        None => {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    // The upstream's own words (`403 Origin not allowed`), not ours.
    if let Some(r) = response.extensions().get::<head::ReasonPhrase>() {
        resp.extensions_mut().insert(r.clone());
    }
    let mut out = Vec::with_capacity(256 + body.len());
    head::write_response_head(&resp, &mut out);
    if !head_request {
        out.extend_from_slice(body);
    }
    client.write_all(&out).await?;
    client.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunked response body whose bytes arrive in `pieces` (the first one
    /// already read with the head), decoded with a limit of `max`.
    async fn chunked_body(pieces: &[&'static [u8]], max: usize) -> Result<Bytes, ExchangeError> {
        let mut resp = Response::new(());
        resp.headers_mut()
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let rest: Vec<&'static [u8]> = pieces[1..].to_vec();
        let writer = tokio::spawn(async move {
            for p in rest {
                if theirs.write_all(p).await.is_err() {
                    return;
                }
                theirs.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let first = BytesMut::from(pieces[0]);
        let r = read_body(&mut ours, &resp, first, false, max).await;
        drop(ours);
        writer.await.unwrap();
        r
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_across_reads() {
        let raw: &[u8] = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(chunked_body(&[raw], 100).await.unwrap(), "Wikipedia");
        // Split anywhere, one piece in the head's read and the rest later.
        for cut in 0..raw.len() {
            let (a, b) = raw.split_at(cut);
            let (a, b): (&'static [u8], &'static [u8]) = (a, b);
            assert_eq!(
                chunked_body(&[a, b], 100).await.unwrap(),
                "Wikipedia",
                "cut {cut}"
            );
        }
        let bytes: Vec<&'static [u8]> = raw.chunks(1).collect();
        assert_eq!(chunked_body(&bytes, 100).await.unwrap(), "Wikipedia");
        // Bytes after the body are not part of it.
        let r = chunked_body(&[b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"], 100).await;
        assert_eq!(r.unwrap(), "ok");
    }

    #[tokio::test]
    async fn bad_chunked_bodies_are_errors() {
        let raw: &'static [u8] = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n";
        assert!(matches!(
            chunked_body(&[raw], 5).await,
            Err(ExchangeError::BodyTooLarge { limit: 5 })
        ));
        for (bad, why) in [
            (&b"zz\r\n"[..], "chunk size is not hexadecimal"),
            (b"+5\r\nhello\r\n0\r\n\r\n", "chunk size is not hexadecimal"),
            (b"2\r\nabXY", "chunk data not followed by CRLF"),
            (b"ffffffffffffffffff\r\n", "chunk size is not hexadecimal"),
            (b"2\nab\r\n", "a chunked body line does not end in CRLF"),
            (
                [&b"1;"[..], &[b'e'; 5000]].concat().leak(),
                "chunk size line too long",
            ),
            (
                b"2\r\nab\r\n",
                "the connection closed inside a chunked body",
            ),
        ] {
            match chunked_body(&[bad], 100).await {
                Err(ExchangeError::Body(w)) => assert_eq!(w, why),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }

    async fn answer(
        raw: &'static [u8],
        sent: &UpstreamRequest,
    ) -> Result<UpstreamAnswer, ExchangeError> {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let _ = theirs.read(&mut buf).await;
            theirs.write_all(raw).await.unwrap();
            // keep open a bit, then close
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        let r = exchange(
            &mut ours,
            sent,
            &Limits::default(),
            Duration::from_secs(2),
            64,
        )
        .await;
        server.await.unwrap();
        r
    }

    fn plain() -> UpstreamRequest {
        UpstreamRequest {
            head: b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n".to_vec(),
            method: http::Method::GET,
            upgrade_tokens: vec![],
            ws_key: None,
        }
    }

    #[tokio::test]
    async fn bodies_are_read_by_their_framing() {
        let r = answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcEXTRA",
            &plain(),
        )
        .await
        .unwrap();
        assert!(matches!(r, UpstreamAnswer::Response { ref body, .. } if body == "abc"));
        let r = answer(b"HTTP/1.1 426 Upgrade Required\r\ntransfer-encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n", &plain()).await.unwrap();
        assert!(
            matches!(r, UpstreamAnswer::Response { ref body, ref response } if body == "no" && response.status() == 426)
        );
        let r = answer(b"HTTP/1.1 200 OK\r\n\r\nuntil close", &plain())
            .await
            .unwrap();
        assert!(matches!(r, UpstreamAnswer::Response { ref body, .. } if body == "until close"));
        let r = answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            &plain(),
        )
        .await
        .unwrap();
        assert!(
            matches!(r, UpstreamAnswer::Response { ref body, ref response } if body.is_empty() && response.status() == 204)
        );
    }

    #[tokio::test]
    async fn bad_answers_are_errors() {
        let e = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n", &plain())
            .await
            .unwrap_err();
        assert!(matches!(e, ExchangeError::BodyTooLarge { limit: 64 }));
        let e = answer(b"SSH-2.0-OpenSSH\r\n\r\n", &plain())
            .await
            .unwrap_err();
        assert_eq!(e.reason(), Reason::UpstreamGarbage);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        let e = answer(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
            &plain(),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ExchangeError::Body(_)));
        let e = answer(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n", &plain()).await.unwrap_err();
        assert_eq!(e.reason(), Reason::Unrequested101);
        let e = answer(b"HTTP/1.1 200", &plain()).await.unwrap_err();
        assert!(matches!(e, ExchangeError::Eof { .. }));
    }

    #[tokio::test]
    async fn silent_upstream_times_out() {
        let (mut ours, _theirs) = tokio::io::duplex(1 << 16);
        let e = exchange(
            &mut ours,
            &plain(),
            &Limits::default(),
            Duration::from_millis(50),
            64,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, ExchangeError::Timeout(_)));
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(e.retryable());
    }

    #[tokio::test]
    async fn relayed_response_is_reframed() {
        let resp = Response::builder()
            .status(426)
            .header("connection", "keep-alive, x-hop")
            .header("x-hop", "1")
            .header("upgrade", "websocket")
            .header("transfer-encoding", "chunked")
            .header("x-end", "2")
            .body(())
            .unwrap();
        let mut out = Vec::new();
        write_relayed_response(&mut out, &resp, &Bytes::from_static(b"nope"), false)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("content-length: 4\r\n"), "{text}");
        assert!(text.contains("connection: upgrade, close\r\n"), "{text}");
        assert!(text.contains("upgrade: websocket\r\n"), "{text}");
        assert!(text.contains("x-end: 2\r\n"), "{text}");
        assert!(!text.contains("x-hop"), "{text}");
        assert!(!text.contains("transfer-encoding"), "{text}");
        assert!(text.ends_with("\r\n\r\nnope"), "{text}");
    }

    #[tokio::test]
    async fn relayed_response_keeps_the_upstreams_reason_phrase() {
        let r = answer(
            b"HTTP/1.1 403 Origin not allowed here\r\ncontent-length: 2\r\n\r\nno",
            &plain(),
        )
        .await
        .unwrap();
        let UpstreamAnswer::Response { response, body } = r else {
            panic!("expected a response");
        };
        let mut out = Vec::new();
        write_relayed_response(&mut out, &response, &body, false)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 403 Origin not allowed here\r\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn relayed_426_keeps_upgrade_without_h2c() {
        let relay = |status: u16, upgrades: &[&str]| {
            let mut b = Response::builder().status(status);
            for u in upgrades {
                b = b.header("upgrade", *u);
            }
            let resp = b.body(()).unwrap();
            async move {
                let mut out = Vec::new();
                write_relayed_response(&mut out, &resp, &Bytes::new(), false)
                    .await
                    .unwrap();
                String::from_utf8(out).unwrap()
            }
        };
        let text = relay(426, &["h2c, websocket", "H2C, TLS/1.3"]).await;
        assert!(text.contains("upgrade: websocket, TLS/1.3\r\n"), "{text}");
        assert!(text.contains("connection: upgrade, close\r\n"), "{text}");
        assert!(!text.to_ascii_lowercase().contains("h2c"), "{text}");
        // Only h2c: no Upgrade, and Connection names nothing but close.
        let text = relay(426, &["h2c"]).await;
        assert!(!text.contains("upgrade"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        // Other statuses do not advertise upgrades.
        let text = relay(200, &["websocket"]).await;
        assert!(!text.contains("upgrade"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
    }
}

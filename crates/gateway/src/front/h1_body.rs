//! HTTP/1.1 message framing the front needs: keep-alive, `Expect`, and
//! request bodies read and discarded within their caps (`Content-Length`
//! or chunked, decoded in constant memory).

use std::time::Duration;

use bytes::Buf;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Request, StatusCode, Version};
use switchyard::proto::chunked::{ChunkedDecoder, ChunkedError};
use switchyard::proto::upgrade::connection_has;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::io::Prefixed;

/// Whether the client wants the connection kept after this request.
pub(super) fn wants_keep_alive(req: &Request<()>) -> bool {
    match req.version() {
        Version::HTTP_11 => !connection_has(req.headers(), "close"),
        Version::HTTP_10 => connection_has(req.headers(), "keep-alive"),
        _ => false,
    }
}

/// `Expect: 100-continue` on an HTTP/1.1 request.
pub(super) fn expects_continue(req: &Request<()>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyLen {
    /// `Content-Length` bytes (0: no body).
    Length(u64),
    /// The chunked coding (the head parser already refused every other
    /// `Transfer-Encoding` framing, and `Content-Length` with it: RFC 9112 §6.1).
    Chunked,
}

/// The body to discard, or the status refusing it.
pub(super) fn body_length(
    req: &Request<()>,
    max: usize,
) -> Result<BodyLen, (StatusCode, &'static str)> {
    if req.headers().contains_key(TRANSFER_ENCODING) {
        return Ok(BodyLen::Chunked);
    }
    let mut len: Option<u64> = None;
    for v in req.headers().get_all(CONTENT_LENGTH) {
        let b = v.as_bytes();
        let ok = !b.is_empty() && b.len() <= 19 && b.iter().all(u8::is_ascii_digit);
        let n = match std::str::from_utf8(b)
            .ok()
            .filter(|_| ok)
            .and_then(|s| s.parse().ok())
        {
            Some(n) => n,
            None => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "Content-Length must be one decimal number\n",
                ))
            }
        };
        if len.is_some_and(|l| l != n) {
            return Err((
                StatusCode::BAD_REQUEST,
                "several different Content-Length values; send exactly one\n",
            ));
        }
        len = Some(n);
    }
    let n = len.unwrap_or(0);
    if n > max as u64 {
        return Err(too_large());
    }
    Ok(BodyLen::Length(n))
}

fn too_large() -> (StatusCode, &'static str) {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        "the request body is larger than this server accepts\n",
    )
}

/// Why a request body could not be discarded.
pub(super) enum BodyError {
    /// The connection failed, ended or timed out: nothing to answer.
    Io(std::io::Error),
    /// Malformed chunked framing (400) or over the limit (413).
    Refused(StatusCode, String),
}

/// The bounds of [`discard_body`].
pub(super) struct BodyCaps {
    /// Data bytes of a chunked body.
    pub(super) max_body: u64,
    /// Bytes of a chunked body's trailer fields (the head's cap).
    pub(super) max_trailer: usize,
    /// For the whole body.
    pub(super) deadline: Duration,
}

/// Read and drop the body (buffered bytes first) within `caps.deadline`:
/// exactly `n` bytes, or a chunked body up to its end. Bytes after the body
/// stay buffered for the next request.
pub(super) async fn discard_body<S: AsyncRead + Unpin>(
    conn: &mut Prefixed<S>,
    body: BodyLen,
    caps: BodyCaps,
) -> Result<(), BodyError> {
    let read = async {
        // On the heap, only when a body comes: an array would be part of
        // every connection's future (idle memory per connection).
        let mut scratch = Vec::new();
        match body {
            BodyLen::Length(mut n) => {
                let buffered = conn
                    .prefix()
                    .len()
                    .min(usize::try_from(n).unwrap_or(usize::MAX));
                conn.prefix_mut().advance(buffered);
                n -= buffered as u64;
                while n > 0 {
                    scratch.resize(8192, 0);
                    let want = scratch.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    let got = conn.get_mut().read(&mut scratch[..want]).await?;
                    if got == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    n -= got as u64;
                }
                Ok(Ok(()))
            }
            BodyLen::Chunked => {
                let mut dec = ChunkedDecoder::new(caps.max_body, caps.max_trailer);
                let done = match dec.feed(conn.prefix()) {
                    Ok(p) => {
                        conn.prefix_mut().advance(p.consumed);
                        p.done
                    }
                    Err(e) => return Ok(Err(e)),
                };
                if !done {
                    scratch.resize(8192, 0);
                }
                while !dec.is_done() {
                    let got = conn.get_mut().read(&mut scratch).await?;
                    if got == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    match dec.feed(&scratch[..got]) {
                        // What follows the body is the next request's.
                        Ok(p) => conn
                            .prefix_mut()
                            .extend_from_slice(&scratch[p.consumed..got]),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Ok(Ok(()))
            }
        }
    };
    match tokio::time::timeout(caps.deadline, read).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(ChunkedError::TooLarge { .. }))) => {
            let (status, msg) = too_large();
            Err(BodyError::Refused(status, msg.trim_end().to_owned()))
        }
        Ok(Ok(Err(e))) => Err(BodyError::Refused(
            StatusCode::BAD_REQUEST,
            format!("malformed chunked request body: {e}"),
        )),
        Ok(Err(e)) => Err(BodyError::Io(e)),
        Err(_) => Err(BodyError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

/// Read a body of exactly `n` bytes (buffered bytes first) within
/// `deadline`; bytes after it stay buffered for the next request.
pub(super) async fn read_body<S: AsyncRead + Unpin>(
    conn: &mut Prefixed<S>,
    n: u64,
    deadline: Duration,
) -> std::io::Result<bytes::Bytes> {
    let n =
        usize::try_from(n).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
    let read = async {
        let buffered = conn.prefix().len().min(n);
        let mut body = bytes::BytesMut::with_capacity(n);
        body.extend_from_slice(&conn.prefix()[..buffered]);
        conn.prefix_mut().advance(buffered);
        while body.len() < n {
            // Never past the body: what follows is the next request's.
            let rest = (n - body.len()) as u64;
            let got = AsyncReadExt::take(conn.get_mut(), rest)
                .read_buf(&mut body)
                .await?;
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn req_with(headers: &[(&str, &str)], version: Version) -> Request<()> {
        let mut r = Request::new(());
        *r.version_mut() = version;
        for (n, v) in headers {
            r.headers_mut().append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    #[test]
    fn keep_alive_rules() {
        assert!(wants_keep_alive(&req_with(&[], Version::HTTP_11)));
        assert!(!wants_keep_alive(&req_with(
            &[("connection", "Close")],
            Version::HTTP_11
        )));
        assert!(!wants_keep_alive(&req_with(&[], Version::HTTP_10)));
        assert!(wants_keep_alive(&req_with(
            &[("connection", "keep-alive")],
            Version::HTTP_10
        )));
    }

    #[test]
    fn body_length_rules() {
        let max = 1 << 20;
        assert_eq!(
            body_length(&req_with(&[], Version::HTTP_11), max),
            Ok(BodyLen::Length(0))
        );
        assert_eq!(
            body_length(
                &req_with(&[("content-length", "12")], Version::HTTP_11),
                max
            ),
            Ok(BodyLen::Length(12))
        );
        let same = req_with(
            &[("content-length", "3"), ("content-length", "3")],
            Version::HTTP_11,
        );
        assert_eq!(body_length(&same, max), Ok(BodyLen::Length(3)));
        let status = |h: &[(&str, &str)]| {
            body_length(&req_with(h, Version::HTTP_11), max)
                .unwrap_err()
                .0
        };
        assert_eq!(
            status(&[("content-length", "3"), ("content-length", "4")]),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(&[("content-length", "-1")]), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(&[("content-length", "1, 1")]),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&[("content-length", "99999999999999999999")]),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&[("content-length", "1048577")]),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            body_length(
                &req_with(&[("transfer-encoding", "chunked")], Version::HTTP_11),
                max
            ),
            Ok(BodyLen::Chunked)
        );
        assert_eq!(
            body_length(
                &req_with(&[("content-length", "1048576")], Version::HTTP_11),
                max
            ),
            Ok(BodyLen::Length(1 << 20))
        );
    }
}

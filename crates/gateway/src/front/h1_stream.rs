//! An HTTP/1.1 response whose body is a stream (a fallback session's event
//! stream, or its JSON answers): `Content-Length` when the body's size is
//! known, chunked otherwise (close-delimited for HTTP/1.0), each frame
//! written and flushed as it comes so that an event reaches the client at
//! once.

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderValue, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Body;
use switchyard::proto::head;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// How the body of a streamed response ended.
pub(super) enum Streamed {
    /// Completely written; the connection may carry the next request when
    /// the caller's `keep` allowed it.
    Complete,
    /// The connection failed, or its end marks the body's end: close it.
    Close,
}

/// Write `resp` to `conn`. `keep`: the connection may carry another
/// request afterwards (otherwise `Connection: close`).
pub(super) async fn write_streamed<W, B>(
    conn: &mut W,
    resp: Response<B>,
    alt_svc: Option<&HeaderValue>,
    version: Version,
    keep: bool,
) -> Streamed
where
    W: AsyncWrite + Unpin,
    B: Body<Data = bytes::Bytes> + Unpin,
{
    let (mut parts, mut body) = resp.into_parts();
    let exact = body.size_hint().exact();
    let chunked = exact.is_none() && version != Version::HTTP_10;
    // HTTP/1.0 has no chunked coding: the end of the connection ends the body.
    let keep = keep && (exact.is_some() || chunked);
    let h = &mut parts.headers;
    match exact {
        Some(n) => {
            h.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        None if chunked => {
            h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        None => {}
    }
    if let Some(v) = alt_svc {
        h.insert(http::header::ALT_SVC, v.clone());
    }
    match (keep, version) {
        (false, _) => {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        (true, Version::HTTP_10) => {
            h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        }
        (true, _) => {}
    }
    let mut out = Vec::with_capacity(256);
    head::write_response_head(&Response::from_parts(parts, ()), &mut out);
    if conn.write_all(&out).await.is_err() {
        return Streamed::Close;
    }
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map(|f| f.into_data()) else {
            return Streamed::Close;
        };
        let Ok(data) = data else { continue };
        if data.is_empty() {
            continue;
        }
        let written = if chunked {
            let size = format!("{:x}\r\n", data.len());
            conn.write_all(size.as_bytes()).await.is_ok()
                && conn.write_all(&data).await.is_ok()
                && conn.write_all(b"\r\n").await.is_ok()
        } else {
            conn.write_all(&data).await.is_ok()
        };
        if !written || conn.flush().await.is_err() {
            return Streamed::Close;
        }
    }
    if chunked && conn.write_all(b"0\r\n\r\n").await.is_err() {
        return Streamed::Close;
    }
    if conn.flush().await.is_err() || !keep {
        return Streamed::Close;
    }
    Streamed::Complete
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    async fn written<B: Body<Data = Bytes> + Unpin>(resp: Response<B>, version: Version) -> String {
        let mut out = Vec::new();
        write_streamed(&mut out, resp, None, version, true).await;
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn a_known_length_is_sent_and_a_stream_is_chunked() {
        let s = written(
            Response::new(Full::new(Bytes::from("{}"))),
            Version::HTTP_11,
        )
        .await;
        assert!(s.contains("content-length: 2\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\n{}"), "{s}");
        let frames = futures_util::stream::iter(
            ["data: a\n\n", "data: bc\n\n"]
                .map(|d| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(d)))),
        );
        let s = written(Response::new(StreamBody::new(frames)), Version::HTTP_11).await;
        assert!(s.contains("transfer-encoding: chunked\r\n"), "{s}");
        assert!(
            s.ends_with("\r\n\r\n9\r\ndata: a\n\n\r\na\r\ndata: bc\n\n\r\n0\r\n\r\n"),
            "{s:?}"
        );
    }

    #[tokio::test]
    async fn http10_streams_until_the_connection_closes() {
        let frames = futures_util::stream::iter(
            ["x"].map(|d| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(d)))),
        );
        let mut out = Vec::new();
        let end = write_streamed(
            &mut out,
            Response::new(StreamBody::new(frames)),
            None,
            Version::HTTP_10,
            true,
        )
        .await;
        assert!(matches!(end, Streamed::Close));
        let s = String::from_utf8(out).unwrap();
        assert!(s.contains("connection: close\r\n"), "{s}");
        assert!(!s.contains("chunked"), "{s}");
        assert!(s.ends_with("\r\n\r\nx"), "{s}");
    }
}

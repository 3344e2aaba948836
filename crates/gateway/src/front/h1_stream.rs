//! An HTTP/1.1 response whose body is a stream (a fallback session's event
//! stream, or its JSON answers): `Content-Length` when the body's size is
//! known, chunked otherwise (close-delimited for HTTP/1.0), each frame
//! written and flushed as it comes so that an event reaches the client at
//! once.
//!
//! What is ready together goes out in one write: the head with the frames
//! the body has ready (a whole JSON answer), a frame with its chunk size
//! line and CRLF, the last frame with the end of the chunks. On loopback a
//! write costs more than the copy that saves it (it is the TCP send of one
//! segment, with the receiver's processing), and a session message costs
//! one such write per response instead of two or three.

use std::io::Write as _;

use futures_util::FutureExt;
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
    // A frame awaited, to go out with those ready after it.
    let mut awaited = None;
    loop {
        let mut ended = false;
        while out.len() < GATHER_BYTES {
            let next = match awaited.take() {
                Some(next) => next,
                None => match body.frame().now_or_never() {
                    Some(next) => next,
                    None => break,
                },
            };
            match next {
                None => {
                    ended = true;
                    break;
                }
                Some(Err(_)) => return Streamed::Close,
                // Trailers are not sent.
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        push_data(&mut out, &data, chunked);
                    }
                }
            }
        }
        if ended && chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        if !out.is_empty() {
            if conn.write_all(&out).await.is_err() || conn.flush().await.is_err() {
                return Streamed::Close;
            }
            if out.capacity() > KEPT_CAPACITY {
                // A long-lived event stream does not keep its largest write.
                out = Vec::new();
            } else {
                out.clear();
            }
        }
        if ended {
            break;
        }
        awaited = Some(body.frame().await);
    }
    if keep {
        Streamed::Complete
    } else {
        Streamed::Close
    }
}

/// Bytes gathered for one write at most (beyond it the frames ready go out
/// in the next write).
const GATHER_BYTES: usize = 64 << 10;

/// Capacity of the write buffer kept between writes.
const KEPT_CAPACITY: usize = 4 << 10;

/// Append `data` to `out`, framed as a chunk when `chunked`. An empty
/// frame is nothing (an empty chunk would end the body).
fn push_data(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        // Writing to a Vec does not fail.
        let _ = write!(out, "{:x}\r\n", data.len());
    }
    out.extend_from_slice(data);
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
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

    /// Each write apart.
    #[derive(Clone, Default)]
    struct Writes(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Writes {
        fn taken(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            let s = String::from_utf8_lossy(buf).into_owned();
            self.0.lock().unwrap().push(s);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn what_is_ready_together_goes_out_in_one_write() {
        // A whole answer: its head and body in one write.
        let w = Writes::default();
        let resp = Response::new(Full::new(Bytes::from("{}")));
        write_streamed(&mut w.clone(), resp, None, Version::HTTP_11, true).await;
        let writes = w.taken();
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert!(writes[0].ends_with("\r\n\r\n{}"), "{writes:?}");
        // A stream: the head with the frame ready, then a later frame with
        // its framing and the end of the chunks.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
        tx.send(Bytes::from_static(b"data: a\n\n")).unwrap();
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            let d = rx.recv().await?;
            Some((Ok::<_, std::convert::Infallible>(Frame::data(d)), rx))
        });
        let resp = Response::new(StreamBody::new(Box::pin(frames)));
        let w = Writes::default();
        let mut conn = w.clone();
        let task = tokio::spawn(async move {
            write_streamed(&mut conn, resp, None, Version::HTTP_11, true).await
        });
        while w.taken().is_empty() {
            tokio::task::yield_now().await;
        }
        tx.send(Bytes::from_static(b"data: b\n\n")).unwrap();
        drop(tx);
        assert!(matches!(task.await.unwrap(), Streamed::Complete));
        let writes = w.taken();
        assert_eq!(writes.len(), 2, "{writes:?}");
        assert!(
            writes[0].contains("transfer-encoding: chunked\r\n")
                && writes[0].ends_with("\r\n\r\n9\r\ndata: a\n\n\r\n"),
            "{writes:?}"
        );
        assert_eq!(writes[1], "9\r\ndata: b\n\n\r\n0\r\n\r\n");
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

//! Plain HTTP/3 requests and responses (RFC 9114 §4.1): a message's body as
//! a [`hyper::body::Body`] ([`H3Body`]), and a response streamed out frame
//! by frame ([`H3Responder`]). A server hands them to its request hook
//! ([`PendingStream::into_exchange`](super::PendingStream::into_exchange));
//! the client gets an [`H3Body`] with each response
//! ([`H3Connection::send_request`](super::H3Connection::send_request)).

use std::any::Any;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::io::ReadBuf;

use super::frame;
use super::head::CONNECTION_SPECIFIC;
use super::qpack;
use super::stream::DataReader;

/// How long a finished response may take to be acknowledged before its
/// stream is let go (the bytes still leave while the connection lives).
const LINGER: Duration = Duration::from_secs(5);

/// The body of an HTTP/3 message: the payload of its DATA frames, until the
/// end of the stream (unknown frames are skipped; trailers end it).
pub struct H3Body {
    reader: DataReader,
    /// Keeps the HTTP/3 connection alive while the body is read.
    _keep: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for H3Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Body").finish_non_exhaustive()
    }
}

impl H3Body {
    pub(crate) fn new(reader: DataReader, keep: Option<Arc<dyn Any + Send + Sync>>) -> Self {
        H3Body {
            reader,
            _keep: keep,
        }
    }
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let mut chunk = [0u8; 16 * 1024];
        let mut buf = ReadBuf::new(&mut chunk);
        match self.get_mut().reader.poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => {
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(buf.filled())))))
            }
        }
    }
}

/// Sends the response to one HTTP/3 request.
pub struct H3Responder {
    send: quinn::SendStream,
    /// Keeps the HTTP/3 connection alive while the response is sent.
    _keep: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for H3Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H3Responder")
            .field("stream", &self.send.id())
            .finish_non_exhaustive()
    }
}

impl H3Responder {
    pub(crate) fn new(send: quinn::SendStream, keep: Option<Arc<dyn Any + Send + Sync>>) -> Self {
        H3Responder { send, _keep: keep }
    }

    /// Send `response`: a HEADERS frame (connection-specific fields left
    /// out, `content-length` added when the body's size is known), then
    /// each frame of the body as one DATA frame as soon as it comes
    /// (trailers are not sent), then the end of the stream. An error when
    /// the body fails, or when the client stops reading or resets the stream
    /// (noticed at once, also while the body waits: a client that leaves an
    /// event stream ends it).
    pub async fn send<B>(mut self, response: Response<B>) -> io::Result<()>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Display,
    {
        let (mut parts, body) = response.into_parts();
        for name in CONNECTION_SPECIFIC {
            parts.headers.remove(name);
        }
        let bodiless = matches!(
            parts.status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        );
        if let Some(n) = body.size_hint().exact().filter(|_| !bodiless) {
            parts
                .headers
                .entry(CONTENT_LENGTH)
                .or_insert(HeaderValue::from(n));
        }
        send_head(&mut self.send, parts.status, &parts.headers, b"").await?;
        let stopped = self.send.stopped();
        tokio::pin!(stopped);
        let mut body = std::pin::pin!(body);
        loop {
            let next = tokio::select! {
                f = body.frame() => f,
                _ = &mut stopped => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the client stopped reading the response",
                    ))
                }
            };
            let Some(f) = next else { break };
            let f = f.map_err(|e| io::Error::other(format!("the response body failed: {e}")))?;
            let Ok(data) = f.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            let mut hdr = Vec::with_capacity(16);
            frame::encode_varint(&mut hdr, frame::DATA);
            frame::encode_varint(&mut hdr, data.len() as u64);
            self.send
                .write_all_chunks(&mut [Bytes::from(hdr), data])
                .await?;
        }
        self.send.finish().map_err(io::Error::other)?;
        // Hold the connection until the client has the whole answer.
        let _ = tokio::time::timeout(LINGER, stopped).await;
        Ok(())
    }
}

/// Send a response's HEADERS frame, then `body` (if not empty) as one DATA
/// frame with `content-type: text/plain`.
pub(crate) async fn send_head(
    send: &mut quinn::SendStream,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), quinn::WriteError> {
    let mut out = Vec::new();
    let status_text = status.as_str().to_string();
    let mut fields: Vec<(&[u8], &[u8])> = vec![(b":status", status_text.as_bytes())];
    fields.extend(
        headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
    );
    if !body.is_empty() {
        fields.push((b"content-type", b"text/plain; charset=utf-8"));
    }
    frame::encode_frame(&mut out, frame::HEADERS, &qpack::encode(fields));
    if !body.is_empty() {
        frame::encode_frame(&mut out, frame::DATA, body);
    }
    send.write_all(&out).await
}

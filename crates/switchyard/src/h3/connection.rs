//! What both roles of an HTTP/3 connection share: the QUIC transport
//! settings, our control stream with SETTINGS, and the peer's
//! unidirectional streams (its control stream, QPACK streams).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::frame::{self, FrameReader, ReadFrame};
use crate::error::{H3Error, H3ProtocolError};

/// Concurrent request streams per connection (QUIC's
/// `max_concurrent_bidi_streams`): each is one WebSocket or one request.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// Idle timeout of a QUIC connection: a connection with no packet for this
/// long is closed. Clients keep WebSockets alive with pings
/// (`Limits::ping_interval`) or QUIC keep-alives.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Interval of the QUIC keep-alive PINGs a client sends, so a quiet
/// WebSocket is not closed by either side's [`IDLE_TIMEOUT`].
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// The QUIC transport settings of both roles; clients also send keep-alives.
pub(crate) fn transport_config(client: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    if client {
        t.keep_alive_interval(Some(CLIENT_KEEP_ALIVE));
    }
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
    // Control + QPACK encoder + decoder, and a few more for extensions.
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(8));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// Close the connection with an HTTP/3 error.
pub(crate) fn close_with(conn: &quinn::Connection, e: &H3ProtocolError) {
    conn.close(quinn::VarInt::from_u32(e.code), e.reason.as_bytes());
}

/// Open our control stream and send SETTINGS. The returned stream must be
/// kept open for the life of the connection (closing it is
/// H3_CLOSED_CRITICAL_STREAM).
pub(crate) async fn open_control(
    conn: &quinn::Connection,
    max_field_section_size: usize,
    enable_connect: bool,
) -> Result<quinn::SendStream, H3Error> {
    let mut control = conn.open_uni().await.map_err(H3Error::Connection)?;
    let mut out = Vec::new();
    frame::encode_varint(&mut out, frame::STREAM_CONTROL);
    frame::encode_frame(
        &mut out,
        frame::SETTINGS,
        &frame::our_settings(max_field_section_size, enable_connect),
    );
    control
        .write_all(&out)
        .await
        .map_err(|e| H3Error::Io(e.into()))?;
    Ok(control)
}

/// What the peer's control stream said.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ControlEvent {
    /// Its SETTINGS (the first frame).
    Settings(frame::PeerSettings),
    /// A server's GOAWAY (RFC 9114 §5.2): requests on client-initiated
    /// bidirectional streams with this ID or more will not be processed.
    GoAway(u64),
}

/// Read the peer's unidirectional streams: its control stream (SETTINGS
/// first, then GOAWAY, reported through `on_control`), QPACK streams (drained: with no
/// dynamic table they carry nothing we use), others refused. Protocol
/// errors close the connection.
pub(crate) async fn run_uni_streams(
    conn: quinn::Connection,
    is_client: bool,
    on_control: impl Fn(ControlEvent) + Send + Sync + 'static,
) {
    let on_control = Arc::new(on_control);
    let control_seen = Arc::new(AtomicBool::new(false));
    while let Ok(recv) = conn.accept_uni().await {
        let conn = conn.clone();
        let on_control = on_control.clone();
        let control_seen = control_seen.clone();
        tokio::spawn(async move {
            let mut reader = FrameReader::new(recv);
            let ty = match reader.read_varint().await {
                Ok(Some(t)) => t,
                _ => return,
            };
            match ty {
                frame::STREAM_CONTROL => {
                    if control_seen.swap(true, Ordering::SeqCst) {
                        close_with(
                            &conn,
                            &H3ProtocolError::new(
                                frame::H3_STREAM_CREATION_ERROR,
                                "second control stream",
                            ),
                        );
                        return;
                    }
                    if let Err(e) = read_control(&mut reader, is_client, &*on_control).await {
                        // A read that failed because the connection is gone
                        // must not replace the peer's close reason.
                        if conn.close_reason().is_none() {
                            close_with(&conn, &e);
                        }
                    }
                }
                frame::STREAM_QPACK_ENCODER | frame::STREAM_QPACK_DECODER => {
                    // Drain without keeping anything.
                    let mut scratch = vec![0u8; 4096];
                    while let Ok(Some(_)) = reader.inner.read(&mut scratch).await {}
                }
                frame::STREAM_PUSH if is_client => {
                    // We never sent MAX_PUSH_ID: a push is an error.
                    close_with(
                        &conn,
                        &H3ProtocolError::new(
                            0x108,
                            "push stream without MAX_PUSH_ID (H3_ID_ERROR)",
                        ),
                    );
                }
                _ => {
                    let _ = reader
                        .inner
                        .stop(quinn::VarInt::from_u32(frame::H3_STREAM_CREATION_ERROR));
                }
            }
        });
    }
}

/// The peer's control stream: SETTINGS first, then GOAWAY / MAX_PUSH_ID /
/// CANCEL_PUSH (ignored) until the connection ends. Its end is an error.
async fn read_control(
    reader: &mut FrameReader<quinn::RecvStream>,
    is_client: bool,
    on_control: &(dyn Fn(ControlEvent) + Send + Sync),
) -> Result<(), H3ProtocolError> {
    let mut first = true;
    let mut last_goaway: Option<u64> = None;
    loop {
        match reader.next_frame(4096, frame::is_defined_type).await? {
            ReadFrame::End => {
                return Err(H3ProtocolError::new(
                    frame::H3_CLOSED_CRITICAL_STREAM,
                    "control stream closed",
                ))
            }
            ReadFrame::Frame { ty, payload } => {
                if first {
                    if ty != frame::SETTINGS {
                        return Err(H3ProtocolError::new(
                            frame::H3_MISSING_SETTINGS,
                            "first frame on the control stream is not SETTINGS",
                        ));
                    }
                    let s = frame::parse_settings(&payload)
                        .map_err(|e| H3ProtocolError::new(frame::H3_SETTINGS_ERROR, e))?;
                    on_control(ControlEvent::Settings(s));
                    first = false;
                    continue;
                }
                match ty {
                    frame::GOAWAY if is_client => {
                        // RFC 9114 §5.2: a client-initiated bidirectional
                        // stream ID, never larger than a previous one.
                        let id = frame::parse_goaway(&payload).ok_or_else(|| {
                            H3ProtocolError::new(frame::H3_FRAME_ERROR, "malformed GOAWAY")
                        })?;
                        if id % 4 != 0 || last_goaway.is_some_and(|l| id > l) {
                            return Err(H3ProtocolError::new(
                                frame::H3_ID_ERROR,
                                format!("GOAWAY with stream ID {id}"),
                            ));
                        }
                        last_goaway = Some(id);
                        on_control(ControlEvent::GoAway(id));
                    }
                    // A client's GOAWAY carries a push ID; we never push.
                    frame::GOAWAY | frame::CANCEL_PUSH => {}
                    frame::MAX_PUSH_ID if !is_client => {}
                    _ => {
                        return Err(H3ProtocolError::new(
                            frame::H3_FRAME_UNEXPECTED,
                            format!("frame type 0x{ty:x} on the control stream"),
                        ))
                    }
                }
            }
        }
    }
}

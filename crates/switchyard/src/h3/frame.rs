//! HTTP/3 framing (RFC 9114 §7): QUIC variable-length integers, frame
//! headers, SETTINGS, and a bounded frame reader for control and request
//! streams.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::H3ProtocolError;

/// Frame types (RFC 9114 §7.2).
pub(crate) const DATA: u64 = 0x00;
pub(crate) const HEADERS: u64 = 0x01;
pub(crate) const CANCEL_PUSH: u64 = 0x03;
pub(crate) const SETTINGS: u64 = 0x04;
pub(crate) const PUSH_PROMISE: u64 = 0x05;
pub(crate) const GOAWAY: u64 = 0x07;
pub(crate) const MAX_PUSH_ID: u64 = 0x0d;

/// Unidirectional stream types (RFC 9114 §6.2, RFC 9204 §4.2).
pub(crate) const STREAM_CONTROL: u64 = 0x00;
pub(crate) const STREAM_PUSH: u64 = 0x01;
pub(crate) const STREAM_QPACK_ENCODER: u64 = 0x02;
pub(crate) const STREAM_QPACK_DECODER: u64 = 0x03;

/// Settings (RFC 9114 §7.2.4.1, RFC 9204 §5, RFC 9220 §3).
pub(crate) const SETTINGS_QPACK_MAX_TABLE_CAPACITY: u64 = 0x01;
pub(crate) const SETTINGS_MAX_FIELD_SECTION_SIZE: u64 = 0x06;
pub(crate) const SETTINGS_QPACK_BLOCKED_STREAMS: u64 = 0x07;
pub(crate) const SETTINGS_ENABLE_CONNECT_PROTOCOL: u64 = 0x08;

/// Error codes (RFC 9114 §8.1, RFC 9204 §6).
pub(crate) const H3_NO_ERROR: u32 = 0x100;
pub(crate) const H3_STREAM_CREATION_ERROR: u32 = 0x103;
pub(crate) const H3_CLOSED_CRITICAL_STREAM: u32 = 0x104;
pub(crate) const H3_FRAME_UNEXPECTED: u32 = 0x105;
pub(crate) const H3_FRAME_ERROR: u32 = 0x106;
pub(crate) const H3_EXCESSIVE_LOAD: u32 = 0x107;
pub(crate) const H3_ID_ERROR: u32 = 0x108;
pub(crate) const H3_SETTINGS_ERROR: u32 = 0x109;
pub(crate) const H3_MISSING_SETTINGS: u32 = 0x10a;
pub(crate) const H3_REQUEST_REJECTED: u32 = 0x10b;
pub(crate) const H3_REQUEST_INCOMPLETE: u32 = 0x10d;
pub(crate) const H3_MESSAGE_ERROR: u32 = 0x10e;
pub(crate) const QPACK_DECOMPRESSION_FAILED: u32 = 0x200;

/// Frame types of HTTP/2 that HTTP/3 reserves: receiving one is
/// H3_FRAME_UNEXPECTED (RFC 9114 §7.2.8).
pub(crate) fn is_reserved_h2_type(t: u64) -> bool {
    matches!(t, 0x02 | 0x06 | 0x08 | 0x09)
}

/// Every frame type RFC 9114 defines or reserves: a reader that expects a
/// particular frame must see these (to accept it, or to fail on an
/// unexpected one) and may skip only the others (§9).
pub(crate) fn is_defined_type(t: u64) -> bool {
    matches!(
        t,
        DATA | HEADERS | CANCEL_PUSH | SETTINGS | PUSH_PROMISE | GOAWAY | MAX_PUSH_ID
    ) || is_reserved_h2_type(t)
}

/// Decode a QUIC variable-length integer (RFC 9000 §16). `None` when `buf`
/// does not hold all of it yet.
pub(crate) fn decode_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for &b in &bytes[1..] {
        v = (v << 8) | u64::from(b);
    }
    Some((v, len))
}

/// Append a QUIC variable-length integer. Values above 2^62 - 1 cannot be
/// encoded; callers only pass lengths and small constants.
pub(crate) fn encode_varint(out: &mut Vec<u8>, v: u64) {
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&((v & 0x3fff_ffff_ffff_ffff) | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

/// A frame header: type and payload length, with its encoded size.
pub(crate) fn decode_frame_header(buf: &[u8]) -> Option<(u64, u64, usize)> {
    let (ty, a) = decode_varint(buf)?;
    let (len, b) = decode_varint(buf.get(a..)?)?;
    Some((ty, len, a + b))
}

pub(crate) fn encode_frame(out: &mut Vec<u8>, ty: u64, payload: &[u8]) {
    encode_varint(out, ty);
    encode_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// The peer's SETTINGS that matter here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerSettings {
    /// SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 9220 §3).
    pub enable_connect_protocol: bool,
    /// SETTINGS_MAX_FIELD_SECTION_SIZE, if sent.
    pub max_field_section_size: Option<u64>,
}

/// Parse a SETTINGS payload. Duplicate identifiers, HTTP/2-only settings
/// and an ENABLE_CONNECT_PROTOCOL other than 0/1 are H3_SETTINGS_ERROR.
pub(crate) fn parse_settings(payload: &[u8]) -> Result<PeerSettings, &'static str> {
    let mut out = PeerSettings::default();
    let mut seen: Vec<u64> = Vec::new();
    let mut pos = 0usize;
    while pos < payload.len() {
        let (id, a) = decode_varint(&payload[pos..]).ok_or("truncated setting identifier")?;
        pos += a;
        let (value, b) = decode_varint(&payload[pos..]).ok_or("truncated setting value")?;
        pos += b;
        if seen.contains(&id) {
            return Err("duplicate setting identifier");
        }
        if seen.len() >= 64 {
            return Err("more than 64 settings");
        }
        seen.push(id);
        match id {
            // HTTP/2 settings that HTTP/3 forbids (RFC 9114 §7.2.4.1).
            0x02..=0x05 => return Err("HTTP/2 setting in HTTP/3 SETTINGS"),
            SETTINGS_ENABLE_CONNECT_PROTOCOL => match value {
                0 => out.enable_connect_protocol = false,
                1 => out.enable_connect_protocol = true,
                _ => return Err("SETTINGS_ENABLE_CONNECT_PROTOCOL is not 0 or 1"),
            },
            SETTINGS_MAX_FIELD_SECTION_SIZE => out.max_field_section_size = Some(value),
            _ => {}
        }
    }
    Ok(out)
}

/// Our SETTINGS payload: no dynamic table, the header size limit, and
/// extended CONNECT enabled.
/// The stream ID a GOAWAY frame carries (RFC 9114 §7.2.6): exactly one
/// varint.
pub(crate) fn parse_goaway(payload: &[u8]) -> Option<u64> {
    match decode_varint(payload) {
        Some((id, n)) if n == payload.len() => Some(id),
        _ => None,
    }
}

/// A GOAWAY frame carrying `id`.
pub(crate) fn goaway(id: u64) -> Vec<u8> {
    let mut payload = Vec::new();
    encode_varint(&mut payload, id);
    let mut out = Vec::new();
    encode_frame(&mut out, GOAWAY, &payload);
    out
}

pub(crate) fn our_settings(max_field_section_size: usize, enable_connect: bool) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in [
        (SETTINGS_QPACK_MAX_TABLE_CAPACITY, 0u64),
        (SETTINGS_QPACK_BLOCKED_STREAMS, 0),
        (
            SETTINGS_MAX_FIELD_SECTION_SIZE,
            max_field_section_size as u64,
        ),
    ] {
        encode_varint(&mut p, id);
        encode_varint(&mut p, v);
    }
    if enable_connect {
        encode_varint(&mut p, SETTINGS_ENABLE_CONNECT_PROTOCOL);
        encode_varint(&mut p, 1);
    }
    p
}

/// What [`FrameReader::next_frame`] returns.
#[derive(Debug)]
pub(crate) enum ReadFrame {
    Frame {
        ty: u64,
        payload: BytesMut,
    },
    /// The stream ended cleanly between frames.
    End,
}

/// Reads whole frames from a stream, skipping unknown frame types without
/// buffering them, and refusing known frames over `max_payload`.
pub(crate) struct FrameReader<R> {
    pub(crate) inner: R,
    pub(crate) buf: BytesMut,
}

const READ_CHUNK: usize = 8 * 1024;

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Read more bytes; `Ok(false)` at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        self.buf.reserve(READ_CHUNK);
        Ok(self.inner.read_buf(&mut self.buf).await? > 0)
    }

    /// Read one varint (a stream type).
    pub(crate) async fn read_varint(&mut self) -> Result<Option<u64>, H3ProtocolError> {
        loop {
            if let Some((v, n)) = decode_varint(&self.buf) {
                self.buf.advance(n);
                return Ok(Some(v));
            }
            if !self.fill().await.map_err(io_err)? {
                return Ok(None);
            }
        }
    }

    /// The next frame whose type `known(ty)` accepts; other (unknown,
    /// reserved) frames are skipped, streamed without buffering.
    pub(crate) async fn next_frame(
        &mut self,
        max_payload: usize,
        known: impl Fn(u64) -> bool,
    ) -> Result<ReadFrame, H3ProtocolError> {
        loop {
            let (ty, len, hdr) = loop {
                if let Some(h) = decode_frame_header(&self.buf) {
                    break h;
                }
                if !self.fill().await.map_err(io_err)? {
                    if self.buf.is_empty() {
                        return Ok(ReadFrame::End);
                    }
                    return Err(H3ProtocolError::new(
                        H3_FRAME_ERROR,
                        "stream ended inside a frame header",
                    ));
                }
            };
            self.buf.advance(hdr);
            if !known(ty) {
                let mut left = len;
                while left > 0 {
                    if self.buf.is_empty() && !self.fill().await.map_err(io_err)? {
                        return Err(H3ProtocolError::new(
                            H3_FRAME_ERROR,
                            "stream ended inside a frame",
                        ));
                    }
                    let n = (self.buf.len() as u64).min(left) as usize;
                    self.buf.advance(n);
                    left -= n as u64;
                }
                continue;
            }
            if len > max_payload as u64 {
                return Err(H3ProtocolError::new(
                    H3_EXCESSIVE_LOAD,
                    format!(
                        "frame type 0x{ty:x} of {len} bytes is over the {max_payload}-byte limit"
                    ),
                ));
            }
            let len = len as usize;
            while self.buf.len() < len {
                if !self.fill().await.map_err(io_err)? {
                    return Err(H3ProtocolError::new(
                        H3_FRAME_ERROR,
                        "stream ended inside a frame",
                    ));
                }
            }
            let payload = self.buf.split_to(len);
            return Ok(ReadFrame::Frame { ty, payload });
        }
    }
}

fn io_err(e: std::io::Error) -> H3ProtocolError {
    H3ProtocolError::new(H3_REQUEST_INCOMPLETE, format!("stream read failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_roundtrip_at_each_width() {
        for v in [
            0u64,
            63,
            64,
            16383,
            16384,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut out = Vec::new();
            encode_varint(&mut out, v);
            assert_eq!(decode_varint(&out), Some((v, out.len())), "{v}");
            assert_eq!(decode_varint(&out[..out.len() - 1]), None);
        }
        // RFC 9000 Appendix A.1 examples.
        assert_eq!(
            decode_varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(
            decode_varint(&[0x9d, 0x7f, 0x3e, 0x7d]),
            Some((494_878_333, 4))
        );
        assert_eq!(decode_varint(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(decode_varint(&[0x25]), Some((37, 1)));
    }

    #[test]
    fn settings_parse() {
        let ours = our_settings(16384, true);
        let s = parse_settings(&ours).unwrap();
        assert!(s.enable_connect_protocol);
        assert_eq!(s.max_field_section_size, Some(16384));
        assert!(
            !parse_settings(&our_settings(100, false))
                .unwrap()
                .enable_connect_protocol
        );
        // Duplicate.
        assert!(parse_settings(&[0x08, 0x01, 0x08, 0x01]).is_err());
        // ENABLE_CONNECT_PROTOCOL = 2.
        assert!(parse_settings(&[0x08, 0x02]).is_err());
        // HTTP/2 SETTINGS_ENABLE_PUSH (0x2).
        assert!(parse_settings(&[0x02, 0x00]).is_err());
        // Truncated.
        assert!(parse_settings(&[0x08]).is_err());
        // Unknown (grease) settings are ignored.
        assert_eq!(
            parse_settings(&[0x21, 0x05]).unwrap(),
            PeerSettings::default()
        );
    }

    #[tokio::test]
    async fn frame_reader_skips_unknown_and_bounds_known() {
        let mut wire = Vec::new();
        encode_frame(&mut wire, 0x21, &[7u8; 100_000]); // grease, skipped
        encode_frame(&mut wire, HEADERS, b"abc");
        encode_frame(&mut wire, DATA, &[1u8; 50]);
        let mut r = FrameReader::new(&wire[..]);
        let known = |t| t == HEADERS || t == DATA;
        match r.next_frame(10, known).await.unwrap() {
            ReadFrame::Frame { ty, payload } => {
                assert_eq!(ty, HEADERS);
                assert_eq!(&payload[..], b"abc");
            }
            other => panic!("{other:?}"),
        }
        let err = r.next_frame(10, known).await.unwrap_err();
        assert_eq!(err.code, H3_EXCESSIVE_LOAD);

        let mut r = FrameReader::new(&[0x01u8, 0x05, 0x00][..]);
        assert_eq!(
            r.next_frame(10, known).await.unwrap_err().code,
            H3_FRAME_ERROR
        );
        let mut r = FrameReader::new(&[][..]);
        assert!(matches!(
            r.next_frame(10, known).await.unwrap(),
            ReadFrame::End
        ));
    }
}

//! WebSocket frame headers (RFC 6455 §5.2): parsing and encoding.

use bytes::{BufMut, BytesMut};

use crate::mask::apply_mask;

/// A frame opcode. Reserved values (3-7, 0xB-0xF) are kept as numbers so an
/// error can say which one arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0: a later fragment of a message.
    Continuation,
    /// 1: the first frame of a text message.
    Text,
    /// 2: the first frame of a binary message.
    Binary,
    /// 8: close.
    Close,
    /// 9: ping.
    Ping,
    /// 10: pong.
    Pong,
    /// A reserved opcode (3-7 or 0xB-0xF).
    Reserved(u8),
}

impl OpCode {
    /// From the low 4 bits of the first header byte.
    pub fn from_u8(v: u8) -> OpCode {
        match v & 0x0f {
            0 => OpCode::Continuation,
            1 => OpCode::Text,
            2 => OpCode::Binary,
            8 => OpCode::Close,
            9 => OpCode::Ping,
            10 => OpCode::Pong,
            n => OpCode::Reserved(n),
        }
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0,
            OpCode::Text => 1,
            OpCode::Binary => 2,
            OpCode::Close => 8,
            OpCode::Ping => 9,
            OpCode::Pong => 10,
            OpCode::Reserved(n) => n & 0x0f,
        }
    }

    /// Close, Ping, Pong and the reserved control opcodes 0xB-0xF.
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x08 != 0
    }

    /// Whether the opcode is reserved (a peer sending one fails with 1002).
    pub fn is_reserved(self) -> bool {
        matches!(self, OpCode::Reserved(_))
    }
}

/// Why a frame header cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// RFC 6455 §5.2: the most significant bit of a 64-bit length must be 0.
    #[error("frame length has its most significant bit set (length field {0:#x}); the peer is not speaking WebSocket correctly")]
    LengthMsbSet(u64),
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The last frame of its message.
    pub fin: bool,
    /// RSV1: set on the first frame of a permessage-deflate message.
    pub rsv1: bool,
    /// RSV2: no extension here uses it.
    pub rsv2: bool,
    /// RSV3: no extension here uses it.
    pub rsv3: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key (every client frame has one, no server frame does).
    pub mask: Option<[u8; 4]>,
    /// Payload length as declared (never trusted for allocation).
    pub payload_len: u64,
}

/// Longest possible header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

impl FrameHeader {
    /// Parse a header from the start of `buf`. `Ok(None)` when more bytes are
    /// needed (never more than [`MAX_HEADER_LEN`]). Returns the header and its
    /// length in bytes. Non-minimal length encodings are accepted.
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
        let (b0, b1) = match buf {
            [b0, b1, ..] => (*b0, *b1),
            _ => return Ok(None),
        };
        let masked = b1 & 0x80 != 0;
        let len7 = b1 & 0x7f;
        let (payload_len, mut pos) = match len7 {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(s) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(s);
                    let len = u64::from_be_bytes(a);
                    if len & (1 << 63) != 0 {
                        return Err(FrameError::LengthMsbSet(len));
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            match buf.get(pos..pos + 4) {
                Some(&[a, b, c, d]) => {
                    pos += 4;
                    Some([a, b, c, d])
                }
                _ => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some((
            FrameHeader {
                fin: b0 & 0x80 != 0,
                rsv1: b0 & 0x40 != 0,
                rsv2: b0 & 0x20 != 0,
                rsv3: b0 & 0x10 != 0,
                opcode: OpCode::from_u8(b0),
                mask,
                payload_len,
            },
            pos,
        )))
    }

    /// Encoded length of this header.
    pub fn encoded_len(&self) -> usize {
        header_len(self.payload_len, self.mask.is_some())
    }

    /// Append the header (minimal length encoding) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut b0 = self.opcode.as_u8();
        if self.fin {
            b0 |= 0x80;
        }
        if self.rsv1 {
            b0 |= 0x40;
        }
        if self.rsv2 {
            b0 |= 0x20;
        }
        if self.rsv3 {
            b0 |= 0x10;
        }
        put_header(out, b0, self.mask, self.payload_len);
    }
}

#[inline]
fn header_len(payload_len: u64, masked: bool) -> usize {
    let base = if payload_len < 126 {
        2
    } else if payload_len <= 0xffff {
        4
    } else {
        10
    };
    if masked {
        base + 4
    } else {
        base
    }
}

#[inline]
fn put_header(out: &mut BytesMut, b0: u8, mask: Option<[u8; 4]>, len: u64) {
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.put_slice(&[b0, mbit | len as u8]);
    } else if len <= 0xffff {
        out.put_slice(&[b0, mbit | 126]);
        out.put_u16(len as u16);
    } else {
        out.put_slice(&[b0, mbit | 127]);
        out.put_u64(len);
    }
    if let Some(k) = mask {
        out.put_slice(&k);
    }
}

/// Write a header with first byte `b0` (FIN, RSV and opcode bits) into
/// `buf`; returns its length.
#[inline]
pub fn encode_header(
    buf: &mut [u8; MAX_HEADER_LEN],
    b0: u8,
    mask: Option<[u8; 4]>,
    len: u64,
) -> usize {
    let mbit = if mask.is_some() { 0x80 } else { 0 };
    buf[0] = b0;
    let mut pos = if len < 126 {
        buf[1] = mbit | len as u8;
        2
    } else if len <= 0xffff {
        buf[1] = mbit | 126;
        buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        buf[1] = mbit | 127;
        buf[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(k) = mask {
        buf[pos..pos + 4].copy_from_slice(&k);
        pos += 4;
    }
    pos
}

/// Append a whole frame to `out`: one reserve, header, payload, then mask the
/// payload in place when `mask` is given (client frames).
#[inline]
pub fn write_frame(
    out: &mut BytesMut,
    fin: bool,
    opcode: OpCode,
    rsv1: bool,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let mut b0 = opcode.as_u8();
    if fin {
        b0 |= 0x80;
    }
    if rsv1 {
        b0 |= 0x40;
    }
    let mut head = [0; MAX_HEADER_LEN];
    let hlen = encode_header(&mut head, b0, mask, payload.len() as u64);
    out.reserve(hlen + payload.len());
    out.extend_from_slice(&head[..hlen]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        if let Some(p) = out.get_mut(start..) {
            apply_mask(p, key, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(opcode: OpCode, len: u64, mask: Option<[u8; 4]>) -> FrameHeader {
        FrameHeader {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask,
            payload_len: len,
        }
    }

    #[test]
    fn opcode_roundtrip_and_reserved_kept() {
        for v in 0u8..16 {
            let op = OpCode::from_u8(v);
            assert_eq!(op.as_u8(), v);
            assert_eq!(op.is_reserved(), matches!(v, 3..=7 | 11..=15), "{v}");
            assert_eq!(op.is_control(), v >= 8, "{v}");
        }
        assert_eq!(OpCode::from_u8(3), OpCode::Reserved(3));
        assert_eq!(OpCode::from_u8(0xb), OpCode::Reserved(0xb));
    }

    #[test]
    fn parse_rfc_examples() {
        // Unmasked "Hello".
        let b = [0x81, 0x05, b'H', b'e', b'l', b'l', b'o'];
        let (h, n) = FrameHeader::parse(&b).unwrap().unwrap();
        assert_eq!(n, 2);
        assert_eq!(h, hdr(OpCode::Text, 5, None));
        // Masked "Hello".
        let b = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = FrameHeader::parse(&b).unwrap().unwrap();
        assert_eq!(n, 6);
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        // Fragmented start, unmasked.
        let (h, _) = FrameHeader::parse(&[0x01, 0x03]).unwrap().unwrap();
        assert!(!h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        // 256 bytes binary, 16-bit length.
        let (h, n) = FrameHeader::parse(&[0x82, 0x7e, 0x01, 0x00])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (256, 4));
        // 64 KiB, 64-bit length.
        let (h, n) = FrameHeader::parse(&[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn parse_rsv_bits() {
        let (h, _) = FrameHeader::parse(&[0xf1, 0x00]).unwrap().unwrap();
        assert!(h.rsv1 && h.rsv2 && h.rsv3 && h.fin);
        let (h, _) = FrameHeader::parse(&[0x21, 0x00]).unwrap().unwrap();
        assert!(!h.rsv1 && h.rsv2 && !h.rsv3 && !h.fin);
    }

    #[test]
    fn parse_needs_more_at_every_prefix() {
        let mut out = BytesMut::new();
        hdr(OpCode::Binary, 70000, Some([1, 2, 3, 4])).encode(&mut out);
        assert_eq!(out.len(), 14);
        for i in 0..out.len() {
            assert_eq!(FrameHeader::parse(&out[..i]), Ok(None), "prefix {i}");
        }
        let (h, n) = FrameHeader::parse(&out).unwrap().unwrap();
        assert_eq!(n, 14);
        assert_eq!(h, hdr(OpCode::Binary, 70000, Some([1, 2, 3, 4])));
    }

    #[test]
    fn length_msb_set_is_error() {
        let b = [0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            FrameHeader::parse(&b),
            Err(FrameError::LengthMsbSet(1 << 63))
        );
    }

    #[test]
    fn non_minimal_lengths_accepted() {
        let (h, n) = FrameHeader::parse(&[0x82, 0x7e, 0x00, 0x05])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (5, 4));
        let (h, n) = FrameHeader::parse(&[0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 5])
            .unwrap()
            .unwrap();
        assert_eq!((h.payload_len, n), (5, 10));
    }

    #[test]
    fn encode_parse_roundtrip_boundaries() {
        for len in [0u64, 1, 125, 126, 127, 0xffff, 0x10000, u32::MAX as u64 + 7] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let h = FrameHeader {
                    rsv1: true,
                    ..hdr(OpCode::Ping, len, mask)
                };
                let mut out = BytesMut::new();
                h.encode(&mut out);
                assert_eq!(out.len(), h.encoded_len());
                let (p, n) = FrameHeader::parse(&out).unwrap().unwrap();
                assert_eq!((p, n), (h, out.len()), "len {len}");
            }
        }
    }

    #[test]
    fn write_frame_masks_payload() {
        let mut out = BytesMut::new();
        write_frame(
            &mut out,
            true,
            OpCode::Text,
            false,
            Some([0x37, 0xfa, 0x21, 0x3d]),
            b"Hello",
        );
        assert_eq!(
            &out[..],
            &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        let mut out = BytesMut::new();
        write_frame(&mut out, false, OpCode::Binary, true, None, &[7u8; 300]);
        assert_eq!(&out[..4], &[0x42, 0x7e, 0x01, 0x2c]);
        assert_eq!(&out[4..], &[7u8; 300][..]);
    }
    #[test]
    fn encode_header_matches_encode() {
        for len in [0u64, 1, 125, 126, 127, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut a = [0u8; MAX_HEADER_LEN];
                let n = encode_header(&mut a, 0x82, mask, len);
                let mut b = BytesMut::new();
                hdr(OpCode::Binary, len, mask).encode(&mut b);
                assert_eq!(&a[..n], &b[..], "len {len} mask {mask:?}");
            }
        }
    }
}

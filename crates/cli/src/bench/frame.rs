//! WebSocket frames as the load generator writes and reads them: opcodes,
//! masking, frame heads.

pub(super) const OP_TEXT: u8 = 0x1;
pub(super) const OP_BINARY: u8 = 0x2;
pub(super) const OP_CLOSE: u8 = 0x8;
pub(super) const OP_PING: u8 = 0x9;
pub(super) const OP_PONG: u8 = 0xA;

/// Largest server frame header: 2 bytes + 8 bytes of length (server frames are unmasked).
pub(super) const MAX_HEADER: usize = 10;
/// Largest control frame payload (RFC 6455 §5.5).
pub(super) const MAX_CONTROL: usize = 125;

/// Appends one masked client frame to `out`.
pub(super) fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let len = payload.len();
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `buf` with the repeating 4-byte `mask`, eight bytes at a time.
pub(super) fn apply_mask(buf: &mut [u8], mask: [u8; 4]) {
    let m8 = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ m8).to_ne_bytes());
    }
    // The tail starts at a multiple of 8, hence of 4: the mask phase is 0 again.
    for (b, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
}

/// A parsed server frame header.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FrameHead {
    pub(super) fin: bool,
    pub(super) rsv: u8,
    pub(super) opcode: u8,
    pub(super) masked: bool,
    pub(super) header_len: usize,
    pub(super) payload_len: u64,
}

/// Parses a frame header at the start of `buf`; `None` if more bytes are needed.
pub(super) fn parse_head(buf: &[u8]) -> Option<FrameHead> {
    let (&b0, rest) = buf.split_first()?;
    let &b1 = rest.first()?;
    let (header_len, payload_len) = match b1 & 0x7F {
        126 => {
            let b = buf.get(2..4)?;
            (4, u64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (10, u64::from_be_bytes(b))
        }
        n => (2, u64::from(n)),
    };
    let masked = b1 & 0x80 != 0;
    Some(FrameHead {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        masked,
        header_len: header_len + if masked { 4 } else { 0 },
        payload_len,
    })
}

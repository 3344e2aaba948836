//! QPACK field sections (RFC 9204) without a dynamic table.
//!
//! switchyard advertises `SETTINGS_QPACK_MAX_TABLE_CAPACITY = 0` and
//! `SETTINGS_QPACK_BLOCKED_STREAMS = 0`, so a conforming peer only uses the
//! static table and literals: a field section that references the dynamic
//! table is a `QPACK_DECOMPRESSION_FAILED` error. We encode the same way
//! (static table references and literal strings without Huffman), which needs
//! no encoder or decoder stream.

use super::huffman;

/// The QPACK static table, RFC 9204 Appendix A (index = position).
pub(crate) const STATIC_TABLE: [(&str, &str); 99] = [
    (":authority", ""),
    (":path", "/"),
    ("age", "0"),
    ("content-disposition", ""),
    ("content-length", "0"),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("referer", ""),
    ("set-cookie", ""),
    (":method", "CONNECT"),
    (":method", "DELETE"),
    (":method", "GET"),
    (":method", "HEAD"),
    (":method", "OPTIONS"),
    (":method", "POST"),
    (":method", "PUT"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "103"),
    (":status", "200"),
    (":status", "304"),
    (":status", "404"),
    (":status", "503"),
    ("accept", "*/*"),
    ("accept", "application/dns-message"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-ranges", "bytes"),
    ("access-control-allow-headers", "cache-control"),
    ("access-control-allow-headers", "content-type"),
    ("access-control-allow-origin", "*"),
    ("cache-control", "max-age=0"),
    ("cache-control", "max-age=2592000"),
    ("cache-control", "max-age=604800"),
    ("cache-control", "no-cache"),
    ("cache-control", "no-store"),
    ("cache-control", "public, max-age=31536000"),
    ("content-encoding", "br"),
    ("content-encoding", "gzip"),
    ("content-type", "application/dns-message"),
    ("content-type", "application/javascript"),
    ("content-type", "application/json"),
    ("content-type", "application/x-www-form-urlencoded"),
    ("content-type", "image/gif"),
    ("content-type", "image/jpeg"),
    ("content-type", "image/png"),
    ("content-type", "text/css"),
    ("content-type", "text/html; charset=utf-8"),
    ("content-type", "text/plain"),
    ("content-type", "text/plain;charset=utf-8"),
    ("range", "bytes=0-"),
    ("strict-transport-security", "max-age=31536000"),
    (
        "strict-transport-security",
        "max-age=31536000; includesubdomains",
    ),
    (
        "strict-transport-security",
        "max-age=31536000; includesubdomains; preload",
    ),
    ("vary", "accept-encoding"),
    ("vary", "origin"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
    (":status", "100"),
    (":status", "204"),
    (":status", "206"),
    (":status", "302"),
    (":status", "400"),
    (":status", "403"),
    (":status", "421"),
    (":status", "425"),
    (":status", "500"),
    ("accept-language", ""),
    ("access-control-allow-credentials", "FALSE"),
    ("access-control-allow-credentials", "TRUE"),
    ("access-control-allow-headers", "*"),
    ("access-control-allow-methods", "get"),
    ("access-control-allow-methods", "get, post, options"),
    ("access-control-allow-methods", "options"),
    ("access-control-expose-headers", "content-length"),
    ("access-control-request-headers", "content-type"),
    ("access-control-request-method", "get"),
    ("access-control-request-method", "post"),
    ("alt-svc", "clear"),
    ("authorization", ""),
    (
        "content-security-policy",
        "script-src 'none'; object-src 'none'; base-uri 'none'",
    ),
    ("early-data", "1"),
    ("expect-ct", ""),
    ("forwarded", ""),
    ("if-range", ""),
    ("origin", ""),
    ("purpose", "prefetch"),
    ("server", ""),
    ("timing-allow-origin", "*"),
    ("upgrade-insecure-requests", "1"),
    ("user-agent", ""),
    ("x-forwarded-for", ""),
    ("x-frame-options", "deny"),
    ("x-frame-options", "sameorigin"),
];

/// Why a field section could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum QpackError {
    #[error("QPACK field section is truncated or has an integer overflow")]
    Truncated,
    #[error("QPACK field section references the dynamic table, but we advertised a capacity of 0")]
    DynamicTable,
    #[error("QPACK static table index {0} does not exist (the table has 99 entries)")]
    BadIndex(u64),
    #[error("QPACK string: {0}")]
    Huffman(#[from] huffman::HuffmanError),
    #[error("header section larger than {limit} bytes (RFC 9114 §4.2.2 size: name + value + 32 per field)")]
    TooLarge { limit: usize },
    #[error("more than {limit} header fields")]
    TooMany { limit: usize },
}

/// Read a prefixed integer (RFC 9204 §4.1.1 / RFC 7541 §5.1) whose prefix is
/// the low `bits` of `buf[*pos]`.
fn read_int(buf: &[u8], pos: &mut usize, bits: u8) -> Result<u64, QpackError> {
    let mask: u8 = if bits >= 8 { 0xff } else { (1u8 << bits) - 1 };
    let first = *buf.get(*pos).ok_or(QpackError::Truncated)?;
    *pos += 1;
    let mut value = u64::from(first & mask);
    if value < u64::from(mask) {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos).ok_or(QpackError::Truncated)?;
        *pos += 1;
        if shift > 56 {
            return Err(QpackError::Truncated);
        }
        value = value
            .checked_add(u64::from(b & 0x7f) << shift)
            .ok_or(QpackError::Truncated)?;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Write a prefixed integer: `flags` are the bits above the `bits`-bit prefix.
fn write_int(out: &mut Vec<u8>, flags: u8, bits: u8, mut value: u64) {
    let mask: u8 = if bits >= 8 { 0xff } else { (1u8 << bits) - 1 };
    if value < u64::from(mask) {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask);
    value -= u64::from(mask);
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Read a string literal whose Huffman flag is bit `bits` of the first byte
/// and whose length has a `bits`-bit prefix. At most `max` bytes.
fn read_string(buf: &[u8], pos: &mut usize, bits: u8, max: usize) -> Result<Vec<u8>, QpackError> {
    let first = *buf.get(*pos).ok_or(QpackError::Truncated)?;
    let huffman = first & (1 << bits) != 0;
    let len = read_int(buf, pos, bits)?;
    let len = usize::try_from(len).map_err(|_| QpackError::Truncated)?;
    let end = pos.checked_add(len).ok_or(QpackError::Truncated)?;
    let raw = buf.get(*pos..end).ok_or(QpackError::Truncated)?;
    *pos = end;
    if huffman {
        Ok(huffman::decode(raw, max).map_err(|e| match e {
            huffman::HuffmanError::TooLong(limit) => QpackError::TooLarge { limit },
            other => QpackError::Huffman(other),
        })?)
    } else if raw.len() > max {
        Err(QpackError::TooLarge { limit: max })
    } else {
        Ok(raw.to_vec())
    }
}

fn static_entry(index: u64) -> Result<(&'static str, &'static str), QpackError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| STATIC_TABLE.get(i).copied())
        .ok_or(QpackError::BadIndex(index))
}

/// A decoded field line: name and value bytes (not yet validated as HTTP).
pub(crate) type Field = (Vec<u8>, Vec<u8>);

/// Decode an encoded field section. `max_size` bounds the RFC 9114 size
/// (sum of name + value + 32 per field), `max_fields` the field count.
pub(crate) fn decode(
    block: &[u8],
    max_size: usize,
    max_fields: usize,
) -> Result<Vec<Field>, QpackError> {
    let mut pos = 0usize;
    // Encoded Field Section Prefix: Required Insert Count, then S + Delta Base.
    let required_insert_count = read_int(block, &mut pos, 8)?;
    if required_insert_count != 0 {
        return Err(QpackError::DynamicTable);
    }
    let _delta_base = read_int(block, &mut pos, 7)?;
    let mut fields = Vec::new();
    let mut size = 0usize;
    while pos < block.len() {
        let b = block[pos];
        let remaining = max_size.saturating_sub(size);
        let (name, value) = if b & 0x80 != 0 {
            // Indexed field line: 1 T index(6).
            if b & 0x40 == 0 {
                return Err(QpackError::DynamicTable);
            }
            let (n, v) = static_entry(read_int(block, &mut pos, 6)?)?;
            (n.as_bytes().to_vec(), v.as_bytes().to_vec())
        } else if b & 0x40 != 0 {
            // Literal with name reference: 01 N T index(4), then value (H, 7).
            if b & 0x10 == 0 {
                return Err(QpackError::DynamicTable);
            }
            let (n, _) = static_entry(read_int(block, &mut pos, 4)?)?;
            let value = read_string(block, &mut pos, 7, remaining)?;
            (n.as_bytes().to_vec(), value)
        } else if b & 0x20 != 0 {
            // Literal with literal name: 001 N H len(3) name, then value (H, 7).
            let name = read_string(block, &mut pos, 3, remaining)?;
            let value = read_string(block, &mut pos, 7, remaining)?;
            (name, value)
        } else {
            // 0001xxxx indexed post-base, 0000xxxx literal with post-base
            // name reference: both dynamic.
            return Err(QpackError::DynamicTable);
        };
        size = size
            .saturating_add(name.len())
            .saturating_add(value.len())
            .saturating_add(32);
        if size > max_size {
            return Err(QpackError::TooLarge { limit: max_size });
        }
        if fields.len() >= max_fields {
            return Err(QpackError::TooMany { limit: max_fields });
        }
        fields.push((name, value));
    }
    Ok(fields)
}

/// Encode a field section with static references and plain literals.
pub(crate) fn encode<'a>(fields: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut out = vec![0u8, 0u8];
    for (name, value) in fields {
        let exact = STATIC_TABLE
            .iter()
            .position(|(n, v)| n.as_bytes() == name && v.as_bytes() == value);
        if let Some(i) = exact {
            write_int(&mut out, 0xc0, 6, i as u64);
            continue;
        }
        match STATIC_TABLE.iter().position(|(n, _)| n.as_bytes() == name) {
            Some(i) => write_int(&mut out, 0x50, 4, i as u64),
            None => {
                write_int(&mut out, 0x20, 3, name.len() as u64);
                out.extend_from_slice(name);
            }
        }
        write_int(&mut out, 0x00, 7, value.len() as u64);
        out.extend_from_slice(value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        let block = encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        decode(&block, 16 * 1024, 100)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    #[test]
    fn static_table_has_the_rfc_landmarks() {
        assert_eq!(STATIC_TABLE[0], (":authority", ""));
        assert_eq!(STATIC_TABLE[15], (":method", "CONNECT"));
        assert_eq!(STATIC_TABLE[25], (":status", "200"));
        assert_eq!(STATIC_TABLE[63], (":status", "100"));
        assert_eq!(STATIC_TABLE[90], ("origin", ""));
        assert_eq!(STATIC_TABLE[98], ("x-frame-options", "sameorigin"));
    }

    #[test]
    fn encode_decode_roundtrip() {
        let fields = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":authority", "localhost:4433"),
            (":path", "/chat?room=1"),
            ("sec-websocket-version", "13"),
            ("origin", "https://example.com"),
            ("x-long", &"v".repeat(300)),
        ];
        let got = roundtrip(&fields);
        let want: Vec<(String, String)> = fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn exact_static_match_is_one_byte() {
        let block = encode([(&b":status"[..], &b"200"[..])]);
        assert_eq!(block, vec![0, 0, 0xc0 | 25]);
    }

    #[test]
    fn decodes_huffman_literals() {
        // Literal with name ref to :authority (0), Huffman value
        // "www.example.com" (RFC 7541 C.4.1).
        let mut block = vec![0, 0, 0x50];
        block.push(0x80 | 12);
        block.extend_from_slice(&[
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ]);
        let got = decode(&block, 1000, 10).unwrap();
        assert_eq!(
            got,
            vec![(b":authority".to_vec(), b"www.example.com".to_vec())]
        );
    }

    #[test]
    fn dynamic_table_references_are_refused() {
        // Required Insert Count 1.
        assert_eq!(decode(&[1, 0], 1000, 10), Err(QpackError::DynamicTable));
        // Indexed field line with T = 0 (dynamic).
        assert_eq!(
            decode(&[0, 0, 0x80], 1000, 10),
            Err(QpackError::DynamicTable)
        );
        // Literal with name reference, T = 0.
        assert_eq!(
            decode(&[0, 0, 0x40, 0], 1000, 10),
            Err(QpackError::DynamicTable)
        );
        // Post-base forms.
        assert_eq!(
            decode(&[0, 0, 0x10], 1000, 10),
            Err(QpackError::DynamicTable)
        );
        assert_eq!(
            decode(&[0, 0, 0x00], 1000, 10),
            Err(QpackError::DynamicTable)
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(decode(&[], 1000, 10), Err(QpackError::Truncated));
        assert_eq!(decode(&[0, 0, 0xff], 1000, 10), Err(QpackError::Truncated));
        // Index 99 does not exist: 0xff (63) + 36.
        assert_eq!(
            decode(&[0, 0, 0xff, 36], 1000, 10),
            Err(QpackError::BadIndex(99))
        );
        // Literal name claims 1000 bytes, block ends.
        assert_eq!(
            decode(&[0, 0, 0x27, 0xe1, 0x07], 100_000, 10),
            Err(QpackError::Truncated)
        );
        // Integer overflow.
        let mut huge = vec![0, 0, 0xff];
        huge.extend_from_slice(&[0xff; 12]);
        assert_eq!(decode(&huge, 1000, 10), Err(QpackError::Truncated));
    }

    #[test]
    fn size_and_count_limits() {
        let big = "x".repeat(200);
        let block = encode([(&b"x-big"[..], big.as_bytes())]);
        assert_eq!(
            decode(&block, 100, 10),
            Err(QpackError::TooLarge { limit: 100 })
        );
        let many: Vec<(&[u8], &[u8])> = (0..11).map(|_| (&b"a"[..], &b"b"[..])).collect();
        let block = encode(many);
        assert_eq!(
            decode(&block, 10_000, 10),
            Err(QpackError::TooMany { limit: 10 })
        );
    }

    #[test]
    fn prefixed_integers_roundtrip() {
        for bits in [3u8, 4, 6, 7, 8] {
            for v in [0u64, 1, 6, 7, 30, 31, 62, 63, 127, 128, 255, 1337, 1 << 40] {
                let mut out = Vec::new();
                write_int(&mut out, 0, bits, v);
                let mut pos = 0;
                assert_eq!(
                    read_int(&out, &mut pos, bits).unwrap(),
                    v,
                    "bits {bits} v {v}"
                );
                assert_eq!(pos, out.len());
            }
        }
    }
}

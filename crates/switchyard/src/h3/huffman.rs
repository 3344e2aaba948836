//! HPACK/QPACK Huffman decoding (RFC 7541 §5.2 and Appendix B; QPACK
//! reuses the same code, RFC 9204 §4.1.2).
//!
//! The code is canonical: it is fully described by the bit length of each of
//! the 257 symbols (256 octets and EOS), so the table below holds only those
//! lengths and the decoder rebuilds the codes in canonical order. Encoding is
//! not needed: switchyard always sends literal strings unencoded, which every
//! decoder accepts.

use std::sync::OnceLock;

/// Bit length of the Huffman code of each symbol, 0..=255 then EOS (256),
/// from RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Why a Huffman string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HuffmanError {
    #[error("Huffman string contains the EOS symbol (RFC 7541 §5.2 forbids it)")]
    Eos,
    #[error("Huffman string ends with invalid padding (more than 7 bits, or not all ones)")]
    Padding,
    #[error("Huffman string decodes to more than {0} bytes")]
    TooLong(usize),
}

/// Canonical decoding table: how many codes have each length, and the
/// symbols sorted by (length, symbol).
struct Table {
    counts: [u32; MAX_LEN + 1],
    symbols: [u16; 257],
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut counts = [0u32; MAX_LEN + 1];
        for &l in CODE_LENGTHS.iter() {
            counts[usize::from(l)] += 1;
        }
        let mut symbols = [0u16; 257];
        let mut next = 0usize;
        for len in 1..=MAX_LEN {
            for (sym, &l) in (0u16..).zip(CODE_LENGTHS.iter()) {
                if usize::from(l) == len {
                    symbols[next] = sym;
                    next += 1;
                }
            }
        }
        Table { counts, symbols }
    })
}

/// Decode a Huffman-coded string of at most `max` decoded bytes.
pub(crate) fn decode(src: &[u8], max: usize) -> Result<Vec<u8>, HuffmanError> {
    let t = table();
    let mut out = Vec::with_capacity((src.len() * 8 / 5).min(max));
    // Canonical decoding, one bit at a time: `code` is the bits read for the
    // current symbol, `first` the first code of length `len`, `index` the
    // position in `symbols` of the first symbol of that length.
    let mut code: u32 = 0;
    let mut first: u32 = 0;
    let mut index: usize = 0;
    let mut len: usize = 0;
    let mut all_ones = true;
    for &byte in src {
        for shift in (0..8).rev() {
            let bit = u32::from((byte >> shift) & 1);
            code |= bit;
            len += 1;
            all_ones &= bit == 1;
            let count = t.counts[len];
            if code >= first && code - first < count {
                let sym = t.symbols[index + (code - first) as usize];
                if sym == EOS {
                    return Err(HuffmanError::Eos);
                }
                if out.len() >= max {
                    return Err(HuffmanError::TooLong(max));
                }
                out.push(sym as u8);
                code = 0;
                first = 0;
                index = 0;
                len = 0;
                all_ones = true;
            } else {
                if len >= MAX_LEN {
                    // Every 30-bit pattern not matched above is EOS's prefix
                    // extended past EOS: not a valid code.
                    return Err(HuffmanError::Eos);
                }
                index += count as usize;
                first = (first + count) << 1;
                code <<= 1;
            }
        }
    }
    // Padding: at most 7 bits, all ones (the most significant bits of EOS).
    if len > 7 || !all_ones {
        return Err(HuffmanError::Padding);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc7541_examples_decode() {
        // RFC 7541 Appendix C.4.1-C.4.3 and C.6.1.
        let cases = [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                "https://www.example.com",
            ),
        ];
        for (h, want) in cases {
            assert_eq!(decode(&hex(h), 1000).unwrap(), want.as_bytes(), "{h}");
        }
    }

    #[test]
    fn every_octet_has_a_code_and_lengths_form_a_complete_code() {
        // Kraft equality: a complete prefix code has sum(2^-len) == 1.
        let sum: u64 = CODE_LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum();
        assert_eq!(sum, 1 << 30);
        assert_eq!(CODE_LENGTHS[usize::from(b'0')], 5);
        assert_eq!(CODE_LENGTHS[256], 30);
    }

    #[test]
    fn padding_must_be_short_and_all_ones() {
        // '0' is 00000 (5 bits): 3 zero bits of padding are invalid.
        assert_eq!(decode(&[0x00], 10), Err(HuffmanError::Padding));
        // '0' then 111 padding: fine.
        assert_eq!(decode(&[0x07], 10).unwrap(), b"0");
        // A whole byte of ones after a complete symbol is > 7 bits of padding.
        assert_eq!(decode(&[0x07, 0xff], 10), Err(HuffmanError::Padding));
    }

    #[test]
    fn eos_is_refused() {
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff], 10),
            Err(HuffmanError::Eos)
        );
    }

    #[test]
    fn output_is_bounded() {
        let www = hex("f1e3c2e5f23a6ba0ab90f4ff");
        assert_eq!(decode(&www, 5), Err(HuffmanError::TooLong(5)));
        assert_eq!(decode(&www, 15).unwrap().len(), 15);
    }
}

//! Incremental UTF-8 validation for text messages that arrive in pieces.
//!
//! RFC 6455 §8.1 lets an endpoint fail as soon as the bytes received so far
//! cannot begin a valid UTF-8 text; the Autobahn suite (6.4.x) requires it.
//! [`Utf8Validator`] keeps the state of a sequence split between pieces and
//! reports the first byte that makes the stream invalid.

/// The text is not valid UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Utf8Error {
    /// A byte that no valid UTF-8 text can contain at this position.
    #[error("invalid UTF-8 in a text message; the peer must send text frames as UTF-8 (use binary frames for other data)")]
    Invalid,
    /// The message ended inside a multi-byte sequence.
    #[error("text message ends in the middle of a UTF-8 sequence; the peer split or truncated a character")]
    Incomplete,
}

/// Validates a byte stream fed in arbitrary pieces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    /// Continuation bytes still needed by the current sequence (0: none).
    need: u8,
    /// Allowed range of the next byte while `need > 0`.
    lo: u8,
    hi: u8,
}

impl Utf8Validator {
    /// A validator at the start of a text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forget any partial sequence (start of a new message).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether a multi-byte sequence is incomplete.
    pub fn is_incomplete(&self) -> bool {
        self.need != 0
    }

    /// Validate the next piece. Fails on the first byte that cannot continue
    /// a valid text; an incomplete sequence at the end of `bytes` is kept.
    #[inline]
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), Utf8Error> {
        let mut rest = bytes;
        // Finish a sequence started in an earlier piece, byte by byte.
        while self.need != 0 {
            let Some((&b, tail)) = rest.split_first() else {
                return Ok(());
            };
            if b < self.lo || b > self.hi {
                return Err(Utf8Error::Invalid);
            }
            self.need -= 1;
            self.lo = 0x80;
            self.hi = 0xbf;
            rest = tail;
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Utf8Error::Invalid),
            Err(e) => {
                // A valid but incomplete sequence at the end: remember it.
                let tail = rest.get(e.valid_up_to()..).unwrap_or(&[]);
                self.start_partial(tail)
            }
        }
    }

    /// Record the state after the bytes of an incomplete (but so far valid)
    /// sequence.
    fn start_partial(&mut self, tail: &[u8]) -> Result<(), Utf8Error> {
        let Some((&first, more)) = tail.split_first() else {
            return Ok(());
        };
        let (need, lo, hi) = match first {
            0xc2..=0xdf => (1, 0x80, 0xbf),
            0xe0 => (2, 0xa0, 0xbf),
            0xe1..=0xec | 0xee..=0xef => (2, 0x80, 0xbf),
            0xed => (2, 0x80, 0x9f),
            0xf0 => (3, 0x90, 0xbf),
            0xf1..=0xf3 => (3, 0x80, 0xbf),
            0xf4 => (3, 0x80, 0x8f),
            _ => return Err(Utf8Error::Invalid),
        };
        *self = Utf8Validator { need, lo, hi };
        for &b in more {
            if self.need == 0 || b < self.lo || b > self.hi {
                return Err(Utf8Error::Invalid);
            }
            self.need -= 1;
            self.lo = 0x80;
            self.hi = 0xbf;
        }
        Ok(())
    }

    /// The message ended: fail if a sequence is incomplete. Resets the state.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let incomplete = self.need != 0;
        self.reset();
        if incomplete {
            Err(Utf8Error::Incomplete)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `bytes` one at a time; return the index of the byte that failed.
    fn first_failure_bytewise(bytes: &[u8]) -> Option<usize> {
        let mut v = Utf8Validator::new();
        for (i, b) in bytes.iter().enumerate() {
            if v.feed(std::slice::from_ref(b)).is_err() {
                return Some(i);
            }
        }
        None
    }

    /// Reference: the index of the first byte at which no valid text can
    /// have this prefix (via std on every prefix).
    fn first_failure_reference(bytes: &[u8]) -> Option<usize> {
        (1..=bytes.len())
            .find(
                |&n| matches!(std::str::from_utf8(&bytes[..n]), Err(e) if e.error_len().is_some()),
            )
            .map(|n| n - 1)
    }

    fn check_all_splits(bytes: &[u8], valid: bool) {
        let whole = {
            let mut v = Utf8Validator::new();
            v.feed(bytes).and_then(|_| v.finish())
        };
        assert_eq!(whole.is_ok(), valid, "{bytes:x?} whole");
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut v = Utf8Validator::new();
                let r = v
                    .feed(&bytes[..i])
                    .and_then(|_| v.feed(&bytes[i..j]))
                    .and_then(|_| v.feed(&bytes[j..]))
                    .and_then(|_| v.finish());
                assert_eq!(r.is_ok(), valid, "{bytes:x?} split at {i},{j}");
            }
        }
    }

    #[test]
    fn valid_texts_split_everywhere() {
        for s in [
            "",
            "Hello-µ@ßöäüàá-UTF-8!!",
            "κόσμε",
            "\u{10ffff}\u{ffff}\u{d7ff}\u{e000}",
            "\u{80}\u{800}\u{10000}",
            "a\u{1F600}b",
        ] {
            check_all_splits(s.as_bytes(), true);
        }
    }

    #[test]
    fn autobahn_6_style_invalid_sequences_split_everywhere() {
        let cases: &[&[u8]] = &[
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64", // 6.4.1-ish
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64",
            b"\xf4\x90\x80\x80",
            b"\xf8\x88\x80\x80\x80",
            b"\xc0\xaf",
            b"\xc1\xbf",
            b"\xe0\x80\xaf",
            b"\xf0\x80\x80\xaf",
            b"\xed\xa0\x80",
            b"\xed\xbf\xbf",
            b"\xed\xa0\x80\xed\xb0\x80",
            b"\x80",
            b"\xbf",
            b"\xfe",
            b"\xff",
            b"\xc2",
            b"\xe1\x80",
            b"\xf0\x90\x80",
            b"\xc2\x41",
            b"a\xe1\x80b",
        ];
        for c in cases {
            check_all_splits(c, false);
        }
    }

    #[test]
    fn fails_at_first_bad_byte() {
        let cases: &[(&[u8], usize)] = &[
            (b"\xf4\x90\x80\x80", 1),
            (b"ab\xc0\xaf", 2),
            (b"\xed\xa0\x80", 1),
            (b"\xe0\x80\xaf", 1),
            (
                b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65",
                12,
            ),
            (b"\xff", 0),
            (b"\xc2\x41", 1),
        ];
        for (bytes, at) in cases {
            assert_eq!(first_failure_bytewise(bytes), Some(*at), "{bytes:x?}");
            assert_eq!(first_failure_reference(bytes), Some(*at), "{bytes:x?}");
        }
    }

    #[test]
    fn bytewise_agrees_with_reference_on_all_two_byte_and_many_three_byte_inputs() {
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let s = [a, b];
                assert_eq!(
                    first_failure_bytewise(&s),
                    first_failure_reference(&s),
                    "{s:x?}"
                );
            }
        }
        for a in 0xe0..=0xf4u8 {
            for b in (0x70..=0xc4u8).step_by(3) {
                for c in [0x41u8, 0x80, 0x9f, 0xa0, 0xbf, 0xc0] {
                    let s = [a, b, c];
                    assert_eq!(
                        first_failure_bytewise(&s),
                        first_failure_reference(&s),
                        "{s:x?}"
                    );
                }
            }
        }
    }

    #[test]
    fn finish_fails_on_incomplete_and_resets() {
        let mut v = Utf8Validator::new();
        v.feed(b"ok\xe2\x82").unwrap();
        assert!(v.is_incomplete());
        assert_eq!(v.finish(), Err(Utf8Error::Incomplete));
        assert!(!v.is_incomplete());
        v.feed(b"\xe2\x82").unwrap();
        v.feed(b"\xac").unwrap();
        assert_eq!(v.finish(), Ok(()));
    }
}

//! The chunked transfer coding of an HTTP/1.1 body (RFC 9112 §7.1), decoded
//! incrementally in constant memory.
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! [`ChunkedDecoder::feed`] takes whatever bytes arrived, however they are
//! split, and says how many it used, which of them were chunk data and
//! whether the body ended: bytes after the end belong to the next message and
//! are never consumed. Nothing is buffered and no byte is looked at twice.
//!
//! Every rule is strict and every quantity capped, so a hostile body fails
//! early with a [`ChunkedError`] instead of growing anything:
//!
//! | input | error |
//! |---|---|
//! | chunk-size not hex, empty, or over 16 digits of value | [`ChunkedError::Size`] |
//! | a line ending in a bare LF, or a CR not followed by LF | [`ChunkedError::LineEnding`] |
//! | chunk data not followed by CRLF | [`ChunkedError::DataEnd`] |
//! | a control character in a chunk extension or a trailer field | [`ChunkedError::Invalid`] |
//! | a chunk-size line longer than [`MAX_SIZE_LINE`] | [`ChunkedError::LineTooLong`] |
//! | the decoded body over the caller's limit | [`ChunkedError::TooLarge`] |
//! | trailer fields over the caller's limit | [`ChunkedError::TrailerTooLarge`] |
//! | a trailer line folded (starts with SP or HTAB) or without a `:` | [`ChunkedError::Invalid`] |

use std::ops::Range;

/// Longest chunk-size line (size, extensions and CRLF) accepted.
pub const MAX_SIZE_LINE: usize = 4096;

/// Why a chunked body is malformed or refused. Sticky: feeding after an
/// error returns it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkedError {
    /// The chunk-size is not a hexadecimal number that fits 64 bits.
    #[error("invalid chunk size")]
    Size,
    /// A line of the chunked framing does not end in CRLF.
    #[error("a line of the chunked body does not end in CRLF")]
    LineEnding,
    /// The chunk data is not followed by CRLF.
    #[error("chunk data is not followed by CRLF")]
    DataEnd,
    /// A forbidden byte or shape in a chunk extension or trailer field.
    #[error("invalid {0} in the chunked body")]
    Invalid(&'static str),
    /// A chunk-size line over [`MAX_SIZE_LINE`] bytes.
    #[error("a chunk-size line is longer than {MAX_SIZE_LINE} bytes")]
    LineTooLong,
    /// The decoded body would exceed the limit.
    #[error("the body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The trailer section would exceed the limit.
    #[error("the trailer section is larger than {limit} bytes")]
    TrailerTooLarge {
        /// The limit.
        limit: usize,
    },
}

/// What one [`ChunkedDecoder::feed`] call did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// Bytes of the input used (framing and data); the rest is not part of
    /// this body.
    pub consumed: usize,
    /// Ranges of the input that are chunk data, in order.
    pub data: Vec<Range<usize>>,
    /// The last chunk and the trailer section were read: the body is complete.
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk-size (`digits` so far, value `size`).
    Size,
    /// After the digits: optional whitespace and chunk extensions up to CR.
    Ext,
    /// The LF ending a chunk-size line.
    SizeLf,
    /// `remaining` bytes of chunk data.
    Data,
    /// The CR, then the LF, after chunk data.
    DataCr,
    DataLf,
    /// The start of a trailer line (or the CRLF ending the body).
    TrailerStart,
    /// Inside a trailer field line (`colon`: its `:` was seen).
    TrailerLine,
    /// The LF ending a trailer field line.
    TrailerLf,
    /// The LF of the final CRLF.
    EndLf,
    Done,
    Failed(ChunkedError),
}

/// Incremental decoder of one chunked body (see the module docs).
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u32,
    line: usize,
    remaining: u64,
    total: u64,
    max_body: u64,
    trailer: usize,
    max_trailer: usize,
    /// A `;` was seen on this chunk-size line.
    ext: bool,
    /// A `:` was seen on this trailer line.
    colon: bool,
}

impl ChunkedDecoder {
    /// A decoder that refuses more than `max_body` data bytes and more than
    /// `max_trailer` bytes of trailer fields.
    pub fn new(max_body: u64, max_trailer: usize) -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line: 0,
            remaining: 0,
            total: 0,
            max_body,
            trailer: 0,
            max_trailer,
            ext: false,
            colon: false,
        }
    }

    /// Whether the whole body was read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes decoded so far.
    pub fn data_len(&self) -> u64 {
        self.total
    }

    /// Feeds the next bytes of the body. Stops at the end of the body: bytes
    /// after it are left unconsumed. After `done`, consumes nothing.
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, ChunkedError> {
        let mut p = Progress::default();
        let r = self.run(input, &mut p);
        if let Err(e) = &r {
            self.state = State::Failed(e.clone());
        }
        r.map(|()| p)
    }

    fn run(&mut self, input: &[u8], p: &mut Progress) -> Result<(), ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Failed(ref e) => return Err(e.clone()),
                State::Data => {
                    let n = usize::try_from(self.remaining)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    p.data.push(i..i + n);
                    self.remaining -= n as u64;
                    i += n;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Size | State::Ext | State::SizeLf => self.size_line(b)?,
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError::DataEnd);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError::DataEnd);
                    }
                    self.start_size_line();
                }
                State::TrailerStart | State::TrailerLine | State::TrailerLf | State::EndLf => {
                    self.trailer_byte(b)?
                }
            }
            i += 1;
        }
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        p.consumed = i;
        p.done = self.state == State::Done;
        Ok(())
    }

    fn start_size_line(&mut self) {
        self.state = State::Size;
        self.size = 0;
        self.digits = 0;
        self.line = 0;
        self.ext = false;
    }

    /// One byte of a chunk-size line.
    fn size_line(&mut self, b: u8) -> Result<(), ChunkedError> {
        self.line += 1;
        if self.line > MAX_SIZE_LINE {
            return Err(ChunkedError::LineTooLong);
        }
        match self.state {
            State::Size => {
                if let Some(d) = hex_value(b) {
                    // Leading zeros are fine; a value over 64 bits is not.
                    if self.size > u64::MAX >> 4 {
                        return Err(ChunkedError::Size);
                    }
                    self.size = self.size << 4 | u64::from(d);
                    self.digits += 1;
                    return Ok(());
                }
                if self.digits == 0 {
                    return Err(ChunkedError::Size);
                }
                self.state = State::Ext;
                self.size_line_rest(b)
            }
            State::Ext => self.size_line_rest(b),
            _ => {
                // SizeLf
                if b != b'\n' {
                    return Err(ChunkedError::LineEnding);
                }
                self.end_size_line()
            }
        }
    }

    /// After the digits: BWS, `;` extensions (any visible bytes, SP, HTAB),
    /// then CR.
    fn size_line_rest(&mut self, b: u8) -> Result<(), ChunkedError> {
        match b {
            b'\r' => {
                self.state = State::SizeLf;
                Ok(())
            }
            b'\n' => Err(ChunkedError::LineEnding),
            b'\t' | b' '..=b'~' | 0x80..=0xff => {
                // Before a `;` only whitespace may follow the digits.
                if !self.ext && !matches!(b, b' ' | b'\t' | b';') {
                    return Err(ChunkedError::Size);
                }
                self.ext |= b == b';';
                Ok(())
            }
            _ => Err(ChunkedError::Invalid(
                "control character in a chunk extension",
            )),
        }
    }

    fn end_size_line(&mut self) -> Result<(), ChunkedError> {
        if self.size == 0 {
            self.state = State::TrailerStart;
            return Ok(());
        }
        let total = self.total.saturating_add(self.size);
        if total > self.max_body {
            return Err(ChunkedError::TooLarge {
                limit: self.max_body,
            });
        }
        self.total = total;
        self.remaining = self.size;
        self.state = State::Data;
        Ok(())
    }

    /// One byte of the trailer section (field lines, then CRLF).
    fn trailer_byte(&mut self, b: u8) -> Result<(), ChunkedError> {
        match self.state {
            State::TrailerStart => match b {
                b'\r' => self.state = State::EndLf,
                b' ' | b'\t' => return Err(ChunkedError::Invalid("folded trailer line")),
                b'\n' => return Err(ChunkedError::LineEnding),
                _ => {
                    self.state = State::TrailerLine;
                    self.colon = false;
                    return self.trailer_line(b);
                }
            },
            State::TrailerLine => return self.trailer_line(b),
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(ChunkedError::LineEnding);
                }
                if !self.colon {
                    return Err(ChunkedError::Invalid("trailer line without `:`"));
                }
                self.count_trailer()?;
                self.state = State::TrailerStart;
            }
            _ => {
                // EndLf
                if b != b'\n' {
                    return Err(ChunkedError::LineEnding);
                }
                self.state = State::Done;
            }
        }
        Ok(())
    }

    fn trailer_line(&mut self, b: u8) -> Result<(), ChunkedError> {
        self.count_trailer()?;
        match b {
            b'\r' => self.state = State::TrailerLf,
            b'\n' => return Err(ChunkedError::LineEnding),
            b':' => self.colon = true,
            b'\t' | b' '..=b'~' | 0x80..=0xff => {}
            _ => {
                return Err(ChunkedError::Invalid(
                    "control character in a trailer field",
                ))
            }
        }
        Ok(())
    }

    fn count_trailer(&mut self) -> Result<(), ChunkedError> {
        self.trailer += 1;
        if self.trailer > self.max_trailer {
            return Err(ChunkedError::TrailerTooLarge {
                limit: self.max_trailer,
            });
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes: (data, consumed, done).
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut d = ChunkedDecoder::new(1 << 20, 1024);
        let mut data = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let end = (at + step).min(input.len());
            let piece = &input[at..end];
            let p = d.feed(piece)?;
            for r in &p.data {
                data.extend_from_slice(&piece[r.clone()]);
            }
            at += p.consumed;
            if p.done {
                assert!(d.is_done());
                return Ok((data, at, true));
            }
            assert_eq!(p.consumed, piece.len(), "consumes all before the end");
        }
        Ok((data, at, false))
    }

    const BODY: &[u8] = b"5\r\nhello\r\n1a;name=\"v a\" ; x\r\nabcdefghijklmnopqrstuvwxyz\r\n00 \t;last\r\nX-Sum: 1\r\nx-b:\t2 \r\n\r\nGET / HTTP/1.1\r\n";

    #[test]
    fn decodes_data_extensions_and_trailers_split_anywhere() {
        let end = BODY.len() - b"GET / HTTP/1.1\r\n".len();
        for step in 1..=BODY.len() {
            let (data, consumed, done) = decode(BODY, step).unwrap();
            assert!(done, "step {step}");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(
                consumed, end,
                "the next request is not consumed (step {step})"
            );
        }
        let mut d = ChunkedDecoder::new(100, 100);
        let p = d.feed(BODY).unwrap();
        assert_eq!(p.data.len(), 2);
        assert_eq!(d.data_len(), 31);
        // After the end nothing more is consumed.
        assert_eq!(d.feed(b"0\r\n\r\n").unwrap().consumed, 0);
    }

    #[test]
    fn large_chunk_sizes_and_upper_case_hex() {
        let body = [b"1F4\r\n".as_slice(), &[b'x'; 500], b"\r\n0\r\n\r\n"].concat();
        assert_eq!(decode(&body, 7).unwrap().0.len(), 500);
        // Incomplete: not done, everything consumed.
        let (_, consumed, done) = decode(&body[..body.len() - 1], 3).unwrap();
        assert!(!done);
        assert_eq!(consumed, body.len() - 1);
    }

    fn err(input: &[u8]) -> ChunkedError {
        let whole = ChunkedDecoder::new(1000, 64).feed(input).unwrap_err();
        // Byte by byte gives the same error.
        let mut d = ChunkedDecoder::new(1000, 64);
        let mut got = None;
        for b in input.chunks(1) {
            if let Err(e) = d.feed(b) {
                got = Some(e);
                break;
            }
        }
        assert_eq!(
            got.as_ref(),
            Some(&whole),
            "{:?}",
            String::from_utf8_lossy(input)
        );
        // Sticky.
        assert_eq!(d.feed(b"0\r\n\r\n").unwrap_err(), whole);
        whole
    }

    #[test]
    fn malformed_bodies_fail_with_the_reason() {
        assert_eq!(err(b"x\r\n"), ChunkedError::Size);
        assert_eq!(err(b"\r\n"), ChunkedError::Size);
        assert_eq!(err(b";ext\r\n"), ChunkedError::Size);
        assert_eq!(err(b"-5\r\n"), ChunkedError::Size);
        assert_eq!(err(b"0x5\r\n"), ChunkedError::Size);
        assert_eq!(err(b"5 5\r\n"), ChunkedError::Size);
        assert_eq!(err(b"10000000000000000\r\n"), ChunkedError::Size);
        assert_eq!(err(b"5\nhello\r\n"), ChunkedError::LineEnding);
        assert_eq!(err(b"5\rhello"), ChunkedError::LineEnding);
        assert_eq!(err(b"5;a\nb\r\n"), ChunkedError::LineEnding);
        assert_eq!(err(b"5\r\nhelloX\r\n"), ChunkedError::DataEnd);
        assert_eq!(err(b"5\r\nhello\rX"), ChunkedError::DataEnd);
        assert_eq!(err(b"5\r\nhello\n0\r\n"), ChunkedError::DataEnd);
        assert_eq!(
            err(b"5;a\0b\r\n"),
            ChunkedError::Invalid("control character in a chunk extension")
        );
        assert_eq!(
            err(b"0\r\n x: 1\r\n\r\n"),
            ChunkedError::Invalid("folded trailer line")
        );
        assert_eq!(
            err(b"0\r\nbogus\r\n\r\n"),
            ChunkedError::Invalid("trailer line without `:`")
        );
        assert_eq!(
            err(b"0\r\na: \x01\r\n\r\n"),
            ChunkedError::Invalid("control character in a trailer field")
        );
        assert_eq!(err(b"0\r\na: 1\n\r\n"), ChunkedError::LineEnding);
        assert_eq!(err(b"0\r\n\n"), ChunkedError::LineEnding);
        assert_eq!(err(b"0\r\n\rX"), ChunkedError::LineEnding);
    }

    #[test]
    fn limits_refuse_early_without_buffering() {
        // The size line announcing too much is refused before any data.
        assert_eq!(err(b"3e9\r\n"), ChunkedError::TooLarge { limit: 1000 });
        // The sum counts, not each chunk.
        let two = [b"1f4\r\n".as_slice(), &[b'x'; 500], b"\r\n1f5\r\n"].concat();
        assert_eq!(err(&two), ChunkedError::TooLarge { limit: 1000 });
        let long = [b"5;".as_slice(), &[b'e'; MAX_SIZE_LINE]].concat();
        assert_eq!(err(&long), ChunkedError::LineTooLong);
        let zeros = [&[b'0'; MAX_SIZE_LINE][..], b"\r\n"].concat();
        assert_eq!(err(&zeros), ChunkedError::LineTooLong);
        let trailer = [b"0\r\na:".as_slice(), &[b'v'; 70], b"\r\n\r\n"].concat();
        assert_eq!(err(&trailer), ChunkedError::TrailerTooLarge { limit: 64 });
        // Many leading zeros within the line cap are a valid size.
        let ok = [&[b'0'; 100][..], b"5\r\nhello\r\n0\r\n\r\n"].concat();
        assert_eq!(decode(&ok, 9).unwrap().0, b"hello");
    }
}

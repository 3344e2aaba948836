//! Incremental HTTP/1.1 head parser with hard caps.
//!
//! Bytes may arrive in any number of pieces; each byte is searched for the end
//! of its line exactly once and each complete line is validated exactly once,
//! so the total work is O(total bytes) however the head is split. (Re-scanning
//! the whole buffer on every read made tungstenite quadratic:
//! CVE-2023-43669.) Each read is copied once into the parser's own buffer
//! (never more than `max_head_bytes` in all), which then backs the header
//! values and the URI without further copies; bytes after the head are cut
//! off that buffer again and never consumed.
//!
//! Caps (from [`Limits`]): more than `max_head_bytes` head bytes fails with
//! [`HeadError::TooLarge`] as soon as the limit is crossed, more than
//! `max_headers` fields with [`HeadError::TooManyHeaders`]; both answer 431.
//!
//! The grammar is RFC 9112, strictly: lines end in CRLF (bare LF, bare CR,
//! obs-fold, control bytes, whitespace before the colon are refused), the
//! request line is exactly `method SP request-target SP HTTP/1.x`, the target
//! form fits the method, HTTP/1.1 requests carry exactly one `Host`, and the
//! body framing is unambiguous (no `Content-Length` with `Transfer-Encoding`,
//! no differing `Content-Length` values). Those rules close the request
//! smuggling holes a gateway would otherwise forward.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

use crate::limits::Limits;
use crate::upgrade::is_tchar;

/// Why a head was refused. [`HeadError::status`] gives the HTTP status to answer.
///
/// Positions (`at`) are byte offsets from the start of the head.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadError {
    /// The head is longer than `Limits::max_head_bytes` (431).
    #[error(
        "HTTP head exceeds {limit} bytes; send fewer or shorter headers (or raise max_head_bytes)"
    )]
    TooLarge {
        /// `Limits::max_head_bytes`.
        limit: usize,
    },
    /// More header fields than `Limits::max_headers` (431).
    #[error("more than {limit} header fields; send fewer headers (or raise max_headers)")]
    TooManyHeaders {
        /// `Limits::max_headers`.
        limit: usize,
    },
    /// A line ends with LF alone.
    #[error("bare LF line ending at byte {at}: lines must end with CRLF")]
    BareLf {
        /// Where the LF is.
        at: usize,
    },
    /// A CR that does not start a CRLF.
    #[error("CR not followed by LF at byte {at}: CR may only appear in the CRLF line ending")]
    BareCr {
        /// Where the CR is.
        at: usize,
    },
    /// A field value continued on the next line (obs-fold, RFC 9112 §5.2).
    #[error("obsolete line folding (obs-fold) at byte {at}: put each field on one line")]
    ObsFold {
        /// Where the folded line starts.
        at: usize,
    },
    /// NUL or another control byte.
    #[error("NUL or control byte 0x{byte:02x} at byte {at}; control bytes are not allowed in an HTTP head")]
    ControlByte {
        /// The byte.
        byte: u8,
        /// Where it is.
        at: usize,
    },
    /// A header name with a character that is not a token character.
    #[error("invalid character in header name at byte {at}; names are RFC 9110 tokens")]
    InvalidHeaderName {
        /// Where the character is.
        at: usize,
    },
    /// The request or status line cannot be parsed.
    #[error("malformed start line: {0}")]
    StartLine(String),
    /// An `HTTP/d.d` other than 1.0 and 1.1 (505).
    #[error("HTTP version {0} is not supported; use HTTP/1.1 (or HTTP/1.0)")]
    UnsupportedVersion(String),
    /// A header line without a colon or a name, with whitespace in or after
    /// the name, or with an invalid value.
    #[error("malformed header line at byte {at}: {why}")]
    HeaderLine {
        /// Where the problem is.
        at: usize,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No `Host` on an HTTP/1.1 request, several, or one that is not
    /// `host[:port]`.
    #[error("bad Host header: {0}")]
    Host(&'static str),
    /// `Content-Length` and `Transfer-Encoding` that do not say one length
    /// (request smuggling vectors, RFC 9112 §6.3).
    #[error("ambiguous message framing: {0}")]
    Framing(&'static str),
    /// `feed` after the head was complete: a caller bug.
    #[error(
        "the parser already returned a complete head; start a new parser for the next message"
    )]
    Finished,
}

impl HeadError {
    /// 431 for the size and count caps, 505 for an unsupported HTTP version
    /// (`HTTP/d.d` other than 1.0 and 1.1), 400 for everything else.
    /// ([`HeadError::Finished`] is a caller bug, not a peer error; it maps to
    /// 400 only so that every variant has a status.)
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge { .. } | HeadError::TooManyHeaders { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::UnsupportedVersion(_) => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

#[derive(Debug)]
enum Phase {
    StartLine,
    Headers,
    Done,
    Failed(HeadError),
}

/// The line splitter and header-field parser shared by both parsers.
///
/// Every head byte is appended once to `buf` (one allocation, bounded by
/// `max_head_bytes`); fields are kept as a name plus the value's range in
/// `buf`, and at the end the values become zero-copy slices of that buffer,
/// so a head costs a handful of allocations however many fields it has.
#[derive(Debug)]
struct HeadScanner {
    max_head_bytes: usize,
    max_headers: usize,
    /// Every head byte received so far (never more than `max_head_bytes`).
    buf: Vec<u8>,
    /// Where the current, not yet terminated line starts in `buf`.
    line_start: usize,
    /// Head bytes consumed so far (`buf.len()` until the head is handed out).
    seen: usize,
    phase: Phase,
    /// Field names and their (trimmed) value ranges in `buf`, in order.
    fields: Vec<(HeaderName, usize, usize)>,
    /// Bytes searched plus bytes validated: proves linear work in tests.
    #[cfg(test)]
    work: usize,
}

/// Parses the start line (CRLF excluded; `at` is its offset in the head).
type OnStartLine<'a> = dyn FnMut(&[u8], usize) -> Result<StartLine, HeadError> + 'a;

/// What the start-line callback did with a line.
enum StartLine {
    /// Parsed; header fields follow.
    Parsed,
    /// An empty line before the start line, ignored (RFC 9112 §2.2).
    Skipped,
}

impl HeadScanner {
    fn new(limits: &Limits) -> Self {
        HeadScanner {
            max_head_bytes: limits.max_head_bytes,
            max_headers: limits.max_headers,
            buf: Vec::new(),
            line_start: 0,
            seen: 0,
            phase: Phase::StartLine,
            fields: Vec::new(),
            #[cfg(test)]
            work: 0,
        }
    }

    /// Feeds bytes; `Ok(Some(n))` when the blank line ending the head was the
    /// `n`-th byte of `data`. Errors are sticky; feeding after completion is
    /// [`HeadError::Finished`].
    fn feed(
        &mut self,
        data: &[u8],
        start: &mut OnStartLine<'_>,
    ) -> Result<Option<usize>, HeadError> {
        match &self.phase {
            Phase::Done => return Err(HeadError::Finished),
            Phase::Failed(e) => return Err(e.clone()),
            Phase::StartLine | Phase::Headers => {}
        }
        let r = self.feed_inner(data, start);
        match &r {
            Err(e) => self.phase = Phase::Failed(e.clone()),
            Ok(Some(_)) => self.phase = Phase::Done,
            Ok(None) => {}
        }
        r
    }

    fn feed_inner(
        &mut self,
        data: &[u8],
        start: &mut OnStartLine<'_>,
    ) -> Result<Option<usize>, HeadError> {
        if self.buf.capacity() == 0 && !data.is_empty() {
            // One allocation in the common case of a head in one read.
            self.buf
                .reserve(data.len().max(256).min(self.max_head_bytes));
        }
        // Never take more than the byte budget: a 1 MiB read of junk is
        // refused after max_head_bytes bytes, not after scanning it all. The
        // budget is copied in one piece (one copy per read, not per line);
        // whatever follows the head's end is cut off again below.
        let room = self.max_head_bytes.saturating_sub(self.buf.len());
        let window = data.get(..room).unwrap_or(data);
        let base = self.buf.len();
        self.buf.extend_from_slice(window);
        // Only the new bytes are searched: a pending line's start was searched before.
        let mut scan = base;
        loop {
            let Some(i) = self.buf.get(scan..).and_then(find_lf) else {
                #[cfg(test)]
                {
                    self.work += self.buf.len() - scan;
                }
                if data.len() > room {
                    return Err(HeadError::TooLarge {
                        limit: self.max_head_bytes,
                    });
                }
                self.seen = self.buf.len();
                return Ok(None);
            };
            #[cfg(test)]
            {
                self.work += i + 1;
            }
            let lf = scan + i;
            let at = self.line_start;
            self.line_start = lf + 1;
            scan = lf + 1;
            self.seen = scan;
            if self.line(at, lf, start)? {
                self.buf.truncate(scan);
                return Ok(Some(scan - base));
            }
        }
    }

    /// The line `buf[at..lf]` (the LF at `lf` excluded). `Ok(true)` at the
    /// blank line that ends the head.
    fn line(
        &mut self,
        at: usize,
        lf: usize,
        start: &mut OnStartLine<'_>,
    ) -> Result<bool, HeadError> {
        let line = self.buf.get(at..lf).unwrap_or_default();
        let Some((b'\r', content)) = line.split_last() else {
            return Err(HeadError::BareLf {
                at: at + line.len(),
            });
        };
        #[cfg(test)]
        {
            self.work += content.len();
        }
        match self.phase {
            Phase::StartLine => {
                check_start_line_bytes(content, at)?;
                if let StartLine::Parsed = start(content, at)? {
                    self.phase = Phase::Headers;
                }
                Ok(false)
            }
            _ if content.is_empty() => Ok(true),
            _ => {
                if self.fields.len() >= self.max_headers {
                    return Err(HeadError::TooManyHeaders {
                        limit: self.max_headers,
                    });
                }
                let field = parse_field(content, at)?;
                if self.fields.capacity() == 0 {
                    self.fields.reserve(16);
                }
                self.fields.push(field);
                Ok(false)
            }
        }
    }

    /// The head bytes and its fields as a `HeaderMap` whose values share one buffer.
    fn take_head(&mut self) -> Result<(bytes::Bytes, HeaderMap), HeadError> {
        let bytes = bytes::Bytes::from(std::mem::take(&mut self.buf));
        let fields = std::mem::take(&mut self.fields);
        let mut headers = HeaderMap::with_capacity(fields.len());
        for (name, from, to) in fields {
            let value = bytes
                .get(from..to)
                .map(|_| bytes.slice(from..to))
                .and_then(|v| HeaderValue::from_maybe_shared(v).ok())
                .ok_or(HeadError::HeaderLine {
                    at: from,
                    why: "invalid field value",
                })?;
            headers.append(name, value);
        }
        Ok((bytes, headers))
    }
}

/// The common end of the parsers' `feed`: once the scanner has the whole
/// head (`used` bytes of the last input), build the message with `finish`;
/// its error is sticky like the scanner's.
fn completed<T>(
    scanner: &mut HeadScanner,
    used: Option<usize>,
    finish: impl FnOnce(&mut HeadScanner) -> Result<T, HeadError>,
) -> Result<Option<(T, usize)>, HeadError> {
    let Some(used) = used else {
        return Ok(None);
    };
    let r = finish(scanner);
    if let Err(e) = &r {
        scanner.phase = Phase::Failed(e.clone());
    }
    r.map(|m| Some((m, used)))
}

/// One field line (no CRLF) starting at head offset `at`: its name and the
/// range of its OWS-trimmed value in the head.
fn parse_field(line: &[u8], at: usize) -> Result<(HeaderName, usize, usize), HeadError> {
    if let Some(b' ' | b'\t') = line.first() {
        return Err(HeadError::ObsFold { at });
    }
    // The name ends at the first colon; its bytes are checked branch-free
    // and the culprit is located only on error.
    let colon = find_byte(line, b':');
    let name = line.get(..colon.unwrap_or(line.len())).unwrap_or_default();
    if !name.iter().fold(true, |ok, &b| ok & is_tchar(b)) {
        return Err(bad_name_byte(name, at));
    }
    let Some(colon) = colon else {
        return Err(HeadError::HeaderLine {
            at,
            why: "no colon after the field name",
        });
    };
    if colon == 0 {
        return Err(HeadError::HeaderLine {
            at,
            why: "empty field name",
        });
    }
    let (name, value) = line.split_at(colon);
    let value = value.get(1..).unwrap_or_default();
    let value_at = at + colon + 1;
    // Branch-free fold so the check vectorizes; the culprit is located only on error.
    let ok = value.iter().fold(true, |ok, &b| {
        ok & (((b >= 0x20) & (b != 0x7f)) | (b == b'\t'))
    });
    if !ok {
        return Err(bad_value_byte(value, value_at));
    }
    let name = HeaderName::from_bytes(name).map_err(|_| HeadError::InvalidHeaderName { at })?;
    let lead = value
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let from = value_at + lead;
    Ok((name, from, from + trim_ows(value).len()))
}

/// The error for the first byte of a field name (at head offset `at`)
/// that is not a token character.
fn bad_name_byte(name: &[u8], at: usize) -> HeadError {
    let (i, b) = name
        .iter()
        .copied()
        .enumerate()
        .find(|&(_, b)| !is_tchar(b))
        .unwrap_or_default();
    match b {
        b' ' | b'\t' => HeadError::HeaderLine {
            at: at + i,
            why: "whitespace in the field name or between it and the colon",
        },
        b'\r' => HeadError::BareCr { at: at + i },
        0..=0x1f | 0x7f => HeadError::ControlByte {
            byte: b,
            at: at + i,
        },
        _ => HeadError::InvalidHeaderName { at: at + i },
    }
}

/// The error for the first byte of a field value that is not HTAB, SP,
/// VCHAR or obs-text (`value` starts at head offset `at`).
fn bad_value_byte(value: &[u8], at: usize) -> HeadError {
    for (i, &b) in value.iter().enumerate() {
        match b {
            b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
            b'\r' => return HeadError::BareCr { at: at + i },
            _ => {
                return HeadError::ControlByte {
                    byte: b,
                    at: at + i,
                }
            }
        }
    }
    HeadError::HeaderLine {
        at,
        why: "invalid field value",
    }
}

/// Index of the first LF in `s`.
fn find_lf(s: &[u8]) -> Option<usize> {
    find_byte(s, b'\n')
}

/// Index of the first `needle` in `s`. Word-at-a-time (SWAR) over 8-byte
/// chunks, like `memchr`, without `unsafe` or a dependency.
fn find_byte(s: &[u8], needle: u8) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let pattern = u64::from_ne_bytes([needle; 8]);
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ pattern;
        // Non-zero exactly when some byte of `x` is zero, i.e. a `needle`;
        // its lowest set bit is in the first such byte (a borrow can only
        // mark bytes above a zero byte, never below it).
        let found = x.wrapping_sub(ONES) & !x & HIGH;
        if found != 0 {
            return Some(base + found.trailing_zeros() as usize / 8);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| base + i)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// A start line is visible ASCII and single spaces only (reason phrases may
/// also hold HTAB and obs-text; the response parser checks those itself).
fn check_start_line_bytes(line: &[u8], at: usize) -> Result<(), HeadError> {
    // Branch-free so it vectorizes; the culprit is located only on error.
    if line.iter().fold(true, |ok, &b| {
        ok & (((b >= 0x20) & (b != 0x7f)) | (b == b'\t'))
    }) {
        return Ok(());
    }
    for (i, &b) in line.iter().enumerate() {
        match b {
            b'\r' => return Err(HeadError::BareCr { at: at + i }),
            0..=0x08 | 0x0a..=0x1f | 0x7f => {
                return Err(HeadError::ControlByte {
                    byte: b,
                    at: at + i,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_version(v: &[u8]) -> Result<Version, HeadError> {
    match v {
        b"HTTP/1.1" => Ok(Version::HTTP_11),
        b"HTTP/1.0" => Ok(Version::HTTP_10),
        [b'H', b'T', b'T', b'P', b'/', d1, b'.', d2]
            if d1.is_ascii_digit() && d2.is_ascii_digit() =>
        {
            Err(HeadError::UnsupportedVersion(
                String::from_utf8_lossy(v).into_owned(),
            ))
        }
        _ => Err(HeadError::StartLine(
            "the HTTP version must be `HTTP/1.1` or `HTTP/1.0`".into(),
        )),
    }
}

fn start_err(why: &str) -> HeadError {
    HeadError::StartLine(why.to_owned())
}

/// The request line's method, the target's range within `line`, and the version.
fn parse_request_line(line: &[u8]) -> Result<(Method, (usize, usize), Version), HeadError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(start_err("expected `METHOD SP request-target SP HTTP/1.1`"));
    };
    if method.is_empty() || target.is_empty() || version.is_empty() {
        return Err(start_err(
            "expected exactly one space between method, target and version",
        ));
    }
    if !method.iter().all(|&b| is_tchar(b)) {
        return Err(start_err("the method is not a token"));
    }
    let version = parse_version(version)?;
    if !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(start_err(
            "the request-target holds a character that must be percent-encoded",
        ));
    }
    let target_at = method.len() + 1;
    let method = Method::from_bytes(method).map_err(|_| start_err("invalid method"))?;
    Ok((method, (target_at, target_at + target.len()), version))
}

/// RFC 9112 §3.2: origin-form (`/path?q`), absolute-form (`http://h/p`),
/// authority-form (`host:port`, CONNECT only), asterisk-form (`*`, OPTIONS only).
fn check_target_form(method: &Method, target: &[u8], uri: &Uri) -> Result<(), HeadError> {
    if *method == Method::CONNECT {
        let ok = uri.scheme().is_none()
            && uri
                .authority()
                .is_some_and(|a| a.port().is_some() && !a.as_str().contains('@'))
            && !target.contains(&b'/');
        return if ok {
            Ok(())
        } else {
            Err(start_err(
                "CONNECT needs an authority-form target (`host:port`)",
            ))
        };
    }
    match target {
        b"*" if *method == Method::OPTIONS => Ok(()),
        b"*" => Err(start_err(
            "the asterisk-form target `*` is only for OPTIONS",
        )),
        [b'/', ..] => Ok(()),
        _ if uri.scheme().is_some() && uri.authority().is_some() => Ok(()),
        _ => Err(start_err(
            "the request-target must be a path (`/x`) or an absolute URI",
        )),
    }
}

/// Content-Length / Transfer-Encoding consistency (RFC 9112 §6.1, §6.3).
fn check_framing(headers: &HeaderMap, version: Version) -> Result<(), HeadError> {
    let has_te = headers.contains_key(TRANSFER_ENCODING);
    let mut length: Option<&[u8]> = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        for e in v.as_bytes().split(|&b| b == b',').map(trim_ows) {
            if e.is_empty() || e.len() > 19 || !e.iter().all(u8::is_ascii_digit) {
                return Err(HeadError::Framing("Content-Length is not a decimal number"));
            }
            match length {
                Some(l) if l != e => {
                    return Err(HeadError::Framing(
                        "several different Content-Length values",
                    ));
                }
                _ => length = Some(e),
            }
        }
    }
    if has_te && length.is_some() {
        return Err(HeadError::Framing(
            "both Content-Length and Transfer-Encoding; send only one",
        ));
    }
    if has_te {
        if version == Version::HTTP_10 {
            return Err(HeadError::Framing(
                "Transfer-Encoding is not defined for HTTP/1.0",
            ));
        }
        let last = crate::upgrade::header_tokens(headers, &TRANSFER_ENCODING).last();
        if !last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            return Err(HeadError::Framing(
                "the last Transfer-Encoding must be `chunked`",
            ));
        }
    }
    Ok(())
}

/// `part` as a slice of `buf` when it lies within it (no copy), else a copy
/// (`Bytes::slice_ref` would panic).
fn shared_slice(buf: &bytes::Bytes, part: &[u8]) -> bytes::Bytes {
    let (outer, inner) = (buf.as_ptr_range(), part.as_ptr_range());
    if outer.start <= inner.start && inner.end <= outer.end {
        buf.slice_ref(part)
    } else {
        bytes::Bytes::copy_from_slice(part)
    }
}

/// `head` is the buffer the header values share: the `Host` value is
/// parsed as a slice of it, without a copy.
fn check_host(head: &bytes::Bytes, headers: &HeaderMap, version: Version) -> Result<(), HeadError> {
    let mut hosts = headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(HeadError::Host("more than one Host field"));
    }
    let Some(host) = first else {
        return if version == Version::HTTP_11 {
            Err(HeadError::Host(
                "an HTTP/1.1 request must carry a Host field",
            ))
        } else {
            Ok(())
        };
    };
    let host = host.as_bytes();
    if host.is_empty() {
        return Ok(());
    }
    let bad = HeadError::Host("the value is not `host[:port]`");
    if host.contains(&b'@') {
        return Err(bad);
    }
    let authority = http::uri::Authority::from_maybe_shared(shared_slice(head, host))
        .map_err(|_| bad.clone())?;
    let port = host.get(authority.host().len()..).unwrap_or_default();
    match port {
        [] => Ok(()),
        [b':', digits @ ..]
            if !digits.is_empty() && digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit) =>
        {
            Ok(())
        }
        _ => Err(bad),
    }
}

/// Parses a request head fed in arbitrary pieces; bytes are scanned once.
///
/// After `feed` returned a request, further feeds return
/// [`HeadError::Finished`]; after it returned an error, further feeds return
/// the same error. Use a new parser for the next (pipelined) request.
#[derive(Debug)]
pub struct RequestParser {
    scanner: HeadScanner,
    /// Method, target range in the head, version.
    start: Option<(Method, (usize, usize), Version)>,
}

impl RequestParser {
    /// A parser enforcing `limits.max_head_bytes` and `limits.max_headers`.
    pub fn new(limits: &Limits) -> Self {
        RequestParser {
            scanner: HeadScanner::new(limits),
            start: None,
        }
    }

    /// Feed the next bytes. On completion returns the request and how many
    /// bytes of `data` belonged to the head; the rest of `data` is what follows
    /// the head and must be kept by the caller.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<(http::Request<()>, usize)>, HeadError> {
        let start = &mut self.start;
        let mut on_start = |line: &[u8], at: usize| {
            if line.is_empty() {
                return Ok(StartLine::Skipped);
            }
            let (method, (from, to), version) = parse_request_line(line)?;
            *start = Some((method, (at + from, at + to), version));
            Ok(StartLine::Parsed)
        };
        let used = self.scanner.feed(data, &mut on_start)?;
        let start = &mut self.start;
        completed(&mut self.scanner, used, |sc| Self::finish(start.take(), sc))
    }

    fn finish(
        start: Option<(Method, (usize, usize), Version)>,
        scanner: &mut HeadScanner,
    ) -> Result<http::Request<()>, HeadError> {
        let Some((method, (from, to), version)) = start else {
            return Err(start_err("no request line"));
        };
        let (bytes, headers) = scanner.take_head()?;
        let target = bytes.get(from..to).unwrap_or_default();
        let uri = Uri::from_maybe_shared(bytes.slice_ref(target))
            .map_err(|_| start_err("the request-target is not a valid URI"))?;
        check_target_form(&method, target, &uri)?;
        check_host(&bytes, &headers, version)?;
        check_framing(&headers, version)?;
        let mut req = http::Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        Ok(req)
    }

    /// Bytes consumed so far (for the deadline and logs).
    pub fn bytes_seen(&self) -> usize {
        self.scanner.seen
    }
}

/// A response's reason phrase when it is not the status code's canonical
/// one (e.g. `403 Origin not allowed`): [`ResponseParser`] puts it in the
/// response's extensions and [`write_response_head`] writes it back, so a
/// relayed answer keeps the words its origin chose. Only visible ASCII, SP,
/// HTAB and obs-text; never CR or LF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonPhrase(bytes::Bytes);

impl ReasonPhrase {
    /// `None` when `reason` holds a byte a reason phrase may not
    /// (RFC 9112 §4: HTAB, SP, VCHAR, obs-text).
    pub fn new(reason: &[u8]) -> Option<Self> {
        reason
            .iter()
            .all(|&b| b == b'\t' || b >= 0x20 && b != 0x7f)
            .then(|| ReasonPhrase(bytes::Bytes::copy_from_slice(reason)))
    }

    /// The phrase.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The reason phrase of `resp` as its sender wrote it ([`ReasonPhrase`],
/// lossy UTF-8), else the canonical one of its status (empty if none).
pub fn reason_of(resp: &http::Response<()>) -> std::borrow::Cow<'_, str> {
    match resp.extensions().get::<ReasonPhrase>() {
        Some(r) => String::from_utf8_lossy(r.as_bytes()),
        None => resp.status().canonical_reason().unwrap_or("").into(),
    }
}

fn parse_status_line(
    line: &[u8],
) -> Result<(Version, StatusCode, Option<ReasonPhrase>), HeadError> {
    let (version, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (
            line.get(..i).unwrap_or_default(),
            line.get(i + 1..).unwrap_or_default(),
        ),
        None => return Err(start_err("expected `HTTP/1.1 SP status-code SP reason`")),
    };
    let version = parse_version(version)?;
    let (code, reason) = match rest {
        [a, b, c] => ([*a, *b, *c], &[][..]),
        [a, b, c, b' ', reason @ ..] => ([*a, *b, *c], reason),
        _ => return Err(start_err("the status code must be three digits")),
    };
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(start_err("the status code must be three digits"));
    }
    let status =
        StatusCode::from_bytes(&code).map_err(|_| start_err("status code out of range"))?;
    // Kept only when it differs from the canonical one: no allocation for
    // the usual `101 Switching Protocols`.
    let reason = if status.canonical_reason().map(str::as_bytes) == Some(reason) {
        None
    } else {
        Some(
            ReasonPhrase::new(reason)
                .ok_or_else(|| start_err("control byte in the reason phrase"))?,
        )
    };
    Ok((version, status, reason))
}

/// Same for a response head (client side). Same completion and error
/// behaviour as [`RequestParser`]; a reason phrase other than the canonical
/// one is kept as a [`ReasonPhrase`] extension.
#[derive(Debug)]
pub struct ResponseParser {
    scanner: HeadScanner,
    start: Option<(Version, StatusCode, Option<ReasonPhrase>)>,
}

impl ResponseParser {
    /// A parser enforcing `limits.max_head_bytes` and `limits.max_headers`.
    pub fn new(limits: &Limits) -> Self {
        ResponseParser {
            scanner: HeadScanner::new(limits),
            start: None,
        }
    }

    /// Feed the next bytes. On completion returns the response and how many
    /// bytes of `data` belonged to the head (the rest is the body or the
    /// upgraded protocol's first bytes).
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<(http::Response<()>, usize)>, HeadError> {
        let start = &mut self.start;
        let mut on_start = |line: &[u8], _at: usize| {
            *start = Some(parse_status_line(line)?);
            Ok(StartLine::Parsed)
        };
        let used = self.scanner.feed(data, &mut on_start)?;
        let start = &mut self.start;
        completed(&mut self.scanner, used, |sc| Self::finish(start.take(), sc))
    }

    fn finish(
        start: Option<(Version, StatusCode, Option<ReasonPhrase>)>,
        scanner: &mut HeadScanner,
    ) -> Result<http::Response<()>, HeadError> {
        let Some((version, status, reason)) = start else {
            return Err(start_err("no status line"));
        };
        let (_, headers) = scanner.take_head()?;
        check_framing(&headers, Version::HTTP_11)?;
        let mut resp = http::Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        if let Some(r) = reason {
            resp.extensions_mut().insert(r);
        }
        Ok(resp)
    }

    /// Bytes consumed so far.
    pub fn bytes_seen(&self) -> usize {
        self.scanner.seen
    }
}

fn version_str(v: Version) -> &'static [u8] {
    if v == Version::HTTP_10 {
        b"HTTP/1.0"
    } else {
        b"HTTP/1.1"
    }
}

fn write_headers(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Serialize a request head (request line, headers, blank line).
///
/// The target is the URI's path and query (`/` when it has none); `CONNECT`
/// writes the authority, `*` stays `*`. HTTP/1.0 is written as such, any other
/// version as HTTP/1.1. Headers are written as given (no `Host` is added).
pub fn write_request_head(req: &http::Request<()>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    let uri = req.uri();
    match (uri.path_and_query(), uri.authority()) {
        (_, Some(a)) if *req.method() == Method::CONNECT => {
            out.extend_from_slice(a.as_str().as_bytes())
        }
        (Some(pq), _) if !pq.as_str().is_empty() => out.extend_from_slice(pq.as_str().as_bytes()),
        _ => out.push(b'/'),
    }
    out.push(b' ');
    out.extend_from_slice(version_str(req.version()));
    out.extend_from_slice(b"\r\n");
    write_headers(req.headers(), out);
    out.extend_from_slice(b"\r\n");
}

fn write_status_line(status: StatusCode, version: Version, out: &mut Vec<u8>) {
    let reason = status.canonical_reason().unwrap_or("").as_bytes();
    write_status_line_with(status, version, reason, out);
}

fn write_status_line_with(status: StatusCode, version: Version, reason: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(version_str(version));
    out.push(b' ');
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// Serialize a response head (status line, headers, blank line). The reason
/// phrase is the response's [`ReasonPhrase`] extension if it has one, else
/// [`StatusCode::canonical_reason`] (empty when there is none).
pub fn write_response_head(resp: &http::Response<()>, out: &mut Vec<u8>) {
    match resp.extensions().get::<ReasonPhrase>() {
        Some(r) => write_status_line_with(resp.status(), resp.version(), r.as_bytes(), out),
        None => write_status_line(resp.status(), resp.version(), out),
    }
    write_headers(resp.headers(), out);
    out.extend_from_slice(b"\r\n");
}

/// A complete small response: status, `Content-Type: text/plain`,
/// `Content-Length`, `Connection: close` plus `extra` headers, and `body`.
///
/// `extra` fields named `Content-Type`, `Content-Length`, `Transfer-Encoding`
/// or `Connection` are skipped: this function owns the framing.
pub fn simple_response(status: StatusCode, extra: &http::HeaderMap, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    write_status_line(status, Version::HTTP_11, &mut out);
    out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n");
    for (name, value) in extra {
        if matches!(
            name.as_str(),
            "content-type" | "content-length" | "transfer-encoding" | "connection"
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS_REQ: &[u8] = b"GET /chat?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parse_all(data: &[u8]) -> Result<Option<(http::Request<()>, usize)>, HeadError> {
        RequestParser::new(&Limits::default()).feed(data)
    }

    fn parse_err(data: &[u8]) -> HeadError {
        match parse_all(data) {
            Err(e) => e,
            Ok(r) => panic!(
                "expected an error for {:?}, got {r:?}",
                String::from_utf8_lossy(data)
            ),
        }
    }

    fn req(head: &str) -> Vec<u8> {
        head.replace('\n', "\r\n").into_bytes()
    }

    fn assert_400(data: &[u8]) -> HeadError {
        let e = parse_err(data);
        assert_eq!(
            e.status(),
            StatusCode::BAD_REQUEST,
            "{e:?} for {:?}",
            String::from_utf8_lossy(data)
        );
        e
    }

    /// Feeds one byte at a time; returns the request, the index (in `data`) of
    /// the byte that completed it, and the parser's work counter.
    fn feed_bytewise(
        data: &[u8],
        limits: &Limits,
    ) -> (Result<(http::Request<()>, usize), HeadError>, usize) {
        let mut p = RequestParser::new(limits);
        for (i, b) in data.iter().enumerate() {
            match p.feed(std::slice::from_ref(b)) {
                Ok(None) => {}
                Ok(Some((r, used))) => {
                    assert_eq!(used, 1);
                    return (Ok((r, i + 1)), p.scanner.work);
                }
                Err(e) => return (Err(e), p.scanner.work),
            }
        }
        panic!("head never completed");
    }

    #[test]
    fn shared_slice_shares_or_copies_without_panicking() {
        let buf = bytes::Bytes::from_static(b"Host: example.com:80");
        let inside = shared_slice(&buf, &buf[6..]);
        assert_eq!(inside, "example.com:80");
        assert_eq!(inside.as_ptr(), buf[6..].as_ptr());
        let elsewhere = b"example.com:80".to_vec();
        let copied = shared_slice(&buf, &elsewhere);
        assert_eq!(copied, "example.com:80");
        assert_ne!(copied.as_ptr(), elsewhere.as_ptr());
    }

    #[test]
    fn find_lf_matches_naive_search() {
        let mut data: Vec<u8> = (0..300u32).map(|i| (i * 37 % 251) as u8).collect();
        data.retain(|&b| b != b'\n');
        for len in 0..40 {
            for lf in 0..=len {
                let mut s = data.get(..len).unwrap().to_vec();
                if lf < len {
                    s[lf] = b'\n';
                    if lf + 3 < len {
                        s[lf + 3] = b'\n';
                    }
                }
                let naive = s.iter().position(|&b| b == b'\n');
                assert_eq!(find_lf(&s), naive, "len {len} lf {lf}");
            }
        }
        // Bytes that trip naive has-zero tricks (0x0b, 0x8a, 0x0a + 0x80).
        assert_eq!(find_lf(b"\x0b\x8a\x8a\x0b\x0b\x8a\x0b\x0b\x0b\n"), Some(9));
        assert_eq!(find_lf(b"\x8a\x8a\x8a\x8a\x8a\x8a\x8a\x8a"), None);
        // The byte after a match differs from it in the lowest bit only: the
        // borrow marks it too, and the first match must still win.
        assert_eq!(find_lf(b"abc\n\x0bxyz"), Some(3));
        assert_eq!(find_byte(b"x-name:;value", b':'), Some(6));
        for len in 0..24 {
            let s: Vec<u8> = (0..len).map(|i| b":;"[i % 2]).collect();
            for from in 0..len {
                let naive = s[from..].iter().position(|&b| b == b':');
                assert_eq!(find_byte(&s[from..], b':'), naive, "len {len} from {from}");
            }
        }
    }

    /// Outcome of parsing `data` fed in the given chunk sizes (cycled).
    fn outcome(data: &[u8], chunks: &[usize]) -> Result<(String, usize), HeadError> {
        let mut p = RequestParser::new(&Limits::default());
        let mut pos = 0;
        let mut k = 0;
        while pos < data.len() {
            let n = chunks[k % chunks.len()].max(1).min(data.len() - pos);
            k += 1;
            if let Some((r, used)) = p.feed(&data[pos..pos + n])? {
                return Ok((format!("{r:?}"), pos + used));
            }
            pos += n;
        }
        Ok((String::from("incomplete"), pos))
    }

    #[test]
    fn mutated_heads_same_outcome_for_any_split_and_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let special = [b'\r', b'\n', b' ', b'\t', b':', 0, 0x7f, 0xff, b'/', b','];
        for _ in 0..2000 {
            let mut data = WS_REQ.to_vec();
            for _ in 0..(next() % 4) {
                let i = (next() as usize) % data.len();
                match next() % 3 {
                    0 => data[i] = special[(next() as usize) % special.len()],
                    1 => data.insert(i, special[(next() as usize) % special.len()]),
                    _ => {
                        data.remove(i);
                    }
                }
            }
            data.extend_from_slice(b"\x81\x00tail");
            let whole = outcome(&data, &[data.len()]);
            let bytewise = outcome(&data, &[1]);
            let mixed = outcome(&data, &[3, 1, 7, 2]);
            assert_eq!(whole, bytewise, "{:?}", String::from_utf8_lossy(&data));
            assert_eq!(whole, mixed, "{:?}", String::from_utf8_lossy(&data));
        }
    }

    #[test]
    fn parses_websocket_request() {
        let (r, used) = parse_all(WS_REQ).unwrap().unwrap();
        assert_eq!(used, WS_REQ.len());
        assert_eq!(r.method(), Method::GET);
        assert_eq!(r.uri().path(), "/chat");
        assert_eq!(r.uri().query(), Some("x=1"));
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(r.headers()["host"], "example.com");
        assert_eq!(r.headers()["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(r.headers().len(), 5);
    }

    #[test]
    fn bytewise_equals_one_feed() {
        let (one, _) = parse_all(WS_REQ).unwrap().unwrap();
        let (byte, _) = feed_bytewise(WS_REQ, &Limits::default());
        let (byte, end) = byte.unwrap();
        assert_eq!(end, WS_REQ.len());
        assert_eq!(one.method(), byte.method());
        assert_eq!(one.uri(), byte.uri());
        assert_eq!(one.version(), byte.version());
        assert_eq!(one.headers(), byte.headers());
        // Every split point in two pieces gives the same result too.
        for cut in 0..=WS_REQ.len() {
            let mut p = RequestParser::new(&Limits::default());
            let (a, b) = WS_REQ.split_at(cut);
            let r = match p.feed(a).unwrap() {
                Some((r, used)) => {
                    assert_eq!(used, a.len());
                    r
                }
                None => {
                    let (r, used) = p.feed(b).unwrap().unwrap();
                    assert_eq!(used, b.len());
                    r
                }
            };
            assert_eq!(r.headers(), one.headers(), "cut at {cut}");
            assert_eq!(p.bytes_seen(), WS_REQ.len());
        }
    }

    #[test]
    fn no_rescan_work_is_linear() {
        // One ~16 KiB header value and many small ones, fed one byte at a
        // time: a parser that re-scans its buffer on each read does ~n²/2
        // (~130 million) steps here; ours must stay within a small multiple of n.
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..50 {
            head.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"x-big: ");
        let limits = Limits::default();
        head.resize(limits.max_head_bytes - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head.len(), limits.max_head_bytes);
        let (r, work) = feed_bytewise(&head, &limits);
        let (r, end) = r.unwrap();
        assert_eq!(end, head.len());
        assert_eq!(r.headers().len(), 52);
        assert!(
            work <= 2 * head.len(),
            "work {work} for {} bytes",
            head.len()
        );
        // The same bytes in one feed do the same amount of work.
        let mut p = RequestParser::new(&limits);
        p.feed(&head).unwrap().unwrap();
        assert_eq!(p.scanner.work, work);
    }

    #[test]
    fn leftover_websocket_frame_not_consumed() {
        let mut data = WS_REQ.to_vec();
        let frame = [
            0x81,
            0x85,
            1,
            2,
            3,
            4,
            b'h' ^ 1,
            b'e' ^ 2,
            b'l' ^ 3,
            b'l' ^ 4,
            b'o' ^ 1,
        ];
        data.extend_from_slice(&frame);
        let (_, used) = parse_all(&data).unwrap().unwrap();
        assert_eq!(used, WS_REQ.len());
        assert_eq!(data.get(used..), Some(&frame[..]));
    }

    #[test]
    fn leftover_counted_within_the_last_feed() {
        let mut p = RequestParser::new(&Limits::default());
        let (a, b) = WS_REQ.split_at(30);
        assert!(p.feed(a).unwrap().is_none());
        let mut second = b.to_vec();
        second.extend_from_slice(b"\x88\x80abcd");
        let (_, used) = p.feed(&second).unwrap().unwrap();
        assert_eq!(used, b.len());
        assert_eq!(p.bytes_seen(), WS_REQ.len());
    }

    #[test]
    fn pipelined_second_request_not_consumed() {
        let first = req("GET /a HTTP/1.1\nHost: h\n\n");
        let second = req("GET /b HTTP/1.1\nHost: h\n\n");
        let data = [first.clone(), second.clone()].concat();
        let (r, used) = parse_all(&data).unwrap().unwrap();
        assert_eq!(r.uri().path(), "/a");
        assert_eq!(used, first.len());
        let (r, used) = parse_all(data.get(used..).unwrap()).unwrap().unwrap();
        assert_eq!(r.uri().path(), "/b");
        assert_eq!(used, second.len());
    }

    #[test]
    fn crlf_split_across_feeds() {
        let mut p = RequestParser::new(&Limits::default());
        assert!(p.feed(b"GET / HTTP/1.1\r").unwrap().is_none());
        assert!(p.feed(b"\nHost: h\r").unwrap().is_none());
        assert!(p.feed(b"\n\r").unwrap().is_none());
        let (r, used) = p.feed(b"\nrest").unwrap().unwrap();
        assert_eq!(used, 1);
        assert_eq!(r.headers()["host"], "h");
    }

    #[test]
    fn cr_at_end_of_feed_then_non_lf_is_400() {
        let mut p = RequestParser::new(&Limits::default());
        assert!(p.feed(b"GET / HTTP/1.1\r\nHost: h\r").unwrap().is_none());
        let e = p.feed(b"X: y\r\n\r\n").unwrap_err();
        assert!(matches!(e, HeadError::BareCr { .. }), "{e:?}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn after_completion_and_after_error() {
        let mut p = RequestParser::new(&Limits::default());
        p.feed(WS_REQ).unwrap().unwrap();
        assert_eq!(p.feed(b"GET").err(), Some(HeadError::Finished));
        assert_eq!(p.feed(b"").err(), Some(HeadError::Finished));
        let mut p = RequestParser::new(&Limits::default());
        let e = p.feed(b"GET / HTTP/1.1\n").unwrap_err();
        assert_eq!(
            p.feed(b"Host: h\r\n\r\n").err(),
            Some(e.clone()),
            "errors are sticky"
        );
        // Empty feeds before completion are no-ops.
        let mut p = RequestParser::new(&Limits::default());
        assert!(p.feed(b"").unwrap().is_none());
        assert_eq!(p.bytes_seen(), 0);
    }

    #[test]
    fn too_large_triggers_as_soon_as_crossed() {
        let limits = Limits {
            max_head_bytes: 64,
            ..Limits::default()
        };
        // A head of exactly the limit is accepted.
        let mut head = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        head.resize(60, b'v');
        head.extend_from_slice(b"\r\n\r\n");
        let (r, _) = RequestParser::new(&limits).feed(&head).unwrap().unwrap();
        assert_eq!(r.headers().len(), 2);
        // One byte more fails, fed whole or byte by byte, at byte 65.
        let mut big = head.clone();
        big.insert(30, b'v');
        let e = RequestParser::new(&limits).feed(&big).unwrap_err();
        assert_eq!(e, HeadError::TooLarge { limit: 64 });
        assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let (r, _) = feed_bytewise(&big, &limits);
        assert_eq!(r.unwrap_err(), HeadError::TooLarge { limit: 64 });
        // A never-ending line fails after limit + 1 bytes, before any LF.
        let mut p = RequestParser::new(&limits);
        assert!(p.feed(&[b'a'; 64]).unwrap().is_none());
        assert_eq!(p.feed(b"a").err(), Some(HeadError::TooLarge { limit: 64 }));
        // A huge read is refused without looking past the budget.
        let mut p = RequestParser::new(&limits);
        assert_eq!(
            p.feed(&vec![b'a'; 1 << 20]).err(),
            Some(HeadError::TooLarge { limit: 64 })
        );
        assert!(p.scanner.work <= 64);
    }

    #[test]
    fn default_limit_is_16k() {
        let mut head = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        head.resize(17 * 1024, b'v');
        assert_eq!(parse_err(&head), HeadError::TooLarge { limit: 16 * 1024 });
    }

    #[test]
    fn too_many_headers() {
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let ok = req("GET / HTTP/1.1\nHost: h\nA: 1\nB: 2\n\n");
        assert!(RequestParser::new(&limits).feed(&ok).unwrap().is_some());
        let bad = req("GET / HTTP/1.1\nHost: h\nA: 1\nB: 2\nC: 3\n\n");
        let e = RequestParser::new(&limits).feed(&bad).unwrap_err();
        assert_eq!(e, HeadError::TooManyHeaders { limit: 3 });
        assert_eq!(e.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        // Default: 100 fields.
        let mut h = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..100 {
            h.extend_from_slice(format!("x{i}: 1\r\n").as_bytes());
        }
        h.extend_from_slice(b"\r\n");
        assert_eq!(parse_err(&h), HeadError::TooManyHeaders { limit: 100 });
    }

    #[test]
    fn bare_lf_is_400() {
        let e = assert_400(b"GET / HTTP/1.1\nHost: h\r\n\r\n");
        assert_eq!(e, HeadError::BareLf { at: 14 });
        let e = assert_400(b"GET / HTTP/1.1\r\nHost: h\n\r\n");
        assert!(matches!(e, HeadError::BareLf { .. }));
        let e = assert_400(b"GET / HTTP/1.1\r\nHost: h\r\n\n");
        assert!(matches!(e, HeadError::BareLf { .. }));
    }

    #[test]
    fn bare_cr_is_400() {
        let e = assert_400(b"GET / HTTP/1.1\r\nHost: h\rX: 1\r\n\r\n");
        assert_eq!(e, HeadError::BareCr { at: 23 });
        let e = assert_400(b"GET /\r HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(matches!(e, HeadError::BareCr { .. }));
        let e = assert_400(b"GET / HTTP/1.1\r\nHo\rst: h\r\n\r\n");
        assert!(matches!(e, HeadError::BareCr { .. }));
    }

    #[test]
    fn obs_fold_is_400() {
        let e = assert_400(&req("GET / HTTP/1.1\nHost: h\nX: a\n  b\n\n"));
        assert!(matches!(e, HeadError::ObsFold { .. }));
        let e = assert_400(&req("GET / HTTP/1.1\nHost: h\n\tX: a\n\n"));
        assert!(matches!(e, HeadError::ObsFold { .. }));
    }

    #[test]
    fn control_bytes_are_400_but_htab_and_obs_text_ok_in_values() {
        for bad in [&b"X: a\0b"[..], b"X: a\x01", b"X: \x7f", b"X: a\x1bb"] {
            let data = [&b"GET / HTTP/1.1\r\nHost: h\r\n"[..], bad, b"\r\n\r\n"].concat();
            let e = assert_400(&data);
            assert!(matches!(e, HeadError::ControlByte { .. }), "{e:?}");
        }
        let e = assert_400(b"GET /\0 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(e, HeadError::ControlByte { byte: 0, at: 5 });
        let e = assert_400(b"GET / HTTP/1.1\r\nX\0: a\r\nHost: h\r\n\r\n");
        assert!(matches!(e, HeadError::ControlByte { byte: 0, .. }));
        let (r, _) = parse_all(b"GET / HTTP/1.1\r\nHost: h\r\nX: a\tb \xe9\xff\t \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.headers()["x"].as_bytes(), b"a\tb \xe9\xff");
    }

    #[test]
    fn values_are_ows_trimmed() {
        let (r, _) = parse_all(b"GET / HTTP/1.1\r\nHost:h\r\nX:  \t a b \t\r\nY:\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.headers()["host"], "h");
        assert_eq!(r.headers()["x"], "a b");
        assert_eq!(r.headers()["y"], "");
    }

    #[test]
    fn header_name_errors() {
        let e = assert_400(&req("GET / HTTP/1.1\nHost: h\nX-Foo : 1\n\n"));
        assert!(
            matches!(e, HeadError::HeaderLine { .. }),
            "space before colon: {e:?}"
        );
        let e = assert_400(&req("GET / HTTP/1.1\nHost: h\nX-Foo\t: 1\n\n"));
        assert!(matches!(e, HeadError::HeaderLine { .. }));
        let e = assert_400(&req("GET / HTTP/1.1\nHost: h\n: 1\n\n"));
        assert_eq!(
            e,
            HeadError::HeaderLine {
                at: 25,
                why: "empty field name"
            }
        );
        let e = assert_400(&req("GET / HTTP/1.1\nHost: h\nX(a): 1\n\n"));
        assert_eq!(e, HeadError::InvalidHeaderName { at: 26 });
        let e = assert_400(b"GET / HTTP/1.1\r\nHost: h\r\nX\xe9: 1\r\n\r\n");
        assert!(matches!(e, HeadError::InvalidHeaderName { .. }));
        let e = assert_400(&req("GET / HTTP/1.1\nHost: h\nNoColon\n\n"));
        assert!(matches!(
            e,
            HeadError::HeaderLine {
                why: "no colon after the field name",
                ..
            }
        ));
    }

    #[test]
    fn request_line_errors() {
        for bad in [
            "GET  / HTTP/1.1",
            "GET / HTTP/1.1 ",
            " GET / HTTP/1.1",
            "GET /",
            "GET / HTTP/1.1 x",
            "GET\t/ HTTP/1.1",
            "G(T / HTTP/1.1",
            "GET / http/1.1",
            "GET / HTTP/1",
            "GET / HTTP/1.1.1",
            "GET /a b HTTP/1.1",
            "GET /\u{e9} HTTP/1.1",
            "GET",
        ] {
            let data = req(&format!("{bad}\nHost: h\n\n"));
            let e = assert_400(&data);
            assert!(
                matches!(e, HeadError::StartLine(_) | HeadError::ControlByte { .. }),
                "{bad:?}: {e:?}"
            );
        }
    }

    #[test]
    fn unsupported_version_is_505() {
        for v in ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0"] {
            let e = parse_err(&req(&format!("GET / {v}\nHost: h\n\n")));
            assert_eq!(e, HeadError::UnsupportedVersion(v.into()));
            assert_eq!(e.status(), StatusCode::HTTP_VERSION_NOT_SUPPORTED);
        }
    }

    #[test]
    fn http10_without_host_is_fine() {
        let (r, _) = parse_all(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.version(), Version::HTTP_10);
    }

    #[test]
    fn target_forms() {
        let ok = |s: &str| {
            parse_all(&req(&format!("{s}\nHost: h:1\n\n")))
                .unwrap()
                .unwrap()
                .0
        };
        assert_eq!(ok("OPTIONS * HTTP/1.1").uri(), "*");
        let r = ok("GET http://example.com/x?y HTTP/1.1");
        assert_eq!(r.uri().host(), Some("example.com"));
        assert_eq!(r.uri().path(), "/x");
        let r = ok("CONNECT example.com:443 HTTP/1.1");
        assert_eq!(
            r.uri().authority().map(|a| a.as_str()),
            Some("example.com:443")
        );
        ok("GET /%20?a=b&c HTTP/1.1");
        for bad in [
            "GET * HTTP/1.1",
            "GET example.com:443 HTTP/1.1",
            "GET x/y HTTP/1.1",
            "GET http:/x HTTP/1.1",
            "CONNECT /x HTTP/1.1",
            "CONNECT example.com HTTP/1.1",
            "CONNECT http://example.com:443/ HTTP/1.1",
            "CONNECT u@example.com:443 HTTP/1.1",
            "OPTIONS ** HTTP/1.1",
        ] {
            let e = assert_400(&req(&format!("{bad}\nHost: h\n\n")));
            assert!(matches!(e, HeadError::StartLine(_)), "{bad}: {e:?}");
        }
    }

    #[test]
    fn host_rules() {
        let e = assert_400(&req("GET / HTTP/1.1\nX: 1\n\n"));
        assert!(matches!(e, HeadError::Host(_)));
        let e = assert_400(&req("GET / HTTP/1.1\nHost: a\nhost: a\n\n"));
        assert_eq!(e, HeadError::Host("more than one Host field"));
        let e = assert_400(&req("GET / HTTP/1.0\nHost: a\nHost: b\n\n"));
        assert_eq!(e, HeadError::Host("more than one Host field"));
        for bad in ["a b", "u@h", "h:x", "h:", "h:123456", "h/p", "[::1"] {
            let e = assert_400(&req(&format!("GET / HTTP/1.1\nHost: {bad}\n\n")));
            assert!(matches!(e, HeadError::Host(_)), "{bad}");
        }
        for good in ["h", "h:80", "[::1]:8080", "127.0.0.1"] {
            assert!(
                parse_all(&req(&format!("GET / HTTP/1.1\nHost: {good}\n\n")))
                    .unwrap()
                    .is_some(),
                "{good}"
            );
        }
        // Empty Host is allowed (RFC 9110 §7.2, target without authority).
        assert!(parse_all(&req("GET / HTTP/1.1\nHost:\n\n"))
            .unwrap()
            .is_some());
    }

    #[test]
    fn framing_rules() {
        let e = assert_400(&req(
            "POST / HTTP/1.1\nHost: h\nContent-Length: 3\nTransfer-Encoding: chunked\n\n",
        ));
        assert!(matches!(e, HeadError::Framing(_)));
        let e = assert_400(&req(
            "POST / HTTP/1.1\nHost: h\nContent-Length: 3\nContent-Length: 4\n\n",
        ));
        assert_eq!(
            e,
            HeadError::Framing("several different Content-Length values")
        );
        let e = assert_400(&req("POST / HTTP/1.1\nHost: h\nContent-Length: 3, 4\n\n"));
        assert_eq!(
            e,
            HeadError::Framing("several different Content-Length values")
        );
        for bad in ["-1", "+3", "3a", "", "0x10", "99999999999999999999"] {
            let e = assert_400(&req(&format!(
                "POST / HTTP/1.1\nHost: h\nContent-Length: {bad}\n\n"
            )));
            assert!(matches!(e, HeadError::Framing(_)), "{bad}");
        }
        let e = assert_400(&req(
            "POST / HTTP/1.1\nHost: h\nTransfer-Encoding: chunked, gzip\n\n",
        ));
        assert!(matches!(e, HeadError::Framing(_)));
        let e = assert_400(&req("POST / HTTP/1.0\nTransfer-Encoding: chunked\n\n"));
        assert!(matches!(e, HeadError::Framing(_)));
        // Identical repeats are one length (RFC 9110 §8.6).
        let (r, _) = parse_all(&req(
            "POST / HTTP/1.1\nHost: h\nContent-Length: 3\nContent-Length: 3, 3\n\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(r.headers().get_all("content-length").iter().count(), 2);
        assert!(parse_all(&req(
            "POST / HTTP/1.1\nHost: h\nTransfer-Encoding: gzip, Chunked\n\n"
        ))
        .unwrap()
        .is_some());
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let data = req("\n\nGET / HTTP/1.1\nHost: h\n\n");
        let (r, used) = parse_all(&data).unwrap().unwrap();
        assert_eq!(used, data.len());
        assert_eq!(r.uri(), "/");
    }

    #[test]
    fn response_parser() {
        let data =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x02hi";
        let mut p = ResponseParser::new(&Limits::default());
        let (r, used) = p.feed(data).unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(
            r.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(data.get(used..), Some(&b"\x81\x02hi"[..]));
        assert_eq!(p.bytes_seen(), used);
        assert_eq!(p.feed(b"x").err(), Some(HeadError::Finished));
        // Byte at a time.
        let mut p = ResponseParser::new(&Limits::default());
        let mut got = None;
        for (i, b) in data.iter().enumerate() {
            if let Some((r, n)) = p.feed(std::slice::from_ref(b)).unwrap() {
                assert_eq!(n, 1);
                got = Some((r, i + 1));
                break;
            }
        }
        let (r2, end) = got.unwrap();
        assert_eq!(end, used);
        assert_eq!(r2.headers(), r.headers());
        // Empty and missing reason phrases.
        for line in [
            "HTTP/1.1 426 ",
            "HTTP/1.1 426",
            "HTTP/1.0 426 Upgrade Required \t\u{e9}",
        ] {
            let mut p = ResponseParser::new(&Limits::default());
            let (r, _) = p
                .feed(format!("{line}\r\n\r\n").as_bytes())
                .unwrap()
                .unwrap();
            assert_eq!(r.status(), StatusCode::UPGRADE_REQUIRED, "{line}");
        }
    }

    #[test]
    fn response_parser_errors() {
        let err = |s: &[u8]| ResponseParser::new(&Limits::default()).feed(s).unwrap_err();
        for bad in [
            &b"HTTP/1.1 10 X\r\n\r\n"[..],
            b"HTTP/1.1 1010 X\r\n\r\n",
            b"HTTP/1.1 abc X\r\n\r\n",
            b"HTTP/1.1 099 X\r\n\r\n",
            b"HTTP/1.1  101 X\r\n\r\n",
            b"HTTP/1.1\r\n\r\n",
            b"HTTP/1.1 101X\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
        ] {
            assert!(
                matches!(err(bad), HeadError::StartLine(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            err(b"HTTP/2.0 200 OK\r\n\r\n").status(),
            StatusCode::HTTP_VERSION_NOT_SUPPORTED
        );
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\nX: 1\r\n\r\n"),
            HeadError::BareLf { .. }
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 O\x01K\r\n\r\n"),
            HeadError::ControlByte { byte: 1, .. }
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nX: 1\r\n y\r\n\r\n"),
            HeadError::ObsFold { .. }
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            HeadError::Framing(_)
        ));
        let limits = Limits {
            max_head_bytes: 20,
            ..Limits::default()
        };
        let e = ResponseParser::new(&limits)
            .feed(b"HTTP/1.1 200 OK\r\nX: 12345\r\n\r\n")
            .unwrap_err();
        assert_eq!(e, HeadError::TooLarge { limit: 20 });
    }

    #[test]
    fn write_request_head_roundtrip() {
        let (r, _) = parse_all(WS_REQ).unwrap().unwrap();
        let mut out = Vec::new();
        write_request_head(&r, &mut out);
        assert!(out.starts_with(b"GET /chat?x=1 HTTP/1.1\r\nhost: example.com\r\n"));
        assert!(out.ends_with(b"\r\n\r\n"));
        let (r2, used) = parse_all(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(r2.headers(), r.headers());
        assert_eq!(r2.uri(), r.uri());

        let mut r = http::Request::new(());
        *r.uri_mut() = Uri::from_static("http://example.com");
        r.headers_mut()
            .insert(HOST, HeaderValue::from_static("example.com"));
        let mut out = Vec::new();
        write_request_head(&r, &mut out);
        assert_eq!(out, b"GET / HTTP/1.1\r\nhost: example.com\r\n\r\n");

        let mut r = http::Request::new(());
        *r.method_mut() = Method::OPTIONS;
        *r.uri_mut() = Uri::from_static("*");
        let mut out = Vec::new();
        write_request_head(&r, &mut out);
        assert_eq!(out, b"OPTIONS * HTTP/1.1\r\n\r\n");

        let mut r = http::Request::new(());
        *r.method_mut() = Method::CONNECT;
        *r.uri_mut() = Uri::from_static("example.com:443");
        *r.version_mut() = Version::HTTP_10;
        let mut out = Vec::new();
        write_request_head(&r, &mut out);
        assert_eq!(out, b"CONNECT example.com:443 HTTP/1.0\r\n\r\n");
    }

    #[test]
    fn write_response_head_format() {
        let resp = crate::upgrade::switching_protocols("websocket");
        let mut out = Vec::new();
        write_response_head(&resp, &mut out);
        assert_eq!(out, b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n");
        let (parsed, _) = ResponseParser::new(&Limits::default())
            .feed(&out)
            .unwrap()
            .unwrap();
        assert_eq!(parsed.headers(), resp.headers());
        let mut resp = http::Response::new(());
        *resp.status_mut() = StatusCode::from_u16(599).unwrap();
        let mut out = Vec::new();
        write_response_head(&resp, &mut out);
        assert_eq!(out, b"HTTP/1.1 599 \r\n\r\n");
    }

    #[test]
    fn reason_phrases_other_than_the_canonical_one_are_kept() {
        let parse = |d: &[u8]| {
            ResponseParser::new(&Limits::default())
                .feed(d)
                .unwrap()
                .unwrap()
                .0
        };
        let reason = |r: &http::Response<()>| {
            r.extensions()
                .get::<ReasonPhrase>()
                .map(|p| p.as_bytes().to_vec())
        };
        let custom = parse(b"HTTP/1.1 403 Origin not allowed\t(see docs) \xe9\r\n\r\n");
        assert_eq!(
            reason(&custom).as_deref(),
            Some(&b"Origin not allowed\t(see docs) \xe9"[..])
        );
        let mut out = Vec::new();
        write_response_head(&custom, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 403 Origin not allowed\t(see docs) \xe9\r\n\r\n"
        );
        // The canonical phrase, and none at all, are not stored.
        assert_eq!(
            reason(&parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")),
            None
        );
        let empty = parse(b"HTTP/1.1 200 \r\n\r\n");
        assert_eq!(reason(&empty).as_deref(), Some(&b""[..]));
        assert_eq!(
            reason(&parse(b"HTTP/1.1 404\r\n\r\n")).as_deref(),
            Some(&b""[..])
        );
        // What a reason phrase may not hold.
        assert!(ReasonPhrase::new(b"ok\r\nx: y").is_none());
        assert!(ReasonPhrase::new(b"a\x00").is_none());
        assert!(ReasonPhrase::new(b"a\x7f").is_none());
        assert!(ReasonPhrase::new(b"fine, thanks").is_some());
        assert_eq!(
            reason_of(&custom),
            "Origin not allowed\t(see docs) \u{fffd}"
        );
        assert_eq!(reason_of(&http::Response::new(())), "OK");
    }

    #[test]
    fn simple_response_format() {
        let mut extra = HeaderMap::new();
        extra.insert("sec-websocket-version", HeaderValue::from_static("13"));
        extra.insert("content-length", HeaderValue::from_static("999"));
        extra.insert("connection", HeaderValue::from_static("keep-alive"));
        let out = simple_response(StatusCode::BAD_REQUEST, &extra, "bad key\n");
        assert_eq!(
            out,
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 8\r\n\
connection: close\r\nsec-websocket-version: 13\r\n\r\nbad key\n"
        );
        let (r, used) = ResponseParser::new(&Limits::default())
            .feed(&out)
            .unwrap()
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(out.get(used..), Some(&b"bad key\n"[..]));
    }
}

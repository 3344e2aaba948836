//! Incremental HTTP/1.1 head parser with hard caps.
//!
//! STUB: API fixed, bodies to be written.

use crate::limits::Limits;

/// Why a head was refused. [`HeadError::status`] gives the HTTP status to answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("request head exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("bare LF line ending at byte {at}: lines must end with CRLF")]
    BareLf { at: usize },
    #[error("obsolete line folding (obs-fold) at byte {at}")]
    ObsFold { at: usize },
    #[error("NUL or control byte 0x{byte:02x} at byte {at}")]
    ControlByte { byte: u8, at: usize },
    #[error("invalid character in header name at byte {at}")]
    InvalidHeaderName { at: usize },
    #[error("malformed start line: {0}")]
    StartLine(String),
    #[error("malformed header line at byte {at}: {why}")]
    HeaderLine { at: usize, why: &'static str },
}

impl HeadError {
    /// 431 for the size and count caps, 400 for everything else.
    pub fn status(&self) -> http::StatusCode {
        todo!()
    }
}

/// Parses a request head fed in arbitrary pieces; bytes are scanned once.
pub struct RequestParser {}

impl RequestParser {
    pub fn new(_limits: &Limits) -> Self {
        todo!()
    }
    /// Feed the next bytes. On completion returns the request and how many
    /// bytes of `data` belonged to the head; the rest of `data` is what follows
    /// the head and must be kept by the caller.
    pub fn feed(&mut self, _data: &[u8]) -> Result<Option<(http::Request<()>, usize)>, HeadError> {
        todo!()
    }
    /// Bytes consumed so far (for the deadline and logs).
    pub fn bytes_seen(&self) -> usize {
        todo!()
    }
}

/// Same for a response head (client side).
pub struct ResponseParser {}

impl ResponseParser {
    pub fn new(_limits: &Limits) -> Self {
        todo!()
    }
    pub fn feed(&mut self, _data: &[u8]) -> Result<Option<(http::Response<()>, usize)>, HeadError> {
        todo!()
    }
}

/// Serialize a request head (request line, headers, blank line).
pub fn write_request_head(_req: &http::Request<()>, _out: &mut Vec<u8>) {
    todo!()
}

/// Serialize a response head (status line, headers, blank line).
pub fn write_response_head(_resp: &http::Response<()>, _out: &mut Vec<u8>) {
    todo!()
}

/// A complete small response: status, `Content-Type: text/plain`,
/// `Content-Length`, `Connection: close` plus `extra` headers, and `body`.
pub fn simple_response(_status: http::StatusCode, _extra: &http::HeaderMap, _body: &str) -> Vec<u8> {
    todo!()
}

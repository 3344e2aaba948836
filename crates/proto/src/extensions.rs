//! `Sec-WebSocket-Extensions` parsing (RFC 6455 §9.1), hand-written and linear.
//!
//! STUB: API fixed, bodies to be written.

/// One extension in an offer or response: `name; p1; p2=v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    pub name: String,
    /// Parameters in order; a quoted value is unquoted.
    pub params: Vec<(String, Option<String>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed Sec-WebSocket-Extensions header: {0}")]
pub struct ExtensionParseError(pub String);

/// Parse every value of the header (values may be split over several lines;
/// pass them in order). Linear in the input length.
pub fn parse_extensions<'a>(
    _values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<ExtensionOffer>, ExtensionParseError> {
    todo!()
}

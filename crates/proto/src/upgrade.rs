//! The generic HTTP/1.1 Upgrade mechanism (RFC 9110 §7.8): token lists in
//! `Connection` and `Upgrade`, and the 101 / 426 response builders.
//!
//! STUB: API fixed, bodies to be written.

use http::HeaderMap;

/// Comma-separated tokens of every line of header `name`, trimmed, empty
/// elements skipped, in order.
pub fn header_tokens<'a>(_headers: &'a HeaderMap, _name: &str) -> impl Iterator<Item = &'a str> + 'a {
    std::iter::empty()
}

/// Whether `Connection` (any line, any position, any case) holds `token`.
pub fn connection_has(_headers: &HeaderMap, _token: &str) -> bool {
    todo!()
}

/// A protocol token from `Upgrade`: `name[/version]`, compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolToken {
    pub name: String,
    pub version: Option<String>,
}

/// The protocols a request offers to switch to, in the client's order, or
/// `None` when it offers none that counts: no `upgrade` token in
/// `Connection`, or HTTP/1.0.
pub fn upgrade_offer(_req: &http::Request<()>) -> Option<Vec<ProtocolToken>> {
    todo!()
}

/// `101 Switching Protocols` with `Upgrade: token` and `Connection: Upgrade`.
pub fn switching_protocols(_token: &str) -> http::Response<()> {
    todo!()
}

/// `426 Upgrade Required` listing `tokens` in `Upgrade`, with `Connection: Upgrade`.
pub fn upgrade_required(_tokens: &[&str]) -> http::Response<()> {
    todo!()
}

//! The generic HTTP/1.1 Upgrade mechanism (RFC 9110 §7.8): token lists in
//! `Connection` and `Upgrade`, the 101 / 426 response builders, and the
//! hop-by-hop field list a gateway strips (RFC 9110 §7.6.1).
//!
//! Everything here is bounded: scanning a header is linear in its size, and
//! [`upgrade_offer`] refuses (with an error the caller answers with 400) an
//! `Upgrade` list longer than [`MAX_UPGRADE_TOKENS`] elements or holding a
//! token longer than [`MAX_PROTOCOL_TOKEN_LEN`] bytes, so hostile input never
//! makes it allocate more than a few KiB.

use std::fmt;

use http::header::{AsHeaderName, CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, StatusCode, Version};

/// Most elements [`upgrade_offer`] accepts in the `Upgrade` header (all lines
/// together, empty elements not counted). Real clients send one or two.
pub const MAX_UPGRADE_TOKENS: usize = 32;

/// Longest `name[/version]` protocol token [`upgrade_offer`] accepts, in bytes.
pub const MAX_PROTOCOL_TOKEN_LEN: usize = 128;

/// RFC 9110 §5.6.2 `tchar`, as a table (one load per byte in hot loops).
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = matches!(i as u8,
            b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.'
            | b'^' | b'_' | b'`' | b'|' | b'~'
            | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z');
        i += 1;
    }
    t
};

/// RFC 9110 §5.6.2 `tchar`.
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// Whether `s` is a non-empty RFC 9110 `token`.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
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

/// The raw comma-separated elements of every line of header `name`, trimmed of
/// OWS, empty elements skipped. Works on bytes, so opaque values are fine.
fn header_elements<'a, K: AsHeaderName>(
    headers: &'a HeaderMap,
    name: K,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Comma-separated tokens of every line of header `name`, trimmed of OWS
/// (SP / HTAB), empty list elements skipped, in order.
///
/// The split is on every comma (these are token lists, like `Connection` and
/// `Upgrade`; quoted strings are not understood). An element that is not
/// valid UTF-8 (obs-text bytes) is skipped, never a panic; use
/// [`upgrade_offer`] when such an element must be an error instead.
pub fn header_tokens<'a, K: AsHeaderName>(
    headers: &'a HeaderMap,
    name: K,
) -> impl Iterator<Item = &'a str> + 'a {
    header_elements(headers, name).filter_map(|e| std::str::from_utf8(e).ok())
}

/// Whether `Connection` (any line, any position, any case) holds `token`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    let token = token.as_bytes();
    header_elements(headers, &CONNECTION).any(|e| e.eq_ignore_ascii_case(token))
}

/// Whether `name` is a hop-by-hop field a proxy or gateway must not forward
/// (case-insensitive).
///
/// The list is RFC 9110 §7.6.1 (`Connection` and the fields it names as
/// examples: `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`,
/// `Upgrade`) plus the de-facto ones that RFC 2616 §13.5.1 listed and that
/// reverse proxies (Go's `httputil.ReverseProxy`, HAProxy, nginx) still strip:
/// `Trailer`, `Proxy-Authenticate`, `Proxy-Authorization` (credentials meant
/// for the proxy must not leak upstream). Fields *named* in `Connection` are
/// hop-by-hop too; get them with `header_tokens(headers, "connection")`.
pub fn is_hop_by_hop(name: &str) -> bool {
    const HOP_BY_HOP: [&str; 9] = [
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
    ];
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// A protocol token from `Upgrade`: `name[/version]`, compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolToken {
    /// The protocol name, e.g. `websocket` or `TLS`.
    pub name: String,
    /// The version after `/`, e.g. `1.3` in `TLS/1.3`.
    pub version: Option<String>,
}

impl ProtocolToken {
    /// Parses `name[/version]` (RFC 9110 §7.8 `protocol`); both parts must be
    /// non-empty RFC 9110 tokens, otherwise `None`. No trimming is done.
    pub fn parse(s: &str) -> Option<Self> {
        Self::parse_bytes(s.as_bytes())
    }

    fn parse_bytes(s: &[u8]) -> Option<Self> {
        let (name, version) = match s.iter().position(|&b| b == b'/') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let version_ok = match version {
            Some(v) => is_token(v),
            None => true,
        };
        if !is_token(name) || !version_ok {
            return None;
        }
        // Tokens are ASCII, so these conversions cannot fail; stay panic-free anyway.
        let name = std::str::from_utf8(name).ok()?.to_owned();
        let version = match version {
            Some(v) => Some(std::str::from_utf8(v).ok()?.to_owned()),
            None => None,
        };
        Some(ProtocolToken { name, version })
    }

    /// Same protocol and version, ASCII case-insensitively. A token without a
    /// version only matches another without one (`TLS` is not `TLS/1.3`).
    pub fn matches(&self, other: &ProtocolToken) -> bool {
        self.name.eq_ignore_ascii_case(&other.name)
            && match (&self.version, &other.version) {
                (None, None) => true,
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                _ => false,
            }
    }

    /// Whether the name (ignoring any version) is `name`, case-insensitively.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// Whether `text` writes this token (`name` or `name/version`, as
    /// `Display` does), ASCII case-insensitively, without formatting it.
    pub fn written_as(&self, text: &str) -> bool {
        match (&self.version, text.split_once('/')) {
            (None, None) => self.name.eq_ignore_ascii_case(text),
            (Some(v), Some((name, version))) => {
                self.name.eq_ignore_ascii_case(name) && v.eq_ignore_ascii_case(version)
            }
            _ => false,
        }
    }
}

impl fmt::Display for ProtocolToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(v) = &self.version {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Why an `Upgrade` header was refused. Answer with [`UpgradeError::status`] (400).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeError {
    /// More than [`MAX_UPGRADE_TOKENS`] protocols offered.
    #[error(
        "the Upgrade header lists more than {limit} protocols; \
         send only the protocols you can actually speak"
    )]
    TooManyTokens {
        /// [`MAX_UPGRADE_TOKENS`].
        limit: usize,
    },
    /// A protocol token longer than [`MAX_PROTOCOL_TOKEN_LEN`].
    #[error(
        "a protocol in the Upgrade header is longer than {limit} bytes; \
         protocol tokens are short names like `websocket`"
    )]
    TokenTooLong {
        /// [`MAX_PROTOCOL_TOKEN_LEN`].
        limit: usize,
    },
    /// Something that is not `name[/version]` made of token characters.
    #[error(
        "`{token}` in the Upgrade header is not a protocol token (`name` or `name/version`, \
         RFC 9110 token characters only); fix the client's Upgrade header"
    )]
    InvalidToken {
        /// The offending element, as sent.
        token: String,
    },
}

impl UpgradeError {
    /// Always `400 Bad Request`.
    pub fn status(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }
}

/// The protocols a request offers to switch to, in the client's order.
///
/// `Ok(None)` when it offers none that counts: the request is not HTTP/1.1
/// (RFC 9110 §7.8: a server ignores `Upgrade` in HTTP/1.0, and HTTP/2 and
/// later forbid it), `Connection` lacks the `upgrade` token, or `Upgrade` is
/// absent or empty.
///
/// `Err` (answer 400) when `Upgrade` has more than [`MAX_UPGRADE_TOKENS`]
/// elements, an element longer than [`MAX_PROTOCOL_TOKEN_LEN`], or an element
/// that is not `name[/version]` made of token characters. The work and
/// memory are bounded by those limits whatever the peer sends.
///
/// API note: the skeleton returned `Option<Vec<ProtocolToken>>`; the `Result`
/// wrapper is what lets the caller answer 400 to a hostile `Upgrade`.
pub fn upgrade_offer(req: &http::Request<()>) -> Result<Option<Vec<ProtocolToken>>, UpgradeError> {
    if req.version() != Version::HTTP_11 {
        return Ok(None);
    }
    if !connection_has(req.headers(), "upgrade") {
        return Ok(None);
    }
    let mut out = Vec::new();
    for element in header_elements(req.headers(), &UPGRADE) {
        if out.len() == MAX_UPGRADE_TOKENS {
            return Err(UpgradeError::TooManyTokens {
                limit: MAX_UPGRADE_TOKENS,
            });
        }
        if element.len() > MAX_PROTOCOL_TOKEN_LEN {
            return Err(UpgradeError::TokenTooLong {
                limit: MAX_PROTOCOL_TOKEN_LEN,
            });
        }
        match ProtocolToken::parse_bytes(element) {
            Some(t) => out.push(t),
            None => {
                return Err(UpgradeError::InvalidToken {
                    token: String::from_utf8_lossy(element).into_owned(),
                })
            }
        }
    }
    Ok(if out.is_empty() { None } else { Some(out) })
}

/// `101 Switching Protocols` with `Upgrade: token` and `Connection: Upgrade`.
///
/// `token` should be a valid `name[/version]` (e.g. `websocket`, or a
/// [`ProtocolToken`]'s `to_string()`). If it is not, the `Upgrade` header is
/// left out rather than panicking; the peer will then refuse the switch.
pub fn switching_protocols(token: &str) -> http::Response<()> {
    let mut resp = http::Response::new(());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    // Room for the fields a WebSocket 101 adds (accept, subprotocol, extensions).
    headers.reserve(5);
    if token == "websocket" {
        // The common case, without copying the token.
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    } else if ProtocolToken::parse(token).is_some() {
        if let Ok(v) = HeaderValue::from_str(token) {
            headers.insert(UPGRADE, v);
        }
    }
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    resp
}

/// `426 Upgrade Required` listing `tokens` in `Upgrade` (`a, b`, in the given
/// order), with `Connection: Upgrade`. Tokens that are not valid
/// `name[/version]` are skipped rather than panicking.
pub fn upgrade_required(tokens: &[&str]) -> http::Response<()> {
    let mut resp = http::Response::new(());
    *resp.status_mut() = StatusCode::UPGRADE_REQUIRED;
    let list = tokens
        .iter()
        .copied()
        .filter(|t| ProtocolToken::parse(t).is_some())
        .collect::<Vec<_>>()
        .join(", ");
    if !list.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&list) {
            resp.headers_mut().insert(UPGRADE, v);
        }
    }
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn request(version: Version, pairs: &[(&str, &[u8])]) -> http::Request<()> {
        let mut r = http::Request::new(());
        *r.version_mut() = version;
        *r.headers_mut() = headers(pairs);
        r
    }

    fn tok(name: &str, version: Option<&str>) -> ProtocolToken {
        ProtocolToken {
            name: name.into(),
            version: version.map(Into::into),
        }
    }

    #[test]
    fn tchar_table_is_rfc9110() {
        let tchars =
            b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        for b in 0..=255u8 {
            assert_eq!(is_tchar(b), tchars.contains(&b), "byte 0x{b:02x}");
        }
    }

    #[test]
    fn tokens_split_trim_skip_empty_across_lines() {
        let h = headers(&[
            ("connection", b" keep-alive ,\tUpgrade,, ,"),
            ("connection", b"x-foo"),
            ("upgrade", b"websocket"),
        ]);
        let got: Vec<_> = header_tokens(&h, "connection").collect();
        assert_eq!(got, ["keep-alive", "Upgrade", "x-foo"]);
        let got: Vec<_> = header_tokens(&h, "Connection").collect();
        assert_eq!(
            got,
            ["keep-alive", "Upgrade", "x-foo"],
            "name is case-insensitive"
        );
        assert_eq!(header_tokens(&h, "x-missing").count(), 0);
    }

    #[test]
    fn tokens_skip_non_utf8_elements_without_panicking() {
        let h = headers(&[("connection", b"upgrade, \xff\xfe, close")]);
        let got: Vec<_> = header_tokens(&h, "connection").collect();
        assert_eq!(got, ["upgrade", "close"]);
    }

    #[test]
    fn connection_has_is_case_insensitive_any_line_any_position() {
        let h = headers(&[
            ("connection", b"keep-alive"),
            ("connection", b"close,  UpGrade "),
        ]);
        assert!(connection_has(&h, "upgrade"));
        assert!(connection_has(&h, "Keep-Alive"));
        assert!(!connection_has(&h, "upgrad"));
        assert!(!connection_has(&h, "pgrade"));
        let h = headers(&[("connection", b"upgrade-not")]);
        assert!(!connection_has(&h, "upgrade"), "substring is not a match");
        let h = headers(&[("connection", b"\xffupgrade")]);
        assert!(!connection_has(&h, "upgrade"));
        assert!(!connection_has(&HeaderMap::new(), "upgrade"));
    }

    #[test]
    fn protocol_token_parse() {
        assert_eq!(
            ProtocolToken::parse("websocket"),
            Some(tok("websocket", None))
        );
        assert_eq!(
            ProtocolToken::parse("TLS/1.3"),
            Some(tok("TLS", Some("1.3")))
        );
        assert_eq!(
            ProtocolToken::parse("HTTP/2.0"),
            Some(tok("HTTP", Some("2.0")))
        );
        for bad in [
            "",
            "/1",
            "a/",
            "a/b/c",
            "web socket",
            " websocket",
            "a,b",
            "a\"",
            "é",
            "a/(1)",
        ] {
            assert_eq!(ProtocolToken::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn protocol_token_matches_and_display() {
        let a = tok("WebSocket", None);
        assert!(a.matches(&tok("websocket", None)));
        assert!(!a.matches(&tok("websocket", Some("13"))));
        assert!(tok("TLS", Some("1.3")).matches(&tok("tls", Some("1.3"))));
        assert!(!tok("TLS", Some("1.3")).matches(&tok("tls", Some("1.2"))));
        assert!(!tok("TLS", Some("1.3")).matches(&tok("tls", None)));
        assert!(tok("TLS", Some("1.3")).is("tls"));
        assert_eq!(tok("TLS", Some("1.3")).to_string(), "TLS/1.3");
        assert_eq!(a.to_string(), "WebSocket");
    }

    #[test]
    fn written_as_agrees_with_display() {
        let tokens = [tok("WebSocket", None), tok("TLS", Some("1.3"))];
        let texts = [
            "websocket",
            "WEBSOCKET",
            "websocket/",
            "websocket/13",
            "tls",
            "tls/1.3",
            "TLS/1.3",
            "tls/1.2",
            "tls/1.3/x",
            "/1.3",
            "",
        ];
        for t in &tokens {
            for text in texts {
                let expected = t.to_string().eq_ignore_ascii_case(text);
                assert_eq!(t.written_as(text), expected, "{t} vs {text:?}");
            }
        }
        assert!(tokens[1].written_as("tls/1.3"));
    }

    #[test]
    fn hop_by_hop_list() {
        for h in [
            "Connection",
            "proxy-connection",
            "Keep-Alive",
            "TE",
            "transfer-encoding",
            "UPGRADE",
            "trailer",
            "proxy-authenticate",
            "Proxy-Authorization",
        ] {
            assert!(is_hop_by_hop(h), "{h}");
        }
        for h in [
            "host",
            "content-length",
            "sec-websocket-key",
            "cookie",
            "authorization",
            "t",
            "",
        ] {
            assert!(!is_hop_by_hop(h), "{h}");
        }
    }

    #[test]
    fn offer_in_client_order() {
        let r = request(
            Version::HTTP_11,
            &[
                ("connection", b"keep-alive, Upgrade"),
                ("upgrade", b"h2c, websocket"),
                ("upgrade", b"TLS/1.3"),
            ],
        );
        assert_eq!(
            upgrade_offer(&r),
            Ok(Some(vec![
                tok("h2c", None),
                tok("websocket", None),
                tok("TLS", Some("1.3"))
            ]))
        );
    }

    #[test]
    fn offer_none_without_connection_upgrade() {
        let r = request(
            Version::HTTP_11,
            &[("connection", b"keep-alive"), ("upgrade", b"websocket")],
        );
        assert_eq!(upgrade_offer(&r), Ok(None));
        let r = request(Version::HTTP_11, &[("upgrade", b"websocket")]);
        assert_eq!(upgrade_offer(&r), Ok(None));
    }

    #[test]
    fn offer_none_for_http10_and_older_and_h2() {
        for v in [Version::HTTP_10, Version::HTTP_09, Version::HTTP_2] {
            let r = request(v, &[("connection", b"upgrade"), ("upgrade", b"websocket")]);
            assert_eq!(upgrade_offer(&r), Ok(None), "{v:?}");
        }
    }

    #[test]
    fn offer_none_when_upgrade_absent_or_empty() {
        let r = request(Version::HTTP_11, &[("connection", b"upgrade")]);
        assert_eq!(upgrade_offer(&r), Ok(None));
        let r = request(
            Version::HTTP_11,
            &[("connection", b"upgrade"), ("upgrade", b" , ")],
        );
        assert_eq!(upgrade_offer(&r), Ok(None));
    }

    #[test]
    fn offer_bounded_token_count() {
        let many = vec!["p"; 1000].join(",");
        let r = request(
            Version::HTTP_11,
            &[("connection", b"upgrade"), ("upgrade", many.as_bytes())],
        );
        let e = upgrade_offer(&r).unwrap_err();
        assert_eq!(
            e,
            UpgradeError::TooManyTokens {
                limit: MAX_UPGRADE_TOKENS
            }
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        // Exactly the limit is fine.
        let ok = vec!["p"; MAX_UPGRADE_TOKENS].join(",");
        let r = request(
            Version::HTTP_11,
            &[("connection", b"upgrade"), ("upgrade", ok.as_bytes())],
        );
        assert_eq!(
            upgrade_offer(&r).unwrap().unwrap().len(),
            MAX_UPGRADE_TOKENS
        );
    }

    #[test]
    fn offer_bounded_token_length() {
        let long = "a".repeat(10 * 1024);
        let r = request(
            Version::HTTP_11,
            &[("connection", b"upgrade"), ("upgrade", long.as_bytes())],
        );
        assert_eq!(
            upgrade_offer(&r),
            Err(UpgradeError::TokenTooLong {
                limit: MAX_PROTOCOL_TOKEN_LEN
            })
        );
        let edge = "a".repeat(MAX_PROTOCOL_TOKEN_LEN);
        let r = request(
            Version::HTTP_11,
            &[("connection", b"upgrade"), ("upgrade", edge.as_bytes())],
        );
        assert!(upgrade_offer(&r).unwrap().is_some());
    }

    #[test]
    fn offer_invalid_token_is_error() {
        for bad in [&b"web socket"[..], b"websocket/", b"\xffws", b"a/b/c"] {
            let r = request(
                Version::HTTP_11,
                &[("connection", b"upgrade"), ("upgrade", bad)],
            );
            let e = upgrade_offer(&r).unwrap_err();
            assert!(matches!(e, UpgradeError::InvalidToken { .. }), "{bad:?}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn switching_protocols_response() {
        let r = switching_protocols("websocket");
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(r.headers()["upgrade"], "websocket");
        assert_eq!(r.headers()["connection"], "Upgrade");
        assert_eq!(r.headers().len(), 2);
        let r = switching_protocols("bad token\r\n");
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert!(r.headers().get("upgrade").is_none());
    }

    #[test]
    fn upgrade_required_response() {
        let r = upgrade_required(&["websocket", "TLS/1.3"]);
        assert_eq!(r.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(r.headers()["upgrade"], "websocket, TLS/1.3");
        assert_eq!(r.headers()["connection"], "Upgrade");
        let r = upgrade_required(&["websocket", "x\r\ny: z"]);
        assert_eq!(r.headers()["upgrade"], "websocket");
        let r = upgrade_required(&[]);
        assert!(r.headers().get("upgrade").is_none());
        assert_eq!(r.headers()["connection"], "Upgrade");
    }
}

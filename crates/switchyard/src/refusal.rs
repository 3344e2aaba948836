//! What a client tells its user when a server answers a WebSocket opening
//! handshake with something else than `101` (HTTP/1.1) or `200` (HTTP/2 and
//! HTTP/3 extended CONNECT): the likely cause, in a few words.

use http::StatusCode;
use switchyard_proto::HttpVersion;

/// The likely cause of `status` as the answer to an opening handshake over
/// `version`.
pub(crate) fn hint(status: StatusCode, version: HttpVersion) -> &'static str {
    let h1 = version == HttpVersion::Http1;
    match status.as_u16() {
        200..=299 if h1 => {
            "it ignored the Upgrade header; a proxy in front of it may be dropping \
             Upgrade/Connection, or the URL is not a WebSocket endpoint"
        }
        300..=399 => "it redirects (see Location in the response); connect to that URL instead",
        400 if h1 => "it found the upgrade request malformed (see the response body)",
        400 => "it found the extended CONNECT malformed (see the response body)",
        401 | 407 => "it requires authentication; add an Authorization header",
        403 => "it refused this client (Origin or access policy)",
        404 => "no WebSocket endpoint at this path; check the URL",
        405 | 501 if !h1 => {
            "it does not serve WebSocket over extended CONNECT at this path (RFC 8441, RFC 9220)"
        }
        426 => {
            "it requires another protocol or WebSocket version (see Upgrade / \
             Sec-WebSocket-Version)"
        }
        429 | 503 => "it is at a connection limit; retry later (see Retry-After)",
        431 => "the request headers are too large for it",
        500..=599 => "the server (or a proxy) failed; check its logs",
        _ => "see the response for the reason",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_version_gets_its_own_words_where_they_differ() {
        let h1 = HttpVersion::Http1;
        assert!(hint(StatusCode::OK, h1).contains("proxy"));
        assert!(hint(StatusCode::NOT_FOUND, h1).contains("path"));
        assert!(hint(StatusCode::BAD_REQUEST, h1).contains("upgrade request"));
        for v in [HttpVersion::Http2, HttpVersion::Http3] {
            assert!(hint(StatusCode::NOT_IMPLEMENTED, v).contains("extended CONNECT"));
            assert!(hint(StatusCode::METHOD_NOT_ALLOWED, v).contains("extended CONNECT"));
            assert!(hint(StatusCode::BAD_REQUEST, v).contains("extended CONNECT"));
        }
        assert!(hint(StatusCode::TOO_MANY_REQUESTS, h1).contains("Retry-After"));
    }
}

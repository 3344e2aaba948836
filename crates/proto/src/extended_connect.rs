//! A server's checks of an extended CONNECT request: RFC 8441 §4 (HTTP/2)
//! and RFC 9220 §3 (HTTP/3), which open a WebSocket on one stream.
//!
//! | check (in this order)                                   | error                 | status |
//! |---------------------------------------------------------|-----------------------|--------|
//! | version is HTTP/2 or HTTP/3                             | `ExtendedConnect`     | 400 |
//! | method is `CONNECT`                                     | `ExtendedConnect`     | 400 |
//! | `:protocol` is present                                  | `ExtendedConnect`     | 400 |
//! | `:scheme`, `:path` and `:authority` are present         | `ExtendedConnect`     | 400 |
//! | `:protocol` is `websocket` (ASCII case-insensitive)     | `UnsupportedProtocol` | 501 |
//! | one `Sec-WebSocket-Version: 13`                         | `BadVersion`          | 400 + `Sec-WebSocket-Version: 13` |
//! | origin, subprotocol, extensions ([`server_negotiate`])  | `Origin` / `Extensions` | 403 / 400 |
//!
//! [`ExtendedConnect::check`] is the first four rows, for any `:protocol`
//! (a proxy that tunnels what it does not serve itself);
//! [`ExtendedConnect::accept_websocket`] is the whole table.
//!
//! `ExtendedConnect` errors mean the request is malformed (RFC 9113 §8.1.1,
//! RFC 9114 §4.1.2): an HTTP/2 server answers the 400, an HTTP/3 server
//! resets the stream with H3_MESSAGE_ERROR. A bad version is a plain 400
//! naming the version, not HTTP/1.1's 426: there is no `Upgrade` to offer.

use http::header::SEC_WEBSOCKET_VERSION;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};

use crate::handshake::{
    joined, server_negotiate, HandshakeError, Rejection, ServerConfig, ServerNegotiation,
};

/// The parts of an HTTP/2 or HTTP/3 request head that an extended CONNECT
/// is judged on. Pseudo-header fields are `None` when absent; an empty
/// `:scheme`, `:authority` or `:path` counts as absent.
#[derive(Debug, Clone, Copy)]
pub struct ExtendedConnect<'a> {
    /// The HTTP version the request came in (HTTP/2 or HTTP/3 to pass).
    pub version: Version,
    /// `:method`.
    pub method: &'a Method,
    /// `:protocol` (RFC 8441 §4), e.g. `websocket`.
    pub protocol: Option<&'a str>,
    /// `:scheme`.
    pub scheme: Option<&'a str>,
    /// `:authority`.
    pub authority: Option<&'a str>,
    /// `:path`, with the query.
    pub path: Option<&'a str>,
    /// The regular header fields.
    pub headers: &'a HeaderMap,
}

impl<'a> ExtendedConnect<'a> {
    /// The head of `req`, whose URI carries `:scheme`, `:authority` and
    /// `:path`, with the request's `:protocol` (hyper keeps it in the
    /// extensions as `hyper::ext::Protocol`).
    pub fn from_request<B>(req: &'a Request<B>, protocol: Option<&'a str>) -> Self {
        let uri = req.uri();
        let present = |s: &'a str| Some(s).filter(|s| !s.is_empty());
        ExtendedConnect {
            version: req.version(),
            method: req.method(),
            protocol,
            scheme: uri.scheme_str().and_then(present),
            authority: uri.authority().map(|a| a.as_str()).and_then(present),
            path: uri.path_and_query().map(|pq| pq.as_str()).and_then(present),
            headers: req.headers(),
        }
    }

    /// Whether this is a well-formed extended CONNECT, for any protocol: the
    /// first four rows of the module table. Returns the `:protocol`.
    pub fn check(&self) -> Result<&'a str, HandshakeError> {
        let malformed = |why: String| Err(HandshakeError::ExtendedConnect(why));
        if self.version != Version::HTTP_2 && self.version != Version::HTTP_3 {
            return malformed(format!(
                "the request is {:?}; extended CONNECT exists in HTTP/2 and HTTP/3 only \
                 (over HTTP/1.1 a WebSocket is a GET with Upgrade)",
                self.version
            ));
        }
        if self.method != Method::CONNECT {
            return malformed(format!(
                "method {}: an extended CONNECT (a WebSocket over HTTP/2 or HTTP/3) is \
                 opened with CONNECT and :protocol = websocket",
                self.method
            ));
        }
        let Some(protocol) = self.protocol else {
            return malformed(
                "CONNECT without :protocol on a WebSocket resource; send :protocol = websocket \
                 (after the server's SETTINGS_ENABLE_CONNECT_PROTOCOL = 1)"
                    .into(),
            );
        };
        let missing: Vec<&str> = [
            (":scheme", self.scheme),
            (":path", self.path),
            (":authority", self.authority),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.is_none().then_some(name))
        .collect();
        if !missing.is_empty() {
            return malformed(format!(
                "missing {}; an extended CONNECT carries :scheme, :path and :authority",
                missing.join(", ")
            ));
        }
        Ok(protocol)
    }

    /// Accept a WebSocket: the whole module table. `Ok` holds what was
    /// negotiated and the headers of the 200; `Err` the refusal to send
    /// (a [`HandshakeError::ExtendedConnect`] one is a malformed request).
    #[allow(clippy::result_large_err)]
    pub fn accept_websocket(&self, cfg: &ServerConfig) -> Result<ServerNegotiation, Rejection> {
        let protocol = self.check()?;
        if !protocol.eq_ignore_ascii_case("websocket") {
            return Err(HandshakeError::UnsupportedProtocol(protocol.to_owned()).into());
        }
        let mut versions = self.headers.get_all(SEC_WEBSOCKET_VERSION).iter();
        match (versions.next(), versions.next()) {
            (Some(v), None) if v.as_bytes() == b"13" => {}
            _ => {
                let mut response = Response::new(());
                *response.status_mut() = StatusCode::BAD_REQUEST;
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
                return Err(Rejection {
                    response,
                    error: HandshakeError::BadVersion(joined(self.headers, &SEC_WEBSOCKET_VERSION)),
                });
            }
        }
        server_negotiate(self.headers, cfg).map_err(Rejection::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::DeflateConfig;
    use crate::handshake::OriginPolicy;

    fn request(method: Method, uri: &str) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = method;
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = uri.parse().unwrap();
        req.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        req
    }

    fn websocket() -> Request<()> {
        request(Method::CONNECT, "https://example.com/chat?room=1")
    }

    fn refusal(req: &Request<()>, protocol: Option<&str>) -> Rejection {
        ExtendedConnect::from_request(req, protocol)
            .accept_websocket(&ServerConfig::default())
            .unwrap_err()
    }

    #[test]
    fn from_request_reads_the_pseudo_headers_from_the_uri() {
        let req = websocket();
        let head = ExtendedConnect::from_request(&req, Some("websocket"));
        assert_eq!(head.scheme, Some("https"));
        assert_eq!(head.authority, Some("example.com"));
        assert_eq!(head.path, Some("/chat?room=1"));
        assert_eq!(head.check(), Ok("websocket"));
        let origin_form = request(Method::CONNECT, "/chat");
        let head = ExtendedConnect::from_request(&origin_form, None);
        assert_eq!((head.scheme, head.authority), (None, None));
    }

    #[test]
    fn websocket_in_any_case_is_accepted_on_h2_and_h3() {
        for (version, protocol) in [
            (Version::HTTP_2, "websocket"),
            (Version::HTTP_3, "WebSocket"),
        ] {
            let mut req = websocket();
            *req.version_mut() = version;
            let n = ExtendedConnect::from_request(&req, Some(protocol))
                .accept_websocket(&ServerConfig::default())
                .unwrap();
            assert!(n.headers.is_empty(), "{version:?}");
        }
    }

    #[test]
    fn malformed_requests_are_400_extended_connect() {
        let mut http1 = websocket();
        *http1.version_mut() = Version::HTTP_11;
        let cases = [
            (http1, Some("websocket"), "HTTP/1.1"),
            (
                request(Method::GET, "https://example.com/"),
                Some("websocket"),
                "method GET",
            ),
            (websocket(), None, "without :protocol"),
            (
                request(Method::CONNECT, "/chat"),
                Some("websocket"),
                "missing :scheme, :authority",
            ),
            (
                request(Method::CONNECT, "example.com:443"),
                Some("websocket"),
                "missing :scheme, :path",
            ),
        ];
        for (req, protocol, why) in cases {
            let rej = refusal(&req, protocol);
            assert_eq!(rej.response.status(), StatusCode::BAD_REQUEST, "{why}");
            match rej.error {
                HandshakeError::ExtendedConnect(m) => assert!(m.contains(why), "{m}"),
                e => panic!("{why}: {e:?}"),
            }
        }
    }

    #[test]
    fn other_protocols_pass_check_and_are_501_for_a_websocket() {
        let req = websocket();
        let head = ExtendedConnect::from_request(&req, Some("connect-udp"));
        assert_eq!(head.check(), Ok("connect-udp"));
        let rej = refusal(&req, Some("connect-udp"));
        assert_eq!(rej.response.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(
            rej.error,
            HandshakeError::UnsupportedProtocol("connect-udp".into())
        );
        // A malformed request is malformed whatever its protocol.
        let bad = request(Method::CONNECT, "/x");
        let rej = refusal(&bad, Some("connect-udp"));
        assert!(matches!(rej.error, HandshakeError::ExtendedConnect(_)));
    }

    #[test]
    fn bad_version_is_400_naming_13_without_upgrade() {
        for v in [None, Some("8"), Some("13, 13")] {
            let mut req = websocket();
            req.headers_mut().remove(SEC_WEBSOCKET_VERSION);
            if let Some(v) = v {
                req.headers_mut()
                    .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static(v));
            }
            let rej = refusal(&req, Some("websocket"));
            assert_eq!(rej.response.status(), StatusCode::BAD_REQUEST);
            assert_eq!(rej.response.headers()[SEC_WEBSOCKET_VERSION], "13");
            assert!(rej.response.headers().get("upgrade").is_none());
            assert_eq!(
                rej.error,
                HandshakeError::BadVersion(v.unwrap_or("").into())
            );
        }
    }

    #[test]
    fn negotiation_gives_the_200_headers_and_applies_the_origin_policy() {
        let cfg = ServerConfig {
            subprotocols: vec!["chat".into()],
            deflate: Some(DeflateConfig::default()),
            ..ServerConfig::default()
        };
        let mut req = websocket();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("x, chat"),
        );
        req.headers_mut().insert(
            "sec-websocket-extensions",
            HeaderValue::from_static("permessage-deflate"),
        );
        let n = ExtendedConnect::from_request(&req, Some("websocket"))
            .accept_websocket(&cfg)
            .unwrap();
        assert_eq!(n.negotiated.subprotocol.as_deref(), Some("chat"));
        assert!(n.negotiated.deflate.is_some());
        assert_eq!(n.headers["sec-websocket-protocol"], "chat");
        assert!(n.headers.get("sec-websocket-accept").is_none());

        let cfg = ServerConfig {
            origin: OriginPolicy::AllowList(vec!["https://good.example".into()]),
            ..ServerConfig::default()
        };
        req.headers_mut()
            .insert("origin", HeaderValue::from_static("https://evil.example"));
        let rej = ExtendedConnect::from_request(&req, Some("websocket"))
            .accept_websocket(&cfg)
            .unwrap_err();
        assert_eq!(rej.response.status(), StatusCode::FORBIDDEN);
    }
}

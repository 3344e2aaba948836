//! Why a request got the answer it got: one [`Reason`] per outcome, who is
//! to blame for it ([`Blame`]), and the gateway's own refusals
//! ([`Refusal`]). Labels are fixed strings, the same in logs and metrics.

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use switchyard::proto::head;

/// Who caused an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Blame {
    /// The client's request (or the client itself) was at fault.
    Client,
    /// The upstream answered wrongly, or not at all.
    Upstream,
    /// The gateway (its configuration or its limits).
    Gateway,
}

impl Blame {
    /// `client`, `upstream` or `gateway`.
    pub fn label(self) -> &'static str {
        match self {
            Blame::Client => "client",
            Blame::Upstream => "upstream",
            Blame::Gateway => "gateway",
        }
    }
}

/// Why an upgrade attempt (or a request refused before one) ended as it
/// did. [`Reason::label`] is the `reason` label of the metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The connection switched protocols.
    Switched,
    /// A plain (non-upgrade) request was answered.
    Served,
    /// No route matches the request's host and path (404).
    NoRoute,
    /// `Origin` not in the route's `allowed_origins` (403).
    Origin,
    /// The route's `max_connections` is reached (503).
    RouteFull,
    /// The client's IP has `max_connections_per_ip` open (429).
    IpFull,
    /// The route requires an upgrade the request did not ask for (426).
    UpgradeRequired,
    /// The route is served over TLS only (426 with RFC 2817, or 403).
    TlsRequired,
    /// An extended CONNECT for a protocol the route does not switch to (501).
    UnsupportedProtocol,
    /// A malformed or hostile `Upgrade` header (400).
    BadUpgrade,
    /// The WebSocket opening handshake was refused (version, key, method...).
    Handshake,
    /// A request the proxy does not forward: a body on an upgrade request,
    /// or any request body (501).
    RequestBody,
    /// A websocket upgrade without exactly one `Sec-WebSocket-Key`.
    BadKey,
    /// A request target that cannot be forwarded.
    BadTarget,
    /// The route's upstream group is not configured.
    UnknownUpstream,
    /// The upstream answered without switching; its answer was relayed.
    UpstreamStatus,
    /// No backend could be connected to.
    ConnectFailed,
    /// The upstream group has no backend.
    NoBackend,
    /// Reading from or writing to the upstream failed.
    UpstreamIo,
    /// The upstream closed before a complete answer.
    UpstreamEof,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// The upstream's answer is not valid HTTP/1.1.
    UpstreamGarbage,
    /// The upstream's relayed body is over the cap.
    UpstreamBodyTooLarge,
    /// The upstream's body framing is broken.
    UpstreamBadBody,
    /// The upstream sent too many 1xx answers.
    UpstreamInterim,
    /// The upstream answered 101 to a request that asked for no upgrade.
    Unrequested101,
    /// The upstream's 101 names a token that was not offered.
    WrongToken,
    /// The upstream's 101 lacks `Connection: upgrade`.
    NoConnectionUpgrade,
    /// The upstream's 101 lacks `Sec-WebSocket-Accept`.
    NoAccept,
    /// The upstream's `Sec-WebSocket-Accept` does not match our key.
    BadAccept,
    /// The upstream negotiated extensions the gateway cannot relay.
    BadExtensions,
    /// The upstream chose a subprotocol the client did not offer, or several.
    BadSubprotocol,
}

impl Reason {
    /// The fixed label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Switched => "switched",
            Reason::Served => "served",
            Reason::NoRoute => "no_route",
            Reason::Origin => "origin",
            Reason::RouteFull => "route_full",
            Reason::IpFull => "ip_full",
            Reason::UpgradeRequired => "upgrade_required",
            Reason::TlsRequired => "tls_required",
            Reason::UnsupportedProtocol => "unsupported_protocol",
            Reason::BadUpgrade => "bad_upgrade",
            Reason::Handshake => "handshake",
            Reason::RequestBody => "request_body",
            Reason::BadKey => "bad_key",
            Reason::BadTarget => "bad_target",
            Reason::UnknownUpstream => "unknown_upstream",
            Reason::UpstreamStatus => "upstream_status",
            Reason::ConnectFailed => "connect_failed",
            Reason::NoBackend => "no_backend",
            Reason::UpstreamIo => "upstream_io",
            Reason::UpstreamEof => "upstream_eof",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamGarbage => "upstream_garbage",
            Reason::UpstreamBodyTooLarge => "upstream_body_too_large",
            Reason::UpstreamBadBody => "upstream_bad_body",
            Reason::UpstreamInterim => "upstream_interim",
            Reason::Unrequested101 => "unrequested_101",
            Reason::WrongToken => "wrong_token",
            Reason::NoConnectionUpgrade => "no_connection_upgrade",
            Reason::NoAccept => "no_accept",
            Reason::BadAccept => "bad_accept",
            Reason::BadExtensions => "bad_extensions",
            Reason::BadSubprotocol => "bad_subprotocol",
        }
    }

    /// Who caused it.
    pub fn blame(self) -> Blame {
        match self {
            Reason::Switched
            | Reason::Served
            | Reason::NoRoute
            | Reason::Origin
            | Reason::UpgradeRequired
            | Reason::TlsRequired
            | Reason::UnsupportedProtocol
            | Reason::BadUpgrade
            | Reason::Handshake
            | Reason::RequestBody
            | Reason::BadKey
            | Reason::BadTarget
            | Reason::IpFull => Blame::Client,
            Reason::RouteFull | Reason::UnknownUpstream | Reason::NoBackend => Blame::Gateway,
            Reason::UpstreamStatus
            | Reason::ConnectFailed
            | Reason::UpstreamIo
            | Reason::UpstreamEof
            | Reason::UpstreamTimeout
            | Reason::UpstreamGarbage
            | Reason::UpstreamBodyTooLarge
            | Reason::UpstreamBadBody
            | Reason::UpstreamInterim
            | Reason::Unrequested101
            | Reason::WrongToken
            | Reason::NoConnectionUpgrade
            | Reason::NoAccept
            | Reason::BadAccept
            | Reason::BadExtensions
            | Reason::BadSubprotocol => Blame::Upstream,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// An answer the gateway gives itself instead of serving the request: the
/// status, why (for metrics), what happened and what to do (the body and
/// the log line), and the headers that go with the status (`Retry-After`,
/// `Upgrade` on a 426, `Allow` on a 405, `Sec-WebSocket-Version`...).
///
/// Small (the headers are boxed, absent when there are none): it is the
/// error type of every check on the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status.
    pub status: StatusCode,
    /// Why.
    pub reason: Reason,
    /// What happened and what to do, for the body and the log.
    pub detail: String,
    headers: Option<Box<HeaderMap>>,
}

impl Refusal {
    /// A refusal without extra headers.
    pub fn new(status: StatusCode, reason: Reason, detail: impl Into<String>) -> Self {
        Refusal {
            status,
            reason,
            detail: detail.into(),
            headers: None,
        }
    }

    /// With `Retry-After: secs`.
    pub fn retry_after(self, secs: u32) -> Self {
        self.with_header(http::header::RETRY_AFTER, HeaderValue::from(secs))
    }

    /// With one more header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers
            .get_or_insert_with(Box::default)
            .append(name, value);
        self
    }

    /// The headers that go with the status.
    pub fn headers(&self) -> HeaderMap {
        self.headers.as_deref().cloned().unwrap_or_default()
    }

    /// The value of one of them.
    pub fn header(&self, name: HeaderName) -> Option<&HeaderValue> {
        self.headers.as_ref()?.get(name)
    }

    /// The whole HTTP/1.1 response with `Connection: close` and a text body.
    pub fn to_bytes(&self) -> Vec<u8> {
        head::simple_response(self.status, &self.headers(), &format!("{}\n", self.detail))
    }

    /// The response head for HTTP/2 and HTTP/3: connection-specific fields
    /// (`Connection`, `Upgrade`) left out, as those protocols forbid them.
    pub fn to_response(&self) -> Response<()> {
        let mut resp = Response::new(());
        *resp.status_mut() = self.status;
        for (name, value) in self.headers.iter().flat_map(|h| h.iter()) {
            if name != http::header::CONNECTION && name != http::header::UPGRADE {
                resp.headers_mut().append(name, value.clone());
            }
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_bytes_close_and_h2_heads_leave_connection_fields_out() {
        let r = Refusal::new(StatusCode::UPGRADE_REQUIRED, Reason::UpgradeRequired, "no")
            .with_header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
            .with_header(
                http::header::CONNECTION,
                HeaderValue::from_static("Upgrade"),
            )
            .retry_after(3);
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("retry-after: 3\r\n"), "{text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.contains("upgrade: websocket\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nno\n"), "{text}");
        let head = r.to_response();
        assert_eq!(head.status(), 426);
        assert!(head.headers().get(http::header::UPGRADE).is_none());
        assert!(head.headers().get(http::header::CONNECTION).is_none());
        assert_eq!(head.headers()[http::header::RETRY_AFTER], "3");
    }

    #[test]
    fn labels_are_distinct() {
        let all = [
            Reason::Switched,
            Reason::Served,
            Reason::Origin,
            Reason::RouteFull,
            Reason::IpFull,
            Reason::UpgradeRequired,
            Reason::TlsRequired,
            Reason::UnsupportedProtocol,
            Reason::BadUpgrade,
            Reason::Handshake,
            Reason::RequestBody,
            Reason::BadKey,
            Reason::BadTarget,
            Reason::UnknownUpstream,
            Reason::UpstreamStatus,
            Reason::ConnectFailed,
            Reason::NoBackend,
            Reason::UpstreamIo,
            Reason::UpstreamEof,
            Reason::UpstreamTimeout,
            Reason::UpstreamGarbage,
            Reason::UpstreamBodyTooLarge,
            Reason::UpstreamBadBody,
            Reason::UpstreamInterim,
            Reason::Unrequested101,
            Reason::WrongToken,
            Reason::NoConnectionUpgrade,
            Reason::NoAccept,
            Reason::BadAccept,
            Reason::BadExtensions,
            Reason::BadSubprotocol,
        ];
        let mut labels: Vec<_> = all.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), all.len());
        assert_eq!(Reason::Origin.blame(), Blame::Client);
        assert_eq!(Reason::BadAccept.blame(), Blame::Upstream);
        assert_eq!(Reason::RouteFull.blame(), Blame::Gateway);
    }
}

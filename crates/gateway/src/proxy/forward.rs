//! The forwarding rules: from the client's parsed request to the request
//! head sent upstream, and from the upstream's response head to the one the
//! client gets.
//!
//! * Hop-by-hop fields are removed in both directions: the RFC 9110 §7.6.1
//!   list ([`is_hop_by_hop`]) plus every field named in `Connection`.
//! * `Upgrade` and `Connection: Upgrade` are then set explicitly, for the
//!   offered tokens the route allows (`websocket` by default), never `h2c`
//!   (and `HTTP2-Settings` never leaves). Upgrade on a method other than
//!   GET is stripped: the request goes upstream as plain HTTP and can never
//!   become a tunnel.
//! * `X-Forwarded-For` gets the client's address appended,
//!   `X-Forwarded-Proto` and `X-Forwarded-Host` are set, and `Forwarded`
//!   (RFC 7239) gets an element `for=...;host=...;proto=...` appended (IPv6
//!   addresses quoted and bracketed).
//! * `Host` is the client's (default) or the backend's authority.
//! * HTTP/1.1 to HTTP/1.1, the client's `Sec-WebSocket-Key` passes through,
//!   so the upstream's `Sec-WebSocket-Accept` is valid for the client too.
//!   From HTTP/2 or HTTP/3 extended CONNECT (RFC 8441 / 9220),
//!   [`translate_extended_connect`] builds a real HTTP/1.1 upgrade with a
//!   fresh key, and [`verify_accept`] checks the answer.

use std::net::{IpAddr, SocketAddr};

use http::header::{
    CONNECTION, CONTENT_LENGTH, FORWARDED, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use switchyard_proto::handshake::{accept_key_bytes, generate_key};
use switchyard_proto::upgrade::{header_tokens, is_hop_by_hop, upgrade_offer, ProtocolToken};

use crate::config::{Backend, Policy};

use crate::outcome::{Reason, Refusal};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// How the request is forwarded (route options beyond [`Policy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardOptions {
    /// Send the client's `Host` (true, the default) or the backend's
    /// authority.
    pub preserve_host: bool,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions {
            preserve_host: true,
        }
    }
}

/// Where the request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address (of the TCP or QUIC connection).
    pub addr: SocketAddr,
    /// Whether the client connection is TLS (`https` / `wss`).
    pub tls: bool,
}

/// The request head to send upstream, with what the answer must show.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// The HTTP/1.1 request head as sent (request line, fields, blank
    /// line), written in one pass from the client's parsed fields.
    pub head: Vec<u8>,
    /// Its method (the answer to `HEAD` has no body).
    pub method: Method,
    /// The `Upgrade` tokens offered upstream (lowercase, in the client's
    /// order). Empty: a plain request, which can never become a tunnel.
    pub upgrade_tokens: Vec<String>,
    /// The `Sec-WebSocket-Key` sent (the client's, or a fresh one when
    /// translating); the 101 for `websocket` must carry its accept value.
    pub ws_key: Option<String>,
}

impl UpstreamRequest {
    /// Whether an upgrade is asked for.
    pub fn is_upgrade(&self) -> bool {
        !self.upgrade_tokens.is_empty()
    }
}

fn bad_request(reason: Reason, detail: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, reason, detail)
}

/// Whether the request carries a body (a non-zero `Content-Length` or any
/// `Transfer-Encoding`).
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes().iter().any(|&b| b != b'0'))
}

/// The hop-by-hop fields of one message: the fixed list, `HTTP2-Settings`
/// and every field its `Connection` names.
struct HopByHop<'a> {
    /// The names in `Connection` that the fixed list does not already hold
    /// (usually none, so usually no allocation).
    named: Vec<&'a str>,
}

impl<'a> HopByHop<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let named = header_tokens(headers, &CONNECTION)
            .filter(|t| !is_hop_by_hop(t))
            .collect();
        HopByHop { named }
    }

    /// Whether `name` must not be passed on.
    fn drops(&self, name: &HeaderName) -> bool {
        let n = name.as_str();
        is_hop_by_hop(n)
            || *name == HTTP2_SETTINGS
            || self.named.iter().any(|t| t.eq_ignore_ascii_case(n))
    }
}

/// Remove hop-by-hop fields: the fixed list, every field named in
/// `Connection`, and `HTTP2-Settings`. Applied to requests and responses.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let hop = HopByHop::of(headers);
    let doomed: Vec<HeaderName> = headers.keys().filter(|n| hop.drops(n)).cloned().collect();
    for n in doomed {
        headers.remove(n);
    }
}

/// Appends the field line `name: value` to a head being written.
fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the request line `METHOD target HTTP/1.1` (an empty target as `/`).
fn push_request_line(out: &mut Vec<u8>, method: &Method, target: &str) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(if target.is_empty() { "/" } else { target }.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Appends the client's end-to-end fields in their order: not hop-by-hop,
/// not `Host` (written by the caller), not the forwarding fields that
/// [`push_forwarding_fields`] rewrites, and not those `skip` names.
fn push_end_to_end(
    out: &mut Vec<u8>,
    fields: &HeaderMap,
    hop: &HopByHop<'_>,
    forwarded_host: bool,
    skip: impl Fn(&HeaderName) -> bool,
) {
    for (name, value) in fields {
        let rewritten = *name == X_FORWARDED_FOR
            || *name == FORWARDED
            || *name == X_FORWARDED_PROTO
            || (forwarded_host && *name == X_FORWARDED_HOST);
        if *name == HOST || rewritten || hop.drops(name) || skip(name) {
            continue;
        }
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Appends the `Forwarded` node for an address: IPv4 bare, IPv6 quoted and
/// bracketed (RFC 7239 §6).
fn push_forwarded_node(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            out.extend_from_slice(b"\"[");
            push_ip(out, ip);
            out.extend_from_slice(b"]\"");
        }
        ip => push_ip(out, ip),
    }
}

/// Appends `ip` as text, an IPv4-mapped IPv6 address as IPv4. IPv4 is
/// written by hand: it is written twice on every proxied request, and
/// `Display` goes through the formatting machinery (~2k instructions).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends a `Forwarded` parameter value: a token as is, anything else
/// quoted (with `"` and `\` escaped).
fn push_forwarded_value(out: &mut Vec<u8>, v: &str) {
    if !v.is_empty() && switchyard_proto::extensions::is_token(v) {
        out.extend_from_slice(v.as_bytes());
        return;
    }
    out.push(b'"');
    for &b in v.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Appends `X-Forwarded-For` and `Forwarded` (the client's lines of each,
/// valid text only, then the new element, as one field line),
/// `X-Forwarded-Proto` and, with a host, `X-Forwarded-Host`.
fn push_forwarding_fields(
    out: &mut Vec<u8>,
    fields: &HeaderMap,
    hop: &HopByHop<'_>,
    client: &ClientInfo,
    host: Option<&str>,
) {
    let ip = client.addr.ip();
    let proto = if client.tls { "https" } else { "http" };
    push_list_field(out, fields, hop, &X_FORWARDED_FOR, |out| push_ip(out, ip));
    push_field(out, b"x-forwarded-proto", proto.as_bytes());
    if let Some(h) = host {
        push_field(out, b"x-forwarded-host", h.as_bytes());
    }
    push_list_field(out, fields, hop, &FORWARDED, |out| {
        out.extend_from_slice(b"for=");
        push_forwarded_node(out, ip);
        if let Some(h) = host {
            out.extend_from_slice(b";host=");
            push_forwarded_value(out, h);
        }
        out.extend_from_slice(b";proto=");
        out.extend_from_slice(proto.as_bytes());
    });
}

/// The list field `name` as one line: the client's lines (valid text only,
/// none when `Connection` named the field), then the element `push` writes.
fn push_list_field(
    out: &mut Vec<u8>,
    fields: &HeaderMap,
    hop: &HopByHop<'_>,
    name: &HeaderName,
    push: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    if !hop.drops(name) {
        for v in fields.get_all(name).iter().filter(|v| v.to_str().is_ok()) {
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    push(out);
    out.extend_from_slice(b"\r\n");
}

/// `name[/version]` in lowercase, as forwarded and matched against the
/// policy (one allocation, no formatting machinery).
fn lowercase_token(t: &ProtocolToken) -> String {
    let mut s = t.name.to_ascii_lowercase();
    if let Some(v) = &t.version {
        s.push('/');
        s.extend(v.chars().map(|c| c.to_ascii_lowercase()));
    }
    s
}

/// The backend's authority as a `Host` value (default port omitted).
fn backend_host(backend: &Backend) -> String {
    let host = backend.url.host().unwrap_or_default();
    let default = if backend.is_tls() { 443 } else { 80 };
    match backend.url.port_u16() {
        Some(p) if p != default => format!("{host}:{p}"),
        _ => host.to_string(),
    }
}

/// A head's first bytes: room for the request line and the usual fields,
/// so the head is written without reallocation in the common case.
const HEAD_CAPACITY: usize = 1024;

/// Build the upstream request for an HTTP/1.1 client request.
///
/// Refusals: 400 for a malformed `Upgrade` or a request with a body that
/// asks for an upgrade, 501 for a plain request with a body (the proxy
/// forwards no request bodies). The route's admission (Origin, caps, 426)
/// is the dispatcher's, before this.
pub fn forward_request(
    req: &Request<()>,
    client: &ClientInfo,
    policy: &Policy,
    backend: &Backend,
    opts: &ForwardOptions,
) -> Result<UpstreamRequest, Refusal> {
    let offered = upgrade_offer(req)
        .map_err(|e| bad_request(Reason::BadUpgrade, format!("malformed Upgrade header: {e}")))?
        .unwrap_or_default();
    let is_get = req.method() == Method::GET;
    let tokens: Vec<String> = if is_get {
        offered
            .iter()
            .map(lowercase_token)
            .filter(|t| t != "h2c" && !t.starts_with("h2c/") && policy.upgrade_allowed(t))
            .collect()
    } else {
        Vec::new()
    };
    let fields = req.headers();
    if has_body(fields) {
        return Err(if tokens.is_empty() {
            Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                Reason::RequestBody,
                "this proxy forwards no request bodies",
            )
        } else {
            bad_request(
                Reason::RequestBody,
                "an upgrade request must not have a body",
            )
        });
    }
    let websocket = tokens.iter().any(|t| t == "websocket");
    let ws_key = if websocket {
        let mut keys = fields.get_all(SEC_WEBSOCKET_KEY).iter();
        match (keys.next(), keys.next()) {
            (Some(k), None) => k.to_str().ok().map(str::to_string),
            _ => {
                return Err(bad_request(
                    Reason::BadKey,
                    "a websocket upgrade needs exactly one Sec-WebSocket-Key",
                ))
            }
        }
    } else {
        None
    };
    let client_host = fields
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let backend_authority;
    let host = if opts.preserve_host {
        client_host
    } else {
        backend_authority = backend_host(backend);
        Some(backend_authority.as_str())
    };
    let hop = HopByHop::of(fields);

    let mut head = Vec::with_capacity(HEAD_CAPACITY);
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    push_request_line(&mut head, req.method(), target);
    if let Some(h) = host {
        push_field(&mut head, b"host", h.as_bytes());
    }
    push_end_to_end(&mut head, fields, &hop, client_host.is_some(), |n| {
        !websocket && (*n == SEC_WEBSOCKET_KEY || *n == SEC_WEBSOCKET_VERSION)
    });
    if let [first, rest @ ..] = tokens.as_slice() {
        head.extend_from_slice(b"upgrade: ");
        head.extend_from_slice(first.as_bytes());
        for t in rest {
            head.extend_from_slice(b", ");
            head.extend_from_slice(t.as_bytes());
        }
        head.extend_from_slice(b"\r\nconnection: Upgrade\r\n");
    } else {
        head.extend_from_slice(b"connection: close\r\n");
    }
    push_forwarding_fields(&mut head, fields, &hop, client, client_host);
    head.extend_from_slice(b"\r\n");
    Ok(UpstreamRequest {
        head,
        method: req.method().clone(),
        upgrade_tokens: tokens,
        ws_key,
    })
}

/// Build the HTTP/1.1 upgrade request for an HTTP/2 or HTTP/3 extended
/// CONNECT (RFC 8441 §4 / RFC 9220): `protocol` is the `:protocol`
/// pseudo-header, `req`'s URI carries `:authority` and `:path`. The request
/// gets `Upgrade: websocket`, `Connection: Upgrade`, version 13 and a FRESH
/// `Sec-WebSocket-Key` (the client sent none); `Sec-WebSocket-Protocol`,
/// `Sec-WebSocket-Extensions`, `Origin` and other end-to-end fields pass
/// through, so subprotocol and extensions are negotiated end to end.
///
/// Refusals: 400 when the method is not CONNECT or `:protocol` is not
/// `websocket` (the only protocol translated). The route's admission
/// (Origin, caps, allowed upgrades) is the dispatcher's, before this.
pub fn translate_extended_connect(
    req: &Request<()>,
    protocol: &str,
    client: &ClientInfo,
    backend: &Backend,
    opts: &ForwardOptions,
) -> Result<UpstreamRequest, Refusal> {
    if req.method() != Method::CONNECT {
        return Err(bad_request(
            Reason::UnsupportedProtocol,
            "extended CONNECT translation needs a CONNECT request",
        ));
    }
    if !protocol.eq_ignore_ascii_case("websocket") {
        return Err(bad_request(
            Reason::UnsupportedProtocol,
            format!(":protocol {protocol:?} cannot be translated to HTTP/1.1; only websocket is"),
        ));
    }
    let fields = req.headers();
    let authority = req.uri().authority().map(|a| a.as_str());
    let backend_authority;
    let host = if opts.preserve_host {
        authority
    } else {
        backend_authority = backend_host(backend);
        Some(backend_authority.as_str())
    };
    let hop = HopByHop::of(fields);
    let key = generate_key();

    let mut head = Vec::with_capacity(HEAD_CAPACITY);
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    push_request_line(&mut head, &Method::GET, target);
    if let Some(h) = host {
        push_field(&mut head, b"host", h.as_bytes());
    }
    push_end_to_end(&mut head, fields, &hop, authority.is_some(), |n| {
        *n == SEC_WEBSOCKET_KEY || *n == SEC_WEBSOCKET_VERSION || *n == SEC_WEBSOCKET_ACCEPT
    });
    head.extend_from_slice(
        b"upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n",
    );
    push_field(&mut head, b"sec-websocket-key", key.as_bytes());
    push_forwarding_fields(&mut head, fields, &hop, client, authority);
    head.extend_from_slice(b"\r\n");
    Ok(UpstreamRequest {
        head,
        method: Method::GET,
        upgrade_tokens: vec!["websocket".to_string()],
        ws_key: Some(key),
    })
}

/// Why an upstream 101 cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// The 101 was not asked for (plain request).
    #[error("the upstream answered 101 to a request that asked for no upgrade")]
    Unrequested,
    /// `Upgrade` missing, several tokens, or one not offered.
    #[error("the upstream's 101 switches to {got:?}, which was not offered (offered: {offered})")]
    WrongToken {
        /// What the 101 said.
        got: String,
        /// What we offered.
        offered: String,
    },
    /// `Connection` lacks `upgrade`.
    #[error("the upstream's 101 has no Connection: upgrade")]
    NoConnectionUpgrade,
    /// No `Sec-WebSocket-Accept`.
    #[error("the upstream's 101 for websocket has no Sec-WebSocket-Accept")]
    NoAccept,
    /// The accept value does not match the key we sent.
    #[error("the upstream's Sec-WebSocket-Accept {got:?} does not match the key sent (expected {expected:?})")]
    BadAccept {
        /// Expected value.
        expected: String,
        /// What came.
        got: String,
    },
}

impl SwitchError {
    /// Why, for metrics and logs.
    pub fn reason(&self) -> Reason {
        match self {
            SwitchError::Unrequested => Reason::Unrequested101,
            SwitchError::WrongToken { .. } => Reason::WrongToken,
            SwitchError::NoConnectionUpgrade => Reason::NoConnectionUpgrade,
            SwitchError::NoAccept => Reason::NoAccept,
            SwitchError::BadAccept { .. } => Reason::BadAccept,
        }
    }
}

/// Check a 101 from the upstream: exactly one `Upgrade` token, one we
/// offered; `Connection: upgrade`; for websocket exactly one
/// `Sec-WebSocket-Accept` equal to the accept value of the key we sent.
/// Returns the token switched to (lowercase).
pub fn verify_switch(resp: &Response<()>, sent: &UpstreamRequest) -> Result<String, SwitchError> {
    if !sent.is_upgrade() {
        return Err(SwitchError::Unrequested);
    }
    let h = resp.headers();
    let wrong_token = || SwitchError::WrongToken {
        got: header_tokens(h, &UPGRADE).collect::<Vec<_>>().join(", "),
        offered: sent.upgrade_tokens.join(", "),
    };
    // Exactly one token, one that was offered (the texts for the error
    // are made only when there is one).
    let mut tokens = header_tokens(h, &UPGRADE);
    let (Some(one), None) = (tokens.next(), tokens.next()) else {
        return Err(wrong_token());
    };
    let Some(token) = sent
        .upgrade_tokens
        .iter()
        .find(|t| t.eq_ignore_ascii_case(one))
    else {
        return Err(wrong_token());
    };
    if !switchyard_proto::upgrade::connection_has(h, "upgrade") {
        return Err(SwitchError::NoConnectionUpgrade);
    }
    if token == "websocket" {
        verify_accept(h, sent.ws_key.as_deref().unwrap_or_default())?;
    }
    Ok(token.clone())
}

/// Whether `headers` hold exactly one `Sec-WebSocket-Accept` equal to the
/// accept value of `key`.
pub fn verify_accept(headers: &HeaderMap, key: &str) -> Result<(), SwitchError> {
    let expected = accept_key_bytes(key.as_bytes());
    let mut accepts = headers.get_all(SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (None, _) => Err(SwitchError::NoAccept),
        (Some(v), None) if v.as_bytes() == expected => Ok(()),
        (Some(v), _) => Err(SwitchError::BadAccept {
            expected: String::from_utf8_lossy(&expected).into_owned(),
            got: String::from_utf8_lossy(v.as_bytes()).into_owned(),
        }),
    }
}

/// Writes the 101 the HTTP/1.1 client gets: the upstream's fields without
/// the hop-by-hop ones and `Content-Length`, then `Upgrade: <token>` and
/// `Connection: Upgrade`.
pub fn write_client_switch(upstream: &Response<()>, token: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    let fields = upstream.headers();
    let hop = HopByHop::of(fields);
    for (name, value) in fields {
        if *name != CONTENT_LENGTH && !hop.drops(name) {
            push_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    push_field(out, b"upgrade", token.as_bytes());
    out.extend_from_slice(b"connection: Upgrade\r\n\r\n");
}

/// The 200 an HTTP/2 or HTTP/3 extended CONNECT client gets after a
/// translated upgrade: the upstream's end-to-end fields (subprotocol,
/// extensions...), without hop-by-hop fields and the HTTP/1.1-only
/// `Sec-WebSocket-Accept`.
pub fn extended_connect_response(upstream: &Response<()>) -> Response<()> {
    let mut headers = upstream.headers().clone();
    strip_hop_by_hop(&mut headers);
    for h in [SEC_WEBSOCKET_ACCEPT, CONTENT_LENGTH] {
        headers.remove(h);
    }
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::OK;
    *resp.headers_mut() = headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use switchyard_proto::handshake::accept_key;
    use switchyard_proto::head::{RequestParser, ResponseParser};
    use switchyard_proto::Limits;

    /// The head sent upstream, parsed back by the strict parser (so it is
    /// also well-formed HTTP/1.1, Host included).
    fn sent(up: &UpstreamRequest) -> Request<()> {
        let (req, used) = RequestParser::new(&Limits::default())
            .feed(&up.head)
            .unwrap()
            .expect("a complete head");
        assert_eq!(used, up.head.len(), "bytes after the head");
        req
    }

    fn backend() -> Backend {
        Backend {
            url: "ws://10.0.0.9:9000/".parse().unwrap(),
        }
    }

    fn client() -> ClientInfo {
        ClientInfo {
            addr: "192.0.2.7:5555".parse().unwrap(),
            tls: false,
        }
    }

    fn ws_request(extra: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder()
            .method("GET")
            .uri("/chat?room=1")
            .header("host", "chat.example")
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn fwd(req: &Request<()>) -> Result<UpstreamRequest, Refusal> {
        fwd_with(req, &Policy::default())
    }

    fn fwd_with(req: &Request<()>, policy: &Policy) -> Result<UpstreamRequest, Refusal> {
        forward_request(
            req,
            &client(),
            policy,
            &backend(),
            &ForwardOptions::default(),
        )
    }

    #[test]
    fn websocket_upgrade_is_forwarded_explicitly() {
        let up = fwd(&ws_request(&[])).unwrap();
        let h = &sent(&up).headers().clone();
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(up.ws_key.as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(up.upgrade_tokens, vec!["websocket"]);
        assert_eq!(sent(&up).uri(), "/chat?room=1");
        assert_eq!(sent(&up).method(), Method::GET);
    }

    #[test]
    fn allowed_tokens_are_forwarded_in_lowercase_with_their_version() {
        let mut req = ws_request(&[]);
        req.headers_mut().insert(
            UPGRADE,
            HeaderValue::from_static("WebSocket, Chat/V2, h2c, Other"),
        );
        let policy = Policy {
            allowed_upgrades: vec!["websocket".into(), "chat/v2".into()],
            ..Policy::default()
        };
        let up = fwd_with(&req, &policy).unwrap();
        assert_eq!(up.upgrade_tokens, vec!["websocket", "chat/v2"]);
        assert_eq!(sent(&up).headers()["upgrade"], "websocket, chat/v2");
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_are_removed() {
        let req = ws_request(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ]);
        let up = fwd(&req).unwrap();
        let h = &sent(&up).headers().clone();
        for gone in [
            "keep-alive",
            "x-secret",
            "te",
            "trailer",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert!(!h.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h.get_all("connection").iter().count(), 1);
        assert_eq!(h["connection"], "Upgrade");
    }

    #[test]
    fn only_allowed_tokens_go_upstream_and_h2c_never() {
        let req = Request::builder()
            .uri("/")
            .header("host", "h")
            .header("upgrade", "h2c, foo/1, websocket")
            .header("connection", "Upgrade, HTTP2-Settings")
            .header("http2-settings", "AAMAAABkAAQAAP__")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        let up = fwd(&req).unwrap();
        assert_eq!(sent(&up).headers()["upgrade"], "websocket");
        assert!(!sent(&up).headers().contains_key("http2-settings"));

        // Only h2c offered: plain request, no Upgrade, no HTTP2-Settings.
        let req = Request::builder()
            .uri("/")
            .header("host", "h")
            .header("upgrade", "h2c")
            .header("connection", "Upgrade")
            .header("http2-settings", "AAMAAABkAAQAAP__")
            .body(())
            .unwrap();
        let up = fwd(&req).unwrap();
        assert!(!up.is_upgrade());
        assert!(!sent(&up).headers().contains_key("upgrade"));
        assert!(!sent(&up).headers().contains_key("http2-settings"));
        assert_eq!(sent(&up).headers()["connection"], "close");

        // A second allowed token passes when the policy has it.
        let policy = Policy {
            allowed_upgrades: vec!["websocket".into(), "foo".into()],
            ..Policy::default()
        };
        let req = Request::builder()
            .uri("/")
            .header("host", "h")
            .header("upgrade", "foo, bar")
            .header("connection", "upgrade")
            .body(())
            .unwrap();
        let up = fwd_with(&req, &policy).unwrap();
        assert_eq!(up.upgrade_tokens, vec!["foo"]);
        assert_eq!(sent(&up).headers()["upgrade"], "foo");
    }

    #[test]
    fn upgrade_on_post_is_stripped() {
        let mut req = ws_request(&[]);
        *req.method_mut() = Method::POST;
        let up = fwd(&req).unwrap();
        assert!(!up.is_upgrade());
        assert!(!sent(&up).headers().contains_key("upgrade"));
        assert!(!sent(&up).headers().contains_key("sec-websocket-key"));
        // And a 101 to it is never trusted.
        let resp = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(())
            .unwrap();
        assert_eq!(verify_switch(&resp, &up), Err(SwitchError::Unrequested));
    }

    #[test]
    fn bodies_are_refused() {
        let err = fwd(&ws_request(&[("content-length", "5")])).unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let req = Request::builder()
            .method("POST")
            .uri("/")
            .header("host", "h")
            .header("content-length", "3")
            .body(())
            .unwrap();
        assert_eq!(fwd(&req).unwrap_err().status, StatusCode::NOT_IMPLEMENTED);
        let req = Request::builder()
            .uri("/")
            .header("host", "h")
            .header("content-length", "0")
            .body(())
            .unwrap();
        assert!(fwd(&req).is_ok());
    }

    #[test]
    fn malformed_upgrade_is_400() {
        let req = ws_request(&[("upgrade", "web socket")]);
        assert_eq!(fwd(&req).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn two_keys_are_400() {
        let req = ws_request(&[("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAAAA==")]);
        assert_eq!(fwd(&req).unwrap_err().status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn forwarding_headers_are_set_and_appended() {
        let up = fwd(&ws_request(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2, 198.51.100.3"),
            ("forwarded", "for=203.0.113.1"),
        ]))
        .unwrap();
        let h = &sent(&up).headers().clone();
        // Every present line, in order, then the client: one field line.
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.1, 198.51.100.2, 198.51.100.3, 192.0.2.7"
        );
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "chat.example");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.1, for=192.0.2.7;host=chat.example;proto=http"
        );

        let c = ClientInfo {
            addr: "[2001:db8::1]:443".parse().unwrap(),
            tls: true,
        };
        let up = forward_request(
            &ws_request(&[]),
            &c,
            &Policy::default(),
            &backend(),
            &ForwardOptions::default(),
        )
        .unwrap();
        let h = &sent(&up).headers().clone();
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::1]\";host=chat.example;proto=https"
        );
        // IPv4-mapped addresses are written as IPv4.
        let written = |f: fn(&mut Vec<u8>, IpAddr), ip: &str| {
            let mut out = Vec::new();
            f(&mut out, ip.parse().unwrap());
            String::from_utf8(out).unwrap()
        };
        assert_eq!(written(push_forwarded_node, "::ffff:10.1.2.3"), "10.1.2.3");
        assert_eq!(written(push_ip, "::ffff:10.1.2.3"), "10.1.2.3");
        let mut value = Vec::new();
        push_forwarded_value(&mut value, "a \"b\\");
        assert_eq!(String::from_utf8(value).unwrap(), r#""a \"b\\""#);
    }

    #[test]
    fn ipv4_text_matches_display_for_every_octet() {
        for octet in 0..=255u8 {
            for ip in [
                std::net::Ipv4Addr::new(octet, 0, 9, 10),
                std::net::Ipv4Addr::new(99, octet, 100, 255),
                std::net::Ipv4Addr::new(1, 22, octet, octet),
            ] {
                let mut out = Vec::new();
                push_ip(&mut out, IpAddr::V4(ip));
                assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
            }
        }
    }

    #[test]
    fn host_preserved_or_replaced() {
        let up = fwd(&ws_request(&[])).unwrap();
        assert_eq!(sent(&up).headers()["host"], "chat.example");
        let opts = ForwardOptions {
            preserve_host: false,
        };
        let up = forward_request(
            &ws_request(&[]),
            &client(),
            &Policy::default(),
            &backend(),
            &opts,
        )
        .unwrap();
        assert_eq!(sent(&up).headers()["host"], "10.0.0.9:9000");
        let b = Backend {
            url: "wss://chat.internal".parse().unwrap(),
        };
        let up =
            forward_request(&ws_request(&[]), &client(), &Policy::default(), &b, &opts).unwrap();
        assert_eq!(sent(&up).headers()["host"], "chat.internal");
        assert_eq!(sent(&up).headers().get_all("host").iter().count(), 1);
    }

    fn switch_response(token: &str, accept: Option<&str>) -> Response<()> {
        let mut b = Response::builder()
            .status(101)
            .header("upgrade", token)
            .header("connection", "Upgrade");
        if let Some(a) = accept {
            b = b.header("sec-websocket-accept", a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn switch_verification() {
        let up = fwd(&ws_request(&[])).unwrap();
        let good = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        assert_eq!(
            verify_switch(&switch_response("WebSocket", Some(good)), &up),
            Ok("websocket".into())
        );
        assert_eq!(
            verify_switch(&switch_response("websocket", None), &up),
            Err(SwitchError::NoAccept)
        );
        assert!(matches!(
            verify_switch(
                &switch_response("websocket", Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
                &up
            ),
            Err(SwitchError::BadAccept { .. })
        ));
        assert!(matches!(
            verify_switch(&switch_response("h2c", Some(good)), &up),
            Err(SwitchError::WrongToken { .. })
        ));
        assert!(matches!(
            verify_switch(&switch_response("websocket, foo", Some(good)), &up),
            Err(SwitchError::WrongToken { .. })
        ));
        let no_conn = Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", good)
            .body(())
            .unwrap();
        assert_eq!(
            verify_switch(&no_conn, &up),
            Err(SwitchError::NoConnectionUpgrade)
        );
        let mut two = switch_response("websocket", Some(good));
        two.headers_mut()
            .append("sec-websocket-accept", good.parse().unwrap());
        assert!(matches!(
            verify_switch(&two, &up),
            Err(SwitchError::BadAccept { .. })
        ));
    }

    #[test]
    fn client_switch_strips_hop_by_hop() {
        let mut r = switch_response("websocket", Some("x"));
        r.headers_mut().insert("keep-alive", "1".parse().unwrap());
        r.headers_mut()
            .insert("connection", "Upgrade, X-Internal".parse().unwrap());
        r.headers_mut()
            .insert("x-internal", "secret".parse().unwrap());
        r.headers_mut()
            .insert("sec-websocket-protocol", "chat".parse().unwrap());
        let mut out = Vec::new();
        write_client_switch(&r, "websocket", &mut out);
        let (c, used) = ResponseParser::new(&Limits::default())
            .feed(&out)
            .unwrap()
            .expect("a complete head");
        assert_eq!(used, out.len());
        assert_eq!(c.status(), 101);
        assert!(!c.headers().contains_key("keep-alive"));
        assert!(!c.headers().contains_key("x-internal"));
        assert_eq!(c.headers()["sec-websocket-protocol"], "chat");
        assert_eq!(c.headers()["sec-websocket-accept"], "x");
        assert_eq!(c.headers()["upgrade"], "websocket");
        assert_eq!(c.headers()["connection"], "Upgrade");
    }

    #[test]
    fn extended_connect_translation_uses_a_fresh_key() {
        let req = Request::builder()
            .method("CONNECT")
            .uri("https://chat.example/ws?x=1")
            .header("sec-websocket-protocol", "chat, superchat")
            .header("sec-websocket-extensions", "permessage-deflate")
            .header("sec-websocket-version", "13")
            .header("origin", "https://chat.example")
            .body(())
            .unwrap();
        let c = ClientInfo {
            addr: "192.0.2.7:1".parse().unwrap(),
            tls: true,
        };
        let a = translate_extended_connect(
            &req,
            "websocket",
            &c,
            &backend(),
            &ForwardOptions::default(),
        )
        .unwrap();
        let b = translate_extended_connect(
            &req,
            "websocket",
            &c,
            &backend(),
            &ForwardOptions::default(),
        )
        .unwrap();
        let h = &sent(&a).headers().clone();
        assert_eq!(sent(&a).method(), Method::GET);
        assert_eq!(sent(&a).uri(), "/ws?x=1");
        assert_eq!(h["host"], "chat.example");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["sec-websocket-version"], "13");
        assert_eq!(h["sec-websocket-protocol"], "chat, superchat");
        assert_eq!(h["sec-websocket-extensions"], "permessage-deflate");
        assert_eq!(h["x-forwarded-proto"], "https");
        let key = a.ws_key.clone().unwrap();
        assert_eq!(h["sec-websocket-key"], key.as_str());
        assert_ne!(a.ws_key, b.ws_key, "a fresh key per request");
        // The accept for our key passes, one for another key does not.
        let ok = switch_response("websocket", Some(&accept_key(key.as_bytes())));
        assert_eq!(verify_switch(&ok, &a), Ok("websocket".into()));
        let wrong = switch_response("websocket", Some(&accept_key(b.ws_key.unwrap().as_bytes())));
        assert!(matches!(
            verify_switch(&wrong, &a),
            Err(SwitchError::BadAccept { .. })
        ));
        // The 200 for the h2 client carries subprotocol, not Accept.
        let mut resp = ok.clone();
        resp.headers_mut()
            .insert("sec-websocket-protocol", "chat".parse().unwrap());
        let r200 = extended_connect_response(&resp);
        assert_eq!(r200.status(), StatusCode::OK);
        assert_eq!(r200.headers()["sec-websocket-protocol"], "chat");
        assert!(!r200.headers().contains_key("sec-websocket-accept"));
        assert!(!r200.headers().contains_key("upgrade"));
        assert!(!r200.headers().contains_key("connection"));
    }

    #[test]
    fn extended_connect_refusals() {
        let req = Request::builder()
            .method("CONNECT")
            .uri("https://h/")
            .body(())
            .unwrap();
        let err = translate_extended_connect(
            &req,
            "h2c",
            &client(),
            &backend(),
            &ForwardOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        let get = Request::builder().uri("https://h/").body(()).unwrap();
        let err = translate_extended_connect(
            &get,
            "websocket",
            &client(),
            &backend(),
            &ForwardOptions::default(),
        )
        .unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }
}

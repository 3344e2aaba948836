//! The one dispatch point: every request of every front (HTTP/1.1, HTTP/2,
//! HTTP/3) arrives here as a protocol-neutral [`RequestHead`] and leaves as
//! a [`Decision`]: serve a built-in app, proxy to an upstream group, switch
//! the connection itself (RFC 2817), refuse with a status, or not found.
//!
//! The route's policy is applied here, once, for every kind of route:
//!
//! 1. the route: host, then the longest path ([`crate::config::Config::route_for`]);
//! 2. the protocol: the first token of the client's offer (HTTP/1.1
//!    `Upgrade`, or the `:protocol` of an HTTP/2 or HTTP/3 extended
//!    CONNECT) that the route allows (`allowed_upgrades`) and its target
//!    speaks, else one the connection itself speaks (RFC 2817 TLS); a
//!    malformed offer is 400;
//! 3. `require_tls`: 426 with `Upgrade: TLS/1.3, HTTP/1.1` where the
//!    listener offers RFC 2817, 403 elsewhere;
//! 4. `allowed_origins`: 403;
//! 5. no protocol selected: 426 where the route requires one
//!    (`require_upgrade`, or an app that only switches), 501 for an
//!    extended CONNECT of a protocol the route does not switch to;
//! 6. the caps (`max_connections` 503, `max_connections_per_ip` 429, both
//!    with `Retry-After`) for every switch and every proxied request: the
//!    decision carries the slot for as long as the connection lives. In a
//!    cluster the slot also needs a lease in the cluster's caps, which
//!    [`Dispatcher::confirm`] takes (the one async step, awaited by every
//!    front before it switches or answers).
//!
//! A request without an upgrade whose query has `sw` on a route that serves
//! WebSocket and offers `fallback` transports is a fallback session request
//! ([`Decision::Session`], docs/fallback.md): steps 3 and 4 apply to it,
//! and a request that opens a session takes a slot of the caps (step 6),
//! which the session holds until it ends. `GET /.switchyard/client.js` is
//! the browser client of those sessions on every host
//! ([`Decision::ClientScript`]).
//!
//! Refusals are logged with their reason and counted in
//! `switchyard_upgrade_attempts_total{result="refused"}`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{ALLOW, CONNECTION, HOST, UPGRADE};
use http::{HeaderValue, Method, Request, StatusCode};
use switchyard::proto::upgrade::{upgrade_offer, ProtocolToken};
use tracing::info;

use crate::admission::{check_origin, ConnectionGuard};
use crate::failures::UpgradeFields;
use crate::live::{Gateway, RouteEntry, Target};
use crate::metrics::NO_ROUTE;
use crate::outcome::{Reason, Refusal};
use crate::session::CLIENT_JS_PATH;
use crate::upgrade::{ConnInfo, Registry, UpgradeProtocol};
use switchyard::fallback::wire::{is_session_query, session_action, Action, SessionQuery};
use switchyard::proto::HttpVersion;

/// A request as every front sees it, whatever its HTTP version.
#[derive(Debug)]
pub struct RequestHead {
    /// Method, target and fields. For HTTP/2 and HTTP/3 the URI carries
    /// `:authority` and `:path`, and `Host` is set from `:authority` when
    /// the request has none.
    pub request: Request<()>,
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the client's connection is TLS.
    pub tls: bool,
    /// The HTTP version of the client's connection.
    pub protocol: HttpVersion,
    /// The `:protocol` of an HTTP/2 or HTTP/3 extended CONNECT (RFC 8441,
    /// RFC 9220).
    pub connect_protocol: Option<String>,
}

impl RequestHead {
    /// An HTTP/1.1 request.
    pub fn h1(request: Request<()>, peer: SocketAddr, tls: bool) -> Self {
        RequestHead {
            request,
            peer,
            tls,
            protocol: HttpVersion::Http1,
            connect_protocol: None,
        }
    }

    /// An HTTP/2 or HTTP/3 request: `Host` is filled from `:authority`.
    pub fn multiplexed(
        mut request: Request<()>,
        peer: SocketAddr,
        tls: bool,
        protocol: HttpVersion,
        connect_protocol: Option<String>,
    ) -> Self {
        if let Some(v) = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().entry(HOST).or_insert(v);
        }
        RequestHead {
            request,
            peer,
            tls,
            protocol,
            connect_protocol,
        }
    }

    /// The host the request names (`Host`, or the URI's authority).
    pub fn authority(&self) -> Option<&str> {
        self.request
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.request.uri().host())
    }

    /// The request path (no query).
    pub fn path(&self) -> &str {
        self.request.uri().path()
    }

    /// The protocols offered, in the client's order: HTTP/1.1 `Upgrade`
    /// (when `Connection` names it), or the `:protocol` of an extended
    /// CONNECT.
    fn offers(&self) -> Result<Vec<ProtocolToken>, Refusal> {
        if self.protocol != HttpVersion::Http1 {
            return Ok(match &self.connect_protocol {
                Some(p) if self.request.method() == Method::CONNECT => {
                    ProtocolToken::parse(p).into_iter().collect()
                }
                _ => Vec::new(),
            });
        }
        upgrade_offer(&self.request)
            .map(Option::unwrap_or_default)
            .map_err(|e| Refusal::new(e.status(), Reason::BadUpgrade, e.to_string()))
    }
}

/// The protocol selected for a switch: its handler and the client's token.
pub struct Selection {
    /// The protocol's handler (HTTP/1.1 `101`).
    pub handler: Arc<dyn UpgradeProtocol>,
    /// The token selected from the client's offer.
    pub token: ProtocolToken,
}

impl std::fmt::Debug for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Selection")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// A built-in app serves the request.
#[derive(Debug)]
pub struct AppTicket {
    /// The route (its app, handlers and settings).
    pub route: Arc<RouteEntry>,
    /// The protocol to switch to; `None`: the app answers a page.
    pub switch: Option<Selection>,
    /// The connection's slot in the route's caps (switches only).
    pub permit: Option<ConnectionGuard>,
}

/// The route's upstream group serves the request.
#[derive(Debug)]
pub struct ProxyTicket {
    /// The route (its policy and generation).
    pub route: Arc<RouteEntry>,
    /// The request's slot in the route's caps.
    pub permit: ConnectionGuard,
}

/// A fallback session request (`?sw=`) on a route that serves WebSocket.
#[derive(Debug)]
pub struct SessionTicket {
    /// The route (its backend and `fallback*` settings).
    pub route: Arc<RouteEntry>,
    /// For a request that opens a session: its slot in the route's caps,
    /// held by the session for its whole life.
    pub permit: Option<ConnectionGuard>,
}

/// What the front does with a request.
#[derive(Debug)]
pub enum Decision {
    /// Serve it with a built-in app.
    App(AppTicket),
    /// Proxy it.
    Proxy(ProxyTicket),
    /// Serve a fallback session request.
    Session(SessionTicket),
    /// Answer the browser client of fallback sessions
    /// ([`crate::session::CLIENT_JS`]).
    ClientScript,
    /// Switch the connection itself (RFC 2817 TLS), then serve the request
    /// again on it.
    SwitchConnection(Selection),
    /// Answer this refusal (already logged and counted).
    Refuse(Refusal),
    /// No route matches: 404.
    NotFound,
}

/// The connection a request arrived on, as far as the dispatcher cares.
#[derive(Clone, Copy)]
pub struct Connection<'a> {
    /// Protocols the connection itself can switch to (RFC 2817 TLS).
    pub upgrades: &'a Registry,
    /// Whether it is TLS, whether the listener has a certificate.
    pub info: ConnInfo,
}

/// Decides for every front of a gateway.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    gateway: Arc<Gateway>,
}

enum Selected {
    /// A protocol of the route's target.
    Route(ProtocolToken),
    /// A protocol of the connection itself.
    Connection(Arc<dyn UpgradeProtocol>, ProtocolToken),
}

impl Dispatcher {
    /// The dispatcher of `gateway`'s live configuration.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Dispatcher { gateway }
    }

    /// The gateway it routes with.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The decision for `head` (see the module docs).
    pub fn decide(&self, head: &RequestHead, conn: Connection<'_>) -> Decision {
        let method = head.request.method();
        if head.path() == CLIENT_JS_PATH && (method == Method::GET || method == Method::HEAD) {
            return Decision::ClientScript;
        }
        let live = self.gateway.live();
        let entry = live
            .config
            .route_for(head.authority(), head.path())
            .and_then(|r| live.entry_of(r))
            .cloned();
        let label = entry.as_ref().map_or(NO_ROUTE, |e| e.label.as_str());
        let offers = match head.offers() {
            Ok(o) => o,
            Err(r) => {
                self.record_refusal(head, label, &r);
                return Decision::Refuse(r);
            }
        };
        let asks_to_switch = !offers.is_empty();
        // The first of the client's tokens that the route or the connection
        // itself speaks (RFC 9110 §7.8: the client's order).
        let mut selected = None;
        for token in offers {
            if token.is("h2c") {
                continue;
            }
            if entry
                .as_ref()
                .is_some_and(|e| route_switches(e, &token, head.protocol))
            {
                selected = Some(Selected::Route(token));
                break;
            }
            if head.protocol == HttpVersion::Http1 {
                if let Some(h) = conn.upgrades.find(&token, &conn.info) {
                    selected = Some(Selected::Connection(h.clone(), token));
                    break;
                }
            }
        }
        if let Some(Selected::Connection(handler, token)) = selected {
            return Decision::SwitchConnection(Selection { handler, token });
        }
        let Some(entry) = entry else {
            // An upgrade that finds no route is a failed attempt like any
            // other (counted, kept for /status/failures and doctor).
            if asks_to_switch {
                let host = head.authority().unwrap_or("-");
                let detail = format!(
                    "no route for host {host} and path {}: check the client's URL, or add a \
                     [[route]] that matches it",
                    head.path()
                );
                let r = Refusal::new(StatusCode::NOT_FOUND, Reason::NoRoute, detail);
                self.record_refusal(head, NO_ROUTE, &r);
                return Decision::NotFound;
            }
            info!(
                client = %head.peer,
                protocol = head.protocol.label(),
                path = head.path(),
                "no route: 404"
            );
            return Decision::NotFound;
        };
        let token = match selected {
            Some(Selected::Route(t)) => Some(t),
            _ => None,
        };
        match self.admit(head, conn, &entry, token) {
            Ok(d) => d,
            Err(r) => {
                self.record_refusal(head, &entry.label, &r);
                Decision::Refuse(r)
            }
        }
    }

    /// The decision once the cluster's caps admit its connection (one
    /// Redis call; the decision itself without a cluster, or where it takes
    /// no slot): every front awaits this before it switches or answers.
    pub async fn confirm(&self, mut decision: Decision, head: &RequestHead) -> Decision {
        let (permit, route) = match &mut decision {
            Decision::App(t) => (t.permit.as_mut(), &t.route),
            Decision::Proxy(t) => (Some(&mut t.permit), &t.route),
            Decision::Session(t) => (t.permit.as_mut(), &t.route),
            _ => return decision,
        };
        let Some(permit) = permit.filter(|p| p.needs_shared()) else {
            return decision;
        };
        let route = route.clone();
        match permit.take_shared().await {
            Ok(()) => decision,
            Err(r) => {
                self.record_refusal(head, &route.label, &r);
                Decision::Refuse(r)
            }
        }
    }

    /// The route's policy for a request whose protocol is `token` (`None`:
    /// a plain request).
    fn admit(
        &self,
        head: &RequestHead,
        conn: Connection<'_>,
        entry: &Arc<RouteEntry>,
        token: Option<ProtocolToken>,
    ) -> Result<Decision, Refusal> {
        let policy = &entry.config.policy;
        if policy.require_tls && !head.tls {
            return Err(tls_required(head));
        }
        check_origin(head.request.headers(), policy)?;
        if token.is_none() && head.connect_protocol.is_none() && offers_sessions(entry, head) {
            let permit = if opens_session(head) {
                Some(self.permit(head, entry)?)
            } else {
                None
            };
            return Ok(Decision::Session(SessionTicket {
                route: entry.clone(),
                permit,
            }));
        }
        if token.is_none() {
            if let Some(p) = &head.connect_protocol {
                return Err(Refusal::new(
                    StatusCode::NOT_IMPLEMENTED,
                    Reason::UnsupportedProtocol,
                    format!(
                        "this route does not switch to {p:?} over extended CONNECT; it speaks {}",
                        speaks(entry).join(", ")
                    ),
                ));
            }
        }
        match &entry.target {
            Target::Upstream => {
                if token.is_none() && policy.require_upgrade {
                    return Err(upgrade_required(entry, head));
                }
                let permit = self.permit(head, entry)?;
                Ok(Decision::Proxy(ProxyTicket {
                    route: entry.clone(),
                    permit,
                }))
            }
            Target::App(app) => match token {
                Some(token) => {
                    let Some(handler) = app.handlers.find(&token, &conn.info).cloned() else {
                        return Err(upgrade_required(entry, head));
                    };
                    let permit = self.permit(head, entry)?;
                    Ok(Decision::App(AppTicket {
                        route: entry.clone(),
                        switch: Some(Selection { handler, token }),
                        permit: Some(permit),
                    }))
                }
                None if app.app.upgrade_tokens().is_empty() => Ok(Decision::App(AppTicket {
                    route: entry.clone(),
                    switch: None,
                    permit: None,
                })),
                None => Err(upgrade_required(entry, head)),
            },
        }
    }

    fn permit(&self, head: &RequestHead, entry: &RouteEntry) -> Result<ConnectionGuard, Refusal> {
        self.gateway
            .limiter()
            .try_acquire(&entry.label, head.peer.ip(), &entry.config.policy)
    }

    fn record_refusal(&self, head: &RequestHead, route: &str, r: &Refusal) {
        self.refused(head.peer, route, head.protocol, head.request.headers(), r);
    }

    /// Count, keep (the failures ring) and log a refusal of the request
    /// with `headers` from `client` on `route` (`-`: none): the
    /// dispatcher's own, and a front's when a handshake is refused after
    /// the decision.
    pub fn refused(
        &self,
        client: SocketAddr,
        route: &str,
        protocol: HttpVersion,
        headers: &http::HeaderMap,
        r: &Refusal,
    ) {
        let reason = r.reason.label();
        let metrics = self.gateway.metrics();
        metrics.upgrade_attempt(route, "refused", reason);
        metrics.failures().record(
            client,
            route,
            protocol,
            UpgradeFields::of(headers),
            r.reason,
            &r.detail,
        );
        info!(
            client = %client,
            route,
            protocol = protocol.label(),
            status = r.status.as_u16(),
            reason,
            detail = %r.detail,
            "request refused"
        );
    }
}

/// Whether the route's target switches to `token` (and its policy allows
/// it). Over HTTP/2 and HTTP/3 only WebSocket is carried (RFC 8441, 9220).
fn route_switches(entry: &RouteEntry, token: &ProtocolToken, protocol: HttpVersion) -> bool {
    if !entry.config.policy.token_allowed(token) {
        return false;
    }
    if protocol != HttpVersion::Http1 && !token.is("websocket") {
        return false;
    }
    match &entry.target {
        Target::Upstream => true,
        Target::App(app) => app.handlers.speaks(&token.name),
    }
}

/// Whether `head` is a fallback session request on a route that serves
/// them: `sw` in the query, a route that serves WebSocket and offers at
/// least one fallback transport.
fn offers_sessions(entry: &RouteEntry, head: &RequestHead) -> bool {
    let policy = &entry.config.policy;
    is_session_query(head.request.uri().query())
        && !policy.fallback.is_empty()
        && policy.upgrade_allowed("websocket")
        && match &entry.target {
            Target::Upstream => true,
            Target::App(app) => app.handlers.speaks("websocket"),
        }
}

/// Whether a session request opens a session: `sw=open`, or a bare
/// `sw=sse` (an `EventSource` without a session, not resuming one with
/// `Last-Event-ID`). A malformed query opens nothing (the session side
/// answers it 400).
fn opens_session(head: &RequestHead) -> bool {
    let query = head.request.uri().query().unwrap_or_default();
    // The other actions are parsed once, by the session side.
    let opening = [Action::Open.as_str(), Action::Sse.as_str()];
    if !session_action(query).is_some_and(|a| opening.contains(&a)) {
        return false;
    }
    match SessionQuery::parse(query) {
        // A preflight (OPTIONS) or a wrong method opens nothing.
        Ok(q) => match q.action {
            Action::Open => head.request.method() == Method::POST,
            Action::Sse => {
                head.request.method() == Method::GET
                    && q.session.is_none()
                    && !head.request.headers().contains_key("last-event-id")
            }
            Action::Poll | Action::Send | Action::Close => false,
        },
        Err(_) => false,
    }
}

/// What the route switches to, for messages and `Upgrade` on a 426.
fn speaks(entry: &RouteEntry) -> Vec<String> {
    match &entry.target {
        Target::Upstream => entry.config.policy.allowed_upgrades.clone(),
        Target::App(app) => app.handlers.advertised(),
    }
}

/// 426 listing the route's tokens, or 405 for a method that can never
/// switch (only GET upgrades over HTTP/1.1). HTTP/2 and HTTP/3 have no
/// `Upgrade` (RFC 9113 8.2.2) and so no 426: 400 naming the extended
/// CONNECT that opens a WebSocket there.
fn upgrade_required(entry: &RouteEntry, head: &RequestHead) -> Refusal {
    let tokens = speaks(entry);
    if head.protocol != HttpVersion::Http1 {
        let rfc = if head.protocol == HttpVersion::Http2 {
            "RFC 8441"
        } else {
            "RFC 9220"
        };
        return Refusal::new(
            StatusCode::BAD_REQUEST,
            Reason::UpgradeRequired,
            format!(
                "this resource speaks {} only; over {} that is an extended CONNECT \
                 (:method CONNECT, :protocol websocket, {rfc})",
                tokens.join(" or "),
                head.protocol
            ),
        );
    }
    if head.request.method() != Method::GET {
        return Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Reason::UpgradeRequired,
            format!(
                "this resource is opened with GET and Upgrade: {}",
                tokens.join(", ")
            ),
        )
        .with_header(ALLOW, HeaderValue::from_static("GET"));
    }
    let mut r = Refusal::new(
        StatusCode::UPGRADE_REQUIRED,
        Reason::UpgradeRequired,
        format!(
            "this resource speaks {} only: send Upgrade: {} and Connection: Upgrade",
            tokens.join(" or "),
            tokens.first().map(String::as_str).unwrap_or("")
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&tokens.join(", ")) {
        r = r.with_header(UPGRADE, v);
    }
    r.with_header(CONNECTION, HeaderValue::from_static("Upgrade"))
}

/// A cleartext request on a TLS-only route: over HTTP/1.1 a 426 naming
/// RFC 2817's token (the client may switch this connection where the
/// listener offers it, or come back over `https://`), 403 over HTTP/2.
fn tls_required(head: &RequestHead) -> Refusal {
    if head.protocol == HttpVersion::Http1 {
        return Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            Reason::TlsRequired,
            "this resource is served over TLS only: send Upgrade: TLS/1.3 with \
             Connection: Upgrade (RFC 2817), or use https://",
        )
        .with_header(UPGRADE, HeaderValue::from_static("TLS/1.3, HTTP/1.1"))
        .with_header(CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    Refusal::new(
        StatusCode::FORBIDDEN,
        Reason::TlsRequired,
        "this resource is served over TLS only: use https:// or wss://",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::upgrade::{Switch, UpgradeProtocol};

    /// Routes of every kind: an upstream, the echo app, the line-echo app,
    /// a page, and policies that refuse.
    const CONFIG: &str = r#"
[[listener]]
address = "127.0.0.1:0"

[[upstream]]
name = "u"
servers = ["ws://127.0.0.1:9"]

[[route]]
path = "/proxied"
upstream = "u"
[route.policy]
allowed_upgrades = ["websocket", "lineecho/1"]

[[route]]
path = "/echo"
app = "echo"

[[route]]
path = "/line"
app = "lineecho"

[[route]]
path = "/page"
app = "index"

[[route]]
path = "/guarded"
app = "echo"
[route.policy]
allowed_origins = ["https://good.example"]
max_connections = 1

[[route]]
path = "/tls-only"
upstream = "u"
[route.policy]
require_tls = true

[[route]]
path = "/no-fallback"
app = "echo"
[route.policy]
fallback = []
"#;

    /// The connection's own protocol (RFC 2817 TLS stands for any): only
    /// on cleartext connections of a listener with a certificate.
    struct ConnectionProtocol(Vec<ProtocolToken>);

    impl UpgradeProtocol for ConnectionProtocol {
        fn tokens(&self) -> &[ProtocolToken] {
            &self.0
        }
        fn available(&self, conn: &ConnInfo) -> bool {
            conn.has_certificate && !conn.tls
        }
        fn prepare(
            &self,
            _: &Request<()>,
            _: &ProtocolToken,
            _: &ConnInfo,
        ) -> Result<Switch, Refusal> {
            unreachable!("the dispatcher selects, it never prepares")
        }
    }

    fn dispatcher() -> Dispatcher {
        let cfg = Config::from_toml_str(CONFIG, "test").unwrap();
        Dispatcher::new(Gateway::new(cfg, None).unwrap())
    }

    fn tls_registry() -> Registry {
        Registry::new().with(Arc::new(ConnectionProtocol(vec![ProtocolToken::parse(
            "TLS/1.3",
        )
        .unwrap()])))
    }

    fn h1(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "localhost");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        RequestHead::h1(
            b.body(()).unwrap(),
            "127.0.0.1:5000".parse().unwrap(),
            false,
        )
    }

    fn upgrade(path: &str, offer: &str) -> RequestHead {
        h1(
            "GET",
            path,
            &[("connection", "Upgrade"), ("upgrade", offer)],
        )
    }

    fn extended_connect(path: &str, protocol: HttpVersion, token: &str) -> RequestHead {
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(format!("https://localhost{path}"))
            .body(())
            .unwrap();
        RequestHead::multiplexed(
            req,
            "127.0.0.1:5000".parse().unwrap(),
            true,
            protocol,
            Some(token.to_string()),
        )
    }

    fn decide(
        d: &Dispatcher,
        head: &RequestHead,
        upgrades: &Registry,
        certificate: bool,
    ) -> Decision {
        let info = ConnInfo {
            tls: head.tls,
            has_certificate: certificate,
        };
        d.decide(head, Connection { upgrades, info })
    }

    fn refusal(decision: Decision) -> Refusal {
        match decision {
            Decision::Refuse(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn app_token(decision: &Decision) -> Option<String> {
        match decision {
            Decision::App(t) => t.switch.as_ref().map(|s| s.token.to_string()),
            other => panic!("expected an app, got {other:?}"),
        }
    }

    #[test]
    fn the_first_offered_token_the_route_speaks_wins() {
        let d = dispatcher();
        let none = Registry::new();
        // The client's order, not the route's.
        let got = decide(
            &d,
            &upgrade("/line", "foo, lineecho/1, websocket"),
            &none,
            false,
        );
        assert_eq!(app_token(&got).as_deref(), Some("lineecho/1"));
        let got = decide(&d, &upgrade("/echo", "websocket, lineecho/1"), &none, false);
        assert_eq!(app_token(&got).as_deref(), Some("websocket"));
        // A version must match when the handler names one.
        let r = refusal(decide(&d, &upgrade("/line", "lineecho/2"), &none, false));
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(r.header(UPGRADE).unwrap(), "lineecho/1");
    }

    #[test]
    fn h2c_is_never_selected() {
        let d = dispatcher();
        let r = refusal(decide(
            &d,
            &upgrade("/echo", "h2c"),
            &Registry::new(),
            false,
        ));
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        // A proxied route gets it as a plain request: the upgrade is not forwarded.
        assert!(matches!(
            decide(&d, &upgrade("/proxied", "h2c"), &Registry::new(), false),
            Decision::Proxy(_)
        ));
    }

    #[test]
    fn upgrade_without_connection_upgrade_is_a_plain_request() {
        let d = dispatcher();
        let head = h1("GET", "/echo", &[("upgrade", "websocket")]);
        let r = refusal(decide(&d, &head, &Registry::new(), false));
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(r.reason, Reason::UpgradeRequired);
        let head = h1("POST", "/echo", &[]);
        let r = refusal(decide(&d, &head, &Registry::new(), false));
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.header(ALLOW).unwrap(), "GET");
    }

    #[test]
    fn a_hostile_offer_is_400() {
        let d = dispatcher();
        for offer in ["websocket, , /1", "web socket", "a/b/c"] {
            let r = refusal(decide(
                &d,
                &upgrade("/echo", offer),
                &Registry::new(),
                false,
            ));
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{offer:?}");
            assert_eq!(r.reason, Reason::BadUpgrade, "{offer:?}");
        }
        assert_eq!(
            d.gateway()
                .metrics()
                .upgrade_attempts("refused", "bad_upgrade"),
            3
        );
    }

    #[test]
    fn the_connection_protocol_needs_a_certificate_and_cleartext() {
        let d = dispatcher();
        let tls = tls_registry();
        let got = decide(&d, &upgrade("/page", "TLS/1.3"), &tls, true);
        assert!(matches!(got, Decision::SwitchConnection(s) if s.token.to_string() == "TLS/1.3"));
        // No certificate: the handler is unavailable and skipped; the page is served.
        let got = decide(&d, &upgrade("/page", "TLS/1.3"), &tls, false);
        assert!(matches!(got, Decision::App(AppTicket { switch: None, .. })));
        // Even where no route matches, the connection itself can switch.
        let got = decide(&d, &upgrade("/nowhere", "TLS/1.3"), &tls, true);
        assert!(matches!(got, Decision::SwitchConnection(_)));
        assert!(matches!(
            decide(&d, &h1("GET", "/nowhere", &[]), &tls, true),
            Decision::NotFound
        ));
    }

    #[test]
    fn policy_applies_to_app_routes() {
        let d = dispatcher();
        let none = Registry::new();
        let evil = h1(
            "GET",
            "/guarded",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("origin", "https://evil.example"),
            ],
        );
        let r = refusal(decide(&d, &evil, &none, false));
        assert_eq!(
            (r.status, r.reason),
            (StatusCode::FORBIDDEN, Reason::Origin)
        );

        let good = h1(
            "GET",
            "/guarded",
            &[
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("origin", "https://good.example"),
            ],
        );
        let first = decide(&d, &good, &none, false);
        assert_eq!(app_token(&first).as_deref(), Some("websocket"));
        // The slot is held by the decision: a second one is over the cap.
        let r = refusal(decide(&d, &good, &none, false));
        assert_eq!(
            (r.status, r.reason),
            (StatusCode::SERVICE_UNAVAILABLE, Reason::RouteFull)
        );
        assert!(r.header(http::header::RETRY_AFTER).is_some());
        drop(first);
        assert!(matches!(decide(&d, &good, &none, false), Decision::App(_)));
        let m = d.gateway().metrics();
        assert_eq!(m.upgrade_attempts("refused", "origin"), 1);
        assert_eq!(m.upgrade_attempts("refused", "route_full"), 1);
    }

    #[test]
    fn require_tls_asks_for_rfc2817_over_h1_and_refuses_elsewhere() {
        let d = dispatcher();
        let r = refusal(decide(
            &d,
            &h1("GET", "/tls-only", &[]),
            &Registry::new(),
            false,
        ));
        assert_eq!(
            (r.status, r.reason),
            (StatusCode::UPGRADE_REQUIRED, Reason::TlsRequired)
        );
        assert_eq!(r.header(UPGRADE).unwrap(), "TLS/1.3, HTTP/1.1");
        let mut head = extended_connect("/tls-only", HttpVersion::Http2, "websocket");
        head.tls = false;
        let r = refusal(decide(&d, &head, &Registry::new(), false));
        assert_eq!(
            (r.status, r.reason),
            (StatusCode::FORBIDDEN, Reason::TlsRequired)
        );
        let head = extended_connect("/tls-only", HttpVersion::Http2, "websocket");
        assert!(matches!(
            decide(&d, &head, &Registry::new(), true),
            Decision::Proxy(_)
        ));
    }

    #[test]
    fn extended_connect_switches_only_to_websocket() {
        let d = dispatcher();
        let none = Registry::new();
        for version in [HttpVersion::Http2, HttpVersion::Http3] {
            let got = decide(
                &d,
                &extended_connect("/echo", version, "websocket"),
                &none,
                true,
            );
            assert_eq!(app_token(&got).as_deref(), Some("websocket"), "{version}");
            let got = decide(
                &d,
                &extended_connect("/proxied", version, "websocket"),
                &none,
                true,
            );
            assert!(matches!(got, Decision::Proxy(_)), "{version}");
            // The route allows lineecho/1 but it is not carried over HTTP/2 or HTTP/3.
            let r = refusal(decide(
                &d,
                &extended_connect("/proxied", version, "lineecho/1"),
                &none,
                true,
            ));
            assert_eq!(
                (r.status, r.reason),
                (StatusCode::NOT_IMPLEMENTED, Reason::UnsupportedProtocol),
                "{version}"
            );
        }
    }

    fn session(decision: Decision) -> SessionTicket {
        match decision {
            Decision::Session(t) => t,
            other => panic!("expected a session, got {other:?}"),
        }
    }

    #[test]
    fn session_requests_are_decided_on_routes_that_serve_websocket() {
        let d = dispatcher();
        let none = Registry::new();
        // Opening takes a slot of the caps; the other requests do not.
        for (method, target, opens) in [
            ("POST", "/echo?sw=open", true),
            ("GET", "/echo?sw=sse", true),
            ("POST", "/proxied?room=1&sw=open", true),
            // A preflight, or a wrong method (answered 405), opens nothing.
            ("OPTIONS", "/echo?sw=open", false),
            ("GET", "/echo?sw=open", false),
            ("POST", "/echo?sw=sse", false),
            ("GET", "/echo?sw=poll&sid=00&after=0", false),
            ("POST", "/echo?sw=send&sid=00&seq=1", false),
            ("GET", "/echo?sw=bogus", false),
            // A malformed open opens nothing (the session side answers 400).
            ("POST", "/echo?sw=open&sw=open", false),
        ] {
            let t = session(decide(&d, &h1(method, target, &[]), &none, false));
            assert_eq!(t.permit.is_some(), opens, "{method} {target}");
        }
        // An EventSource reconnecting resumes its session: no new slot.
        let resume = h1("GET", "/echo?sw=sse", &[("last-event-id", "x.y.3")]);
        assert!(session(decide(&d, &resume, &none, false)).permit.is_none());
        // The session transports over HTTP/2 too; an extended CONNECT with
        // `sw` is still a WebSocket.
        let mut head = extended_connect("/echo?sw=open", HttpVersion::Http2, "websocket");
        assert!(app_token(&decide(&d, &head, &none, true)).is_some());
        head.request = Request::builder()
            .method(Method::POST)
            .uri("https://localhost/echo?sw=open")
            .body(())
            .unwrap();
        head.connect_protocol = None;
        assert!(session(decide(&d, &head, &none, true)).permit.is_some());
        // No WebSocket, or fallback off: the route answers as without `sw`.
        let r = refusal(decide(&d, &h1("GET", "/line?sw=sse", &[]), &none, false));
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        let r = refusal(decide(
            &d,
            &h1("GET", "/no-fallback?sw=sse", &[]),
            &none,
            false,
        ));
        assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED);
        assert!(matches!(
            decide(&d, &h1("GET", "/page?sw=sse", &[]), &none, false),
            Decision::App(_)
        ));
    }

    #[test]
    fn session_opens_follow_the_route_policy() {
        let d = dispatcher();
        let none = Registry::new();
        let open = |origin: &str| h1("POST", "/guarded?sw=open", &[("origin", origin)]);
        let r = refusal(decide(&d, &open("https://evil.example"), &none, false));
        assert_eq!(
            (r.status, r.reason),
            (StatusCode::FORBIDDEN, Reason::Origin)
        );
        // The origin applies to every request of a session, not only opens.
        let send = h1(
            "POST",
            "/guarded?sw=send&sid=00&seq=1",
            &[("origin", "https://evil.example")],
        );
        assert_eq!(
            refusal(decide(&d, &send, &none, false)).reason,
            Reason::Origin
        );
        let first = session(decide(&d, &open("https://good.example"), &none, false));
        let r = refusal(decide(&d, &open("https://good.example"), &none, false));
        assert_eq!(r.reason, Reason::RouteFull);
        drop(first);
        assert!(
            session(decide(&d, &open("https://good.example"), &none, false))
                .permit
                .is_some()
        );
        let r = refusal(decide(
            &d,
            &h1("POST", "/tls-only?sw=open", &[]),
            &none,
            false,
        ));
        assert_eq!(r.reason, Reason::TlsRequired);
    }

    #[test]
    fn the_client_script_is_served_on_every_host() {
        let d = dispatcher();
        let none = Registry::new();
        for m in ["GET", "HEAD"] {
            let got = decide(&d, &h1(m, "/.switchyard/client.js", &[]), &none, false);
            assert!(matches!(got, Decision::ClientScript), "{m}");
        }
        assert!(matches!(
            decide(&d, &h1("POST", "/.switchyard/client.js", &[]), &none, false),
            Decision::NotFound
        ));
    }

    #[test]
    fn a_route_decision_carries_its_live_entry() {
        let d = dispatcher();
        let Decision::Proxy(t) = decide(&d, &h1("GET", "/proxied/x", &[]), &Registry::new(), false)
        else {
            panic!("expected a proxy decision");
        };
        assert_eq!(t.route.config.path, "/proxied");
        assert!(matches!(t.route.target, Target::Upstream));
    }
}

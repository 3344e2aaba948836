//! Backend connectors: what opens the real WebSocket a fallback session
//! bridges to. Given the client's `open` request and the subprotocols it
//! offers, a connector returns a [`BackendSocket`] (the WebSocket, client
//! role, and the subprotocol the backend chose) or a [`BackendRefusal`]
//! (the answer the client gets instead, as an upgrade would have got it).
//!
//! * [`ProxiedBackend`]: a route's upstream group, through the proxy's
//!   attempt loop and verified upgrade (fresh `Sec-WebSocket-Key`, the
//!   `Sec-WebSocket-Accept` checked, the client's end-to-end headers —
//!   `Origin`, `Cookie`, `Authorization` — forwarded like an upgrade's).
//! * [`EchoBackend`]: the built-in echo app, over an in-memory duplex: the
//!   real server handshake and echo loop on one end, the real client
//!   handshake on the other.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    CONTENT_LENGTH, CONTENT_TYPE, HOST, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use switchyard::client::ClientBuilder;
use switchyard::fallback::wire::strip_session_params;
use switchyard::proto::handshake::Negotiated;
use switchyard::proto::{Connection, Role};
use switchyard::server::AcceptConfig;
use switchyard::{Limits, WebSocket};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::apps::AppSettings;
use crate::config::{Route, RouteTarget};
use crate::outcome::{Reason, Refusal};
use crate::proxy::forward::{strip_hop_by_hop, translate_extended_connect};
use crate::proxy::{
    frame_aware_config, upstream_upgrade, AttemptResult, BackendLease, ClientInfo, ForwardOptions,
    ProxyContext, Upgraded,
};

/// A byte stream a backend WebSocket runs over (TCP, TLS, an in-memory
/// duplex), boxed so that every connector yields one type.
pub trait BackendIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> BackendIo for T {}

/// The stream of a [`BackendSocket`].
pub type BackendStream = Box<dyn BackendIo>;

/// What a connector is asked to open.
#[derive(Debug, Clone, Copy)]
pub struct BackendOpen<'a> {
    /// The client's request head (its path, query and headers).
    pub head: &'a http::request::Parts,
    /// Where it came from.
    pub client: ClientInfo,
    /// The subprotocols the client offers, in its order.
    pub protocols: &'a [String],
}

impl BackendOpen<'_> {
    /// The target the backend sees: the client's path, and its query
    /// without the session parameters.
    pub fn target(&self) -> String {
        let path = self.head.uri.path();
        match self.head.uri.query().and_then(strip_session_params) {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        }
    }
}

/// An open backend WebSocket.
#[derive(Debug)]
pub struct BackendSocket {
    /// The WebSocket (client role).
    pub ws: WebSocket<BackendStream>,
    /// The subprotocol the backend chose (one the client offered).
    pub subprotocol: Option<String>,
    /// Who the backend is, for the log.
    pub backend: String,
    /// The backend's least-connections slot, held for the session's life.
    pub lease: Option<BackendLease>,
}

/// The answer the client gets when the backend cannot be opened: a status
/// of the gateway's own (403, 429, 502, 504...) or the backend's refusal
/// relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRefusal {
    /// The status.
    pub status: StatusCode,
    /// End-to-end headers (`Retry-After`, the backend's own).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// A fixed label for metrics and the log.
    pub reason: &'static str,
    /// What happened, for the log.
    pub detail: String,
}

impl From<Refusal> for BackendRefusal {
    fn from(r: Refusal) -> Self {
        let mut headers = r.headers();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        BackendRefusal {
            status: r.status,
            headers,
            body: Bytes::from(format!("{}\n", r.detail)),
            reason: r.reason.label(),
            detail: r.detail,
        }
    }
}

/// What [`BackendConnector::connect`] returns.
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BackendSocket, BackendRefusal>> + Send + 'a>>;

/// Opens the backend WebSocket of a session.
pub trait BackendConnector: Send + Sync {
    /// Open it, or say what the client gets instead.
    fn connect<'a>(&'a self, open: BackendOpen<'a>) -> ConnectFuture<'a>;
}

/// The backend's choice among the offered subprotocols: none, or exactly
/// one of `offered`.
fn chosen_subprotocol(headers: &HeaderMap, offered: &[String]) -> Result<Option<String>, Refusal> {
    let mut values = headers.get_all(SEC_WEBSOCKET_PROTOCOL).iter();
    let bad = |why: String| Refusal::new(StatusCode::BAD_GATEWAY, Reason::BadSubprotocol, why);
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(v), None) => match v.to_str() {
            Ok(p) if offered.iter().any(|o| o == p) => Ok(Some(p.to_string())),
            _ => Err(bad(format!(
                "the backend chose the subprotocol {v:?}, which the client did not offer"
            ))),
        },
        _ => Err(bad(
            "the backend answered several Sec-WebSocket-Protocol lines".into(),
        )),
    }
}

// ------------------------------------------------------------- proxied

/// A route's upstream group as the backend.
#[derive(Debug)]
pub struct ProxiedBackend<'a> {
    /// The proxy's shared state (groups, `[limits]`).
    pub ctx: &'a ProxyContext,
    /// The route (its group, policy and forwarding options).
    pub route: &'a Route,
}

/// Headers of the `open` request that describe it, not the client: they
/// do not reach the backend's upgrade request.
const NOT_FORWARDED: [HeaderName; 5] = [
    CONTENT_LENGTH,
    CONTENT_TYPE,
    SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_EXTENSIONS,
    HeaderName::from_static("last-event-id"),
];

/// The client's `open` as the extended CONNECT the proxy translates to an
/// HTTP/1.1 upgrade: the same rules (fresh key, end-to-end headers kept,
/// forwarding headers added) apply to a request that could not upgrade
/// itself. The subprotocols are the offered ones; no extension is offered
/// (the gateway reads the backend's messages itself).
fn as_extended_connect(open: &BackendOpen<'_>) -> Result<Request<()>, Refusal> {
    let head = open.head;
    let authority = head
        .uri
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            head.headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                Reason::BadTarget,
                "the request names no host",
            )
        })?;
    let scheme = if open.client.tls { "https" } else { "http" };
    let uri: Uri = format!("{scheme}://{authority}{}", open.target())
        .parse()
        .map_err(|_| {
            Refusal::new(
                StatusCode::BAD_REQUEST,
                Reason::BadTarget,
                "the request target cannot be forwarded",
            )
        })?;
    let mut headers = head.headers.clone();
    for h in NOT_FORWARDED {
        headers.remove(h);
    }
    if !open.protocols.is_empty() {
        // Tokens (checked when the body was parsed), hence a valid value.
        if let Ok(v) = HeaderValue::from_str(&open.protocols.join(", ")) {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

impl BackendConnector for ProxiedBackend<'_> {
    fn connect<'a>(&'a self, open: BackendOpen<'a>) -> ConnectFuture<'a> {
        Box::pin(async move {
            let policy = &self.route.policy;
            let group_name = match self.route.target() {
                RouteTarget::Upstream(name) => name,
                RouteTarget::App(_) => {
                    return Err(Refusal::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Reason::UnknownUpstream,
                        "this route serves a built-in app, not an upstream",
                    )
                    .into())
                }
            };
            let Some(group) = self.ctx.upstreams.get(group_name) else {
                return Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    Reason::UnknownUpstream,
                    format!("upstream group {group_name} is not configured"),
                )
                .into());
            };
            let req = as_extended_connect(&open)?;
            let opts = ForwardOptions {
                preserve_host: policy.preserve_host,
            };
            let attempt = upstream_upgrade(
                group,
                &self.ctx.limits,
                self.ctx.max_relayed_body,
                |backend| {
                    translate_extended_connect(&req, "websocket", &open.client, backend, &opts)
                },
            )
            .await?;
            let (up, backend) = match attempt {
                AttemptResult::Upgraded(up, backend) => (up, backend),
                AttemptResult::Response {
                    response,
                    body,
                    backend,
                } => {
                    let mut headers = response.headers().clone();
                    strip_hop_by_hop(&mut headers);
                    headers.remove(CONTENT_LENGTH);
                    return Err(BackendRefusal {
                        status: response.status(),
                        headers,
                        body,
                        reason: Reason::UpstreamStatus.label(),
                        detail: format!("the upstream {backend} answered {}", response.status()),
                    });
                }
                AttemptResult::Failed {
                    status,
                    reason,
                    detail,
                    ..
                } => {
                    return Err(
                        Refusal::new(status, reason, format!("bad gateway: {detail}")).into(),
                    )
                }
            };
            let Upgraded {
                stream,
                response,
                leftover,
                lease,
                ..
            } = up;
            let subprotocol = chosen_subprotocol(response.headers(), open.protocols)?;
            if response.headers().contains_key(SEC_WEBSOCKET_EXTENSIONS) {
                return Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    Reason::BadExtensions,
                    "the backend answered with an extension that was not offered",
                )
                .into());
            }
            // The route's heartbeat and message limit, as for a frame-aware tunnel.
            let limits = frame_aware_config(policy, &self.ctx.limits).upstream_limits;
            let conn = Connection::new(Role::Client, limits);
            let stream: BackendStream = Box::new(stream);
            let ws = WebSocket::from_raw(stream, conn, &leftover).with_negotiated(Negotiated {
                subprotocol: subprotocol.clone(),
                deflate: None,
            });
            Ok(BackendSocket {
                ws,
                subprotocol,
                backend,
                lease: Some(lease),
            })
        })
    }
}

// ---------------------------------------------------------------- echo

/// Buffer of the in-memory duplex between a session and its echo.
const ECHO_PIPE_BYTES: usize = 64 << 10;

/// The built-in echo app as the backend.
#[derive(Debug, Clone)]
pub struct EchoBackend {
    accept: Arc<AcceptConfig>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    settings: AppSettings,
}

impl EchoBackend {
    /// The echo with the server's handshake settings `accept` (as for its
    /// WebSocket clients) and the route's `idle_timeout` and
    /// `drain_timeout`, stopping on `shutdown`; the session's side of the pipe uses `limits`
    /// (the route's heartbeat and sizes).
    pub fn new(
        accept: Arc<AcceptConfig>,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
        idle_timeout: Duration,
        drain_timeout: Duration,
    ) -> Self {
        let settings = AppSettings {
            idle_timeout,
            drain_timeout,
        };
        EchoBackend {
            accept,
            limits,
            shutdown,
            settings,
        }
    }
}

impl BackendConnector for EchoBackend {
    fn connect<'a>(&'a self, open: BackendOpen<'a>) -> ConnectFuture<'a> {
        Box::pin(async move {
            let (ours, theirs) = tokio::io::duplex(ECHO_PIPE_BYTES);
            let accept = self.accept.clone();
            let shutdown = self.shutdown.clone();
            let settings = self.settings.clone();
            tokio::spawn(async move {
                if let Ok(ws) = switchyard::server::accept(theirs, &accept).await {
                    // Counted as the session it serves, not as an app
                    // connection of its own: no `LiveApp`.
                    crate::apps::echo::record_end(
                        crate::apps::echo::echo(ws, shutdown, settings, None).await,
                        None,
                    );
                }
            });
            let uri: Uri = format!("ws://echo{}", open.target())
                .parse()
                .unwrap_or_else(|_| Uri::from_static("ws://echo/"));
            let stream: BackendStream = Box::new(ours);
            let client = ClientBuilder::new()
                .no_deflate()
                .limits(self.limits.clone())
                .subprotocols(open.protocols.iter().cloned());
            match client.handshake_on(stream, &uri).await {
                Ok((ws, _)) => Ok(BackendSocket {
                    subprotocol: ws.subprotocol().map(str::to_string),
                    ws,
                    backend: "echo".into(),
                    lease: None,
                }),
                Err(e) => Err(Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    Reason::Handshake,
                    format!("the echo app refused the handshake: {e}"),
                )
                .into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = Request::builder().method(Method::POST).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn client() -> ClientInfo {
        ClientInfo {
            addr: "10.0.0.9:5000".parse().unwrap(),
            tls: false,
        }
    }

    #[test]
    fn the_backend_sees_the_path_and_the_application_query_only() {
        let head = parts("/chat?room=1&sw=open", &[]);
        let open = BackendOpen {
            head: &head,
            client: client(),
            protocols: &[],
        };
        assert_eq!(open.target(), "/chat?room=1");
        let head = parts("/chat?sw=open", &[]);
        assert_eq!(
            BackendOpen {
                head: &head,
                ..open
            }
            .target(),
            "/chat"
        );
    }

    #[test]
    fn open_becomes_an_extended_connect_with_the_client_headers() {
        let head = parts(
            "/chat?sw=open&room=2",
            &[
                ("host", "app.example"),
                ("origin", "https://app.example"),
                ("cookie", "a=1"),
                ("authorization", "Bearer x"),
                ("content-type", "application/json"),
                ("content-length", "20"),
                ("sec-websocket-extensions", "permessage-deflate"),
            ],
        );
        let protocols = ["chat.v1".to_string(), "chat.v2".to_string()];
        let open = BackendOpen {
            head: &head,
            client: client(),
            protocols: &protocols,
        };
        let req = as_extended_connect(&open).unwrap();
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(req.uri().to_string(), "http://app.example/chat?room=2");
        let h = req.headers();
        for (k, v) in [
            ("origin", "https://app.example"),
            ("cookie", "a=1"),
            ("authorization", "Bearer x"),
            ("sec-websocket-protocol", "chat.v1, chat.v2"),
        ] {
            assert_eq!(h[k], v, "{k}");
        }
        for gone in ["content-type", "content-length", "sec-websocket-extensions"] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        let no_host = parts("/chat?sw=open", &[]);
        let err = as_extended_connect(&BackendOpen {
            head: &no_host,
            ..open
        })
        .unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_subprotocol_must_be_one_offered() {
        let offered = ["a".to_string(), "b".to_string()];
        let mut h = HeaderMap::new();
        assert_eq!(chosen_subprotocol(&h, &offered), Ok(None));
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("b"));
        assert_eq!(chosen_subprotocol(&h, &offered), Ok(Some("b".into())));
        h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("c"));
        assert_eq!(
            chosen_subprotocol(&h, &offered).unwrap_err().status,
            StatusCode::BAD_GATEWAY
        );
        h.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("a"));
        assert_eq!(
            chosen_subprotocol(&h, &offered).unwrap_err().reason,
            Reason::BadSubprotocol
        );
    }
}

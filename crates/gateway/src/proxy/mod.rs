//! The reverse proxy core: from a parsed client request to a verified
//! upstream upgrade and a tunnel.
//!
//! The fronts (HTTP/1.1, HTTP/2, HTTP/3) read the request head and ask the
//! dispatcher, which applies the route's admission policy (Origin, caps,
//! 426) and hands a proxied request over with the connection's slot in the
//! caps. There is one entry point per client protocol:
//!
//! * [`proxy_h1`]: HTTP/1.1 clients. Takes the client stream, the parsed
//!   request, the bytes the front read past the head (`leftover`, held
//!   until the upstream's 101 is verified), the client's address and TLS
//!   flag, the route, the shared [`ProxyContext`] and a shutdown future.
//!   Answers the client itself (101 + tunnel, the relayed upstream answer,
//!   or an error status) and returns a [`ProxyOutcome`] for the log line
//!   and metrics. The client connection is finished afterwards (never
//!   reused for another request). [`start_h1`] (the handshake phase) and
//!   [`H1Tunnel::run`] are the two halves of it: the gateway's HTTP/1.1
//!   front runs the first in the connection's task and the tunnel in a task
//!   of its own, so that an idle proxied connection holds only the tunnel's
//!   state (idle memory per connection).
//! * [`proxy_extended_connect`]: HTTP/2 and HTTP/3 extended CONNECT
//!   (RFC 8441 / 9220) to an HTTP/1.1 upstream. The front passes the request
//!   (`:authority` and `:path` in its URI), the `:protocol` value, and a
//!   `respond` callback that sends the response head on the stream (200 on
//!   success, or the error status) and, for a 2xx, returns the stream's
//!   byte channel (AsyncRead + AsyncWrite over DATA frames). Inside:
//!   [`forward::translate_extended_connect`] (fresh `Sec-WebSocket-Key`),
//!   the same attempt loop and verification as HTTP/1.1 (the 101's accept
//!   must match our key), [`forward::extended_connect_response`] (the 200
//!   with subprotocol and extensions from the upstream), then the tunnel.
//!
//! Modules: [`forward`] (request rules), [`relay`] (one upstream attempt and
//! the relay of non-101 answers), [`upstream`] (groups, balancing, health,
//! connect), [`tunnel`] (transparent and frame-aware), [`copy`] (the
//! transparent byte copy, no buffer while idle), [`splice`] (the same
//! through `splice(2)`).
//!
//! Mode choice ([`tunnel_mode`], from the route's `tunnel` setting): with
//! `auto`, frame-aware for websocket when the route sets `ping_interval` or
//! `max_message_size` (heartbeats and message limits need frames),
//! transparent otherwise; `frames` always relays messages (per-message
//! metrics); any token other than websocket is always transparent.

pub mod copy;
pub mod forward;
pub mod relay;
pub mod splice;
pub mod tunnel;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use switchyard::client::MaybeTlsStream;
use switchyard_proto::Limits;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::io::AsPlainTcp;

use crate::admission::ConnectionGuard;
use crate::config::{Policy, Route, TunnelSetting};
use crate::failures::UpgradeFields;
use crate::outcome::{Reason, Refusal};
use switchyard::proto::HttpVersion;

use crate::metrics::{Direction, Metrics, OpenGuard, Transport};
pub use forward::{ClientInfo, ForwardOptions, UpstreamRequest};
pub use relay::{ExchangeError, UpstreamAnswer};
pub use splice::SpliceMode;
pub use tunnel::{FrameAwareConfig, Spliced, TunnelEnd, TunnelReport};
pub use upstream::{BackendLease, Group, Upstreams};

/// How an attempt ended, for the one log line per upgrade attempt and the
/// `upgrade_attempts_total{result, reason}` counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutcomeKind {
    /// The gateway answered with an error status before or instead of
    /// contacting an upstream (403, 429, 503, 426, 400...).
    Refused(StatusCode),
    /// The upstream's non-101 answer was relayed to the client.
    Relayed(StatusCode),
    /// No usable upstream answer: the client got 502 or 504.
    BadGateway(StatusCode),
    /// The tunnel ran; the report says how it ended.
    Tunneled(TunnelReport),
}

/// What [`proxy_h1`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOutcome {
    /// The result.
    pub kind: OutcomeKind,
    /// Why.
    pub reason: Reason,
    /// Details for the log.
    pub detail: String,
    /// The backend used last, if any.
    pub backend: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_detail_names_the_mode_as_debug_does() {
        for mode in [TunnelMode::Transparent, TunnelMode::FrameAware] {
            for end in [
                TunnelEnd::Finished,
                TunnelEnd::Io(std::io::ErrorKind::ConnectionReset),
            ] {
                assert_eq!(
                    tunnel_detail(mode, &end),
                    format!("tunnel ({mode:?}) ended: {}", end.label())
                );
            }
        }
    }

    #[test]
    fn tunnel_mode_follows_the_policy() {
        let p = Policy::default();
        assert_eq!(tunnel_mode(&p, "websocket"), TunnelMode::Transparent);
        let hb = Policy {
            ping_interval: Some(Duration::from_secs(1)),
            ..Policy::default()
        };
        assert_eq!(tunnel_mode(&hb, "websocket"), TunnelMode::FrameAware);
        assert_eq!(tunnel_mode(&hb, "foo"), TunnelMode::Transparent);
        let lim = Policy {
            max_message_size: Some(10),
            ..Policy::default()
        };
        assert_eq!(tunnel_mode(&lim, "websocket"), TunnelMode::FrameAware);
        let forced = Policy {
            tunnel: TunnelSetting::Frames,
            ..Policy::default()
        };
        assert_eq!(tunnel_mode(&forced, "websocket"), TunnelMode::FrameAware);
        let off = Policy {
            tunnel: TunnelSetting::Transparent,
            ..hb.clone()
        };
        assert_eq!(tunnel_mode(&off, "websocket"), TunnelMode::Transparent);
    }

    #[test]
    fn frame_aware_config_takes_the_route_limits() {
        let p = Policy {
            max_message_size: Some(1000),
            ping_interval: Some(Duration::from_secs(3)),
            pong_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(9),
            ..Policy::default()
        };
        let c = frame_aware_config(&p, &Limits::default());
        for l in [&c.client_limits, &c.upstream_limits] {
            assert_eq!(l.max_message_size, 1000);
            assert_eq!(l.max_frame_size, 1000);
            assert_eq!(l.ping_interval, Some(Duration::from_secs(3)));
            assert_eq!(l.pong_timeout, Duration::from_secs(2));
        }
        assert_eq!(c.idle_timeout, Duration::from_secs(9));
        // A route without a heartbeat has none, even when [limits] has one
        // (validation copies [limits] into routes that do not set theirs).
        let limits = Limits::default().ping_interval(Some(Duration::from_secs(7)));
        let c = frame_aware_config(&Policy::default(), &limits);
        assert_eq!(c.client_limits.ping_interval, None);
    }

    #[test]
    fn context_from_config_keeps_the_metrics() {
        let cfg = crate::config::Config::from_toml_str(
            "[[listener]]\naddress = \"127.0.0.1:1\"\n\
             [[upstream]]\nname = \"chat\"\nservers = [\"ws://127.0.0.1:9\"]\n\
             [[route]]\nhost = \"a.example\"\npath = \"/ws\"\nupstream = \"chat\"\n\
             [limits]\nmax_headers = 7\n",
            "t.toml",
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let ctx = ProxyContext::from_config(&cfg, metrics.clone()).unwrap();
        assert!(ctx.upstreams.get("chat").is_some());
        assert!(ctx.upstreams.get("other").is_none());
        assert_eq!(ctx.limits.max_headers, 7);
        assert!(Arc::ptr_eq(&ctx.metrics, &metrics));
        assert_eq!(route_label(&cfg.routes[0]), "a.example/ws");
    }
}

impl ProxyOutcome {
    /// `(result, reason)` labels for metrics.
    pub fn labels(&self) -> (&'static str, &'static str) {
        let result = match self.kind {
            OutcomeKind::Refused(_) => "refused",
            OutcomeKind::Relayed(_) => "relayed",
            OutcomeKind::BadGateway(_) => "bad_gateway",
            OutcomeKind::Tunneled(_) => "switched",
        };
        (result, self.reason.label())
    }

    fn refused(r: &Refusal) -> Self {
        ProxyOutcome {
            kind: OutcomeKind::Refused(r.status),
            reason: r.reason,
            detail: r.detail.clone(),
            backend: None,
        }
    }
}

/// Shared state of the proxy: upstream groups, metrics, the protocol limits
/// (`[limits]`).
#[derive(Debug)]
pub struct ProxyContext {
    /// The upstream groups.
    pub upstreams: Arc<Upstreams>,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// `[limits]` of the configuration.
    pub limits: Limits,
    /// Largest relayed (non-101) upstream body.
    pub max_relayed_body: usize,
}

impl ProxyContext {
    /// A context with default options.
    pub fn new(upstreams: Arc<Upstreams>, metrics: Arc<Metrics>, limits: Limits) -> Self {
        ProxyContext {
            upstreams,
            metrics,
            limits,
            max_relayed_body: relay::DEFAULT_MAX_BODY,
        }
    }
}

impl ProxyContext {
    /// The context for a configuration: its upstream groups (TLS with the
    /// system roots, webpki as fallback) and `[limits]`, reporting to
    /// `metrics`. On reload, build a new context with the SAME `metrics`;
    /// existing tunnels keep their old context (`Arc`) until they end.
    pub fn from_config(
        cfg: &crate::config::Config,
        metrics: Arc<Metrics>,
    ) -> Result<Self, switchyard::Error> {
        let upstreams = Upstreams::from_config(&cfg.upstreams, Some(metrics.clone()))?;
        Ok(ProxyContext::new(
            Arc::new(upstreams),
            metrics,
            cfg.limits.clone(),
        ))
    }
}

/// The metrics label of a route: `host/path`, or the path alone when the
/// route matches any host.
pub fn route_label(route: &Route) -> String {
    match &route.host {
        Some(h) => format!("{h}{}", route.path),
        None => route.path.clone(),
    }
}

/// The route a request is proxied on: its configuration, its metrics
/// label, and its generation's upstream groups and metrics.
#[derive(Debug, Clone, Copy)]
pub struct ProxyRoute<'a> {
    /// The route (policy, upstream group name).
    pub config: &'a Route,
    /// The metrics label.
    pub label: &'a str,
    /// Upstream groups, metrics, `[limits]`.
    pub ctx: &'a ProxyContext,
}

/// The two tunnel modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMode {
    /// Bytes copied both ways.
    Transparent,
    /// WebSocket messages relayed (heartbeats, limits, message metrics).
    FrameAware,
}

/// The mode for a switched `token` on a route with `policy`.
pub fn tunnel_mode(policy: &Policy, token: &str) -> TunnelMode {
    let wants_frames = match policy.tunnel {
        TunnelSetting::Frames => true,
        TunnelSetting::Transparent => false,
        TunnelSetting::Auto => policy.ping_interval.is_some() || policy.max_message_size.is_some(),
    };
    if token == "websocket" && wants_frames {
        TunnelMode::FrameAware
    } else {
        TunnelMode::Transparent
    }
}

/// The frame-aware settings of a route: each side gets the `[limits]` with
/// the route's heartbeat and message size.
pub fn frame_aware_config(policy: &Policy, limits: &Limits) -> FrameAwareConfig {
    let mut l = limits.clone();
    if let Some(m) = policy.max_message_size {
        l.max_message_size = m;
        l.max_frame_size = l.max_frame_size.min(m.max(125));
    }
    // Validation gave the policy the heartbeat of `[limits]` where the
    // route sets none.
    l.ping_interval = policy.ping_interval;
    l.pong_timeout = policy.pong_timeout;
    // One allocation shared by both sides and by the route's other tunnels.
    let l = tunnel::shared_limits(l);
    FrameAwareConfig {
        client_limits: l.clone(),
        upstream_limits: l,
        idle_timeout: policy.idle_timeout,
        deflate: None,
    }
}

/// A successful upstream upgrade.
#[derive(Debug)]
pub struct Upgraded {
    /// The upstream connection, after its 101.
    pub stream: MaybeTlsStream,
    /// The upstream's 101.
    pub response: Response<()>,
    /// The token switched to.
    pub token: String,
    /// Bytes the upstream sent after its 101.
    pub leftover: BytesMut,
    /// Holds the backend's least-connections slot for the tunnel's life.
    pub lease: BackendLease,
}

/// What [`upstream_upgrade`] produced.
#[derive(Debug)]
pub enum AttemptResult {
    /// A verified 101.
    Upgraded(Upgraded, String),
    /// A complete non-101 answer to relay (the upstream connection is
    /// already dropped).
    Response {
        /// The head.
        response: Response<()>,
        /// The body.
        body: bytes::Bytes,
        /// The backend.
        backend: String,
    },
    /// Nothing usable: answer this.
    Failed {
        /// 502 or 504.
        status: StatusCode,
        /// Why.
        reason: Reason,
        /// Details.
        detail: String,
        /// The last backend tried.
        backend: Option<String>,
    },
}

/// The attempt loop over a group: connect to the next backend in
/// [`Group::attempt_order`], send the request built by `build` for it,
/// verify the answer. Connect failures, timeouts, garbage and EOF before an
/// answer move to the next backend (nothing was sent to the client yet) and
/// count against passive health; a deliberate answer (a non-101, or a 101
/// that fails verification) ends the loop.
pub async fn upstream_upgrade(
    group: &Group,
    limits: &Limits,
    max_body: usize,
    mut build: impl FnMut(&crate::config::Backend) -> Result<UpstreamRequest, Refusal>,
) -> Result<AttemptResult, Refusal> {
    let mut last: Option<(StatusCode, Reason, String, String)> = None;
    for state in group.attempt_order() {
        let name = state.name.clone();
        let sent = build(&state.backend)?;
        let mut stream = match group.connect(&state.backend).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(backend = %name, error = %e, "upstream connect failed; trying the next backend");
                group.record_failure(&state);
                last = Some((
                    StatusCode::BAD_GATEWAY,
                    Reason::ConnectFailed,
                    e.to_string(),
                    name,
                ));
                continue;
            }
        };
        match relay::exchange(
            &mut stream,
            &sent,
            limits,
            group.config.connect_timeout,
            max_body,
        )
        .await
        {
            Ok(UpstreamAnswer::Switched {
                response,
                token,
                leftover,
            }) => {
                group.record_success(&state);
                let lease = group.lease(&state);
                return Ok(AttemptResult::Upgraded(
                    Upgraded {
                        stream,
                        response,
                        token,
                        leftover,
                        lease,
                    },
                    name,
                ));
            }
            Ok(UpstreamAnswer::Response { response, body }) => {
                // A complete HTTP answer: the backend is alive.
                group.record_success(&state);
                return Ok(AttemptResult::Response {
                    response,
                    body,
                    backend: name,
                });
            }
            Err(e) => {
                group.record_failure(&state);
                let retry = e.retryable();
                last = Some((e.status(), e.reason(), e.to_string(), name));
                if !retry {
                    break;
                }
            }
        }
    }
    Ok(match last {
        Some((status, reason, detail, backend)) => AttemptResult::Failed {
            status,
            reason,
            detail,
            backend: Some(backend),
        },
        None => AttemptResult::Failed {
            status: StatusCode::BAD_GATEWAY,
            reason: Reason::NoBackend,
            detail: "the upstream group has no backend".into(),
            backend: None,
        },
    })
}

/// Proxy one HTTP/2 or HTTP/3 extended CONNECT to an HTTP/1.1 upstream
/// (see the module docs). `protocol` labels the open-connections gauge
/// (`"h2"` or `"h3"`). `respond` is called exactly once: with the 200 (after
/// a verified 101) it must return the stream to tunnel over; with an error
/// status (403, 429, 503, 426, 400, 502, 504, or the upstream's own non-101
/// status, whose body is not relayed) its `Ok` value is dropped.
#[allow(clippy::too_many_arguments)]
pub async fn proxy_extended_connect<S, F, Fut>(
    req: ProxiedConnect,
    route: ProxyRoute<'_>,
    slot: ConnectionGuard,
    respond: F,
    shutdown: impl Future<Output = ()>,
) -> ProxyOutcome
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Response<()>) -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let (outcome, error_response) =
        extended_connect_inner(&req, route, slot, respond, shutdown).await;
    if let Some((respond, resp)) = error_response {
        route.ctx.metrics.failures().record(
            req.client.addr,
            route.label,
            req.protocol,
            UpgradeFields::of(req.head.headers()),
            outcome.reason,
            &outcome.detail,
        );
        let _ = respond(resp).await;
    }
    let (result, reason) = outcome.labels();
    // A switched attempt was counted when it switched.
    if !matches!(outcome.kind, OutcomeKind::Tunneled(_)) {
        route
            .ctx
            .metrics
            .upgrade_attempt(route.label, result, reason);
    }
    tracing::info!(
        client = %req.client.addr,
        route = route.label,
        protocol = req.protocol.label(),
        upstream = outcome.backend.as_deref().unwrap_or("-"),
        result,
        reason,
        detail = %outcome.detail,
        "upgrade attempt"
    );
    outcome
}

fn status_response(status: StatusCode) -> Response<()> {
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    resp
}

/// An HTTP/2 or HTTP/3 extended CONNECT to proxy.
#[derive(Debug)]
pub struct ProxiedConnect {
    /// The request: `:authority` and `:path` in its URI.
    pub head: Request<()>,
    /// Its `:protocol`.
    pub connect_protocol: String,
    /// Where it came from.
    pub client: ClientInfo,
    /// HTTP/2 or HTTP/3.
    pub protocol: HttpVersion,
}

fn empty_report(end: TunnelEnd) -> TunnelReport {
    TunnelReport {
        end,
        bytes_to_upstream: 0,
        bytes_to_client: 0,
        messages_to_upstream: 0,
        messages_to_client: 0,
        duration: Duration::ZERO,
    }
}

/// The work of [`proxy_extended_connect`]; returns the outcome and, when
/// the client must get an error status, `respond` with that response.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
async fn extended_connect_inner<S, F, Fut>(
    req: &ProxiedConnect,
    route: ProxyRoute<'_>,
    slot: ConnectionGuard,
    respond: F,
    shutdown: impl Future<Output = ()>,
) -> (ProxyOutcome, Option<(F, Response<()>)>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Response<()>) -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let decided = Instant::now();
    let ctx = route.ctx;
    let policy = &route.config.policy;
    let refuse =
        |r: Refusal, respond: F| (ProxyOutcome::refused(&r), Some((respond, r.to_response())));
    let group_name = route.config.upstream.as_deref().unwrap_or_default();
    let Some(group) = ctx.upstreams.get(group_name) else {
        let r = Refusal::new(
            StatusCode::BAD_GATEWAY,
            Reason::UnknownUpstream,
            format!("upstream group {group_name} is not configured"),
        );
        return refuse(r, respond);
    };
    let opts = ForwardOptions {
        preserve_host: policy.preserve_host,
    };
    let attempt = upstream_upgrade(group, &ctx.limits, ctx.max_relayed_body, |backend| {
        forward::translate_extended_connect(
            &req.head,
            &req.connect_protocol,
            &req.client,
            backend,
            &opts,
        )
    })
    .await;
    let (up, backend) = match attempt {
        Err(r) => return refuse(r, respond),
        Ok(AttemptResult::Upgraded(up, backend)) => (up, backend),
        Ok(AttemptResult::Response {
            response, backend, ..
        }) => {
            let status = response.status();
            let outcome = ProxyOutcome {
                kind: OutcomeKind::Relayed(status),
                reason: Reason::UpstreamStatus,
                detail: format!("the upstream answered {status}"),
                backend: Some(backend),
            };
            return (outcome, Some((respond, status_response(status))));
        }
        Ok(AttemptResult::Failed {
            status,
            reason,
            detail,
            backend,
        }) => {
            let outcome = ProxyOutcome {
                kind: OutcomeKind::BadGateway(status),
                reason,
                detail,
                backend,
            };
            return (outcome, Some((respond, status_response(status))));
        }
    };
    let mode = tunnel_mode(policy, &up.token);
    let mut fa_cfg = frame_aware_config(policy, &ctx.limits);
    if mode == TunnelMode::FrameAware {
        match tunnel::deflate_params(&up.response) {
            Ok(p) => fa_cfg.deflate = p,
            Err(why) => {
                let outcome = ProxyOutcome {
                    kind: OutcomeKind::BadGateway(StatusCode::BAD_GATEWAY),
                    reason: Reason::BadExtensions,
                    detail: why,
                    backend: Some(backend),
                };
                let resp = status_response(StatusCode::BAD_GATEWAY);
                return (outcome, Some((respond, resp)));
            }
        }
    }
    let ok = forward::extended_connect_response(&up.response);
    let Upgraded {
        stream: mut upstream,
        leftover: up_leftover,
        lease,
        response,
        token,
    } = up;
    drop((response, token));
    // Counted now, not when the tunnel ends: the live connections count in
    // the success rate.
    let switched = Reason::Switched.label();
    ctx.metrics
        .upgrade_attempt(route.label, "switched", switched);
    let mut stream = match respond(ok).await {
        Ok(s) => s,
        Err(e) => {
            let outcome = ProxyOutcome {
                kind: OutcomeKind::Tunneled(empty_report(TunnelEnd::Io(e.kind()))),
                reason: Reason::Switched,
                detail: format!("sending the 200 failed: {e}"),
                backend: Some(backend),
            };
            return (outcome, None);
        }
    };
    ctx.metrics
        .observe_handshake(route.label, req.protocol, decided.elapsed());
    // Extended CONNECT carries WebSocket only (RFC 8441, RFC 9220).
    let open = ctx
        .metrics
        .open_connection(route.label, req.protocol, Transport::WebSocket);
    let counters = ctx.metrics.route(route.label);
    let report = match mode {
        TunnelMode::Transparent => {
            if !up_leftover.is_empty() && stream.write_all(&up_leftover).await.is_err() {
                let outcome = ProxyOutcome {
                    kind: OutcomeKind::Tunneled(empty_report(TunnelEnd::ClientGone)),
                    reason: Reason::Switched,
                    detail: "the client stream closed".into(),
                    backend: Some(backend),
                };
                return (outcome, None);
            }
            drop(up_leftover);
            let idle = policy.idle_timeout;
            tunnel::transparent(&mut stream, &mut upstream, idle, &counters, shutdown).await
        }
        TunnelMode::FrameAware => {
            tunnel::frame_aware(
                &mut stream,
                BytesMut::new(),
                &mut upstream,
                up_leftover,
                &fa_cfg,
                counters,
                std::pin::pin!(shutdown),
            )
            .await
        }
    };
    drop((lease, slot));
    (finish_tunnel(route, mode, report, backend, open), None)
}

fn finish_tunnel(
    route: ProxyRoute<'_>,
    mode: TunnelMode,
    report: TunnelReport,
    backend: String,
    open: OpenGuard,
) -> ProxyOutcome {
    // Messages and bytes were counted while the tunnel relayed them.
    open.closed(report.end.close());
    route
        .ctx
        .metrics
        .observe_tunnel(route.label, report.duration);
    ProxyOutcome {
        detail: tunnel_detail(mode, &report.end),
        kind: OutcomeKind::Tunneled(report),
        reason: Reason::Switched,
        backend: Some(backend),
    }
}

/// The outcome's detail for a tunnel that ended: two pieces of static text,
/// without the formatting machinery (this runs at the end of every proxied
/// connection).
fn tunnel_detail(mode: TunnelMode, end: &TunnelEnd) -> String {
    let mut detail = String::with_capacity(48);
    detail.push_str(match mode {
        TunnelMode::Transparent => "tunnel (Transparent) ended: ",
        TunnelMode::FrameAware => "tunnel (FrameAware) ended: ",
    });
    detail.push_str(end.label());
    detail
}

async fn answer<C: AsyncWrite + Unpin>(client: &mut C, r: &Refusal) {
    let _ = client.write_all(&r.to_bytes()).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}

/// Proxy one admitted HTTP/1.1 request on `route` (its `slot` in the
/// route's caps held until the connection ends): forwarding rules, the
/// attempt loop, then the 101 and the tunnel, the relayed answer, or 502 /
/// 504. `leftover` (bytes the client sent after its head) reaches the
/// upstream only after a verified 101.
///
/// [`start_h1`] and [`H1Tunnel::run`] in one call; a front that wants the
/// tunnel in a task of its own (without the front's state) calls them apart.
pub async fn proxy_h1<C>(
    client: C,
    req: Request<()>,
    leftover: BytesMut,
    client_info: ClientInfo,
    route: ProxyRoute<'_>,
    slot: ConnectionGuard,
    shutdown: impl Future<Output = ()>,
) -> ProxyOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + AsPlainTcp,
{
    match start_h1(client, req, leftover, client_info, route, slot).await {
        H1Start::Done(outcome) => outcome,
        H1Start::Tunnel(mut t) => t.run(route, shutdown).await,
    }
}

/// The handshake phase of an HTTP/1.1 proxy attempt ([`start_h1`]): the
/// attempt ended (refused, relayed, 502; already logged and counted), or the
/// client got its 101 and the tunnel is ready to run.
#[allow(clippy::large_enum_variant)]
pub enum H1Start<C> {
    /// The client got its answer; the connection is finished.
    Done(ProxyOutcome),
    /// Switched: run [`H1Tunnel::run`].
    Tunnel(H1Tunnel<C>),
}

/// A switched HTTP/1.1 connection: only what the tunnel needs, so that an
/// idle tunnel holds no request head, response head, parser or read buffer.
pub struct H1Tunnel<C> {
    client: C,
    upstream: MaybeTlsStream,
    /// Frame-aware only (boxed: a transparent tunnel does not carry it).
    frame_aware: Option<Box<FrameAwareStart>>,
    /// Holds the backend's least-connections slot for the tunnel's life.
    _lease: BackendLease,
    /// Holds the route / client IP connection slot for the tunnel's life.
    _slot: ConnectionGuard,
    backend: String,
    client_addr: std::net::SocketAddr,
    transport: Transport,
}

impl<C> std::fmt::Debug for H1Tunnel<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Tunnel")
            .field("backend", &self.backend)
            .field("client", &self.client_addr)
            .field("frame_aware", &self.frame_aware.is_some())
            .finish_non_exhaustive()
    }
}

/// What only a frame-aware tunnel needs.
struct FrameAwareStart {
    cfg: FrameAwareConfig,
    /// Bytes the client sent after its head (frames).
    client_leftover: BytesMut,
    /// Bytes the upstream sent after its 101.
    upstream_leftover: BytesMut,
}

/// The handshake phase of [`proxy_h1`]: everything before the tunnel. The
/// attempt is counted now; its log line comes now when it ends here, or at
/// the end of [`H1Tunnel::run`].
pub async fn start_h1<C>(
    mut client: C,
    req: Request<()>,
    leftover: BytesMut,
    client_info: ClientInfo,
    route: ProxyRoute<'_>,
    slot: ConnectionGuard,
) -> H1Start<C>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let decided = Instant::now();
    // Boxed: the handshake phase (request, upstream exchange, parsers,
    // heads) is large and over before the tunnel starts.
    let start = Box::pin(h1_handshake(
        &mut client,
        &req,
        leftover,
        client_info,
        route,
        slot,
    ))
    .await;
    match start {
        Handshake::Done(outcome) => {
            let (result, reason) = outcome.labels();
            route
                .ctx
                .metrics
                .upgrade_attempt(route.label, result, reason);
            log_h1(route, client_info.addr, &outcome);
            // An upgrade request that fails is kept in the failures ring
            // with its fields.
            if req.headers().contains_key(http::header::UPGRADE) {
                route.ctx.metrics.failures().record(
                    client_info.addr,
                    route.label,
                    HttpVersion::Http1,
                    UpgradeFields::of(req.headers()),
                    outcome.reason,
                    &outcome.detail,
                );
            }
            H1Start::Done(outcome)
        }
        Handshake::Switched(s) => {
            let m = &route.ctx.metrics;
            m.observe_handshake(route.label, HttpVersion::Http1, decided.elapsed());
            // Counted now, not when the tunnel ends: the live connections
            // count in the success rate.
            m.upgrade_attempt(route.label, "switched", Reason::Switched.label());
            H1Start::Tunnel(H1Tunnel {
                client,
                upstream: s.upstream,
                frame_aware: s.frame_aware,
                _lease: s.lease,
                _slot: s.slot,
                backend: s.backend,
                client_addr: client_info.addr,
                transport: s.transport,
            })
        }
    }
}

impl<C> H1Tunnel<C>
where
    C: AsyncRead + AsyncWrite + Unpin + AsPlainTcp,
{
    /// Whether the tunnel relays frames (else bytes).
    pub fn mode(&self) -> TunnelMode {
        match self.frame_aware {
            Some(_) => TunnelMode::FrameAware,
            None => TunnelMode::Transparent,
        }
    }

    /// Run the tunnel until it ends (or `shutdown`), then count and log the
    /// attempt. `&mut self`: the streams stay where they are (in the
    /// caller's task) instead of being copied into this future; drop the
    /// tunnel afterwards to release its connection slots.
    ///
    /// A front that runs tunnels in tasks of their own calls
    /// [`H1Tunnel::run_transparent`] or [`H1Tunnel::run_frame_aware`] (after
    /// [`H1Tunnel::mode`]) instead: each task is then sized for its mode.
    pub async fn run(
        &mut self,
        route: ProxyRoute<'_>,
        shutdown: impl Future<Output = ()>,
    ) -> ProxyOutcome {
        match self.mode() {
            TunnelMode::Transparent => self.run_transparent(route, shutdown).await,
            // Boxed: the frame-aware state is larger than the transparent one.
            TunnelMode::FrameAware => {
                let shutdown = std::pin::pin!(shutdown);
                Box::pin(self.run_frame_aware(route, shutdown)).await
            }
        }
    }

    /// [`H1Tunnel::run`] for a transparent tunnel.
    pub async fn run_transparent(
        &mut self,
        route: ProxyRoute<'_>,
        shutdown: impl Future<Output = ()>,
    ) -> ProxyOutcome {
        let ctx = route.ctx;
        let open = ctx
            .metrics
            .open_connection(route.label, HttpVersion::Http1, self.transport);
        let idle = route.config.policy.idle_timeout;
        let counters = ctx.metrics.route(route.label);
        // Plain TCP on both sides: the copy bypasses the streams (and may
        // splice); else (TLS) through them.
        let (report, spliced) = match (self.client.as_plain_tcp(), self.upstream.as_plain_tcp()) {
            (Some(a), Some(b)) => {
                let mode = SpliceMode::default();
                tunnel::transparent_tcp(a, b, idle, mode, &counters, shutdown).await
            }
            _ => {
                let (client, upstream) = (&mut self.client, &mut self.upstream);
                let report = tunnel::transparent(client, upstream, idle, &counters, shutdown).await;
                (report, Spliced::default())
            }
        };
        let m = &ctx.metrics;
        m.add_spliced(
            route.label,
            Direction::ClientToUpstream,
            spliced.to_upstream,
        );
        m.add_spliced(route.label, Direction::UpstreamToClient, spliced.to_client);
        self.finish(route, TunnelMode::Transparent, report, open)
    }

    /// [`H1Tunnel::run`] for a frame-aware tunnel (a transparent one when
    /// the tunnel has no frame-aware settings).
    pub async fn run_frame_aware(
        &mut self,
        route: ProxyRoute<'_>,
        shutdown: impl Future<Output = ()> + Unpin,
    ) -> ProxyOutcome {
        let ctx = route.ctx;
        let open = ctx
            .metrics
            .open_connection(route.label, HttpVersion::Http1, self.transport);
        // The settings and leftovers are used (and freed, with their box)
        // before the tunnel runs: an idle tunnel does not hold them.
        let (cfg, client_leftover, upstream_leftover) = match self.frame_aware.take() {
            Some(fa) => {
                let fa = *fa;
                (fa.cfg, fa.client_leftover, fa.upstream_leftover)
            }
            None => {
                let idle = Duration::MAX;
                let counters = ctx.metrics.route(route.label);
                let (client, upstream) = (&mut self.client, &mut self.upstream);
                let report = tunnel::transparent(client, upstream, idle, &counters, shutdown).await;
                return self.finish(route, TunnelMode::Transparent, report, open);
            }
        };
        let tunnel = tunnel::frame_aware(
            &mut self.client,
            client_leftover,
            &mut self.upstream,
            upstream_leftover,
            &cfg,
            ctx.metrics.route(route.label),
            shutdown,
        );
        drop(cfg);
        let report = tunnel.await;
        self.finish(route, TunnelMode::FrameAware, report, open)
    }

    fn finish(
        &mut self,
        route: ProxyRoute<'_>,
        mode: TunnelMode,
        report: TunnelReport,
        open: OpenGuard,
    ) -> ProxyOutcome {
        let backend = std::mem::take(&mut self.backend);
        let outcome = finish_tunnel(route, mode, report, backend, open);
        log_h1(route, self.client_addr, &outcome);
        outcome
    }
}

/// The attempt's log line.
fn log_h1(route: ProxyRoute<'_>, client: std::net::SocketAddr, outcome: &ProxyOutcome) {
    let (result, reason) = outcome.labels();
    tracing::info!(
        client = %client,
        route = route.label,
        upstream = outcome.backend.as_deref().unwrap_or("-"),
        result,
        reason,
        detail = %outcome.detail,
        "upgrade attempt"
    );
}

/// What the handshake phase left for the tunnel.
struct Switched {
    upstream: MaybeTlsStream,
    frame_aware: Option<Box<FrameAwareStart>>,
    lease: BackendLease,
    slot: ConnectionGuard,
    backend: String,
    transport: Transport,
}

enum Handshake {
    Done(ProxyOutcome),
    Switched(Switched),
}

/// Everything before the tunnel: the upstream attempt loop, the 101 (or the
/// refusal / relayed answer) to the client.
async fn h1_handshake<C>(
    client: &mut C,
    req: &Request<()>,
    leftover: BytesMut,
    client_info: ClientInfo,
    route: ProxyRoute<'_>,
    slot: ConnectionGuard,
) -> Handshake
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let ctx = route.ctx;
    let policy = &route.config.policy;
    let group_name = route.config.upstream.as_deref().unwrap_or_default();
    let Some(group) = ctx.upstreams.get(group_name) else {
        let r = Refusal::new(
            StatusCode::BAD_GATEWAY,
            Reason::UnknownUpstream,
            format!("upstream group {group_name} is not configured"),
        );
        answer(client, &r).await;
        return Handshake::Done(ProxyOutcome::refused(&r));
    };
    let head_request = req.method() == http::Method::HEAD;
    let opts = ForwardOptions {
        preserve_host: policy.preserve_host,
    };
    let attempt = upstream_upgrade(group, &ctx.limits, ctx.max_relayed_body, |backend| {
        forward::forward_request(req, &client_info, policy, backend, &opts)
    })
    .await;
    let attempt = match attempt {
        Ok(a) => a,
        Err(r) => {
            answer(client, &r).await;
            return Handshake::Done(ProxyOutcome::refused(&r));
        }
    };
    match attempt {
        AttemptResult::Failed {
            status,
            reason,
            detail,
            backend,
        } => {
            let r = Refusal::new(status, reason, format!("bad gateway: {detail}"));
            answer(client, &r).await;
            Handshake::Done(ProxyOutcome {
                kind: OutcomeKind::BadGateway(status),
                reason,
                detail,
                backend,
            })
        }
        AttemptResult::Response {
            response,
            body,
            backend,
        } => {
            let _ = relay::write_relayed_response(client, &response, &body, head_request).await;
            let _ = client.shutdown().await;
            Handshake::Done(ProxyOutcome {
                kind: OutcomeKind::Relayed(response.status()),
                reason: Reason::UpstreamStatus,
                detail: format!("the upstream answered {}", response.status()),
                backend: Some(backend),
            })
        }
        AttemptResult::Upgraded(up, backend) => {
            switch_h1(client, up, backend, leftover, slot, route).await
        }
    }
}

/// Send the client its 101 (and, for a transparent tunnel, the bytes each
/// side sent past its head to the other side).
async fn switch_h1<C>(
    client: &mut C,
    up: Upgraded,
    backend: String,
    leftover: BytesMut,
    slot: ConnectionGuard,
    route: ProxyRoute<'_>,
) -> Handshake
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let ctx = route.ctx;
    let policy = &route.config.policy;
    let Upgraded {
        stream: mut upstream,
        response,
        token,
        leftover: up_leftover,
        lease,
    } = up;
    let mode = tunnel_mode(policy, &token);
    let transport = Transport::of_token(&token);
    let mut frame_aware = None;
    if mode == TunnelMode::FrameAware {
        let mut cfg = frame_aware_config(policy, &ctx.limits);
        match tunnel::deflate_params(&response) {
            Ok(p) => cfg.deflate = p,
            Err(why) => {
                let r = Refusal::new(StatusCode::BAD_GATEWAY, Reason::BadExtensions, why);
                answer(client, &r).await;
                return Handshake::Done(ProxyOutcome {
                    kind: OutcomeKind::BadGateway(r.status),
                    reason: r.reason,
                    detail: r.detail,
                    backend: Some(backend),
                });
            }
        }
        frame_aware = Some(cfg);
    }
    let mut out = Vec::with_capacity(256 + up_leftover.len());
    forward::write_client_switch(&response, &token, &mut out);
    drop(response);
    let transparent = mode == TunnelMode::Transparent;
    if transparent {
        out.extend_from_slice(&up_leftover);
    }
    let written = async {
        client.write_all(&out).await?;
        client.flush().await?;
        if transparent && !leftover.is_empty() {
            upstream.write_all(&leftover).await?;
            upstream.flush().await?;
        }
        std::io::Result::Ok(())
    }
    .await;
    if let Err(e) = written {
        return Handshake::Done(ProxyOutcome {
            kind: OutcomeKind::Tunneled(empty_report(TunnelEnd::Io(e.kind()))),
            reason: Reason::Switched,
            detail: format!("writing the 101 failed: {e}"),
            backend: Some(backend),
        });
    }
    // The tunnel keeps only the leftovers a frame-aware tunnel still parses;
    // the (possibly large) read buffers they were split from go now.
    let keep = |b: BytesMut| {
        if b.is_empty() {
            BytesMut::new()
        } else {
            BytesMut::from(&b[..])
        }
    };
    let frame_aware = frame_aware.map(|cfg| {
        Box::new(FrameAwareStart {
            cfg,
            client_leftover: keep(leftover),
            upstream_leftover: keep(up_leftover),
        })
    });
    Handshake::Switched(Switched {
        upstream,
        frame_aware,
        lease,
        slot,
        backend,
        transport,
    })
}

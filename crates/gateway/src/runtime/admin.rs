//! The admin listener: `/metrics`, the `/status` dashboard and its JSON,
//! and `POST /reload`, behind an optional bearer token.
//!
//! | admin request  | answer |
//! |----------------|--------|
//! | `GET /metrics` | 200, Prometheus text ([`crate::metrics`]) |
//! | `GET /status`  | 200, HTML: the dashboard, a page without data whose script polls `/status.json` every 2 s |
//! | `GET /status.json` | 200, JSON: routes, connections, latencies, failures, health, drain and reload state, the last 15 minutes of traffic ([`super::status`]) |
//! | `GET /status/failures` | 200, JSON: `{"counts": {reason: n}, "recent": [...]}`, the last refused or failed upgrade attempts, newest first, explained ([`crate::failures`]) |
//! | `POST /reload` | 200 `reloaded: generation N`, or 422 with the reason (the old config stays) |
//! | other paths    | 404; other methods on those paths 405 |
//!
//! It speaks HTTP/1.1, one request per connection (`Connection: close`).
//!
//! With `[admin] token_file`, every request but `GET /status` must carry
//! `Authorization: Bearer TOKEN`; one that does not gets 401 with
//! `WWW-Authenticate: Bearer` (and `error="invalid_token"` when a wrong
//! token was presented), nothing else, and a log line that says why. The
//! dashboard page holds no data: open it as `/status#token=TOKEN`; its
//! script keeps the token in the tab's `sessionStorage`, removes it from
//! the address bar, and sends it to `/status.json`. Without a token, keep
//! the listener on loopback or a private network (`--check-config` warns
//! otherwise).
//!
//! The listener also samples every route's traffic every 10 s for the
//! dashboard's charts ([`super::history`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderMap, Method, StatusCode};
use switchyard::server::read_request_head;
use switchyard::Limits;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::config::AdminToken;
use crate::live::Gateway;

use super::history::{TrafficHistory, SAMPLE_INTERVAL};
use super::status::{all_route_totals, StatusReport};

const TEXT: &str = "text/plain; charset=utf-8";

/// The dashboard: HTML, CSS and script, no data and no external asset.
const DASHBOARD: &str = include_str!("status.html");

pub(crate) async fn admin_loop(listener: TcpListener, gw: Arc<Gateway>) {
    info!(local = ?listener.local_addr().ok(), "admin listening (/metrics, /status, POST /reload)");
    for w in gw.live().config.warnings() {
        warn!("{w}");
    }
    let history = Arc::new(TrafficHistory::default());
    let mut sample = tokio::time::interval(SAMPLE_INTERVAL);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, peer)) => {
                    tokio::spawn(admin_conn(s, peer, gw.clone(), history.clone()));
                }
                Err(e) => {
                    warn!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = sample.tick() => history.record(unix_now(), all_route_totals(&gw)),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why an admin request was refused before it was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthRefusal {
    /// No `Authorization: Bearer ...` header.
    Missing,
    /// A bearer token that is not the configured one.
    WrongToken,
}

impl AuthRefusal {
    /// The `WWW-Authenticate` challenge (RFC 6750 §3).
    fn challenge(self) -> &'static str {
        match self {
            AuthRefusal::Missing => "Bearer realm=\"switchyard admin\"",
            AuthRefusal::WrongToken => "Bearer realm=\"switchyard admin\", error=\"invalid_token\"",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            AuthRefusal::Missing => {
                "no bearer token: send Authorization: Bearer TOKEN with the token of [admin] token_file"
            }
            AuthRefusal::WrongToken => {
                "wrong bearer token: send the token of [admin] token_file (a reload reads it again)"
            }
        }
    }
}

/// Whether `headers` carry `token` (always, when none is configured).
pub(crate) fn authorize(
    headers: &HeaderMap,
    token: Option<&AdminToken>,
) -> Result<(), AuthRefusal> {
    let Some(token) = token else {
        return Ok(());
    };
    let presented = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .find_map(|v| {
            let v = v.as_bytes();
            // The scheme is case-insensitive (RFC 9110 §11.1).
            (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| v[7..].trim_ascii())
        })
        .ok_or(AuthRefusal::Missing)?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(AuthRefusal::WrongToken)
    }
}

/// Whether the request is for the dashboard page, served without a token
/// (it holds no data; its script presents the token to `/status.json`).
fn is_dashboard(method: &Method, path: &str) -> bool {
    path == "/status" && (method == Method::GET || method == Method::HEAD)
}

async fn admin_conn(
    mut s: TcpStream,
    peer: SocketAddr,
    gw: Arc<Gateway>,
    history: Arc<TrafficHistory>,
) {
    let limits = Limits::default();
    let Ok((req, _)) = read_request_head(&mut s, &limits).await else {
        return;
    };
    let token = gw
        .live()
        .config
        .admin
        .as_ref()
        .and_then(|a| a.token.clone());
    let token = token.filter(|_| !is_dashboard(req.method(), req.uri().path()));
    let (status, ctype, body, challenge) = match authorize(req.headers(), token.as_ref()) {
        Ok(()) => {
            let (status, ctype, body) = admin_answer(req.method(), req.uri().path(), &gw, &history);
            (status, ctype, body, None)
        }
        Err(refusal) => {
            warn!(client = %peer, path = req.uri().path(), "admin request refused: {}", refusal.explain());
            let body = format!("401 unauthorized: {}\n", refusal.explain());
            (
                StatusCode::UNAUTHORIZED,
                TEXT,
                body,
                Some(refusal.challenge()),
            )
        }
    };
    let mut out = Vec::with_capacity(body.len() + 200);
    let _ = write!(
        ByteWriter(&mut out),
        "HTTP/1.1 {} {}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if let Some(c) = challenge {
        let _ = write!(ByteWriter(&mut out), "www-authenticate: {c}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if req.method() != Method::HEAD {
        out.extend_from_slice(body.as_bytes());
    }
    let _ = s.write_all(&out).await;
    let _ = s.shutdown().await;
}

struct ByteWriter<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The admin answer for a method and path: (status, content type, body).
pub(crate) fn admin_answer(
    method: &Method,
    path: &str,
    gw: &Gateway,
    history: &TrafficHistory,
) -> (StatusCode, &'static str, String) {
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/metrics" if get => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            gw.metrics().render()
                + &gw.sessions().render_metrics()
                + &gw.limiter().render()
                + &gw.census().map_or_else(String::new, |c| c.render()),
        ),
        "/status" if get => (
            StatusCode::OK,
            "text/html; charset=utf-8",
            DASHBOARD.to_owned(),
        ),
        "/status.json" if get => (
            StatusCode::OK,
            "application/json",
            StatusReport::of(gw, history).to_json(),
        ),
        "/status/failures" if get => (
            StatusCode::OK,
            "application/json",
            gw.metrics().failures().to_json(),
        ),
        "/reload" if method == Method::POST => match gw.reload() {
            Ok(g) => (StatusCode::OK, TEXT, format!("reloaded: generation {g}\n")),
            Err(e) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                TEXT,
                format!("reload rejected, the previous configuration stays in force: {e}\n"),
            ),
        },
        "/metrics" | "/status" | "/status.json" | "/status/failures" | "/reload" => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed: GET /metrics, GET /status, GET /status.json, \
             GET /status/failures, POST /reload\n"
                .into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /metrics, /status, /status.json, /status/failures, POST /reload\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::{Direction, PingSide};
    use crate::runtime::history::Totals;
    use std::collections::BTreeMap;

    fn gw() -> Arc<Gateway> {
        let cfg = Config::from_toml_str(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n\
             [[upstream]]\nname = \"a\"\nservers = [\"ws://127.0.0.1:9\"]\n\
             [[route]]\nhost = \"x.example\"\npath = \"/ws\"\nupstream = \"a\"\n",
            "t.toml",
        )
        .unwrap();
        Gateway::new(cfg, None).unwrap()
    }

    #[tokio::test]
    async fn admin_routes() {
        let g = gw();
        let h = TrafficHistory::default();
        let (s, t, body) = admin_answer(&Method::GET, "/metrics", &g, &h);
        assert_eq!(s, StatusCode::OK);
        assert!(t.starts_with("text/plain; version=0.0.4"));
        assert!(body.starts_with(&g.metrics().render()), "{body}");
        assert!(body.contains("# TYPE switchyard_fallback_sessions_open gauge"));
        // The dashboard is the same page whatever the state: no data in it.
        let (s, t, body) = admin_answer(&Method::GET, "/status", &g, &h);
        assert_eq!(s, StatusCode::OK);
        assert!(t.starts_with("text/html"));
        assert_eq!(body, DASHBOARD);
        assert!(body.contains("/status.json"), "the page polls the JSON");
        assert!(!body.contains("x.example"), "{body}");
        assert!(is_dashboard(&Method::GET, "/status"));
        assert!(!is_dashboard(&Method::GET, "/status.json"));
        assert!(!is_dashboard(&Method::POST, "/status"));
        assert_eq!(
            admin_answer(&Method::POST, "/metrics", &g, &h).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            admin_answer(&Method::GET, "/x", &g, &h).0,
            StatusCode::NOT_FOUND
        );
        let (s, _, body) = admin_answer(&Method::POST, "/reload", &g, &h);
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body.contains("no config file"), "{body}");
    }

    #[tokio::test]
    async fn status_json_reports_routes_handshakes_and_failure_reasons() {
        use crate::failures::UpgradeFields;
        use crate::metrics::Transport;
        use crate::outcome::Reason;
        use switchyard::proto::HttpVersion;
        let g = gw();
        let h = TrafficHistory::default();
        let m = g.metrics();
        let open = m.open_connection("x.example/ws", HttpVersion::Http2, Transport::WebSocket);
        m.observe_handshake(
            "x.example/ws",
            HttpVersion::Http2,
            std::time::Duration::from_millis(3),
        );
        let client = "127.0.0.1:1".parse().unwrap();
        for reason in [Reason::Origin, Reason::Origin, Reason::UpgradeRequired] {
            m.upgrade_attempt("x.example/ws", "refused", reason.label());
            m.failures().record(
                client,
                "x.example/ws",
                HttpVersion::Http1,
                UpgradeFields::default(),
                reason,
                "",
            );
        }
        let (s, t, body) = admin_answer(&Method::GET, "/status.json", &g, &h);
        assert_eq!((s, t), (StatusCode::OK, "application/json"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["generation"], 1, "{v}");
        let route = &v["routes"][0];
        assert_eq!(route["route"], "x.example/ws", "{v}");
        assert_eq!(route["target"], "upstream a", "{v}");
        assert_eq!(
            route["open"],
            serde_json::json!([{"protocol": "h2", "transport": "websocket", "connections": 1}])
        );
        assert_eq!(
            route["handshakes"],
            serde_json::json!([{"protocol": "h2", "count": 1, "p50_seconds": 0.005, "p99_seconds": 0.005}])
        );
        let top = &v["top_failure_reasons"];
        assert_eq!(top[0]["reason"], Reason::Origin.label(), "{v}");
        assert_eq!(top[0]["count"], 2, "{v}");
        assert_eq!(top[1]["reason"], Reason::UpgradeRequired.label(), "{v}");
        assert_eq!(top[1]["count"], 1, "{v}");
        // With the ring's words for the latest attempt of that reason.
        let recent = m.failures().recent();
        assert_eq!(top[0]["explanation"], recent[1].explanation.as_str(), "{v}");
        assert_eq!(top[1]["explanation"], recent[2].explanation.as_str(), "{v}");
        assert_eq!(
            v["upgrades"][0],
            serde_json::json!({"route": "x.example/ws", "result": "refused",
                "reason": Reason::Origin.label(), "count": 2})
        );
        assert_eq!(v["upgrade_success_ratio"], 0.0, "{v}");
        assert_eq!(route["upgrade_attempts"], 3, "{v}");
        assert_eq!(route["upgrade_success_ratio"], 0.0, "{v}");
        m.upgrade_attempt("x.example/ws", "switched", Reason::Switched.label());
        // An attempt no route matched counts in the total, not the route's.
        m.upgrade_attempt(
            crate::metrics::NO_ROUTE,
            "refused",
            Reason::BadUpgrade.label(),
        );
        // Health, ping round trips, traffic and its history, fallback
        // sessions, drain and reload state.
        m.set_upstream_health("a", "ws://127.0.0.1:9/", false);
        let counters = m.route("x.example/ws");
        counters.observe_ping_rtt(PingSide::Client, std::time::Duration::from_millis(20));
        counters.relayed(Direction::ClientToUpstream, 4, 0);
        counters.relayed(Direction::UpstreamToClient, 0, 400);
        g.sessions()
            .metrics()
            .relayed("x.example/ws", Direction::ClientToUpstream, 1, 100);
        let session = g.sessions().metrics().open_session("x.example/ws", "sse");
        h.record(
            100,
            BTreeMap::from([("x.example/ws".into(), Totals::default())]),
        );
        h.record(110, all_route_totals(&g));
        assert!(g.reload().is_err());
        g.start_draining();
        let (_, _, body) = admin_answer(&Method::GET, "/status.json", &g, &h);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["upgrade_success_ratio"], 0.2, "{v}");
        assert_eq!(
            v["upstreams"],
            serde_json::json!([{"upstream": "a", "backend": "ws://127.0.0.1:9/", "healthy": false}])
        );
        let route = &v["routes"][0];
        assert_eq!(route["upgrade_attempts"], 4, "{v}");
        assert_eq!(route["upgrade_success_ratio"], 0.25, "{v}");
        assert_eq!(
            route["ping_rtt"][0],
            serde_json::json!({"side": "client", "count": 1, "p50_seconds": 0.025, "p99_seconds": 0.025})
        );
        assert_eq!(route["ping_rtt"][1]["count"], 0, "{v}");
        assert_eq!(route["messages_total"], 5, "{v}");
        assert_eq!(route["bytes_total"], 500, "{v}");
        assert_eq!(
            route["sessions"],
            serde_json::json!([{"transport": "sse", "sessions": 1}])
        );
        assert_eq!(
            v["history"],
            serde_json::json!({"interval_seconds": 10, "routes": [{"route": "x.example/ws",
                "points": [{"at_unix": 110, "messages_per_second": 0.5, "bytes_per_second": 50.0}]}]})
        );
        assert_eq!(v["draining"], true, "{v}");
        assert!(
            v["reload_error"]
                .as_str()
                .is_some_and(|e| e.contains("no config file")),
            "{v}"
        );
        drop((open, session));
        let (_, _, body) = admin_answer(&Method::GET, "/status.json", &g, &h);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["routes"][0]["open"][0]["connections"], 0, "{v}");
        assert_eq!(
            admin_answer(&Method::POST, "/status.json", &g, &h).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn bearer_token_is_required_when_configured() {
        let token = AdminToken::parse("s3cr3t-T0ken\n").unwrap();
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            h
        };
        assert_eq!(authorize(&HeaderMap::new(), None), Ok(()));
        assert_eq!(authorize(&with("Bearer nope"), None), Ok(()));
        assert_eq!(
            authorize(&HeaderMap::new(), Some(&token)),
            Err(AuthRefusal::Missing)
        );
        assert_eq!(
            authorize(&with("Basic czNjcjN0LVQwa2Vu"), Some(&token)),
            Err(AuthRefusal::Missing)
        );
        assert_eq!(
            authorize(&with("Bearer s3cr3t-T0ke"), Some(&token)),
            Err(AuthRefusal::WrongToken)
        );
        assert_eq!(
            authorize(&with("Bearer s3cr3t-T0kenX"), Some(&token)),
            Err(AuthRefusal::WrongToken)
        );
        assert_eq!(
            authorize(&with("Bearer s3cr3t-T0ken"), Some(&token)),
            Ok(())
        );
        assert_eq!(
            authorize(&with("bearer  s3cr3t-T0ken "), Some(&token)),
            Ok(())
        );
        assert!(AuthRefusal::WrongToken
            .challenge()
            .contains("error=\"invalid_token\""));
        assert!(AuthRefusal::Missing.challenge().starts_with("Bearer "));
    }
}

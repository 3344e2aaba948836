//! The admin listener: `/metrics`, `/status` and `POST /reload`, behind an
//! optional bearer token.
//!
//! | admin request  | answer |
//! |----------------|--------|
//! | `GET /metrics` | 200, Prometheus text ([`crate::metrics`]) |
//! | `GET /status`  | 200, HTML: live connections per route, proxied and apps (client, served by, protocol, age, bytes) |
//! | `GET /status.json` | 200, JSON: per route open connections by protocol and transport, handshake counts and p50/p99, upgrade attempts, top failure reasons ([`super::status`]) |
//! | `GET /status/failures` | 200, JSON: `{"counts": {reason: n}, "recent": [...]}`, the last refused or failed upgrade attempts, newest first, explained ([`crate::failures`]) |
//! | `POST /reload` | 200 `reloaded: generation N`, or 422 with the reason (the old config stays) |
//! | other paths    | 404; other methods on those paths 405 |
//!
//! It speaks HTTP/1.1, one request per connection (`Connection: close`).
//!
//! With `[admin] token_file`, every request must carry `Authorization: Bearer
//! TOKEN`; one that does not gets 401 with `WWW-Authenticate: Bearer` (and
//! `error="invalid_token"` when a wrong token was presented), nothing else,
//! and a log line that says why. Without a token, keep the listener on
//! loopback or a private network (`--check-config` warns otherwise).

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

use super::status::StatusReport;

const TEXT: &str = "text/plain; charset=utf-8";

pub(crate) async fn admin_loop(listener: TcpListener, gw: Arc<Gateway>) {
    info!(local = ?listener.local_addr().ok(), "admin listening (/metrics, /status, POST /reload)");
    for w in gw.live().config.warnings() {
        warn!("{w}");
    }
    loop {
        match listener.accept().await {
            Ok((s, peer)) => {
                tokio::spawn(admin_conn(s, peer, gw.clone()));
            }
            Err(e) => {
                warn!("admin accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
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

async fn admin_conn(mut s: TcpStream, peer: SocketAddr, gw: Arc<Gateway>) {
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
    let (status, ctype, body, challenge) = match authorize(req.headers(), token.as_ref()) {
        Ok(()) => {
            let (status, ctype, body) = admin_answer(req.method(), req.uri().path(), &gw);
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
) -> (StatusCode, &'static str, String) {
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/metrics" if get => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            gw.metrics().render() + &gw.sessions().metrics().render(),
        ),
        "/status" if get => (StatusCode::OK, "text/html; charset=utf-8", status_page(gw)),
        "/status.json" if get => (
            StatusCode::OK,
            "application/json",
            StatusReport::of(gw).to_json(),
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

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// The `/status` page.
pub(crate) fn status_page(gw: &Gateway) -> String {
    let live = gw.live();
    let conns = gw.connections().snapshot();
    let mut h = String::with_capacity(1024 + conns.len() * 160);
    h.push_str("<!doctype html><meta charset=utf-8><title>switchyard status</title>\n");
    let _ = writeln!(
        h,
        "<h1>switchyard gateway</h1><p>config generation {}, {} reload(s), {} live connection(s)</p>",
        live.generation,
        gw.reload_count(),
        conns.len()
    );
    for entry in &live.routes {
        let label = &entry.label;
        let target = match entry.config.target() {
            crate::config::RouteTarget::Upstream(u) => format!("upstream {u}"),
            crate::config::RouteTarget::App(a) => format!("app {}", a.as_str()),
        };
        let here: Vec<_> = conns.iter().filter(|c| &c.info.route == label).collect();
        let _ = writeln!(
            h,
            "<h2>{} &rarr; {}</h2><p>{} live</p>",
            esc(label),
            esc(&target),
            here.len()
        );
        if here.is_empty() {
            continue;
        }
        h.push_str("<table border=1><tr><th>client</th><th>served by</th><th>protocol</th><th>age (s)</th><th>bytes in</th><th>bytes out</th></tr>\n");
        for c in here {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
                c.info.client,
                esc(&c.info.target),
                c.info.protocol.label(),
                c.age.as_secs_f64(),
                c.bytes_in,
                c.bytes_out
            );
        }
        h.push_str("</table>\n");
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
        let (s, t, body) = admin_answer(&Method::GET, "/metrics", &g);
        assert_eq!(s, StatusCode::OK);
        assert!(t.starts_with("text/plain; version=0.0.4"));
        assert!(body.starts_with(&g.metrics().render()), "{body}");
        assert!(body.contains("# TYPE switchyard_fallback_sessions_open gauge"));
        let (s, t, body) = admin_answer(&Method::GET, "/status", &g);
        assert_eq!(s, StatusCode::OK);
        assert!(t.starts_with("text/html"));
        assert!(body.contains("x.example/ws &rarr; upstream a"), "{body}");
        assert!(body.contains("0 live connection(s)"), "{body}");
        assert_eq!(
            admin_answer(&Method::POST, "/metrics", &g).0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            admin_answer(&Method::GET, "/x", &g).0,
            StatusCode::NOT_FOUND
        );
        let (s, _, body) = admin_answer(&Method::POST, "/reload", &g);
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
        let m = g.metrics();
        let open = m.open_connection("x.example/ws", HttpVersion::Http2, Transport::WebSocket);
        m.observe_handshake(
            "x.example/ws",
            HttpVersion::Http2,
            std::time::Duration::from_millis(3),
        );
        let client = "127.0.0.1:1".parse().unwrap();
        for reason in [Reason::Origin, Reason::Origin, Reason::UpgradeRequired] {
            m.upgrade_attempt("refused", reason.label());
            m.failures().record(
                client,
                "x.example/ws",
                HttpVersion::Http1,
                UpgradeFields::default(),
                reason,
                "",
            );
        }
        let (s, t, body) = admin_answer(&Method::GET, "/status.json", &g);
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
        assert_eq!(
            v["top_failure_reasons"],
            serde_json::json!([
                {"reason": Reason::Origin.label(), "count": 2},
                {"reason": Reason::UpgradeRequired.label(), "count": 1},
            ])
        );
        assert_eq!(
            v["upgrades"][0],
            serde_json::json!({"result": "refused", "reason": Reason::Origin.label(), "count": 2})
        );
        drop(open);
        let (_, _, body) = admin_answer(&Method::GET, "/status.json", &g);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["routes"][0]["open"][0]["connections"], 0, "{v}");
        assert_eq!(
            admin_answer(&Method::POST, "/status.json", &g).0,
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

    #[test]
    fn escaping() {
        assert_eq!(esc("<a href=\"x\">&"), "&lt;a href=&quot;x&quot;&gt;&amp;");
    }
}

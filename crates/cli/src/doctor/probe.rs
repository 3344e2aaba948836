//! The doctor's active probes: the TLS handshake, a ping, HTTP/2 extended
//! CONNECT, Alt-Svc and HTTP/3, and the idle probe.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use switchyard::fallback::{FallbackBuilder, FallbackError, Transport};
use switchyard::H2Error;
use switchyard::{ClientBuilder, CloseCode, Message, WebSocket};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::fixes::Problem;
use super::report::{ms, Step};
use super::tls::{self, Trust};
use crate::dial::{Dialer, Target};

/// Days in seconds.
const DAY: i64 = 86_400;
/// Warn when the certificate expires sooner than this.
const EXPIRY_WARN_DAYS: i64 = 14;

/// The TLS handshake with ALPN h2 and http/1.1 offered. Returns the step and
/// `Some(certificate valid)`, or `None` when no TLS session could be set up
/// (nothing further can be checked).
pub async fn tls_step(
    target: &Target,
    addr: SocketAddr,
    trust: &Trust,
    limit: Duration,
) -> (Step, Option<bool>) {
    const NAME: &str = "tls";
    let offered: [&[u8]; 2] = [b"h2", b"http/1.1"];
    let (cfg, recorder) = match trust.client_config(&offered) {
        Ok(c) => c,
        Err(e) => return (Step::fail(NAME, format!("TLS configuration: {e}")), None),
    };
    let Ok(name) = ServerName::try_from(target.host.clone()) else {
        return (
            Step::fail(
                NAME,
                format!(
                    "{:?} is not a valid DNS name or IP address for TLS",
                    target.host
                ),
            ),
            None,
        );
    };
    let started = Instant::now();
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
    };
    let stream = match tokio::time::timeout(limit, attempt).await {
        Err(_) => {
            return (
                Step::fail(
                    NAME,
                    format!("no TLS handshake within {limit:?}: is this port TLS (wss://)?"),
                )
                .fix(Problem::NotHttp.fix()),
                None,
            )
        }
        Ok(Err(e)) => {
            let text = e.to_string();
            let not_tls = text.contains("corrupt message") || text.contains("InvalidContentType");
            let (hint, problem) = if not_tls {
                (
                    ": the port does not speak TLS (a cleartext server? use ws://)",
                    Problem::NotHttp,
                )
            } else {
                ("", Problem::TlsOther)
            };
            return (
                Step::fail(NAME, format!("the TLS handshake failed: {text}{hint}"))
                    .evidence(format!("with {addr}"))
                    .fix(problem.fix()),
                None,
            );
        }
        Ok(Ok(s)) => s,
    };
    let elapsed = started.elapsed();
    let (_, session) = stream.get_ref();
    let version = session
        .protocol_version()
        .map_or("unknown".to_owned(), |v| format!("{v:?}").replace('_', "."));
    let alpn = session
        .alpn_protocol()
        .map_or("none (the server ignored ALPN)".to_owned(), |p| {
            String::from_utf8_lossy(p).into_owned()
        });
    let mut evidence = vec![
        format!("version: {version}, handshake in {}", ms(elapsed)),
        format!("ALPN offered: h2, http/1.1; selected: {alpn}"),
        format!("trusted roots: {}", trust.sources),
    ];
    let Some(seen) = recorder.seen() else {
        return (
            Step::fail(NAME, "the server sent no certificate").evidence_all(evidence),
            Some(false),
        );
    };
    let info = tls::leaf_info(&seen.leaf);
    let now = tls::now_unix();
    if let Some(i) = &info {
        evidence.push(format!("subject: {}", i.subject));
        evidence.push(format!(
            "names: {}",
            if i.names.is_empty() {
                "(no subjectAltName)".to_owned()
            } else {
                i.names.join(", ")
            }
        ));
        evidence.push(format!("issuer: {}", i.issuer));
        let days = (i.not_after - now).div_euclid(DAY);
        evidence.push(if i.not_after < now {
            format!(
                "expired on {} ({} days ago)",
                tls::format_utc(i.not_after),
                (now - i.not_after).div_euclid(DAY)
            )
        } else {
            format!(
                "expires on {} ({days} days left)",
                tls::format_utc(i.not_after)
            )
        });
    }
    evidence.push(format!(
        "chain: leaf + {} intermediate(s)",
        seen.intermediates
    ));
    match &seen.verdict {
        Err(e) => {
            let (why, problem) = tls::explain(e, &target.host);
            (
                Step::fail(NAME, format!("{why}; browsers refuse this server"))
                    .evidence_all(evidence)
                    .evidence(format!("webpki: {e}"))
                    .fix(problem.fix()),
                Some(false),
            )
        }
        Ok(()) => {
            let days = info.as_ref().map(|i| (i.not_after - now).div_euclid(DAY));
            let step = match days {
                Some(d) if d < EXPIRY_WARN_DAYS => Step::warn(
                    NAME,
                    format!(
                        "certificate valid for {} but it expires in {d} days",
                        target.host
                    ),
                )
                .fix(Problem::TlsExpired.fix().with_summary(
                    "renew the certificate now (and automate renewal: certbot renew / ACME)",
                )),
                _ => Step::pass(
                    NAME,
                    format!(
                        "certificate valid for {}, {version}, ALPN {alpn}",
                        target.host
                    ),
                ),
            };
            (step.evidence_all(evidence), Some(true))
        }
    }
}

/// One ping, one pong.
pub async fn ping<S>(ws: &mut WebSocket<S>, limit: Duration) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    const NAME: &str = "ping";
    let payload = Bytes::from_static(b"switchyard-doctor");
    let started = Instant::now();
    if let Err(e) = ws.send(Message::Ping(payload.clone())).await {
        return Step::fail(NAME, format!("cannot send a ping: {e}"));
    }
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                return Step::fail(NAME, format!("no pong within {limit:?}"))
                    .fix(Problem::NoPong.fix())
            }
            Ok(Some(Ok(Message::Pong(p)))) if p == payload => {
                return Step::pass(NAME, format!("round trip {}", ms(started.elapsed())))
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Step::fail(
                    NAME,
                    format!(
                        "the server closed the connection instead of answering the ping{}",
                        frame
                            .map(|f| format!(" (close code {})", f.code.0))
                            .unwrap_or_default()
                    ),
                )
                .fix(Problem::NoPong.fix())
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => {
                return Step::fail(
                    NAME,
                    format!(
                        "the connection failed before the pong: {}",
                        crate::diagnose::diagnose_drop(&e)
                    ),
                )
                .fix(Problem::NoPong.fix())
            }
            Ok(None) => {
                return Step::fail(NAME, "the connection ended before the pong")
                    .fix(Problem::NoPong.fix())
            }
        }
    }
}

/// HTTP/2: does the server speak it, and did it send
/// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441)? If so, open a WebSocket on it.
pub async fn h2_step(target: &Target, builder: &ClientBuilder) -> Step {
    const NAME: &str = "http/2";
    let url = target.uri.to_string();
    let how = if target.tls {
        "ALPN h2"
    } else {
        "prior knowledge (cleartext)"
    };
    let conn = match switchyard::h2::H2Connection::connect(&url, builder).await {
        Ok(c) => c,
        Err(switchyard::Error::H2(H2Error::NoConnectProtocol { .. })) => {
            return Step::pass(
                NAME,
                "the server speaks HTTP/2 but did not send SETTINGS_ENABLE_CONNECT_PROTOCOL: \
                 no WebSockets over HTTP/2 (RFC 8441); HTTP/2 clients use a separate \
                 HTTP/1.1 connection for them",
            )
            .evidence(format!(
                "connected with {how}; SETTINGS received without ENABLE_CONNECT_PROTOCOL = 1"
            ))
            .evidence(format!(
                "optional, to enable it: {}",
                Problem::H2NoWebSocket.fix().summary
            ));
        }
        Err(switchyard::Error::H2(H2Error::NoAlpnH2 { chosen, .. })) => {
            return Step::pass(
                NAME,
                format!(
                    "not spoken on this port (ALPN selected {chosen}): WebSockets use HTTP/1.1 \
                     here"
                ),
            )
        }
        Err(e) if !target.tls => {
            return Step::pass(
                NAME,
                "not spoken with prior knowledge on this cleartext port (normal: browsers use \
                 HTTP/2 only over TLS): WebSockets use HTTP/1.1 here",
            )
            .evidence(format!("probe: {e}"))
        }
        Err(e) => {
            return Step::pass(
                NAME,
                "no HTTP/2 connection could be set up: WebSockets use HTTP/1.1 here",
            )
            .evidence(format!("probe: {e}"))
        }
    };
    let pq = target
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let started = Instant::now();
    match conn.websocket(&pq, builder).await {
        Ok((mut ws, resp)) => {
            let rtt = ping(&mut ws, Duration::from_secs(3)).await;
            let _ = ws.close(switchyard::CloseCode::NORMAL, "doctor done").await;
            Step::pass(
                NAME,
                format!(
                    "WebSocket over HTTP/2 works: SETTINGS_ENABLE_CONNECT_PROTOCOL = 1, extended \
                     CONNECT answered {} in {}",
                    resp.status(),
                    ms(started.elapsed())
                ),
            )
            .evidence(format!("connected with {how}"))
            .evidence(format!("ping over HTTP/2: {}", rtt.summary))
        }
        Err(e) => Step::warn(
            NAME,
            format!(
                "the server sent SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 but the extended CONNECT \
                 failed: {e}"
            ),
        )
        .evidence(format!("connected with {how}"))
        .fix(Problem::H2NoWebSocket.fix().with_summary(
            "the server advertises WebSockets over HTTP/2 but refuses them: route extended \
             CONNECT (:protocol websocket) to the WebSocket endpoint, or stop advertising it",
        )),
    }
}

/// A plain GET of the URL's path, for the Alt-Svc header of a normal answer.
pub async fn alt_svc_from_get(
    target: &Target,
    addr: SocketAddr,
    trust: &Trust,
    limit: Duration,
) -> Option<String> {
    let limit = limit.min(Duration::from_secs(3));
    let path = target.uri.path_and_query().map_or("/", |p| p.as_str());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: switchyard-doctor\r\nAccept: */*\r\n\
         Connection: close\r\n\r\n",
        target.authority()
    );
    let fut = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        if target.tls {
            let (cfg, _) = trust.client_config(&[b"http/1.1"]).ok()?;
            let name = ServerName::try_from(target.host.clone()).ok()?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .ok()?;
            read_head(tls, request.as_bytes()).await
        } else {
            read_head(tcp, request.as_bytes()).await
        }
    };
    let head = tokio::time::timeout(limit, fut).await.ok().flatten()?;
    let v: Vec<&str> = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case("alt-svc"))
        .map(|(_, v)| v.trim())
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

/// Send `request`, read the response head (at most 16 KiB).
async fn read_head<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &[u8]) -> Option<String> {
    const CAP: usize = 16 * 1024;
    s.write_all(request).await.ok()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    while buf.len() < CAP {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n.min(chunk.len())]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            break;
        }
    }
    Some(String::from_utf8_lossy(&buf).replace("\r\n", "\n"))
}

/// The `h3` entries of an Alt-Svc value: (authority, e.g. ":443").
pub fn alt_svc_h3(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|entry| {
            let first = entry.split(';').next()?.trim();
            let (proto, auth) = first.split_once('=')?;
            (proto.trim() == "h3").then(|| auth.trim().trim_matches('"').to_owned())
        })
        .collect()
}

/// HTTP/3 through Alt-Svc: what is advertised, and whether a WebSocket
/// over it (RFC 9220) opens.
pub async fn h3_step(target: &Target, alt_svc: Option<&str>, builder: &ClientBuilder) -> Step {
    const NAME: &str = "http/3";
    let Some(value) = alt_svc else {
        return Step::pass(
            NAME,
            "not advertised (no Alt-Svc header): WebSockets use TCP here",
        );
    };
    let entries = alt_svc_h3(value);
    let Some(auth) = entries.first() else {
        return Step::pass(NAME, "Alt-Svc advertises no h3 endpoint")
            .evidence(format!("Alt-Svc: {value}"));
    };
    if !target.tls {
        return Step::pass(
            NAME,
            "Alt-Svc advertises h3, but this is a ws:// URL: HTTP/3 always uses TLS (wss://)",
        )
        .evidence(format!("Alt-Svc: {value}"));
    }
    let (host, port) = match auth.rsplit_once(':') {
        Some((h, p)) => (
            if h.is_empty() {
                target.host.as_str()
            } else {
                h
            },
            p.parse::<u16>().unwrap_or(target.port),
        ),
        None => (target.host.as_str(), target.port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host_part = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let pq = target.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("wss://{host_part}:{port}{pq}");
    let started = Instant::now();
    match switchyard::h3::connect_h3(&url, builder).await {
        Ok((mut ws, resp)) => {
            let _ = ws.close(switchyard::CloseCode::NORMAL, "doctor done").await;
            Step::pass(
                NAME,
                format!(
                    "WebSocket over HTTP/3 works: extended CONNECT answered {} in {}",
                    resp.status(),
                    ms(started.elapsed())
                ),
            )
            .evidence(format!("Alt-Svc: {value}"))
            .evidence(format!("QUIC to {host_part}:{port} (UDP)"))
        }
        Err(e) => Step::warn(
            NAME,
            format!("Alt-Svc advertises HTTP/3 at {auth} but a WebSocket over it failed: {e}"),
        )
        .evidence(format!("Alt-Svc: {value}"))
        .evidence(format!("QUIC to {host_part}:{port} (UDP)"))
        .fix(Problem::H3Broken.fix()),
    }
}

/// What usually closes a silent connection after `secs` seconds.
fn idle_culprit(secs: u64) -> &'static str {
    match secs {
        55..=65 => {
            "typical of nginx proxy_read_timeout (default 60 s), or a load balancer's idle \
             timeout (AWS ALB 60 s)"
        }
        85..=95 => "typical of Apache's ProxyTimeout/Timeout or Cloudflare-like edges",
        _ => {
            "typical of nginx proxy_read_timeout (default 60 s), HAProxy timeout tunnel, or a \
              load balancer's idle timeout"
        }
    }
}

/// After a failed upgrade: whether a fallback session of a switchyard
/// gateway (SSE + POST) opens and closes through the same path, with the
/// same Origin and headers (`builder` gives the TLS trust).
pub async fn fallback_step(
    url: &str,
    builder: &ClientBuilder,
    origin: Option<&str>,
    headers: &[(http::HeaderName, http::HeaderValue)],
    limit: Duration,
) -> Step {
    const NAME: &str = "fallback session";
    let mut b = FallbackBuilder::new(Transport::Sse)
        .tls(builder.clone())
        .request_timeout(limit);
    if let Some(v) = origin.and_then(|o| http::HeaderValue::from_str(o).ok()) {
        b = b.header(http::header::ORIGIN, v);
    }
    for (n, v) in headers {
        b = b.header(n.clone(), v.clone());
    }
    let started = Instant::now();
    match b.connect(url).await {
        Ok(mut s) => {
            let opened = started.elapsed();
            let closed = tokio::time::timeout(limit, s.close(CloseCode::NORMAL, "doctor done"))
                .await
                .map_err(|_| format!("no answer within {limit:?}"))
                .and_then(|r| r.map_err(|e| e.to_string()));
            match closed {
                Ok(()) => Step::pass(
                    NAME,
                    format!(
                        "a fallback session (SSE + POST) opened through the same path in {}: \
                         clients that fall back (SwitchyardSocket, `switchyard connect \
                         --transport sse {url}`) work here",
                        ms(opened)
                    ),
                ),
                Err(why) => Step::fail(
                    NAME,
                    format!("a fallback session opened, but its close did not go through: {why}"),
                ),
            }
        }
        Err(FallbackError::Refused { status, .. }) if status == http::StatusCode::NOT_FOUND => {
            Step::warn(
                NAME,
                "no fallback sessions at this URL (404): they are served by a switchyard \
                 gateway on a route that serves WebSocket, unless its policy sets fallback = []",
            )
        }
        Err(e) => Step::fail(NAME, format!("a fallback session did not open either: {e}")),
    }
}

/// Keep a new connection silent for `limit`; report if and when something
/// on the path closes it.
pub async fn idle(dialer: &Dialer, limit: Duration) -> Step {
    const NAME: &str = "idle probe";
    let mut d = match dialer.dial(None).await {
        Ok(d) => d,
        Err(e) => {
            return Step::fail(
                NAME,
                format!(
                    "could not open the connection to probe: {}",
                    crate::diagnose::diagnose_dial(&e, &dialer.target.url).summary
                ),
            )
        }
    };
    crate::with_ws!(&mut d.ws, ws => idle_on(ws, limit).await)
}

/// The idle probe on an open WebSocket.
async fn idle_on<S>(ws: &mut WebSocket<S>, limit: Duration) -> Step
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    const NAME: &str = "idle probe";
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut evidence = Vec::new();
    let how = loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                let _ = ws.close(switchyard::CloseCode::NORMAL, "doctor done").await;
                return Step::pass(
                    NAME,
                    format!(
                        "still open after {} s of silence",
                        limit.as_secs_f64().round()
                    ),
                )
                .evidence_all(evidence);
            }
            Ok(Some(Ok(Message::Ping(_)))) => {
                evidence.push(format!(
                    "the server pinged after {:.1} s (we answered): it keeps the connection alive",
                    started.elapsed().as_secs_f64()
                ));
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                break match frame {
                    Some(f) => format!(
                        "close frame {} ({}){}",
                        f.code.0,
                        crate::diagnose::close_code_name(f.code.0),
                        if f.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {:?}", f.reason.as_str())
                        }
                    ),
                    None => "close frame without a code".to_owned(),
                }
            }
            Ok(Some(Ok(_))) => evidence.push(format!(
                "a message arrived after {:.1} s",
                started.elapsed().as_secs_f64()
            )),
            Ok(Some(Err(e))) => break crate::diagnose::diagnose_drop(&e),
            Ok(None) => break "the connection ended".to_owned(),
        }
    };
    let after = started.elapsed();
    let secs = after.as_secs_f64();
    Step::warn(
        NAME,
        format!(
            "closed after {:.0} s of silence: {}; raise it or enable pings",
            secs,
            idle_culprit(secs.round() as u64)
        ),
    )
    .evidence(format!("closed after {secs:.2} s: {how}"))
    .evidence_all(evidence)
    .fix(Problem::IdleTimeout.fix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alt_svc_h3_entries() {
        assert_eq!(
            alt_svc_h3("h3=\":443\"; ma=86400, h3-29=\":443\", h2=\":443\""),
            vec![":443"]
        );
        assert_eq!(
            alt_svc_h3("h3=\"alt.example:8443\""),
            vec!["alt.example:8443"]
        );
        assert!(alt_svc_h3("clear").is_empty());
        assert!(alt_svc_h3("h2=\":443\"").is_empty());
    }

    #[test]
    fn idle_culprits() {
        assert!(idle_culprit(60).contains("proxy_read_timeout (default 60 s)"));
        assert!(idle_culprit(3).contains("nginx proxy_read_timeout"));
    }
}

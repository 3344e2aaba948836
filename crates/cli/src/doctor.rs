//! `switchyard doctor URL`: walk the path to a WebSocket endpoint — DNS,
//! TCP, TLS, the HTTP/1.1 upgrade, extensions and subprotocol, HTTP/2
//! extended CONNECT, HTTP/3 through Alt-Svc, a ping, mixed content and an
//! optional idle probe (and, when the upgrade failed, whether a switchyard
//! gateway's fallback session works through the same path) — and report each step as pass, warn or fail with the
//! evidence and the fix for nginx, Apache, Caddy, HAProxy and switchyard.
//!
//! Exit status: 0 every step passed, 1 warnings, 2 a failure. `--json` prints
//! one document: `{url, status, exit_code, steps: [{name, status, summary,
//! evidence, fix: {summary, nginx, apache, caddy, haproxy, switchyard} | null}],
//! notes}`.
//!
//! A real run against nginx proxying to `switchyard serve` without the
//! Upgrade headers (the test `nginx_without_upgrade_headers_is_diagnosed`):
//!
//! ```text
//! switchyard doctor ws://127.0.0.1:46147/echo
//! ✓ url: 127.0.0.1 over cleartext (ws), port 46147, path /echo
//! ✓ dns: 127.0.0.1 is an IP address: no lookup
//! ✓ tcp: 1 of 1 address accepted a connection
//!     127.0.0.1:46147: connected in 0.16 ms
//! ✗ http/1.1 upgrade: 426 Upgrade Required: the proxy dropped Upgrade — the server asks for the WebSocket upgrade we did send, so nginx (Server: nginx/1.22.1) removed our Upgrade and Connection headers on the way
//!     Server: nginx/1.22.1
//!     Upgrade: websocket
//!     fix: make the reverse proxy forward the upgrade: HTTP/1.1 to the backend with the client's Upgrade and Connection: upgrade headers
//!       nginx       location /echo { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade"; }
//!       Apache      a2enmod proxy proxy_http proxy_wstunnel; ProxyPass /echo ws://backend:8080/echo upgrade=websocket
//!       ...
//! ✓ fallback session: a fallback session (SSE + POST) opened through the same path in 0.95 ms: clients that fall back (SwitchyardSocket, `switchyard connect --transport sse ws://127.0.0.1:46147/echo`) work here
//! ...
//! result: failure (7 passed, 0 warnings, 1 failures)
//! ```
//!
//! The upgrade itself goes through [`crate::dial`] (the same code path as
//! `connect`), and a refused or broken handshake is first explained by
//! [`crate::diagnose`]; this module adds the classification (which proxy,
//! which problem) and the fixes.

mod fixes;
mod probe;
mod report;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_gateway::config::parse_flag_duration;

use http::{HeaderName, HeaderValue, Response};

use crate::dial::{parse_header, ConnOpts, DialError, Dialer, Target, Transcript};
use fixes::Problem;
use report::{ms, Report, Status, Step};

/// `switchyard doctor` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// The WebSocket URL to check: ws://host[:port]/path or wss://...
    pub url: String,
    /// The Origin a browser page would send (e.g. https://app.example.com):
    /// checks mixed content and the server's origin policy.
    #[arg(long)]
    pub origin: Option<String>,
    /// After the other steps, keep a connection silent this long (e.g. 75s)
    /// and report whether something on the path closes it.
    #[arg(long, value_name = "DURATION", value_parser = parse_flag_duration)]
    pub idle_probe: Option<Duration>,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Also trust the CA certificates in this PEM file (repeatable).
    #[arg(long = "ca", value_name = "FILE")]
    pub ca: Vec<PathBuf>,
    /// Add a request header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Offer this subprotocol (repeatable, in preference order).
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Vec<String>,
    /// Give up each step after this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_flag_duration)]
    pub timeout: Duration,
}

/// Run the checks, print the report, return the exit status.
pub async fn run(args: DoctorArgs) -> i32 {
    let mut report = examine(&args).await;
    if let Ok(t) = Target::parse(&args.url) {
        for step in &mut report.steps {
            if let Some(fix) = step.fix.take() {
                step.fix = Some(fix.tailored(&t.host, t.uri.path()));
            }
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).unwrap_or_default()
        );
    } else {
        print!("{}", report.human());
    }
    report.status().exit_code()
}

/// All the steps, in order; stops early when nothing further can be reached.
pub async fn examine(args: &DoctorArgs) -> Report {
    let mut report = Report::new(&args.url);

    // URL.
    let target = match Target::parse(&args.url) {
        Ok(t) => t,
        Err(e) => {
            report.push(Step::fail("url", e.to_string()).evidence(
                "write it as ws://host[:port]/path (cleartext) or wss://host[:port]/path (TLS)",
            ));
            return report;
        }
    };
    report.push(Step::pass(
        "url",
        format!(
            "{} over {}, port {}, path {}",
            target.host,
            if target.tls {
                "TLS (wss)"
            } else {
                "cleartext (ws)"
            },
            target.port,
            target.uri.path()
        ),
    ));
    report.push(mixed_content(&target, args.origin.as_deref()));

    // DNS.
    let addrs = match dns(&target, args.timeout).await {
        Ok((step, addrs)) => {
            report.push(step);
            addrs
        }
        Err(step) => {
            report.push(step);
            return report;
        }
    };

    // TCP.
    let (step, reachable) = tcp(&addrs, args.timeout).await;
    report.push(step);
    let Some(first) = reachable else {
        return report;
    };

    // TLS.
    let trust = match tls::Trust::load(&args.ca) {
        Ok(t) => t,
        Err(e) => {
            report.push(Step::fail("tls", e));
            return report;
        }
    };
    let mut cert_ok = true;
    if target.tls {
        let (step, ok) = probe::tls_step(&target, first, &trust, args.timeout).await;
        report.push(step);
        match ok {
            Some(ok) => cert_ok = ok,
            None => return report,
        }
    }

    // The HTTP/1.1 upgrade, through the same dialer `connect` uses.
    let dialer = match make_dialer(args, &target, &trust) {
        Ok(d) => d,
        Err(e) => {
            report.push(Step::fail("http/1.1 upgrade", e));
            return report;
        }
    };
    let log = Arc::new(Mutex::new(Transcript::default()));
    let started = Instant::now();
    let dialed = dialer.dial(Some(&log)).await;
    let elapsed = started.elapsed();
    let mut alt_svc: Option<String> = None;
    match dialed {
        Ok(mut d) => {
            alt_svc = header_text(&d.response, "alt-svc");
            let offered = {
                let t = log.lock().unwrap_or_else(|p| p.into_inner());
                request_header(&t.request_head(), "sec-websocket-extensions")
            };
            for step in upgrade_ok(&d.response, elapsed, offered, &args.subprotocols) {
                report.push(step);
            }
            let limit = args.timeout;
            let step = crate::with_ws!(&mut d.ws, ws => {
                let step = probe::ping(ws, limit).await;
                let _ = ws.close(switchyard::CloseCode::NORMAL, "doctor done").await;
                step
            });
            report.push(step);
        }
        Err(e) => {
            let received = log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .response_head();
            if let DialError::Ws(switchyard::Error::UpgradeRefused { response, .. }) = &e {
                alt_svc = header_text(response, "alt-svc");
            }
            report.push(upgrade_failed(
                &e,
                &args.url,
                args.origin.as_deref(),
                &received,
            ));
            let builder = probe_builder(args, cert_ok);
            let origin = args.origin.as_deref();
            let step =
                probe::fallback_step(&args.url, &builder, origin, &args.headers, args.timeout);
            report.push(step.await);
        }
    }

    // HTTP/2 and HTTP/3.
    let builder = probe_builder(args, cert_ok);
    report.push(probe::h2_step(&target, &builder).await);
    if alt_svc.is_none() {
        alt_svc = probe::alt_svc_from_get(&target, first, &trust, args.timeout).await;
    }
    report.push(probe::h3_step(&target, alt_svc.as_deref(), &builder).await);

    // Idle probe.
    match args.idle_probe {
        Some(limit) => report.push(probe::idle(&dialer, limit).await),
        None => report.notes.push(
            "the idle probe did not run: add --idle-probe 75s to see whether something on the \
             path closes silent connections (nginx's proxy_read_timeout is 60 s by default)"
                .to_owned(),
        ),
    }
    report
}

/// The dialer for the upgrade: `connect`'s options, our recording TLS
/// configuration (so a bad certificate is reported, not fatal), no heartbeat
/// (the idle probe must stay silent).
fn make_dialer(args: &DoctorArgs, target: &Target, trust: &tls::Trust) -> Result<Dialer, String> {
    let opts = ConnOpts {
        headers: args.headers.clone(),
        subprotocols: args.subprotocols.clone(),
        origin: args.origin.clone(),
        ca: args.ca.clone(),
        connect_timeout: args.timeout,
        ..ConnOpts::default()
    };
    let limits = switchyard::Limits::default()
        .handshake_timeout(args.timeout)
        .ping_interval(None);
    let mut dialer = opts.dialer(&args.url, limits).map_err(|e| e.to_string())?;
    if target.tls {
        let (cfg, _) = trust
            .client_config(&[b"http/1.1"])
            .map_err(|e| format!("cannot build the TLS configuration: {e}"))?;
        dialer.tls = Some(cfg);
    }
    Ok(dialer)
}

/// The client for the HTTP/2 and HTTP/3 probes: short timeouts; when the
/// certificate failed (already reported), do not fail again on it.
fn probe_builder(args: &DoctorArgs, cert_ok: bool) -> switchyard::ClientBuilder {
    let mut b = switchyard::ClientBuilder::new()
        .subprotocols(args.subprotocols.iter().cloned())
        .limits(
            switchyard::Limits::default()
                .handshake_timeout(args.timeout.min(Duration::from_secs(3)))
                .ping_interval(None),
        );
    if let Some(o) = &args.origin {
        b = b.origin(o.clone());
    }
    for (n, v) in &args.headers {
        b = b.header(n.clone(), v.clone());
    }
    for ca in &args.ca {
        b = b.add_ca_file(ca);
    }
    if !cert_ok {
        b = b.danger_accept_invalid_certs();
    }
    b
}

fn mixed_content(target: &Target, origin: Option<&str>) -> Step {
    const NAME: &str = "mixed content";
    let Some(origin) = origin else {
        return Step::pass(
            NAME,
            "not checked: no --origin given (pass the page's origin, e.g. --origin \
             https://app.example.com)",
        );
    };
    let https_page = origin.to_ascii_lowercase().starts_with("https://");
    if https_page && !target.tls {
        Step::fail(
            NAME,
            format!(
                "an https page ({origin}) cannot open a ws:// URL: browsers block it as mixed \
                 content"
            ),
        )
        .evidence(format!("Origin: {origin}"))
        .evidence(format!("URL: {}", target.url))
        .fix(Problem::MixedContent.fix())
    } else {
        Step::pass(
            NAME,
            format!(
                "a page at {origin} may open this {} URL",
                if target.tls { "wss://" } else { "ws://" }
            ),
        )
    }
}

async fn dns(target: &Target, limit: Duration) -> Result<(Step, Vec<SocketAddr>), Step> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        let addr = SocketAddr::new(ip, target.port);
        return Ok((
            Step::pass("dns", format!("{ip} is an IP address: no lookup")),
            vec![addr],
        ));
    }
    let started = Instant::now();
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    let fail = |why: String| {
        Step::fail("dns", format!("cannot resolve {}: {why}", target.host)).fix(Problem::Dns.fix())
    };
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(limit, lookup).await {
        Err(_) => return Err(fail(format!("no answer within {limit:?}"))),
        Ok(Err(e)) => return Err(fail(e.to_string())),
        Ok(Ok(it)) => {
            let mut v: Vec<SocketAddr> = Vec::new();
            for a in it {
                if !v.contains(&a) {
                    v.push(a);
                }
            }
            v
        }
    };
    if addrs.is_empty() {
        return Err(fail("the name has no A or AAAA record".to_owned()));
    }
    let v4 = addrs.iter().filter(|a| a.is_ipv4()).count();
    let step = Step::pass(
        "dns",
        format!(
            "{} resolves to {} address{} ({v4} IPv4, {} IPv6) in {}",
            target.host,
            addrs.len(),
            if addrs.len() == 1 { "" } else { "es" },
            addrs.len() - v4,
            ms(started.elapsed())
        ),
    )
    .evidence_all(addrs.iter().map(|a| a.ip().to_string()));
    Ok((step, addrs))
}

/// Connect to every address (at most 8); the first that answers is used for
/// the steps that need one address.
async fn tcp(addrs: &[SocketAddr], limit: Duration) -> (Step, Option<SocketAddr>) {
    let mut evidence = Vec::new();
    let mut first = None;
    let mut failed = 0;
    let tried = &addrs[..addrs.len().min(8)];
    // All at once, each timed on its own: a dead address costs its timeout
    // once, not once per address.
    let attempts = tried.iter().map(|addr| async move {
        let t0 = Instant::now();
        let r = tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await;
        (*addr, r, t0.elapsed())
    });
    for (addr, result, took) in futures_util::future::join_all(attempts).await {
        match result {
            Ok(Ok(_)) => {
                evidence.push(format!("{addr}: connected in {}", ms(took)));
                first.get_or_insert(addr);
            }
            Ok(Err(e)) => {
                failed += 1;
                let why = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => {
                        "connection refused (nothing listens on that port)".to_owned()
                    }
                    _ => e.to_string(),
                };
                evidence.push(format!("{addr}: {why}"));
            }
            Err(_) => {
                failed += 1;
                evidence.push(format!(
                    "{addr}: no answer within {limit:?} (a firewall dropping packets?)"
                ));
            }
        }
    }
    let n = tried.len();
    let step = if first.is_none() {
        Step::fail(
            "tcp",
            format!("no address accepted a connection ({n} tried)"),
        )
        .fix(Problem::Unreachable.fix())
    } else if failed > 0 {
        Step::warn(
            "tcp",
            format!(
                "{failed} of {n} addresses failed: clients that pick them fail or wait before \
                 falling back"
            ),
        )
        .fix(Problem::Unreachable.fix().with_summary(
            "make every published address reach the server, or remove the DNS records of \
             those that do not",
        ))
    } else {
        Step::pass(
            "tcp",
            format!(
                "{n} of {n} address{} accepted a connection",
                if n == 1 { "" } else { "es" }
            ),
        )
    };
    (step.evidence_all(evidence), first)
}

/// A response header's values joined (lossy UTF-8).
fn header_text(resp: &Response<()>, name: &str) -> Option<String> {
    let v: Vec<String> = resp
        .headers()
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

/// A header of a head recorded as text (`Name: value` lines).
fn request_header(head: &str, name: &str) -> Option<String> {
    let v: Vec<&str> = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

/// Which proxy or server software the answer reveals (`Server`, `Via`).
fn proxy_on_path(server: Option<&str>, via: Option<&str>) -> Option<String> {
    const KNOWN: [(&str, &str); 10] = [
        ("nginx", "nginx"),
        ("openresty", "nginx (OpenResty)"),
        ("apache", "Apache"),
        ("caddy", "Caddy"),
        ("haproxy", "HAProxy"),
        ("envoy", "Envoy"),
        ("cloudflare", "Cloudflare"),
        ("squid", "Squid"),
        ("traefik", "Traefik"),
        ("awselb", "AWS load balancer"),
    ];
    if let Some(s) = server {
        let lower = s.to_ascii_lowercase();
        if let Some((_, name)) = KNOWN.iter().find(|(k, _)| lower.contains(k)) {
            return Some(format!("{name} (Server: {s})"));
        }
    }
    via.map(|v| format!("a proxy (Via: {v})"))
}

/// Steps for a successful 101: the upgrade, extensions, subprotocol.
fn upgrade_ok(
    resp: &Response<()>,
    elapsed: Duration,
    offered_extensions: Option<String>,
    offered_protocols: &[String],
) -> Vec<Step> {
    let h = |n| header_text(resp, n);
    let mut step = Step::pass(
        "http/1.1 upgrade",
        format!("101 Switching Protocols in {}", ms(elapsed)),
    )
    .evidence(format!(
        "Upgrade: {}",
        h("upgrade").unwrap_or_else(|| "(none)".into())
    ))
    .evidence(format!(
        "Connection: {}",
        h("connection").unwrap_or_else(|| "(none)".into())
    ))
    .evidence(format!(
        "Sec-WebSocket-Accept: {} (valid for our key)",
        h("sec-websocket-accept").unwrap_or_default()
    ));
    if let Some(s) = h("server") {
        step = step.evidence(format!("Server: {s}"));
    }
    if let Some(v) = h("via") {
        step = step.evidence(format!(
            "Via: {v} (a proxy on the path forwards the upgrade correctly)"
        ));
    }

    let answered = h("sec-websocket-extensions");
    let ext = match (&offered_extensions, &answered) {
        (_, Some(a)) => Step::pass("extensions", format!("negotiated {a}")),
        (Some(_), None) => Step::pass(
            "extensions",
            "none negotiated: the server (or a proxy) declined permessage-deflate; messages \
             travel uncompressed",
        ),
        (None, None) => Step::pass("extensions", "none offered, none negotiated"),
    };
    let ext = match offered_extensions {
        Some(o) => ext.evidence(format!("offered: {o}")),
        None => ext,
    };

    let selected = h("sec-websocket-protocol");
    let sub = match (offered_protocols.is_empty(), selected) {
        (true, None) => Step::pass("subprotocol", "none offered, none selected"),
        (false, Some(s)) => Step::pass("subprotocol", format!("selected {s}"))
            .evidence(format!("offered: {}", offered_protocols.join(", "))),
        (false, None) => Step::warn(
            "subprotocol",
            format!(
                "the server selected none of the offered subprotocols ({}); clients that \
                 require one will close the connection",
                offered_protocols.join(", ")
            ),
        )
        .fix(Problem::NoSubprotocol.fix()),
        // The handshake would have failed: kept for completeness.
        (true, Some(s)) => Step::fail(
            "subprotocol",
            format!("the server selected {s} though none was offered"),
        ),
    };
    vec![step, ext, sub]
}

/// Explain a failed upgrade: `diagnose` gives the summary and the evidence,
/// the status and the headers decide the problem and the fix.
fn upgrade_failed(err: &DialError, url: &str, origin: Option<&str>, received: &str) -> Step {
    const NAME: &str = "http/1.1 upgrade";
    let d = crate::diagnose::diagnose_dial(err, url);
    let mut evidence = d.evidence.clone();
    if let DialError::Ws(switchyard::Error::UpgradeRefused { response, .. }) = err {
        evidence.push(match header_text(response, "connection") {
            Some(c) => format!("Connection: {c}"),
            None => "no Connection header in the answer".to_owned(),
        });
    }
    let base = |status: Status, summary: String, problem: Problem| {
        Step::new(NAME, status, summary)
            .evidence_all(evidence.clone())
            .fix(problem.fix())
    };
    match err {
        DialError::Ws(switchyard::Error::UpgradeRefused {
            status, response, ..
        }) => {
            let code = status.as_u16();
            let reason = switchyard::proto::head::reason_of(response);
            let server = header_text(response, "server");
            let via = header_text(response, "via");
            let proxy = proxy_on_path(server.as_deref(), via.as_deref());
            let tokens: Vec<String> = header_text(response, "upgrade")
                .map(|u| {
                    u.split(',')
                        .map(|t| t.trim().to_owned())
                        .filter(|t| !t.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let wants_websocket = tokens.iter().any(|t| t.eq_ignore_ascii_case("websocket"));
            let version = header_text(response, "sec-websocket-version");
            match code {
                200..=299 => match &proxy {
                    Some(p) => base(
                        Status::Fail,
                        format!(
                            "{code} {reason} instead of 101: the proxy dropped Upgrade — \
                             {p} answered like a plain GET, so it did not forward Upgrade and \
                             Connection to a WebSocket backend"
                        ),
                        Problem::ProxyDroppedUpgrade,
                    ),
                    None => base(
                        Status::Fail,
                        format!(
                            "{code} {reason} instead of 101: the upgrade was ignored — the \
                             server answered like a plain GET (not a WebSocket endpoint, or a \
                             proxy on the path dropped Upgrade/Connection)"
                        ),
                        Problem::UpgradeIgnored,
                    ),
                },
                301 | 302 | 303 | 307 | 308 => {
                    let to =
                        header_text(response, "location").unwrap_or_else(|| "(no Location)".into());
                    base(
                        Status::Fail,
                        format!("{code} {reason}: a redirect to {to}; WebSocket clients do not follow redirects"),
                        Problem::Redirect,
                    )
                }
                426 if wants_websocket
                    || (tokens.is_empty()
                        && version.as_deref().is_none_or(|v| v.contains("13"))) =>
                {
                    let who = proxy
                        .clone()
                        .unwrap_or_else(|| "something on the path".to_owned());
                    base(
                        Status::Fail,
                        format!(
                            "{code} {reason}: the proxy dropped Upgrade — the server asks for \
                             the WebSocket upgrade we did send, so {who} removed our Upgrade \
                             and Connection headers on the way"
                        ),
                        Problem::ProxyDroppedUpgrade,
                    )
                }
                426 => base(
                    Status::Fail,
                    format!(
                        "{code} {reason}: the server wants another protocol: {}{}",
                        if tokens.is_empty() {
                            "(no Upgrade header)".to_owned()
                        } else {
                            tokens.join(", ")
                        },
                        version
                            .map(|v| format!("; Sec-WebSocket-Version: {v}"))
                            .unwrap_or_default()
                    ),
                    Problem::OtherProtocolWanted,
                ),
                400 | 403 => {
                    let why = match origin {
                        Some(o) => format!("is the Origin {o} allowed?"),
                        None => "an Origin policy? (try --origin with your page's origin) or a malformed request".to_owned(),
                    };
                    let mut s = base(
                        Status::Fail,
                        format!("{code} {reason}: the server rejected the upgrade — {why}"),
                        Problem::OriginRejected,
                    );
                    if let Some(p) = &proxy {
                        s = s.evidence(format!(
                            "{p} is on the path: if the backend complains that Upgrade is missing, the proxy dropped it (see the fix for that: proxy_set_header Upgrade $http_upgrade)"
                        ));
                    }
                    s
                }
                404 => base(
                    Status::Fail,
                    format!("{code} {reason}: no WebSocket endpoint at this path"),
                    Problem::UpgradeIgnored,
                )
                .fix(Problem::UpgradeIgnored.fix().with_summary(
                    "use the path the WebSocket endpoint is served on, and route it in every proxy",
                )),
                500..=599 => base(
                    Status::Fail,
                    format!(
                        "{code} {reason}: the backend failed{}",
                        match (&proxy, code) {
                            (Some(p), 502 | 504) => format!(" — {p} could not reach it"),
                            _ => String::new(),
                        }
                    ),
                    Problem::BackendError,
                ),
                _ => Step::fail(NAME, d.summary.clone()).evidence_all(evidence.clone()),
            }
        }
        DialError::Ws(switchyard::Error::Handshake(hs)) => {
            use switchyard::proto::handshake::HandshakeError;
            let mut s = base(Status::Fail, d.summary.clone(), Problem::BadAccept);
            if !matches!(
                hs,
                HandshakeError::BadAccept { .. } | HandshakeError::NoAccept
            ) {
                s = s.fix(Problem::BadAccept.fix().with_summary(
                    "the 101 answer must follow RFC 6455 §4.2.2 (Upgrade: websocket, Connection: \
                     Upgrade, the Accept for our key, only offered extensions and subprotocols); \
                     no proxy may rewrite it",
                ));
            }
            let server = request_header(received, "server");
            let via = request_header(received, "via");
            if let Some(p) = proxy_on_path(server.as_deref(), via.as_deref()) {
                s = s.evidence(format!("{p} is on the path"));
            }
            s
        }
        DialError::Ws(switchyard::Error::HeadEof { .. } | switchyard::Error::Head(_)) => {
            base(Status::Fail, d.summary.clone(), Problem::NotHttp)
        }
        DialError::Timeout { what, .. } if *what == "the WebSocket handshake" => base(
            Status::Fail,
            format!(
                "{}: the server accepted the connection but never answered the upgrade request",
                d.summary
            ),
            Problem::NotHttp,
        ),
        DialError::Ws(switchyard::Error::Timeout(_)) => base(
            Status::Fail,
            format!(
                "{}: the server accepted the connection but never answered the upgrade request",
                d.summary
            ),
            Problem::NotHttp,
        ),
        DialError::Tcp { .. } | DialError::Timeout { .. } => {
            base(Status::Fail, d.summary.clone(), Problem::Unreachable)
        }
        DialError::Ws(switchyard::Error::Tls { source, host }) => {
            let (why, problem) = tls::explain(source, host);
            base(Status::Fail, why, problem)
        }
        _ => Step::fail(NAME, d.summary.clone()).evidence_all(evidence),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, headers: &[(&str, &str)]) -> DialError {
        let mut resp = Response::new(());
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            resp.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        DialError::Ws(switchyard::Error::UpgradeRefused {
            status: resp.status(),
            response: Box::new(resp),
            body_preview: String::new(),
            hint: "",
        })
    }

    fn classify(status: u16, headers: &[(&str, &str)]) -> Step {
        upgrade_failed(&refused(status, headers), "ws://h/x", None, "")
    }

    #[test]
    fn status_codes_map_to_problems() {
        let s = classify(200, &[]);
        assert!(s.summary.contains("upgrade was ignored"), "{}", s.summary);
        assert_eq!(s.status, Status::Fail);
        let s = classify(200, &[("server", "nginx/1.22.1")]);
        assert!(s.summary.contains("proxy dropped Upgrade"), "{}", s.summary);
        assert!(s.summary.contains("nginx"), "{}", s.summary);
        let s = classify(302, &[("location", "wss://h/x")]);
        assert!(s.summary.contains("redirect to wss://h/x"), "{}", s.summary);
        let s = classify(426, &[("upgrade", "websocket"), ("server", "nginx")]);
        assert!(s.summary.contains("proxy dropped Upgrade"), "{}", s.summary);
        assert_eq!(s.fix.as_ref().unwrap(), &Problem::ProxyDroppedUpgrade.fix());
        let s = classify(426, &[("upgrade", "TLS/1.3, h2c")]);
        assert!(
            s.summary.contains("another protocol: TLS/1.3, h2c"),
            "{}",
            s.summary
        );
        let s = classify(403, &[]);
        assert!(s.summary.contains("rejected"), "{}", s.summary);
        assert!(s.summary.contains("Origin"), "{}", s.summary);
        let s = classify(502, &[("via", "1.1 edge")]);
        assert!(s.summary.contains("could not reach it"), "{}", s.summary);
        assert_eq!(s.fix.unwrap(), Problem::BackendError.fix());
    }

    #[test]
    fn bad_accept_is_a_failure_with_the_fix() {
        let e = DialError::Ws(switchyard::Error::Handshake(
            switchyard::proto::handshake::HandshakeError::BadAccept {
                expected: "a".into(),
                got: "b".into(),
            },
        ));
        let s = upgrade_failed(&e, "ws://h/", None, "HTTP/1.1 101 x\nVia: 1.1 mangler\n");
        assert_eq!(s.status, Status::Fail);
        assert!(
            s.summary.contains("Sec-WebSocket-Accept is wrong"),
            "{}",
            s.summary
        );
        assert!(
            s.evidence.iter().any(|e| e.contains("mangler")),
            "{:?}",
            s.evidence
        );
    }

    #[test]
    fn mixed_content_only_for_https_origin_and_ws() {
        let ws = Target::parse("ws://h/x").unwrap();
        let wss = Target::parse("wss://h/x").unwrap();
        assert_eq!(mixed_content(&ws, Some("https://app")).status, Status::Fail);
        assert_eq!(mixed_content(&ws, Some("http://app")).status, Status::Pass);
        assert_eq!(
            mixed_content(&wss, Some("https://app")).status,
            Status::Pass
        );
        assert_eq!(mixed_content(&ws, None).status, Status::Pass);
    }

    #[test]
    fn proxies_are_recognized() {
        assert_eq!(
            proxy_on_path(Some("nginx/1.22.1"), None).unwrap(),
            "nginx (Server: nginx/1.22.1)"
        );
        assert!(proxy_on_path(None, Some("1.1 varnish"))
            .unwrap()
            .contains("Via"));
        assert!(proxy_on_path(Some("switchyard"), None).is_none());
    }

    #[tokio::test]
    async fn tcp_times_every_address_and_warns_on_a_dead_one() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let dead_addr = {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let (step, first) = tcp(&[dead_addr, live_addr], Duration::from_secs(5)).await;
        assert_eq!(first, Some(live_addr));
        assert_eq!(step.status, Status::Warn, "{step:?}");
        assert!(
            step.summary.starts_with("1 of 2 addresses failed"),
            "{step:?}"
        );
        assert!(step.evidence[0].ends_with("connection refused (nothing listens on that port)"));
        assert!(step.evidence[1].starts_with(&format!("{live_addr}: connected in ")));

        let (step, first) = tcp(&[dead_addr], Duration::from_secs(5)).await;
        assert_eq!((step.status, first), (Status::Fail, None));
        assert_eq!(step.fix.unwrap(), Problem::Unreachable.fix());
    }

    #[test]
    fn request_header_reads_recorded_heads() {
        let head = "GET / HTTP/1.1\nSec-WebSocket-Extensions: permessage-deflate\n";
        assert_eq!(
            request_header(head, "sec-websocket-extensions").as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(request_header(head, "origin"), None);
    }
}

//! Turning a failure into a diagnosis a person can act on: what happened,
//! the evidence (status, headers that reveal proxies, the body's first
//! line), and what to do next. `connect` and `monitor` print these; `doctor`
//! will reuse them.

use std::io;

use http::header::{HeaderName, LOCATION, SERVER, VIA};
use switchyard::proto::handshake::HandshakeError;
use switchyard::{CloseCode, Deadline, Error};

use crate::dial::DialError;

/// A failure explained: one summary line, evidence lines, and the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    pub summary: String,
    pub evidence: Vec<String>,
    pub next_step: Option<String>,
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.summary)?;
        for e in &self.evidence {
            write!(f, "\n  {e}")?;
        }
        if let Some(n) = &self.next_step {
            write!(f, "\n  next: {n}")?;
        }
        Ok(())
    }
}

fn doctor(url: &str) -> String {
    format!("run `switchyard doctor {url}`")
}

/// Explain why opening `url` failed.
pub fn diagnose_dial(err: &DialError, url: &str) -> Diagnosis {
    match err {
        DialError::Ws(e) => diagnose_ws(e, url),
        DialError::Tcp { addr, source } => diagnose_tcp(addr, source, url),
        DialError::Timeout { what, limit } => Diagnosis {
            summary: format!("{what} did not finish within {limit:?}"),
            evidence: vec![],
            next_step: Some(format!(
                "a firewall may be dropping packets, or the server is overloaded; raise --connect-timeout or {}",
                doctor(url)
            )),
        },
        other => Diagnosis {
            summary: other.to_string(),
            evidence: vec![],
            next_step: None,
        },
    }
}

fn diagnose_tcp(addr: &str, e: &io::Error, url: &str) -> Diagnosis {
    let (summary, next) = match e.kind() {
        io::ErrorKind::ConnectionRefused => (
            format!("connection refused by {addr}: nothing is listening on that port"),
            "check the host and port in the URL, and that the server is running".to_owned(),
        ),
        io::ErrorKind::TimedOut => (
            format!("TCP connection to {addr} timed out"),
            "a firewall may be dropping the packets; check the address".to_owned(),
        ),
        _ if e.to_string().contains("lookup") || e.to_string().contains("resolve") => (
            format!("cannot resolve the host of {addr}: {e}"),
            "check the host name in the URL and your DNS".to_owned(),
        ),
        _ => (format!("cannot connect to {addr}: {e}"), doctor(url)),
    };
    Diagnosis {
        summary,
        evidence: vec![],
        next_step: Some(next),
    }
}

fn header(resp: &http::Response<()>, name: HeaderName) -> Option<String> {
    let v: Vec<_> = resp
        .headers()
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

/// Explain a `switchyard::Error` met while opening `url`.
pub fn diagnose_ws(err: &Error, url: &str) -> Diagnosis {
    match err {
        Error::UpgradeRefused {
            status,
            response,
            body_preview,
            hint,
        } => {
            let reason = switchyard::proto::head::reason_of(response);
            let mut evidence = Vec::new();
            if let Some(v) = header(response, SERVER) {
                evidence.push(format!("Server: {v}"));
            }
            if let Some(v) = header(response, VIA) {
                evidence.push(format!("Via: {v} (a proxy is on the path)"));
            }
            if let Some(v) = header(response, LOCATION) {
                evidence.push(format!("Location: {v}"));
            }
            match header(response, http::header::UPGRADE) {
                Some(v) => evidence.push(format!("Upgrade: {v}")),
                None if status.is_success() => {
                    evidence.push("no Upgrade header in the answer".to_owned())
                }
                None => {}
            }
            if let Some(line) = body_preview.lines().map(str::trim).find(|l| !l.is_empty()) {
                let line: String = line.chars().take(120).collect();
                evidence.push(format!("body: {line}"));
            }
            // We sent the upgrade: a 2xx without it, a 400, or a 426 (the
            // server wants an upgrade it did not get) mean something on the
            // path dropped it, where a fallback session still passes.
            let dropped = status.is_success()
                || *status == http::StatusCode::BAD_REQUEST
                || *status == http::StatusCode::UPGRADE_REQUIRED;
            let next_step = if dropped {
                format!(
                    "a proxy on the path may drop the Upgrade header; if the server is a \
                     switchyard gateway, try `switchyard connect --transport sse {url}` (a \
                     fallback session through the same path), or {}",
                    doctor(url)
                )
            } else {
                doctor(url)
            };
            Diagnosis {
                summary: format!(
                    "server answered {} {reason} instead of 101 — {hint}",
                    status.as_u16()
                ),
                evidence,
                next_step: Some(next_step),
            }
        }
        Error::H2(switchyard::H2Error::Refused {
            status,
            response,
            hint,
            ..
        }) => {
            let mut evidence = Vec::new();
            if let Some(v) = header(response, SERVER) {
                evidence.push(format!("Server: {v}"));
            }
            if let Some(v) = header(response, VIA) {
                evidence.push(format!("Via: {v} (a proxy is on the path)"));
            }
            Diagnosis {
                summary: format!(
                    "server answered {} {} to the HTTP/2 extended CONNECT instead of 200 — {hint}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                ),
                evidence,
                next_step: Some(doctor(url)),
            }
        }
        Error::H2(e) => Diagnosis {
            summary: e.to_string(),
            evidence: vec![],
            next_step: Some(format!(
                "try --http1 to see whether the endpoint works over HTTP/1.1; {}",
                doctor(url)
            )),
        },
        Error::H3(e) => Diagnosis {
            summary: e.to_string(),
            evidence: vec![],
            next_step: Some(format!(
                "try without --http3 to see whether the endpoint works over TCP; {}",
                doctor(url)
            )),
        },
        Error::Handshake(HandshakeError::BadAccept { expected, got }) => Diagnosis {
            summary: "server answered 101 but its Sec-WebSocket-Accept is wrong — something on \
                      the path rewrote the handshake, or the server computes it wrongly"
                .to_owned(),
            evidence: vec![format!("expected {expected:?}, got {got:?}")],
            next_step: Some(doctor(url)),
        },
        Error::Handshake(HandshakeError::NoAccept) => Diagnosis {
            summary: "server answered 101 without Sec-WebSocket-Accept — it is not a WebSocket \
                      server, or a proxy answered for it"
                .to_owned(),
            evidence: vec![],
            next_step: Some(doctor(url)),
        },
        Error::Handshake(e) => Diagnosis {
            summary: format!("the WebSocket handshake failed: {e}"),
            evidence: vec![],
            next_step: Some(doctor(url)),
        },
        Error::HeadEof { got } => Diagnosis {
            summary: format!(
                "the server closed the connection after {got} bytes, before answering the upgrade request"
            ),
            evidence: vec![],
            next_step: Some(format!(
                "the port may not speak HTTP (a TLS port needs wss://), or a proxy cut the connection; {}",
                doctor(url)
            )),
        },
        Error::Head(e) => Diagnosis {
            summary: format!("the server's answer is not a valid HTTP/1.1 response head: {e}"),
            evidence: vec![],
            next_step: Some(format!(
                "is this port HTTP? a TLS port needs wss://; {}",
                doctor(url)
            )),
        },
        Error::Tls { host, source } => {
            let fix = match source {
                rustls::Error::InvalidCertificate(c) => match c {
                    rustls::CertificateError::UnknownIssuer => format!(
                        "the certificate of {host} is signed by a CA we do not trust: add it with --ca FILE (--insecure only for tests)"
                    ),
                    rustls::CertificateError::Expired => {
                        format!("the certificate of {host} has expired: renew it on the server")
                    }
                    rustls::CertificateError::NotValidForName => format!(
                        "the certificate is not valid for {host}: use the name it was issued for, or fix the certificate"
                    ),
                    _ => format!("the certificate of {host} was rejected; {}", doctor(url)),
                },
                _ => doctor(url),
            };
            Diagnosis {
                summary: format!("TLS with {host} failed: {source}"),
                evidence: vec![],
                next_step: Some(fix),
            }
        }
        Error::Io(e) => Diagnosis {
            summary: format!("I/O error during the handshake: {e}"),
            evidence: vec![],
            next_step: Some(doctor(url)),
        },
        Error::Timeout(what) => Diagnosis {
            summary: format!("timed out waiting for the {what}"),
            evidence: vec![],
            next_step: Some(format!(
                "the server accepted TCP but did not answer; {}",
                doctor(url)
            )),
        },
        other => Diagnosis {
            summary: other.to_string(),
            evidence: vec![],
            next_step: None,
        },
    }
}

/// The standard name of a close code, for people.
pub fn close_code_name(code: u16) -> &'static str {
    match code {
        1000 => "normal closure",
        1001 => "going away",
        1002 => "protocol error",
        1003 => "unsupported data",
        1005 => "no status code",
        1006 => "abnormal closure: no close frame",
        1007 => "invalid payload data",
        1008 => "policy violation",
        1009 => "message too big",
        1010 => "mandatory extension missing",
        1011 => "internal server error",
        1012 => "service restart",
        1013 => "try again later",
        1014 => "bad gateway",
        1015 => "TLS handshake failure",
        3000..=3999 => "registered application code",
        4000..=4999 => "private application code",
        _ => "unknown code",
    }
}

/// Explain an error that ended an established connection.
pub fn diagnose_drop(err: &Error) -> String {
    match err {
        Error::Protocol(p) if p.code == CloseCode::ABNORMAL => {
            "the connection was dropped without a close frame (1006): the server or something \
             on the path (proxy idle timeout, load balancer, NAT) cut it"
                .to_owned()
        }
        Error::Protocol(p) => format!(
            "protocol violation by the server, closed with {} ({}): {}",
            p.code.0,
            close_code_name(p.code.0),
            p.reason
        ),
        Error::Timeout(Deadline::Pong) => {
            "no pong within the pong timeout: the server or the path is \
                                   gone (closed with 1011)"
                .to_owned()
        }
        Error::Timeout(Deadline::ClosingHandshake) => {
            "the server did not answer our close frame in time".to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn refused(status: u16, headers: &[(&str, &str)], body: &str) -> Error {
        let mut resp = http::Response::new(());
        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            resp.headers_mut().append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Error::UpgradeRefused {
            status: resp.status(),
            response: Box::new(resp),
            body_preview: body.to_owned(),
            hint: "it ignored the Upgrade header; a proxy in front of it may be dropping Upgrade/Connection",
        }
    }

    #[test]
    fn a_200_reads_like_a_diagnosis() {
        let d = diagnose_ws(
            &refused(
                200,
                &[("via", "1.1 squid"), ("server", "nginx")],
                "\n<html>hi",
            ),
            "ws://h/x",
        );
        let text = d.to_string();
        assert!(
            text.starts_with(
                "server answered 200 OK instead of 101 — it ignored the Upgrade header"
            ),
            "{text}"
        );
        assert!(
            text.contains("Via: 1.1 squid (a proxy is on the path)"),
            "{text}"
        );
        assert!(text.contains("Server: nginx"), "{text}");
        assert!(text.contains("no Upgrade header"), "{text}");
        assert!(text.contains("body: <html>hi"), "{text}");
        assert!(text.contains("run `switchyard doctor ws://h/x`"), "{text}");
    }

    #[test]
    fn h2_refusal_names_the_extended_connect() {
        let mut resp = http::Response::new(());
        *resp.status_mut() = StatusCode::FORBIDDEN;
        resp.headers_mut().insert(VIA, "2 edge".parse().unwrap());
        let e = Error::H2(switchyard::H2Error::Refused {
            uri: "https://h/x".into(),
            status: StatusCode::FORBIDDEN,
            hint: "it refused this client (Origin or access policy)",
            response: Box::new(resp),
        });
        let d = diagnose_ws(&e, "wss://h/x");
        assert_eq!(
            d.summary,
            "server answered 403 Forbidden to the HTTP/2 extended CONNECT instead of 200 — \
             it refused this client (Origin or access policy)"
        );
        assert_eq!(
            d.evidence,
            vec!["Via: 2 edge (a proxy is on the path)".to_owned()]
        );
    }

    #[test]
    fn redirect_shows_location() {
        let d = diagnose_ws(&refused(301, &[("location", "wss://h/x")], ""), "ws://h/x");
        assert!(
            d.evidence.contains(&"Location: wss://h/x".to_owned()),
            "{d}"
        );
        assert!(d.summary.contains("301 Moved Permanently"), "{d}");
    }

    #[test]
    fn refused_tcp_says_nothing_listens() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        let d = diagnose_dial(
            &DialError::Tcp {
                addr: "127.0.0.1:1".into(),
                source: e,
            },
            "ws://127.0.0.1:1/",
        );
        assert!(d.summary.contains("nothing is listening"), "{d}");
    }

    #[test]
    fn unknown_issuer_suggests_ca() {
        let d = diagnose_ws(
            &Error::Tls {
                host: "h".into(),
                source: rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            },
            "wss://h/",
        );
        assert!(d.next_step.unwrap().contains("--ca FILE"));
    }

    #[test]
    fn dropped_connection_names_1006() {
        let e = Error::Protocol(switchyard::proto::ProtocolError {
            code: CloseCode::ABNORMAL,
            reason: "eof",
        });
        assert!(diagnose_drop(&e).contains("1006"));
        assert_eq!(close_code_name(1011), "internal server error");
        assert_eq!(close_code_name(4000), "private application code");
    }
}

//! HTTP/3 request and response heads from decoded field lines, with the
//! RFC 9114 §4.2-4.3 rules (a violation makes the message malformed:
//! H3_MESSAGE_ERROR).

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use switchyard_proto::extended_connect::ExtendedConnect;

use super::qpack::Field;

/// A request's pseudo-header fields and header fields.
#[derive(Debug, Clone)]
pub(crate) struct RequestHead {
    pub method: Method,
    pub scheme: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub protocol: Option<String>,
    pub headers: HeaderMap,
}

impl RequestHead {
    /// The head as the extended CONNECT checks see it.
    pub(crate) fn extended_connect(&self) -> ExtendedConnect<'_> {
        ExtendedConnect {
            version: Version::HTTP_3,
            method: &self.method,
            protocol: self.protocol.as_deref(),
            scheme: self.scheme.as_deref(),
            authority: self.authority.as_deref(),
            path: self.path.as_deref(),
            headers: &self.headers,
        }
    }
}

/// Header fields that are connection-specific in HTTP/1.1 and make an
/// HTTP/3 message malformed (RFC 9114 §4.2).
pub(crate) const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

fn utf8(v: Vec<u8>, what: &str) -> Result<String, String> {
    String::from_utf8(v).map_err(|_| format!("{what} is not UTF-8"))
}

/// Regular header fields: lowercase names, no connection-specific fields,
/// `te` only as "trailers".
fn push_header(headers: &mut HeaderMap, name: &[u8], value: Vec<u8>) -> Result<(), String> {
    if name.iter().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "header name {:?} has uppercase letters (HTTP/3 requires lowercase)",
            String::from_utf8_lossy(name)
        ));
    }
    let n = HeaderName::from_bytes(name)
        .map_err(|_| format!("invalid header name {:?}", String::from_utf8_lossy(name)))?;
    if CONNECTION_SPECIFIC.contains(&n.as_str()) {
        return Err(format!(
            "connection-specific header {:?} is not allowed in HTTP/3",
            n.as_str()
        ));
    }
    if n == http::header::TE && value != b"trailers" {
        return Err("TE other than \"trailers\" is not allowed in HTTP/3".into());
    }
    let v = HeaderValue::from_bytes(&value).map_err(|_| format!("invalid value for {n}"))?;
    headers.append(n, v);
    Ok(())
}

pub(crate) fn parse_request(fields: Vec<Field>) -> Result<RequestHead, String> {
    let mut method = None;
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut protocol = None;
    let mut headers = HeaderMap::new();
    let mut regular_seen = false;
    for (name, value) in fields {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if regular_seen {
                return Err("pseudo-header field after a regular field".into());
            }
            let slot = match pseudo {
                b"method" => &mut method,
                b"scheme" => &mut scheme,
                b"authority" => &mut authority,
                b"path" => &mut path,
                b"protocol" => &mut protocol,
                _ => {
                    return Err(format!(
                        "unknown or response pseudo-header {:?} in a request",
                        String::from_utf8_lossy(&name)
                    ))
                }
            };
            if slot.is_some() {
                return Err(format!(
                    "duplicate pseudo-header {:?}",
                    String::from_utf8_lossy(&name)
                ));
            }
            *slot = Some(utf8(value, "pseudo-header value")?);
        } else {
            regular_seen = true;
            push_header(&mut headers, &name, value)?;
        }
    }
    let method = method.ok_or("missing :method")?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| "invalid :method")?;
    for (what, v) in [
        ("authority", &authority),
        ("path", &path),
        ("scheme", &scheme),
    ] {
        if v.as_deref() == Some("") {
            return Err(format!(":{what} is empty"));
        }
    }
    Ok(RequestHead {
        method,
        scheme,
        authority,
        path,
        protocol,
        headers,
    })
}

pub(crate) fn parse_response(fields: Vec<Field>) -> Result<(StatusCode, HeaderMap), String> {
    let mut status = None;
    let mut headers = HeaderMap::new();
    let mut regular_seen = false;
    for (name, value) in fields {
        if name.first() == Some(&b':') {
            if regular_seen {
                return Err("pseudo-header field after a regular field".into());
            }
            if name != b":status" {
                return Err(format!(
                    "pseudo-header {:?} in a response",
                    String::from_utf8_lossy(&name)
                ));
            }
            if status.is_some() {
                return Err("duplicate :status".into());
            }
            status =
                Some(StatusCode::from_bytes(&value).map_err(|_| "invalid :status".to_string())?);
        } else {
            regular_seen = true;
            push_header(&mut headers, &name, value)?;
        }
    }
    Ok((status.ok_or("missing :status")?, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Vec<Field> {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn extended_connect_parses() {
        let h = parse_request(f(&[
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":authority", "example.com"),
            (":path", "/chat"),
            ("sec-websocket-version", "13"),
        ]))
        .unwrap();
        assert_eq!(h.method, Method::CONNECT);
        assert_eq!(h.protocol.as_deref(), Some("websocket"));
        assert_eq!(h.path.as_deref(), Some("/chat"));
        assert_eq!(h.headers["sec-websocket-version"], "13");
    }

    #[test]
    fn malformed_requests() {
        let base = [(":method", "GET"), (":scheme", "https"), (":path", "/")];
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![(":scheme", "https")],                           // no :method
            vec![(":method", "GET"), (":method", "GET")],         // duplicate
            vec![(":method", "GET"), (":status", "200")],         // response pseudo
            vec![(":method", "GET"), ("a", "b"), (":path", "/")], // order
            vec![(":method", "GET"), ("Upper", "x")],             // uppercase
            vec![(":method", "GET"), ("connection", "upgrade")],  // connection-specific
            vec![(":method", "GET"), ("upgrade", "websocket")],   // connection-specific
            vec![(":method", "GET"), ("te", "gzip")],             // te
            vec![(":method", "GET"), (":path", "")],              // empty path
        ];
        for c in cases {
            assert!(parse_request(f(&c)).is_err(), "{c:?}");
        }
        assert!(parse_request(f(&base)).is_ok());
        let mut te = base.to_vec();
        te.push(("te", "trailers"));
        assert!(parse_request(f(&te)).is_ok());
    }

    #[test]
    fn responses() {
        let (s, h) =
            parse_response(f(&[(":status", "200"), ("sec-websocket-protocol", "chat")])).unwrap();
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h["sec-websocket-protocol"], "chat");
        assert!(parse_response(f(&[("x", "y")])).is_err());
        assert!(parse_response(f(&[(":status", "200"), (":status", "200")])).is_err());
        assert!(parse_response(f(&[(":status", "abc")])).is_err());
        assert!(parse_response(f(&[(":path", "/")])).is_err());
    }
}

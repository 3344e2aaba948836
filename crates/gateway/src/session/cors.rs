//! CORS for session requests from a page of another origin.
//!
//! The route's `allowed_origins` decides: a page on a listed origin may read
//! the answers, with credentials (cookies travel like on a WebSocket
//! upgrade), and the preflight of its POSTs (a JSON or binary body is not a
//! "simple" request) is answered here. A route without `allowed_origins`
//! sends no CORS headers: only same-origin pages read its answers (the
//! dispatcher already refused an Origin the list does not have, 403).

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ORIGIN,
    VARY,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use super::SessionBody;

/// The Origin a request may be answered for across origins, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cors(Option<HeaderValue>);

impl Cors {
    /// `headers`' single `Origin` when `allowed` (the route's
    /// `allowed_origins`) lists it.
    pub(super) fn of(headers: &HeaderMap, allowed: Option<&[String]>) -> Cors {
        let mut origins = headers.get_all(ORIGIN).iter();
        let listed = match (allowed, origins.next(), origins.next()) {
            (Some(list), Some(o), None) => o
                .to_str()
                .is_ok_and(|s| list.iter().any(|a| a.eq_ignore_ascii_case(s.trim())))
                .then(|| o.clone()),
            _ => None,
        };
        Cors(listed)
    }

    /// The CORS headers of an answer.
    pub(super) fn apply(&self, headers: &mut HeaderMap) {
        if let Some(origin) = &self.0 {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            // A client told to retry reads when.
            headers.insert(
                ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("retry-after"),
            );
            headers.append(VARY, HeaderValue::from_static("origin"));
        }
    }

    /// The answer to a preflight (`OPTIONS`): 204, with the methods and
    /// headers the protocol uses when the origin is listed, without any
    /// CORS header (the browser then refuses the request) when it is not.
    pub(super) fn preflight(&self) -> Response<SessionBody> {
        let mut resp = Response::new(SessionBody::default());
        *resp.status_mut() = StatusCode::NO_CONTENT;
        let h = resp.headers_mut();
        self.apply(h);
        if self.0.is_some() {
            h.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            );
            h.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, last-event-id"),
            );
            h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origins: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for o in origins {
            h.append(ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn only_a_single_listed_origin_gets_cors_headers() {
        let list = vec!["https://app.example".to_string()];
        let listed = Cors::of(&headers(&["https://APP.example"]), Some(&list));
        let mut h = HeaderMap::new();
        listed.apply(&mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://APP.example");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[VARY], "origin");
        let pre = listed.preflight();
        assert_eq!(pre.status(), StatusCode::NO_CONTENT);
        assert_eq!(pre.headers()[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        for none in [
            Cors::of(&headers(&["https://other.example"]), Some(&list)),
            Cors::of(&headers(&["https://app.example"]), None),
            Cors::of(&headers(&[]), Some(&list)),
            Cors::of(
                &headers(&["https://app.example", "https://app.example"]),
                Some(&list),
            ),
        ] {
            let mut h = HeaderMap::new();
            none.apply(&mut h);
            assert!(h.is_empty(), "{none:?}");
            assert!(none.preflight().headers().is_empty());
        }
    }
}

//! The answers the multiplexed fronts (HTTP/2, HTTP/3) give without a
//! switch: a text body, a refusal, the index page and the browser client
//! of fallback sessions, as whole responses.

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use crate::apps::index::{self, PageAnswer};
use crate::outcome::Refusal;
use crate::session;

pub(super) type Body = Full<Bytes>;

/// A `text/plain` answer.
pub(super) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `resp` as the answer to a request with `method`: to HEAD without its
/// body (RFC 9110 §9.3.2) but with the GET's headers, its length included.
/// hyper's HTTP/1.1 server leaves the body out by itself; over HTTP/2 and
/// HTTP/3 it would go out as DATA.
pub(super) fn for_method<B>(method: &Method, resp: Response<B>) -> Response<B>
where
    B: hyper::body::Body + Default,
{
    if method != Method::HEAD {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    if let Some(n) = body.size_hint().exact() {
        parts
            .headers
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(n));
    }
    Response::from_parts(parts, B::default())
}

/// A refusal as a response with its detail as the body.
pub(super) fn refusal(r: &Refusal) -> Response<Body> {
    let (head, ()) = r.to_response().into_parts();
    let mut resp = text(r.status, format!("{}\n", r.detail));
    for (name, value) in &head.headers {
        resp.headers_mut().insert(name, value.clone());
    }
    resp
}

/// The fallback sessions' browser client.
pub(super) fn client_script(method: &Method) -> Response<Body> {
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(session::CLIENT_JS.as_bytes())
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(session::CLIENT_JS_TYPE),
    );
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(session::CLIENT_JS.len()));
    r
}

/// The index page (or its 405).
pub(super) fn page(method: &Method) -> Response<Body> {
    match PageAnswer::for_method(method) {
        PageAnswer::Page => {
            let body = if method == Method::HEAD {
                Bytes::new()
            } else {
                Bytes::from_static(index::INDEX_HTML.as_bytes())
            };
            let mut r = Response::new(Full::new(body));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(index::CONTENT_TYPE));
            r.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(index::INDEX_HTML.len()));
            r
        }
        PageAnswer::MethodNotAllowed => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            r
        }
    }
}

//! The index page: says what is served and talks to the echo from the
//! browser. GET and HEAD; any other method gets 405.

use http::Method;

/// The page.
pub(crate) const INDEX_HTML: &str = include_str!("index.html");

/// Its content type.
pub(crate) const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// What the index app answers to a request with `method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PageAnswer {
    /// 200 with the page (the body left out for HEAD by the front).
    Page,
    /// 405 with `Allow: GET, HEAD`.
    MethodNotAllowed,
}

impl PageAnswer {
    /// The answer for `method`.
    pub(crate) fn for_method(method: &Method) -> Self {
        if method == Method::GET || method == Method::HEAD {
            PageAnswer::Page
        } else {
            PageAnswer::MethodNotAllowed
        }
    }
}

//! axum integration (feature `axum`): the [`WebSocketUpgrade`] extractor.
//!
//! It accepts a WebSocket over HTTP/1.1 (`GET` + `Upgrade: websocket`,
//! answered 101) and over HTTP/2 (RFC 8441 extended CONNECT, answered 200;
//! `axum::serve` enables it when axum's `http2` feature is on). Route it with
//! `any(handler)`: an HTTP/2 WebSocket is a `CONNECT`, not a `GET`.
//!
//! ```no_run
//! use axum::{routing::any, Router};
//! use futures_util::{StreamExt, TryStreamExt};
//! use switchyard::axum::WebSocketUpgrade;
//!
//! async fn echo(ws: WebSocketUpgrade) -> axum::response::Response {
//!     ws.on_upgrade(|ws| async move {
//!         let (rx, tx) = ws.split();
//!         let _ = rx.try_filter(|m| std::future::ready(m.is_data())).forward(tx).await;
//!     })
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route("/ws", any(echo));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! The handshake is [`crate::server::upgrade`]'s, with the request's
//! [`AcceptConfig`] (subprotocols, permessage-deflate, Origin policy,
//! [`Limits`](crate::Limits)): a refused request gets the status of its rule
//! (400, 403, 426 over HTTP/1.1, 501 for another `:protocol` over HTTP/2)
//! and the reason as a plain-text body, and the handler is not called.

use std::convert::Infallible;
use std::future::Future;

use ::axum_core::body::Body;
use ::axum_core::extract::FromRequestParts;
use ::axum_core::response::Response;
use http::request::Parts;
use http::Request;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;

use crate::server::{rejection_response, upgrade, AcceptConfig};
use crate::websocket::WebSocket;

/// The WebSocket of an axum handler.
pub type AxumWebSocket = WebSocket<TokioIo<Upgraded>>;

/// Extractor of a WebSocket opening request (HTTP/1.1 upgrade or HTTP/2
/// extended CONNECT). Extraction never fails: the request is judged when
/// [`WebSocketUpgrade::on_upgrade`] builds the response, with the
/// [`AcceptConfig`] given by [`WebSocketUpgrade::config`].
#[derive(Debug)]
#[must_use = "a WebSocketUpgrade does nothing until `on_upgrade` answers the request"]
pub struct WebSocketUpgrade {
    /// The request head, with hyper's `OnUpgrade` and `:protocol` in its
    /// extensions, as `server::upgrade` reads them.
    request: Request<()>,
    config: AcceptConfig,
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let mut request = Request::new(());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        *request.version_mut() = parts.version;
        *request.headers_mut() = parts.headers.clone();
        if let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() {
            request.extensions_mut().insert(on_upgrade);
        }
        if let Some(protocol) = parts.extensions.get::<hyper::ext::Protocol>() {
            request.extensions_mut().insert(protocol.clone());
        }
        Ok(WebSocketUpgrade {
            request,
            config: AcceptConfig::default(),
        })
    }
}

impl WebSocketUpgrade {
    /// Accept with this configuration (default: [`AcceptConfig::default`],
    /// which accepts any Origin, no subprotocol, no compression).
    pub fn config(mut self, config: AcceptConfig) -> Self {
        self.config = config;
        self
    }

    /// Answer the request: the 101 (HTTP/1.1) or 200 (HTTP/2) response, and
    /// `callback` runs in a task of its own with the WebSocket once hyper has
    /// handed over the connection. A refused request gets its refusal
    /// (logged at debug level with the reason) and `callback` is dropped.
    pub fn on_upgrade<F, Fut>(mut self, callback: F) -> Response
    where
        F: FnOnce(AxumWebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match upgrade(&mut self.request, &self.config) {
            Ok((response, websocket)) => {
                tokio::spawn(async move {
                    match websocket.await {
                        Ok(ws) => callback(ws).await,
                        Err(e) => tracing::debug!(error = %e, "websocket not handed over"),
                    }
                });
                response.map(Body::new)
            }
            Err(refusal) => {
                tracing::debug!(
                    status = refusal.response.status().as_u16(),
                    version = ?self.request.version(),
                    error = %refusal.error,
                    "websocket upgrade refused"
                );
                rejection_response(&refusal).map(Body::new)
            }
        }
    }
}

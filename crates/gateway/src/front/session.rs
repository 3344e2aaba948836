//! What every front does with a [`Decision::Session`](crate::dispatch::Decision):
//! the route's settings and backend for [`Sessions::serve`]. The fronts add
//! only their body glue (reading the request body, streaming the answer).

use std::sync::Mutex;

use http::{Request, Response, StatusCode};
use hyper::body::Body;
use tokio::sync::watch;

use crate::dispatch::SessionTicket;
use crate::live::Target;
use crate::outcome::{Reason, Refusal};
use crate::proxy::ClientInfo;
use crate::session::{
    Admission, BackendConnector, EchoBackend, FallbackSettings, ProxiedBackend, SessionBody,
    SessionCall, Sessions,
};

/// Serve one fallback session request. `stop` is the server's shutdown
/// signal (an echo backend closes with 1001 on it).
pub(crate) async fn serve<B>(
    sessions: &Sessions,
    req: Request<B>,
    ticket: SessionTicket,
    client: ClientInfo,
    stop: watch::Receiver<bool>,
) -> Response<SessionBody>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let SessionTicket { route, permit } = ticket;
    let settings = FallbackSettings::of(&route.config.policy);
    let echo;
    let proxied;
    let backend: &dyn BackendConnector = match &route.target {
        Target::Upstream => {
            proxied = ProxiedBackend {
                ctx: &route.ctx,
                route: &route.config,
            };
            &proxied
        }
        Target::App(app) => {
            // The dispatcher gives sessions only to apps that speak WebSocket.
            let Some(accept) = app.websocket.clone() else {
                let mut r = Response::new(SessionBody::default());
                *r.status_mut() = StatusCode::NOT_FOUND;
                return r;
            };
            let limits = accept.limits.clone();
            let s = &app.settings;
            echo = EchoBackend::new(accept, limits, stop, s.idle_timeout, s.drain_timeout);
            &echo
        }
    };
    // The dispatcher took the slot when the request opens a session; the
    // session holds it until it ends.
    let slot = Mutex::new(permit);
    let admit = |_: &http::request::Parts| -> Result<Admission, Refusal> {
        let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(p) => Ok(Box::new(p)),
            None => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::RouteFull,
                "no connection slot was taken for this request; open the session again",
            )
            .retry_after(1)),
        }
    };
    let call = SessionCall {
        route: &route.label,
        settings: &settings,
        client,
        backend,
        admit: &admit,
        allowed_origins: route.config.policy.allowed_origins.as_deref(),
    };
    sessions.serve(req, call).await
}

//! The HTTP/1.1 front's glue to the proxy: the handshake phase runs in the
//! connection's task; a switched connection's tunnel gets a task of its own
//! holding only the tunnel's state, so that nothing of the front (its loop,
//! buffers, request, this future) lives as long as the tunnel.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::context::{stopped, ConnCtx};
use crate::dispatch::ProxyTicket;
use crate::io::{Prefixed, ServerIo};
use crate::live::RouteEntry;
use crate::proxy::{self, ClientInfo};
use crate::tracking::{ConnTable, ConnectionInfo, Counting, Tracked};
use switchyard::proto::HttpVersion;

/// Proxy `req` on the ticket's route: the upstream handshake here, then
/// (on a verified 101) the tunnel in a task of its own.
pub(crate) async fn proxy(
    conn: Prefixed<ServerIo>,
    req: Request<()>,
    peer: SocketAddr,
    ticket: ProxyTicket,
    ctx: &ConnCtx,
    conns: &ConnTable,
) {
    let ProxyTicket { route, permit } = ticket;
    let tls = conn.get_ref().is_tls();
    let (leftover, io) = conn.into_parts();
    let client_info = ClientInfo { addr: peer, tls };
    let tracked = track(conns, &route, peer, HttpVersion::Http1);
    let client = Counting::new(io, tracked.counters().clone());
    let start = proxy::start_h1(client, req, leftover, client_info, route.proxy(), permit).await;
    let proxy::H1Start::Tunnel(tunnel) = start else {
        return;
    };
    let (stop, alive) = (ctx.stop.clone(), ctx.alive.clone());
    // One task type per mode, each sized for its own tunnel.
    match tunnel.mode() {
        proxy::TunnelMode::Transparent => {
            spawn_in_span(tunnel_transparent(tunnel, route, tracked, stop, alive))
        }
        proxy::TunnelMode::FrameAware => {
            spawn_in_span(tunnel_frame_aware(tunnel, route, tracked, stop, alive))
        }
    }
}

/// Register a proxied connection for `/status`.
pub(crate) fn track(
    conns: &ConnTable,
    route: &RouteEntry,
    client: SocketAddr,
    protocol: HttpVersion,
) -> Tracked {
    conns.track(ConnectionInfo {
        tag: route.tag.clone(),
        client,
        protocol,
    })
}

/// Spawn `task` in the current tracing span (if any).
fn spawn_in_span<F>(task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let span = tracing::Span::current();
    if span.is_disabled() {
        tokio::spawn(task);
    } else {
        tokio::spawn(task.instrument(span));
    }
}

type ClientIo = Counting<ServerIo>;

/// The task of one proxied HTTP/1.1 transparent tunnel: the streams and
/// slots ([`proxy::H1Tunnel`]), the route (and its generation), the
/// `/status` entry, the shutdown signal and the server's liveness token.
/// Everything is stored once: the tunnel runs by reference and the
/// shutdown future is pinned here, not moved down the call chain.
async fn tunnel_transparent(
    mut tunnel: proxy::H1Tunnel<ClientIo>,
    route: Arc<RouteEntry>,
    _tracked: Tracked,
    stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let shutdown = std::pin::pin!(stopped(stop));
    tunnel.run_transparent(route.proxy(), shutdown).await;
}

/// [`tunnel_transparent`] for a frame-aware tunnel.
async fn tunnel_frame_aware(
    mut tunnel: proxy::H1Tunnel<ClientIo>,
    route: Arc<RouteEntry>,
    _tracked: Tracked,
    stop: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let shutdown = std::pin::pin!(stopped(stop));
    tunnel.run_frame_aware(route.proxy(), shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxied_h1_tunnel_task_is_small() {
        // The task of every proxied HTTP/1.1 connection after its 101, for
        // the tunnel's whole life (idle memory per connection): before it had
        // a task of its own, the front's loop and the proxy call chain made
        // it 3280 + 4968 bytes.
        fn future_size<A, B, C, D, E, F>(_: fn(A, B, C, D, E) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let state = std::mem::size_of::<proxy::H1Tunnel<ClientIo>>();
        assert!(state <= 240, "H1Tunnel is {state} bytes");
        let task = future_size(tunnel_transparent as fn(_, _, _, _, _) -> _);
        // 8 more than before the open-connections gauge had a transport label,
        // 16 more with the cluster caps' (boxed) lease in the connection's guard,
        // 24 more for counting while relaying (the route's counters).
        assert!(task <= 1456, "the transparent tunnel task is {task} bytes");
        let task = future_size(tunnel_frame_aware as fn(_, _, _, _, _) -> _);
        assert!(task <= 1712, "the frame-aware tunnel task is {task} bytes");
    }
}

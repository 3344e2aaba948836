//! The task of one accepted connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::Request;

use super::context::{ConnCtx, Front, Upgraded};
use super::h1;
use crate::io::{Prefixed, ServerIo};
use crate::upgrade::SessionEnd;

/// The future of one connection's task: first the boxed handshake part
/// (TLS, HTTP/2, the HTTP/1.1 loop: KiBs), then, once that switched
/// protocols and was freed, the session in the same task, and so on if the
/// session hands the connection back to HTTP/1.1 (RFC 2817).
///
/// Written by hand: an `async fn` doing the same keeps argument and
/// match slots alive across its awaits where this is
/// the session's box and context (idle memory per WebSocket); and one task
/// per connection instead of a second one spawned at the switch (handshake
/// rate).
pub(crate) struct ConnectionTask {
    front: Arc<Front>,
    state: TaskState,
}

/// The boxed handshake part of a connection (TLS, HTTP/2, the HTTP/1.1 loop).
pub(crate) type HttpPart = Pin<Box<dyn Future<Output = Option<Upgraded>> + Send>>;

enum TaskState {
    Http(HttpPart),
    Session(Upgraded),
    Done,
}

impl ConnectionTask {
    /// The task of a connection whose handshake part is `http`.
    pub(crate) fn new(http: HttpPart, front: Arc<Front>) -> Self {
        ConnectionTask {
            front,
            state: TaskState::Http(http),
        }
    }
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                TaskState::Http(http) => match http.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(upgraded)) => this.state = TaskState::Session(upgraded),
                    Poll::Ready(None) => this.state = TaskState::Done,
                },
                TaskState::Session(upgraded) => {
                    let Poll::Ready(end) = upgraded.session.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    let TaskState::Session(Upgraded { ctx, .. }) =
                        std::mem::replace(&mut this.state, TaskState::Done)
                    else {
                        return Poll::Ready(());
                    };
                    if let SessionEnd::ContinueHttp { io, pending } = end {
                        this.state =
                            TaskState::Http(serve_boxed(io, pending, this.front.clone(), ctx));
                    }
                }
                TaskState::Done => return Poll::Ready(()),
            }
        }
    }
}

/// The HTTP/1.1 loop after an RFC 2817 switch, boxed with an explicit
/// `Send` type, for [`ConnectionTask`].
fn serve_boxed(
    io: ServerIo,
    pending: Option<Request<()>>,
    front: Arc<Front>,
    ctx: ConnCtx,
) -> HttpPart {
    Box::pin(async move {
        // Only after an RFC 2817 switch: the address is asked of the socket.
        let peer = io.peer_addr();
        let conn = Prefixed::new(BytesMut::new(), io);
        h1::serve_from(conn, pending, peer, &front, ctx).await
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn connection_task_is_small() {
        // Every connection's task, alive as long as its WebSocket (idle
        // memory per connection): the handshake part is boxed and freed at
        // the switch, so the task holds the session's box and context.
        let task = std::mem::size_of::<super::ConnectionTask>();
        assert!(task <= 104, "the connection task is {task} bytes");
    }
}

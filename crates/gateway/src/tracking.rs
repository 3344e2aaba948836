//! The live connections, for `/status`: every switched connection (a
//! proxied tunnel or a built-in app) is registered while it lives, with
//! byte counters its stream updates ([`Counting`]). A built-in app's
//! connection is a [`LiveApp`]: its entry here, its open-connections gauge,
//! its route's traffic counters and its slot in the route's caps, released
//! together.

use crate::sync::lock;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::admission::ConnectionGuard;
use crate::io::{AsPlainTcp, PlainTcp};
use crate::metrics::{Close, Direction, Metrics, OpenGuard, RouteMetrics, Transport};
use switchyard::proto::HttpVersion;

/// What `/status` says of every connection of one route, made once per
/// route (not per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTag {
    /// The route label.
    pub route: String,
    /// What serves it: `upstream NAME` or `app NAME`.
    pub target: String,
}

/// What one live connection is, at registration.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// Its route and what serves it.
    pub tag: Arc<RouteTag>,
    /// The client's address.
    pub client: SocketAddr,
    /// The HTTP version the client connected with.
    pub protocol: HttpVersion,
}

/// A snapshot of one live connection.
#[derive(Debug, Clone)]
pub struct LiveConnection {
    /// What it is.
    pub info: ConnectionInfo,
    /// How long it has been open.
    pub age: Duration,
    /// Bytes from the client so far.
    pub bytes_in: u64,
    /// Bytes to the client so far.
    pub bytes_out: u64,
}

#[derive(Debug)]
struct Entry {
    info: ConnectionInfo,
    since: Instant,
    counters: Arc<Counters>,
}

/// Bytes through a client stream, both ways.
#[derive(Debug, Default)]
pub struct Counters {
    read: AtomicU64,
    written: AtomicU64,
}

impl Counters {
    /// Bytes from the client so far.
    pub fn bytes_in(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes to the client so far.
    pub fn bytes_out(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

type Entries = Arc<Mutex<HashMap<u64, Entry>>>;

/// The table of live connections (one per gateway).
#[derive(Debug, Default)]
pub struct ConnTable {
    next: AtomicU64,
    entries: Entries,
}

/// Keeps a connection in the table; dropping it removes the entry.
#[derive(Debug)]
pub struct Tracked {
    entries: Entries,
    id: u64,
    counters: Arc<Counters>,
}

impl Tracked {
    /// The connection's byte counters, for [`Counting`].
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        lock(&self.entries).remove(&self.id);
    }
}

impl ConnTable {
    /// Register a connection until the returned guard is dropped.
    pub fn track(&self, info: ConnectionInfo) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::new(Counters::default());
        lock(&self.entries).insert(
            id,
            Entry {
                info,
                since: Instant::now(),
                counters: counters.clone(),
            },
        );
        Tracked {
            entries: self.entries.clone(),
            id,
            counters,
        }
    }

    /// Every live connection, sorted by route, then client.
    pub fn snapshot(&self) -> Vec<LiveConnection> {
        let mut v: Vec<LiveConnection> = lock(&self.entries)
            .values()
            .map(|e| LiveConnection {
                info: e.info.clone(),
                age: e.since.elapsed(),
                bytes_in: e.counters.bytes_in(),
                bytes_out: e.counters.bytes_out(),
            })
            .collect();
        v.sort_by(|a, b| {
            a.info
                .tag
                .route
                .cmp(&b.info.tag.route)
                .then(a.info.client.cmp(&b.info.client))
        });
        v
    }

    /// How many connections are live.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A built-in app's switched connection while it lives: its `/status`
/// entry, its `switchyard_open_connections` gauge, the counters its app
/// relays into (the same as the route's tunnels) and its slot in the
/// route's caps. [`LiveApp::closed`] counts how it ended.
#[derive(Debug)]
pub struct LiveApp {
    _tracked: Tracked,
    open: OpenGuard,
    counters: AppCounters,
    _permit: Option<ConnectionGuard>,
}

/// What a built-in app counts what it relays into: its route's counters
/// and its own connection's bytes (for `/status`). An app has no byte
/// stream under its messages to count, so its connection's bytes are
/// those of the messages' payloads.
#[derive(Debug, Clone)]
pub struct AppCounters {
    route: Arc<RouteMetrics>,
    conn: Arc<Counters>,
}

impl AppCounters {
    /// Counting into `route` and `conn`.
    pub fn new(route: Arc<RouteMetrics>, conn: Arc<Counters>) -> Self {
        AppCounters { route, conn }
    }

    /// `messages` of `bytes` in all went through in `dir`.
    pub fn relayed(&self, dir: Direction, messages: u64, bytes: u64) {
        self.route.relayed(dir, messages, bytes);
        let side = match dir {
            Direction::ClientToUpstream => &self.conn.read,
            Direction::UpstreamToClient => &self.conn.written,
        };
        side.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The route's counters (its ping round trips).
    pub fn route(&self) -> &RouteMetrics {
        &self.route
    }
}

impl LiveApp {
    /// Register the connection `info` carrying `transport`, holding
    /// `permit` until it ends.
    pub fn new(
        conns: &ConnTable,
        metrics: &Arc<Metrics>,
        info: ConnectionInfo,
        transport: Transport,
        permit: Option<ConnectionGuard>,
    ) -> Self {
        let open = metrics.open_connection(&info.tag.route, info.protocol, transport);
        let route = metrics.route(&info.tag.route);
        let tracked = conns.track(info);
        LiveApp {
            counters: AppCounters::new(route, tracked.counters().clone()),
            _tracked: tracked,
            open,
            _permit: permit,
        }
    }

    /// What the app counts what it relays into.
    pub fn counters(&self) -> &AppCounters {
        &self.counters
    }

    /// The connection ended this way (counted in `switchyard_closes_total`).
    pub fn closed(self, close: Close) {
        self.open.closed(close);
    }
}

/// Counts bytes through a client stream (one relaxed atomic add per I/O
/// call, no allocation).
#[derive(Debug)]
pub(crate) struct Counting<C> {
    inner: C,
    counters: Arc<Counters>,
}

impl<C> Counting<C> {
    /// `inner`, counted into `counters`.
    pub(crate) fn new(inner: C, counters: Arc<Counters>) -> Self {
        Counting { inner, counters }
    }
}

impl<C: AsyncRead + Unpin> AsyncRead for Counting<C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

/// The socket under the counter, with the counters (a transparent tunnel
/// that bypasses the stream updates them).
impl<C: AsPlainTcp> AsPlainTcp for Counting<C> {
    fn as_plain_tcp(&mut self) -> Option<PlainTcp<'_>> {
        let counters = &*self.counters;
        let mut plain = self.inner.as_plain_tcp()?;
        plain.read = Some(&counters.read);
        plain.written = Some(&counters.written);
        Some(plain)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Counting<C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters
                .written
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    /// Passed through, so that a WebSocket above still writes a frame's
    /// header and payload in one system call.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.counters
                .written
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn info(route: &str) -> ConnectionInfo {
        ConnectionInfo {
            tag: Arc::new(RouteTag {
                route: route.into(),
                target: "app echo".into(),
            }),
            client: "127.0.0.1:1".parse().unwrap(),
            protocol: HttpVersion::Http1,
        }
    }

    #[tokio::test]
    async fn entries_live_as_long_as_their_guard_and_count_bytes() {
        let table = ConnTable::default();
        let a = table.track(info("/b"));
        let b = table.track(info("/a"));
        assert_eq!(table.len(), 2);
        let (x, mut y) = tokio::io::duplex(64);
        let mut counted = Counting::new(x, a.counters().clone());
        counted.write_all(b"hello").await.unwrap();
        y.write_all(b"hi!").await.unwrap();
        let mut buf = [0u8; 3];
        counted.read_exact(&mut buf).await.unwrap();
        let snap = table.snapshot();
        assert_eq!(snap[0].info.tag.route, "/a", "sorted by route");
        assert_eq!((snap[1].bytes_in, snap[1].bytes_out), (3, 5));
        drop(b);
        assert_eq!(table.len(), 1);
        drop(a);
        assert!(table.is_empty());
    }

    #[tokio::test]
    async fn vectored_writes_pass_through_and_count() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let mut peer = accepted.unwrap().0;
        let counters = Arc::new(Counters::default());
        let mut counted = Counting::new(client.unwrap(), counters.clone());
        assert!(counted.is_write_vectored(), "a TCP stream writes vectored");
        let bufs = [
            std::io::IoSlice::new(b"head"),
            std::io::IoSlice::new(b"body"),
        ];
        let n = std::future::poll_fn(|cx| Pin::new(&mut counted).poll_write_vectored(cx, &bufs))
            .await
            .unwrap();
        assert_eq!(n, 8, "both slices in one write");
        assert_eq!(counters.written.load(Ordering::Relaxed), 8);
        let mut got = [0u8; 8];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"headbody");
    }
}

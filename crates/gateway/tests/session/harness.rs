//! The test gateway: a small hyper HTTP/1.1 server on 127.0.0.1:0 that does
//! what the dispatcher will do for a route that serves WebSocket — a query
//! with `sw=` goes to `Sessions::serve` with the route's connector, Origin
//! check and caps — plus a page, `client.js`, a WebSocket echo at `/ws`, and
//! a counted 426 for WebSocket attempts on the session routes (as behind a
//! proxy that drops `Upgrade`). Also: the Python backend process, a TCP
//! forwarder whose connections the test can cut, and raw HTTP helpers.

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use switchyard::fallback::sse::{SseEvent, SseParser};
use switchyard::fallback::wire::{Entry, ErrorBody, OpenResponse, PollResponse};
use switchyard::server::AcceptConfig;
use switchyard_gateway::admission::{check_origin, ConnectionLimiter};
use switchyard_gateway::config::{Config, Route, RouteTarget};
use switchyard_gateway::metrics::Metrics;
use switchyard_gateway::outcome::Refusal;
use switchyard_gateway::proxy::{ClientInfo, ProxyContext};
use switchyard_gateway::session::{
    Admission, BackendConnector, EchoBackend, FallbackSettings, ProxiedBackend, SessionBody,
    SessionCall, Sessions, CLIENT_JS,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Hang guard for one step of a test (never a timing assertion).
pub const STEP: Duration = Duration::from_secs(20);

/// `fut` within [`STEP`], or the test fails saying what hung.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(STEP, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {STEP:?}"),
    }
}

/// Poll `cond` until it holds (hang guard [`STEP`]).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// What the test gateway serves.
pub struct Setup {
    /// `[[route]]`s (and `[[upstream]]`s) in the configuration's TOML.
    pub toml: String,
    pub settings: FallbackSettings,
    pub max_sessions: usize,
    /// The page at `/`.
    pub page: &'static str,
}

impl Setup {
    /// `/echo` on the echo app, default settings.
    pub fn echo() -> Self {
        Setup::with_routes("[[route]]\npath = \"/echo\"\napp = \"echo\"\n")
    }

    pub fn with_routes(routes: &str) -> Self {
        Setup {
            toml: format!("[[listener]]\naddress = \"127.0.0.1:1\"\n{routes}"),
            settings: FallbackSettings::default(),
            max_sessions: 1000,
            page: "",
        }
    }
}

struct Shared {
    cfg: Config,
    ctx: ProxyContext,
    limiter: ConnectionLimiter,
    sessions: Sessions,
    settings: FallbackSettings,
    echo: EchoBackend,
    accept: Arc<AcceptConfig>,
    page: &'static str,
    ws_attempts: AtomicUsize,
    /// The target of every session request, in arrival order.
    requests: Mutex<Vec<String>>,
    /// Cut by `/__cut` (the browser test's control).
    cutter: std::sync::OnceLock<Arc<Cutter>>,
}

/// A running test gateway; stopped (its tasks dropped) with the runtime.
pub struct Gateway {
    pub addr: SocketAddr,
    pub sessions: Sessions,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Gateway {
    pub async fn start(setup: Setup) -> Gateway {
        let cfg = Config::from_toml_str(&setup.toml, "test.toml").unwrap();
        let limiter = ConnectionLimiter::new();
        let ctx = ProxyContext::from_config(&cfg, Arc::new(Metrics::new())).unwrap();
        let (stop, stopped) = watch::channel(false);
        let accept = Arc::new(AcceptConfig::default());
        let echo = EchoBackend::new(
            accept.clone(),
            cfg.limits.clone(),
            stopped,
            Duration::from_secs(300),
            Duration::from_secs(1),
        );
        let sessions = Sessions::in_memory(setup.max_sessions, cfg.fallback.memory);
        let shared = Arc::new(Shared {
            cfg,
            ctx,
            limiter,
            sessions: sessions.clone(),
            settings: setup.settings,
            echo,
            accept,
            page: setup.page,
            ws_attempts: AtomicUsize::new(0),
            requests: Mutex::default(),
            cutter: std::sync::OnceLock::new(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req, peer).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Gateway {
            addr,
            sessions,
            shared,
            stop,
        }
    }

    /// WebSocket upgrade attempts answered 426 on the session routes.
    pub fn ws_attempts(&self) -> usize {
        self.shared.ws_attempts.load(Ordering::SeqCst)
    }

    /// How many session requests had a target containing every one of `parts`.
    pub fn requests_with(&self, parts: &[&str]) -> usize {
        let log = self.shared.requests.lock().unwrap();
        log.iter()
            .filter(|t| parts.iter().all(|p| t.contains(p)))
            .count()
    }

    /// Let `/__cut` cut `cutter`'s connections.
    pub fn control(&self, cutter: Arc<Cutter>) {
        let _ = self.shared.cutter.set(cutter);
    }

    /// Connections the caps count now on the route at `path`.
    pub fn cap_count(&self, path: &str, ip: IpAddr) -> u32 {
        self.shared.limiter.ip_count(path, ip)
    }

    /// Drain the sessions (1001) and stop the echo app.
    pub async fn drain(&self) {
        self.stop.send_replace(true);
        self.sessions.drain(STEP).await;
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<SessionBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

impl Shared {
    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<SessionBody> {
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/" => return text(StatusCode::OK, "text/html; charset=utf-8", self.page),
            "/client.js" => return text(StatusCode::OK, "text/javascript", CLIENT_JS),
            "/__stats" => {
                let n = self.ws_attempts.load(Ordering::SeqCst);
                return text(
                    StatusCode::OK,
                    "application/json",
                    format!("{{\"ws_attempts\":{n}}}"),
                );
            }
            "/__cut" => {
                if let Some(c) = self.cutter.get() {
                    c.cut();
                }
                return text(StatusCode::OK, "text/plain", "cut\n");
            }
            "/ws" => {
                return match switchyard::server::upgrade(&mut req, &self.accept) {
                    Ok((resp, fut)) => {
                        tokio::spawn(async move {
                            if let Ok(mut ws) = fut.await {
                                while let Some(Ok(m)) = ws.next().await {
                                    if m.is_data() && ws.send(m).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        });
                        resp.map(|b| b.map_err(|n| match n {}).boxed_unsync())
                    }
                    Err(_) => text(
                        StatusCode::BAD_REQUEST,
                        "text/plain",
                        "not a websocket request\n",
                    ),
                }
            }
            _ => {}
        }
        let Some(route) = self.cfg.routes.iter().find(|r| r.path == path) else {
            return text(StatusCode::NOT_FOUND, "text/plain", "no route\n");
        };
        let target = req.uri().to_string();
        self.requests.lock().unwrap().push(target);
        if !switchyard::fallback::wire::is_session_query(req.uri().query()) {
            // Behind a proxy that drops Upgrade, the upgrade never arrives.
            self.ws_attempts.fetch_add(1, Ordering::SeqCst);
            return text(
                StatusCode::UPGRADE_REQUIRED,
                "text/plain",
                "upgrade required\n",
            );
        }
        let proxied = ProxiedBackend {
            ctx: &self.ctx,
            route,
        };
        let backend: &dyn BackendConnector = match route.target() {
            RouteTarget::Upstream(_) => &proxied,
            RouteTarget::App(_) => &self.echo,
        };
        let admit = |head: &http::request::Parts| admit(&self.limiter, route, head, peer.ip());
        let call = SessionCall {
            route: &route.path,
            settings: &self.settings,
            client: ClientInfo {
                addr: peer,
                tls: false,
            },
            backend,
            admit: &admit,
            allowed_origins: route.policy.allowed_origins.as_deref(),
        };
        self.sessions.serve(req, call).await
    }
}

/// The route's Origin policy and caps, as the dispatcher applies them.
fn admit(
    limiter: &ConnectionLimiter,
    route: &Route,
    head: &http::request::Parts,
    ip: IpAddr,
) -> Result<Admission, Refusal> {
    check_origin(&head.headers, &route.policy)?;
    let guard = limiter.try_acquire(&route.path, ip, &route.policy)?;
    Ok(Box::new(guard))
}

// ------------------------------------------------------------ raw HTTP

/// An HTTP answer, whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Our JSON error body, checked to have `status`.
    pub fn error(&self, status: u16) -> ErrorBody {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }
}

/// Send one request on a fresh connection; the response head.
pub async fn send(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Response<Incoming> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder()
        .method(method)
        .uri(target)
        .header("host", addr.to_string());
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    within(
        target,
        sender.send_request(b.body(Full::new(body.into())).unwrap()),
    )
    .await
    .unwrap()
}

/// One request and its whole answer.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    target: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let resp = send(addr, method, target, headers, body).await;
    let (head, body) = resp.into_parts();
    let body = within("the body", body.collect()).await.unwrap().to_bytes();
    Reply {
        status: head.status,
        headers: head.headers,
        body,
    }
}

/// `POST path?sw=open` with `body`; the session.
pub async fn open(addr: SocketAddr, path: &str, body: &str) -> OpenResponse {
    let r = request(
        addr,
        Method::POST,
        &format!("{path}?sw=open"),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// The query of a session request.
pub fn q(path: &str, action: &str, s: &OpenResponse, extra: &str) -> String {
    format!("{path}?sw={action}&sid={}&token={}{extra}", s.sid, s.token)
}

/// `sw=send` of one text message numbered `seq`.
pub async fn send_text(
    addr: SocketAddr,
    path: &str,
    s: &OpenResponse,
    seq: u64,
    text: &str,
) -> Reply {
    let target = q(path, "send", s, &format!("&seq={seq}"));
    let ct = [("content-type", "text/plain; charset=utf-8")];
    request(addr, Method::POST, &target, &ct, text.to_string()).await
}

/// `sw=poll` after `after`.
pub async fn poll(addr: SocketAddr, path: &str, s: &OpenResponse, after: u64) -> Reply {
    request(
        addr,
        Method::GET,
        &q(path, "poll", s, &format!("&after={after}")),
        &[],
        "",
    )
    .await
}

/// The messages of a poll answer (checked to be a 200).
pub fn messages(r: &Reply) -> Vec<Entry> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json::<PollResponse>().messages
}

/// An event stream being read.
pub struct SseReader {
    body: Incoming,
    parser: SseParser,
    events: std::collections::VecDeque<SseEvent>,
    /// Every byte so far, as text.
    pub raw: String,
}

impl SseReader {
    pub fn new(resp: Response<Incoming>) -> Self {
        SseReader {
            body: resp.into_body(),
            parser: SseParser::new(1 << 24),
            events: Default::default(),
            raw: String::new(),
        }
    }

    /// The next event; `None` when the response ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            let frame = within("an SSE event", self.body.frame()).await?;
            let Ok(data) = frame.unwrap().into_data() else {
                continue;
            };
            self.raw.push_str(&String::from_utf8_lossy(&data));
            let mut out = Vec::new();
            self.parser.feed(&data, &mut out).unwrap();
            self.events.extend(out);
        }
    }

    /// Read until the text so far satisfies `done` (events are kept).
    pub async fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        while !done(&self.raw) {
            let frame = within(what, self.body.frame()).await;
            let data = match frame {
                Some(Ok(f)) => f.into_data().unwrap_or_default(),
                _ => panic!("{what}: the stream ended first: {}", self.raw),
            };
            self.raw.push_str(&String::from_utf8_lossy(&data));
            let mut out = Vec::new();
            self.parser.feed(&data, &mut out).unwrap();
            self.events.extend(out);
        }
    }

    /// Read until the response ends; the events.
    pub async fn rest(&mut self) -> Vec<SseEvent> {
        let mut all = Vec::new();
        while let Some(e) = self.next().await {
            all.push(e);
        }
        all
    }
}

// --------------------------------------------------- Python backend

/// The Python `websockets` backend of tests/fixtures/session_backend.py,
/// killed on drop. Its stdout lines are kept.
pub struct PyBackend {
    child: Child,
    _stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
    pub addr: SocketAddr,
}

impl Drop for PyBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's venv Python, checked to import `websockets` (the test
/// fails, never skips, without it: scripts/install-test-deps.sh).
fn python() -> std::ffi::OsString {
    let python = std::env::var_os("SWITCHYARD_PYTHON").unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../.venv/bin/python")
            .into()
    });
    let ok = Command::new(&python)
        .args(["-c", "import websockets"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{python:?} cannot import websockets: run scripts/install-test-deps.sh"
    );
    python
}

impl PyBackend {
    pub fn start() -> PyBackend {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/session_backend.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut b = PyBackend {
            child,
            _stdin: stdin,
            lines,
            addr: ([127, 0, 0, 1], 0).into(),
        };
        let start = Instant::now();
        let line = loop {
            // Before the test's tasks run: a blocking wait is fine here.
            if let Some(l) = b.find_line(|l| l.starts_with("listening on ")) {
                break l;
            }
            assert!(start.elapsed() < STEP, "the backend did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        let port: u16 = line
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap();
        b.addr.set_port(port);
        b
    }

    /// The first stdout line matching `pred` so far.
    fn find_line(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.lines.lock().unwrap().iter().find(|l| pred(l)).cloned()
    }

    /// The first stdout line matching `pred` (waits; hang guard [`STEP`]).
    pub async fn wait_line(&self, pred: impl Fn(&str) -> bool) -> String {
        let mut found = None;
        eventually("a backend line", || {
            found = self.find_line(&pred);
            found.is_some()
        })
        .await;
        found.unwrap_or_default()
    }

    /// Send `signal` (`"STOP"`, `"CONT"`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{signal} {pid}");
    }

    /// How many stdout lines match `pred` so far.
    pub fn count_lines(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| pred(l))
            .count()
    }

    /// The route TOML for `path` proxied to this backend.
    pub fn route(&self, path: &str, policy: &str) -> String {
        format!(
            "[[upstream]]\nname = \"py\"\nservers = [\"ws://{}\"]\n\
             [[route]]\npath = \"{path}\"\nupstream = \"py\"\n{policy}",
            self.addr
        )
    }
}

// ------------------------------------------------------------ cutter

/// A TCP forwarder to `target` that the test can disturb: [`Cutter::cut`]
/// drops every open connection at once (the client sees it die mid-response,
/// the server a client gone); [`Cutter::blackhole`] swallows what the server
/// sends (requests arrive, answers never do).
pub struct Cutter {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    swallow: Arc<AtomicBool>,
    pub cuts: AtomicUsize,
}

/// Copy `from` to `to` until EOF; while `swallow` is set, drop the bytes.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, swallow: Option<Arc<AtomicBool>>) {
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if swallow.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl Cutter {
    pub async fn start(target: SocketAddr) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let swallow = Arc::new(AtomicBool::new(false));
        let (list, sw) = (conns.clone(), swallow.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let sw = sw.clone();
                let task = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw_) = server.into_split();
                    tokio::join!(pipe(cr, sw_, None), pipe(sr, cw, Some(sw)));
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        });
        Cutter {
            addr,
            conns,
            swallow,
            cuts: AtomicUsize::new(0),
        }
    }

    /// Drop every connection open now.
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        self.cuts.fetch_add(1, Ordering::SeqCst);
    }

    /// Swallow (`true`) or pass (`false`) what the server sends.
    pub fn blackhole(&self, on: bool) {
        self.swallow.store(on, Ordering::SeqCst);
    }
}

/// Wait until `what` accepts connections on `addr`.
pub async fn wait_listening(what: &str, addr: SocketAddr) {
    within(&format!("{what} listening"), async {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Run the Node script `script` of tests/interop (playwright-core driving
/// Chromium) with `args`; its output (the checks), or the test fails with
/// it unless it passed them all.
pub async fn interop_script(script: &str, args: &[String]) -> String {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop");
    assert!(
        interop.join("node_modules/playwright-core").is_dir(),
        "tests/interop/node_modules lacks playwright-core: run scripts/install-test-deps.sh"
    );
    let mut cmd = Command::new("node");
    cmd.arg(interop.join(script))
        .args(args)
        .current_dir(&interop);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "the checks of {script} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The checks, for the test's log.
    println!("{stdout}");
    stdout
}

// ------------------------------------------------------------- nginx

/// nginx (the Debian package) in the foreground as a reverse proxy to
/// `backend` WITHOUT the Upgrade headers (the CLI's doctor fixture: it
/// forwards a WebSocket handshake as a plain HTTP/1.0 GET); killed and its
/// directory removed on drop. Fails, never skips, without nginx
/// (scripts/install-test-deps.sh installs it).
pub struct NginxNoUpgrade {
    child: Child,
    pub addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for NginxNoUpgrade {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl NginxNoUpgrade {
    pub async fn start(backend: SocketAddr) -> NginxNoUpgrade {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../cli/tests/fixtures/doctor/nginx-no-upgrade.conf");
        let template = std::fs::read_to_string(fixture).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "switchyard-session-nginx-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = template
            .replace("@DIR@", dir.to_str().unwrap())
            .replace("@PORT@", &port.to_string())
            .replace("@BACKEND@", &backend.to_string());
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .env("PATH", "/usr/sbin:/usr/local/sbin:/usr/bin:/bin")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start nginx: run scripts/install-test-deps.sh");
        let n = NginxNoUpgrade {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            dir,
        };
        wait_listening("nginx", n.addr).await;
        n
    }
}

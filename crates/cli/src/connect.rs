//! `switchyard connect URL`: a WebSocket client for people and scripts.
//!
//! * On a terminal (stdin is a tty): line editing and history
//!   (`$XDG_DATA_HOME/switchyard/history`, else
//!   `$HOME/.local/share/switchyard/history`), and the commands `/ping [data]`,
//!   `/close [code [reason]]`, `/binary <hex | base64>`, `/quit`, `/help`.
//!   Any other line is sent as a text message (`//x` sends `/x`).
//! * Piped: each input line is a text message; each message received is one
//!   line on stdout — text as is (pretty-printed with `--json`), binary in
//!   standard base64 (with padding), or hex with `--binary-format hex`. The end
//!   of stdin closes cleanly: close 1000, wait for the server's close, exit 0.
//!   Status lines (connected, closed, reconnecting, diagnoses) go to stderr.
//!
//! Exit status:
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | closed normally: we closed (end of stdin, /quit, /close) and the server answered, or the server closed with 1000 |
//! | 1 | the connection could not be opened (DNS, TCP, proxy, TLS, HTTP answer other than 101, bad handshake) |
//! | 2 | usage error (bad flag or argument) |
//! | 3 | the server closed with a code other than 1000 (including 1005, no code) |
//! | 4 | abnormal end: dropped without a close frame (1006), I/O or protocol error, ping or close timeout |
//!
//! `--transport sse` or `poll` opens a fallback session of a switchyard
//! gateway at the same URL instead of a WebSocket (for a path that drops the
//! upgrade): the same input, output and exit statuses; the session resumes
//! by itself after network errors, so `--reconnect` and the WebSocket-only
//! flags (`--ping-interval`, `--proxy`, `--http2`, `--http3`, client
//! certificates) are refused with it.
//!
//! With `--reconnect`, a connection that could not be opened, was lost, or
//! was closed by the server (with any code) is retried after 250 ms,
//! doubling up to `--reconnect-max-delay` (reset after each successful
//! handshake); `--max-reconnects N` gives up after N attempts in a row with
//! the status of the last failure. The end of stdin still exits 0 after a
//! clean close.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use switchyard_gateway::config::parse_flag_duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use switchyard::fallback::{FallbackBuilder, FallbackError, Transport};
use switchyard::{CloseCode, CloseFrame, Limits, Message};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::diagnose::{close_code_name, diagnose_dial, diagnose_drop};
use crate::dial::{ConnOpts, Transcript};

/// Exit statuses (see the module table).
pub mod exit {
    pub const OK: i32 = 0;
    pub const CONNECT_FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const PEER_CLOSED_ABNORMALLY: i32 = 3;
    pub const DROPPED: i32 = 4;
}

/// The payload of --ping-interval pings.
const KEEPALIVE: &[u8] = b"switchyard-keepalive";

/// First delay before a reconnect; doubles each failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BinaryFormat {
    #[default]
    Base64,
    Hex,
}

/// What `connect` opens.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConnectTransport {
    /// A WebSocket (HTTP/1.1, or HTTP/2 or HTTP/3 with their flags).
    #[default]
    Ws,
    /// A switchyard gateway's fallback session, read as an event stream.
    Sse,
    /// A switchyard gateway's fallback session, read by long polling.
    Poll,
}

impl ConnectTransport {
    /// The fallback session's transport; `None` for a WebSocket.
    pub(crate) fn fallback(self) -> Option<Transport> {
        match self {
            ConnectTransport::Ws => None,
            ConnectTransport::Sse => Some(Transport::Sse),
            ConnectTransport::Poll => Some(Transport::Poll),
        }
    }
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Pipe mode (stdin not a terminal): each input line is a text message; each message \
received is a line on stdout (binary: base64, or hex with --binary-format hex); \
the end of stdin sends close 1000 and waits for the answer.
Terminal: /ping [data], /close [code [reason]], /binary <hex|base64>, /quit.

Exit status: 0 closed normally (by us, or by the server with 1000); 1 could not \
connect (DNS, TCP, proxy, TLS, no 101); 2 usage; 3 the server closed with a code \
other than 1000; 4 dropped without a close frame, I/O or protocol error, timeout.")]
pub struct ConnectArgs {
    /// ws://host[:port]/path or wss://... (http:// and https:// work too).
    pub url: String,
    #[command(flatten)]
    pub conn: ConnOpts,
    /// Print the HTTP request and response heads on stderr.
    #[arg(long)]
    pub show_handshake: bool,
    /// Pretty-print received text messages that are JSON.
    #[arg(long)]
    pub json: bool,
    /// Prefix each received message with its UTC arrival time (RFC 3339).
    #[arg(long)]
    pub timestamps: bool,
    /// Send a ping this often (the first one after one interval); the
    /// connection counts as lost (exit 4) if a pong does not come within
    /// --ping-timeout.
    #[arg(long, value_name = "DURATION", value_parser = parse_flag_duration)]
    pub ping_interval: Option<Duration>,
    /// With --ping-interval: how long to wait for each pong.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_flag_duration)]
    pub ping_timeout: Duration,
    /// Reconnect when the connection cannot be opened, is lost, or is closed by the server.
    #[arg(long)]
    pub reconnect: bool,
    /// Longest delay between reconnect attempts.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_flag_duration)]
    pub reconnect_max_delay: Duration,
    /// With --reconnect: give up after this many failed attempts in a row.
    #[arg(long, value_name = "N")]
    pub max_reconnects: Option<u32>,
    /// How binary messages are printed in pipe mode.
    #[arg(long, value_enum, default_value_t = BinaryFormat::Base64)]
    pub binary_format: BinaryFormat,
    /// ws: a WebSocket; sse or poll: a fallback session of a switchyard
    /// gateway at the same URL, for a path that drops the upgrade.
    #[arg(long, value_enum, default_value_t = ConnectTransport::Ws)]
    pub transport: ConnectTransport,
}

/// A line typed in interactive mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Text(String),
    Binary(Bytes),
    Ping(Bytes),
    Close(u16, String),
    Quit,
    Help,
}

pub const HELP: &str = "commands: /ping [data]  /close [code [reason]]  /binary <hex | base64 | hex:.. | base64:..>  /quit  /help\n\
                        any other line is sent as a text message (start it with // to send a leading /)";

/// Parse one interactive line.
pub fn parse_command(line: &str) -> Result<Command, String> {
    if let Some(rest) = line.strip_prefix("//") {
        return Ok(Command::Text(format!("/{rest}")));
    }
    let Some(cmd) = line.strip_prefix('/') else {
        return Ok(Command::Text(line.to_owned()));
    };
    let (name, arg) = match cmd.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (cmd, ""),
    };
    match name {
        "ping" => {
            if arg.len() > 125 {
                return Err(format!(
                    "a ping carries at most 125 bytes, this one has {}",
                    arg.len()
                ));
            }
            Ok(Command::Ping(Bytes::copy_from_slice(arg.as_bytes())))
        }
        "close" => {
            if arg.is_empty() {
                return Ok(Command::Close(1000, String::new()));
            }
            let (code, reason) = match arg.split_once(char::is_whitespace) {
                Some((c, r)) => (c, r.trim()),
                None => (arg, ""),
            };
            let code: u16 = code
                .parse()
                .map_err(|_| format!("{code:?} is not a close code (e.g. /close 1000 bye)"))?;
            if !CloseCode(code).is_sendable() {
                return Err(format!(
                    "{code} cannot be sent in a close frame; use 1000-1003, 1007-1014 or 3000-4999"
                ));
            }
            if reason.len() > 123 {
                return Err(format!(
                    "a close reason carries at most 123 bytes, this one has {}",
                    reason.len()
                ));
            }
            Ok(Command::Close(code, reason.to_owned()))
        }
        "binary" => decode_binary(arg).map(Command::Binary),
        "quit" | "exit" | "q" => Ok(Command::Quit),
        "help" | "?" => Ok(Command::Help),
        other => Err(format!("unknown command /{other}; {HELP}")),
    }
}

/// `hex:..`, `base64:..`, or bare: hex if it is an even number of hex digits
/// (spaces ignored), else base64 (standard or URL-safe, padding optional).
pub fn decode_binary(arg: &str) -> Result<Bytes, String> {
    let hex = |s: &str| -> Result<Bytes, String> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        if s.len() & 1 == 1 {
            return Err("hex needs an even number of digits".into());
        }
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("{s:?} is not hex"))
            })
            .collect::<Result<Vec<u8>, String>>()
            .map(Bytes::from)
    };
    let b64 = |s: &str| -> Result<Bytes, String> {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let s = s.trim();
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(s).ok())
            .map(Bytes::from)
            .ok_or_else(|| format!("{s:?} is neither hex nor base64"))
    };
    if let Some(h) = arg.strip_prefix("hex:") {
        return hex(h);
    }
    if let Some(b) = arg.strip_prefix("base64:") {
        return b64(b);
    }
    if arg.trim().is_empty() {
        return Ok(Bytes::new());
    }
    hex(arg).or_else(|_| b64(arg))
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The history file: `$XDG_DATA_HOME/switchyard/history`, else
/// `$HOME/.local/share/switchyard/history`.
pub fn history_path() -> Option<PathBuf> {
    history_path_from(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"))
}

/// [`history_path`] from the two variables' values. A relative
/// `XDG_DATA_HOME` is ignored, as the XDG base directory spec says.
pub fn history_path_from(
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let base = xdg_data_home
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            home.filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local").join("share"))
        })?;
    Some(base.join("switchyard").join("history"))
}

/// What the input side asks for.
#[derive(Debug)]
enum Input {
    Cmd(Command),
    /// End of input.
    Eof,
}

/// Where received messages and status lines go.
#[derive(Clone)]
struct Out {
    interactive: bool,
    printer: Option<Arc<Mutex<Box<dyn rustyline::ExternalPrinter + Send>>>>,
}

impl Out {
    fn line(&self, s: &str) {
        if let Some(p) = &self.printer {
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            if p.print(format!("{s}\n")).is_ok() {
                return;
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }
    fn status(&self, s: &str) {
        if self.interactive {
            self.line(&format!("* {}", s.replace('\n', "\n  ")));
        } else {
            eprintln!("{s}");
        }
    }
}

/// How one connection ended.
enum Ending {
    /// We closed and the handshake completed.
    Local,
    /// The server closed with this code.
    Peer(u16, String),
    /// Dropped, I/O error, protocol error, timeout.
    Abnormal(String),
}

fn pipe_input(tx: mpsc::Sender<Input>) {
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(l)) => {
                    let l = l.strip_suffix('\r').map(str::to_owned).unwrap_or(l);
                    if tx.send(Input::Cmd(Command::Text(l))).await.is_err() {
                        return;
                    }
                }
                Ok(None) | Err(_) => {
                    let _ = tx.send(Input::Eof).await;
                    return;
                }
            }
        }
    });
}

fn interactive_input(
    tx: mpsc::Sender<Input>,
) -> anyhow::Result<Box<dyn rustyline::ExternalPrinter + Send>> {
    use rustyline::error::ReadlineError;
    let config = rustyline::Config::builder().auto_add_history(true).build();
    let mut rl: rustyline::DefaultEditor = rustyline::Editor::with_config(config)?;
    let history = history_path();
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    let printer = rl.create_external_printer()?;
    std::thread::spawn(move || loop {
        match rl.readline("> ") {
            Ok(line) => {
                if let Some(h) = &history {
                    if let Some(dir) = h.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let _ = rl.append_history(h);
                }
                let input = match parse_command(&line) {
                    Ok(Command::Help) => {
                        println!("{HELP}");
                        continue;
                    }
                    Ok(c) => Input::Cmd(c),
                    Err(e) => {
                        println!("! {e}");
                        continue;
                    }
                };
                let quit = matches!(input, Input::Cmd(Command::Quit | Command::Close(..)));
                if tx.blocking_send(input).is_err() || quit {
                    return;
                }
            }
            Err(ReadlineError::Interrupted) => {
                let _ = tx.blocking_send(Input::Cmd(Command::Quit));
                return;
            }
            Err(_) => {
                let _ = tx.blocking_send(Input::Eof);
                return;
            }
        }
    });
    Ok(Box::new(printer))
}

/// Start reading stdin (line editing on a terminal); where output goes.
fn start_input(tx: mpsc::Sender<Input>) -> Result<Out, i32> {
    let interactive = std::io::stdin().is_terminal();
    let mut out = Out {
        interactive,
        printer: None,
    };
    if interactive {
        match interactive_input(tx) {
            Ok(p) => out.printer = Some(Arc::new(Mutex::new(p))),
            Err(e) => {
                eprintln!("error: cannot start line editing: {e}");
                return Err(exit::USAGE);
            }
        }
    } else {
        pipe_input(tx);
    }
    Ok(out)
}

/// Print how a connection ended; its exit status.
fn report_end(ending: Ending, out: &Out) -> i32 {
    match ending {
        Ending::Local => {
            out.status("closed");
            exit::OK
        }
        Ending::Peer(code, reason) => {
            out.status(&format!(
                "server closed the connection with {code} ({}){}",
                close_code_name(code),
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                }
            ));
            if code == 1000 {
                exit::OK
            } else {
                exit::PEER_CLOSED_ABNORMALLY
            }
        }
        Ending::Abnormal(why) => {
            out.status(&format!("connection lost: {why}"));
            exit::DROPPED
        }
    }
}

/// Run `connect`; returns the exit status.
pub async fn run(args: ConnectArgs) -> i32 {
    if let Some(t) = args.transport.fallback() {
        return run_fallback(&args, t).await;
    }
    let mut dialer = match args.conn.dialer(&args.url, Limits::default()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {}", diagnose_dial(&e, &args.url));
            return if matches!(e, crate::dial::DialError::Url { .. }) {
                exit::USAGE
            } else {
                exit::CONNECT_FAILED
            };
        }
    };
    // No --http1/--http2/--http3: wss:// lets ALPN choose (HTTP/2 only when
    // the server also enables extended CONNECT), ws:// is HTTP/1.1.
    if !(args.conn.http1 || args.conn.http2 || args.conn.http3) && dialer.target.tls {
        dialer.http = crate::dial::HttpVersion::Auto;
    }
    let (tx, mut rx) = mpsc::channel::<Input>(64);
    let out = match start_input(tx) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let mut backoff = FIRST_BACKOFF;
    let mut failures: u32 = 0;
    loop {
        let transcript = args
            .show_handshake
            .then(|| Arc::new(Mutex::new(Transcript::default())));
        let dialed = dialer.dial(transcript.as_ref()).await;
        if let Some(t) = &transcript {
            print_transcript(&t.lock().unwrap_or_else(|e| e.into_inner()));
        }
        let code = match dialed {
            Err(e) => {
                out.status(&format!("error: {}", diagnose_dial(&e, &args.url)));
                exit::CONNECT_FAILED
            }
            Ok(d) => {
                backoff = FIRST_BACKOFF;
                failures = 0;
                let neg = d.ws.negotiated();
                out.status(&format!("connected over {}", d.choice));
                let mut info = format!(
                    "connected to {} over {} (open in {:.1} ms",
                    args.url,
                    d.ws.transport(),
                    d.timings.total.as_secs_f64() * 1000.0
                );
                if let Some(p) = &neg.subprotocol {
                    info.push_str(&format!(", subprotocol {p}"));
                }
                if neg.deflate.is_some() {
                    info.push_str(", permessage-deflate");
                }
                info.push(')');
                out.status(&info);
                let ending = crate::with_ws!(d.ws, ws => session(ws, &mut rx, &out, &args).await);
                let local = matches!(ending, Ending::Local);
                match report_end(ending, &out) {
                    exit::OK if local || !args.reconnect => return exit::OK,
                    // A server's 1000 is retried with --reconnect.
                    exit::OK => exit::PEER_CLOSED_ABNORMALLY,
                    code => code,
                }
            }
        };
        if !args.reconnect {
            return code;
        }
        failures += 1;
        if args.max_reconnects.is_some_and(|max| failures > max) {
            out.status(&format!("giving up after {} attempts", failures - 1));
            return code;
        }
        out.status(&format!(
            "reconnecting in {} ms (attempt {failures})",
            backoff.as_millis()
        ));
        // Wait, but leave at once if input ends.
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                input = rx.recv() => match input {
                    None | Some(Input::Eof) | Some(Input::Cmd(Command::Quit)) => return code,
                    Some(Input::Cmd(c)) => {
                        out.status(&format!("not connected; dropped {c:?}"));
                    }
                },
            }
        }
        backoff = (backoff * 2).min(args.reconnect_max_delay.max(FIRST_BACKOFF));
    }
}

/// `--transport sse|poll`: one fallback session (it resumes by itself).
async fn run_fallback(args: &ConnectArgs, transport: Transport) -> i32 {
    let c = &args.conn;
    let ws_only = [
        (args.reconnect, "--reconnect"),
        (args.ping_interval.is_some(), "--ping-interval"),
        (c.proxy.is_some(), "--proxy"),
        (c.http2, "--http2"),
        (c.cert.is_some(), "--cert"),
    ];
    if let Some((_, flag)) = ws_only.iter().find(|(set, _)| *set) {
        eprintln!(
            "error: {flag} applies to --transport ws; a fallback session resumes by itself \
             and the gateway runs the backend's heartbeat"
        );
        return exit::USAGE;
    }
    let mut tls = switchyard::ClientBuilder::new();
    for ca in &c.ca {
        tls = tls.add_ca_file(ca);
    }
    if c.insecure {
        tls = tls.danger_accept_invalid_certs();
    }
    let mut b = FallbackBuilder::new(transport)
        .subprotocols(c.subprotocols.iter().cloned())
        .request_timeout(c.connect_timeout)
        .http3(c.http3)
        .tls(tls);
    if let Some(o) = &c.origin {
        match http::HeaderValue::from_str(o) {
            Ok(v) => b = b.header(http::header::ORIGIN, v),
            Err(_) => {
                eprintln!("error: --origin {o:?} is not a valid header value");
                return exit::USAGE;
            }
        }
    }
    for (n, v) in &c.headers {
        b = b.header(n.clone(), v.clone());
    }
    let (tx, mut rx) = mpsc::channel::<Input>(64);
    let out = match start_input(tx) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let started = Instant::now();
    let socket = match b.connect(&args.url).await {
        Ok(s) => s,
        Err(e) => {
            out.status(&format!("error: {}", fallback_refusal(&e)));
            return exit::CONNECT_FAILED;
        }
    };
    let mut info = format!(
        "connected to {} over a fallback session ({transport}{}, open in {:.1} ms",
        args.url,
        if c.http3 { " over HTTP/3" } else { "" },
        started.elapsed().as_secs_f64() * 1000.0
    );
    if let Some(p) = socket.subprotocol() {
        info.push_str(&format!(", subprotocol {p}"));
    }
    info.push(')');
    out.status(&info);
    report_end(session(socket, &mut rx, &out, args).await, &out)
}

/// Why a fallback session could not be opened, and what to do.
fn fallback_refusal(e: &FallbackError) -> String {
    match e {
        FallbackError::Refused { status, .. } if *status == http::StatusCode::NOT_FOUND => {
            format!(
                "{e} — nothing serves fallback sessions at this URL: they are served by a \
                 switchyard gateway on a route that serves WebSocket (unless its policy \
                 sets fallback = [])"
            )
        }
        _ => e.to_string(),
    }
}

fn print_transcript(t: &Transcript) {
    let mut err = std::io::stderr().lock();
    for l in t.request_head().lines() {
        let _ = writeln!(err, "> {l}");
    }
    let resp = t.response_head();
    if resp.is_empty() {
        let _ = writeln!(err, "< (no response)");
    }
    for l in resp.lines() {
        let _ = writeln!(err, "< {l}");
    }
}

fn render_text(s: &str, json: bool) -> String {
    if json {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
            if let Ok(p) = serde_json::to_string_pretty(&v) {
                return p;
            }
        }
    }
    s.to_owned()
}

/// What [`session`] needs of a connection's errors.
trait LinkError {
    /// Sending failed only because the connection is closing.
    fn is_closed(&self) -> bool;
    /// Why the connection was lost, for a person.
    fn why(&self) -> String;
}

impl LinkError for switchyard::Error {
    fn is_closed(&self) -> bool {
        matches!(self, switchyard::Error::Closed)
    }
    fn why(&self) -> String {
        diagnose_drop(self)
    }
}

impl LinkError for FallbackError {
    fn is_closed(&self) -> bool {
        matches!(self, FallbackError::Closed)
    }
    fn why(&self) -> String {
        self.to_string()
    }
}

/// Drive one open connection (a WebSocket or a fallback session) until it
/// ends.
async fn session<W, E>(
    mut ws: W,
    rx: &mut mpsc::Receiver<Input>,
    out: &Out,
    args: &ConnectArgs,
) -> Ending
where
    W: Stream<Item = Result<Message, E>> + Sink<Message, Error = E> + Unpin,
    E: LinkError,
{
    let mut closing = false;
    let mut peer_close: Option<(u16, String)> = None;
    let mut pings: Vec<(Bytes, Instant)> = Vec::new();
    let stamp = |s: String| {
        if args.timestamps {
            format!("{} {s}", rfc3339(SystemTime::now()))
        } else {
            s
        }
    };
    let prefix = if out.interactive { "< " } else { "" };
    // Keepalive pings (--ping-interval): when the unanswered one was sent.
    let mut keepalive = args.ping_interval.map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut keepalive_sent: Option<Instant> = None;
    let far = Duration::from_secs(365 * 86_400);
    loop {
        let pong_deadline = keepalive_sent.map_or(Instant::now() + far, |t| t + args.ping_timeout);
        tokio::select! {
            _ = async {
                match keepalive.as_mut() {
                    Some(t) => { t.tick().await; }
                    None => std::future::pending::<()>().await,
                }
            }, if !closing && keepalive_sent.is_none() => {
                keepalive_sent = Some(Instant::now());
                if let Err(e) = ws.send(Message::Ping(Bytes::from_static(KEEPALIVE))).await {
                    return Ending::Abnormal(e.why());
                }
            }
            _ = tokio::time::sleep_until(pong_deadline.into()), if keepalive_sent.is_some() && !closing => {
                let close = CloseFrame::new(CloseCode::INTERNAL_ERROR, "pong timeout");
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    ws.send(Message::Close(Some(close))),
                ).await;
                return Ending::Abnormal(format!(
                    "no pong within {:?} (--ping-timeout): the server or the path is gone; closed with 1011",
                    args.ping_timeout
                ));
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    out.line(&stamp(format!("{prefix}{}", render_text(t.as_str(), args.json))));
                }
                Some(Ok(Message::Binary(b))) => {
                    let s = if out.interactive {
                        format!("< [binary, {} bytes] {}", b.len(), to_hex(&b))
                    } else {
                        match args.binary_format {
                            BinaryFormat::Base64 => base64::engine::general_purpose::STANDARD.encode(&b),
                            BinaryFormat::Hex => to_hex(&b),
                        }
                    };
                    out.line(&stamp(s));
                }
                Some(Ok(Message::Ping(p))) => {
                    if out.interactive {
                        out.status(&format!("ping from server ({} bytes), answered", p.len()));
                    }
                }
                Some(Ok(Message::Pong(p))) => {
                    if p.as_ref() == KEEPALIVE {
                        keepalive_sent = None;
                    } else if let Some(i) = pings.iter().position(|(d, _)| *d == p) {
                        let (_, sent) = pings.remove(i);
                        out.status(&format!(
                            "pong {:?} in {:.2} ms",
                            String::from_utf8_lossy(&p),
                            sent.elapsed().as_secs_f64() * 1000.0
                        ));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    if !closing {
                        peer_close = Some(match frame {
                            Some(f) => (f.code.0, f.reason),
                            None => (1005, String::new()),
                        });
                    }
                }
                Some(Err(e)) => return Ending::Abnormal(e.why()),
                None => {
                    return match peer_close {
                        Some((c, r)) => Ending::Peer(c, r),
                        None if closing => Ending::Local,
                        None => Ending::Abnormal(
                            "the connection ended without a close frame (1006)".into(),
                        ),
                    };
                }
            },
            input = rx.recv(), if !closing => {
                let (msg, close) = match input {
                    None | Some(Input::Eof) | Some(Input::Cmd(Command::Quit)) => {
                        (Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, ""))), true)
                    }
                    Some(Input::Cmd(Command::Close(code, reason))) => {
                        (Message::Close(Some(CloseFrame::new(CloseCode(code), reason))), true)
                    }
                    Some(Input::Cmd(Command::Text(t))) => (Message::text(t), false),
                    Some(Input::Cmd(Command::Binary(b))) => (Message::Binary(b), false),
                    Some(Input::Cmd(Command::Ping(p))) => {
                        if pings.len() < 64 {
                            pings.push((p.clone(), Instant::now()));
                        }
                        (Message::Ping(p), false)
                    }
                    Some(Input::Cmd(Command::Help)) => continue,
                };
                closing = close;
                if let Err(e) = ws.send(msg).await {
                    if !e.is_closed() {
                        return Ending::Abnormal(e.why());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse_command("hello"), Ok(Command::Text("hello".into())));
        assert_eq!(parse_command("//x"), Ok(Command::Text("/x".into())));
        assert_eq!(
            parse_command("/ping abc"),
            Ok(Command::Ping(Bytes::from_static(b"abc")))
        );
        assert_eq!(parse_command("/ping"), Ok(Command::Ping(Bytes::new())));
        assert_eq!(
            parse_command("/close 4000 bye now"),
            Ok(Command::Close(4000, "bye now".into()))
        );
        assert_eq!(
            parse_command("/close"),
            Ok(Command::Close(1000, String::new()))
        );
        assert!(parse_command("/close 1006").is_err());
        assert!(parse_command("/close abc").is_err());
        assert_eq!(parse_command("/quit"), Ok(Command::Quit));
        assert!(parse_command("/nope")
            .unwrap_err()
            .contains("unknown command /nope"));
        assert!(parse_command(&format!("/ping {}", "x".repeat(126))).is_err());
    }

    #[test]
    fn binary_hex_and_base64() {
        assert_eq!(
            parse_command("/binary 00ff"),
            Ok(Command::Binary(Bytes::from_static(&[0x00, 0xff])))
        );
        assert_eq!(
            parse_command("/binary 00 ff 10"),
            Ok(Command::Binary(Bytes::from_static(&[0x00, 0xff, 0x10])))
        );
        // "AAEC" is valid hex too, so hex wins unless base64: is given.
        assert_eq!(
            decode_binary("base64:AAEC").unwrap(),
            Bytes::from_static(&[0, 1, 2])
        );
        assert_eq!(decode_binary("aGk=").unwrap(), Bytes::from_static(b"hi"));
        assert_eq!(decode_binary("aGk").unwrap(), Bytes::from_static(b"hi"));
        assert_eq!(
            decode_binary("hex:6869").unwrap(),
            Bytes::from_static(b"hi")
        );
        assert!(decode_binary("hex:123").is_err());
        assert!(decode_binary("!!!").is_err());
        assert_eq!(to_hex(&[0, 0xab]), "00ab");
    }

    #[test]
    fn history_goes_to_the_xdg_data_dir() {
        let p = |x: Option<&str>, h: Option<&str>| {
            history_path_from(x.map(Into::into), h.map(Into::into))
        };
        assert_eq!(
            p(Some("/data"), Some("/home/u")),
            Some(PathBuf::from("/data/switchyard/history"))
        );
        assert_eq!(
            p(None, Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/share/switchyard/history"))
        );
        assert_eq!(
            p(Some("relative"), Some("/home/u")),
            Some(PathBuf::from("/home/u/.local/share/switchyard/history"))
        );
        assert_eq!(p(Some(""), None), None);
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_is_pretty_printed_only_when_valid() {
        assert_eq!(render_text("{\"a\":1}", true), "{\n  \"a\": 1\n}");
        assert_eq!(render_text("{not json", true), "{not json");
        assert_eq!(render_text("{\"a\":1}", false), "{\"a\":1}");
    }
}

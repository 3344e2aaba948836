//! hostile: the hostile peers of `bench/soak.sh`, a process of their own
//! beside the soak's clients.
//!
//! In cycles (`--on` hostile, then `--off` quiet, for `--duration`), each of
//! `--peers` tasks per kind attacks the gateway over and over while the phase
//! is on:
//!
//! | kind | what it does | what the gateway must do (within `--patience`) |
//! |---|---|---|
//! | `non_reader` | a WebSocket through `--echo-path` that sends 64 KiB messages and does not read for `--stall` seconds | stop reading it (backpressure), then close it (idle timeout) before the stall ends |
//! | `slowloris_h1` | an HTTP/1.1 head, one header byte a second | answer 408 (or close) |
//! | `slowloris_h2` | an HTTP/2 header block, one CONTINUATION byte a second | close the connection (GOAWAY or FIN) |
//! | `rapid_reset` | HTTP/2 streams opened and reset at once, 200 in a burst | GOAWAY |
//! | `continuation_flood` | one HTTP/2 header block of endless 1 KiB CONTINUATION frames | GOAWAY or close before 4 MiB |
//! | `deflate_bomb` | a 64 KiB compressed message that inflates to 64 MiB | close 1009 |
//! | `stalled_backend` | a WebSocket through `--stall-path` to this process's own backend (`--backend`), which echoes once and then stops reading and answering | close the client with 1014 |
//!
//! An instance that drains during an attempt answers it with 1001 or GOAWAY
//! NO_ERROR, which is right too.
//!
//! While a phase is on (until its last attempt ended), `--label-file` holds
//! `hostile`, otherwise `quiet`: `switchyard soak --label-file` counts its
//! latencies under that label. At the end one JSON object on stdout: per
//! kind, the outcomes and how many were unexpected; the exit status is 1 if
//! any was.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use flate2::{Compress, Compression, FlushCompress};
use futures_util::{SinkExt, StreamExt};
use switchyard::{ClientBuilder, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    /// A gateway listener (HTTP/1.1 and cleartext HTTP/2); repeat for the
    /// instances a redeploy moves between (each attempt takes the first that
    /// accepts).
    #[arg(long, required = true)]
    gateway: Vec<SocketAddr>,
    /// A frame-aware route to an echo backend, with a heartbeat.
    #[arg(long, default_value = "/hostile/echo")]
    echo_path: String,
    /// A frame-aware route, with a heartbeat, to `--backend`.
    #[arg(long, default_value = "/hostile/stall")]
    stall_path: String,
    /// Where this process serves the backend that stops answering.
    #[arg(long)]
    backend: SocketAddr,
    /// Tasks per kind of peer while a phase is on.
    #[arg(long, default_value_t = 4)]
    peers: usize,
    /// Seconds of each hostile phase.
    #[arg(long, default_value_t = 20)]
    on: u64,
    /// Seconds of each quiet phase.
    #[arg(long, default_value_t = 20)]
    off: u64,
    /// Seconds in all.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds the gateway gets to deal with one attempt.
    #[arg(long, default_value_t = 60)]
    patience: u64,
    /// Seconds a non-reader stays silent once the gateway stopped reading it
    /// (more than the route's idle timeout and close timeout).
    #[arg(long, default_value_t = 20)]
    stall: u64,
    /// Written with `hostile` or `quiet`.
    #[arg(long)]
    label_file: Option<PathBuf>,
}

/// Outcomes per kind: (outcome, expected) -> count.
type Tally = Arc<Mutex<BTreeMap<&'static str, BTreeMap<(String, bool), u64>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let backend = TcpListener::bind(args.backend).await?;
    tokio::spawn(stalling_backend(
        backend,
        Duration::from_secs(args.patience),
    ));
    let tally: Tally = Arc::default();
    let end = Instant::now() + Duration::from_secs(args.duration);
    label(&args, "quiet");
    while Instant::now() < end {
        label(&args, "hostile");
        let phase_end = (Instant::now() + Duration::from_secs(args.on)).min(end);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..args.peers {
            for kind in KINDS {
                let (args, tally) = (args.clone(), tally.clone());
                tasks.spawn(async move {
                    while Instant::now() < phase_end {
                        let patience = Duration::from_secs(args.patience);
                        let (outcome, expected) =
                            match tokio::time::timeout(patience, attack(kind, &args)).await {
                                Ok(Ok(o)) => o,
                                Ok(Err(e)) => (format!("error: {e:#}"), false),
                                Err(_) => ("still open after the patience".to_string(), false),
                            };
                        *tally
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(kind)
                            .or_default()
                            .entry((outcome, expected))
                            .or_insert(0) += 1;
                        tokio::time::sleep(PAUSE).await;
                    }
                });
            }
        }
        while tasks.join_next().await.is_some() {}
        label(&args, "quiet");
        tokio::time::sleep_until(
            (Instant::now() + Duration::from_secs(args.off))
                .min(end)
                .into(),
        )
        .await;
    }
    let t = tally.lock().unwrap_or_else(|p| p.into_inner());
    let mut unexpected = 0u64;
    let mut out = serde_json::Map::new();
    for (kind, outcomes) in t.iter() {
        let list: Vec<serde_json::Value> = outcomes
            .iter()
            .map(|((o, ok), n)| {
                if !ok {
                    unexpected += n;
                }
                serde_json::json!({"outcome": o, "expected": ok, "count": n})
            })
            .collect();
        out.insert(kind.to_string(), list.into());
    }
    println!(
        "{}",
        serde_json::json!({"kinds": out, "unexpected": unexpected})
    );
    std::process::exit(i32::from(unexpected > 0));
}

fn label(args: &Args, what: &str) {
    if let Some(f) = &args.label_file {
        let _ = std::fs::write(f, what);
    }
}

/// The close code of an instance that drains (a redeploy during the attempt):
/// the right answer to any WebSocket peer, hostile or not.
const DRAINED: u16 = 1001;

/// Between two attempts of one task (the attacks are the point, not their rate).
const PAUSE: Duration = Duration::from_secs(1);

const KINDS: [&str; 7] = [
    "non_reader",
    "slowloris_h1",
    "slowloris_h2",
    "rapid_reset",
    "continuation_flood",
    "deflate_bomb",
    "stalled_backend",
];

/// One attempt of `kind`: what happened, and whether that is what the
/// gateway should do.
async fn attack(kind: &str, a: &Args) -> anyhow::Result<(String, bool)> {
    match kind {
        "non_reader" => non_reader(a).await,
        "slowloris_h1" => slowloris_h1(a).await,
        "slowloris_h2" => slowloris_h2(a).await,
        "rapid_reset" => rapid_reset(a).await,
        "continuation_flood" => continuation_flood(a).await,
        "deflate_bomb" => deflate_bomb(a).await,
        _ => stalled_backend(a).await,
    }
}

// ------------------------------------------------------------ WebSocket peers

/// A TCP connection to the first gateway that accepts one.
async fn tcp(a: &Args) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::other("no --gateway");
    for g in &a.gateway {
        match TcpStream::connect(g).await {
            Ok(t) => return Ok(t),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// A WebSocket to `path` on the first gateway that upgrades one.
async fn websocket(
    a: &Args,
    path: &str,
    b: &ClientBuilder,
) -> anyhow::Result<switchyard::WebSocket<switchyard::client::MaybeTlsStream>> {
    let mut last = None;
    for g in &a.gateway {
        match b.connect(&format!("ws://{g}{path}")).await {
            Ok((ws, _)) => return Ok(ws),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no --gateway"), Into::into))
}

/// A masked client frame (FIN set).
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x11, 0xc3, 0x7e];
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The first server frame in `buf`, if complete: its opcode, payload and
/// length on the wire.
fn server_frame(buf: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    let (len, head) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4usize,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let end = head.checked_add(len)?;
    Some((b0 & 0x0f, buf.get(head..end)?, end))
}

/// The code of the close frame among the server frames read so far (`buf`
/// keeps what does not make a whole frame yet).
fn close_code(buf: &mut Vec<u8>) -> Option<u16> {
    while let Some((opcode, payload, len)) = server_frame(buf) {
        if opcode == 0x8 {
            return Some(
                payload
                    .get(..2)
                    .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]])),
            );
        }
        buf.drain(..len);
    }
    None
}

/// Sends until the gateway stops reading, stays silent for `--stall`, then
/// reads what is left: the gateway must have closed the connection by then.
/// (Its FIN waits behind the unread echoes, so only reading shows it.)
async fn non_reader(a: &Args) -> anyhow::Result<(String, bool)> {
    let ws = websocket(a, &a.echo_path, &ClientBuilder::new().no_deflate()).await?;
    let mut tcp = match ws.into_inner() {
        switchyard::client::MaybeTlsStream::Plain(t) => t,
        switchyard::client::MaybeTlsStream::Tls(_) => anyhow::bail!("ws:// gave TLS"),
    };
    let frame = client_frame(0x82, &vec![0x42; 64 * 1024]);
    let mut sent = 0usize;
    // Backpressure: a write that waits a second means the gateway stopped reading.
    while let Ok(r) = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&frame)).await {
        if r.is_err() {
            return Ok(("closed while sending".into(), true));
        }
        sent += frame.len();
        if sent > 256 << 20 {
            return Ok(("256 MiB accepted without backpressure".into(), false));
        }
    }
    tokio::time::sleep(Duration::from_secs(a.stall)).await;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut code = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                code = code.or_else(|| close_code(&mut buf));
            }
            Err(_) => return Ok(("still open after the stall".into(), false)),
        }
    }
    Ok(match code {
        Some(code) => (format!("closed with {code} during the stall"), true),
        None => ("cut during the stall".into(), true),
    })
}

/// A bomb of ~64 KiB that inflates to 64 MiB, past any soak limit.
fn bomb() -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut c = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(80 << 10);
    for _ in 0..64 {
        let _ = c.compress_vec(&zeros, &mut out, FlushCompress::None);
    }
    let _ = c.compress_vec(&[], &mut out, FlushCompress::Sync);
    out.truncate(out.len().saturating_sub(4));
    out
}

async fn deflate_bomb(a: &Args) -> anyhow::Result<(String, bool)> {
    let mut ws = websocket(a, &a.echo_path, &ClientBuilder::new()).await?;
    if ws.negotiated().deflate.is_none() {
        return Ok(("permessage-deflate not negotiated".into(), false));
    }
    ws.get_mut().write_all(&client_frame(0xc2, &bomb())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(f))) => {
                let code = f.map_or(1005, |f| f.code.0);
                return Ok((
                    format!("closed with {code}"),
                    code == 1009 || code == DRAINED,
                ));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Ok((format!("broken: {e}"), false)),
            None => return Ok(("ended without a close frame".into(), false)),
        }
    }
}

/// Through `--stall-path` to [`stalling_backend`]: one echo, then silence
/// from the backend; the gateway's heartbeat must give up on it.
async fn stalled_backend(a: &Args) -> anyhow::Result<(String, bool)> {
    let mut ws = websocket(a, &a.stall_path, &ClientBuilder::new().no_deflate()).await?;
    ws.send(Message::text("once")).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(f))) => {
                let code = f.map_or(1005, |f| f.code.0);
                return Ok((
                    format!("closed with {code}"),
                    code == 1014 || code == DRAINED,
                ));
            }
            Some(Ok(_)) => {
                // Keep talking: the client side stays busy, only the backend is silent.
                ws.send(Message::text("again")).await?;
            }
            Some(Err(e)) => return Ok((format!("broken: {e}"), false)),
            None => return Ok(("ended without a close frame".into(), false)),
        }
    }
}

/// Echoes the first message of each connection, then holds it without
/// reading or writing until `patience` passed.
async fn stalling_backend(l: TcpListener, patience: Duration) {
    while let Ok((tcp, _)) = l.accept().await {
        tokio::spawn(async move {
            let cfg = switchyard::server::AcceptConfig::default();
            let Ok(mut ws) = switchyard::accept(tcp, &cfg).await else {
                return;
            };
            if let Some(Ok(m)) = ws.next().await {
                let _ = ws.send(m).await;
            }
            tokio::time::sleep(patience).await;
        });
    }
}

// -------------------------------------------------------------- HTTP/1.1 peer

async fn slowloris_h1(a: &Args) -> anyhow::Result<(String, bool)> {
    let mut tcp = tcp(a).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: soak\r\nX-Slow: ")
        .await?;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = tcp.read(&mut buf) => {
                let n = r.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                return Ok(match head.split_whitespace().nth(1) {
                    Some(status) => (format!("answered {status}"), status == "408"),
                    None => ("closed without an answer".into(), true),
                });
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if tcp.write_all(b"a").await.is_err() {
                    return Ok(("closed while sending".into(), true));
                }
            }
        }
    }
}

// --------------------------------------------------------------- HTTP/2 peers

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
/// The GOAWAY code of an instance that drains (a redeploy during the attempt).
const NO_ERROR: u32 = 0x0;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal fields without indexing, no Huffman (names and values
/// under 127 bytes).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        b.push(0x00);
        b.push(n.len() as u8);
        b.extend_from_slice(n.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn get_block() -> Vec<u8> {
    hpack(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "soak"),
    ])
}

/// Connect, send the preface and an empty SETTINGS.
async fn h2_connect(a: &Args) -> anyhow::Result<TcpStream> {
    let mut tcp = tcp(a).await?;
    let mut hello = PREFACE.to_vec();
    hello.extend(h2_frame(SETTINGS, 0, 0, &[]));
    tcp.write_all(&hello).await?;
    Ok(tcp)
}

/// Read frames until a GOAWAY (its error code) or the end (`None`).
async fn h2_goaway<R: AsyncRead + Unpin>(r: &mut R) -> Option<u32> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(c) = goaway_in(&all) {
            return Some(c);
        }
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
        }
    }
}

fn goaway_outcome(code: Option<u32>) -> (String, bool) {
    match code {
        Some(c) => (format!("GOAWAY {c}"), true),
        None => ("closed".into(), true),
    }
}

/// Connect and open stream 1 with a header block that does not end (no
/// END_HEADERS): only CONTINUATION frames may follow.
async fn h2_unended_headers(a: &Args) -> anyhow::Result<TcpStream> {
    let mut tcp = h2_connect(a).await?;
    tcp.write_all(&h2_frame(HEADERS, END_STREAM, 1, &get_block()))
        .await?;
    Ok(tcp)
}

async fn slowloris_h2(a: &Args) -> anyhow::Result<(String, bool)> {
    let mut tcp = h2_unended_headers(a).await?;
    let (mut rd, mut wr) = tcp.split();
    let trickle = async {
        // One more literal field, a byte per CONTINUATION frame, never ending.
        let field = hpack(&[("x-slow", &"s".repeat(100))]);
        for b in field.iter().cycle() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if wr
                .write_all(&h2_frame(CONTINUATION, 0, 1, &[*b]))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    tokio::select! {
        code = h2_goaway(&mut rd) => Ok(goaway_outcome(code)),
        _ = trickle => Ok(("closed while sending".into(), true)),
    }
}

/// The error code of the first complete GOAWAY frame in `buf`.
fn goaway_in(buf: &[u8]) -> Option<u32> {
    let mut at = 0;
    while let Some(h) = buf.get(at..at + 9) {
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let p = buf.get(at + 9..at + 9 + len)?;
        if h[3] == GOAWAY {
            return p
                .get(4..8)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        }
        at += 9 + len;
    }
    None
}

async fn rapid_reset(a: &Args) -> anyhow::Result<(String, bool)> {
    let mut tcp = h2_connect(a).await?;
    let block = get_block();
    let mut burst = Vec::new();
    for i in 0..200u32 {
        let id = 2 * i + 1;
        burst.extend(h2_frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        burst.extend(h2_frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = tcp.write_all(&burst).await;
    let code = h2_goaway(&mut tcp).await;
    // ENHANCE_YOUR_CALM (0xb) is the answer to a flood of resets.
    Ok(match code {
        Some(c) => (format!("GOAWAY {c}"), c == 0xb || c == NO_ERROR),
        None => ("closed without GOAWAY".into(), true),
    })
}

async fn continuation_flood(a: &Args) -> anyhow::Result<(String, bool)> {
    let mut tcp = h2_unended_headers(a).await?;
    let value = "v".repeat(120);
    let one_kib = hpack(&[("x-flood", value.as_str()); 8]);
    let mut sent = 0usize;
    let writer = async {
        while sent < 4 << 20 {
            if tcp
                .write_all(&h2_frame(CONTINUATION, 0, 1, &one_kib))
                .await
                .is_err()
            {
                break;
            }
            sent += one_kib.len();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    if sent >= 4 << 20 {
        return Ok(("4 MiB of CONTINUATION accepted".into(), false));
    }
    Ok(goaway_outcome(h2_goaway(&mut tcp).await))
}

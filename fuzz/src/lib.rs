//! Shared pieces of the fuzz targets: deterministic chunking of the input,
//! the connection harness used by `connection_server` and `connection_client`,
//! and a tiny independent frame encoder for the corpus generator.
//!
//! Everything here derives its choices from the fuzz input itself, so a crash
//! reproduces from the saved input alone.

use bytes::Bytes;
use switchyard_proto::close::{CloseCode, CloseFrame};
use switchyard_proto::deflate::{DeflateConfig, DeflateParams, PerMessageDeflate};
use switchyard_proto::{Connection, Limits, Message, Role, SendError, State};

/// A small deterministic PRNG (xorshift32) seeded from an input byte.
pub struct Rng(u32);

impl Rng {
    pub fn new(seed: u8) -> Self {
        Rng(0x9E37_79B9 ^ (u32::from(seed) << 8 | u32::from(seed)))
    }
    pub fn next_u32(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
    /// A value in `1..=max`.
    pub fn len(&mut self, max: usize) -> usize {
        1 + (self.next_u32() as usize) % max.max(1)
    }
}

/// Split `data` into pieces whose sizes come from `seed`. Seed 0 means one
/// piece; other seeds give pieces of 1..=N bytes with N from the seed, so both
/// byte-by-byte feeding and larger reads are exercised.
pub fn chunks(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    if seed == 0 || data.is_empty() {
        return vec![data];
    }
    let max = match seed % 4 {
        0 => 1,
        1 => 7,
        2 => 64,
        _ => 1024,
    };
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = rng.len(max).min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

/// Split `data` at the sorted positions given by `cuts` (each byte scaled to
/// the length of `data`), so the fuzzer can place a split anywhere.
pub fn split_at_cuts<'a>(cuts: &[u8], data: &'a [u8]) -> Vec<&'a [u8]> {
    let mut pos: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) * data.len() / 256)
        .collect();
    pos.sort_unstable();
    let mut out = Vec::new();
    let mut start = 0;
    for p in pos {
        out.push(&data[start..p]);
        start = p;
    }
    out.push(&data[start..]);
    out
}

/// Deflate parameters chosen by a configuration byte:
/// bit 2 server_no_context_takeover, bit 3 client_no_context_takeover,
/// bits 4-6 the window bits (server 8+v, client 15-v), bit 7 a min_size of 8.
pub fn deflate_setup(cfg: u8) -> (DeflateParams, DeflateConfig) {
    let v = (cfg >> 4) & 7;
    let params = DeflateParams {
        server_no_context_takeover: cfg & 0x04 != 0,
        client_no_context_takeover: cfg & 0x08 != 0,
        server_max_window_bits: 8 + v,
        client_max_window_bits: 15 - v,
    };
    let config = DeflateConfig::default()
        .server_no_context_takeover(params.server_no_context_takeover)
        .client_no_context_takeover(params.client_no_context_takeover)
        .server_max_window_bits(Some(params.server_max_window_bits))
        .client_max_window_bits(Some(params.client_max_window_bits))
        .level(1)
        .min_size(if cfg & 0x80 != 0 { 8 } else { 0 });
    (params, config)
}

/// Default limits, or (bit 1 of `cfg`) tiny ones so the limit paths are hit.
pub fn limits_for(cfg: u8) -> Limits {
    if cfg & 0x02 != 0 {
        Limits::default()
            .max_frame_size(100)
            .max_message_size(300)
            .max_fragments(8)
            .max_write_buffer(512)
    } else {
        Limits::default()
    }
}

fn other(role: Role) -> Role {
    match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    }
}

/// A connection in `role`, with permessage-deflate if bit 0 of `cfg` is set.
pub fn connection(role: Role, cfg: u8, limits: Limits) -> Connection {
    let conn = Connection::new(role, limits);
    if cfg & 0x01 != 0 {
        let (params, config) = deflate_setup(cfg);
        conn.with_deflate(PerMessageDeflate::new(role, params, &config))
    } else {
        conn
    }
}

/// Move all of `from`'s output into `to`, in pieces sized by `rng`.
fn forward(from: &mut Connection, to: &mut Connection, rng: &mut Rng) {
    let mut guard = 0;
    while from.output_len() > 0 {
        let n = rng.len(512).min(from.output_len());
        let piece = from.output()[..n].to_vec();
        from.advance_output(n);
        to.receive(&piece);
        guard += 1;
        assert!(guard < 1_000_000, "output never drains");
    }
}

/// Everything the peer received, until it needs more bytes.
fn drain_peer(peer: &mut Connection, got: &mut Vec<Message>) {
    loop {
        match peer.poll_message() {
            Ok(Some(m)) => got.push(m),
            Ok(None) => return,
            Err(e) => panic!("peer rejected our own output: {e}"),
        }
    }
}

/// The messages to send, scripted by `script`: up to 8 operations of
/// `[op, len, payload...]`.
pub fn send_script(script: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut rest = script;
    while out.len() < 8 && rest.len() >= 2 {
        let op = rest[0];
        let len = usize::from(rest[1]).min(rest.len() - 2);
        let payload = &rest[2..2 + len];
        rest = &rest[2 + len..];
        let msg = match op % 6 {
            0 => Message::text(String::from_utf8_lossy(payload).into_owned()),
            1 => Message::binary(Bytes::copy_from_slice(payload)),
            2 => Message::Ping(Bytes::copy_from_slice(payload)),
            3 => Message::Pong(Bytes::copy_from_slice(payload)),
            4 if payload.len() >= 2 => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
                Message::Close(Some(CloseFrame::new(CloseCode(code), reason)))
            }
            _ => Message::Close(None),
        };
        out.push(msg);
    }
    out
}

/// The connection harness. Input: `[cfg, chunk_seed, wire...]`.
///
/// 1. A connection in `role` receives `wire` in chunks; after each chunk
///    `poll_message` runs until `Ok(None)` or an error. It must never panic,
///    never deliver more payload than it received (without deflate), never
///    exceed the message limit, and return only `Ok(None)` after an error or
///    a received Close.
/// 2. Its output (pongs, close replies, the error's close frame) goes to a
///    peer in the other role, which must accept all of it; when the
///    connection failed with code C, the peer receives a Close with code C.
/// 3. It then sends messages scripted by `wire`; the peer must receive exactly
///    the data messages whose `send` returned Ok, in order.
pub fn run_connection(role: Role, data: &[u8]) {
    let [cfg, chunk_seed, wire @ ..] = data else {
        return;
    };
    let (cfg, chunk_seed) = (*cfg, *chunk_seed);
    let limits = limits_for(cfg);
    let deflated = cfg & 0x01 != 0;
    let mut conn = connection(role, cfg, limits.clone());
    let mut peer = connection(other(role), cfg, Limits::default());
    let mut rng = Rng::new(chunk_seed ^ 0x5a);
    let mut peer_got = Vec::new();

    let mut fed = 0usize;
    let mut delivered = 0usize;
    let mut error = None;
    let mut closed = false;
    for chunk in chunks(chunk_seed, wire) {
        conn.receive(chunk);
        fed += chunk.len();
        loop {
            let r = conn.poll_message();
            if error.is_some() || closed {
                assert!(
                    matches!(r, Ok(None)),
                    "after an error or a Close, poll_message returned {r:?}"
                );
                break;
            }
            match r {
                Ok(None) => break,
                Ok(Some(m)) => {
                    delivered += m.len();
                    if !deflated {
                        assert!(
                            delivered <= fed,
                            "delivered {delivered} payload bytes from {fed} received"
                        );
                    }
                    match &m {
                        Message::Text(_) | Message::Binary(_) => {
                            assert!(
                                m.len() <= limits.max_message_size,
                                "message of {} bytes over the limit",
                                m.len()
                            )
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {
                            assert!(m.len() <= 125, "control payload of {} bytes", m.len())
                        }
                    }
                    if let Message::Close(_) = m {
                        closed = true;
                        assert_ne!(
                            conn.state(),
                            State::Open,
                            "state still Open after receiving Close"
                        );
                    }
                }
                Err(e) => {
                    assert_eq!(conn.state(), State::Failed, "state after {e:?}");
                    assert!(
                        conn.wants_close_transport(),
                        "failed connection does not want the transport closed"
                    );
                    assert!(
                        e.code.is_sendable(),
                        "error code {} cannot be sent",
                        e.code.0
                    );
                    error = Some(e);
                }
            }
        }
        forward(&mut conn, &mut peer, &mut rng);
        drain_peer(&mut peer, &mut peer_got);
    }
    if let Some(e) = &error {
        let last_close = peer_got.iter().rev().find_map(|m| match m {
            Message::Close(c) => Some(c.clone()),
            _ => None,
        });
        match last_close {
            Some(Some(f)) => assert_eq!(f.code, e.code, "peer got close {f:?} for error {e:?}"),
            other => panic!("after {e:?} the peer received close {other:?}, not the error's code"),
        }
        assert!(
            conn.send(Message::text("late")).is_err(),
            "send succeeded on a failed connection"
        );
    }

    // Phase 3: scripted sends, checked at the peer. A connection that is no
    // longer open refuses data; the round trip then runs on a fresh pair.
    if conn.state() != State::Open {
        for msg in send_script(wire).into_iter().filter(Message::is_data) {
            let state = conn.state();
            assert_eq!(
                conn.send(msg),
                Err(SendError::Closed),
                "data send in state {state:?}"
            );
        }
        conn = connection(role, cfg, limits.clone());
        peer = connection(other(role), cfg, Limits::default());
        peer_got.clear();
    }
    round_trip(&mut conn, &mut peer, wire, &mut rng, &mut peer_got);
}

/// Send the messages scripted by `script` from `conn`, check each `send`
/// result, and check that `peer` receives exactly the data messages that were
/// accepted, in order.
fn round_trip(
    conn: &mut Connection,
    peer: &mut Connection,
    script: &[u8],
    rng: &mut Rng,
    peer_got: &mut Vec<Message>,
) {
    let mut sent_data = Vec::new();
    for msg in send_script(script) {
        let state = conn.state();
        let open = state == State::Open;
        let (must_fail, exact) = match &msg {
            Message::Ping(b) | Message::Pong(b) if b.len() > 125 => {
                (true, Some(SendError::ControlTooLong(b.len())))
            }
            Message::Close(Some(f)) if !f.code.is_sendable() => {
                (true, Some(SendError::BadCloseCode(f.code.0)))
            }
            // A longer close reason is cut to fit (CloseFrame::encode), not refused.
            _ => (false, None),
        };
        let r = conn.send(msg.clone());
        if open {
            if let Some(want) = exact {
                assert_eq!(r, Err(want), "send of an invalid {msg:?}");
            }
            assert_eq!(r.is_err(), must_fail, "send of {msg:?} returned {r:?}");
        } else if msg.is_data() {
            assert_eq!(r, Err(SendError::Closed), "data send in state {state:?}");
        }
        if r.is_ok() && msg.is_data() {
            sent_data.push(msg);
        }
        forward(conn, peer, rng);
        drain_peer(peer, peer_got);
    }
    // Before phase 3 the peer only got control frames, so its data messages
    // are exactly what was sent here.
    let got_data: Vec<Message> = peer_got.iter().filter(|m| m.is_data()).cloned().collect();
    assert_eq!(
        got_data, sent_data,
        "peer received different data than was sent"
    );
}

/// Encode one frame (RFC 6455 §5.2) with an optional mask: an independent
/// encoder, so the corpus does not depend on the code under test.
pub fn encode_frame(
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

//! permessage-deflate (RFC 7692): negotiation of the four parameters and the
//! per-message codec.
//!
//! # Negotiation
//!
//! * [`negotiate_server`] walks the client's `permessage-deflate` offers in
//!   order and accepts the first one whose parameters are all known, unique and
//!   well-formed (window bits exactly `8`..`15`, no value on the
//!   `*_no_context_takeover` flags). Offers that fail are skipped, as RFC 7692
//!   §5 allows; if none is acceptable the connection runs uncompressed.
//! * [`client_offer`] / [`client_accept`]: the client always offers
//!   `client_max_window_bits` (valueless unless configured) because this codec
//!   can compress with any window the server asks for, and, unless configured
//!   to always reset its context, makes a second offer with
//!   `client_no_context_takeover` that a server may pick; the server's answer is
//!   checked strictly and any deviation is an error naming the parameter.
//!
//! # Codec
//!
//! [`PerMessageDeflate`] compresses with a raw-deflate zlib stream (zlib-rs
//! through flate2) whose window is our role's negotiated `*_max_window_bits`,
//! and inflates with a 15-bit window (a 15-bit inflater reads any stream made
//! with a smaller window, so the peer's window size does not matter).
//!
//! zlib refuses to deflate with an 8-bit window. When 8 bits are negotiated
//! for our side we compress at level 0, which emits only stored blocks: they
//! hold no back-references at all, so a peer with a 256-byte window can always
//! read them. This costs the compression ratio, never interoperability.
//!
//! Both zlib streams are created on first use, so an idle connection that never
//! sends or receives a compressed message holds no zlib memory. Buffers are
//! reused: `compress` and `decompress` write straight into the caller's
//! `BytesMut`. The inflater writes 16 KiB at a time into an output that is
//! never given room past the message size limit
//! (`message::reserve_message`), so a bomb costs at most the limit.

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::extensions::ExtensionOffer;
use crate::message::reserve_message;
use crate::role::Role;

/// The extension token.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// Appended to each message before inflating, removed after deflating
/// (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Largest step by which `decompress` grows its output.
const INFLATE_CHUNK: usize = 16 * 1024;

/// What this endpoint asks for / accepts. Used by both roles. Build with
/// [`DeflateConfig::default`] and the setters:
/// `DeflateConfig::default().level(6)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Ask that the server resets its compression context after each message.
    pub server_no_context_takeover: bool,
    /// Ask that the client resets its compression context after each message.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window the server may use (8..=15). `None`: 15.
    pub server_max_window_bits: Option<u8>,
    /// Largest LZ77 window the client may use (8..=15). `None`: 15.
    pub client_max_window_bits: Option<u8>,
    /// zlib compression level (0..=9; more is capped at 9). Default 1, the
    /// fastest.
    pub level: u32,
    /// Messages shorter than this are sent uncompressed (RSV1 clear).
    /// Default 0.
    pub min_size: usize,
}

crate::setters!(DeflateConfig {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: Option<u8>,
    level: u32,
    min_size: usize,
});

impl Default for DeflateConfig {
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: None,
            level: 1,
            min_size: 0,
        }
    }
}

/// The parameters both sides agreed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compression context after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after each message.
    pub client_no_context_takeover: bool,
    /// 8..=15
    pub server_max_window_bits: u8,
    /// 8..=15
    pub client_max_window_bits: u8,
}

/// Why a compressed message cannot be inflated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeflateError {
    /// It inflates past the limit (the connection closes with 1009).
    #[error("compressed message inflates past the message size limit of {limit} bytes")]
    TooBig {
        /// The limit, in bytes.
        limit: usize,
    },
    /// It is not a valid deflate stream (the connection closes with 1007).
    #[error("invalid compressed data: {0}")]
    Corrupt(String),
}

/// The parameters of one offer or response, parsed and validated.
#[derive(Debug, Default, PartialEq, Eq)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value (only valid in an offer).
    client_max_window_bits: Option<Option<u8>>,
}

/// Window bits as RFC 7692 §7.1.2 spells them: `8`..`15`, no sign, no
/// leading zero, no whitespace.
fn parse_window_bits(name: &str, v: &str) -> Result<u8, String> {
    let ok = match v.as_bytes() {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    };
    ok.ok_or_else(|| format!("{name}={v:?} is not an integer from 8 to 15 (RFC 7692 §7.1.2)"))
}

/// Validate the parameters of one `permessage-deflate` element. `offer`
/// allows a valueless `client_max_window_bits` (client to server only).
fn parse_params(ext: &ExtensionOffer, offer: bool) -> Result<Params, String> {
    let mut p = Params::default();
    for (name, value) in &ext.params {
        let n = name.to_ascii_lowercase();
        let dup = || format!("parameter {n} appears twice (RFC 7692 §7: each at most once)");
        match n.as_str() {
            "server_no_context_takeover" | "client_no_context_takeover" => {
                if value.is_some() {
                    return Err(format!("parameter {n} must not have a value"));
                }
                let flag = if n.starts_with("server") {
                    &mut p.server_no_context_takeover
                } else {
                    &mut p.client_no_context_takeover
                };
                if *flag {
                    return Err(dup());
                }
                *flag = true;
            }
            "server_max_window_bits" => {
                if p.server_max_window_bits.is_some() {
                    return Err(dup());
                }
                let v = value
                    .as_deref()
                    .ok_or_else(|| format!("parameter {n} needs a value from 8 to 15"))?;
                p.server_max_window_bits = Some(parse_window_bits(&n, v)?);
            }
            "client_max_window_bits" => {
                if p.client_max_window_bits.is_some() {
                    return Err(dup());
                }
                let bits = match value.as_deref() {
                    Some(v) => Some(parse_window_bits(&n, v)?),
                    None if offer => None,
                    None => {
                        return Err(format!(
                            "parameter {n} needs a value from 8 to 15 in a response"
                        ))
                    }
                };
                p.client_max_window_bits = Some(bits);
            }
            _ => return Err(format!("unknown permessage-deflate parameter {name:?}")),
        }
    }
    Ok(p)
}

fn cfg_bits(b: Option<u8>) -> u8 {
    b.unwrap_or(15).clamp(8, 15)
}

/// Render the extension element for `params`, naming window bits only when
/// `with_server_bits` / `with_client_bits` say so.
fn render(p: &DeflateParams, with_server_bits: bool, with_client_bits: bool) -> String {
    let mut s = String::from(EXTENSION_NAME);
    if p.server_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    if p.client_no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    if with_server_bits {
        s.push_str(&format!(
            "; server_max_window_bits={}",
            p.server_max_window_bits
        ));
    }
    if with_client_bits {
        s.push_str(&format!(
            "; client_max_window_bits={}",
            p.client_max_window_bits
        ));
    }
    s
}

/// Server side: pick the first acceptable permessage-deflate offer. Returns the
/// agreed parameters and the `Sec-WebSocket-Extensions` response value, or
/// `None` when no offer is acceptable (the server then runs without it).
pub fn negotiate_server(
    offers: &[ExtensionOffer],
    cfg: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    offers
        .iter()
        .filter(|o| o.name.eq_ignore_ascii_case(EXTENSION_NAME))
        .find_map(|o| parse_params(o, true).ok())
        .map(|offer| {
            let our_server = cfg_bits(cfg.server_max_window_bits);
            let server_bits = offer
                .server_max_window_bits
                .map_or(our_server, |b| b.min(our_server));
            let with_server_bits = offer.server_max_window_bits.is_some() || our_server < 15;
            // We may only limit the client's window when it said it supports that.
            let client_bits = match offer.client_max_window_bits {
                Some(b) => cfg_bits(cfg.client_max_window_bits).min(b.unwrap_or(15)),
                None => 15,
            };
            let params = DeflateParams {
                server_no_context_takeover: offer.server_no_context_takeover
                    || cfg.server_no_context_takeover,
                client_no_context_takeover: offer.client_no_context_takeover
                    || cfg.client_no_context_takeover,
                server_max_window_bits: server_bits,
                client_max_window_bits: client_bits,
            };
            let header = render(
                &params,
                with_server_bits,
                offer.client_max_window_bits.is_some(),
            );
            (params, header)
        })
}

/// Client side: the offer to put in `Sec-WebSocket-Extensions`.
///
/// `client_max_window_bits` is always offered (valueless unless configured):
/// this codec can compress with whatever window the server picks.
pub fn client_offer(cfg: &DeflateConfig) -> String {
    let first = offer_with(cfg, cfg.client_no_context_takeover);
    if cfg.client_no_context_takeover {
        return first;
    }
    // A second, fallback offer says we also accept to reset our context after
    // each message, so a server short of memory can ask for it (RFC 7692
    // §7.1.1.2): servers pick the first offer they accept, so context takeover
    // (better compression) stays the default.
    format!("{first}, {}", offer_with(cfg, true))
}

fn offer_with(cfg: &DeflateConfig, client_no_context_takeover: bool) -> String {
    let mut s = String::from(EXTENSION_NAME);
    if cfg.server_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    if client_no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    if let Some(b) = cfg.server_max_window_bits {
        s.push_str(&format!("; server_max_window_bits={}", b.clamp(8, 15)));
    }
    match cfg.client_max_window_bits {
        Some(b) => s.push_str(&format!("; client_max_window_bits={}", b.clamp(8, 15))),
        None => s.push_str("; client_max_window_bits"),
    }
    s
}

/// Client side: check the server's response against what we offered.
pub fn client_accept(
    response: &ExtensionOffer,
    cfg: &DeflateConfig,
) -> Result<DeflateParams, String> {
    if !response.name.eq_ignore_ascii_case(EXTENSION_NAME) {
        return Err(format!(
            "server accepted extension {:?}, but we only offered {EXTENSION_NAME}",
            response.name
        ));
    }
    let r = parse_params(response, false)
        .map_err(|e| format!("server's {EXTENSION_NAME} response: {e}"))?;
    if cfg.server_no_context_takeover && !r.server_no_context_takeover {
        return Err(format!(
            "server's {EXTENSION_NAME} response lacks server_no_context_takeover, which we required"
        ));
    }
    let server_bits = match (cfg.server_max_window_bits, r.server_max_window_bits) {
        (Some(asked), Some(got)) if got > cfg_bits(Some(asked)) => {
            return Err(format!(
                "server's {EXTENSION_NAME} response has server_max_window_bits={got}, larger than the {asked} we asked for"
            ))
        }
        (Some(asked), None) => {
            return Err(format!(
                "server's {EXTENSION_NAME} response lacks server_max_window_bits, which we asked to be at most {asked}"
            ))
        }
        (_, got) => got.unwrap_or(15),
    };
    // client_offer always offers client_max_window_bits, so any value the
    // server picks is acceptable if it is not above our own limit.
    let ours = cfg_bits(cfg.client_max_window_bits);
    let client_bits = match r.client_max_window_bits.flatten() {
        Some(got) => got.min(ours),
        None => ours,
    };
    Ok(DeflateParams {
        server_no_context_takeover: r.server_no_context_takeover,
        client_no_context_takeover: r.client_no_context_takeover || cfg.client_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    })
}

/// The codec for one connection.
pub struct PerMessageDeflate {
    /// Created on first `compress`.
    compressor: Option<Compress>,
    /// Created on first `decompress`.
    decompressor: Option<Decompress>,
    /// Our window: 8..=15 (8 means stored blocks only, see the module docs).
    compress_bits: u8,
    level: u32,
    /// Reset the compressor after each message (our no_context_takeover).
    reset_compressor: bool,
    /// Reset the decompressor after each message (the peer's no_context_takeover).
    reset_decompressor: bool,
    /// The peer ended the deflate stream (BFINAL) inside the current message.
    stream_ended: bool,
    min_size: usize,
}

impl std::fmt::Debug for PerMessageDeflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerMessageDeflate")
            .field("compress_bits", &self.compress_bits)
            .field("level", &self.level)
            .field("reset_compressor", &self.reset_compressor)
            .field("reset_decompressor", &self.reset_decompressor)
            .field("min_size", &self.min_size)
            .finish_non_exhaustive()
    }
}

impl PerMessageDeflate {
    /// The codec of `role` for the negotiated `params`, with the local
    /// settings of `cfg` (level, minimum size). Allocates nothing yet.
    pub fn new(role: Role, params: DeflateParams, cfg: &DeflateConfig) -> Self {
        let (our_bits, our_nct, peer_nct) = match role {
            Role::Server => (
                params.server_max_window_bits,
                params.server_no_context_takeover,
                params.client_no_context_takeover,
            ),
            Role::Client => (
                params.client_max_window_bits,
                params.client_no_context_takeover,
                params.server_no_context_takeover,
            ),
        };
        PerMessageDeflate {
            compressor: None,
            decompressor: None,
            compress_bits: our_bits.clamp(8, 15),
            level: cfg.level.min(9),
            reset_compressor: our_nct,
            reset_decompressor: peer_nct,
            stream_ended: false,
            min_size: cfg.min_size,
        }
    }

    /// Whether a message of `len` bytes should be compressed.
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.min_size
    }

    /// Compress one whole message; append the frame payload (trailing
    /// 0x00 0x00 0xff 0xff removed) to `out`.
    pub fn compress(&mut self, payload: &[u8], out: &mut BytesMut) {
        let bits = self.compress_bits;
        let level = self.level;
        let c = self.compressor.get_or_insert_with(|| {
            if bits <= 8 {
                // Stored blocks only: no back-reference can exceed 256 bytes.
                Compress::new_with_window_bits(Compression::none(), false, 9)
            } else {
                Compress::new_with_window_bits(Compression::new(level), false, bits)
            }
        });
        let start = out.len();
        let mut pos = start;
        let mut consumed = 0usize;
        // Deflate output is at most input + 5 bytes per 16 KiB stored block
        // + a few bytes of flush; start with that, grow if ever needed.
        let mut want = payload.len() + payload.len() / 1024 + 64;
        loop {
            out.resize(pos + want, 0);
            let in_before = c.total_in();
            let out_before = c.total_out();
            // Sync flush never fails on a healthy stream; a failure here would
            // be a zlib bug, and the output so far is still a valid prefix.
            let res = c.compress(&payload[consumed..], &mut out[pos..], FlushCompress::Sync);
            consumed += (c.total_in() - in_before) as usize;
            let produced = (c.total_out() - out_before) as usize;
            pos += produced;
            let full = produced == want;
            if res.is_err() || (consumed >= payload.len() && !full) {
                break;
            }
            want = (want / 2).max(64);
        }
        out.truncate(pos);
        if out[start..].ends_with(&TAIL) {
            out.truncate(pos - TAIL.len());
        }
        if out.len() == start {
            // An empty message is one empty fixed block (RFC 7692 §7.2.3.6).
            out.extend_from_slice(&[0x00]);
        }
        if self.reset_compressor {
            c.reset();
        }
    }

    /// Inflate one frame's payload of a compressed message, appending to `out`.
    /// `fin` marks the message's last frame. Fails with `TooBig` as soon as
    /// `out` would grow past `limit` bytes in total (memory stays bounded).
    pub fn decompress(
        &mut self,
        input: &[u8],
        fin: bool,
        limit: usize,
        out: &mut BytesMut,
    ) -> Result<(), DeflateError> {
        let d = self
            .decompressor
            .get_or_insert_with(|| Decompress::new(false));
        let mut result = Ok(());
        if !self.stream_ended {
            result = inflate_into(d, input, limit, out, &mut self.stream_ended);
        }
        if result.is_ok() && fin && !self.stream_ended {
            result = inflate_into(d, &TAIL, limit, out, &mut self.stream_ended);
        }
        if result.is_err() || (fin && (self.reset_decompressor || self.stream_ended)) {
            d.reset(false);
            self.stream_ended = false;
        }
        result
    }
}

/// Inflate `input` into `out` in steps of at most [`INFLATE_CHUNK`] bytes.
/// `out` never holds more than `limit` bytes: once it is full, the inflater
/// writes into a one-byte probe instead, and any byte there means too big.
fn inflate_into(
    d: &mut Decompress,
    input: &[u8],
    limit: usize,
    out: &mut BytesMut,
    ended: &mut bool,
) -> Result<(), DeflateError> {
    let mut consumed = 0usize;
    let mut inflated = 0usize;
    let mut probe = [0u8; 1];
    loop {
        let chunk = limit.saturating_sub(out.len()).min(INFLATE_CHUNK);
        if out.capacity() - out.len() < chunk {
            // Room for what the rest of this frame inflates to at the ratio
            // seen so far: a bomb gets its whole bound at once instead of
            // growing through every size on the way (each a fresh allocation
            // the allocator keeps a while after the copy), a message of known
            // ratio about its size.
            let ratio = inflated.div_ceil(consumed.max(1));
            let expected = (input.len() - consumed).saturating_mul(ratio);
            reserve_message(out, chunk.max(expected), limit);
        }
        let pos = out.len();
        out.resize(pos + chunk, 0);
        let dst = if chunk == 0 {
            &mut probe[..]
        } else {
            &mut out[pos..]
        };
        let space = dst.len();
        let in_before = d.total_in();
        let out_before = d.total_out();
        let res = d.decompress(&input[consumed..], dst, FlushDecompress::None);
        let took = (d.total_in() - in_before) as usize;
        let produced = (d.total_out() - out_before) as usize;
        consumed += took;
        inflated += produced;
        if chunk == 0 && produced > 0 {
            return Err(DeflateError::TooBig { limit });
        }
        out.truncate(pos + produced);
        let status = res.map_err(|e| {
            DeflateError::Corrupt(e.message().unwrap_or("inflate failed").to_string())
        })?;
        if status == Status::StreamEnd {
            // Bytes after a block with BFINAL set are ignored for the rest of
            // the message, in this frame or a later one (`decompress`): RFC
            // 7692 §7.2.3.4's own example ends with such a byte.
            *ended = true;
            return Ok(());
        }
        if consumed >= input.len() && produced < space {
            return Ok(());
        }
        if took == 0 && produced == 0 {
            return Err(DeflateError::Corrupt(
                "inflater made no progress".to_string(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extensions::parse_extensions;

    fn offers(s: &str) -> Vec<ExtensionOffer> {
        parse_extensions([s.as_bytes()]).unwrap()
    }

    fn one(s: &str) -> ExtensionOffer {
        offers(s).remove(0)
    }

    fn params(snct: bool, cnct: bool, sbits: u8, cbits: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: snct,
            client_no_context_takeover: cnct,
            server_max_window_bits: sbits,
            client_max_window_bits: cbits,
        }
    }

    // ---- regressions found by the fuzzer ----

    fn server_codec() -> PerMessageDeflate {
        PerMessageDeflate::new(
            Role::Server,
            params(false, false, 15, 15),
            &DeflateConfig::default(),
        )
    }

    fn raw_deflate(data: &[u8], finish: bool) -> Vec<u8> {
        use flate2::{Compress, Compression, FlushCompress};
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        let flush = if finish {
            FlushCompress::Finish
        } else {
            FlushCompress::Sync
        };
        c.compress_vec(data, &mut out, flush).unwrap();
        out
    }

    #[test]
    fn corrupt_data_never_leaves_more_than_limit_in_out() {
        // One valid literal, then garbage: the inflater produces a byte past a
        // limit of 0 before it meets the bad block type.
        let mut input = raw_deflate(b"x", false);
        input.truncate(input.len() - 4);
        input.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut out = BytesMut::new();
        let err = server_codec()
            .decompress(&input, true, 0, &mut out)
            .unwrap_err();
        assert!(
            out.is_empty(),
            "out holds {} bytes past a limit of 0 ({err})",
            out.len()
        );
    }

    #[test]
    fn data_after_final_block_is_ignored_in_this_frame_and_the_next() {
        let mut same = raw_deflate(b"hello", true);
        same.extend_from_slice(b"junk");
        let mut codec = server_codec();
        let mut out = BytesMut::new();
        codec.decompress(&same, true, 1 << 20, &mut out).unwrap();
        assert_eq!(&out[..], b"hello");
        // The same bytes in the next frame of a message: the same verdict.
        let mut out = BytesMut::new();
        codec
            .decompress(&raw_deflate(b"hello", true), false, 1 << 20, &mut out)
            .unwrap();
        codec.decompress(b"junk", true, 1 << 20, &mut out).unwrap();
        assert_eq!(&out[..], b"hello");
        // And the codec is ready for the next message.
        let mut out = BytesMut::new();
        codec
            .decompress(&raw_deflate(b"again", true), true, 1 << 20, &mut out)
            .unwrap();
        assert_eq!(&out[..], b"again");
    }

    // ---- negotiation, server side ----

    #[test]
    fn server_accepts_plain_offer() {
        let (p, h) =
            negotiate_server(&offers("permessage-deflate"), &DeflateConfig::default()).unwrap();
        assert_eq!(p, params(false, false, 15, 15));
        assert_eq!(h, "permessage-deflate");
    }

    #[test]
    fn server_answers_browser_offer_without_limiting_by_default() {
        let (p, h) = negotiate_server(
            &offers("permessage-deflate; client_max_window_bits"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert_eq!(p, params(false, false, 15, 15));
        assert_eq!(h, "permessage-deflate; client_max_window_bits=15");
    }

    #[test]
    fn server_limits_client_window_only_when_offered() {
        let cfg = DeflateConfig {
            client_max_window_bits: Some(10),
            ..Default::default()
        };
        let (p, h) =
            negotiate_server(&offers("permessage-deflate; client_max_window_bits"), &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, 10);
        assert_eq!(h, "permessage-deflate; client_max_window_bits=10");
        let (p, h) = negotiate_server(
            &offers("permessage-deflate; client_max_window_bits=9"),
            &cfg,
        )
        .unwrap();
        assert_eq!(p.client_max_window_bits, 9);
        assert_eq!(h, "permessage-deflate; client_max_window_bits=9");
        // Not offered: never sent, client keeps 15.
        let (p, h) = negotiate_server(&offers("permessage-deflate"), &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, 15);
        assert_eq!(h, "permessage-deflate");
    }

    #[test]
    fn server_window_is_min_of_offer_and_config() {
        let cfg = DeflateConfig {
            server_max_window_bits: Some(12),
            ..Default::default()
        };
        let (p, h) = negotiate_server(
            &offers("permessage-deflate; server_max_window_bits=10"),
            &cfg,
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 10);
        assert_eq!(h, "permessage-deflate; server_max_window_bits=10");
        let (p, h) = negotiate_server(
            &offers("permessage-deflate; server_max_window_bits=14"),
            &cfg,
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 12);
        assert_eq!(h, "permessage-deflate; server_max_window_bits=12");
        // Not offered but we want less than 15: we announce it.
        let (p, h) = negotiate_server(&offers("permessage-deflate"), &cfg).unwrap();
        assert_eq!(p.server_max_window_bits, 12);
        assert_eq!(h, "permessage-deflate; server_max_window_bits=12");
        // Offered with default config: echoed.
        let (p, h) = negotiate_server(
            &offers("permessage-deflate; server_max_window_bits=8"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert_eq!(p.server_max_window_bits, 8);
        assert_eq!(h, "permessage-deflate; server_max_window_bits=8");
    }

    #[test]
    fn server_context_takeover_flags() {
        let (p, h) = negotiate_server(
            &offers("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert_eq!(p, params(true, true, 15, 15));
        assert_eq!(
            h,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        let cfg = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..Default::default()
        };
        let (p, h) = negotiate_server(&offers("permessage-deflate"), &cfg).unwrap();
        assert_eq!(p, params(true, true, 15, 15));
        assert_eq!(
            h,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
    }

    #[test]
    fn server_skips_bad_offers_and_takes_first_good_one() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=+9",
            "permessage-deflate; server_max_window_bits=1a",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover=\"x\"",
        ] {
            assert_eq!(
                negotiate_server(&offers(bad), &DeflateConfig::default()),
                None,
                "{bad}"
            );
            let list = format!(
                "x-other, {bad}, permessage-deflate; server_max_window_bits=11, permessage-deflate"
            );
            let (p, h) = negotiate_server(&offers(&list), &DeflateConfig::default()).unwrap();
            assert_eq!(p.server_max_window_bits, 11, "{bad}");
            assert_eq!(h, "permessage-deflate; server_max_window_bits=11");
        }
        assert_eq!(
            negotiate_server(&offers("x-webkit-deflate-frame"), &DeflateConfig::default()),
            None
        );
    }

    #[test]
    fn every_window_value_parses() {
        for b in 8..=15u8 {
            let (p, _) = negotiate_server(
                &offers(&format!("permessage-deflate; server_max_window_bits={b}; client_max_window_bits=\"{b}\"")),
                &DeflateConfig::default(),
            )
            .unwrap();
            assert_eq!((p.server_max_window_bits, p.client_max_window_bits), (b, b));
        }
    }

    // ---- negotiation, client side ----

    #[test]
    fn client_offer_shapes() {
        assert_eq!(
            client_offer(&DeflateConfig::default()),
            "permessage-deflate; client_max_window_bits, \
             permessage-deflate; client_no_context_takeover; client_max_window_bits"
        );
        let cfg = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(11),
            ..Default::default()
        };
        assert_eq!(
            client_offer(&cfg),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=11"
        );
    }

    #[test]
    fn client_and_server_agree() {
        let cfg = DeflateConfig {
            server_no_context_takeover: true,
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(11),
            ..Default::default()
        };
        let (sp, header) =
            negotiate_server(&offers(&client_offer(&cfg)), &DeflateConfig::default()).unwrap();
        let cp = client_accept(&one(&header), &cfg).unwrap();
        assert_eq!(sp, cp);
        assert_eq!(cp, params(true, false, 10, 11));
    }

    #[test]
    fn client_accept_defaults() {
        let p = client_accept(&one("permessage-deflate"), &DeflateConfig::default()).unwrap();
        assert_eq!(p, params(false, false, 15, 15));
        let p = client_accept(
            &one("permessage-deflate; client_max_window_bits=9; server_max_window_bits=12; client_no_context_takeover"),
            &DeflateConfig::default(),
        )
        .unwrap();
        assert_eq!(p, params(false, true, 12, 9));
    }

    #[test]
    fn client_accept_errors_name_the_problem() {
        let d = DeflateConfig::default();
        let cases: Vec<(&str, DeflateConfig, &str)> = vec![
            ("x-foo", d.clone(), "only offered permessage-deflate"),
            (
                "permessage-deflate; foo",
                d.clone(),
                "unknown permessage-deflate parameter \"foo\"",
            ),
            (
                "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
                d.clone(),
                "appears twice",
            ),
            (
                "permessage-deflate; client_max_window_bits",
                d.clone(),
                "needs a value",
            ),
            (
                "permessage-deflate; server_max_window_bits=99",
                d.clone(),
                "not an integer from 8 to 15",
            ),
            (
                "permessage-deflate; client_no_context_takeover=1",
                d.clone(),
                "must not have a value",
            ),
            (
                "permessage-deflate; server_max_window_bits=12",
                DeflateConfig {
                    server_max_window_bits: Some(10),
                    ..Default::default()
                },
                "larger than the 10 we asked for",
            ),
            (
                "permessage-deflate",
                DeflateConfig {
                    server_max_window_bits: Some(10),
                    ..Default::default()
                },
                "lacks server_max_window_bits",
            ),
            (
                "permessage-deflate",
                DeflateConfig {
                    server_no_context_takeover: true,
                    ..Default::default()
                },
                "lacks server_no_context_takeover",
            ),
        ];
        for (resp, cfg, want) in cases {
            let err = client_accept(&one(resp), &cfg).unwrap_err();
            assert!(err.contains(want), "{resp}: {err}");
        }
    }

    #[test]
    fn client_window_never_exceeds_our_limit() {
        let cfg = DeflateConfig {
            client_max_window_bits: Some(10),
            ..Default::default()
        };
        let p = client_accept(&one("permessage-deflate; client_max_window_bits=12"), &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, 10);
        let p = client_accept(&one("permessage-deflate"), &cfg).unwrap();
        assert_eq!(p.client_max_window_bits, 10);
    }

    // ---- codec ----

    fn codec(role: Role, p: DeflateParams) -> PerMessageDeflate {
        PerMessageDeflate::new(role, p, &DeflateConfig::default())
    }

    fn comp(c: &mut PerMessageDeflate, m: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        c.compress(m, &mut out);
        out.to_vec()
    }

    fn decomp(c: &mut PerMessageDeflate, frames: &[&[u8]]) -> Result<Vec<u8>, DeflateError> {
        let mut out = BytesMut::new();
        for (i, f) in frames.iter().enumerate() {
            c.decompress(f, i + 1 == frames.len(), usize::MAX, &mut out)?;
        }
        Ok(out.to_vec())
    }

    fn sample(n: usize, seed: u8) -> Vec<u8> {
        // Compressible but not trivial: words with a rolling variation.
        let words: [&[u8]; 5] = [
            b"switchyard ",
            b"upgrade ",
            b"websocket ",
            b"deflate ",
            b"frame ",
        ];
        let mut v = Vec::with_capacity(n);
        let mut i = seed as usize;
        while v.len() < n {
            v.extend_from_slice(words[i % words.len()]);
            v.push(b'0' + (i % 10) as u8);
            i = i.wrapping_mul(31).wrapping_add(7);
        }
        v.truncate(n);
        v
    }

    #[test]
    fn rfc7692_hello_examples() {
        let hello: &[u8] = &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        // §7.2.3.1: one message.
        let mut r = codec(Role::Client, params(false, false, 15, 15));
        assert_eq!(decomp(&mut r, &[hello]).unwrap(), b"Hello");
        // §7.2.3.2: split over two frames.
        let mut r = codec(Role::Client, params(false, false, 15, 15));
        assert_eq!(
            decomp(&mut r, &[&hello[..3], &hello[3..]]).unwrap(),
            b"Hello"
        );
        // §7.2.3.2: shared sliding window, second message uses a back-reference.
        let mut r = codec(Role::Client, params(false, false, 15, 15));
        assert_eq!(decomp(&mut r, &[hello]).unwrap(), b"Hello");
        assert_eq!(
            decomp(&mut r, &[&[0xf2, 0x00, 0x11, 0x00, 0x00]]).unwrap(),
            b"Hello"
        );
        // §7.2.3.3: stored block.
        let stored: &[u8] = &[
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(
            decomp(
                &mut codec(Role::Client, params(false, false, 15, 15)),
                &[stored]
            )
            .unwrap(),
            b"Hello"
        );
        // §7.2.3.4: BFINAL set, then the next message starts a new stream.
        let mut r = codec(Role::Client, params(false, false, 15, 15));
        let fin: &[u8] = &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(decomp(&mut r, &[fin]).unwrap(), b"Hello");
        assert_eq!(decomp(&mut r, &[hello]).unwrap(), b"Hello");
        // §7.2.3.5: two deflate blocks in one message.
        let two: &[u8] = &[
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        assert_eq!(
            decomp(
                &mut codec(Role::Client, params(false, false, 15, 15)),
                &[two]
            )
            .unwrap(),
            b"Hello"
        );
        // §7.2.3.6: empty message.
        assert_eq!(
            decomp(
                &mut codec(Role::Client, params(false, false, 15, 15)),
                &[&[0x00]]
            )
            .unwrap(),
            b""
        );
    }

    #[test]
    fn our_hello_matches_rfc_and_context_rules() {
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        // With no_context_takeover every "Hello" is the same 7 bytes.
        let mut s = codec(Role::Server, params(true, false, 15, 15));
        assert_eq!(comp(&mut s, b"Hello"), hello);
        assert_eq!(comp(&mut s, b"Hello"), hello);
        // With context takeover the second one is shorter (a back-reference).
        let mut s = codec(Role::Server, params(false, false, 15, 15));
        assert_eq!(comp(&mut s, b"Hello"), hello);
        let second = comp(&mut s, b"Hello");
        assert!(second.len() < hello.len(), "{second:02x?}");
        let mut r = codec(Role::Client, params(false, false, 15, 15));
        assert_eq!(decomp(&mut r, &[&hello]).unwrap(), b"Hello");
        assert_eq!(decomp(&mut r, &[&second]).unwrap(), b"Hello");
        // The client's own no_context_takeover governs the client's compressor.
        let mut c = codec(Role::Client, params(false, true, 15, 15));
        assert_eq!(comp(&mut c, b"Hello"), hello);
        assert_eq!(comp(&mut c, b"Hello"), hello);
    }

    #[test]
    fn peer_no_context_takeover_resets_our_inflater() {
        // The server said it resets; a later back-reference into the old
        // window must then fail, proving our inflater forgot the old message.
        let mut r = codec(Role::Client, params(true, false, 15, 15));
        assert_eq!(
            decomp(&mut r, &[&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]]).unwrap(),
            b"Hello"
        );
        assert!(matches!(
            decomp(&mut r, &[&[0xf2, 0x00, 0x11, 0x00, 0x00]]),
            Err(DeflateError::Corrupt(_))
        ));
    }

    #[test]
    fn empty_message() {
        let mut s = codec(Role::Server, params(false, false, 15, 15));
        let e = comp(&mut s, b"");
        assert!(e == [0x00] || e == [0x02, 0x00], "{e:02x?}");
        let mut r = codec(Role::Client, params(false, false, 15, 15));
        assert_eq!(decomp(&mut r, &[&e]).unwrap(), b"");
        // And the stream goes on fine afterwards.
        let m = comp(&mut s, b"after");
        assert_eq!(decomp(&mut r, &[&m]).unwrap(), b"after");
    }

    #[test]
    fn round_trip_every_parameter_combination() {
        let msgs: Vec<Vec<u8>> = vec![
            sample(3000, 1),
            sample(3000, 1),
            b"x".to_vec(),
            Vec::new(),
            sample(70_000, 3),
        ];
        for snct in [false, true] {
            for cnct in [false, true] {
                for sb in 8..=15u8 {
                    for cb in 8..=15u8 {
                        let p = params(snct, cnct, sb, cb);
                        let mut server = codec(Role::Server, p);
                        let mut client = codec(Role::Client, p);
                        for m in &msgs {
                            let wire = comp(&mut server, m);
                            assert_eq!(&decomp(&mut client, &[&wire]).unwrap(), m, "{p:?}");
                            let wire = comp(&mut client, m);
                            // Split in 3 frames to exercise fragmentation.
                            let (a, rest) = wire.split_at(wire.len() / 3);
                            let (b, c) = rest.split_at(rest.len() / 2);
                            assert_eq!(&decomp(&mut server, &[a, b, c]).unwrap(), m, "{p:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn window_8_uses_no_back_references() {
        // Zeros compress massively with any LZ77 window; with window 8 we
        // emit stored blocks only, so output is at least as large as input.
        let zeros = vec![0u8; 10_000];
        let mut c = codec(Role::Server, params(false, false, 8, 15));
        let wire = comp(&mut c, &zeros);
        assert!(wire.len() >= zeros.len(), "{} bytes", wire.len());
        let mut r = codec(Role::Client, params(false, false, 8, 15));
        assert_eq!(decomp(&mut r, &[&wire]).unwrap(), zeros);
        // Window 9 does compress.
        let mut c = codec(Role::Server, params(false, false, 9, 15));
        assert!(comp(&mut c, &zeros).len() < 1000);
    }

    #[test]
    fn interop_with_reference_flate2() {
        let msg = sample(50_000, 9);
        // Ours -> reference inflater.
        let mut ours = codec(Role::Server, params(false, false, 15, 15));
        let mut reference = Decompress::new(false);
        for _ in 0..2 {
            let mut wire = comp(&mut ours, &msg);
            wire.extend_from_slice(&TAIL);
            let mut out = Vec::with_capacity(msg.len() + 16);
            reference
                .decompress_vec(&wire, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(out, msg);
        }
        // Reference deflater -> ours.
        let mut reference = Compress::new_with_window_bits(Compression::new(6), false, 10);
        let mut ours = codec(Role::Client, params(false, false, 10, 15));
        for _ in 0..2 {
            let mut wire = Vec::with_capacity(msg.len() + 1024);
            reference
                .compress_vec(&msg, &mut wire, FlushCompress::Sync)
                .unwrap();
            assert!(wire.ends_with(&TAIL));
            wire.truncate(wire.len() - 4);
            assert_eq!(decomp(&mut ours, &[&wire]).unwrap(), msg);
        }
    }

    #[test]
    fn bomb_is_stopped_with_flat_memory() {
        let zeros = vec![0u8; 100 * 1024 * 1024];
        let mut c = Compress::new(Compression::new(9), false);
        let mut wire = Vec::with_capacity(200 * 1024);
        c.compress_vec(&zeros, &mut wire, FlushCompress::Sync)
            .unwrap();
        drop(zeros);
        wire.truncate(wire.len() - 4);
        assert!(wire.len() < 200 * 1024, "{}", wire.len());
        let mut r = codec(Role::Server, params(false, false, 15, 15));
        let mut out = BytesMut::new();
        let limit = 1_000_000;
        let err = r.decompress(&wire, true, limit, &mut out).unwrap_err();
        assert_eq!(err, DeflateError::TooBig { limit });
        assert!(out.len() <= limit);
        assert!(out.capacity() < 2_000_000, "capacity {}", out.capacity());
    }

    #[test]
    fn a_bomb_fills_exactly_its_limit_allocated_once() {
        let mut c = Compress::new(Compression::new(9), false);
        let mut wire = Vec::with_capacity(64 * 1024);
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..40 {
            c.compress_vec(&zeros, &mut wire, FlushCompress::None)
                .unwrap();
        }
        c.compress_vec(&[], &mut wire, FlushCompress::Sync).unwrap();
        wire.truncate(wire.len() - 4);
        let limit = 3 << 20;
        let mut r = codec(Role::Server, params(false, false, 15, 15));
        let mut out = BytesMut::new();
        let err = r.decompress(&wire, true, limit, &mut out).unwrap_err();
        assert_eq!(err, DeflateError::TooBig { limit });
        // The output reached the limit, never past it, in one allocation of
        // the limit (the ratio of the first 16 KiB foretold the rest).
        assert_eq!((out.len(), out.capacity()), (limit, limit));
    }

    #[test]
    fn limit_counts_across_frames_and_exact_fit_passes() {
        let msg = sample(10_000, 4);
        let mut s = codec(Role::Server, params(false, false, 15, 15));
        let wire = comp(&mut s, &msg);
        let mut r = codec(Role::Client, params(false, false, 15, 15));
        let mut out = BytesMut::new();
        r.decompress(&wire, true, msg.len(), &mut out).unwrap();
        assert_eq!(&out[..], &msg[..]);
        // One byte less: too big, even spread over frames.
        let wire2 = comp(&mut s, &msg);
        let mut out = BytesMut::new();
        let (a, b) = wire2.split_at(wire2.len() / 2);
        let first = r.decompress(a, false, msg.len() - 1, &mut out);
        let res = first.and_then(|_| r.decompress(b, true, msg.len() - 1, &mut out));
        assert_eq!(
            res,
            Err(DeflateError::TooBig {
                limit: msg.len() - 1
            })
        );
    }

    #[test]
    fn corrupt_input() {
        let mut r = codec(Role::Client, params(false, false, 15, 15));
        // BTYPE=11 is reserved.
        assert!(matches!(
            decomp(&mut r, &[&[0xff, 0xff, 0xff]]),
            Err(DeflateError::Corrupt(_))
        ));
        // Stored block with bad LEN/NLEN.
        let mut r = codec(Role::Client, params(false, false, 15, 15));
        assert!(matches!(
            decomp(&mut r, &[&[0x00, 0x05, 0x00, 0x00, 0x00]]),
            Err(DeflateError::Corrupt(_))
        ));
        // Data after a final block is ignored (see
        // data_after_final_block_is_ignored_in_this_frame_and_the_next).
        let mut r = codec(Role::Client, params(false, false, 15, 15));
        let fin: &[u8] = &[0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(decomp(&mut r, &[fin, &[0x01]]).unwrap(), b"Hello");
    }

    #[test]
    fn should_compress_uses_min_size() {
        let cfg = DeflateConfig {
            min_size: 10,
            ..Default::default()
        };
        let c = PerMessageDeflate::new(Role::Server, params(false, false, 15, 15), &cfg);
        assert!(!c.should_compress(9));
        assert!(c.should_compress(10));
    }

    #[test]
    fn streams_are_lazy() {
        let mut c = codec(Role::Server, params(false, false, 15, 15));
        assert!(c.compressor.is_none() && c.decompressor.is_none());
        comp(&mut c, b"a");
        assert!(c.compressor.is_some() && c.decompressor.is_none());
    }
}

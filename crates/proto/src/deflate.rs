//! permessage-deflate (RFC 7692): negotiation of the four parameters and the
//! per-message codec.
//!
//! STUB: API fixed, bodies to be written.

use bytes::BytesMut;

use crate::connection::Role;
use crate::extensions::ExtensionOffer;

/// What this endpoint asks for / accepts. Used by both roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Ask that the server resets its compression context after each message.
    pub server_no_context_takeover: bool,
    /// Ask that the client resets its compression context after each message.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window the server may use (8..=15). `None`: 15.
    pub server_max_window_bits: Option<u8>,
    /// Largest LZ77 window the client may use (8..=15). `None`: 15.
    pub client_max_window_bits: Option<u8>,
    /// zlib compression level (0..=9). Default 6... set by Default.
    pub level: u32,
    /// Messages shorter than this are sent uncompressed (RSV1 clear).
    pub min_size: usize,
}

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
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    /// 8..=15
    pub server_max_window_bits: u8,
    /// 8..=15
    pub client_max_window_bits: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeflateError {
    #[error("compressed message inflates past the message size limit of {limit} bytes")]
    TooBig { limit: usize },
    #[error("invalid compressed data: {0}")]
    Corrupt(String),
}

/// Server side: pick the first acceptable permessage-deflate offer. Returns the
/// agreed parameters and the `Sec-WebSocket-Extensions` response value, or
/// `None` when no offer is acceptable (the server then runs without it).
pub fn negotiate_server(
    _offers: &[ExtensionOffer],
    _cfg: &DeflateConfig,
) -> Option<(DeflateParams, String)> {
    todo!()
}

/// Client side: the offer to put in `Sec-WebSocket-Extensions`.
pub fn client_offer(_cfg: &DeflateConfig) -> String {
    todo!()
}

/// Client side: check the server's response against what we offered.
pub fn client_accept(_response: &ExtensionOffer, _cfg: &DeflateConfig) -> Result<DeflateParams, String> {
    todo!()
}

/// The codec for one connection.
pub struct PerMessageDeflate {}

impl PerMessageDeflate {
    pub fn new(_role: Role, _params: DeflateParams, _cfg: &DeflateConfig) -> Self {
        todo!()
    }

    /// Whether a message of `len` bytes should be compressed.
    pub fn should_compress(&self, _len: usize) -> bool {
        todo!()
    }

    /// Compress one whole message; append the frame payload (trailing
    /// 0x00 0x00 0xff 0xff removed) to `out`.
    pub fn compress(&mut self, _payload: &[u8], _out: &mut BytesMut) {
        todo!()
    }

    /// Inflate one frame's payload of a compressed message, appending to `out`.
    /// `fin` marks the message's last frame. Fails with `TooBig` as soon as
    /// `out` would grow past `limit` bytes in total (memory stays bounded).
    pub fn decompress(
        &mut self,
        _input: &[u8],
        _fin: bool,
        _limit: usize,
        _out: &mut BytesMut,
    ) -> Result<(), DeflateError> {
        todo!()
    }
}

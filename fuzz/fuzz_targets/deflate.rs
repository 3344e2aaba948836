//! permessage-deflate codec: decompression of arbitrary bytes stays within
//! its limit, and compress -> decompress returns the input, for every
//! window-bits / no-context-takeover setting.
//!
//! Input: `[cfg, chunk_seed, lim, rest...]`. `cfg` picks the parameters as in
//! `switchyard_fuzz::deflate_setup` and (bit 0) which role compresses; `lim`
//! picks the decompression limit and the compression level. Part B splits
//! `rest` into messages at each `|`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchyard_fuzz::{chunks, deflate_setup};
use switchyard_proto::deflate::{DeflateError, PerMessageDeflate};
use switchyard_proto::Role;

fn decompress_all(
    d: &mut PerMessageDeflate,
    payload: &[u8],
    chunk_seed: u8,
    limit: usize,
    out: &mut BytesMut,
) -> Result<(), DeflateError> {
    let pieces = chunks(chunk_seed, payload);
    let last = pieces.len() - 1;
    for (i, piece) in pieces.into_iter().enumerate() {
        d.decompress(piece, i == last, limit, out)?;
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let [cfg, chunk_seed, lim, rest @ ..] = data else {
        return;
    };
    let (cfg, chunk_seed, lim) = (*cfg, *chunk_seed, *lim);
    let (params, mut config) = deflate_setup(cfg);
    config.level = u32::from(lim % 10);
    let (tx_role, rx_role) = if cfg & 1 == 0 {
        (Role::Server, Role::Client)
    } else {
        (Role::Client, Role::Server)
    };

    // Part A: arbitrary input, two messages in a row, small limit.
    let limit = usize::from(lim) * 4;
    let mut d = PerMessageDeflate::new(rx_role, params, &config);
    for msg in rest.splitn(2, |&b| b == b'|') {
        let mut out = BytesMut::new();
        let r = decompress_all(&mut d, msg, chunk_seed, limit, &mut out);
        assert!(
            out.len() <= limit,
            "inflated {} bytes with a limit of {limit} ({r:?})",
            out.len()
        );
        match r {
            Ok(()) => {}
            Err(DeflateError::TooBig { limit: l }) => {
                assert_eq!(l, limit, "TooBig reports the wrong limit")
            }
            Err(_) => break,
        }
        if r.is_err() {
            break;
        }
    }

    // Part A2: the same arbitrary input with a roomy limit, in one piece and
    // in frames: the frame boundaries must not change the outcome.
    let roomy = 1 << 16;
    let mut whole = BytesMut::new();
    let mut split = BytesMut::new();
    let rw = decompress_all(
        &mut PerMessageDeflate::new(rx_role, params, &config),
        rest,
        0,
        roomy,
        &mut whole,
    );
    let rs = decompress_all(
        &mut PerMessageDeflate::new(rx_role, params, &config),
        rest,
        chunk_seed,
        roomy,
        &mut split,
    );
    assert_eq!(rw.is_ok(), rs.is_ok(), "whole: {rw:?}, in frames: {rs:?}");
    if rw.is_ok() {
        assert_eq!(
            whole, split,
            "inflated output depends on the frame boundaries"
        );
    }

    // Part B: round trip of several messages through one compressor and one
    // decompressor (so context takeover is exercised).
    let mut c = PerMessageDeflate::new(tx_role, params, &config);
    let mut d = PerMessageDeflate::new(rx_role, params, &config);
    for (i, msg) in rest.split(|&b| b == b'|').take(8).enumerate() {
        let mut wire = BytesMut::new();
        c.compress(msg, &mut wire);
        if i == 0 && !msg.is_empty() {
            // One byte under the exact size must fail with TooBig.
            let mut fresh = PerMessageDeflate::new(rx_role, params, &config);
            let mut out = BytesMut::new();
            let r = decompress_all(&mut fresh, &wire, chunk_seed, msg.len() - 1, &mut out);
            assert_eq!(
                r,
                Err(DeflateError::TooBig {
                    limit: msg.len() - 1
                }),
                "limit one under the size"
            );
            assert!(out.len() < msg.len());
        }
        let mut out = BytesMut::new();
        let r = decompress_all(&mut d, &wire, chunk_seed, msg.len(), &mut out);
        assert_eq!(
            r,
            Ok(()),
            "message {i} of {} bytes ({} compressed) did not inflate",
            msg.len(),
            wire.len()
        );
        assert_eq!(
            &out[..],
            msg,
            "message {i} changed by compress + decompress"
        );
    }
});

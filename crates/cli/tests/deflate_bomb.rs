//! A permessage-deflate bomb against a real `switchyard serve` process: a
//! 261 KiB compressed message that would inflate to about 260 MiB, sent to
//! `/echo` under the default 32 MiB message size limit. The server closes
//! with 1009, and its resident memory while inflating stays within the limit
//! plus 4 MiB: the peak (VmHWM, reset through /proc/PID/clear_refs after a
//! warm-up) minus the resident size at that reset.

mod common;

use std::time::Duration;

use common::switchyard;
use flate2::{Compress, Compression, FlushCompress};
use futures_util::{SinkExt, StreamExt};
use switchyard::{CloseCode, Message};
use tokio::io::AsyncWriteExt;

/// `max_message_size`'s default (docs/configuration.md).
const LIMIT: u64 = 32 << 20;
/// What the server may hold beyond the inflated message itself.
const SLACK: u64 = 4 << 20;

/// A raw deflate stream of about `compressed` bytes that inflates to zeros,
/// without its 0x00 0x00 0xff 0xff tail (RFC 7692 §7.2.1). Built from one
/// 1 MiB block of zeros fed repeatedly, so the test never holds the inflated
/// size itself.
fn bomb(compressed: usize) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut c = Compress::new(Compression::best(), false);
    let mut out = Vec::with_capacity(compressed + (64 << 10));
    while out.len() < compressed {
        c.compress_vec(&zeros, &mut out, FlushCompress::None)
            .unwrap();
    }
    c.compress_vec(&[], &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A masked binary frame with RSV1 (compressed) set.
fn compressed_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | 0x40 | 0x2, 0x80 | 127];
    f.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A `kB` field of /proc/PID/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        * 1024
}

#[tokio::test]
async fn deflate_bomb_is_closed_with_1009_within_the_limit_plus_4_mib() {
    let wire = bomb(261 << 10);
    assert!(
        (260 << 10..270 << 10).contains(&wire.len()),
        "{}",
        wire.len()
    );
    let (server, addrs) = switchyard(&["--threads", "1", "serve", "--listen", "127.0.0.1:0"], 1);
    let url = format!("ws://{}/echo", addrs[0]);

    // Warm-up: compressed round trips of the bomb's size on the same
    // connection allocate what the bomb needs besides the inflated message
    // (zlib streams, a receive buffer for a 261 KiB frame). The allocator's
    // first block of each size is mapped with transparent huge pages, 2 MiB
    // at a time; the peak below is then the bomb's own.
    let (mut ws, _) = switchyard::ClientBuilder::new()
        .connect(&url)
        .await
        .unwrap();
    assert!(ws.negotiated().deflate.is_some(), "deflate negotiated");
    let noise: Vec<u8> = (0..wire.len() as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for msg in [
        Message::text("warm-up ".repeat(4096)),
        Message::binary(noise),
    ] {
        ws.send(msg.clone()).await.unwrap();
        match ws.next().await {
            Some(Ok(echo)) => assert_eq!(echo, msg),
            other => panic!("expected the echo, got {other:?}"),
        }
    }

    let pid = server.pid();
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let base = status_bytes(pid, "VmRSS");
    ws.get_mut()
        .write_all(&compressed_frame(&wire))
        .await
        .unwrap();
    let close = tokio::time::timeout(Duration::from_secs(30), ws.next())
        .await
        .expect("the server's answer within 30 s");
    match close {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::MESSAGE_TOO_BIG),
        other => panic!("expected close 1009, got {other:?}\n{}", server.stderr()),
    }
    let peak = status_bytes(pid, "VmHWM");
    let grew = peak.saturating_sub(base);
    eprintln!(
        "resident {} KiB before the bomb, peak {} KiB: +{} KiB",
        base >> 10,
        peak >> 10,
        grew >> 10
    );
    assert!(
        grew < LIMIT + SLACK,
        "the bomb raised the server's peak resident memory by {} KiB, more than the \
         {} KiB limit plus {} KiB",
        grew >> 10,
        LIMIT >> 10,
        SLACK >> 10
    );
}

//! Writes the seed corpora in `fuzz/corpus/<target>/`: a handful of small,
//! meaningful inputs per target, in each target's input layout.
//!
//! Run from `fuzz/`: `cargo run --example gen_corpus`. Deterministic: the same
//! files come out every time (fixed masks, fixed compression level).

use std::fs;
use std::path::Path;

use flate2::{Compress, Compression, FlushCompress};
use switchyard_fuzz::encode_frame;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

/// Raw DEFLATE of one message with a sync flush, trailing `00 00 ff ff`
/// removed (RFC 7692 §7.2.1); `c` keeps its context across calls.
fn deflate(c: &mut Compress, msg: &[u8]) -> Vec<u8> {
    // Room for the worst case of a small input: stored blocks plus the flush.
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 8 + 64);
    let start = c.total_in();
    c.compress_vec(msg, &mut out, FlushCompress::Sync)
        .expect("deflate");
    assert_eq!(
        c.total_in() - start,
        msg.len() as u64,
        "generator: output buffer too small"
    );
    assert!(
        out.ends_with(&[0, 0, 0xff, 0xff]),
        "generator: no sync-flush trailer"
    );
    out.truncate(out.len() - 4);
    out
}

fn fresh() -> Compress {
    Compress::new(Compression::fast(), false)
}

struct Writer<'a> {
    root: &'a Path,
}

impl Writer<'_> {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        fs::write(dir.join(name), bytes).expect("write corpus file");
    }
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

const UPGRADE_REQ: &str = "GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nOrigin: https://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

const RESP_101: &str =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn head_request(w: &Writer) {
    let t = "head_request";
    let heads: &[(&str, &str)] = &[
        ("get_simple", "GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("get_upgrade_ws", UPGRADE_REQ),
        ("post_with_body", "POST /submit?x=1 HTTP/1.1\r\nHost: h:8080\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"),
        ("upgrade_h2c_tls", "OPTIONS * HTTP/1.1\r\nHost: h\r\nUpgrade: h2c, TLS/1.3, websocket\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"),
        ("connect_authority", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"),
        ("http10", "GET /old HTTP/1.0\r\n\r\n"),
        ("resp_101", RESP_101),
        ("resp_426", "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"),
        ("resp_200_no_reason", "HTTP/1.1 200 \r\nServer: x\r\n\r\n"),
        ("bad_bare_lf", "GET / HTTP/1.1\nHost: a\n\n"),
        ("bad_obs_fold", "GET / HTTP/1.1\r\nHost: a\r\nX-Long: one\r\n two\r\n\r\n"),
        ("bad_space_before_colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        ("bad_nul", "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n"),
        ("incomplete", "GET /slow HTTP/1.1\r\nHost: a\r\nX-Partial: "),
    ];
    for (name, head) in heads {
        w.put(t, name, &cat(&[&[0], head.as_bytes()]));
    }
    // The same upgrade request split in three and byte-wise near the end.
    w.put(
        t,
        "get_upgrade_ws_split",
        &cat(&[&[3, 16, 100, 250], UPGRADE_REQ.as_bytes()]),
    );
    w.put(
        t,
        "resp_101_split",
        &cat(&[&[2, 1, 128], RESP_101.as_bytes()]),
    );
    // Frame bytes right after the head belong to the caller, not the head.
    let trailing = cat(&[
        &[0],
        b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        &encode_frame(true, false, TEXT, b"Hello", MASK),
    ]);
    w.put(t, "get_upgrade_trailing_frame", &trailing);
    // Many headers, to reach the count cap (32 in the target).
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..40 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    w.put(t, "too_many_headers", &cat(&[&[0], many.as_bytes()]));
    // Tiny caps (bit 3): the upgrade request is over 200 bytes.
    w.put(
        t,
        "tiny_caps_too_large",
        &cat(&[&[0x08], UPGRADE_REQ.as_bytes()]),
    );
    w.put(
        t,
        "tiny_caps_fits",
        &cat(&[&[0x08], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]),
    );
}

/// Frames one side sends: `mask` for a client's, `None` for a server's.
/// `cfg_deflate` is the target's cfg byte that negotiates deflate with the
/// sender's window bits at 15.
fn connection(w: &Writer, t: &str, mask: Option<[u8; 4]>, cfg_deflate: u8) {
    let f = |fin, op, p: &[u8]| encode_frame(fin, false, op, p, mask);
    let wrong_mask = if mask.is_some() { None } else { MASK };
    let with = |cfg: u8, seed: u8, wire: Vec<u8>| cat(&[&[cfg, seed], &wire]);

    w.put(t, "text_hello", &with(0, 0, f(true, TEXT, b"Hello")));
    w.put(
        t,
        "binary_then_close",
        &with(
            0,
            0,
            cat(&[
                &f(true, BINARY, &[0, 1, 2, 3, 255]),
                &f(true, CLOSE, &cat(&[&1000u16.to_be_bytes(), b"bye"])),
            ]),
        ),
    );
    w.put(
        t,
        "fragmented_text_with_ping",
        &with(
            0,
            1,
            cat(&[
                &f(false, TEXT, "héllo ".as_bytes()),
                &f(true, PING, b"p"),
                &f(false, CONT, b""),
                &f(true, CONT, "wörld".as_bytes()),
            ]),
        ),
    );
    w.put(
        t,
        "utf8_split_across_fragments",
        &with(
            0,
            2,
            cat(&[&f(false, TEXT, &[0xe2, 0x82]), &f(true, CONT, &[0xac])]),
        ),
    );
    w.put(
        t,
        "ping_pong_close_empty",
        &with(
            0,
            3,
            cat(&[
                &f(true, PING, b"are you there"),
                &f(true, PONG, b"x"),
                &f(true, CLOSE, b""),
            ]),
        ),
    );
    w.put(
        t,
        "len16_binary",
        &with(0, 2, f(true, BINARY, &vec![0x42; 300])),
    );
    // A 64-bit length (70000) over the tiny frame limit; only the start of
    // the payload follows, the limit must trip on the header alone.
    let mut big = encode_frame(true, false, BINARY, &[7; 70000], mask);
    big.truncate(2 + 8 + if mask.is_some() { 4 } else { 0 } + 16);
    w.put(t, "len64_header_small_limits", &with(0x02, 0, big));
    w.put(
        t,
        "too_many_fragments_small_limits",
        &with(
            0x02,
            1,
            (0..10)
                .flat_map(|i| f(i == 9, if i == 0 { BINARY } else { CONT }, b"ab"))
                .collect(),
        ),
    );
    // Violations.
    w.put(
        t,
        "bad_utf8_text",
        &with(0, 0, f(true, TEXT, &[0x66, 0xff, 0x66])),
    );
    w.put(
        t,
        "bad_masking",
        &with(0, 0, encode_frame(true, false, TEXT, b"x", wrong_mask)),
    );
    w.put(t, "bad_reserved_opcode", &with(0, 0, f(true, 0x3, b"")));
    w.put(t, "bad_fragmented_ping", &with(0, 0, f(false, PING, b"")));
    w.put(t, "bad_long_ping", &with(0, 0, f(true, PING, &[1; 126])));
    w.put(
        t,
        "bad_close_code",
        &with(0, 0, f(true, CLOSE, &1005u16.to_be_bytes())),
    );
    w.put(
        t,
        "bad_continuation_first",
        &with(0, 0, f(true, CONT, b"x")),
    );
    w.put(
        t,
        "bad_rsv1_without_deflate",
        &with(0, 0, encode_frame(true, true, TEXT, b"x", mask)),
    );
    // Compressed messages (RSV1 on the first frame only), with context takeover.
    let mut c = fresh();
    let m1 = deflate(&mut c, b"Hello, compressed world! Hello, compressed world!");
    let m2 = deflate(&mut c, b"Hello, compressed world! again");
    w.put(
        t,
        "deflate_two_messages",
        &with(
            cfg_deflate,
            0,
            cat(&[
                &encode_frame(true, true, TEXT, &m1, mask),
                &encode_frame(true, true, TEXT, &m2, mask),
            ]),
        ),
    );
    let mut c = fresh();
    let m = deflate(&mut c, &[b'z'; 4000]);
    let (a, b) = m.split_at(m.len() / 2);
    w.put(
        t,
        "deflate_fragmented_with_ping",
        &with(
            cfg_deflate,
            1,
            cat(&[
                &encode_frame(false, true, BINARY, a, mask),
                &f(true, PING, b""),
                &f(true, CONT, b),
                &f(true, TEXT, b"plain"),
            ]),
        ),
    );
    let mut c = fresh();
    let bomb = deflate(&mut c, &vec![0; 10_000]);
    w.put(
        t,
        "deflate_bomb_small_limits",
        &with(
            cfg_deflate | 0x02,
            0,
            encode_frame(true, true, BINARY, &bomb, mask),
        ),
    );
    w.put(
        t,
        "bad_deflate_rsv1_on_control",
        &with(cfg_deflate, 0, encode_frame(true, true, PING, b"", mask)),
    );
    // A send script: the wire bytes also script what the connection sends
    // (here after a failure, so the round trip runs on a fresh pair).
    w.put(
        t,
        "send_script",
        &with(
            0,
            5,
            vec![
                0, 3, b'a', b'b', b'c', 1, 2, 9, 9, 2, 1, b'p', 4, 4, 0x03, 0xe8, b'o', b'k',
            ],
        ),
    );
}

fn deflate_corpus(w: &Writer) {
    let t = "deflate";
    let text = b"hello|hello hello hello|{\"type\":\"update\",\"id\":1}|{\"type\":\"update\",\"id\":2}||tail";
    for (i, cfg) in [0x00u8, 0x01, 0x0c, 0x71, 0x3d, 0xf0]
        .into_iter()
        .enumerate()
    {
        w.put(
            t,
            &format!("roundtrip_cfg{cfg:02x}"),
            &cat(&[&[cfg, (i * 37) as u8, 0x40 + i as u8], text]),
        );
    }
    let mut c = fresh();
    let real = deflate(&mut c, b"Hello Hello Hello Hello");
    w.put(t, "real_stream", &cat(&[&[0, 0, 200], &real]));
    let mut c = fresh();
    let bomb = deflate(&mut c, &vec![0; 50_000]);
    w.put(t, "bomb", &cat(&[&[1, 2, 16], &bomb]));
    // A stored (uncompressed) block: BFINAL=0, BTYPE=00, LEN=5, NLEN=!5.
    w.put(
        t,
        "stored_block",
        &cat(&[&[0, 3, 10], &[0x00, 0x05, 0x00, 0xfa, 0xff], b"abcde"]),
    );
    w.put(t, "garbage", &[0x0c, 1, 50, 0xff, 0xff, 0xff, 0x12, 0x34]);
}

fn handshake(w: &Writer) {
    let t = "handshake";
    w.put(
        t,
        "upgrade_all_options",
        &cat(&[&[0x06], UPGRADE_REQ.as_bytes()]),
    );
    w.put(
        t,
        "upgrade_origin_denied",
        &cat(&[
            &[0x10],
            UPGRADE_REQ
                .replace("https://example.com", "https://evil.example")
                .as_bytes(),
        ]),
    );
    w.put(
        t,
        "upgrade_bad_version",
        &cat(&[
            &[0x01],
            UPGRADE_REQ.replace("Version: 13", "Version: 8").as_bytes(),
        ]),
    );
    w.put(
        t,
        "upgrade_bad_key",
        &cat(&[
            &[0x01],
            UPGRADE_REQ
                .replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=")
                .as_bytes(),
        ]),
    );
    w.put(t, "post_not_upgrade", &cat(&[&[0x02], b"POST /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\nContent-Length: 0\r\n\r\n"]));
    // Responses for the client side (cfg 0x60: offers chat/superchat and deflate).
    let resp_ext = RESP_101.replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=10\r\n\r\n",
    );
    w.put(t, "resp_101_full", &cat(&[&[0x60], resp_ext.as_bytes()]));
    w.put(
        t,
        "resp_101_unoffered",
        &cat(&[&[0x00], resp_ext.as_bytes()]),
    );
    w.put(
        t,
        "resp_403",
        &cat(&[
            &[0x60],
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
        ]),
    );
    let exts: &[(&str, &str)] = &[
        ("ext_two_offers", "permessage-deflate; client_max_window_bits; server_max_window_bits=10, permessage-deflate"),
        ("ext_quoted", "permessage-deflate; server_max_window_bits=\"12\"; client_no_context_takeover"),
        ("ext_unknown_then_deflate", "x-webkit-deflate-frame, permessage-deflate; server_no_context_takeover"),
        ("ext_bad_params", "permessage-deflate; server_max_window_bits=7; server_max_window_bits=9"),
        ("ext_garbage", "permessage-deflate;;=,\"unterminated"),
    ];
    for (i, (name, v)) in exts.iter().enumerate() {
        w.put(t, name, &cat(&[&[(i as u8) << 2 | 1], v.as_bytes()]));
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let w = Writer { root: &root };
    head_request(&w);
    // Server-role target receives masked client frames; client-role target
    // unmasked server frames. Deflate cfg: bit 0, window bits 15 on the sender.
    connection(&w, "connection_server", MASK, 0x01);
    connection(&w, "connection_client", None, 0x71);
    deflate_corpus(&w);
    handshake(&w);
    println!("corpus written to {}", root.display());
}

//! The server side of the WebSocket handshake on a request parsed from the
//! input, and `parse_extensions` on arbitrary header values.
//!
//! Input: `[cfg, rest...]`. `rest` is parsed as a request head (checked with
//! `server_accept`), else as a response head (checked with
//! `ClientHandshake::verify`, key fixed to the RFC 6455 sample), else a valid
//! upgrade request is built with `rest` as its `Sec-WebSocket-Extensions`
//! value. `cfg` picks the server and client configs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_proto::deflate::{client_accept, client_offer, negotiate_server, DeflateConfig};
use switchyard_proto::extensions::parse_extensions;
use switchyard_proto::handshake::{
    accept_key, server_accept, ClientConfig, ClientHandshake, OriginPolicy, ServerConfig,
};
use switchyard_proto::head::{RequestParser, ResponseParser};
use switchyard_proto::Limits;

fn server_config(cfg: u8) -> ServerConfig {
    let subprotocols = match cfg & 3 {
        0 => vec![],
        1 => vec!["chat".to_owned()],
        _ => vec![
            "superchat".to_owned(),
            "chat".to_owned(),
            "v2.json".to_owned(),
        ],
    };
    let deflate = match (cfg >> 2) & 3 {
        0 => None,
        1 => Some(DeflateConfig::default()),
        2 => Some(
            DeflateConfig::default()
                .server_no_context_takeover(true)
                .client_no_context_takeover(true)
                .server_max_window_bits(Some(10))
                .client_max_window_bits(Some(12)),
        ),
        _ => Some(DeflateConfig::default().server_max_window_bits(Some(8))),
    };
    let origin = if cfg & 0x10 != 0 {
        OriginPolicy::AllowList(vec!["https://example.com".to_owned()])
    } else {
        OriginPolicy::Any
    };
    ServerConfig::default()
        .subprotocols(subprotocols)
        .deflate(deflate)
        .origin(origin)
}

fn check(req: &http::Request<()>, cfg: &ServerConfig) {
    let ext_values: Vec<&[u8]> = req
        .headers()
        .get_all("sec-websocket-extensions")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let _ = parse_extensions(ext_values);
    match server_accept(req, cfg) {
        Ok(acc) => {
            assert_eq!(acc.response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| k.as_bytes())
                .unwrap_or_default();
            let got = acc
                .response
                .headers()
                .get("sec-websocket-accept")
                .map(|v| v.as_bytes().to_vec());
            assert_eq!(
                got,
                Some(accept_key(key).into_bytes()),
                "wrong Sec-WebSocket-Accept"
            );
            if let Some(p) = &acc.negotiated.subprotocol {
                assert!(
                    cfg.subprotocols.contains(p),
                    "chose {p:?}, which the server does not speak"
                );
                let offered = req
                    .headers()
                    .get_all("sec-websocket-protocol")
                    .iter()
                    .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                    .any(|t| t.trim_ascii() == p.as_bytes());
                assert!(offered, "chose {p:?}, which the client did not offer");
            }
            if acc.negotiated.deflate.is_some() {
                assert!(cfg.deflate.is_some(), "deflate accepted but not configured");
                let v = acc.response.headers().get("sec-websocket-extensions");
                let v = v.map(|v| v.as_bytes()).unwrap_or_default();
                let parsed = parse_extensions([v]);
                assert!(
                    parsed.is_ok(),
                    "our own extensions header {v:?} does not parse: {parsed:?}"
                );
            }
        }
        Err(rej) => {
            let s = rej.response.status().as_u16();
            assert!(
                matches!(s, 400 | 403 | 405 | 426),
                "rejection {:?} answers {s}",
                rej.error
            );
        }
    }
}

/// A deflate config from two bytes: the no-context-takeover flags and the two
/// window sizes (a nibble under 8 means "not set").
fn deflate_config(a: u8, b: u8) -> DeflateConfig {
    let window = |v: u8| (v & 0x0f >= 8).then_some(v & 0x0f);
    DeflateConfig::default()
        .server_no_context_takeover(a & 0x10 != 0)
        .client_no_context_takeover(a & 0x20 != 0)
        .server_max_window_bits(window(a))
        .client_max_window_bits(window(b))
}

/// Negotiation round trip: our client's offer parses; what our server picks
/// from it respects both configs, its header parses, and our client accepts
/// it with the same parameters.
fn check_negotiation(client: &DeflateConfig, server: &DeflateConfig) {
    let offer = client_offer(client);
    let offers = match parse_extensions([offer.as_bytes()]) {
        Ok(o) => o,
        Err(e) => panic!("our offer {offer:?} does not parse: {e}"),
    };
    let Some((params, header)) = negotiate_server(&offers, server) else {
        return;
    };
    for bits in [params.server_max_window_bits, params.client_max_window_bits] {
        assert!((8..=15).contains(&bits), "window bits {bits} in {params:?}");
    }
    let within = |got: u8, cap: Option<u8>| cap.is_none_or(|c| got <= c);
    assert!(
        within(params.server_max_window_bits, server.server_max_window_bits),
        "{params:?} vs server {server:?}"
    );
    assert!(
        within(params.server_max_window_bits, client.server_max_window_bits),
        "{params:?} vs client {client:?}"
    );
    assert!(
        within(params.client_max_window_bits, server.client_max_window_bits),
        "{params:?} vs server {server:?}"
    );
    assert!(
        within(params.client_max_window_bits, client.client_max_window_bits),
        "{params:?} vs client {client:?}"
    );
    if server.server_no_context_takeover || client.server_no_context_takeover {
        assert!(
            params.server_no_context_takeover,
            "{params:?}: server_no_context_takeover was asked for"
        );
    }
    if server.client_no_context_takeover || client.client_no_context_takeover {
        assert!(
            params.client_no_context_takeover,
            "{params:?}: client_no_context_takeover was asked for"
        );
    }
    let answer = match parse_extensions([header.as_bytes()]) {
        Ok(a) if a.len() == 1 => a,
        other => panic!("our answer {header:?} does not parse to one extension: {other:?}"),
    };
    assert_eq!(
        client_accept(&answer[0], client),
        Ok(params),
        "client refused our server's answer {header:?} to {offer:?}"
    );
}

/// The RFC 6455 §1.3 sample key; the seeds' 101 responses carry its accept value.
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn check_client(resp: &http::Response<()>, cfg: u8) {
    let client_cfg = ClientConfig::default()
        .subprotocols(if cfg & 0x20 != 0 {
            vec!["chat".to_owned(), "superchat".to_owned()]
        } else {
            vec![]
        })
        .deflate((cfg & 0x40 != 0).then(DeflateConfig::default));
    let uri: http::Uri = "ws://example.com/chat".parse().expect("static URI");
    let Ok(mut hs) = ClientHandshake::new(&uri, client_cfg.clone()) else {
        panic!("client handshake for a static URI failed");
    };
    hs.key = SAMPLE_KEY.to_owned();
    if let Ok(n) = hs.verify(resp) {
        assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        if let Some(p) = &n.subprotocol {
            assert!(
                client_cfg.subprotocols.contains(p),
                "accepted subprotocol {p:?} we did not offer"
            );
        }
        if n.deflate.is_some() {
            assert!(
                client_cfg.deflate.is_some(),
                "accepted deflate we did not offer"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let server = server_config(cfg);
    if let [a, b, c, d, ..] = rest {
        check_negotiation(&deflate_config(*a, *b), &deflate_config(*c, *d));
    }
    let _ = parse_extensions(rest.split(|&b| b == b'\n'));
    let mut parser = RequestParser::new(&Limits::default());
    if let Ok(Some((req, _))) = parser.feed(rest) {
        check(&req, &server);
        return;
    }
    let mut parser = ResponseParser::new(&Limits::default());
    if let Ok(Some((resp, _))) = parser.feed(rest) {
        check_client(&resp, cfg);
        return;
    }
    let Ok(ext) = http::HeaderValue::from_bytes(rest) else {
        return;
    };
    let req = http::Request::get("/chat")
        .header("host", "example.com")
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat, superchat")
        .header("sec-websocket-extensions", ext)
        .body(());
    if let Ok(req) = req {
        check(&req, &server);
    }
});

//! The HTTP/1.1 head parsers, and the chunked body decoder, fed the same bytes
//! in one piece and split at fuzzer-chosen positions: the outcome must not
//! depend on the split.
//!
//! Input: `[n, cut_1..cut_n, head...]` with `n = input[0] % 8` cut bytes;
//! bit 3 of `input[0]` selects tiny caps (200 bytes, 8 fields) so the 431
//! paths are reached with short inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_proto::chunked::{ChunkedDecoder, ChunkedError};
use switchyard_proto::head::{
    write_request_head, write_response_head, HeadError, RequestParser, ResponseParser,
};
use switchyard_proto::Limits;

/// A chunked body fed in `pieces`: the data, the bytes consumed and whether it
/// ended, or the error. The decoder never consumes past the end of the body,
/// never more than it is given, and its data lies inside what it consumed.
fn chunked(
    pieces: &[&[u8]],
    max_body: u64,
    max_trailer: usize,
) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
    let mut d = ChunkedDecoder::new(max_body, max_trailer);
    let (mut data, mut consumed) = (Vec::new(), 0);
    for piece in pieces {
        let p = d.feed(piece)?;
        assert!(p.consumed <= piece.len());
        for r in &p.data {
            assert!(
                r.start <= r.end && r.end <= p.consumed,
                "data {r:?} outside {}",
                p.consumed
            );
            data.extend_from_slice(&piece[r.clone()]);
        }
        consumed += p.consumed;
        assert!(d.data_len() <= max_body, "over the body limit");
        if p.done {
            assert!(d.is_done());
            return Ok((data, consumed, true));
        }
        assert_eq!(
            p.consumed,
            piece.len(),
            "stopped before the end of the body"
        );
    }
    Ok((data, consumed, false))
}

/// What a parser made of the input: still incomplete, an error, or a head and
/// the number of input bytes it took (counted from the start of the input).
#[derive(Debug, PartialEq)]
enum Outcome<T> {
    Incomplete,
    Error(HeadError),
    Done(T, usize),
}

/// The comparable parts of a request.
#[derive(Debug, PartialEq)]
struct Req {
    method: http::Method,
    uri: String,
    version: http::Version,
    headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, PartialEq)]
struct Resp {
    status: http::StatusCode,
    version: http::Version,
    reason: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

fn headers(h: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn req(r: &http::Request<()>) -> Req {
    Req {
        method: r.method().clone(),
        uri: r.uri().to_string(),
        version: r.version(),
        headers: headers(r.headers()),
    }
}

fn resp(r: &http::Response<()>) -> Resp {
    Resp {
        status: r.status(),
        version: r.version(),
        reason: r
            .extensions()
            .get::<switchyard_proto::head::ReasonPhrase>()
            .map(|p| p.as_bytes().to_vec()),
        headers: headers(r.headers()),
    }
}

/// Feed `pieces` to a fresh parser through `feed`, checking the consumed
/// count against each piece and the limit.
fn run<P, T>(
    limits: &Limits,
    pieces: &[&[u8]],
    mut parser: P,
    feed: impl Fn(&mut P, &[u8]) -> Result<Option<(T, usize)>, HeadError>,
) -> Outcome<T> {
    let mut start = 0;
    for piece in pieces {
        match feed(&mut parser, piece) {
            Ok(None) => start += piece.len(),
            Ok(Some((t, used))) => {
                assert!(
                    used <= piece.len(),
                    "consumed {used} of a {}-byte piece",
                    piece.len()
                );
                let total = start + used;
                assert!(
                    total <= limits.max_head_bytes,
                    "head of {total} bytes over the limit"
                );
                return Outcome::Done(t, total);
            }
            Err(e) => {
                let status = e.status();
                assert!(
                    status == http::StatusCode::BAD_REQUEST
                        || status == http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                        || status == http::StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    "head error {e:?} answers {status}"
                );
                return Outcome::Error(e);
            }
        }
    }
    Outcome::Incomplete
}

fn kind<T>(o: &Outcome<T>) -> std::mem::Discriminant<Outcome<T>> {
    std::mem::discriminant(o)
}

fn check_same<T: PartialEq + std::fmt::Debug>(whole: &Outcome<T>, split: &Outcome<T>) {
    assert_eq!(
        kind(whole),
        kind(split),
        "whole: {whole:?}\nsplit: {split:?}"
    );
    match (whole, split) {
        (Outcome::Error(a), Outcome::Error(b)) => {
            assert_eq!(
                std::mem::discriminant(a),
                std::mem::discriminant(b),
                "{a:?} vs {b:?}"
            )
        }
        (Outcome::Done(..), Outcome::Done(..)) => assert_eq!(whole, split),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let tiny = n & 0x08 != 0;
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, input) = rest.split_at(n);
    let limits = Limits::default()
        .max_head_bytes(if tiny { 200 } else { 4096 })
        .max_headers(if tiny { 8 } else { 32 });
    let pieces = switchyard_fuzz::split_at_cuts(cuts, input);

    // Requests.
    let feed_req =
        |p: &mut RequestParser, d: &[u8]| p.feed(d).map(|o| o.map(|(r, u)| (req(&r), u)));
    let whole = run(&limits, &[input], RequestParser::new(&limits), feed_req);
    let split = run(&limits, &pieces, RequestParser::new(&limits), feed_req);
    check_same(&whole, &split);
    if let Outcome::Done(_, used) = &whole {
        assert!(
            input[..*used].ends_with(b"\r\n\r\n"),
            "head does not end with a blank line"
        );
        // What we serialize parses back to the same request.
        let mut p = RequestParser::new(&limits);
        if let Ok(Some((r, _))) = p.feed(input) {
            let mut out = Vec::new();
            write_request_head(&r, &mut out);
            let mut again = RequestParser::new(&Limits::default());
            match again.feed(&out) {
                Ok(Some((r2, used2))) => {
                    assert_eq!(used2, out.len(), "re-parse of our own head");
                    assert_eq!(
                        req(&r),
                        req(&r2),
                        "request changed by write + parse: {:?}",
                        String::from_utf8_lossy(&out)
                    );
                }
                other => panic!(
                    "our own head {:?} does not parse: {other:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
    }
    if let Outcome::Incomplete = &whole {
        let mut p = RequestParser::new(&limits);
        let _ = p.feed(input);
        assert!(
            p.bytes_seen() <= input.len(),
            "bytes_seen {} > {}",
            p.bytes_seen(),
            input.len()
        );
    }

    // The same bytes as a chunked body.
    let (max_body, max_trailer) = if tiny { (64, 32) } else { (1 << 16, 4096) };
    let whole = chunked(&[input], max_body, max_trailer);
    let split = chunked(&pieces, max_body, max_trailer);
    assert_eq!(whole, split, "chunked: split changed the outcome");
    if let Ok((_, used, true)) = &whole {
        assert!(
            input[..*used].ends_with(b"\r\n"),
            "body does not end with CRLF"
        );
    }

    // Responses.
    let feed_resp =
        |p: &mut ResponseParser, d: &[u8]| p.feed(d).map(|o| o.map(|(r, u)| (resp(&r), u)));
    let whole = run(&limits, &[input], ResponseParser::new(&limits), feed_resp);
    let split = run(&limits, &pieces, ResponseParser::new(&limits), feed_resp);
    check_same(&whole, &split);
    if let Outcome::Done(_, used) = &whole {
        assert!(
            input[..*used].ends_with(b"\r\n\r\n"),
            "head does not end with a blank line"
        );
        let mut p = ResponseParser::new(&limits);
        if let Ok(Some((r, _))) = p.feed(input) {
            let mut out = Vec::new();
            write_response_head(&r, &mut out);
            let mut again = ResponseParser::new(&Limits::default());
            match again.feed(&out) {
                Ok(Some((r2, used2))) => {
                    assert_eq!(used2, out.len(), "re-parse of our own head");
                    assert_eq!(
                        resp(&r),
                        resp(&r2),
                        "response changed by write + parse: {:?}",
                        String::from_utf8_lossy(&out)
                    );
                }
                other => panic!(
                    "our own head {:?} does not parse: {other:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
    }
});

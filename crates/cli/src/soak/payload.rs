//! The soak's messages and the check of every echo.
//!
//! A message carries its own identity in a fixed 34-byte ASCII header, then a
//! body that is a pure function of that identity, so an echo is verified
//! without keeping what was sent:
//!
//! ```text
//! sy{client:08x}{seq:016x}{len:08x}   the client, its sequence number, the total length
//! body...                               text: words (compressible, some multi-byte UTF-8)
//!                                       binary: pseudo-random bytes (incompressible)
//! ```
//!
//! [`Sequence`] is one client's stream: numbers keep counting over every
//! connection the client opens (churn, reconnects), and each echo is one
//! [`Echo`] outcome. One connection echoes in order, so an echo that comes
//! back while older messages are still out *overtakes* them: each of those is
//! then either lost (never comes: counted when the connection ends) or
//! reordered (comes later).

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use switchyard::Message;

/// Bytes of the header: `sy` and three hex numbers.
pub const HEADER_LEN: usize = 2 + 8 + 16 + 8;

/// What the echo of a message can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// A message in flight came back intact (older ones still out are now
    /// overtaken).
    InOrder { sent_at: Instant },
    /// An intact message came back after a newer one had.
    Reordered { sent_at: Instant },
    /// A message that had already come back (or been given up) came again.
    Duplicate,
    /// Not what was sent: wrong header, client, kind, length or bytes (the
    /// reason says which).
    Corrupt(&'static str),
}

/// One message sent and not yet echoed.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    /// When it was due (open loop: latency counts from here, so a stall in
    /// sending is not hidden).
    due: Instant,
    /// A newer message came back first.
    overtaken: bool,
}

/// The messages of one client.
#[derive(Debug)]
pub struct Sequence {
    client: u32,
    next: u64,
    in_flight: VecDeque<InFlight>,
    /// How many of `in_flight` are overtaken.
    overtaken: usize,
}

impl Sequence {
    pub fn new(client: u32) -> Self {
        Sequence {
            client,
            next: 0,
            in_flight: VecDeque::new(),
            overtaken: 0,
        }
    }

    /// Messages out and not overtaken: still expected back in order.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() - self.overtaken
    }

    /// The next message: `len` bytes (at least the header), text or binary.
    pub fn next_message(&mut self, len: usize, text: bool, due: Instant) -> Message {
        let seq = self.next;
        self.next += 1;
        self.in_flight.push_back(InFlight {
            seq,
            due,
            overtaken: false,
        });
        let payload = encode(self.client, seq, len.max(HEADER_LEN), text);
        if text {
            // `encode` writes ASCII and whole UTF-8 characters only.
            match String::from_utf8(payload) {
                Ok(s) => Message::text(s),
                Err(e) => Message::binary(Bytes::from(e.into_bytes())),
            }
        } else {
            Message::binary(payload)
        }
    }

    /// Check an echo against what is in flight.
    pub fn echo(&mut self, msg: &Message) -> Echo {
        let (bytes, text) = match msg {
            Message::Text(t) => (t.as_bytes().as_ref(), true),
            Message::Binary(b) => (b.as_ref(), false),
            _ => return Echo::Corrupt("not a data message"),
        };
        let Some(h) = Header::parse(bytes) else {
            return Echo::Corrupt("no soak header");
        };
        if h.client != self.client {
            return Echo::Corrupt("another client's message");
        }
        if h.seq >= self.next {
            return Echo::Corrupt("a sequence number never sent");
        }
        if h.len != bytes.len() {
            return Echo::Corrupt("length differs from its header");
        }
        let Some(pos) = self.in_flight.iter().position(|f| f.seq == h.seq) else {
            return Echo::Duplicate;
        };
        // Gone either way: a second copy is a duplicate.
        let Some(sent) = self.in_flight.remove(pos) else {
            return Echo::Duplicate;
        };
        if sent.overtaken {
            self.overtaken -= 1;
        }
        for older in self.in_flight.range_mut(..pos) {
            if !older.overtaken {
                older.overtaken = true;
                self.overtaken += 1;
            }
        }
        if encode(self.client, h.seq, h.len, text) != bytes {
            return Echo::Corrupt(if text {
                "text body differs (or a binary message came back as text)"
            } else {
                "binary body differs (or a text message came back as binary)"
            });
        }
        if sent.overtaken {
            Echo::Reordered { sent_at: sent.due }
        } else {
            Echo::InOrder { sent_at: sent.due }
        }
    }

    /// Give up on every message out, overtaken or not (the connection
    /// ended); returns how many there were.
    pub fn abandon(&mut self) -> usize {
        let n = self.in_flight.len();
        self.in_flight.clear();
        self.overtaken = 0;
        n
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Header {
    client: u32,
    seq: u64,
    len: usize,
}

impl Header {
    fn parse(b: &[u8]) -> Option<Header> {
        let h = b.get(..HEADER_LEN)?.strip_prefix(b"sy")?;
        let hex = |s: &[u8]| u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
        Some(Header {
            client: u32::try_from(hex(&h[..8])?).ok()?,
            seq: hex(&h[8..24])?,
            len: usize::try_from(hex(&h[24..32])?).ok()?,
        })
    }
}

/// Words of the text bodies: repeated (so deflate has work), some with
/// multi-byte UTF-8 (so a text path that splits characters shows).
const WORDS: [&str; 8] = [
    "switchyard ",
    "upgrade ",
    "websocket ",
    "ünïcödé ",
    "✓ ",
    "frame ",
    "soak ",
    "🚂 ",
];

/// The whole message for (`client`, `seq`), exactly `len` bytes (`len` is at
/// least [`HEADER_LEN`]).
fn encode(client: u32, seq: u64, len: usize, text: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(format!("sy{client:08x}{seq:016x}{len:08x}").as_bytes());
    let mut rng = SplitMix(u64::from(client) << 40 ^ seq);
    if text {
        while out.len() < len {
            let word = WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes();
            if out.len() + word.len() <= len {
                out.extend_from_slice(word);
            } else {
                out.push(b'.');
            }
        }
    } else {
        while out.len() < len {
            let n = (len - out.len()).min(8);
            out.extend_from_slice(&rng.next().to_le_bytes()[..n]);
        }
    }
    out
}

/// SplitMix64: a small, fast, well-mixed generator for reproducible bodies
/// (no cryptographic property needed).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(s: &mut Sequence, len: usize, text: bool) -> Message {
        s.next_message(len, text, Instant::now())
    }

    #[test]
    fn messages_have_the_asked_length_and_valid_text() {
        let mut s = Sequence::new(7);
        for len in [0, 1, HEADER_LEN, HEADER_LEN + 1, 100, 4097] {
            for text in [true, false] {
                let m = send(&mut s, len, text);
                assert_eq!(m.len(), len.max(HEADER_LEN), "{len} {text}");
                assert_eq!(matches!(m, Message::Text(_)), text);
            }
        }
    }

    #[test]
    fn echoes_in_order_then_duplicates() {
        let mut s = Sequence::new(1);
        let a = send(&mut s, 200, true);
        let b = send(&mut s, 300, false);
        assert!(matches!(s.echo(&a), Echo::InOrder { .. }));
        assert!(matches!(s.echo(&b), Echo::InOrder { .. }));
        assert_eq!(s.echo(&a), Echo::Duplicate);
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn an_overtaken_echo_that_comes_later_is_reordered() {
        let mut s = Sequence::new(1);
        let a = send(&mut s, 50, false);
        let b = send(&mut s, 50, false);
        assert!(matches!(s.echo(&b), Echo::InOrder { .. }));
        assert_eq!(
            s.in_flight(),
            0,
            "the overtaken one is no longer expected in order"
        );
        assert!(matches!(s.echo(&a), Echo::Reordered { .. }));
        assert_eq!(s.abandon(), 0);
    }

    #[test]
    fn an_overtaken_echo_that_never_comes_is_left_for_abandon() {
        let mut s = Sequence::new(1);
        send(&mut s, 50, false);
        let b = send(&mut s, 50, false);
        let c = send(&mut s, 50, false);
        assert!(matches!(s.echo(&b), Echo::InOrder { .. }));
        assert!(matches!(s.echo(&c), Echo::InOrder { .. }));
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.abandon(), 1, "the first one: lost");
    }

    #[test]
    fn every_kind_of_corruption_is_caught() {
        let mut s = Sequence::new(3);
        let m = send(&mut s, 100, false);
        let Message::Binary(b) = &m else {
            unreachable!()
        };
        let flip = |i: usize| {
            let mut v = b.to_vec();
            v[i] ^= 1;
            Message::binary(v)
        };
        assert_eq!(
            s.echo(&Message::binary(&b"nope"[..])),
            Echo::Corrupt("no soak header")
        );
        assert_eq!(s.echo(&flip(2)), Echo::Corrupt("another client's message"));
        assert_eq!(
            s.echo(&flip(HEADER_LEN - 9)),
            Echo::Corrupt("a sequence number never sent")
        );
        let truncated = Message::binary(b.slice(..99));
        assert_eq!(
            s.echo(&truncated),
            Echo::Corrupt("length differs from its header")
        );
        let other = Sequence::new(4).next_message(100, false, Instant::now());
        assert_eq!(s.echo(&other), Echo::Corrupt("another client's message"));
        // A body byte changed: corrupt, and the message is given up.
        assert!(matches!(s.echo(&flip(60)), Echo::Corrupt(_)));
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.echo(&m), Echo::Duplicate);
    }

    #[test]
    fn text_and_binary_are_not_interchangeable() {
        let mut s = Sequence::new(9);
        let t = send(&mut s, 120, true);
        let Message::Text(txt) = &t else {
            unreachable!()
        };
        let as_binary = Message::binary(txt.as_bytes().clone());
        assert!(matches!(s.echo(&as_binary), Echo::Corrupt(_)));
    }

    #[test]
    fn numbers_go_on_over_connections_and_abandon_empties() {
        let mut s = Sequence::new(2);
        send(&mut s, 40, true);
        send(&mut s, 40, true);
        assert_eq!(s.abandon(), 2);
        let m = send(&mut s, 40, true);
        let Message::Text(t) = &m else { unreachable!() };
        assert_eq!(Header::parse(t.as_bytes()).map(|h| h.seq), Some(2));
        assert!(matches!(s.echo(&m), Echo::InOrder { .. }));
    }
}

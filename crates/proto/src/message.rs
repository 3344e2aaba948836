//! Messages as the application sees them, and the buffer a received message
//! is assembled in (`reserve_message`).

use bytes::{Bytes, BytesMut};

use crate::close::CloseFrame;

/// A message buffer below this capacity grows by doubling; past it, it gets
/// its whole bound at once (see [`reserve_message`]).
const RESERVE_BOUND_FROM: usize = 1 << 20;

/// Make room in `buf` for `additional` more bytes (at most up to `bound`) of a
/// message that can never hold more than `bound` bytes (its size limit).
///
/// Below [`RESERVE_BOUND_FROM`] the buffer doubles as a `Vec` does (a copy of
/// at most 1 MiB). Past it, it is given all of `bound` in one allocation and
/// never grows again. Doubling all the way would hold the old buffer and its
/// copy at the last step and could end with twice the bound: a 32 MiB limit
/// cost about 96 MiB of resident memory under a deflate bomb. With one
/// allocation nothing is copied past the first MiB, and the kernel backs its
/// pages only as they are written, so resident memory follows the bytes
/// actually received; the address space reserved is the bound. When the
/// system refuses that much (a bound near or above the memory it will
/// promise, e.g. an unlimited `max_message_size`), the buffer keeps doubling.
pub(crate) fn reserve_message(buf: &mut BytesMut, additional: usize, bound: usize) {
    let need = buf.len().saturating_add(additional).min(bound);
    if need <= buf.capacity() {
        return;
    }
    if need > RESERVE_BOUND_FROM {
        let mut whole = Vec::new();
        if whole.try_reserve_exact(bound).is_ok() {
            whole.extend_from_slice(buf);
            // Vec -> Bytes -> BytesMut keeps the allocation (no copy).
            *buf = BytesMut::from(Bytes::from(whole));
            return;
        }
    }
    buf.reserve(need.saturating_sub(buf.len()));
}

/// UTF-8 text held in `Bytes` (cheap to clone, no copy from the wire).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Check and wrap. `None` when `b` is not UTF-8.
    pub fn try_from_bytes(b: Bytes) -> Option<Self> {
        std::str::from_utf8(&b).ok()?;
        Some(Utf8Bytes(b))
    }

    /// Wrap bytes the caller has already validated as UTF-8 (the connection
    /// validates every text message incrementally as it arrives).
    pub(crate) fn from_validated(b: Bytes) -> Self {
        debug_assert!(std::str::from_utf8(&b).is_ok());
        Utf8Bytes(b)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor guarantees the bytes are valid UTF-8
        // (`try_from_bytes` and `From<String>/<&str>` by checking or by type,
        // `from_validated` because the connection validated them); the bytes
        // are immutable afterwards. Re-validating here would cost a full pass
        // over each text message on every access.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The UTF-8 bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The UTF-8 bytes, without a copy.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Utf8Bytes {
    fn from(s: String) -> Self {
        Utf8Bytes(Bytes::from(s))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(s: &str) -> Self {
        Utf8Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

/// A WebSocket message or control frame.
///
/// A received payload is a slice of the buffer the connection read it into,
/// not a copy, and that buffer is shared with the messages read beside it: a
/// payload kept long after it arrived (a history, a queue) keeps the whole
/// buffer (KiBs) allocated. Keep a copy of small payloads you store
/// (`Bytes::copy_from_slice`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (validated UTF-8).
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// Received: the connection already queued the pong. Sent: a ping.
    Ping(Bytes),
    /// Received: the answer to a ping. Sent: an unsolicited pong (a
    /// one-way heartbeat).
    Pong(Bytes),
    /// Received: the peer's close (the reply is already queued). Sent: start
    /// the closing handshake.
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message.
    pub fn text(s: impl Into<Utf8Bytes>) -> Self {
        Message::Text(s.into())
    }
    /// A binary message.
    pub fn binary(b: impl Into<Bytes>) -> Self {
        Message::Binary(b.into())
    }
    /// Whether this is a text or binary message (not a control frame).
    pub fn is_data(&self) -> bool {
        matches!(self, Message::Text(_) | Message::Binary(_))
    }
    /// Payload length (close: encoded length).
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
            Message::Close(Some(f)) => 2 + f.reason.len(),
            Message::Close(None) => 0,
        }
    }
    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8bytes_rejects_invalid_and_roundtrips_valid() {
        assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"\xff")).is_none());
        let t = Utf8Bytes::try_from_bytes(Bytes::from_static("héllo".as_bytes())).unwrap();
        assert_eq!(t.as_str(), "héllo");
        assert_eq!(Utf8Bytes::from("x").as_str(), "x");
    }

    /// Grows `buf` by `step` bytes at a time up to `total`, as a receiver
    /// does; returns every capacity it had on the way.
    fn grow(total: usize, step: usize, bound: usize) -> (BytesMut, Vec<usize>) {
        let mut buf = BytesMut::new();
        let mut caps = Vec::new();
        while buf.len() < total {
            let n = step.min(total - buf.len());
            reserve_message(&mut buf, n, bound);
            buf.extend_from_slice(&vec![7u8; n]);
            if caps.last() != Some(&buf.capacity()) {
                caps.push(buf.capacity());
            }
        }
        (buf, caps)
    }

    #[test]
    fn a_message_past_1_mib_gets_its_bound_in_one_allocation() {
        let bound = 32 << 20;
        let (buf, caps) = grow(3 << 20, 16 << 10, bound);
        assert_eq!(buf.len(), 3 << 20);
        // Doubling up to 1 MiB, then the bound, and nothing after it.
        assert_eq!(caps.last(), Some(&bound), "{caps:?}");
        assert!(
            caps.iter().rev().nth(1).is_some_and(|c| *c <= 2 << 20),
            "{caps:?}"
        );
        assert!(caps.iter().all(|c| *c <= bound), "{caps:?}");
    }

    #[test]
    fn a_small_message_grows_as_a_vec() {
        let (buf, caps) = grow(100_000, 4096, 32 << 20);
        assert_eq!(buf.len(), 100_000);
        assert!(buf.capacity() < 200_000, "{caps:?}");
    }

    #[test]
    fn room_past_the_bound_is_never_given() {
        let mut buf = BytesMut::new();
        reserve_message(&mut buf, usize::MAX, 5 << 20);
        assert_eq!(buf.capacity(), 5 << 20);
    }

    #[test]
    fn a_bound_the_system_refuses_falls_back_to_doubling() {
        // No limit at all (usize::MAX): the one-allocation reservation fails
        // and the buffer doubles, without a panic or an abort.
        let (buf, caps) = grow(3 << 20, 64 << 10, usize::MAX);
        assert_eq!(buf.len(), 3 << 20);
        assert!(buf.capacity() < 8 << 20, "{caps:?}");
    }
}

//! Messages as the application sees them.

use bytes::Bytes;

use crate::close::CloseFrame;

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
}

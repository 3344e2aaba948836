//! Receive buffers given up by connections that went idle, kept per thread
//! for the next connection that receives data.
//!
//! An idle [`crate::WebSocket`] holds no receive buffer (idle memory), so a
//! connection that receives one message after another would otherwise
//! allocate a fresh buffer for every message. A released buffer may still
//! share its memory with a large message just handed out (the payload is a
//! slice of it); the next read then uses the room past its end, or, once that
//! is too small, reclaims the whole buffer when the payload is gone
//! ([`BytesMut::try_reclaim`] succeeds only then, so memory still referenced
//! by a message is never written to).
//!
//! Bounded: at most [`POOL_MAX`] buffers per thread, and a reclaimed buffer
//! larger than [`MAX_POOLED_CAPACITY`] is freed rather than reused.

use std::cell::RefCell;

use bytes::BytesMut;

/// Most buffers kept per thread.
pub(crate) const POOL_MAX: usize = 16;
/// Reclaimed buffers above this capacity are freed, not reused.
pub(crate) const MAX_POOLED_CAPACITY: usize = 320 * 1024;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Keep `buf` (its contents are discarded) for a later [`take`].
#[inline]
pub(crate) fn put(mut buf: BytesMut) {
    if (buf.capacity() == 0 && buf.is_empty()) || buf.capacity() > MAX_POOLED_CAPACITY {
        // Most likely `BytesMut::new()`; a zero-capacity tail of a shared
        // buffer could be reclaimed, but is not worth a slot. A buffer too
        // large to keep around is freed.
        return;
    }
    buf.clear();
    // `try_with`: during thread teardown the buffer is simply dropped.
    let _ = POOL.try_with(move |p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// An empty buffer with room for at least `min` bytes, if a kept buffer is
/// free for reuse (no message refers to its memory any more). Kept buffers
/// that are still shared are dropped on the way (their memory is freed when
/// the message holding it is).
#[inline]
pub(crate) fn take(min: usize) -> Option<BytesMut> {
    POOL.try_with(|p| {
        let mut p = p.borrow_mut();
        while let Some(mut buf) = p.pop() {
            // Room left past its end is the buffer's own even while the
            // bytes before it are shared: usable as it is (`put` kept no
            // oversized one). Otherwise reclaim the whole allocation, which
            // needs it unshared; one that is then too large to keep around
            // is dropped (freed).
            if buf.capacity() >= min {
                return Some(buf);
            }
            if buf.try_reclaim(min) && buf.capacity() <= MAX_POOLED_CAPACITY {
                return Some(buf);
            }
        }
        None
    })
    .ok()
    .flatten()
}

#[cfg(test)]
pub(crate) fn clear() {
    let _ = POOL.try_with(|p| p.borrow_mut().clear());
}

#[cfg(test)]
pub(crate) fn len() -> usize {
    POOL.try_with(|p| p.borrow().len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_a_buffer_once_the_payload_is_gone() {
        clear();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let base = buf.as_ptr();
        buf.extend_from_slice(&[7u8; 60 * 1024]);
        let payload = buf.split_to(60 * 1024).freeze();
        put(buf);
        // The payload still uses the memory: not handed out, and dropped
        // from the pool.
        assert!(take(16 * 1024).is_none());
        assert_eq!(len(), 0);
        assert!(payload.iter().all(|&b| b == 7));

        let mut buf = BytesMut::with_capacity(64 * 1024);
        let base2 = buf.as_ptr();
        buf.extend_from_slice(&[9u8; 60 * 1024]);
        let payload = buf.split_to(60 * 1024).freeze();
        put(buf);
        drop(payload);
        let got = take(16 * 1024).expect("reclaimed");
        assert_eq!(got.as_ptr(), base2, "the same memory, from its start");
        assert!(got.capacity() >= 64 * 1024);
        assert!(got.is_empty());
        let _ = base;
    }

    #[test]
    fn bounded_in_count_and_size() {
        clear();
        for _ in 0..POOL_MAX + 5 {
            put(BytesMut::with_capacity(1024));
        }
        assert_eq!(len(), POOL_MAX);
        clear();
        put(BytesMut::with_capacity(MAX_POOLED_CAPACITY + 1));
        assert!(take(1).is_none(), "oversized buffer reused");
        assert_eq!(len(), 0);
        // Empty, unallocated buffers are not kept.
        put(BytesMut::new());
        assert_eq!(len(), 0);
    }

    #[test]
    fn contents_are_discarded() {
        clear();
        let mut buf = BytesMut::with_capacity(32 * 1024);
        buf.extend_from_slice(b"stale");
        put(buf);
        let got = take(16 * 1024).unwrap();
        assert!(got.is_empty());
        assert!(got.capacity() >= 16 * 1024);
    }
}

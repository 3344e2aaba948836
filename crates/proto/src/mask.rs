//! WebSocket payload masking (RFC 6455 §5.3).
//!
//! Masking is an XOR with a 4-byte key repeated over the payload. The key
//! phase depends on the byte's position in the frame payload, so a payload
//! handled in pieces passes the position of each piece as `offset`.

/// XOR `buf` with `key`, where `buf[0]` is byte `offset` of the frame payload.
///
/// Applying it twice with the same arguments restores the input. Works eight
/// bytes at a time on a `u64`, a loop the compiler vectorizes; on x86-64 CPUs
/// with AVX2 (detected at run time) the same loop is compiled for 32-byte
/// registers, which pays on large payloads (bench/README.md).
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // Rotate the key so that key[0] applies to buf[0].
    let key = rotate_key(key, offset);
    if buf.len() < 16 {
        apply_mask_bytes(buf, key);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if buf.len() >= AVX2_MIN && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above), the only
        // requirement of a `target_feature` function.
        unsafe { apply_mask_words_avx2(buf, key) };
        return;
    }
    apply_mask_words(buf, key);
}

/// Payloads from this length on take the AVX2 loop when the CPU has it.
#[cfg(target_arch = "x86_64")]
const AVX2_MIN: usize = 128;

/// The word loop with AVX2 enabled (the body is inlined and vectorized for
/// 32-byte registers).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn apply_mask_words_avx2(buf: &mut [u8], key: [u8; 4]) {
    apply_mask_words(buf, key)
}

/// `buf` XOR the key repeated, with `key[0]` on `buf[0]`, eight bytes at a
/// time.
#[inline(always)]
fn apply_mask_words(buf: &mut [u8], key: [u8; 4]) {
    let key4 = u64::from(u32::from_ne_bytes(key));
    let key8 = key4 | key4 << 32;
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(w) ^ key8;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    // Every chunk is 8 bytes, a multiple of 4, so the key phase is unchanged.
    apply_mask_bytes(chunks.into_remainder(), key);
}

#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    // Byte `r` first: as a little-endian word, a rotation by `r` bytes.
    let r = (offset % 4) as u32;
    u32::from_le_bytes(key).rotate_right(8 * r).to_le_bytes()
}

#[inline]
fn apply_mask_bytes(buf: &mut [u8], key: [u8; 4]) {
    for (b, k) in buf.iter_mut().zip(key.iter().cycle()) {
        *b ^= *k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn matches_naive_for_all_offsets_and_lengths() {
        let mut rng = rand::rng();
        for _ in 0..20 {
            let key: [u8; 4] = rng.random();
            for len in 0..100 {
                for offset in 0..8 {
                    let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    let mut a = data.clone();
                    let mut b = data.clone();
                    apply_mask(&mut a, key, offset);
                    naive(&mut b, key, offset);
                    assert_eq!(a, b, "len {len} offset {offset}");
                    apply_mask(&mut a, key, offset);
                    assert_eq!(a, data);
                }
            }
        }
    }

    /// Every start alignment (0..64 bytes into an allocation), every length
    /// up to a few AVX2 blocks past the threshold, every key phase, and large
    /// payloads, against the byte-by-byte reference; through `apply_mask`
    /// and through each loop directly.
    #[test]
    fn every_alignment_and_length_matches_the_reference() {
        let mut rng = rand::rng();
        let key: [u8; 4] = rng.random();
        let mut lens: Vec<usize> = (0..400).collect();
        lens.extend([4095, 4096, 4097, 65535, 65536, 65537, 65536 + 14]);
        for &len in &lens {
            let backing: Vec<u8> = (0..len + 64 + 8).map(|_| rng.random()).collect();
            for align in 0..64 {
                for offset in 0..4 {
                    let data = &backing[align..align + len];
                    let mut want = backing.clone();
                    naive(&mut want[align..align + len], key, offset);
                    let mut got = backing.clone();
                    apply_mask(&mut got[align..align + len], key, offset);
                    assert!(
                        got == want,
                        "apply_mask len {len} align {align} offset {offset}"
                    );
                    let mut words = backing.clone();
                    apply_mask_words(&mut words[align..align + len], rotate_key(key, offset));
                    assert!(
                        words == want,
                        "words len {len} align {align} offset {offset}"
                    );
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("avx2") {
                        let mut v = backing.clone();
                        // SAFETY: AVX2 is available (checked above).
                        unsafe {
                            apply_mask_words_avx2(
                                &mut v[align..align + len],
                                rotate_key(key, offset),
                            )
                        };
                        assert!(v == want, "avx2 len {len} align {align} offset {offset}");
                    }
                    // Only the slice changed, and twice restores it.
                    apply_mask(&mut got[align..align + len], key, offset);
                    assert_eq!(&got[align..align + len], data);
                }
            }
        }
    }

    #[test]
    fn pieces_with_offsets_equal_whole() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for split in [1usize, 3, 7, 13, 64, 999] {
            let mut pieces = data.clone();
            let mut pos = 0;
            while pos < pieces.len() {
                let end = (pos + split).min(pieces.len());
                apply_mask(&mut pieces[pos..end], key, pos);
                pos = end;
            }
            assert_eq!(pieces, whole, "split {split}");
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: masked "Hello".
        let mut p = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut p, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&p, b"Hello");
    }
}

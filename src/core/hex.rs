//! Hexadecimal, the one way keygate writes and reads bytes as text: digests in the
//! configuration and the key service's paths, percent-escapes in request paths.

use crate::core::keytable::Digest;

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push(&mut s, bytes);
    s
}

/// Appends `bytes` as lowercase hex.
pub fn push(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

/// One byte from two hex digits (either case).
pub fn byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    match two {
        [h, l] => Some((digit(*h)? * 16 + digit(*l)?) as u8),
        _ => None,
    }
}

/// A digest written as 64 hex characters (either case).
pub fn digest(text: &str) -> Option<Digest> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
        *out = byte(pair)?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_digest_in_either_case() {
        let d: Digest = core::array::from_fn(|i| (i * 37) as u8);
        let text = encode(&d);
        assert_eq!(text.len(), 64);
        assert_eq!(digest(&text), Some(d));
        assert_eq!(digest(&text.to_uppercase()), Some(d));
        assert_eq!(digest(&text[..62]), None);
        assert_eq!(digest(&format!("{}zz", &text[..62])), None);
    }

    #[test]
    fn reads_one_byte_from_two_digits_only() {
        assert_eq!(byte(b"2f"), Some(0x2f));
        assert_eq!(byte(b"2F"), Some(0x2f));
        assert_eq!(byte(b"2"), None);
        assert_eq!(byte(b"g0"), None);
    }
}

//! The `Authorization: Bearer <key>` header, parsed strictly.
//!
//! Accepted: the scheme `Bearer` in any case (RFC 9110 §11.1), exactly one space, then
//! 1 to 1024 characters of RFC 6750 `b64token`: `A-Z a-z 0-9 - . _ ~ + /`, then
//! optional trailing `=`. Anything else is malformed; there is no lenient path.

/// Longest key accepted, in bytes (every accepted byte is ASCII).
pub const MAX_KEY_LEN: usize = 1024;

const SCHEME: &[u8] = b"bearer";

/// Returns the key inside a well-formed `Bearer` header value, or `None`.
pub fn bearer_key(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let (&b' ', key) = rest.split_first()? else {
        return None;
    };
    is_b64token(key).then_some(key)
}

/// `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`, at most [`MAX_KEY_LEN`].
fn is_b64token(key: &[u8]) -> bool {
    if key.len() > MAX_KEY_LEN {
        return false;
    }
    let body_len = key.iter().take_while(|&&c| is_token_char(c)).count();
    body_len > 0 && key[body_len..].iter().all(|&c| c == b'=')
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

/// An HTTP token (RFC 9110 §5.6.2): a method or a header name. A preflight's requested
/// method is echoed in `access-control-allow-methods`, so it must be one.
pub fn is_http_token(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.iter().all(|&c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_one_true_form_in_any_scheme_case() {
        assert_eq!(bearer_key(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_key(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_key(b"BEARER a-b.c_d~e+f/g=="), Some(&b"a-b.c_d~e+f/g=="[..]));
        let longest = vec![b'k'; MAX_KEY_LEN];
        let header = [&b"Bearer "[..], &longest].concat();
        assert_eq!(bearer_key(&header), Some(&longest[..]));
    }

    #[test]
    fn rejects_everything_else() {
        let too_long = [&b"Bearer "[..], &vec![b'k'; MAX_KEY_LEN + 1]].concat();
        for bad in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer  abc",
            b"Bearer\tabc",
            b"Bearer: abc",
            b"Bearer abc ",
            b" Bearer abc",
            b"Bearer a bc",
            b"Bearer abc\t",
            b"Bearer =abc",
            b"Bearer ab=c",
            b"Bearer ===",
            b"Bearer ab\"c",
            b"Bearer ab,c",
            b"Bearer ab\xffc",
            b"Bearer ab\0c",
            b"Bearerabc",
            b"Basic dXNlcjpwYXNz",
            b"Token abc",
            b"Bearer\xc2\xa0abc",
            &too_long,
        ] {
            assert_eq!(bearer_key(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

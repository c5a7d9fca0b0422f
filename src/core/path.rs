//! Request paths keygate is willing to match against a rule.
//!
//! Servers behind a proxy disagree about how to read odd paths, and each disagreement is
//! a known bypass: the proxy matches one path, the upstream serves another. So a path that
//! any common server could read differently from a plain segment-by-segment reading
//! matches no rule at all (public or restricted): it needs a key with full access.

use crate::core::hex;

/// The path without its query string, if it is safe to match; `None` otherwise.
///
/// Unsafe: not starting with `/`; an empty segment (`//`, a trailing `/`); a `.` or `..`
/// segment; a backslash or `;` (Tomcat reads `/..;/` as `/../`); `#`; a control, space or
/// non-ASCII byte; a percent-encoded `/`, `\` or `.` (`%2F %5C %2E`), control character
/// (`%00`-`%1F`, `%7F`) or double-encoded `%25` followed by `2E 2F 5C`, in any case; and,
/// whatever the spelling, a segment that decoded once or twice is no longer one plain
/// segment (separator, dot segment, `;`, control byte) or could be decoded a third time.
pub fn matchable(path_and_query: &[u8]) -> Option<&[u8]> {
    let end = path_and_query.iter().position(|&c| c == b'?').unwrap_or(path_and_query.len());
    let path = &path_and_query[..end];
    let (&b'/', rest) = path.split_first()? else {
        return None;
    };
    if rest.is_empty() {
        return Some(path);
    }
    if !rest.split(|&c| c == b'/').all(is_safe_segment) {
        return None;
    }
    Some(path)
}

/// The segments of a path returned by [`matchable`]: `/` has none.
pub fn segments(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.get(1..).unwrap_or_default().split(|&c| c == b'/').filter(|s| !s.is_empty())
}

/// A non-empty segment that is not a dot segment and holds nothing a server might decode
/// into a separator, a dot or a control character.
pub fn is_safe_segment(segment: &[u8]) -> bool {
    if !is_plain_raw(segment) {
        return false;
    }
    if !segment.contains(&b'%') {
        return true;
    }
    // Whatever the encoding (`%252f`, `%25%32%46`, ...), a server that decodes once or twice
    // must still see one plain segment; one that would need a third decoding is refused.
    let once = percent_decode(segment);
    if !is_plain_decoded(&once) {
        return false;
    }
    let twice = percent_decode(&once);
    is_plain_decoded(&twice) && percent_decode(&twice) == twice
}

/// The segment as received: the documented list of refused bytes and encodings.
fn is_plain_raw(segment: &[u8]) -> bool {
    if segment.is_empty() || segment == b"." || segment == b".." {
        return false;
    }
    let mut i = 0;
    while i < segment.len() {
        let c = segment[i];
        if !c.is_ascii_graphic() || matches!(c, b'/' | b'?' | b'\\' | b';' | b'#') {
            return false;
        }
        if c == b'%' {
            let encoded = segment.get(i + 1..i + 3).and_then(hex::byte);
            match encoded {
                Some(b'/' | b'\\' | b'.') => return false,
                Some(b) if b < 0x20 || b == 0x7f => return false,
                Some(b'%') => {
                    let twice = segment.get(i + 3..i + 5).and_then(hex::byte);
                    if matches!(twice, Some(b'/' | b'\\' | b'.')) {
                        return false;
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    true
}

/// A decoded segment: still one non-dot segment, with no separator, `;` or control byte.
fn is_plain_decoded(segment: &[u8]) -> bool {
    !segment.is_empty()
        && segment != b"."
        && segment != b".."
        && !segment.iter().any(|&c| c < 0x20 || c == 0x7f || matches!(c, b'/' | b'\\' | b';'))
}

/// One level of percent-decoding; invalid escapes stay as they are. Only reached for
/// segments that contain `%`, so ordinary requests never allocate here.
fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            if let Some(b) = input.get(i + 1..i + 3).and_then(hex::byte) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_matchable_without_their_query() {
        assert_eq!(matchable(b"/"), Some(&b"/"[..]));
        assert_eq!(matchable(b"/api/stream/abc?x=/../"), Some(&b"/api/stream/abc"[..]));
        assert_eq!(matchable(b"/a/b%20c/d~e"), Some(&b"/a/b%20c/d~e"[..]));
        assert_eq!(matchable(b"/a/.well-known/x..y"), Some(&b"/a/.well-known/x..y"[..]));
        assert_eq!(matchable(b"/a/%41%7e%2d"), Some(&b"/a/%41%7e%2d"[..]));
        assert_eq!(matchable(b"/a/caf%C3%A9"), Some(&b"/a/caf%C3%A9"[..]));
        assert_eq!(matchable(b"/a/50%25"), Some(&b"/a/50%25"[..]));
        assert_eq!(matchable(b"/a/%2541"), Some(&b"/a/%2541"[..]));
        let segs: Vec<&[u8]> = segments(b"/api/stream/abc").collect();
        assert_eq!(segs, [&b"api"[..], b"stream", b"abc"]);
        assert_eq!(segments(b"/").count(), 0);
    }

    #[test]
    fn every_trick_is_refused() {
        for bad in [
            &b""[..],
            b"*",
            b"api/stream",
            b"http://x/api",
            b"//api",
            b"/api//stream",
            b"/api/stream/",
            b"/api/./stream",
            b"/api/../admin",
            b"/api/..",
            b"/api/.",
            b"/api/%2e%2e/admin",
            b"/api/%2E%2E/admin",
            b"/api/.%2e/admin",
            b"/api/%2e/admin",
            b"/api/a%2fb",
            b"/api/a%2Fb",
            b"/api/a%5cb",
            b"/api/a%5Cb",
            b"/api/a\\b",
            b"/api/..;/admin",
            b"/api/a;b",
            b"/api/a%00b",
            b"/api/a%0ab",
            b"/api/a%1Fb",
            b"/api/a%7fb",
            b"/api/a%252eb",
            b"/api/a%252Fb",
            b"/api/a%255cb",
            b"/api/a%252E%252E",
            b"/api/a#b",
            b"/api/a b",
            b"/api/a\tb",
            b"/api/\xc3\xa9",
            b"/api/a\x7fb",
            b"/api/a%25%32%46b",
            b"/api/%25%32%65%25%32%65",
            b"/api/a%253Bb",
            b"/api/%3B",
            b"/api/a%25252eb",
            b"/api/a%2525%32%46",
        ] {
            assert_eq!(matchable(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}

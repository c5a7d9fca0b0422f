//! Reading the request header map in one pass, straight from the host's serialized form.
//!
//! The host hands over all headers in one buffer: a `u32` count, then a `u32` name length
//! and value length per pair, then each name and value followed by a NUL. Reading it in
//! place costs one host call and no allocation per header, treats every byte as a byte
//! (no UTF-8 assumptions), and sees repeated headers such as two `Authorization` lines.

use crate::core::decide::Request;
use crate::core::policy::Forward;
use crate::core::response::WOULD_DENY_HEADER;

/// Iterates over `(name, value)` pairs. A buffer whose length table does not fit yields
/// nothing, and a pair that is not where the table says (each string NUL-terminated) ends
/// the iteration: a broken buffer never yields invented pairs, and the request then lacks
/// headers and fails closed.
pub fn pairs(map: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let count = read_u32(map, 0).unwrap_or(0) as usize;
    let table_fits =
        count.checked_mul(8).and_then(|t| t.checked_add(4)).is_some_and(|end| end <= map.len());
    let count = if table_fits { count } else { 0 };
    let mut data = 4 + count * 8;
    (0..count).map_while(move |i| {
        let name_len = read_u32(map, 4 + i * 8)? as usize;
        let value_len = read_u32(map, 8 + i * 8)? as usize;
        let name_end = data.checked_add(name_len)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        if map.get(name_end) != Some(&0) || map.get(value_end) != Some(&0) {
            return None;
        }
        let (name, value) = (map.get(data..name_end)?, map.get(value_start..value_end)?);
        data = value_end + 1;
        Some((name, value))
    })
}

fn read_u32(map: &[u8], at: usize) -> Option<u32> {
    let bytes = map.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The request as the decision reads it, plus which client-sent headers must go.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scan<'a> {
    pub request: Request<'a>,
    /// The client sent a header keygate owns (identity or `x-keygate-would-deny`).
    pub spoofed_key_id: bool,
    pub spoofed_owner: bool,
    pub spoofed_limits: bool,
    pub spoofed_would_deny: bool,
    /// Every pair the map declares was read. Only then does "not seen" mean "not sent".
    pub complete: bool,
}

/// One pass over the serialized request headers. Envoy stores names in lower case.
pub fn scan<'a>(map: &'a [u8], forward: &Forward) -> Scan<'a> {
    let mut s = Scan::default();
    let mut seen = 0;
    for (name, value) in pairs(map) {
        seen += 1;
        match name {
            b":method" => s.request.method = value,
            b":path" => s.request.path = value,
            b"authorization" => s.request.authorization.push(value),
            b"origin" => s.request.origin.push(value),
            b"access-control-request-method" => s.request.access_control_request_method.push(value),
            n if n == WOULD_DENY_HEADER.as_bytes() => s.spoofed_would_deny = true,
            n if n == forward.key_id_header.as_bytes() => s.spoofed_key_id = true,
            n if n == forward.owner_header.as_bytes() => s.spoofed_owner = true,
            n if n == forward.limits_header.as_bytes() => s.spoofed_limits = true,
            _ => {}
        }
    }
    s.complete = match read_u32(map, 0) {
        Some(declared) => seen == declared as usize,
        None => map.is_empty(),
    };
    s
}

/// Builds a serialized map the way the host does; for tests and fuzzing.
pub fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (n, v) in pairs {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (n, v) in pairs {
        out.extend_from_slice(n);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::decide::Header;

    fn forward() -> Forward {
        Forward {
            key_id_header: "x-api-key-id".into(),
            owner_header: "x-api-key-owner".into(),
            limits_header: "x-api-key-limits".into(),
            strip_authorization: false,
            filter_state: true,
        }
    }

    #[test]
    fn reads_pairs_and_sees_repeats() {
        let map = serialize(&[
            (b":method", b"GET"),
            (b":path", b"/a?b"),
            (b"authorization", b"Bearer x"),
            (b"authorization", b"Bearer \xff"),
            (b"origin", b"https://a.example"),
            (b"x-api-key-id", b"forged"),
        ]);
        let f = forward();
        let s = scan(&map, &f);
        assert_eq!(s.request.method, b"GET");
        assert_eq!(s.request.path, b"/a?b");
        assert_eq!(s.request.authorization, Header::Many);
        assert_eq!(s.request.origin, Header::One(b"https://a.example"));
        assert!(s.spoofed_key_id && !s.spoofed_owner && !s.spoofed_would_deny);
        assert!(s.complete);
    }

    #[test]
    fn a_cut_map_is_never_complete() {
        let map = serialize(&[(b":method", b"GET"), (b"x-api-key-id", b"forged")]);
        let f = forward();
        assert!(scan(&map, &f).complete && scan(&[], &f).complete);
        for cut in 1..map.len() {
            let s = scan(&map[..cut], &f);
            assert!(!s.complete || s.spoofed_key_id, "cut at {cut}");
        }
    }

    #[test]
    fn truncated_buffers_never_yield_invented_pairs() {
        // Found by a property test: clamping the pair count to what the buffer could hold
        // once read names out of the length table.
        let map = serialize(&[
            (b"", b"\x01"),
            (b"", b""),
            (b"x-keygate-would-deny", b"\0\0"),
            (b"authorization", b""),
        ]);
        let whole: Vec<_> = pairs(&map).collect();
        for cut in 0..map.len() {
            let part: Vec<_> = pairs(&map[..cut]).collect();
            assert!(whole.starts_with(&part), "cut at {cut}: {part:?}");
        }
    }

    #[test]
    fn broken_buffers_end_early_without_panicking() {
        let map = serialize(&[(b":method", b"GET"), (b":path", b"/")]);
        for cut in 0..map.len() {
            let _ = pairs(&map[..cut]).count();
        }
        assert_eq!(pairs(&map).count(), 2);
        assert_eq!(pairs(&[0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]).count(), 0);
        assert_eq!(pairs(&[]).count(), 0);
    }
}

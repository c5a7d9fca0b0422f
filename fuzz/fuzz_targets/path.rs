//! A path keygate will match, decoded once or twice the way servers might, still has no
//! dot or empty segment, backslash, semicolon or control byte: no server reads it differently.
#![no_main]
use keygate::core::path::matchable;
use libfuzzer_sys::fuzz_target;

fn decode(input: &[u8]) -> Vec<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn plain(path: &[u8]) -> bool {
    path.len() == 1
        || path[1..].split(|&c| c == b'/').all(|s| {
            !s.is_empty()
                && s != b"."
                && s != b".."
                && !s.iter().any(|&c| c < 0x20 || c == 0x7f || c == b'\\' || c == b';')
        })
}

fuzz_target!(|data: &[u8]| {
    if let Some(path) = matchable(data) {
        assert!(path.starts_with(b"/") && !path.contains(&b'?'));
        let once = decode(path);
        let twice = decode(&once);
        // Decoding may create a `/` only from %2F / %252F, which are refused: so splitting
        // the decoded forms at `/` sees the same segments, each still plain.
        assert!(
            plain(path) && plain(&once) && plain(&twice),
            "{:?}",
            String::from_utf8_lossy(path)
        );
    }
});

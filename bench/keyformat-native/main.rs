//! `keyformat-native MODE N`: N checks of one presented key with the filter's own code, for
//! callgrind (bench/bench_key_format.py runs it at N and at 0 and divides the difference by N).
//! MODE: `valid` (a checksummed key), `bad` (its last character changed), `other` (a key of
//! another format), each as `key_format: checksummed` sees it.

#[path = "../../src/core/keyformat.rs"]
#[allow(dead_code)]
mod keyformat;

use keyformat::{KeyFormat, ALPHABET};
use std::hint::black_box;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, n) = match args.as_slice() {
        [_, mode, n] => (mode.as_str(), n.parse::<u64>().expect("N")),
        _ => panic!("usage: keyformat-native valid|bad|other N"),
    };
    let mut key = b"kg_".to_vec();
    key.extend((0..43).map(|i| ALPHABET[(i * 7 + 3) % 62]));
    let check = keyformat::checksum(&key);
    key.extend_from_slice(&check);
    assert!(keyformat::is_checksummed(&key));
    let presented = match mode {
        "valid" => key,
        "bad" => {
            let last = key.len() - 1;
            key[last] = if key[last] == b'A' { b'B' } else { b'A' };
            key
        }
        "other" => b"not-a-configured-key-0000000".to_vec(),
        _ => panic!("MODE: valid, bad or other"),
    };
    let mut refused = 0u64;
    for _ in 0..n {
        refused += u64::from(black_box(KeyFormat::Checksummed).refuses(black_box(&presented)));
    }
    println!("{mode}: {refused} of {n} refused");
}

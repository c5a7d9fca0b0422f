//! `keygate serve`'s timeout options, refused before anything starts when out of range.

use std::process::Command;

fn serve(args: &[&str]) -> (Option<i32>, String) {
    let out = match Command::new(env!("CARGO_BIN_EXE_keygate"))
        .arg("serve")
        .args(args)
        .env_remove("KEYGATE_ADMIN_TOKEN_SHA256")
        .output()
    {
        Ok(o) => o,
        Err(e) => unreachable!("spawn: {e}"),
    };
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn timeouts_out_of_range_are_refused_with_the_option_named() {
    for (flag, value) in [
        ("--db-lock-timeout-ms", "2147483648"),
        ("--db-statement-timeout-ms", "-1"),
        ("--db-idle-in-transaction-timeout-ms", "1s"),
        ("--admin-timeout-ms", "0"),
        ("--admin-timeout-ms", "3600001"),
    ] {
        let (code, stderr) = serve(&[&format!("{flag}={value}")]);
        assert_eq!(code, Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}

#[test]
fn timeouts_in_range_pass_the_option_check() {
    // Accepted options reach the next check: the admin digests, which are not set here.
    let (code, stderr) = serve(&[
        "--db-lock-timeout-ms",
        "0",
        "--db-statement-timeout-ms",
        "2147483647",
        "--db-idle-in-transaction-timeout-ms",
        "10000",
        "--admin-timeout-ms",
        "3600000",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("KEYGATE_ADMIN_TOKEN_SHA256 is not set"), "{stderr}");
}

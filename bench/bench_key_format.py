"""What `key_format` costs per request: instructions Envoy executes (callgrind), with the filter
set to `any`, `checksummed` and `checksummed_only` and a static table of 10 checksummed keys, for

- a valid checksummed key of the table (allowed: `checksummed` adds one CRC32);
- that key with its last character changed, sent again and again (a well-formed `kg_` key with a
  bad checksum: `any` looks it up, answered from the lookup cache after the first time, and
  refuses it as unknown; the checksummed formats refuse it before the lookup);
- well-formed `kg_` keys with bad checksums, a different one each request (a flood of guesses:
  `any` hashes each with SHA-256 to look it up);
- a key of another format, unknown, sent again and again, and such keys all different (looked up
  with `any` and `checksummed`, refused before the lookup with `checksummed_only`).

    .venv/bin/python bench/bench_key_format.py [--count 2000] [--warmup 2000] [--wasm dist/keygate.wasm]

Beside it, the check alone, native: bench/keyformat-native compiles the filter's own
src/core/keyformat.rs into a small binary that checks one key N times; callgrind counts it at N
and at 0 checks, and the difference over N is the instructions of one check (x86-64, opt-level 3;
built with cargo into $CARGO_TARGET_DIR, or bench/work/target-keyformat).

Needs valgrind (bench/run.sh installs it) and a built dist/keygate.wasm (./wasm-build.sh), which
is copied first so that a rebuild during the run changes nothing. Each row runs under callgrind,
is warmed up (V8 compiles hot wasm code in tiers), its counters are zeroed and exactly `count`
keep-alive requests are counted, as `bench/run.sh --instructions` does. Results are printed
and written to bench/results/<date>-key-format.md.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from datetime import UTC, datetime
from pathlib import Path

from bench import KEYGATE, Variant, envoy_binary, envoy_version
from support.harness import http_filter_wasm

ROOT = Path(__file__).resolve().parents[1]
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
FORMATS = ["any", "checksummed", "checksummed_only"]


def checksummed_key(seed: int) -> str:
    """A key in keygate's format (made here, reproducibly: a benchmark needs no secret)."""
    rng = random.Random(seed)
    signed = "kg_" + "".join(rng.choice(ALPHABET) for _ in range(43))
    n, check = zlib.crc32(signed.encode()), ""
    for _ in range(6):
        n, digit = divmod(n, 62)
        check = ALPHABET[digit] + check
    return signed + check


TABLE = [checksummed_key(i) for i in range(10)]
VALID = TABLE[5]
BAD_CHECKSUM = VALID[:-1] + ("A" if VALID[-1] != "A" else "B")
OTHER_FORMAT = "not-a-configured-key-0000000"


def made_up_keys(n: int) -> list[str]:
    """n different well-formed `kg_` keys whose checksums are wrong, as a flood of guesses sends."""
    keys = [checksummed_key(1_000_000 + i) for i in range(n)]
    return [k[:-1] + ("A" if k[-1] != "A" else "B") for k in keys]


def other_format_keys(n: int) -> list[str]:
    return [f"other-format-key-{i:010d}" for i in range(n)]


ALLOWED = "allowed"
CACHED = "looked up: cached answer, unknown"
HASHED = "looked up: SHA-256, unknown"
REFUSED = "refused before lookup"

# mix: (the keys of n requests, expected status, what each key_format does with them). A key sent
# again is answered from the lookup cache (src/core/verified.rs), unknown keys included; keys that
# differ from request to request each cost a SHA-256 when they are looked up.
MIXES = {
    "valid checksummed key": (lambda n: [VALID] * n, 200, dict.fromkeys(FORMATS, ALLOWED)),
    "kg_ key, bad checksum, sent again": (
        lambda n: [BAD_CHECKSUM] * n,
        401,
        {"any": CACHED, "checksummed": REFUSED, "checksummed_only": REFUSED},
    ),
    "kg_ keys, bad checksums, all different": (
        made_up_keys,
        401,
        {"any": HASHED, "checksummed": REFUSED, "checksummed_only": REFUSED},
    ),
    "other format, unknown, sent again": (
        lambda n: [OTHER_FORMAT] * n,
        401,
        {"any": CACHED, "checksummed": CACHED, "checksummed_only": REFUSED},
    ),
    "other format, unknown, all different": (
        other_format_keys,
        401,
        {"any": HASHED, "checksummed": HASHED, "checksummed_only": REFUSED},
    ),
}


def config(key_format: str) -> dict:
    keys = [{"id": f"k{i}", "sha256": hashlib.sha256(k.encode()).hexdigest()} for i, k in enumerate(TABLE)]
    return {"keys": keys, "key_format": key_format}


def requests(port: int, keys: list[str], status: int) -> None:
    """One GET per key on one keep-alive connection, each answered `status`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for key in keys:
        conn.request("GET", "/api/x", headers={"Authorization": f"Bearer {key}"})
        r = conn.getresponse()
        r.read()
        if r.status != status:
            raise RuntimeError(f"{key[:12]}...: {r.status} from :{port}, expected {status}")
        if r.will_close:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.close()


def counter(v: Variant, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{v.admin}/stats?format=json&filter=keygate", timeout=30) as r:
        stats = json.load(r)["stats"]
    return sum(s.get("value", 0) for s in stats if s.get("name") == f"wasmcustom.keygate.{name}")


def counted(v: Variant, keys: list[str], status: int) -> float:
    """Instructions per request over one request per key, all Envoy threads."""
    subprocess.run(["callgrind_control", "-z", str(v.proc.pid)], check=True, capture_output=True)
    requests(v.port, keys, status)
    subprocess.run(["callgrind_control", "-d", str(v.proc.pid)], check=True, capture_output=True)
    dump = sorted(v.dir.glob("callgrind.out.*"), key=lambda f: f.stat().st_mtime)[-1]
    return callgrind_total(dump) / len(keys)


def callgrind_total(out: Path) -> int:
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def native(work: Path, checks: int) -> dict[str, float]:
    """Instructions of one `KeyFormat::Checksummed.refuses` call, native, by mode."""
    crate = ROOT / "bench" / "keyformat-native"
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "bench" / "work" / "target-keyformat"))
    subprocess.run(
        ["cargo", "build", "--quiet", "--release", "--manifest-path", str(crate / "Cargo.toml")],
        check=True,
        env={**os.environ, "CARGO_TARGET_DIR": str(target)},
    )
    binary = target / "release" / "keyformat-native"
    per_check = {}
    for mode in ("valid", "bad", "other"):
        totals = []
        for n in (0, checks):
            out = work / f"native-{mode}-{n}.callgrind"
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", str(binary), mode, str(n)],
                check=True,
                capture_output=True,
            )
            totals.append(callgrind_total(out))
        per_check[mode] = (totals[1] - totals[0]) / checks
        print(f"  native {mode:<6} {per_check[mode]:>8,.1f} instructions/check", flush=True)
    return per_check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=2000, help="counted requests per row")
    ap.add_argument("--warmup", type=int, default=2000, help="warm-up requests per row")
    ap.add_argument("--wasm", type=Path, default=KEYGATE)
    ap.add_argument("--native-checks", type=int, default=100_000, help="checks counted in the native figure")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-key-format-"))
    wasm = work / "keygate.wasm"
    shutil.copyfile(args.wasm, wasm)
    digest = hashlib.sha256(wasm.read_bytes()).hexdigest()
    envoy = envoy_binary()
    callgrind = ["valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--collect-atstart=yes"]

    per_check = native(work, args.native_checks)
    rows: list[tuple[str, str, str, float, int]] = []
    plan = [("no auth", Variant("no_auth", []), {"valid checksummed key": MIXES["valid checksummed key"]})]
    plan += [(f, Variant(f"key_format_{f}", [http_filter_wasm(config(f), wasm=wasm)]), MIXES) for f in FORMATS]
    for name, v, mixes in plan:
        v.command = [*callgrind, f"--callgrind-out-file={v.dir}/callgrind.out.%p", envoy]
        v.start(timeout=600)
        try:
            for mix, (keys_for, status, does) in mixes.items():
                keys = keys_for(args.warmup + args.count)
                before = counter(v, "denied_checksum") if name != "no auth" else 0
                requests(v.port, keys[: args.warmup], status)
                ir = counted(v, keys[args.warmup :], status)
                time.sleep(2)  # keygate adds its counts to Envoy's on a tick
                refused = counter(v, "denied_checksum") - before if name != "no auth" else 0
                rows.append((name, mix, does.get(name, "-"), ir, refused))
                print(
                    f"  {name:<17} {mix:<40} {ir:>10,.0f} instructions/request  denied_checksum +{refused}", flush=True
                )
        finally:
            v.stop()

    base = rows[0][3]
    by = {(name, mix): ir for name, mix, _, ir, _ in rows}
    total = args.warmup + args.count
    for name, mix, outcome, _, refused in rows[1:]:
        want = total if outcome == REFUSED else 0
        if refused != want:
            raise RuntimeError(f"{name}, {mix}: denied_checksum went up by {refused}, expected {want}")
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    command = " ".join(["bench/bench_key_format.py"] + [shlex.quote(a) for a in sys.argv[1:]])
    lines = [
        f"# keygate key_format: instructions per request {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Reproduce: `.venv/bin/python {command}` (commit {sha}; keygate.wasm {wasm.stat().st_size:,} bytes, "
        f"sha256 {digest[:16]}...).",
        "",
        f"callgrind, Envoy {envoy_version()} with one worker; keygate with a static table of 10 checksummed keys; "
        f"{args.warmup:,} warm-up requests, then {args.count:,} counted keep-alive requests per row (all Envoy "
        "threads, instructions retired). Deterministic: a rerun of the same binaries gives the same figures within "
        "a fraction of a percent. `denied_checksum` is keygate's counter over the row's warm-up and counted "
        "requests: every request refused before the lookup is in it.",
        "",
        "| key_format | presented key | what keygate does | instructions/request | over no auth "
        "| over `any`, same keys "
        "| denied_checksum |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, mix, outcome, ir, refused in rows:
        over_any = "" if name in ("no auth", "any") else f"{ir - by[('any', mix)]:+,.0f}"
        lines.append(f"| {name} | {mix} | {outcome} | {ir:,.0f} | {ir - base:+,.0f} | {over_any} | {refused:,} |")
    lines += [
        "",
        f"The check alone, native (bench/keyformat-native: the filter's src/core/keyformat.rs, x86-64, "
        f"opt-level 3): `KeyFormat::Checksummed.refuses(key)`, instructions per call, from callgrind at "
        f"{args.native_checks:,} calls and at none.",
        "",
        "| presented key | instructions/call |",
        "|---|---:|",
        f"| valid checksummed key | {per_check['valid']:,.0f} |",
        f"| kg_ key, bad checksum | {per_check['bad']:,.0f} |",
        f"| other format | {per_check['other']:,.0f} |",
    ]
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / f"{datetime.now(UTC):%Y-%m-%d-%H%M}-key-format.md"
    out.write_text(text)
    print("\n" + text + f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

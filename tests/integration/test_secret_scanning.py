"""The scanner patterns shipped in docs/secret-scanning/, against keys made by `keygate key new`:

- the real detect-secrets, with only the shipped plugin, reports exactly the real key in a file of
  keys, broken copies and lookalikes;
- the gitleaks and GitHub regexes, read from the shipped files, match the real key and the copies
  of the right shape with a wrong checksum (a regex cannot compute a CRC32), and no lookalike;
- the plugin's checksum agrees with keygate's own checker (the filter in a real Envoy with
  `key_format: checksummed_only`) on a few hundred CLI keys and broken copies of each.

Needs `cargo build -p keygate-tools --bin keygate` (target/debug/keygate, or KEYGATE_BIN) and
detect-secrets in the venv (tests/requirements.txt).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import math
import random
import re
import subprocess
import tomllib
from collections import Counter

import pytest

from support.harness import ROOT, bearer, sha256_hex
from support.service import KEYGATE, run_keygate

if not KEYGATE.exists():
    raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools --bin keygate")

PATTERNS = ROOT / "docs" / "secret-scanning"
PLUGIN = PATTERNS / "keygate_detect_secrets.py"
DETECT_SECRETS = ROOT / ".venv" / "bin" / "detect-secrets"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LEN = 52
CLI_KEYS = 300


def load_plugin():
    spec = importlib.util.spec_from_file_location("keygate_detect_secrets", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plugin = load_plugin()


def new_key() -> str:
    p = run_keygate("key", "new", "--id", "scan")
    assert p.returncode == 0, p.stderr
    [key] = re.findall(r"kg_[0-9A-Za-z]+", p.stdout.splitlines()[0])
    assert len(key) == LEN, key
    return key


def changed(key: str, at: int) -> str:
    """`key` with the base62 character at `at` replaced by the next one in the alphabet."""
    return key[:at] + ALPHABET[(ALPHABET.index(key[at]) + 1) % 62] + key[at + 1 :]


def lowercase_wrong_checksum(rng: random.Random) -> str:
    """`kg_` and 49 lowercase letters: the right shape, with a checksum that is wrong."""
    while True:
        s = "kg_" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(49))
        if plugin.checksum(s[:46]) != s[46:]:
            return s


def old_format(rng: random.Random) -> str:
    """The format before the checksum: `kg_` + 43 base64url characters (32 bytes)."""
    while True:
        s = "kg_" + base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip("=")
        if "-" in s or "_" in s[3:]:
            return s


def shannon_entropy(s: str) -> float:
    """As gitleaks computes it for a rule's `entropy` (over the secret group's characters)."""
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def samples(real: str) -> list[tuple[str, str, str | None]]:
    """(name, line of a file, what a regex finds in it or None). Only "real" is a key keygate
    issued; the other lines with a match have the key's shape and a wrong checksum."""
    rng = random.Random(real)
    bad_check, bad_body, lower = changed(real, 49), changed(real, 10), lowercase_wrong_checksum(rng)
    placeholder = "kg_" + "x" * 49
    return [
        ("one short", f"k = {real[:-1]}", None),
        ("broken checksum", f"KEYGATE_KEY={bad_check}", bad_check),
        ("one long", f"k = {real}Z", None),
        ("broken body", f"KEYGATE_KEY={bad_body}", bad_body),
        ("inside a longer word", f"token{real}", None),
        ("underscore after", f"k = {real}_v2", None),
        ("real", f'api_key = "{real}"', real),
        ("underscore before", f"k = my_{real}", None),
        ("dash for underscore", f"k = kg-{real[3:]}", None),
        ("lowercase, wrong checksum", f"k = {lower}", lower),
        ("placeholder", f"KEYGATE_KEY={placeholder}", placeholder),
        ("old base64url format", f"k = {old_format(rng)}", None),
    ]


# gitleaks skips a match whose entropy is under the rule's floor: only the placeholder here.
LOW_ENTROPY = {"placeholder"}


@pytest.fixture(scope="module")
def cli_keys() -> list[str]:
    keys = [new_key() for _ in range(CLI_KEYS)]
    assert len(set(keys)) == CLI_KEYS
    return keys


def test_detect_secrets_with_the_shipped_plugin_reports_exactly_the_real_key(tmp_path):
    real = new_key()
    lines = samples(real)
    target = tmp_path / "settings.env"
    target.write_text("\n".join(line for _, line, _ in lines) + "\n")
    listed = subprocess.run(
        [str(DETECT_SECRETS), "scan", "--list-all-plugins"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "AWSKeyDetector" in listed and "KeygateKeyDetector" not in listed, listed
    others = [arg for name in listed for arg in ("--disable-plugin", name)]
    scan = subprocess.run(
        [str(DETECT_SECRETS), "scan", "--plugin", str(PLUGIN), *others, str(target)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert scan.returncode == 0, scan.stderr
    out = json.loads(scan.stdout)
    assert [p["name"] for p in out["plugins_used"]] == ["KeygateKeyDetector"]
    found = [r for file_results in out["results"].values() for r in file_results]
    real_line = 1 + [name for name, _, _ in lines].index("real")
    assert [(r["type"], r["line_number"], r["hashed_secret"]) for r in found] == [
        ("keygate API key", real_line, hashlib.sha1(real.encode()).hexdigest())
    ], found


def github_table() -> dict[str, str]:
    """The field/value table of github-custom-pattern.md, with the markdown escapes undone."""
    table = {}
    for row in (PATTERNS / "github-custom-pattern.md").read_text().splitlines():
        cells = [c.strip().strip("`").replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        if len(cells) == 2:
            table[cells[0]] = cells[1]
    return table


def test_the_gitleaks_and_github_regexes_match_the_key_and_its_shape_and_no_lookalike():
    real = new_key()
    gitleaks = tomllib.loads((PATTERNS / "gitleaks.toml").read_text())
    [rule] = gitleaks["rules"]
    assert (rule["id"], rule["keywords"], gitleaks["extend"]["useDefault"]) == ("keygate-api-key", ["kg_"], True)
    # gitleaks compiles the regex with Go's RE2, whose \b is ASCII's (\w = [0-9A-Za-z_]); Python's
    # is Unicode's unless re.ASCII, so re.ASCII makes it the same. Nothing else in the regex
    # (classes, counts, a group) reads differently in the two.
    gitleaks_regex = re.compile(rule["regex"], re.ASCII)

    table = github_table()
    secret, before, after = table["Secret format"], table["Before secret"], table["After secret"]
    # GitHub's patterns are Hyperscan's (PCRE) syntax, where \z is the end of the text; Python
    # spells that \Z. \A, the classes and the counts are the same in both.
    assert after.count("\\z") == 1
    after = after.replace("\\z", "\\Z")
    github_regex = re.compile(f"(?:{before})({secret})(?:{after})")

    def gitleaks_found(line: str) -> list[str]:
        secrets = [m.group(rule["secretGroup"]) for m in gitleaks_regex.finditer(line)]
        return [s for s in secrets if shannon_entropy(s) >= rule["entropy"]]

    def github_found(line: str) -> list[str]:
        return [m.group(1) for m in github_regex.finditer(line)]

    for name, line, shape in samples(real):
        assert github_found(line) == ([shape] if shape else []), name
        assert gitleaks_found(line) == ([shape] if shape and name not in LOW_ENTROPY else []), name
        assert plugin.is_keygate_key(shape or "") is (name == "real"), name
    test_string = table["Test string"]
    example = test_string.split("=", 1)[1]
    assert github_found(test_string) == [example] and gitleaks_found(test_string) == [example]
    assert plugin.is_keygate_key(example)


def test_gitleaks_entropy_floor_keeps_every_cli_key(cli_keys):
    floor = tomllib.loads((PATTERNS / "gitleaks.toml").read_text())["rules"][0]["entropy"]
    lowest = min(shannon_entropy(k) for k in cli_keys)
    assert lowest > floor + 0.5, lowest
    assert shannon_entropy("kg_" + "x" * 49) < floor and shannon_entropy("kg_" + "A" * 43 + "000000") < floor


def test_the_plugin_and_the_filters_checker_agree_on_cli_keys_and_broken_copies(cli_keys, envoy_factory):
    """keygate's checker is the filter's: with `checksummed_only`, a key the table holds is
    allowed (200) only if its checksum is valid, and refused before the lookup (401, counted as
    denied_checksum) otherwise. Every string here is in the table, so the answer is the checker's."""
    rng = random.Random(1)
    broken = [changed(k, rng.randrange(3, 46)) for k in cli_keys]  # a body character
    broken += [changed(k, rng.randrange(46, LEN)) for k in cli_keys[:50]]  # a checksum character
    broken += [k[:3] + k[3:].swapcase() for k in cli_keys[:50]]
    broken += [lowercase_wrong_checksum(rng) for _ in range(20)]
    every = cli_keys + broken
    assert len(set(every)) == len(every)
    table = [{"id": f"k{i}", "sha256": sha256_hex(k)} for i, k in enumerate(every)]
    e = envoy_factory({"keys": table, "key_format": "checksummed_only"})
    before = e.counter("denied_checksum")
    filters = {k: e.get("/scan", headers=[bearer(k)]).status for k in every}
    assert set(filters.values()) == {200, 401}
    rust = {k: status == 200 for k, status in filters.items()}
    python = {k: plugin.is_keygate_key(k) for k in every}
    assert python == rust
    assert [k for k in every if rust[k]] == cli_keys
    e.wait_counter("denied_checksum", before + len(broken))


def test_the_plugins_base62_crc32_gives_the_filters_own_test_vectors():
    # src/core/keyformat.rs's unit tests: CRC32("123456789") = 0xCBF43926 = "3jZRME".
    assert plugin.checksum("123456789") == "3jZRME" and plugin.checksum("") == "000000"
    assert plugin.base62_decode("3jZRME") == 0xCBF43926 and plugin.base62_decode("000000") == 0

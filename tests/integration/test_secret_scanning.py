"""The scanner patterns shipped in docs/secret-scanning/: the real detect-secrets, with the shipped
plugin, flags exactly the real key in a file of keys and lookalikes; the gitleaks and GitHub regexes
match the keys (checksums cannot be checked by a regex) and none of the lookalikes; and the
plugin's checksum agrees with keys made by the keygate CLI.

Needs `cargo build -p keygate-tools` (target/debug/keygate) and detect-secrets (tests/requirements.txt).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import tomllib

from support.harness import ROOT
from support.service import KEYGATE, run_keygate

if not KEYGATE.exists():
    raise RuntimeError(f"{KEYGATE} is missing: run cargo build -p keygate-tools")

PATTERNS = ROOT / "docs" / "secret-scanning"
PLUGIN = PATTERNS / "keygate_detect_secrets.py"
DETECT_SECRETS = ROOT / ".venv" / "bin" / "detect-secrets"


def plugin():
    spec = importlib.util.spec_from_file_location("keygate_detect_secrets", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def new_key() -> str:
    p = run_keygate("key", "new", "--id", "scan")
    assert p.returncode == 0, p.stderr
    [key] = re.findall(r"kg_\S+", p.stdout.splitlines()[0])
    return key


def changed(key: str, at: int) -> str:
    return key[:at] + ("A" if key[at] != "A" else "B") + key[at + 1:]


def samples(real: str) -> dict[str, str]:
    """Lines of a file: the real key, two broken copies, and lookalikes that are no key."""
    return {
        "real": f'api_key = "{real}"',
        "broken checksum": f"KEYGATE_KEY={changed(real, 50)}",
        "broken body": f"KEYGATE_KEY={changed(real, 10)}",
        "one short": f"k = {real[:-1]}",
        "one long": f"k = {real}Z",
        "inside a word": f"prefix_{real[3:]}kg_",
        "inside a longer run": f"x{real}",
        "dash prefix": f"k = kg-{real[3:]}",
        "old base64url format": "k = kg_Zm9vYmFyX2Jhel9xdXV4LWNvcmdlX2dyYXVsdF9nYXJwbHk",
        "underscore after": f"k = {real}_v2",
    }


def test_detect_secrets_with_the_shipped_plugin_flags_exactly_the_real_key(tmp_path):
    real = new_key()
    lines = samples(real)
    target = tmp_path / "settings.env"
    target.write_text("\n".join(lines.values()) + "\n")
    listed = subprocess.run([str(DETECT_SECRETS), "scan", "--list-all-plugins"], capture_output=True, text=True,
                            check=True).stdout.split()
    others = [arg for name in listed for arg in ("--disable-plugin", name)]
    scan = subprocess.run([str(DETECT_SECRETS), "scan", "--plugin", str(PLUGIN), *others, str(target)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert scan.returncode == 0, scan.stderr
    results = json.loads(scan.stdout)["results"]
    found = [r for file_results in results.values() for r in file_results]
    assert [(r["type"], r["line_number"], r["hashed_secret"]) for r in found] == [
        ("keygate API key", 1, hashlib.sha1(real.encode()).hexdigest())
    ], found


def test_the_gitleaks_and_github_regexes_match_keys_and_no_lookalike():
    real = new_key()
    lines = samples(real)
    gitleaks = tomllib.loads((PATTERNS / "gitleaks.toml").read_text())
    [rule] = gitleaks["rules"]
    assert rule["keywords"] == ["kg_"] and gitleaks["extend"]["useDefault"] is True
    # Go's RE2 and Python's re read this regex (classes, counts, \b) the same way.
    gitleaks_regex = re.compile(rule["regex"])
    table = {}
    for row in (PATTERNS / "github-custom-pattern.md").read_text().splitlines():
        cells = [c.strip().strip("`").replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        if len(cells) == 2:
            table[cells[0]] = cells[1]
    secret = table["Secret format"]
    before, after = table["Before secret (under \"More options\")"], table["After secret"]
    # GitHub's syntax (RE2's) ends the text with \z, Python's with \Z; nothing else differs here.
    after = after.replace("\\z", "\\Z")
    github_regex = re.compile(f"(?:{before})({secret})(?:{after})")

    def gitleaks_found(line):
        return [m.group(rule["secretGroup"]) for m in gitleaks_regex.finditer(line)]

    def github_found(line):
        return [m.group(1) for m in github_regex.finditer(line)]

    keys = {"real": real, "broken checksum": changed(real, 50), "broken body": changed(real, 10)}
    for name, line in lines.items():
        expected = [keys[name]] if name in keys else []
        assert gitleaks_found(line) == expected, name
        assert github_found(line) == expected, name
    assert github_found(table["Test string"]) == [table["Test string"].split("=")[1]]
    assert plugin().is_keygate_key(table["Test string"].split("=")[1])


def test_the_plugins_checksum_agrees_with_keys_the_cli_makes():
    check = plugin()
    keys = [new_key() for _ in range(40)]
    assert all(check.is_keygate_key(k) for k in keys)
    for k in keys:
        for at in (3, 30, 45, 46, 51):
            assert not check.is_keygate_key(changed(k, at)), (k, at)
    assert not check.is_keygate_key(keys[0] + "A")

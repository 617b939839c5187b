"""Signed reports: the round trip, any change detected, the wrong key detected, and exit codes
of ``report verify`` (0 valid, 1 invalid, 2 unreadable)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scan_helpers import run_cli

from distillmark.verify.report import canonical_json, read_report
from distillmark.verify.signing import (
    check_signature,
    load_private_key,
    load_public_key,
    new_signing_key,
    sign_report,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    priv, pub, _ = new_signing_key(d / "signer")
    _, other, _ = new_signing_key(d / "other")
    return priv, pub, other


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path, Path],
           key_file: Path, marked: list[str]) -> Path:
    d = tmp_path_factory.mktemp("signed")
    text = d / "t.txt"
    text.write_text(marked[1], encoding="utf-8")
    out = d / "r.json"
    r = run_cli("detect", "-k", key_file, text, "--report", out, "--sign", keys[0])
    assert r.exit_code == 0, r.stderr
    return out


def verify(path: Path, pub: Path) -> Any:
    return run_cli("report", "verify", path, "--public-key", pub)


def test_round_trip(signed: Path, keys: tuple[Path, Path, Path]) -> None:
    r = verify(signed, keys[1])
    assert r.exit_code == 0 and "signature valid" in r.stdout
    report = read_report(signed)
    assert check_signature(report, load_public_key(keys[1])).valid
    # signing again gives a valid signature too (Ed25519 is deterministic: the same one)
    again = sign_report(report, load_private_key(keys[0]))
    assert again["signature"] == report["signature"]


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every leaf's path (lists: their first and last items only)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, k))
    elif isinstance(value, list):
        for i in sorted({0, len(value) - 1}) if value else ():
            yield from leaves(value[i], (*path, i))
    else:
        yield path


def changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if value is None:
        return 0
    return str(value) + "x"


def test_any_change_is_detected(tmp_path: Path, signed: Path,
                                keys: tuple[Path, Path, Path]) -> None:
    report = read_report(signed)
    paths = list(leaves(report))
    assert len(paths) > 60
    for path in paths:
        doc = json.loads(signed.read_bytes())
        node = doc
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = changed(node[path[-1]])
        f = tmp_path / "t.json"
        f.write_bytes(canonical_json(doc))
        r = verify(f, keys[1])
        if path == ("distillmark_report",):  # another format version: not read at all
            assert r.exit_code == 2 and "report version" in r.stderr
            continue
        assert r.exit_code == 1 and "INVALID" in r.stdout, path
    # a member added, or the signature removed
    for doc in ({**report, "extra": 1}, {k: v for k, v in report.items() if k != "signature"}):
        f = tmp_path / "t.json"
        f.write_bytes(canonical_json(doc))
        assert verify(f, keys[1]).exit_code == 1


def test_wrong_public_key(signed: Path, keys: tuple[Path, Path, Path]) -> None:
    r = verify(signed, keys[2])
    assert r.exit_code == 1 and "signed by another key" in r.stdout


def test_errors_exit_2(tmp_path: Path, signed: Path, keys: tuple[Path, Path, Path]) -> None:
    cases = {"missing": tmp_path / "none.json", "not json": tmp_path / "a.json",
             "not a report": tmp_path / "b.json", "a folder": tmp_path}
    cases["not json"].write_text("{nope")
    cases["not a report"].write_text('{"command": "detect"}')
    for what, path in cases.items():
        r = verify(path, keys[1])
        assert r.exit_code == 2 and r.stderr.startswith("distillmark: error: "), what
        assert r.stderr.count("\n") == 1, what
    assert verify(signed, keys[0]).exit_code == 2  # a private key is no public key
    assert verify(signed, tmp_path / "none.pub").exit_code == 2

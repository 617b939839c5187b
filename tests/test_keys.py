"""Watermark specs: key generation, the key file, loading errors, per-account derivation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distillmark.watermark import (
    InputError,
    SpecError,
    TokenizerInfo,
    WatermarkSpec,
    load_spec,
    new_spec,
    save_spec,
)
from distillmark.watermark.keys import key_id_of
from distillmark.watermark.prf import derive_subkey
from distillmark.watermark.tokenizer import tokenizer_for

SECRET = bytes(range(32))
#: Recorded from the implementation: ``key_id_of(bytes(range(32)))``.
KAT_KEY_ID = "dmk-c0a43a3c32eb211e"
#: Recorded from the implementation: the integrity tag of the spec in
#: ``test_the_tag_is_an_hmac_of_the_canonical_fields``.
KAT_SPEC_MAC = "57c528bc522aa7f165f1b1a921189aea05fef334ee1b4263295e357bf8149643"


def _secret_forms(secret: bytes) -> list[str]:
    return [base64.b64encode(secret).decode(), secret.hex(), repr(secret), str(list(secret))]


@pytest.fixture
def fresh_spec(tokenizer_info: TokenizerInfo) -> WatermarkSpec:
    """A spec with a fresh secret from the OS's CSPRNG, as `keygen` makes it."""
    return new_spec("greenlist", {}, tokenizer_info)


# -- keygen and the key file ------------------------------------------------------------------

def test_keygen_file_mode_and_round_trip(fresh_spec: WatermarkSpec, tmp_path: Path) -> None:
    path = save_spec(fresh_spec, tmp_path / "key.json")
    assert path == tmp_path / "key.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json"]  # no temp file left
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0600 file must load without a permission warning
        loaded = load_spec(path)
    assert loaded == fresh_spec
    assert loaded.secret == fresh_spec.secret
    assert loaded.key_id == fresh_spec.key_id
    assert loaded.params == fresh_spec.params
    assert loaded.tokenizer == fresh_spec.tokenizer
    assert loaded.created == fresh_spec.created


def test_new_spec_fills_in_defaults_and_secret(tokenizer_info: TokenizerInfo) -> None:
    a = new_spec("greenlist", {"gamma": 0.5}, tokenizer_info)
    b = new_spec("greenlist", {"gamma": 0.5}, tokenizer_info)
    assert len(a.secret) == 32 and a.secret != b.secret and a.key_id != b.key_id
    assert a.params["gamma"] == 0.5
    assert {"delta", "context_width", "seeding", "combine", "n_lists", "top_k"} <= set(a.params)
    assert a.vocab_size == tokenizer_info.vocab_size == 49152
    assert a.created.endswith("Z")


def test_secret_never_in_repr_or_public_dict(fresh_spec: WatermarkSpec) -> None:
    text = repr(fresh_spec) + str(fresh_spec) + json.dumps(fresh_spec.public_dict())
    for form in _secret_forms(fresh_spec.secret):
        assert form not in text
    assert "secret" not in fresh_spec.public_dict()
    assert fresh_spec.key_id in repr(fresh_spec)
    assert fresh_spec.public_dict()["key_id"] == fresh_spec.key_id
    # the check above can fail: the key file itself does hold the secret
    assert _secret_forms(fresh_spec.secret)[0] in fresh_spec.to_json()


def test_save_refuses_to_overwrite(spec_factory: Callable[..., WatermarkSpec],
                                   fresh_spec: WatermarkSpec, tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    save_spec(spec_factory(), path)
    before = path.read_bytes()
    with pytest.raises(SpecError, match="already exists; refusing to overwrite") as exc:
        save_spec(fresh_spec, path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    assert path.read_bytes() == before
    save_spec(fresh_spec, path, overwrite=True)
    assert load_spec(path).key_id == fresh_spec.key_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_errors(fresh_spec: WatermarkSpec, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="is a directory; give a file name"):
        save_spec(fresh_spec, tmp_path)
    with pytest.raises(SpecError, match="does not exist"):
        save_spec(fresh_spec, tmp_path / "no" / "such" / "key.json")


def test_interrupted_save_leaves_no_file(fresh_spec: WatermarkSpec, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(InputError, match=r"^cannot write key file .*key\.json: disk full$"):
        save_spec(fresh_spec, tmp_path / "key.json")
    assert list(tmp_path.iterdir()) == []


def test_load_warns_on_readable_file(spec_factory: Callable[..., WatermarkSpec],
                                     tmp_path: Path) -> None:
    path = save_spec(spec_factory(), tmp_path / "key.json")
    path.chmod(0o644)
    with pytest.warns(UserWarning, match="readable by other users"):
        assert load_spec(path).key_id == KAT_KEY_ID


# -- key ids ----------------------------------------------------------------------------------------

def test_key_id_is_a_deterministic_function_of_the_secret(
        spec_factory: Callable[..., WatermarkSpec]) -> None:
    assert key_id_of(SECRET) == KAT_KEY_ID
    assert key_id_of(SECRET) == "dmk-" + derive_subkey(SECRET, "key-id", length=8).hex()
    assert spec_factory().key_id == KAT_KEY_ID
    assert spec_factory(gamma=0.5, context_width=2).key_id == KAT_KEY_ID  # params do not matter
    assert spec_factory(secret=bytes(range(1, 33))).key_id != KAT_KEY_ID
    assert len(KAT_KEY_ID) == len("dmk-") + 16


def test_spec_rejects_wrong_secret_and_foreign_key_id(tokenizer_info: TokenizerInfo) -> None:
    with pytest.raises(SpecError, match="secret must be 32 bytes"):
        WatermarkSpec(secret=bytes(16), scheme="greenlist", params={}, tokenizer=tokenizer_info)
    with pytest.raises(SpecError, match="does not belong to this secret"):
        WatermarkSpec(secret=SECRET, scheme="greenlist", params={}, tokenizer=tokenizer_info,
                      key_id="dmk-0000000000000000")


def test_new_spec_validates_params(tokenizer_info: TokenizerInfo) -> None:
    with pytest.raises(SpecError, match="`gamma` must be in \\(0, 1\\), got 1.5"):
        new_spec("greenlist", {"gamma": 1.5}, tokenizer_info)
    with pytest.raises(SpecError, match="unknown greenlist parameter\\(s\\): colour"):
        new_spec("greenlist", {"colour": "green"}, tokenizer_info)
    with pytest.raises(SpecError, match="unknown scheme 'kgw2'"):
        new_spec("kgw2", {}, tokenizer_info)


# -- loading: one SpecError line for each problem ------------------------------------------------

def _valid_dict(spec: WatermarkSpec) -> dict[str, Any]:
    return json.loads(spec.to_json())


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def _mutated(spec: WatermarkSpec, mutate: Callable[[dict[str, Any]], None]) -> str:
    d = _valid_dict(spec)
    mutate(d)
    return json.dumps(d)


def test_load_missing_file(tmp_path: Path) -> None:
    msg = _load_error(tmp_path / "nope.json")
    assert f"key file {tmp_path / 'nope.json'} does not exist" in msg
    assert "distillmark keygen" in msg


def test_load_directory(tmp_path: Path) -> None:
    msg = _load_error(tmp_path)
    assert f"key file {tmp_path} is a directory, not a key file" in msg


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        d[key] = value
    return mutate


def _drop(*path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        for key in path[:-1]:
            d = d[key]
        del d[path[-1]]
    return mutate


def _set_param(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(d: dict[str, Any]) -> None:
        d["params"][name] = value
    return mutate


def _tamper_key_id(d: dict[str, Any]) -> None:
    d["key_id"] = key_id_of(bytes(range(1, 33)))


BAD_CONTENT: dict[str, tuple[Any, list[str]]] = {
    # case: (content or mutation of a valid spec dict, substrings of the message)
    "not utf-8": (b'{"a": "\xff"}', ["is not UTF-8 (byte offset 7)"]),
    "not json": ("{distillmark_spec: 1", ["is not valid JSON: ", "at line 1 column 2"]),
    "empty": ("", ["is not valid JSON: Expecting value at line 1 column 1"]),
    "json list": ("[1, 2]", ["must hold a JSON object"]),
    "no format field": (_drop("distillmark_spec"),
                        ["is not a distillmark spec (no 'distillmark_spec' field)"]),
    "version 3": (_set("distillmark_spec", 3),
                  [("has spec version 3; this distillmark reads versions 1 and 2 (upgrade "
                   "distillmark)")]),
    "version string": (_set("distillmark_spec", "1"), ["has spec version '1'"]),
    "missing secret": (_drop("secret"), ["missing field 'secret'"]),
    "missing scheme": (_drop("scheme"), ["missing field 'scheme'"]),
    "missing params": (_drop("params"), ["missing field 'params'"]),
    "missing key_id": (_drop("key_id"), ["missing field 'key_id'"]),
    "missing tokenizer": (_drop("tokenizer"), ["missing field 'tokenizer'"]),
    "missing tokenizer sha": (_drop("tokenizer", "sha256"),
                              ["tokenizer: missing field 'sha256'"]),
    "secret not str": (_set("secret", 12), ["field 'secret' must be str, got int"]),
    "vocab_size bool": (lambda d: d["tokenizer"].__setitem__("vocab_size", True),
                        ["field 'vocab_size' must be int, got bool"]),
    "bad base64": (_set("secret", "not*base64!"), ["field 'secret' is not valid base64"]),
    "short secret": (_set("secret", base64.b64encode(bytes(16)).decode()),
                     ["secret must decode to 32 bytes, got 16"]),
    "long secret": (_set("secret", base64.b64encode(bytes(33)).decode()),
                    ["secret must decode to 32 bytes, got 33"]),
    "tampered key_id": (_tamper_key_id,
                        ["key_id 'dmk-", "does not belong to this secret",
                         "(the spec was edited or corrupted)"]),
    "unknown scheme": (_set("scheme", "kgw2"), ["unknown scheme 'kgw2'; known: greenlist"]),
    "gamma 1.5": (_set_param("gamma", 1.5), ["`gamma` must be in (0, 1), got 1.5"]),
    "context_width 9": (_set_param("context_width", 9), ["`context_width` must be in 0..8"]),
    "unknown param": (_set_param("colour", "green"),
                      ["unknown greenlist parameter(s): colour"]),
    "per-account key": (_set("account", {"id": "alice", "parent_key_id": "dmk-0"}),
                        ["is a per-account key derived from a master key"]),
    "bad account layer": (_set("accounts", {"gamma": 0.3}),
                          ["field 'accounts': account layer `gamma` must be 0.25 or 0.5"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
def test_load_error_messages(case: str, spec_factory: Callable[..., WatermarkSpec],
                             tmp_path: Path) -> None:
    content, expected = BAD_CONTENT[case]
    if callable(content):
        content = _mutated(spec_factory(), content)
    path = _write(tmp_path / "key.json", content)
    msg = _load_error(path)
    assert msg.startswith(f"key file {path}"), msg
    for part in expected:
        assert part in msg, (part, msg)


def test_load_rejects_boolean_version(spec_factory: Callable[..., WatermarkSpec],
                                      tmp_path: Path) -> None:
    # JSON `true` is not the version number 1 (Python's True == 1 must not let it through);
    # the loader rejects booleans for every other integer field.
    path = _write(tmp_path / "key.json", _mutated(spec_factory(), _set("distillmark_spec", True)))
    msg = _load_error(path)
    assert "has spec version True" in msg


def test_load_accepts_the_unmodified_file(spec_factory: Callable[..., WatermarkSpec],
                                          tmp_path: Path) -> None:
    # the mutations above start from a file that loads
    spec = spec_factory(gamma=0.3)
    path = _write(tmp_path / "key.json", json.dumps(_valid_dict(spec)))
    assert load_spec(path) == spec


# -- the integrity tag ------------------------------------------------------------------------

def _edit(path: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    d = json.loads(path.read_text())
    mutate(d)
    return _write(path, json.dumps(d, indent=2))


def test_the_tag_is_an_hmac_of_the_canonical_fields() -> None:
    """Pinned: a change of the construction would make every key on disk unreadable."""
    tok = TokenizerInfo(source="builtin:smollm2-135m-instruct", sha256="ab" * 32,
                        vocab_size=49152)
    # n_lists stated: the tag covers the params, defaults filled in
    spec = WatermarkSpec(secret=SECRET, scheme="greenlist",
                         params={"gamma": 0.25, "n_lists": 256},
                         tokenizer=tok, created="2026-01-01T00:00:00Z")
    d = json.loads(spec.to_json())
    assert d["distillmark_spec"] == 2
    body = {k: v for k, v in d.items() if k not in ("secret", "mac")}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert d["mac"] == hmac.new(derive_subkey(SECRET, "spec-mac"), canon,
                                hashlib.sha256).hexdigest()
    assert d["mac"] == KAT_SPEC_MAC


@pytest.mark.parametrize("mutate", [
    _set_param("gamma", 0.05),  # still a valid key, with other verdicts
    _set_param("delta", 4.0),
    _set("created", "2020-01-01T00:00:00Z"),
    lambda d: d["tokenizer"].__setitem__("source", "/elsewhere/tokenizer.json"),
    lambda d: d["accounts"].__setitem__("gamma", 0.5),
    _drop("accounts"),
    _set("mac", "00" * 32),
    _set("mac", "caf\u00e9"),
    _set("mac", 7),
    _set("distillmark_spec", 1),  # a version 1 file has no tag: one with a tag was edited
])
def test_an_edited_key_is_refused(mutate: Callable[[dict[str, Any]], None],
                                  tokenizer_info: TokenizerInfo, tmp_path: Path) -> None:
    from distillmark.watermark.accounts import AccountLayerParams

    spec = new_spec("greenlist", {"gamma": 0.25}, tokenizer_info, secret=SECRET,
                    accounts=AccountLayerParams())
    path = _edit(save_spec(spec, tmp_path / "key.json"), mutate)
    assert _load_error(path) == (f"key file {path} was edited: its parameters do not match "
                                 "its integrity tag (make a new key with `distillmark keygen`)")


def test_a_version_2_key_needs_its_tag(spec_factory: Callable[..., WatermarkSpec],
                                       tmp_path: Path) -> None:
    path = _edit(save_spec(spec_factory(), tmp_path / "key.json"), _drop("mac"))
    assert _load_error(path) == f"key file {path}: missing field 'mac' (its integrity tag)"


def test_version_1_keys_are_read_with_one_warning(spec_factory: Callable[..., WatermarkSpec],
                                                  tmp_path: Path) -> None:
    spec = spec_factory(gamma=0.3)

    def v1(d: dict[str, Any]) -> None:
        d["distillmark_spec"] = 1
        del d["mac"]

    path = _edit(save_spec(spec, tmp_path / "key.json"), v1)
    with pytest.warns(UserWarning) as caught:
        assert load_spec(path) == spec
    assert [str(w.message) for w in caught] == [
        (f"key file {path} is of spec version 1 and carries no integrity tag: an edit of its "
        "parameters would go unnoticed")]


def test_a_relative_tokenizer_path_is_recorded_absolute(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from distillmark.watermark.tokenizer import builtin_tokenizer_path, load_tokenizer

    made = tmp_path / "made"
    made.mkdir()
    shutil.copy(builtin_tokenizer_path(), made / "tok.json")
    monkeypatch.chdir(made)
    _, info = load_tokenizer("tok.json")
    assert info.source == str(made / "tok.json")
    _, builtin = load_tokenizer("builtin:smollm2-135m-instruct")
    assert builtin.source == "builtin:smollm2-135m-instruct"  # names stay names
    path = save_spec(new_spec("greenlist", {}, info), made / "key.json")
    monkeypatch.chdir(tmp_path)  # elsewhere, the key still finds its tokenizer
    spec = load_spec(path)
    assert spec.tokenizer.source == str(made / "tok.json")
    tokenizer_for(spec.tokenizer)


# -- any file at all: a spec, or one SpecError line -------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
#: Where a mutation of a valid key file lands: a top-level field, or one inside the nested ones.
FIELDS = [("distillmark_spec",), ("key_id",), ("secret",), ("scheme",), ("params",),
          ("tokenizer",), ("created",), ("accounts",), ("mac",), ("account",),
          ("params", "gamma"), ("params", "delta"), ("params", "context_width"),
          ("params", "seeding"), ("params", "n_lists"), ("tokenizer", "source"),
          ("tokenizer", "sha256"), ("tokenizer", "vocab_size"), ("accounts", "gamma"),
          ("accounts", "delta")]


def _load_anything(content: bytes, folder: Path) -> None:
    path = _write(folder / "key.json", content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # version 1 files warn
        try:
            assert isinstance(load_spec(path), WatermarkSpec)
        except SpecError as exc:
            assert "\n" not in str(exc) and str(exc).startswith(f"key file {path}")


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES)
def test_any_json_loads_as_a_spec_or_one_spec_error(value: Any,
                                                    tmp_path_factory: pytest.TempPathFactory
                                                    ) -> None:
    _load_anything(json.dumps(value).encode(), tmp_path_factory.mktemp("k"))


@settings(max_examples=400, deadline=None)
@given(edits=st.lists(st.tuples(st.sampled_from(FIELDS), st.none() | JSON_VALUES), min_size=1,
                      max_size=3),
       version=st.sampled_from([None, 1, 2]))
def test_any_edit_of_a_key_loads_as_a_spec_or_one_spec_error(
        edits: list[tuple[tuple[str, ...], Any]], version: int | None,
        spec_factory: Callable[..., WatermarkSpec],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Fields replaced by any JSON value or deleted (None), at any version."""
    from distillmark.watermark.accounts import AccountLayerParams

    spec = new_spec("greenlist", {}, spec_factory().tokenizer, secret=SECRET,
                    accounts=AccountLayerParams())
    d = _valid_dict(spec)
    for path, value in edits:
        node = d
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if value is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value
    if version is not None:
        d["distillmark_spec"] = version
    _load_anything(json.dumps(d).encode(), tmp_path_factory.mktemp("k"))


# -- per-account specs -------------------------------------------------------------------------

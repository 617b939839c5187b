"""Key rings (watermark/ring.py) and rotation through the CLI: keygen --ring, keys, and every
--key reading a ring (detection tries all its keys, generation marks with the active one)."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    SpecError,
    WatermarkSpec,
    load_spec,
    load_tokenizer,
    new_spec,
    save_spec,
    scheme_for,
)
from distillmark.watermark.accounts import AccountLayerParams
from distillmark.watermark.ring import (
    ACTIVE,
    RETIRED,
    KeyRing,
    load_active_key,
    load_keys,
    load_ring,
    save_ring,
)
from distillmark.watermark.tokenizer import builtin_tokenizer_path

RUNNER = CliRunner()
OLD_SECRET, NEW_SECRET, THIRD_SECRET = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))


def run(*args: Any) -> Any:
    result = RUNNER.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    assert "Traceback" not in result.stdout + result.stderr
    return result


def one_error_line(result: Any) -> str:
    """The one ``distillmark: error:`` line of a failed command (exit 2, nothing on stdout)."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = [ln for ln in result.stderr.splitlines() if "warning:" not in ln]
    assert len(lines) == 1 and lines[0].startswith("distillmark: error: "), result.stderr
    return lines[0][len("distillmark: error: "):]


@pytest.fixture(scope="module")
def specs() -> dict[str, WatermarkSpec]:
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    return {name: new_spec("greenlist", {}, info, secret=s)
            for name, s in (("old", OLD_SECRET), ("new", NEW_SECRET), ("third", THIRD_SECRET))}


@pytest.fixture
def ring_file(tmp_path: Path, specs: dict[str, WatermarkSpec]) -> Path:
    """A ring whose old key was retired when the new one became active."""
    return save_ring(KeyRing.first(specs["old"]).add(specs["new"]), tmp_path / "ring.json")


def watermarked_text(spec: WatermarkSpec, n_tokens: int = 200, seed: int = 0) -> str:
    """Text sampled from uniform logits over common whole words plus the key's bias."""
    tok = Tokenizer.from_file(str(builtin_tokenizer_path()))
    words = np.array(sorted(i for t, i in tok.get_vocab().items()
                            if re.fullmatch("\u0120[a-z]{3,}", t))[:2000])
    scheme = scheme_for(spec)
    rng = np.random.default_rng(seed)
    base = np.full((1, spec.vocab_size), -1e4, dtype=np.float32)
    base[0, words] = 0.0
    ids = [int(rng.choice(words))]
    for _ in range(n_tokens - 1):
        logits = scheme.bias(base, np.array([ids]))[0, words].astype(np.float64)
        p = np.exp(logits - logits.max())
        ids.append(int(rng.choice(words, p=p / p.sum())))
    return str(tok.decode(ids))


# -- the ring itself ---------------------------------------------------------------------------


def test_rotation_round_trip(tmp_path: Path, specs: dict[str, WatermarkSpec]) -> None:
    old, new, third = specs["old"], specs["new"], specs["third"]
    ring = KeyRing.first(old)
    assert ring.active == old and [m.state for m in ring.members] == [ACTIVE]
    ring = ring.add(new)  # rotation: the new key marks, the old one is retired
    assert ring.active == new
    assert ring.member(old.key_id).state == RETIRED and ring.member(old.key_id).retired
    assert ring.member(new.key_id).retired is None
    ring = ring.add(third).activate(old.key_id)  # back to an earlier key
    assert ring.active == old
    assert {m.key_id: m.state for m in ring.members} == {
        old.key_id: ACTIVE, new.key_id: RETIRED, third.key_id: RETIRED}
    assert ring.specs[0] == old  # detection tries the active key first
    ring = ring.remove(new.key_id)
    assert [s.key_id for s in ring.specs] == [old.key_id, third.key_id]
    path = save_ring(ring, tmp_path / "r.json")
    assert load_ring(path) == ring
    assert load_active_key(path) == old
    assert load_keys(path) == [old, third]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # the secrets never show in what may be printed
    shown = repr(ring) + json.dumps([m.public_dict() for m in ring.members])
    assert "secret" not in shown.replace('"<secret>"', "")
    for s in (OLD_SECRET, THIRD_SECRET):
        assert s.hex() not in shown


def test_ring_changes_refused(specs: dict[str, WatermarkSpec]) -> None:
    old, new = specs["old"], specs["new"]
    ring = KeyRing.first(old).add(new)
    with pytest.raises(SpecError, match=f"already holds key {new.key_id}"):
        ring.add(new)
    with pytest.raises(SpecError, match=f"key {new.key_id} is already the active key"):
        ring.activate(new.key_id)
    with pytest.raises(SpecError, match="is the active key of key ring; activate or add"):
        ring.remove(new.key_id)
    with pytest.raises(SpecError, match="has no key 'dmk-0'; its keys: "):
        ring.activate("dmk-0")


def test_a_key_in_a_ring_and_in_its_own_file_is_tested_once(
        tmp_path: Path, ring_file: Path, specs: dict[str, WatermarkSpec]) -> None:
    own = save_spec(specs["old"], tmp_path / "old.json")
    assert load_keys([ring_file, own]) == [specs["new"], specs["old"]]
    assert load_keys([own, ring_file]) == [specs["old"], specs["new"]]
    assert load_active_key(own) == specs["old"]


# -- rotation through the CLI ------------------------------------------------------------------


def test_keygen_ring_and_keys_rotate(tmp_path: Path) -> None:
    ring = tmp_path / "ring.json"
    first = run("keygen", "--ring", ring, "--json")
    assert first.exit_code == 0, first.stderr
    a = json.loads(first.stdout)["key_id"]
    assert stat.S_IMODE(ring.stat().st_mode) == 0o600
    second = run("keygen", "--ring", ring)
    assert second.exit_code == 0
    b = re.search(r"added key (dmk-[0-9a-f]{16})", second.stdout).group(1)  # type: ignore[union-attr]
    assert f"{a} retired" in second.stdout
    listed = json.loads(run("keys", ring, "--json").stdout)
    assert listed["n_keys"] == 2 and listed["active"] == b
    assert {k["key_id"]: k["state"] for k in listed["keys"]} == {a: RETIRED, b: ACTIVE}
    assert all("secret" not in k for k in listed["keys"])
    assert run("keys", ring, "--activate", a).exit_code == 0
    assert load_active_key(ring).key_id == a
    human = run("keys", ring).stdout
    assert human.splitlines()[0] == f"{ring}: 2 keys, active {a}"
    assert re.search(rf"{b}  retired  greenlist  activated \S+, retired \S+", human)
    assert run("keys", ring, "--remove", b).exit_code == 0
    assert [s.key_id for s in load_keys(ring)] == [a]
    assert stat.S_IMODE(ring.stat().st_mode) == 0o600
    # an existing key file starts a ring
    key = tmp_path / "k.json"
    assert run("keygen", "-o", key).exit_code == 0
    fresh = tmp_path / "fresh.json"
    assert run("keys", fresh, "--add", key).exit_code == 0
    assert load_active_key(fresh) == load_spec(key)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_keygen_and_keys_usage_errors(tmp_path: Path, ring_file: Path,
                                      specs: dict[str, WatermarkSpec]) -> None:
    assert one_error_line(run("keygen")) == (
        "give --out FILE for a new key file, or --ring RING to add the key to a key ring")
    assert one_error_line(run("keygen", "-o", tmp_path / "k.json", "--ring", ring_file)) == (
        "give --out FILE for a new key file, or --ring RING to add the key to a key ring")
    assert not (tmp_path / "k.json").exists()
    before = ring_file.read_bytes()
    assert one_error_line(run("keys", ring_file, "--remove", specs["new"].key_id)) == (
        f"key {specs['new'].key_id} is the active key of key ring {ring_file}; activate or add "
        "another key before removing it")
    assert one_error_line(run("keys", ring_file, "--activate", "x", "--remove", "y")) == (
        "give one of --add, --activate, --remove at a time")
    assert ring_file.read_bytes() == before
    single = save_spec(specs["third"], tmp_path / "single.json")
    assert one_error_line(run("keys", single)) == (
        f"key file {single} is a single key, not a key ring (start a ring with "
        f"`distillmark keys RING --add {single}`)")
    assert one_error_line(run("keygen", "--ring", single)) .startswith(
        f"key file {single} is a single key, not a key ring")
    assert load_spec(single) == specs["third"]


def _ring_json(ring_file: Path) -> dict[str, Any]:
    return dict(json.loads(ring_file.read_text()))


def _broken_rings(ring_file: Path) -> list[tuple[str, Any, str]]:
    d = _ring_json(ring_file)
    where = f"key ring {ring_file}"
    both_active = json.loads(json.dumps(d))
    both_active["keys"][0]["state"] = "active"
    none_active = json.loads(json.dumps(d))
    none_active["keys"][1]["state"] = "retired"
    dup = json.loads(json.dumps(d))
    dup["keys"][0] = json.loads(json.dumps(dup["keys"][1]))
    dup["keys"][0]["state"] = "retired"
    edited = json.loads(json.dumps(d))
    edited["keys"][0]["spec"]["params"]["gamma"] = 0.05
    ids = [k["spec"]["key_id"] for k in d["keys"]]
    return [
        ("bad json", '{"distillmark_ring": 1, "keys": [', (f"key file {ring_file} is not valid "
         "JSON: Expecting value at line 1 column 34")),
        ("two active", both_active, (f"{where} has 2 active keys ({', '.join(ids)}); a ring "
         "marks with exactly one")),
        ("no active", none_active, (f"{where} has no active key (activate one with "
         "`distillmark keys RING --activate ID`)")),
        ("duplicate", dup, f"{where} holds key {ids[1]} twice"),
        ("edited member", edited, (f"{where}, keys[0] was edited: its parameters do not match "
         "its integrity tag (make a new key with `distillmark keygen`)")),
        ("no keys", {"distillmark_ring": 1, "keys": []}, f"{where} holds no key"),
        ("version", {"distillmark_ring": 9, "keys": []}, (f"{where} has ring version 9; this "
         "distillmark reads version 1 (upgrade distillmark)")),
        ("bad state", {**d, "keys": [{**d["keys"][1], "state": "paused"}]},
         f"{where}: key {ids[1]} has state 'paused'; expected active or retired"),
        ("member not an object", {"distillmark_ring": 1, "keys": [3]},
         f"{where}, keys[0] must be a JSON object"),
    ]


@pytest.mark.parametrize("case", range(9))
def test_a_broken_ring_is_one_line_and_exit_2_everywhere(case: int, ring_file: Path,
                                                         tmp_path: Path) -> None:
    name, content, message = _broken_rings(ring_file)[case]
    ring_file.write_text(content if isinstance(content, str) else json.dumps(content))
    text = tmp_path / "t.txt"
    text.write_text("some text", encoding="utf-8")
    for args in (["detect", "-k", ring_file, text], ["keys", ring_file],
                 ["keygen", "--ring", ring_file],
                 ["scan", "-k", ring_file, "--field", "text", text]):
        assert one_error_line(run(*args)) == message, (name, args)


# -- detection and generation with a ring ------------------------------------------------------


def test_detection_with_a_ring_finds_a_retired_key_and_records_the_correction(
        tmp_path: Path, ring_file: Path, specs: dict[str, WatermarkSpec]) -> None:
    old, new = specs["old"], specs["new"]
    marked = tmp_path / "old-marked.txt"
    marked.write_text(watermarked_text(old), encoding="utf-8")
    result = run("detect", "-k", ring_file, "--json", marked)
    assert result.exit_code == 0, result.stderr
    d = json.loads(result.stdout)
    assert d["verdict"] == "watermarked" and d["key_id"] == old.key_id
    assert d["n_keys"] == 2 and d["correction"] == "bonferroni"
    assert d["log10_pvalue"] == pytest.approx(d["uncorrected_log10_pvalue"] + np.log10(2))
    assert [k["key_id"] for k in d["per_key"]] == [new.key_id, old.key_id]
    human = run("detect", "-k", ring_file, marked).stdout
    assert f"best of 2 keys: {old.key_id}, p corrected for 2 keys" in human
    # the ring's active key alone misses it
    alone = save_spec(new, tmp_path / "new.json")
    assert run("detect", "-k", alone, marked).exit_code == 1
    # a ring of one key still says how many keys were tried
    one = save_ring(KeyRing.first(old), tmp_path / "one.json")
    d1 = json.loads(run("detect", "-k", one, "--json", marked).stdout)
    assert d1["n_keys"] == 1 and d1["key_id"] == old.key_id
    assert d1["pvalue"] == d1["uncorrected_pvalue"]


def test_scan_with_a_ring_finds_a_retired_key(tmp_path: Path, ring_file: Path,
                                             specs: dict[str, WatermarkSpec]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": watermarked_text(specs["old"], seed=s)}) + "\n"
                            for s in range(3)), encoding="utf-8")
    result = run("scan", "-k", ring_file, "--field", "text", "--json", data)
    assert result.exit_code == 0, result.stderr
    d = json.loads(result.stdout)
    assert d["n_keys"] == 2 and d["key_id"] == specs["old"].key_id


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(42)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(d)
    PreTrainedTokenizerFast(tokenizer_file=str(builtin_tokenizer_path()), eos_token="<|im_end|>",
                            pad_token="<|im_end|>").save_pretrained(d)
    return d


def test_generation_marks_with_the_active_key(tmp_path: Path, ring_file: Path, tiny_model_dir: Path,
                                              specs: dict[str, WatermarkSpec]) -> None:
    result = run("generate", "--model", tiny_model_dir, "--engine", "transformers", "--key",
                 ring_file, "--json", "--max-new-tokens", "80", "--seed", "3", "Hello there")
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)
    assert row["key_id"] == specs["new"].key_id
    text = tmp_path / "answer.txt"
    text.write_text(row["text"], encoding="utf-8")
    d = json.loads(run("detect", "-k", ring_file, "--json", text).stdout)
    assert d["verdict"] == "watermarked" and d["key_id"] == specs["new"].key_id
    retired_only = save_spec(specs["old"], tmp_path / "old.json")
    assert run("detect", "-k", retired_only, text).exit_code == 1


def test_serve_marks_with_the_active_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         specs: dict[str, WatermarkSpec]) -> None:
    """serve --key RING --accounts: the server's spec (and so every account's layer, derived
    from it) is the ring's active key; the server itself is not started."""
    from distillmark.watermark import serve as srv

    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    layered = {n: WatermarkSpec(secret=s.secret, scheme=s.scheme, params=s.params,
                                tokenizer=info, accounts=AccountLayerParams())
               for n, s in specs.items()}
    ring = save_ring(KeyRing.first(layered["old"]).add(layered["new"]), tmp_path / "ring.json")
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({"sk-alice": "alice", "sk-bob": "bob"}))
    seen: dict[str, Any] = {}

    class NoModel:
        engine = "transformers"

        def check_tokenizer(self, spec: WatermarkSpec) -> None:
            seen["checked"] = spec.key_id

    monkeypatch.setattr("distillmark.cli.serve.load_generator", lambda *a: NoModel())
    monkeypatch.setattr(srv, "create_app", lambda gen, config: seen.setdefault("config", config))
    monkeypatch.setattr(srv, "run_server_on", lambda *a, **k: None)
    result = run("serve", "--key", ring, "--accounts", accounts, "--engine", "transformers",
                 "--port", 0)
    assert result.exit_code == 0, result.stderr
    assert seen["config"].spec == layered["new"] and seen["checked"] == layered["new"].key_id
    assert f"watermarked with key {layered['new'].key_id} and, for each of 2 accounts" in (
        result.stderr)

"""The ``distillmark`` command: exit codes, ``--json`` output and exact one-line errors."""

from __future__ import annotations

import base64
import inspect
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.fft
import numpy.linalg
import pytest
import scipy.optimize
import scipy.stats
from tokenizers import Tokenizer
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    PRESETS,
    GreenList,
    WatermarkSpec,
    load_spec,
    load_tokenizer,
    new_spec,
    save_spec,
    scheme_for,
)
from distillmark.watermark.accounts import AccountLayerParams
from distillmark.watermark.tokenizer import builtin_tokenizer_path, fingerprint

#: Fixed key of the detection tests (keygen's own keys are random: only their form is tested).
CLI_SECRET = bytes(range(64, 96))
RESULT_KEYS = {"statistic", "pvalue", "log10_pvalue", "n_tokens", "n_scored", "score_mean",
               "scheme", "key_id", "verdict", "source"}

# Typer's CliRunner keeps stdout and stderr apart (result.stdout / result.stderr).
RUNNER = CliRunner()


def run(*args: Any, input: str | bytes | None = None) -> Any:
    """Invoke the CLI in-process; no command may end in a traceback."""
    result = RUNNER.invoke(app, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    assert "Traceback" not in result.stdout + result.stderr
    return result


def error_line(message: str) -> str:
    return f"distillmark: error: {message}\n"


# --------------------------------------------------------------------------------------------
# Texts: watermarked (sampled with the scheme's own bias), human, degenerate


def _word_ids(tok: Tokenizer, n: int = 2000) -> np.ndarray:
    """The ``n`` most frequent (lowest-id) whole lower-case word tokens with a leading space."""
    vocab = tok.get_vocab()
    words = sorted(i for t, i in vocab.items() if re.fullmatch("\u0120[a-z]{3,}", t))
    return np.array(words[:n])


def watermarked_text(scheme: GreenList, n_tokens: int, seed: int) -> str:
    """Text sampled from uniform logits over ~2000 common words plus the watermark bias."""
    tok = Tokenizer.from_file(str(builtin_tokenizer_path()))
    words = _word_ids(tok)
    rng = np.random.default_rng(seed)
    base = np.full((1, scheme.vocab_size), -1e4, dtype=np.float32)
    base[0, words] = 0.0
    ids = [int(rng.choice(words))]
    for _ in range(n_tokens - 1):
        logits = scheme.bias(base, np.array([ids]))[0, words].astype(np.float64)
        p = np.exp(logits - logits.max())
        ids.append(int(rng.choice(words, p=p / p.sum())))
    return tok.decode(ids)


def human_doc(obj: Any) -> str:
    doc = inspect.getdoc(obj)
    assert doc and len(doc) > 1000
    return doc


HUMAN_SOURCES = [numpy.linalg.svd, scipy.stats.ttest_ind, numpy.fft.fft, numpy.histogram,
                 scipy.optimize.minimize]


@pytest.fixture(scope="module")
def key_spec() -> WatermarkSpec:
    return new_spec("greenlist", {}, load_tokenizer(BUILTIN_SMOLLM2)[1], secret=CLI_SECRET)


@pytest.fixture(scope="module")
def texts(tmp_path_factory: pytest.TempPathFactory, key_spec: WatermarkSpec) -> dict[str, Path]:
    """Input files: name -> path."""
    d = tmp_path_factory.mktemp("texts")
    contents: dict[str, str | bytes] = {
        "wm.txt": watermarked_text(scheme_for(key_spec), 150, seed=1),
        "wm2.txt": watermarked_text(scheme_for(key_spec), 120, seed=2),
        "human.txt": human_doc(numpy.linalg.svd),
        "short.txt": "Hello",
        "few.txt": "The quick brown fox jumps over the lazy dog.",
        "the500.txt": "the " * 500,
        "empty.txt": "",
        "blank.txt": "  \n\t \n",
        "latin1.txt": "caf\xe9 au lait".encode("latin-1"),
    }
    for i, obj in enumerate(HUMAN_SOURCES):
        contents[f"human{i}.txt"] = human_doc(obj)
    for name, content in contents.items():
        if isinstance(content, bytes):
            (d / name).write_bytes(content)
        else:
            (d / name).write_text(content, encoding="utf-8")
    (d / "adir").mkdir()
    return {name: d / name for name in [*contents, "adir"]}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory, key_spec: WatermarkSpec) -> Path:
    return save_spec(key_spec, tmp_path_factory.mktemp("key") / "key.json")


def detect_json(*args: Any, input: str | bytes | None = None) -> tuple[Any, list[dict[str, Any]]]:
    result = run("detect", "--json", *args, input=input)
    return result, [json.loads(line) for line in result.stdout.splitlines()]


# --------------------------------------------------------------------------------------------
# keygen


def test_keygen_writes_a_0600_key_file(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    result = run("keygen", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    spec = load_spec(out)
    assert result.stdout == (f"wrote {out} (key id {spec.key_id}, scheme greenlist); "
                             "keep it secret\n")
    assert len(spec.secret) == 32 and spec.key_id.startswith("dmk-")
    assert spec.tokenizer == load_tokenizer(BUILTIN_SMOLLM2)[1]
    secret_b64 = json.loads(out.read_text())["secret"]
    assert secret_b64 not in result.stdout + result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]  # no temp file left behind


def test_keygen_with_a_relative_tokenizer_works_from_anywhere(
        tmp_path: Path, texts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    made = tmp_path / "made"
    made.mkdir()
    shutil.copy(builtin_tokenizer_path(), made / "tokenizer.json")
    monkeypatch.chdir(made)
    assert run("keygen", "-o", "k.json", "--tokenizer", "tokenizer.json").exit_code == 0
    monkeypatch.chdir(tmp_path)
    assert load_spec(made / "k.json").tokenizer.source == str(made / "tokenizer.json")
    result = run("detect", "-k", made / "k.json", texts["wm.txt"])
    assert result.exit_code == 1, result.stderr  # a text of another key: read, not found


def test_keygen_json_prints_public_fields_only(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    result = run("keygen", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    on_file = json.loads(out.read_text())
    secret_b64 = on_file["secret"]
    assert base64.b64decode(secret_b64) == load_spec(out).secret
    assert secret_b64 not in result.stdout and secret_b64 not in result.stderr
    assert len(result.stdout.splitlines()) == 1
    public = json.loads(result.stdout)
    assert set(public) == {"key_id", "scheme", "params", "tokenizer", "accounts"}
    assert public["accounts"] == on_file["accounts"] == {"gamma": 0.25, "delta": 2.0}
    assert public["key_id"] == on_file["key_id"]
    assert public["params"] == on_file["params"]
    assert public["tokenizer"] == on_file["tokenizer"]
    assert "secret" not in result.stdout


def test_keygen_keys_are_fresh(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert run("keygen", "-o", a).exit_code == 0 and run("keygen", "-o", b).exit_code == 0
    assert load_spec(a).secret != load_spec(b).secret


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    assert run("keygen", "-o", out).exit_code == 0
    before = out.read_bytes()
    result = run("keygen", "-o", out, "--preset", "unigram")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == error_line(f"{out} already exists; refusing to overwrite a key "
                                       "(use --force)")
    assert out.read_bytes() == before
    result = run("keygen", "-o", out, "--preset", "unigram", "--force")
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes() != before
    assert load_spec(out).params["context_width"] == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize("preset, expected", [
    ("greenlist", {"gamma": 0.25, "delta": 2.0, "context_width": 1, "seeding": "lefthash",
                   "combine": "hash", "n_lists": 65536, "top_k": 40}),
    ("unigram", {"context_width": 0, "seeding": "lefthash"}),
    ("selfhash", {"context_width": 3, "seeding": "selfhash", "combine": "min"}),
])
def test_keygen_presets(tmp_path: Path, preset: str, expected: dict[str, Any]) -> None:
    out = tmp_path / "k.json"
    result = run("keygen", "-o", out, "--preset", preset, "--json")
    assert result.exit_code == 0, result.stderr
    params = load_spec(out).params
    assert json.loads(result.stdout)["params"] == params
    assert {k: params[k] for k in expected} == expected


def test_keygen_parameter_overrides_land_in_the_spec(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    result = run("keygen", "-o", out, "--preset", "selfhash", "--gamma", "0.5", "--delta", "3.5",
                 "--context-width", "2", "--combine", "hash", "--n-lists", "1024", "--json")
    assert result.exit_code == 0, result.stderr
    params = load_spec(out).params
    assert params == {"gamma": 0.5, "delta": 3.5, "context_width": 2, "seeding": "selfhash",
                      "combine": "hash", "n_lists": 1024, "top_k": 40}
    assert json.loads(result.stdout)["params"] == params
    out2 = tmp_path / "k2.json"
    assert run("keygen", "-o", out2, "--seeding", "selfhash", "--context-width", "4").exit_code == 0
    assert load_spec(out2).params["seeding"] == "selfhash"


@pytest.mark.parametrize("args, message", [
    (["--gamma", "1.5"], "`gamma` must be in (0, 1), got 1.5"),
    (["--gamma", "0"], "`gamma` must be in (0, 1), got 0.0"),
    (["--delta", "-1"], "`delta` must be >= 0, got -1.0"),
    (["--context-width", "9"], "`context_width` must be in 0..8, got 9"),
    (["--n-lists", "3"], "`n_lists` must be a power of two in 1..65536, got 3"),
    (["--seeding", "middle"], "`seeding` must be one of lefthash, selfhash, got 'middle'"),
    (["--combine", "max"], "`combine` must be one of hash, min, got 'max'"),
    (["--preset", "nope"], "unknown preset 'nope'; known: " + ", ".join(PRESETS)),
    (["--preset", "unigram", "--seeding", "selfhash"],
     "`context_width` must be >= 1 with seeding 'selfhash', got 0"),
    (["--tokenizer", "/nonexistent/tokenizer.json"],
     "tokenizer file /nonexistent/tokenizer.json does not exist"),
    (["--tokenizer", "builtin:nope"],
     "unknown built-in tokenizer 'builtin:nope'; known: builtin:smollm2-135m-instruct"),
])
def test_keygen_invalid_parameter_is_one_line_exit_2(tmp_path: Path, args: list[str],
                                                     message: str) -> None:
    out = tmp_path / "k.json"
    result = run("keygen", "-o", out, *args)
    assert result.exit_code == 2
    assert result.stderr == error_line(message)
    assert result.stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_keygen_bad_destination(tmp_path: Path) -> None:
    result = run("keygen", "-o", tmp_path)
    assert result.exit_code == 2
    assert result.stderr == error_line(f"{tmp_path} is a directory; give a file name for the key")
    missing = tmp_path / "no" / "k.json"
    result = run("keygen", "-o", missing)
    assert result.exit_code == 2
    assert result.stderr == error_line(f"directory {missing.parent} does not exist")
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    result = run("keygen", "-o", a_file / "k.json")
    assert result.stderr == error_line(f"{a_file} is not a directory")


def test_keygen_gives_green_list_keys_an_account_layer(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    assert run("keygen", "-o", out).exit_code == 0
    assert load_spec(out).accounts == AccountLayerParams(gamma=0.25, delta=2.0)
    custom = tmp_path / "c.json"
    result = run("keygen", "-o", custom, "--account-gamma", "0.5", "--account-delta", "3")
    assert result.exit_code == 0, result.stderr
    assert load_spec(custom).accounts == AccountLayerParams(gamma=0.5, delta=3.0)
    none = tmp_path / "n.json"
    assert run("keygen", "-o", none, "--no-account-layer").exit_code == 0
    assert load_spec(none).accounts is None
    gumbel = tmp_path / "g.json"
    assert run("keygen", "-o", gumbel, "--scheme", "gumbel").exit_code == 0
    assert load_spec(gumbel).accounts is None  # a sampling scheme takes no account layer
    result = run("keygen", "-o", tmp_path / "x.json", "--scheme", "gumbel", "--account-layer")
    assert result.exit_code == 2
    assert "rides on a green-list key with lefthash seeding" in result.stderr
    result = run("keygen", "-o", tmp_path / "y.json", "--account-gamma", "0.3")
    assert result.exit_code == 2
    assert result.stderr == error_line("account layer `gamma` must be 0.25 or 0.5, got 0.3")


# --------------------------------------------------------------------------------------------
# detect: verdicts and exit codes


def test_detect_watermarked_text_exit_0(key_file: Path, texts: dict[str, Path],
                                        key_spec: WatermarkSpec) -> None:
    result = run("detect", "-k", key_file, texts["wm.txt"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    line = result.stdout.strip()
    assert "\n" not in line
    m = re.fullmatch(rf"{re.escape(str(texts['wm.txt']))}: watermarked \(p = (\S+); "
                     rf"(\d+)/(\d+) scored tokens green, [\d.]+%, 25.0% expected without the key; "
                     rf"(\d+) tokens; "
                     rf"key {key_spec.key_id}\)", line)
    assert m, line
    assert float(m.group(1)) < 1e-6
    assert int(m.group(2)) > 0.5 * int(m.group(3))


def test_detect_json_fields(key_file: Path, texts: dict[str, Path],
                            key_spec: WatermarkSpec) -> None:
    result, (d,) = detect_json("--key", key_file, texts["wm.txt"])
    assert result.exit_code == 0
    assert RESULT_KEYS <= set(d)
    assert d["source"] == str(texts["wm.txt"])
    assert d["verdict"] == "watermarked"
    assert d["scheme"] == "greenlist" and d["key_id"] == key_spec.key_id
    assert 0 < d["pvalue"] < 1e-6
    assert d["log10_pvalue"] == pytest.approx(np.log10(d["pvalue"]))
    assert 140 <= d["n_tokens"] <= 160 and 25 <= d["n_scored"] <= d["n_tokens"] - 1
    assert d["score_mean"] == pytest.approx(d["statistic"] / d["n_scored"])
    assert d["score_mean"] > 0.5
    assert isinstance(d["statistic"], int) and isinstance(d["n_scored"], int)


def test_detect_human_text_exit_1(key_file: Path, texts: dict[str, Path]) -> None:
    result = run("detect", "-k", key_file, texts["human.txt"])
    assert result.exit_code == 1, result.stderr
    assert result.stdout.startswith(f"{texts['human.txt']}: not watermarked (p = ")
    names = [texts[f"human{i}.txt"] for i in range(len(HUMAN_SOURCES))]
    result, rows = detect_json("-k", key_file, *names)
    assert result.exit_code == 1, result.stderr
    assert [r["source"] for r in rows] == [str(n) for n in names]
    for r in rows:
        assert r["verdict"] == "not watermarked", r
        assert r["n_scored"] >= 100 and r["pvalue"] > 1e-3


@pytest.mark.parametrize("name, n_scored", [("short.txt", 0), ("few.txt", 9)])
def test_detect_too_short_is_insufficient_evidence_exit_1(key_file: Path, texts: dict[str, Path],
                                                          name: str, n_scored: int) -> None:
    result = run("detect", "-k", key_file, texts[name])
    assert result.exit_code == 1
    assert result.stderr == ""
    assert result.stdout.startswith(f"{texts[name]}: insufficient evidence (p = ")
    result, (d,) = detect_json("-k", key_file, texts[name])
    assert result.exit_code == 1
    assert d["verdict"] == "insufficient evidence"
    assert d["n_scored"] == n_scored and d["n_tokens"] == n_scored + 1


def test_detect_one_token_repeated_is_never_watermarked(key_file: Path,
                                                        texts: dict[str, Path]) -> None:
    result, (d,) = detect_json("-k", key_file, texts["the500.txt"])
    assert result.exit_code == 1
    assert d["verdict"] == "insufficient evidence"
    assert d["n_tokens"] == 501 and d["n_scored"] == 3 and d["n_repeated"] == 497
    # even when any amount of evidence is accepted, three tuples cannot make a watermark
    result, (d,) = detect_json("-k", key_file, "--min-scored", "1", texts["the500.txt"])
    assert result.exit_code == 1
    assert d["verdict"] == "not watermarked" and d["pvalue"] >= 0.25**3


def test_detect_min_scored_and_alpha(key_file: Path, texts: dict[str, Path]) -> None:
    result, (d,) = detect_json("-k", key_file, "--min-scored", "1000", texts["wm.txt"])
    assert result.exit_code == 1 and d["verdict"] == "insufficient evidence"
    result, (d,) = detect_json("-k", key_file, "--alpha", "1e-300", texts["wm.txt"])
    assert result.exit_code == 1 and d["verdict"] == "not watermarked"
    for bad in ("0", "1", "1.5"):
        result = run("detect", "-k", key_file, "--alpha", bad, texts["wm.txt"])
        assert result.exit_code == 2
        assert result.stderr == error_line(f"--alpha must be in (0, 1), got {float(bad)}")
        assert result.stdout == ""


def test_detect_several_files_json_lines(key_file: Path, texts: dict[str, Path]) -> None:
    names = [texts["human.txt"], texts["wm.txt"], texts["short.txt"], texts["wm2.txt"]]
    result, rows = detect_json("-k", key_file, *names)
    assert result.exit_code == 0  # a watermark was found in at least one input
    assert result.stdout.count("\n") == 4
    assert [r["source"] for r in rows] == [str(n) for n in names]
    assert [r["verdict"] for r in rows] == ["not watermarked", "watermarked",
                                            "insufficient evidence", "watermarked"]
    for r in rows:
        assert RESULT_KEYS <= set(r)
    result, rows = detect_json("-k", key_file, texts["human.txt"], texts["short.txt"])
    assert result.exit_code == 1 and len(rows) == 2


def test_detect_any_error_makes_exit_2_and_others_still_print(key_file: Path,
                                                              texts: dict[str, Path]) -> None:
    missing = texts["wm.txt"].parent / "missing.txt"
    names = [texts["wm.txt"], missing, texts["empty.txt"], texts["human.txt"]]
    result, rows = detect_json("-k", key_file, *names)
    assert result.exit_code == 2
    assert [r["source"] for r in rows] == [str(texts["wm.txt"]), str(texts["human.txt"])]
    assert [r["verdict"] for r in rows] == ["watermarked", "not watermarked"]
    assert result.stderr == (error_line(f"{missing}: no such file")
                             + error_line(f"{texts['empty.txt']}: text is empty"))
    # the same without --json
    result = run("detect", "-k", key_file, *names)
    assert result.exit_code == 2
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr.count("distillmark: error: ") == 2


# --------------------------------------------------------------------------------------------
# detect: bad inputs, each one line on stderr


@pytest.mark.parametrize("name, message", [
    ("empty.txt", "text is empty"),
    ("blank.txt", "text is only whitespace"),
    ("latin1.txt", "not valid UTF-8: byte 0xe9 at offset 3"),
    ("adir", "is a directory (give text files)"),
    ("missing.txt", "no such file"),
])
def test_detect_bad_input_file(key_file: Path, texts: dict[str, Path], name: str,
                               message: str) -> None:
    path = texts.get(name, texts["wm.txt"].parent / name)
    for json_flag in ([], ["--json"]):
        result = run("detect", "-k", key_file, *json_flag, path)
        assert result.exit_code == 2
        assert result.stdout == ""
        assert result.stderr == error_line(f"{path}: {message}")


def test_detect_non_utf8_offset_is_exact(key_file: Path, tmp_path: Path) -> None:
    f = tmp_path / "mixed.txt"
    f.write_bytes("naïve café ".encode() * 10 + b"\x80rest")
    result = run("detect", "-k", key_file, f)
    assert result.exit_code == 2
    assert result.stderr == error_line(f"{f}: not valid UTF-8: byte 0x80 at offset 130")


def test_detect_max_bytes(key_file: Path, texts: dict[str, Path]) -> None:
    size = texts["wm.txt"].stat().st_size
    assert run("detect", "-k", key_file, "--max-bytes", size, texts["wm.txt"]).exit_code == 0
    result = run("detect", "-k", key_file, "--max-bytes", size - 1, texts["wm.txt"])
    assert result.exit_code == 2
    assert result.stderr == error_line(f"{texts['wm.txt']}: larger than --max-bytes {size - 1} "
                                       "bytes; split it, or raise --max-bytes if memory allows")


def test_detect_max_bytes_holds_for_pipes_and_devices(key_file: Path) -> None:
    """The limit counts the bytes read, not the size the file system reports (0 here)."""
    result = run("detect", "-k", key_file, "--max-bytes", 1000, "/dev/zero")
    assert result.exit_code == 2
    assert result.stderr == error_line("/dev/zero: larger than --max-bytes 1000 bytes; split it, "
                                       "or raise --max-bytes if memory allows")
    result = run("detect", "-k", key_file, "--max-bytes", 1000, "-", input=b"x" * 1001)
    assert result.stderr == error_line("<stdin>: larger than --max-bytes 1000 bytes; split it, "
                                       "or raise --max-bytes if memory allows")


def _write_0600(path: Path, content: str) -> Path:
    path.write_text(content)
    path.chmod(0o600)
    return path


def test_detect_key_errors(key_file: Path, texts: dict[str, Path], tmp_path: Path) -> None:
    good = json.loads(key_file.read_text())
    missing = tmp_path / "missing.json"
    not_json = _write_0600(tmp_path / "notjson.json", "this is not json\n")
    truncated = _write_0600(tmp_path / "truncated.json", key_file.read_text()[:40])
    v3 = _write_0600(tmp_path / "v3.json", json.dumps({**good, "distillmark_spec": 3}))
    other = _write_0600(tmp_path / "other.json", json.dumps({"hello": "world"}))
    edited = _write_0600(tmp_path / "edited.json", json.dumps({**good, "key_id": "dmk-0"}))
    weaker = _write_0600(tmp_path / "weaker.json",
                         json.dumps({**good, "params": {**good["params"], "gamma": 0.05}}))
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"caf\xe9": 1}')
    latin1.chmod(0o600)
    no_secret = _write_0600(tmp_path / "nosecret.json",
                            json.dumps({k: v for k, v in good.items() if k != "secret"}))
    cases = [
        (missing, f"key file {missing} does not exist (make one with `distillmark keygen`)"),
        (tmp_path, f"key file {tmp_path} is a directory, not a key file"),
        (not_json, f"key file {not_json} is not valid JSON: Expecting value at line 1 column 1"),
        (truncated, f"key file {truncated} is not valid JSON: "),
        (v3, (f"key file {v3} has spec version 3; this distillmark reads versions 1 and 2 "
              "(upgrade distillmark)")),
        (other, f"key file {other} is not a distillmark spec (no 'distillmark_spec' field)"),
        (edited, (f"key file {edited}: key_id 'dmk-0' does not belong to this secret "
                  "(the spec was edited or corrupted)")),
        (no_secret, f"key file {no_secret}: missing field 'secret'"),
        (weaker, (f"key file {weaker} was edited: its parameters do not match its integrity tag "
                  "(make a new key with `distillmark keygen`)")),
        (latin1, f"key file {latin1} is not UTF-8 (byte offset 5)"),
    ]
    for key, message in cases:
        result = run("detect", "-k", key, texts["wm.txt"])
        assert result.exit_code == 2, key
        assert result.stdout == ""
        if message.endswith(": "):  # the JSON decoder's position text varies with the cut
            assert result.stderr.startswith(error_line(message).rstrip("\n"))
            assert result.stderr.count("\n") == 1
        else:
            assert result.stderr == error_line(message)


def test_key_readable_by_others_is_one_warning_line(key_file: Path, texts: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """A key file with mode 0644 still works, with one diagnostic line on stderr (as a user
    sees it: run as a process, not under pytest's warning capture), not Python's
    warning format with a source line of distillmark's code."""
    key = tmp_path / "open.json"
    key.write_bytes(key_file.read_bytes())
    key.chmod(0o644)
    proc = subprocess.run([sys.executable, "-m", "distillmark", "detect", "-k", str(key),
                           str(texts["wm.txt"])], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{texts['wm.txt']}: watermarked (p = ")
    assert f"key file {key} is readable by other users (mode 0o644); chmod 600 it" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "Warning:" not in proc.stderr and ".py:" not in proc.stderr


def test_detect_key_option_is_required(texts: dict[str, Path]) -> None:
    result = run("detect", texts["wm.txt"])
    assert result.exit_code == 2
    assert "--key" in result.stderr and result.stdout == ""


def _modified_tokenizer(path: Path) -> Path:
    d = json.loads(builtin_tokenizer_path().read_text(encoding="utf-8"))
    d["pre_tokenizer"]["add_prefix_space"] = True
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


def test_detect_tokenizer_mismatch(key_file: Path, texts: dict[str, Path], tmp_path: Path,
                                   key_spec: WatermarkSpec) -> None:
    modified = _modified_tokenizer(tmp_path / "tokenizer.json")
    sha = fingerprint(modified.read_text(encoding="utf-8"))
    assert sha != key_spec.tokenizer.sha256
    for tok_arg in (modified, tmp_path):  # the file, or a directory holding it
        result = run("detect", "-k", key_file, "--tokenizer", tok_arg, texts["wm.txt"])
        assert result.exit_code == 2
        assert result.stdout == ""
        assert result.stderr == error_line(
            f"tokenizer {modified} (sha256 {sha[:12]}…) does not match the spec's tokenizer "
            f"(sha256 {key_spec.tokenizer.sha256[:12]}…); pass the tokenizer the key was made for")
    missing = tmp_path / "nope.json"
    result = run("detect", "-k", key_file, "--tokenizer", missing, texts["wm.txt"])
    assert result.exit_code == 2
    assert result.stderr == error_line(f"tokenizer file {missing} does not exist")


def test_detect_tokenizer_override_accepts_a_reformatted_copy(
        key_file: Path, texts: dict[str, Path], tmp_path: Path) -> None:
    """A key made on another machine records a tokenizer path that is gone here; --tokenizer
    gives the same tokenizer (saved differently: the fingerprint is of the canonical JSON)."""
    made_with = tmp_path / "made" / "tokenizer.json"
    made_with.parent.mkdir()
    made_with.write_bytes(builtin_tokenizer_path().read_bytes())
    key = tmp_path / "k.json"
    spec = new_spec("greenlist", {}, load_tokenizer(made_with)[1], secret=CLI_SECRET)
    save_spec(spec, key)
    assert run("detect", "-k", key, texts["wm.txt"]).exit_code == 0
    made_with.unlink()
    result = run("detect", "-k", key, texts["wm.txt"])
    assert result.exit_code == 2
    assert result.stderr == error_line(f"tokenizer file {made_with} does not exist")
    copy = tmp_path / "copy.json"
    data = json.loads(builtin_tokenizer_path().read_text(encoding="utf-8"))
    copy.write_text(json.dumps(dict(reversed(list(data.items()))), indent=4), encoding="utf-8")
    result, (d,) = detect_json("-k", key, "--tokenizer", copy, texts["wm.txt"])
    assert result.exit_code == 0 and d["verdict"] == "watermarked"


# --------------------------------------------------------------------------------------------
# detect: stdin and --prompt


def test_detect_stdin(key_file: Path, texts: dict[str, Path]) -> None:
    text = texts["wm.txt"].read_text(encoding="utf-8")
    for args in ([], ["-"]):
        result, (d,) = detect_json("-k", key_file, *args, input=text)
        assert result.exit_code == 0
        assert d["source"] == "<stdin>" and d["verdict"] == "watermarked"
    result = run("detect", "-k", key_file, input=text)
    assert result.stdout.startswith("<stdin>: watermarked (p = ")
    human = texts["human.txt"].read_text(encoding="utf-8")
    result, (d,) = detect_json("-k", key_file, input=human)
    assert result.exit_code == 1 and d["verdict"] == "not watermarked"
    # stdin mixed with files
    result, rows = detect_json("-k", key_file, texts["human.txt"], "-", input=text)
    assert result.exit_code == 0
    assert [r["source"] for r in rows] == [str(texts["human.txt"]), "<stdin>"]


@pytest.mark.parametrize("data, message", [
    (b"", "<stdin>: text is empty"),
    (b" \n\n ", "<stdin>: text is only whitespace"),
    (b"abc\xffdef", "<stdin>: not valid UTF-8: byte 0xff at offset 3"),
])
def test_detect_bad_stdin(key_file: Path, data: bytes, message: str) -> None:
    result = run("detect", "-k", key_file, input=data)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == error_line(message)


def test_detect_prompt_is_context_not_scored(key_file: Path, texts: dict[str, Path]) -> None:
    _, (plain,) = detect_json("-k", key_file, texts["wm.txt"])
    _, (prompted,) = detect_json("-k", key_file, "--prompt", "Tell me something.",
                                 texts["wm.txt"])
    assert prompted["n_tokens"] == plain["n_tokens"]  # the prompt's tokens are not counted
    # the text's first token is now scored too (its context is the prompt's last token)
    assert plain["n_scored"] <= prompted["n_scored"] <= plain["n_scored"] + 1
    assert prompted["verdict"] == "watermarked"


# --------------------------------------------------------------------------------------------
# help


def test_python_m_distillmark_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "distillmark", "--help"], check=False,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for word in ("keygen", "detect", "generate", "demo", "Exit status"):
        assert word in proc.stdout


def test_detect_help_documents_exit_codes() -> None:
    result = run("detect", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "Exit status: 0 if a watermark was found, 1 if not" in text
    assert "2 on a usage or input error" in text


def test_no_arguments_shows_help() -> None:
    result = run()
    assert "keygen" in result.stdout + result.stderr
    assert result.exit_code in (0, 2)


# --------------------------------------------------------------------------------------------
# generate and demo with a tiny random model (a local Hugging Face model directory)


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


def test_generate_then_detect(tiny_model_dir: Path, key_file: Path, key_spec: WatermarkSpec,
                              tmp_path: Path) -> None:
    prompts = ["Hello there", "A much longer prompt with many more words in it"]
    result = run("generate", "--model", tiny_model_dir, "--engine", "transformers", "--key",
                 key_file, "--json", "--max-new-tokens", "60", "--seed", "1", *prompts)
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    assert all(r["key_id"] == key_spec.key_id and 1 <= r["n_tokens"] <= 60 for r in rows)
    control = run("generate", "--model", tiny_model_dir, "--no-watermark", "--json",
                  "--max-new-tokens", "60", "--seed", "1", *prompts)
    assert control.exit_code == 0, control.stderr
    crows = [json.loads(line) for line in control.stdout.splitlines()]
    assert all(r["key_id"] is None for r in crows)
    for i, (r, c) in enumerate(zip(rows, crows)):
        wm, ctl = tmp_path / f"wm{i}.txt", tmp_path / f"ctl{i}.txt"
        wm.write_text(r["text"], encoding="utf-8")
        ctl.write_text(c["text"], encoding="utf-8")
        assert run("detect", "-k", key_file, wm).exit_code == 0
        assert run("detect", "-k", key_file, ctl).exit_code == 1
    # plain output: the text alone for one prompt, a "## prompt" header before each of several
    plain = run("generate", "--model", tiny_model_dir, "--key", key_file,
                "--max-new-tokens", "5", "--seed", "1", "Hi")
    assert plain.exit_code == 0 and plain.stdout.strip() and "##" not in plain.stdout
    plain = run("generate", "--model", tiny_model_dir, "--key", key_file,
                "--max-new-tokens", "5", "--seed", "1", "Hi", "Bye")
    assert plain.exit_code == 0
    assert plain.stdout.startswith("## Hi\n") and "\n## Bye\n" in plain.stdout


def test_generate_usage_errors(tiny_model_dir: Path, key_file: Path, tmp_path: Path) -> None:
    msg = "give --key KEY to watermark, or --no-watermark for a control text"
    for args in ([], ["--key", key_file, "--no-watermark"]):
        result = run("generate", "--model", tiny_model_dir, *args, "Hi")
        assert result.exit_code == 2
        assert result.stderr == error_line(msg) and result.stdout == ""
    result = run("generate", "--model", tiny_model_dir, "--engine", "vllm", "--key", key_file,
                 "Hi")
    assert result.exit_code == 2
    assert result.stderr.endswith(error_line("`engine` must be auto, transformers, llama.cpp; "
                                             "got 'vllm'"))
    missing = tmp_path / "none"
    result = run("generate", "--model", missing, "--key", key_file, "Hi")
    assert result.exit_code == 2
    assert result.stderr.endswith(error_line(f"model {missing} does not exist (give a GGUF file "
                                             "or a local Hugging Face model directory)"))
    # a key made for another tokenizer
    other_tok = _modified_tokenizer(tmp_path / "tokenizer.json")
    other = new_spec("greenlist", {}, load_tokenizer(other_tok)[1], secret=CLI_SECRET)
    other_key = save_spec(other, tmp_path / "other.json")
    result = run("generate", "--model", tiny_model_dir, "--key", other_key, "Hi")
    assert result.exit_code == 2
    assert result.stderr.endswith(error_line(
        f"model {tiny_model_dir} has a different tokenizer from the one key {other.key_id} was "
        "made for; make a key with --tokenizer pointing at this model"))


def test_demo_with_a_local_model(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the demo makes a fresh key: fix it so the run is deterministic
    monkeypatch.setattr("distillmark.watermark.keys._secrets.token_bytes",
                        lambda n: bytes(range(200, 200 + n)))
    result = run("demo", "--model", tiny_model_dir, "--engine", "transformers", "--json",
                 "--max-new-tokens", "40", "--no-students")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["kind"] for r in rows] == ["watermarked"] * 4 + ["control"] * 4
    assert [r["verdict"] for r in rows] == ["watermarked"] * 4 + ["not watermarked"] * 4
    assert "8/8 answers classified correctly" in " ".join(result.stderr.split())
    assert "distilled" not in result.stderr


def test_demo_short_watermarked_answers_are_undecided_not_wrong(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers too short to decide alone ("insufficient evidence"): the demo says how many, and
    its verdict is the test of the watermarked answers together, which finds the mark."""
    monkeypatch.setattr("distillmark.watermark.keys._secrets.token_bytes",
                        lambda n: bytes(range(200, 200 + n)))
    result = run("demo", "--model", tiny_model_dir, "--engine", "transformers", "--json",
                 "--max-new-tokens", "12", "--no-students")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["verdict"] for r in rows] == ["insufficient evidence"] * 8
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "4/8 answers classified correctly (4 watermarked too short to decide: fewer than 25 " \
           "scored tokens)" in said
    assert "The watermarked answers together: watermarked (p = " in said
    assert "controls flagged: 0/4." in said


def test_demo_tells_the_distillation_story(tiny_model_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The students' stage: the student trained on the watermarked answers is found by the
    probe and the audit, the control by neither; one JSON object per student."""
    import functools

    from distillmark.verify.lab import story as students

    monkeypatch.setattr("distillmark.watermark.keys._secrets.token_bytes",
                        lambda n: bytes(range(200, 200 + n)))
    # smaller students and audit than the demo's defaults: the same story, faster
    monkeypatch.setattr(students, "distillation_story",
                        functools.partial(students.distillation_story, d_model=32,
                                          probe_max_tokens=32, audit_sequences=8,
                                          audit_len=48))
    result = run("demo", "--model", tiny_model_dir, "--engine", "transformers", "--json",
                 "--max-new-tokens", "40", "--train-answers", "8", "--probe-prompts", "4",
                 "--samples", "3")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["kind"] for r in rows] == ["watermarked"] * 4 + ["control"] * 4 + ["student"] * 2
    marked, control = rows[8:]
    assert (marked["name"], marked["marked"], marked["n_train"]) == ("student-marked", True, 8)
    assert marked["probe"]["verdict"] == marked["audit"]["verdict"] == "watermarked"
    assert control["probe"]["verdict"] == control["audit"]["verdict"] == "not watermarked"
    assert marked["probe"]["n_samples"] == 3 and marked["probe"]["n_answers"] == 12
    assert marked["probe"]["key_id"] == rows[0]["key_id"]
    assert "Was a model distilled from our answers?" in result.stderr
    bad = run("demo", "--model", tiny_model_dir, "--engine", "transformers",
              "--max-new-tokens", "4", "--samples", "0")
    assert bad.exit_code == 2
    assert bad.stderr.endswith(error_line("--train-answers, --probe-prompts and --samples must "
                                          "be >= 1, got 4, 16, 0"))


def test_keygen_scheme_and_params(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    result = run("keygen", "--out", out, "--scheme", "greenlist", "--param", "gamma=0.5",
                 "--param", "context_width=2", "--param", "combine=min", "--json")
    assert result.exit_code == 0, result.stderr
    params = json.loads(result.stdout)["params"]
    assert (params["gamma"], params["context_width"], params["combine"]) == (0.5, 2, "min")
    bad = run("keygen", "--out", tmp_path / "b.json", "--param", "gamma")
    assert bad.exit_code == 2
    assert bad.stderr == "distillmark: error: --param must be NAME=VALUE, got 'gamma'\n"
    unknown = run("keygen", "--out", tmp_path / "c.json", "--scheme", "nope")
    assert unknown.exit_code == 2
    assert unknown.stderr.startswith("distillmark: error: unknown scheme 'nope'; known: ")
    typo = run("keygen", "--out", tmp_path / "d.json", "--param", "gama=0.5")
    assert typo.exit_code == 2
    assert "unknown greenlist parameter(s): gama" in typo.stderr

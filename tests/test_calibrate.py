"""One key, one corpus: the tuples shared by texts left out (verify/shared.py), the realised
false-positive rate with exact bounds (verify/calibrate.py) and ``distillmark calibrate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.verify import detect_ids, detect_ids_batch
from distillmark.verify.calibrate import calibrate_ids, corpus_texts, level_rates, split_text
from distillmark.verify.shared import ngram_codes, shared_tuples
from distillmark.verify.stats import clopper_pearson
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    ParameterError,
    load_tokenizer,
    new_spec,
    save_spec,
    scheme_for,
)

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def human_seqs(human_texts: list[str]) -> list[np.ndarray]:
    tok, _ = load_tokenizer(BUILTIN_SMOLLM2)
    return [np.asarray(e.ids, dtype=np.int64)
            for e in tok.encode_batch_fast(human_texts, add_special_tokens=False)]


# -- shared tuples -------------------------------------------------------------------------------


def test_ngram_codes_align_with_tuple_keys(spec_factory: Any) -> None:
    ids = np.array([5, 6, 7, 5, 6, 7, 8], dtype=np.int64)
    for h in (0, 1, 2):
        scheme = scheme_for(spec_factory(context_width=h))
        codes = ngram_codes(ids, h + 1)
        assert codes.size == scheme.tuple_keys(ids).size == ids.size - h
        # equal runs of tokens, equal codes
        assert codes[0] == codes[3]
        assert len(set(codes.tolist())) == len({tuple(ids[i:i + h + 1]) for i in range(codes.size)})


def test_shared_tuples_threshold_and_left_out() -> None:
    a = np.array([1, 2, 3, 4], dtype=np.int64)
    b = np.array([9, 2, 3, 8], dtype=np.int64)
    c = np.array([7, 7, 2, 3], dtype=np.int64)
    two = shared_tuples([a, b, c], 1)
    assert two.threshold == 2 and two.n_texts == 3
    # (2, 3) is in all three texts: left out of each, at its place
    assert two.left_out(a).tolist() == [False, True, False]
    assert two.left_out(c).tolist() == [False, False, True]
    three = shared_tuples([a, b, c], 1, min_texts=4)
    assert three.codes.size == 0 and not three.left_out(a).any()
    share = shared_tuples([a, b, c], 0, min_texts=2, max_share=1.0)
    assert share.threshold == 3 and share.left_out(a).tolist() == [False, True, True, False]
    with pytest.raises(ParameterError, match="min_texts"):
        shared_tuples([a], 1, min_texts=1)
    with pytest.raises(ParameterError, match="max_share"):
        shared_tuples([a], 1, max_share=0.0)


def test_shared_tuples_go_through_every_detect_path(human_seqs: list[np.ndarray],
                                                    spec_factory: Any) -> None:
    seqs = human_seqs[:40]
    scheme = scheme_for(spec_factory(context_width=1))
    shared = shared_tuples(seqs, 1)
    batch = detect_ids_batch(seqs, scheme, shared=shared)
    plain = detect_ids_batch(seqs, scheme)
    for s, r, p in zip(seqs, batch, plain):
        one = detect_ids(s, scheme, shared=shared)
        assert one.to_dict() == r.to_dict()
        assert r.n_scored < p.n_scored
    # a prompt still only gives context; the left-out tuples are left out of the answer
    one = detect_ids(seqs[0], scheme, prompt_len=10, shared=shared)
    (again,) = detect_ids_batch([seqs[0]], scheme, prompt_lens=[10], shared=shared)
    assert one.to_dict() == again.to_dict()
    with pytest.raises(ParameterError, match="context width"):
        detect_ids(seqs[0], scheme, shared=shared_tuples(seqs, 2))


# -- one key, one corpus: the per-key rate spreads as the binomial's only with the remedy ------

N_KEYS = 30
ALPHA = 0.1


def _dispersion_pvalue(seqs: list[np.ndarray], h: int, shared: Any) -> float:
    """Chi-square test that the per-key counts of texts under ALPHA, over N_KEYS fixed keys,
    spread no more than binomial counts would: small when one key flags far more texts than
    another."""
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    counts, n_tests = [], []
    for k in range(N_KEYS):
        secret = np.random.default_rng(5000 + k).bytes(32)
        scheme = scheme_for(new_spec("greenlist", {"context_width": h}, info, secret=secret))
        p = np.array([r.pvalue for r in detect_ids_batch(seqs, scheme, shared=shared)
                      if r.n_scored >= 25])
        counts.append(int(np.count_nonzero(p < ALPHA)))
        n_tests.append(p.size)
    x, n = np.array(counts, dtype=float), float(np.mean(n_tests))
    rate = x.mean() / n
    chi2 = float(((x - x.mean()) ** 2).sum() / (n * rate * (1 - rate)))
    return float(stats.chi2.sf(chi2, N_KEYS - 1))


@pytest.mark.parametrize("h", [1, 2])
def test_per_key_rate_is_binomial_once_shared_tuples_are_left_out(
        h: int, human_seqs: list[np.ndarray]) -> None:
    """Every other numpy and scipy docstring, 30 fixed keys: with every tuple scored, the share
    of texts under 0.1 ranges from a few percent to several times that across keys (far beyond
    the binomial); with shared tuples left out, each key's texts are tested on disjoint cells
    and the counts spread as the binomial's."""
    seqs = human_seqs[::2]
    assert _dispersion_pvalue(seqs, h, shared_tuples(seqs, h)) > 1e-3
    assert _dispersion_pvalue(seqs, h, None) < 1e-6


# -- rates and bounds ---------------------------------------------------------------------------


def test_clopper_pearson_matches_scipy() -> None:
    for k, n in [(0, 50), (3, 1000), (50, 50), (17, 200)]:
        ci = stats.binomtest(k, n).proportion_ci(0.99, method="exact")
        lo, hi = clopper_pearson(k, n, 0.99)
        assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-9)


def test_level_rates_flag_a_rate_above_its_level() -> None:
    rng = np.random.default_rng(3)
    uniform = rng.random(20000)
    assert not any(r.exceeded() for r in level_rates(uniform, (1e-2, 1e-3)))
    inflated = np.where(rng.random(20000) < 0.05, 1e-9, uniform)
    rates = level_rates(inflated, (1e-2, 1e-3))
    assert all(r.exceeded() for r in rates)
    assert rates[0].n_below == int(np.count_nonzero(inflated < 1e-2))


def test_calibrate_ids_on_human_text(human_seqs: list[np.ndarray], spec_factory: Any) -> None:
    scheme = scheme_for(spec_factory(context_width=2))
    res = calibrate_ids(human_seqs, scheme, shared=shared_tuples(human_seqs, 2))
    d = res.to_dict()
    assert d["n_texts"] == len(human_seqs) and 0 < d["n_tests"] <= len(human_seqs)
    assert d["shared"]["threshold"] == 2 and d["shared"]["n_left_out"] > 0
    assert [lv["alpha"] for lv in d["levels"]] == [1e-2, 1e-3, 1e-4, 1e-5]
    assert not res.exceeded()


def test_split_text_and_corpus_texts(tmp_path: Path) -> None:
    text = "".join(f"line {i} " + "word " * 20 + "\n" for i in range(60))
    pieces = split_text(text, 1200)
    assert len(pieces) > 3 and all(p.endswith("\n") for p in pieces)
    assert "".join(pieces) == text
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    (tmp_path / "b.txt").write_text(text, encoding="utf-8")  # the same texts again
    (tmp_path / "bin.dat").write_bytes(b"\xff\x00" * 500)
    texts = corpus_texts([tmp_path])
    assert texts == pieces  # duplicates once, the binary file skipped


# -- the command --------------------------------------------------------------------------------


def _cli(*args: Any) -> Any:
    result = RUNNER.invoke(app, ["calibrate", *[str(a) for a in args]])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    return result


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory, human_texts: list[str]) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    (d / "docs.txt").write_text("\n\n".join(human_texts[:400]), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    info = load_tokenizer(BUILTIN_SMOLLM2)[1]
    spec = new_spec("greenlist", {"context_width": 2}, info, secret=bytes(range(32)))
    return save_spec(spec, tmp_path_factory.mktemp("key") / "k.json")


def test_calibrate_command_within_bounds(corpus_dir: Path, key_file: Path) -> None:
    res = _cli("--key", key_file, corpus_dir, "--json")
    assert res.exit_code == 0, res.stderr
    d = json.loads(res.stdout)
    assert set(d) == {"key_id", "scheme", "n_texts", "n_tests", "mean_scored", "min_scored",
                      "confidence", "shared", "exceeded", "levels"}
    assert d["exceeded"] is False and d["shared"]["threshold"] == 2
    assert set(d["levels"][0]) == {"alpha", "n_tests", "n_below", "rate", "lower", "upper",
                                   "exceeded"}
    human = _cli("--key", key_file, corpus_dir, "--levels", "0.01")
    assert human.exit_code == 0 and "alpha 0.01:" in human.stdout and " ok" in human.stdout


def test_calibrate_command_exceeded_on_marked_text(tmp_path: Path, key_file: Path) -> None:
    """Texts made of the key's green tokens only: the key flags them all, exit 1."""
    tok, info = load_tokenizer(BUILTIN_SMOLLM2)
    spec = new_spec("greenlist", {"context_width": 0}, info, secret=bytes(range(32)))
    key = save_spec(spec, tmp_path / "unigram.json")
    green = np.flatnonzero(scheme_for(spec).green_row(0))
    vocab = tok.get_vocab()
    words = sorted(t for t, i in vocab.items()
                   if i in set(green.tolist()) and t.startswith("\u0120") and t[1:].isalpha()
                   and t[1:].islower() and len(t) > 3)
    rng = np.random.default_rng(11)
    text = "\n".join(" ".join(w[1:] for w in rng.choice(words, 12)) for _ in range(400))
    (tmp_path / "marked.txt").write_text(text, encoding="utf-8")
    res = _cli("--key", key, tmp_path / "marked.txt", "--no-shared", "--json")
    assert res.exit_code == 1, res.stderr
    d = json.loads(res.stdout)
    assert d["exceeded"] is True and d["shared"] is None
    assert all(lv["exceeded"] for lv in d["levels"])


@pytest.mark.parametrize("args,message", [
    (["nowhere"], "nowhere: no such corpus file or directory"),
    (["{corpus}", "--levels", "0.5,2"], "--levels must be numbers in (0, 1)"),
    (["{corpus}", "--levels", "x"], "--levels must be comma-separated numbers"),
    (["{corpus}", "--confidence", "1.5"], "--confidence must be in (0, 1)"),
    (["{corpus}", "--max-texts", "0"], "--max-texts must be >= 1"),
])
def test_calibrate_command_errors(args: list[str], message: str, corpus_dir: Path,
                                  key_file: Path) -> None:
    res = _cli("--key", key_file, *[a.format(corpus=corpus_dir) for a in args])
    assert res.exit_code == 2
    assert message in res.stderr and res.stdout == ""


def test_calibrate_command_refuses_a_corpus_without_texts(tmp_path: Path, key_file: Path
                                                          ) -> None:
    (tmp_path / "short.txt").write_text("too short\n", encoding="utf-8")
    res = _cli("--key", key_file, tmp_path / "short.txt")
    assert res.exit_code == 2 and "no text long enough" in res.stderr

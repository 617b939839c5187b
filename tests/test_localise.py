"""Localisation of marked spans (verify/windows.py, verify/localise.py, ``detect --windows``):
window counts against brute force, a planted span found where it is, no span in human text,
character offsets, the JSON shape and the refusals."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.verify import detect_ids
from distillmark.verify.localise import Localiser, localise_ids
from distillmark.verify.nulls import binomial, binomial_counts
from distillmark.verify.windows import (
    span_counts,
    token_flags,
    window_counts,
    window_grid,
)
from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    ParameterError,
    WatermarkSpec,
    load_tokenizer,
    new_spec,
    save_spec,
    scheme_for,
)

SpecFactory = Callable[..., WatermarkSpec]
RUNNER = CliRunner()


@pytest.fixture(scope="module")
def tok() -> Any:
    return load_tokenizer(BUILTIN_SMOLLM2)[0]


@pytest.fixture(scope="module")
def human_stream(tok: Any, human_texts: list[str]) -> np.ndarray:
    """Token ids of the docstrings, one after another: ``(n,) int64``, n > 400,000."""
    enc = tok.encode_batch_fast(human_texts, add_special_tokens=False)
    return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in enc])


def word_ids(tok: Any) -> np.ndarray:
    """Whole lower-case word tokens with a leading space: decoded and encoded again, a run of
    them gives the same ids."""
    vocab = tok.get_vocab()
    return np.array(sorted(i for t, i in vocab.items() if re.fullmatch("\u0120[a-z]{3,}", t)))


def marked_ids(scheme: Any, context: np.ndarray, n: int, seed: int, words: np.ndarray
               ) -> np.ndarray:
    """``n`` tokens sampled after ``context`` from seeded normal logits (sd 2) over 500 word
    tokens, through the scheme's own ``process``: ``(n,) int64``."""
    rng = np.random.default_rng(seed)
    support = np.sort(rng.choice(words, 500, replace=False))
    ids = [int(t) for t in context[-8:]]
    for _ in range(n):
        logits = np.full(scheme.vocab_size, -np.inf)
        logits[support] = rng.normal(size=support.size) * 2.0
        logits = scheme.process(logits[None, :], np.array([ids]))[0]
        p = np.exp(logits[support] - logits[support].max())
        ids.append(int(support[rng.choice(support.size, p=p / p.sum())]))
    return np.array(ids[-n:], dtype=np.int64)


# -- counting ----------------------------------------------------------------------------------


def test_binomial_counts_is_binomial_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(5000) < 0.3
    groups = rng.integers(0, 40, 5000)
    a = binomial(scores, groups, 40, p=0.25)
    b = binomial_counts(a.n_ones, a.n_scored, p=0.25)
    for f in ("statistic", "pvalue", "log10_pvalue", "score_mean", "z_score", "n_units"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f


@pytest.mark.parametrize("h", [0, 1, 3])
def test_window_counts_equal_distinct_tuples_of_each_window(spec_factory: SpecFactory,
                                                             h: int) -> None:
    """Every window's counts are those of its own distinct tuple keys, counted directly."""
    scheme = scheme_for(spec_factory(context_width=h, n_lists=16))
    rng = np.random.default_rng(h)
    ids = rng.integers(0, 30, 700)  # few distinct tokens: many repeats at every distance
    prompt_len = 5
    flags = token_flags(ids, scheme, prompt_len=prompt_len)
    keys = scheme.tuple_keys(ids)
    text_keys = np.full(ids.size - prompt_len, -1, dtype=np.int64)  # -1: not scored
    first = max(0, h - prompt_len)
    text_keys[first:] = keys[prompt_len + first - h:].astype(np.int64)
    green = dict(zip(keys.tolist(), scheme.key_scores(keys).tolist()))
    grid = window_grid(flags.n_tokens, (16, 32, 64), 0.25)
    assert [int(e[0] - s[0]) for s, e in grid] == [16, 32, 64, flags.n_tokens]
    for starts, ends in grid:
        assert ends[-1] == flags.n_tokens
        scored, ones = window_counts(flags, starts, ends)
        for s, e, n_sc, n_on in zip(starts, ends, scored, ones):
            distinct = {k for k in text_keys[s:e].tolist() if k >= 0}
            assert n_sc == len(distinct)
            assert n_on == sum(green[k] for k in distinct)
            assert span_counts(flags, int(s), int(e)) == (n_sc, n_on)
    # the whole text is counted as detect counts it
    r = detect_ids(ids, scheme, prompt_len=prompt_len)
    scored, ones = window_counts(flags, *grid[-1])
    assert (int(scored[0]), int(ones[0])) == (r.n_scored, r.statistic)


# -- finding a span, and only where there is one -----------------------------------------------


PLANTED = [{"context_width": 0}, {"context_width": 1}, {"context_width": 2},
           {"context_width": 4},
           {"context_width": 3, "seeding": "selfhash", "combine": "min"}]


@pytest.mark.parametrize("params", PLANTED, ids=["h0", "h1", "h2", "h4", "selfhash-h3"])
def test_planted_span_is_found_within_20_tokens(spec_factory: SpecFactory, tok: Any,
                                                human_stream: np.ndarray,
                                                params: dict[str, Any]) -> None:
    scheme = scheme_for(spec_factory(**params))
    words = word_ids(tok)
    before, after = human_stream[10_000:12_400], human_stream[12_400:15_000]
    span = marked_ids(scheme, before, 200, seed=params["context_width"], words=words)
    ids = np.concatenate([before, span, after])
    scan = localise_ids(ids, scheme, alpha=1e-5)
    assert len(scan.spans) == 1
    (s,) = scan.spans
    assert abs(s.token_start - 2400) <= 20 and abs(s.token_end - 2600) <= 20, s
    assert s.log10_pvalue < -5
    assert s.window_start < 2600 and s.window_end > 2400
    # the p-value is the grid window's, corrected for every window
    assert s.log10_pvalue == pytest.approx(s.window_log10_pvalue + np.log10(scan.n_windows))
    assert scan.lengths == (32, 64, 128, 256, 512, 1024, 2048)


def test_no_span_in_human_text(spec_factory: SpecFactory, human_stream: np.ndarray) -> None:
    """Validity: 150 documents of 2,500 human tokens at alpha 0.01 (corrected for each
    document's windows): a document with a span is a false positive; Bonferroni allows 1%."""
    scheme = scheme_for(spec_factory())
    n_docs, size, alpha = 150, 2500, 0.01
    assert human_stream.size >= n_docs * size
    with_span = 0
    for i in range(n_docs):
        scan = localise_ids(human_stream[i * size:(i + 1) * size], scheme, alpha=alpha)
        with_span += bool(scan.spans)
    # P(Binomial(150, 0.01) >= 6) < 0.002
    assert with_span <= 5


def test_two_spans_reported_disjoint(spec_factory: SpecFactory, tok: Any,
                                     human_stream: np.ndarray) -> None:
    scheme = scheme_for(spec_factory())
    words = word_ids(tok)
    parts = [human_stream[:1500]]
    parts.append(marked_ids(scheme, parts[-1], 150, seed=7, words=words))
    parts.append(human_stream[1500:3500])
    parts.append(marked_ids(scheme, parts[-1], 300, seed=8, words=words))
    parts.append(human_stream[3500:5000])
    scan = localise_ids(np.concatenate(parts), scheme, alpha=1e-5)
    got = sorted((s.token_start, s.token_end) for s in scan.spans)
    assert len(got) == 2, got
    (a0, a1), (b0, b1) = got
    assert a1 <= b0
    assert abs(a0 - 1500) <= 20 and abs(a1 - 1650) <= 20
    assert abs(b0 - 3650) <= 20 and abs(b1 - 3950) <= 20
    assert scan.spans[0].log10_pvalue <= scan.spans[1].log10_pvalue  # best first


# -- characters --------------------------------------------------------------------------------


def _planted_text(spec: WatermarkSpec, tok: Any, human: str, cut: int, n: int
                  ) -> tuple[str, int, int]:
    """``human`` with ``n`` marked words inserted at character ``cut`` (a line start): the text
    and the marked characters ``[start, end)``."""
    scheme = scheme_for(spec)
    ctx = np.asarray(tok.encode(human[:cut], add_special_tokens=False).ids)
    marked = tok.decode(marked_ids(scheme, ctx, n, seed=3, words=word_ids(tok)).tolist())
    text = human[:cut] + marked + "\n" + human[cut:]
    return text, cut, cut + len(marked)


@pytest.mark.parametrize("long", [False, True])
def test_offsets_are_code_points_of_the_span(spec_factory: SpecFactory, tok: Any,
                                             human_texts: list[str], long: bool) -> None:
    """``text[start:end]`` is the span's tokens, decoded, in a text with characters outside
    ASCII; and in a text long enough to be tokenised in chunks, with the span after the
    first."""
    spec = spec_factory()
    human = "\n\n".join(human_texts[:60 if long else 8]) + "\n"
    human = human.replace(" the ", " thé ").replace(".\n", ". 😀\n")
    cut = human.index("\n", 70_000 if long else len(human) // 2) + 1
    text, m0, m1 = _planted_text(spec, tok, human, cut, 200)
    loc = Localiser(spec, alpha=1e-5)
    ids, offsets = loc.encode_offsets(text)
    assert np.array_equal(ids, loc.encode(text))
    result = loc.localise(text)
    assert len(result.spans) == 1
    (s,) = result.spans
    assert text[s.start:s.end] == tok.decode(ids[s.token_start:s.token_end].tolist())
    # within 20 tokens of the marked characters
    tokens_before = int(np.searchsorted(offsets[:, 0], m0))
    tokens_end = int(np.searchsorted(offsets[:, 0], m1))
    assert abs(s.token_start - tokens_before) <= 20 and abs(s.token_end - tokens_end) <= 20
    assert s.start < m1 and s.end > m0
    w = s.window
    assert text[w.start:w.end] == tok.decode(ids[w.token_start:w.token_end].tolist())
    # every token's offsets: its own characters (whole characters; é and 😀 are in the text)
    for i in range(0, ids.size, 97):
        piece = tok.decode([int(ids[i])])
        if "\ufffd" not in piece:
            assert text[offsets[i, 0]:offsets[i, 1]] == piece


# -- the command -------------------------------------------------------------------------------


def cli(*args: Any) -> Any:
    result = RUNNER.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, tok: Any, tokenizer_info: Any,
            human_texts: list[str], secret: bytes) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("windows")
    spec = new_spec("greenlist", {}, tokenizer_info, secret=secret)
    human = "\n\n".join(human_texts[:8]) + "\n"
    text, m0, m1 = _planted_text(spec, tok, human, human.index("\n", len(human) // 2) + 1,
                                 200)
    (d / "planted.txt").write_text(text, encoding="utf-8")
    (d / "marked.json").write_text(json.dumps([m0, m1]), encoding="utf-8")
    (d / "human.txt").write_text(human, encoding="utf-8")
    return {"key": save_spec(spec, d / "k.json"), "planted": d / "planted.txt",
            "human": d / "human.txt", "dir": d,
            "gumbel": save_spec(new_spec("gumbel", {}, tokenizer_info, secret=secret),
                                d / "g.json"),
            "other": save_spec(new_spec("greenlist", {}, tokenizer_info, secret=secret[::-1]),
                               d / "other.json")}


SPAN_KEYS = {"start", "end", "token_start", "token_end", "tokens", "scored", "statistic",
             "score_mean", "pvalue", "log10_pvalue", "window"}
WINDOW_KEYS = {"start", "end", "token_start", "token_end", "scored", "statistic", "pvalue",
               "log10_pvalue"}


def test_json_shape_and_exit_status(planted: dict[str, Path]) -> None:
    found = cli("detect", "-k", planted["key"], "--windows", "--alpha", "1e-5", "--json",
                planted["planted"])
    assert found.exit_code == 0, found.stderr
    d = json.loads(found.stdout)
    plain = json.loads(cli("detect", "-k", planted["key"], "--alpha", "1e-5", "--json",
                           planted["planted"]).stdout)
    assert {k: d[k] for k in plain} == plain  # the usual object, unchanged
    assert set(d) - set(plain) == {"spans", "n_windows", "window_lengths", "window_stride",
                                   "span_alpha", "span_correction", "offset_unit"}
    assert d["offset_unit"] == "code point" and d["span_correction"] == "bonferroni"
    assert d["window_lengths"] == [32, 64, 128, 256, 512, 1024, 2048]
    (span,) = d["spans"]
    assert set(span) == SPAN_KEYS and set(span["window"]) == WINDOW_KEYS
    assert span["tokens"] == span["token_end"] - span["token_start"]
    assert span["log10_pvalue"] < -5 and span["pvalue"] < 1e-5
    m0, m1 = json.loads((planted["dir"] / "marked.json").read_text(encoding="utf-8"))
    common = min(m1, span["end"]) - max(m0, span["start"])
    assert common >= 0.9 * (m1 - m0) and common >= 0.9 * (span["end"] - span["start"])

    none = cli("detect", "-k", planted["key"], "--windows", "--alpha", "1e-5", "--json",
               planted["human"])
    assert none.exit_code == 1
    assert json.loads(none.stdout)["spans"] == []


def test_human_output(planted: dict[str, Path]) -> None:
    out = cli("detect", "-k", planted["key"], "--windows", planted["planted"]).stdout
    lines = out.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"  span 1: characters \d+-\d+ \(tokens \d+-\d+\), p = \S+ corrected "
                        r"for [\d,]+ windows; \d+/\d+ scored tokens green", lines[1])
    out = cli("detect", "-k", planted["key"], "--windows", planted["human"]).stdout
    assert re.fullmatch(r"  no marked span \(p corrected for [\d,]+ windows\)",
                        out.splitlines()[1])
    short = planted["dir"] / "short.txt"
    short.write_text("Hello there.", encoding="utf-8")
    r = cli("detect", "-k", planted["key"], "--windows", short)
    assert r.exit_code == 1
    assert r.stdout.splitlines()[1] == "  no marked span (no window has 25 scored tokens)"


def test_refusals(planted: dict[str, Path]) -> None:
    r = cli("detect", "-k", planted["gumbel"], "--windows", planted["planted"])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr == ("distillmark: error: --windows supports the schemes with the binomial "
                        "test (greenlist, dipmark, transformers-kgw); this key's scheme "
                        "'gumbel' uses the 'gamma' test\n")
    r = cli("detect", "-k", planted["key"], "-k", planted["other"], "--windows",
            planted["planted"])
    assert r.exit_code == 2
    assert r.stderr == ("distillmark: error: --windows takes one key, not a key ring "
                        "(2 keys)\n")


def test_library_refuses_other_tests(tokenizer_info: Any, secret: bytes) -> None:
    spec = new_spec("gumbel", {}, tokenizer_info, secret=secret)
    with pytest.raises(ParameterError, match="binomial test"):
        Localiser(spec, alpha=0.01)
    with pytest.raises(ParameterError, match="binomial test"):
        localise_ids(np.arange(100), scheme_for(spec), alpha=0.01)

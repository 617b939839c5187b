"""The encoder: the same ids as tokenizers on every input, the fast path where the tokenizer
allows one, tokenizers where it does not; detect and scan give the same results either way."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scan_helpers import read_rows, run_cli
from tokenizers import Tokenizer, models, pre_tokenizers
from tokenizers.trainers import UnigramTrainer, WordPieceTrainer

from distillmark.verify import Detector
from distillmark.watermark import InputError, WatermarkSpec
from distillmark.watermark.encoder import SLOW_ENV, TextEncoder
from distillmark.watermark.tokenizer import BUILTIN_SMOLLM2, builtin_tokenizer_path, encoder_for
from distillmark.watermark.tokenizer import load_tokenizer as load

CORPUS = Path(__file__).parent / "vectors" / "tokenizer_corpus.json"
SpecFactory = Callable[..., WatermarkSpec]

#: Characters the fast path hands to tokenizers: bytes missing from SmolLM2's vocabulary
#: (tokenizers drops them), code points whose lead byte is missing (planes 4-11), the batch
#: separator, unassigned code points.
REFUSED = ["\x04", "\x06", "\x13", "\x1d", "\U00040000", "\U000bffff", "\ufdd0", "\u0378",
           "\U000e0000"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_file(str(builtin_tokenizer_path()))


@pytest.fixture(scope="module")
def fast(tok: Tokenizer) -> TextEncoder:
    enc = TextEncoder(tok, builtin_tokenizer_path().read_text(encoding="utf-8"))
    assert enc.prepare(), enc.reason
    return enc


def reference(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


def lists(enc: TextEncoder, texts: list[str]) -> list[list[int]]:
    ids, lens = enc.encode_batch(texts)
    assert ids.dtype == np.int64 and lens.dtype == np.int64 and lens.size == len(texts)
    return [a.tolist() for a in np.split(ids, np.cumsum(lens)[:-1])] if texts else []


def corpus() -> list[str]:
    return json.loads(CORPUS.read_text(encoding="utf-8"))["texts"]


def test_the_builtin_tokenizer_takes_the_fast_path(fast: TextEncoder) -> None:
    assert fast.is_fast and fast.reason == ""


def test_corpus_ids_are_the_tokenizers_ids(tok: Tokenizer, fast: TextEncoder) -> None:
    texts = corpus()
    want = reference(tok, texts)
    assert lists(fast, texts) == want
    assert [fast.encode(t).tolist() for t in texts] == want
    # one large batch: split over threads, joined by the separator
    big = texts * 40
    assert lists(fast, big) == want * 40


def test_refused_characters_go_to_tokenizers(tok: Tokenizer, fast: TextEncoder) -> None:
    texts = [f"word{c}word {c}{c} x{c}" for c in REFUSED]
    texts += ["plain text", "text with <|im_start|> inside", "\ufdd0"]
    mixed = [t for pair in zip(texts, corpus()) for t in pair]
    assert lists(fast, mixed) == reference(tok, mixed)
    # the missing bytes are dropped by tokenizers, and so by the encoder
    assert fast.encode("a\x04b").tolist() == tok.encode("a\x04b", add_special_tokens=False).ids


def test_every_vocabulary_entry_encodes_to_itself(tok: Tokenizer) -> None:
    """tiktoken returns a piece found whole in the ranks as it is; tokenizers (ignore_merges
    off) merges it: the same only if every entry is what BPE makes of its own bytes."""
    vocab = tok.get_vocab()
    added = {a.content for a in tok.get_added_tokens_decoder().values()}
    bad = [s for s, i in vocab.items() if s not in added
           and [t.id for t in tok.model.tokenize(s)] != [i]]
    assert bad == []


_ADDED = ["<|im_start|>", "<|im_end|>", "<filename>", "<|endoftext|>", "<file_sep>"]
_PIECES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.text(alphabet=" \t\n\r\u00a0\u3000'sdtlmvre0123456789aé日😀!?.,-_", max_size=40),
    st.sampled_from(_ADDED + ["\r\n", "  ", "\t\t", "'s", "'ll", "\n\n\n"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_PIECES, max_size=8).map("".join), min_size=1, max_size=6))
def test_random_unicode_gives_the_tokenizers_ids(tok: Tokenizer, fast: TextEncoder,
                                                 texts: list[str]) -> None:
    assert lists(fast, texts) == reference(tok, texts)


def test_lone_surrogates_are_refused_alike(tok: Tokenizer, fast: TextEncoder) -> None:
    slow = TextEncoder(tok, None)
    for enc in (fast, slow):
        with pytest.raises(InputError, match="lone surrogate"):
            enc.encode("text \ud800 more")
        with pytest.raises(InputError, match="text 1 "):
            enc.encode_batch(["fine", "bad \udfff"])


def test_forcing_the_slow_path(tok: Tokenizer, fast: TextEncoder,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert not TextEncoder(tok, builtin_tokenizer_path().read_text(), fast=False).prepare()
    calls = []
    monkeypatch.setattr(fast, "_slow", lambda texts: calls.append(texts) or reference(tok, texts))
    fast.encode_batch(["some text"])
    assert calls == []
    monkeypatch.setenv(SLOW_ENV, "1")
    fast.encode_batch(["some text"])
    assert calls == [["some text"]]


def _trained(model: models.Model, trainer: object) -> Tokenizer:
    t = Tokenizer(model)
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(corpus() * 3, trainer=trainer)  # type: ignore[arg-type]
    return t


@pytest.mark.parametrize("kind", ["wordpiece", "unigram"])
def test_other_models_fall_back_to_tokenizers(kind: str) -> None:
    t = (_trained(models.WordPiece(unk_token="[UNK]"), WordPieceTrainer(
            vocab_size=300, special_tokens=["[UNK]"])) if kind == "wordpiece"
         else _trained(models.Unigram(), UnigramTrainer(vocab_size=2000, unk_token="<unk>",
                                                        special_tokens=["<unk>"])))
    enc = TextEncoder(t, t.to_str())
    assert not enc.prepare() and "not BPE" in enc.reason
    texts = corpus()
    assert lists(enc, texts) == reference(t, texts)


def test_bpe_variants_the_ranks_cannot_reproduce_fall_back(tok: Tokenizer) -> None:
    cfg = json.loads(builtin_tokenizer_path().read_text(encoding="utf-8"))
    stripped = json.loads(json.dumps(cfg))
    stripped["added_tokens"][1]["lstrip"] = True
    normalised = {**cfg, "normalizer": {"type": "NFKC"}}
    swapped = json.loads(json.dumps(cfg))
    swapped["model"]["merges"][:2] = swapped["model"]["merges"][1::-1]
    for variant, why in ((stripped, "flags"), (normalised, "normaliser"), (swapped, "order")):
        raw = json.dumps(variant)
        t = Tokenizer.from_str(raw)
        enc = TextEncoder(t, raw)
        assert not enc.prepare() and why in enc.reason
        texts = corpus()[:20] + ["a <|im_start|> b", "x  <|im_start|>y"]
        assert lists(enc, texts) == reference(t, texts)


def test_detect_results_are_the_same_on_both_paths(spec_factory: SpecFactory,
                                                   human_texts: list[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    det = Detector(spec_factory())
    assert det.encoder is encoder_for(spec_factory().tokenizer)
    assert det.encoder.prepare()
    long_text = "\n".join(human_texts[:200])  # past CHUNK_CHARS: encoded in pieces
    texts = [*human_texts[:20], long_text, *corpus()[:12]]
    prompts = [None, "Summarise the documentation.", "<|im_start|>user\nhi<|im_end|>"]
    fast = [det.detect(t, prompt=p).to_dict() for t in texts for p in prompts if t.strip()]
    monkeypatch.setenv(SLOW_ENV, "1")
    slow = [det.detect(t, prompt=p).to_dict() for t in texts for p in prompts if t.strip()]
    assert fast == slow


def test_scan_output_is_the_same_on_both_paths(mixed: tuple[Path, list[str], np.ndarray],
                                               key_file: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = mixed
    spec_tok = load(BUILTIN_SMOLLM2)[1]
    assert encoder_for(spec_tok).prepare()
    outs = []
    for slow in ("0", "1"):
        monkeypatch.setenv(SLOW_ENV, slow)
        out = tmp_path / f"rows-{slow}.jsonl"
        res = run_cli("scan", path, "--key", key_file, "--field", "output.text", "--json",
                      "--out", out)
        outs.append((json.loads(res.stdout), out.read_bytes()))
    assert outs[0] == outs[1]
    assert len(read_rows(tmp_path / "rows-0.jsonl")) == len(mixed[1])


def test_known_fingerprints_are_the_canonical_ones() -> None:
    """The shipped tokenizers' fingerprints, looked up by their bytes' digest, are what the
    canonical form gives; any other text is fingerprinted from its canonical form."""
    import hashlib

    from distillmark.watermark import tokenizer as tk

    raws = [tk.builtin_tokenizer_path(name).read_text(encoding="utf-8")
            for name in tk._BUILTIN_FILES]
    digests = {hashlib.sha256(r.encode("utf-8")).hexdigest() for r in raws}
    assert set(tk._KNOWN_FINGERPRINTS) == digests
    for raw in raws:
        assert tk.fingerprint(raw) == tk.canonical_fingerprint(raw)
        assert tk._KNOWN_FINGERPRINTS[hashlib.sha256(raw.encode("utf-8")).hexdigest()] == (
            tk.canonical_fingerprint(raw))
    spaced = raws[0].replace("{", "{ ", 1)
    assert spaced != raws[0] and tk.fingerprint(spaced) == tk.canonical_fingerprint(raws[0])

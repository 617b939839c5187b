"""The bigram student trainer: it learns a corpus's bigrams, saves an ordinary Hugging Face
model over the full vocabulary with the teacher's tokenizer, and refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerFast

from distillmark.verify.lab import train_bigram_student
from distillmark.watermark import InputError, ParameterError, hf
from distillmark.watermark.tokenizer import builtin_tokenizer_path

VOCAB = 49152
IM_END = "<|im_end|>"


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_file=str(builtin_tokenizer_path()), eos_token=IM_END,
                            pad_token=IM_END).save_pretrained(d)
    return d


def cycle_corpus(n: int = 12) -> list[tuple[list[int], list[int]]]:
    """Answers walking a fixed cycle over 40 ids: each token has one successor."""
    ring = list(range(1000, 1040))
    out = []
    for i in range(n):
        start = (3 * i) % len(ring)
        ans = [ring[(start + k) % len(ring)] for k in range(30)]
        out.append(([5, 6, ring[(start - 1) % len(ring)]], ans))
    return out


def test_learns_the_bigrams_and_saves_a_full_vocabulary_model(tmp_path: Path,
                                                              tok_dir: Path) -> None:
    pairs = cycle_corpus()
    info = train_bigram_student(pairs, tmp_path / "student", d_model=32, steps=60, lr=0.05,
                                tokenizer_dir=tok_dir)
    out = tmp_path / "student"
    assert json.loads((out / "distill_train.json").read_text()) == info
    assert info["n_seqs"] == 12 and info["train_tokens"] == 12 * 31
    # every answer token plus the end token; the cycle's 40 ids, 6, 5 and the specials
    assert info["vocab_used"] == 40 + 2 + 3
    assert info["final_loss"] < 1.0 and info["bigram_mle_loss"] < info["final_loss"]
    assert (out / "tokenizer.json").is_file() and not (tmp_path / "student.tmp").exists()
    lm = hf.load_model(out)
    assert lm.model.get_output_embeddings().weight.shape[0] == VOCAB
    ids = torch.tensor([[1000, 1001, 1039]])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0]
    # the successor of each token on the cycle is its most likely next token
    assert logits.argmax(-1).tolist() == [1001, 1002, 1000]
    # ids never seen share the "other" row: equal logits, below every trained target
    assert logits[0, 20000] == logits[0, 30000]
    assert logits[0, 20000] < logits[0, 1001]


def test_deterministic_given_the_seed(tmp_path: Path, tok_dir: Path) -> None:
    pairs = cycle_corpus(4)
    a = train_bigram_student(pairs, tmp_path / "a", d_model=8, steps=3, tokenizer_dir=tok_dir)
    b = train_bigram_student(pairs, tmp_path / "b", d_model=8, steps=3, tokenizer_dir=tok_dir)
    c = train_bigram_student(pairs, tmp_path / "c", d_model=8, steps=3, seed=1,
                             tokenizer_dir=tok_dir)
    assert a["final_loss"] == b["final_loss"] != c["final_loss"]


def test_replaces_an_existing_student(tmp_path: Path, tok_dir: Path) -> None:
    out = tmp_path / "s"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    train_bigram_student(cycle_corpus(2), out, d_model=8, steps=1, tokenizer_dir=tok_dir)
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()


def test_errors(tmp_path: Path, tok_dir: Path) -> None:
    with pytest.raises(InputError, match="no training pairs"):
        train_bigram_student([], tmp_path / "x", tokenizer_dir=tok_dir)
    with pytest.raises(InputError, match=r"pair 0: prompt_ids is empty"):
        train_bigram_student([([], [1, 2])], tmp_path / "x", tokenizer_dir=tok_dir)
    with pytest.raises(InputError, match=r"pair 1: token ids must be in \[0, 49152\)"):
        train_bigram_student([([1], [2]), ([1], [VOCAB])], tmp_path / "x",
                             tokenizer_dir=tok_dir)
    with pytest.raises(ParameterError, match="`steps` must be >= 1, got 0"):
        train_bigram_student([([1], [2])], tmp_path / "x", steps=0, tokenizer_dir=tok_dir)
    with pytest.raises(InputError, match="has no tokenizer.json"):
        train_bigram_student([([1], [2])], tmp_path / "x", tokenizer_dir=tmp_path)
    assert not (tmp_path / "x").exists()
    assert np.isfinite(train_bigram_student([([1], [2])], tmp_path / "y", d_model=4, steps=1,
                                            tokenizer_dir=tok_dir)["final_loss"])


# --------------------------------------------------------------------------------------------
# The whole story on a tiny teacher


def test_story_finds_the_marked_student_and_clears_the_control(tmp_path: Path,
                                                               tok_dir: Path) -> None:
    """A random-init teacher answers 8 prompts with and without the watermark; the student
    trained on the watermarked answers is found by the probe and the audit, the control by
    neither (served on loopback, as the demo does)."""
    from serving_helpers import tiny_generator

    from distillmark.verify.lab import distillation_story
    from distillmark.verify.prompts import builtin_prompts
    from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec

    spec = new_spec("greenlist", {}, load_tokenizer(BUILTIN_SMOLLM2)[1],
                    secret=bytes(range(90, 122)))
    prompts = builtin_prompts(12)
    seen: list[str] = []
    story = distillation_story(tiny_generator(seed=7), spec, prompts[:8], prompts[8:],
                               tmp_path, tokenizer_dir=tok_dir, max_new_tokens=48,
                               samples=3, probe_max_tokens=32, audit_sequences=8,
                               audit_len=48, d_model=32, progress=seen.append)
    marked, control = story.students
    assert marked.marked and not control.marked and marked.n_train == control.n_train == 8
    assert marked.probe.queries.n_queries == 4 and marked.probe.answers.n_answers == 12
    assert marked.probe.is_watermarked(1e-6) and marked.audit.is_watermarked(1e-6), (
        marked.probe.to_dict(), marked.audit.to_dict())
    assert not control.found(1e-3), (control.probe.to_dict(), control.audit.to_dict())
    assert story.is_right(1e-3)
    d = story.to_dict(1e-3)
    assert d["story_right"] and [s["name"] for s in d["students"]] == ["student-marked",
                                                                      "student-control"]
    assert (tmp_path / "student-marked" / "config.json").is_file()
    assert any("probing" in m for m in seen)
    with pytest.raises(InputError, match="held-out prompts only"):
        distillation_story(tiny_generator(), spec, prompts[:2], prompts[1:3], tmp_path)

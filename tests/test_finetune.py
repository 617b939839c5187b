"""The transformer student trainer: a pretrained causal LM fine-tuned (full or LoRA) on a
teacher's answers with the loss on the answers only, saved as an ordinary Hugging Face model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from serving_helpers import tiny_generator
from test_students import cycle_corpus

from distillmark.verify.lab import train_transformer_student
from distillmark.watermark import InputError, ParameterError, hf


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init Llama over the SmolLM2 vocabulary, saved with the real tokenizer."""
    d = tmp_path_factory.mktemp("base")
    lm = tiny_generator(seed=3)
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def _next_logits(model_dir: Path, ids: list[int]) -> torch.Tensor:
    lm = hf.load_model(model_dir)
    with torch.no_grad():
        return lm.model(input_ids=torch.tensor([ids])).logits[0]


def test_full_fine_tune_learns_the_answers_not_the_prompts(tmp_path: Path, base: Path) -> None:
    pairs = cycle_corpus(12)
    before = _next_logits(base, [1000, 1001, 1002])
    info = train_transformer_student(pairs, tmp_path / "s", base=base, epochs=30, lr=3e-3,
                                     batch_size=4, seed=0)
    out = tmp_path / "s"
    assert json.loads((out / "distill_train.json").read_text()) == info
    assert info["n_seqs"] == 12 and info["train_tokens"] == 12 * 31  # answers + end token
    assert info["steps"] == 3 * 30 and info["lora_rank"] is None
    assert (out / "tokenizer.json").is_file() and not (tmp_path / "s.tmp").exists()
    after = _next_logits(out, [1000, 1001, 1002])
    # the cycle's successors became the most likely next tokens; they were not before
    assert after.argmax(-1).tolist() == [1001, 1002, 1003]
    assert before.argmax(-1).tolist() != [1001, 1002, 1003]
    # the prompt's first tokens carried no loss: 5 -> 6 was never a target
    assert _next_logits(out, [5])[0].argmax().item() != 6


def test_lora_is_merged_into_an_ordinary_model(tmp_path: Path, base: Path) -> None:
    info = train_transformer_student(cycle_corpus(8), tmp_path / "l", base=base, lora_rank=4,
                                     epochs=2, batch_size=4)
    assert info["lora_rank"] == 4 and info["lr"] == 1e-3
    names = set(json.loads((tmp_path / "l" / "config.json").read_text()))
    assert "architectures" in names and not (tmp_path / "l" / "adapter_config.json").exists()
    trained = _next_logits(tmp_path / "l", [1000, 1001])
    assert not torch.allclose(trained, _next_logits(base, [1000, 1001]))


def test_deterministic_given_the_seed(tmp_path: Path, base: Path) -> None:
    pairs = cycle_corpus(4)
    runs = [train_transformer_student(pairs, tmp_path / n, base=base, epochs=1, batch_size=2,
                                      seed=s)["final_loss"] for n, s in (("a", 0), ("b", 0))]
    assert runs[0] == runs[1]


def test_errors(tmp_path: Path, base: Path) -> None:
    with pytest.raises(InputError, match="no training pairs"):
        train_transformer_student([], tmp_path / "x", base=base)
    with pytest.raises(InputError, match=r"pair 1: token ids must be in \[0, 49152\)"):
        train_transformer_student([([1], [2]), ([1], [49152])], tmp_path / "x", base=base)
    with pytest.raises(ParameterError, match="`lora_rank` must be >= 1"):
        train_transformer_student([([1], [2])], tmp_path / "x", base=base, lora_rank=0)
    with pytest.raises(ParameterError, match="`epochs` must be > 0"):
        train_transformer_student([([1], [2])], tmp_path / "x", base=base, epochs=0)
    with pytest.raises(InputError, match="not a Hugging Face model folder"):
        train_transformer_student([([1], [2])], tmp_path / "x", base=tmp_path)
    with pytest.raises(InputError, match="no answer token within the first 3 tokens"):
        train_transformer_student([([1, 2, 3], [4])], tmp_path / "x", base=base, max_len=3)
    assert not (tmp_path / "x").exists()

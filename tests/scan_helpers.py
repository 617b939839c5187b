"""Shared pieces of the dataset-scan tests (test_scan*.py): synthetic watermarked answers and
human paragraphs, JSON Lines files, a watermarked dataset, the ``scan`` command and a key file.

tests/conftest.py registers it as a plugin (``pytest_plugins``), which makes its fixtures
available to those modules; they import its functions."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.watermark import GreenList, WatermarkSpec, save_spec, scheme_for
from distillmark.watermark.tokenizer import builtin_tokenizer_path

SpecFactory = Callable[..., WatermarkSpec]
RUNNER = CliRunner()


# --------------------------------------------------------------------------------------------
# Synthetic data: watermarked answers decoded with the real tokenizer, human paragraphs


def _word_ids(tok: Tokenizer, n: int = 2000) -> np.ndarray:
    vocab = tok.get_vocab()
    words = sorted(i for t, i in vocab.items() if re.fullmatch("\u0120[a-z]{3,}", t))
    return np.array(words[:n])


def watermarked_texts(scheme: GreenList, n: int, n_tokens: int, seed: int) -> list[str]:
    """``n`` texts sampled over ~2000 common words with the scheme's green bias applied (a
    strength drawn per text: delta x U(0.5, 1.5)), decoded with the real tokenizer."""
    tok = Tokenizer.from_file(str(builtin_tokenizer_path()))
    words = _word_ids(tok)
    rng = np.random.default_rng(seed)
    strength = rng.uniform(0.5, 1.5, size=n)
    base = np.full((n, scheme.vocab_size), -1e4, dtype=np.float32)
    base[:, words] = 0.0
    ids = rng.choice(words, size=(n, 1))
    for _ in range(n_tokens - 1):
        green = (scheme.bias(base, ids[:, -1:])[:, words] > 0).astype(np.float64)
        logits = green * strength[:, None] * scheme.params.delta
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        c = np.cumsum(p, axis=1)
        pick = (c < rng.random(n)[:, None] * c[:, -1:]).sum(axis=1)
        ids = np.concatenate([ids, words[pick][:, None]], axis=1)
    return [tok.decode(row.tolist()) for row in ids]


@pytest.fixture(scope="module")
def paragraphs(human_texts: list[str]) -> list[str]:
    """Paragraphs (>= 200 characters) of the numpy/scipy docstrings: human records."""
    out = [p.strip() for t in human_texts for p in t.split("\n\n") if len(p.strip()) >= 200]
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]  # type: ignore[func-returns-value]


@pytest.fixture(scope="module")
def spec(spec_factory: SpecFactory) -> WatermarkSpec:
    return spec_factory()


@pytest.fixture(scope="module")
def marked(spec: WatermarkSpec) -> list[str]:
    return watermarked_texts(scheme_for(spec), 40, 150, seed=1)


def write_jsonl(path: Path, records: list[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return path


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, paragraphs: list[str],
          marked: list[str]) -> tuple[Path, list[str], np.ndarray]:
    """A JSONL file of ~1000 human paragraphs with 1% watermarked answers spread among them:
    (path, texts, is_watermarked)."""
    human = paragraphs[:990]
    rng = np.random.default_rng(2)
    texts = list(human)
    is_wm = np.zeros(len(texts), dtype=bool)
    for i, t in zip(sorted(rng.choice(len(texts), size=10, replace=False)), marked[:10]):
        texts.insert(int(i), t)
        is_wm = np.insert(is_wm, int(i), True)
    path = write_jsonl(tmp_path_factory.mktemp("mixed") / "data.jsonl",
                       [{"id": i, "output": {"text": t}} for i, t in enumerate(texts)])
    return path, texts, is_wm


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------
# The command


def run_cli(*args: Any) -> Any:
    result = RUNNER.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory, spec: WatermarkSpec) -> Path:
    return save_spec(spec, tmp_path_factory.mktemp("key") / "key.json")

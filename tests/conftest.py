"""Shared fixtures: a fixed key, the shipped tokenizer, spec construction and real human text."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from distillmark.watermark import (
    BUILTIN_SMOLLM2,
    TokenizerInfo,
    WatermarkSpec,
    load_tokenizer,
    new_spec,
)

#: Fixtures of the dataset-scan tests (test_scan*.py), with the helpers they import.
pytest_plugins = ["scan_helpers"]

#: The fixed key of every known-answer vector in this suite.
SECRET = bytes(range(32))

#: Modules whose public callables' docstrings serve as human-written English text.
_DOC_MODULES = (
    "numpy", "numpy.linalg", "numpy.fft", "scipy.stats", "scipy.special", "scipy.optimize",
    "scipy.linalg", "scipy.integrate", "scipy.interpolate",
)
_MIN_DOC_CHARS = 400


@pytest.fixture(scope="session")
def secret() -> bytes:
    """The fixed 32-byte secret ``bytes(range(32))``."""
    return SECRET


@pytest.fixture(scope="session")
def tokenizer_info() -> TokenizerInfo:
    """What a spec records about the shipped SmolLM2 tokenizer."""
    return load_tokenizer(BUILTIN_SMOLLM2)[1]


@pytest.fixture(scope="session")
def spec_factory(tokenizer_info: TokenizerInfo) -> Callable[..., WatermarkSpec]:
    """``spec_factory(secret=SECRET, **params)``: a greenlist spec on the builtin tokenizer."""

    def make(secret: bytes = SECRET, **params: Any) -> WatermarkSpec:
        return new_spec("greenlist", params, tokenizer_info, secret=secret)

    return make


def _strip_doctest(doc: str) -> str:
    # Doctest inputs go, and outputs marked "may vary": a few docstrings are generated at import
    # time with random examples, and the texts must be the same in every process.
    lines = [ln for ln in doc.splitlines() if not ln.lstrip().startswith((">>>", "..."))
             and "may vary" not in ln]
    return "\n".join(lines).strip()


@pytest.fixture(scope="session")
def human_texts() -> list[str]:
    """Docstrings (>= 400 characters, doctest input lines removed) of the public callables of
    numpy and scipy: real English written by people, in a deterministic order, without
    duplicates."""
    seen: set[str] = set()
    texts: list[str] = []
    for modname in _DOC_MODULES:
        mod = importlib.import_module(modname)
        for name in sorted(dir(mod)):
            if name.startswith("_"):
                continue
            obj = getattr(mod, name, None)
            if not callable(obj):
                continue
            doc = inspect.getdoc(obj)
            if not doc:
                continue
            text = _strip_doctest(doc)
            if len(text) >= _MIN_DOC_CHARS and text not in seen:
                seen.add(text)
                texts.append(text)
    assert len(texts) >= 200, f"only {len(texts)} docstrings collected"
    return texts

"""Generation engines behind one interface: transformers (extra ``hf``) and llama.cpp
(extra ``llama``). Both apply the same scheme code; text from either is detected identically.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import MissingDependencyError, ParameterError

if TYPE_CHECKING:
    from .greenlist import GreenList
    from .keys import WatermarkSpec

__all__ = ["ENGINES", "Completion", "Generator", "load_generator", "resolve_engine"]

ENGINES = ("transformers", "llama.cpp")


@dataclass(frozen=True)
class Completion:
    """One generated answer: its text, and the token ids of prompt and completion."""

    prompt: str
    text: str
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]


class Generator(Protocol):
    """What every engine offers."""

    engine: str
    source: str

    def check_tokenizer(self, spec: WatermarkSpec) -> None:
        """Raise TokenizerMismatchError unless the model's tokenizer is the spec's."""

    def generate(self, prompts: Sequence[str], *, scheme: GreenList | None,
                 max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 8, seed: int | None = None) -> list[Completion]:
        """Answer ``prompts`` (chat template applied), watermarked with ``scheme``."""


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_engine(engine: str, model: str | Path | None) -> str:
    """``auto``: llama.cpp for a GGUF model (the default one included) where it is installed,
    transformers otherwise."""
    if engine not in ("auto",) + ENGINES:
        raise ParameterError(f"`engine` must be auto, {', '.join(ENGINES)}; got {engine!r}")
    if engine != "auto":
        return engine
    is_gguf = model is None or str(model).endswith(".gguf")
    return "llama.cpp" if is_gguf and _has("llama_cpp") else "transformers"


def load_generator(engine: str, model: str | Path | None) -> Generator:
    """Load ``model`` (None: the embedded SmolLM2) on ``engine`` (or ``auto``)."""
    engine = resolve_engine(engine, model)
    if engine == "llama.cpp":
        if not _has("llama_cpp"):
            raise MissingDependencyError("engine llama.cpp needs the 'llama' extra: "
                                         "pip install 'distillmark[llama]'")
        from . import llamacpp

        return llamacpp.load_model(model)
    from . import hf

    return hf.load_model(model)

"""Generation engines behind one interface: transformers (extra ``hf``) and llama.cpp
(extra ``llama``). Both apply the same scheme code; text from either is detected identically.

The interface and the types the engines share are in :mod:`.engine_types`; this module only
chooses an engine and loads a model on it (the adapter is imported then, not before).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import MissingDependencyError, ParameterError

if TYPE_CHECKING:
    from .engine_types import Generator

__all__ = ["ENGINES", "load_generator", "resolve_engine"]

ENGINES = ("transformers", "llama.cpp")


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

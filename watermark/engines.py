"""Generation engines behind one interface: transformers (extra ``hf``) and llama.cpp
(extra ``llama``). Both apply the same scheme code; text from either is detected identically.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import MissingDependencyError, ParameterError

if TYPE_CHECKING:
    from .keys import WatermarkSpec
    from .registry import Scheme

__all__ = ["ENGINES", "Completion", "Generator", "Prompt", "load_generator", "messages_of",
           "prompt_label", "resolve_engine"]

ENGINES = ("transformers", "llama.cpp")

#: A prompt: one user message's text, or a whole conversation as chat messages
#: (``[{"role": "system", "content": ...}, {"role": "user", "content": ...}, ...]``).
Prompt = str | Sequence[Mapping[str, str]]

#: ``on_text(index, text_so_far)``: called from the generating thread after each new token of
#: the answer to ``prompts[index]`` (streaming).
TextCallback = Callable[[int, str], None]


def messages_of(prompt: Prompt) -> list[dict[str, str]]:
    """The chat messages of a prompt (a plain string is one user message)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in prompt]


def prompt_label(prompt: Prompt) -> str:
    """What :attr:`Completion.prompt` records: the string itself, or a conversation's last
    user message."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return str(users[-1]) if users else (str(prompt[-1]["content"]) if prompt else "")


def plain_prompt_text(prompt: Prompt) -> str:
    """A prompt as text for a model without a chat template: the messages' contents in order."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(str(m["content"]) for m in prompt)


@dataclass(frozen=True)
class Completion:
    """One generated answer: its text, and the token ids of prompt and completion.

    ``prompt`` is the prompt string (for a conversation: its last user message);
    ``prompt_ids`` the tokens the model was given (chat template included).
    """

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

    def generate(self, prompts: Sequence[Prompt], *, scheme: Scheme | None,
                 max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 8, seed: int | None = None,
                 on_text: TextCallback | None = None) -> list[Completion]:
        """Answer ``prompts`` (chat template applied), watermarked with ``scheme``;
        ``on_text`` (optional) sees each answer grow token by token."""


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

"""What every generation engine shares: prompts, completions, the Generator interface.

The engine adapters (:mod:`.hf` for transformers, :mod:`.llamacpp` for llama.cpp) build on
these; :mod:`.engines` picks an adapter and loads a model. Nothing here imports an engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .errors import InputError, ParameterError

if TYPE_CHECKING:
    from .keys import WatermarkSpec

__all__ = ["Completion", "Generator", "Marker", "Prompt", "TextCallback", "WatermarkHook",
           "check_generate_args", "empty_prompt", "messages_of", "plain_prompt_text",
           "prompt_label", "prompt_text"]

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


def prompt_text(prompt: Prompt, template: Callable[[list[dict[str, str]]], str] | None) -> str:
    """The text a model is given for ``prompt``: its chat messages through ``template`` (the
    model's chat template, generation prompt included), or, for a model without one, the
    messages' contents in order (:func:`plain_prompt_text`)."""
    if template is None:
        return plain_prompt_text(prompt)
    return template(messages_of(prompt))


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


class Marker(Protocol):
    """What an engine needs of what it watermarks with: a scheme (every scheme of
    :mod:`.registry`), or a scheme with the account layer on top
    (:class:`~.accounts.AccountMarked`)."""

    key_id: str
    vocab_size: int
    samples: bool

    @property
    def context_width(self) -> int: ...

    def in_place_bias(self) -> Any:
        """A green-list bias the engine may add in place, or None (then :meth:`process`)."""

    def process(self, logits: np.ndarray, contexts: np.ndarray, *, prompt_width: int = ...,
                temperature: float = ..., top_p: float = ...) -> np.ndarray:
        """Watermarked logits: ``logits (B, V)``, ``contexts (B, c)`` right-aligned."""


class Generator(Protocol):
    """What every engine offers."""

    engine: str
    source: str

    def check_tokenizer(self, spec: WatermarkSpec) -> None:
        """Raise TokenizerMismatchError unless the model's tokenizer is the spec's."""

    def generate(self, prompts: Sequence[Prompt], *, scheme: Marker | None,
                 max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 8, seed: int | None = None,
                 on_text: TextCallback | None = None) -> list[Completion]:
        """Answer ``prompts`` (chat template applied), watermarked with ``scheme``;
        ``on_text`` (optional) sees each answer grow token by token."""


def check_generate_args(prompts: Sequence[Prompt], *, max_new_tokens: int, temperature: float,
                        top_p: float) -> None:
    """The checks every engine's ``generate`` makes of its arguments: at least one prompt,
    ``max_new_tokens >= 1``, ``temperature >= 0`` and ``0 < top_p <= 1``."""
    if not prompts:
        raise InputError("no prompts given")
    if max_new_tokens < 1:
        raise ParameterError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ParameterError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, "
                             f"{top_p}")


def empty_prompt(index: int) -> InputError:
    """The error of prompt ``index`` once it is tokenised to nothing (an empty string, or
    messages without text given to a model without a chat template): a model answers from at
    least one token, and engines fail on none in ways of their own."""
    return InputError(f"prompt {index} is empty: the model needs at least one token to "
                      "answer from")


class WatermarkHook:
    """What an engine's logits processor keeps of the scheme it applies: the scheme, the
    sampling settings a sampling scheme applies itself, the prompt's width (set by the engine's
    processor) and the green-list bias it may add in place (``scheme.in_place_bias()``; None:
    the processor calls ``scheme.process``).

    Args:
        scheme: the scheme (refused, in one line, if it is not one).
        temperature, top_p: passed to ``process`` of a sampling scheme.
    """

    def __init__(self, scheme: Marker, *, temperature: float = 1.0, top_p: float = 1.0) -> None:
        for attr in ("process", "vocab_size", "context_width", "in_place_bias"):
            if not hasattr(scheme, attr):
                raise ParameterError(f"`scheme` must be a distillmark scheme, got "
                                     f"{type(scheme).__name__}")
        self.scheme = scheme
        self.temperature = temperature
        self.top_p = top_p
        self._prompt_width: int | None = None
        self._bias = scheme.in_place_bias()

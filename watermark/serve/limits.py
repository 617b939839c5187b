"""What an engine can take: its context length, and how many tokens a prompt takes once the
engine's chat template is applied, so that a request too long for the model is refused with a
400 before it is queued. Needs the core alone (and the engine's own stack, already loaded).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..engine_types import Generator, Prompt, messages_of, plain_prompt_text

__all__ = ["context_limit", "prompt_counter"]


def context_limit(generator: Generator) -> int | None:
    """Tokens of context the model takes (prompt + answer), where the engine says."""
    llm = getattr(generator, "llm", None)
    if llm is not None and hasattr(llm, "n_ctx"):
        return int(llm.n_ctx())
    model = getattr(generator, "model", None)
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) else None


def prompt_counter(generator: Generator) -> Callable[[Prompt, int | None], int] | None:
    """A function ``count(prompt, at_most)`` of a prompt's tokens once the engine's chat
    template is applied (a lower bound above ``at_most`` once it passes it), or None where the
    engine cannot say.

    transformers: a separate copy of the tokenizer's backend, since the generating thread
    changes the padding state of the model's own tokenizer (a fast tokenizer used from two
    threads while one reconfigures it fails with "Already borrowed"). llama.cpp: its
    tokenizer only reads the vocabulary.
    """
    tok = getattr(generator, "tokenizer", None)
    if tok is not None and hasattr(tok, "backend_tokenizer"):  # transformers
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        backend.no_padding()
        backend.no_truncation()
        template = bool(getattr(tok, "chat_template", None))

        def count(prompt: Prompt, at_most: int | None = None) -> int:
            text = (tok.apply_chat_template(messages_of(prompt), tokenize=False,
                                            add_generation_prompt=True)
                    if template else plain_prompt_text(prompt))
            return len(backend.encode(text, add_special_tokens=False).ids)

        return count
    render = getattr(generator, "_prompt_text", None)
    tokenize = getattr(generator, "tokenize", None)
    if render is not None and tokenize is not None:  # llama.cpp
        def count_split(prompt: Prompt, at_most: int | None = None) -> int:
            return split_count(render(prompt), tokenize, at_most)

        return count_split
    return None


#: Control tokens in the ``<|name|>`` form chat templates write (ChatML, Llama 3, ...).
_CONTROL = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>")


def split_count(text: str, tokenize: Callable[..., list[int]], at_most: int | None = None
                ) -> int:
    """Tokens of ``text`` tokenised with control tokens, counted piece by piece between them.

    llama.cpp cuts a text at its control tokens before it tokenises the pieces, in time that
    grows with the square of their number (20,000 messages: 16 s); cutting here first is
    exact and linear. A ``<|name|>`` that is not one token of the model is left inside its
    piece, as the whole-text tokenisation would leave it. With ``at_most``, counting stops
    once the count passes it (the count returned is then a lower bound above ``at_most``):
    a prompt far too long costs no more than one that just fits.
    """
    total, start, single = 0, 0, {}
    for m in _CONTROL.finditer(text):
        mark = m.group()
        if mark not in single:
            single[mark] = len(tokenize(mark, special=True)) == 1
        if single[mark]:
            if m.start() > start:
                total += len(tokenize(text[start:m.start()], special=True))
            total, start = total + 1, m.end()
            if at_most is not None and total > at_most:
                return total
    if start < len(text):
        total += len(tokenize(text[start:], special=True))
    return total

"""What an engine can take: its context length, and how many tokens a prompt takes once the
engine's chat template is applied, so that a request too long for the model is refused with a
400 before it is queued. Needs the core alone (and the engine's own stack, already loaded).
"""

from __future__ import annotations

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


def prompt_counter(generator: Generator) -> Callable[[Prompt], int] | None:
    """A function counting a prompt's tokens once the engine's chat template is applied, or
    None where the engine cannot say.

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

        def count(prompt: Prompt) -> int:
            text = (tok.apply_chat_template(messages_of(prompt), tokenize=False,
                                            add_generation_prompt=True)
                    if template else plain_prompt_text(prompt))
            return len(backend.encode(text, add_special_tokens=False).ids)

        return count
    render = getattr(generator, "_prompt_text", None)
    tokenize = getattr(generator, "tokenize", None)
    if render is not None and tokenize is not None:  # llama.cpp
        return lambda prompt: len(tokenize(render(prompt), special=True))
    return None

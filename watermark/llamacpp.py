"""llama.cpp adapter (extra ``llama``): the watermark as a llama-cpp-python logits processor.

llama-cpp-python calls ``processor(input_ids, scores)`` once per generated token with
``input_ids: (n,) intc`` (prompt and generated tokens so far) and ``scores: (n_vocab,) float32``;
:class:`LlamaCppWatermark` returns them watermarked by the same numpy code that defines the
watermark for every engine: ``scheme.process(scores, input_ids, ...)``, or for the green list
(the scheme ``in_place_bias`` returns) its bias from the last ``h`` tokens alone, added in place
(lefthash, ``bias_``) or to a copy (selfhash, ``bias``), with the same result. A sampling
scheme's output is a distribution that llama.cpp then samples as it is. Works for any
``Llama.create_completion(..., logits_processor=LogitsProcessorList([proc]))`` call as well as
for :func:`LlamaCppModel.generate` here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .engine_types import (
    Completion,
    Prompt,
    TextCallback,
    WatermarkHook,
    check_generate_args,
    empty_prompt,
    prompt_label,
    prompt_text,
)
from .errors import MissingDependencyError, ModelNotFoundError, TokenizerMismatchError

with MissingDependencyError.for_extra("llama"):
    import llama_cpp

if TYPE_CHECKING:
    from .engine_types import Marker
    from .keys import WatermarkSpec

__all__ = ["LlamaCppModel", "LlamaCppWatermark", "load_model"]

# Text whose token ids the model's tokenizer and the spec's must agree on (several scripts,
# code, numbers, whitespace runs), a cheap proxy for comparing vocabularies.
_PROBE = ("The quick brown fox jumps over 13 lazy dogs; naïve café, Straße, 東京, "
          "привет мир. def f(x):\n    return x ** 2  # ok\n\n\tTabs, URLs http://a.b/c?d=1.")


class LlamaCppWatermark(WatermarkHook):
    """``logits_processor`` for llama-cpp-python that applies the scheme's watermark."""

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """``input_ids: (n,) intc``, ``scores: (n_vocab,) float32`` -> ``(n_vocab,) float32``."""
        s, g = self.scheme, self._bias
        if g is not None and g.params.seeding == "lefthash":
            h = g.context_width
            if len(input_ids) < h:
                return scores
            out = scores if scores.flags.writeable else scores.copy()
            g.bias_(out[None, :], [input_ids[len(input_ids) - h:].tolist() if h else []])
            return out
        if g is not None:  # selfhash: only the last h tokens matter, skip the full copy
            h = g.context_width
            ctx = np.asarray(input_ids[len(input_ids) - h:] if h else input_ids[:0],
                             dtype=np.int64)[None, :]
            return g.bias(scores[None, :], ctx)[0].astype(np.float32, copy=False)
        if self._prompt_width is None or len(input_ids) < self._prompt_width:
            self._prompt_width = len(input_ids)  # a new prompt: llama.cpp restarted
        V = s.vocab_size
        out = np.array(scores, dtype=np.float32, copy=True)
        out[:V] = s.process(scores[None, :V], np.asarray(input_ids, dtype=np.int64)[None, :],
                            prompt_width=self._prompt_width, temperature=self.temperature,
                            top_p=self.top_p)[0]
        if out.size > V and s.samples:
            out[V:] = -np.inf
        return out


@dataclass
class LlamaCppModel:
    """A GGUF model loaded in llama.cpp."""

    llm: Any
    source: str
    chat_template: str | None
    engine: str = field(default="llama.cpp")
    #: llama.cpp's top-k (its default, 40); 0 samples the whole vocabulary, which makes
    #: llama.cpp sort all logits at every step.
    top_k: int = 40

    @property
    def _eog(self) -> frozenset[int]:
        """End-of-generation tokens: EOS and, for chat models, the end-of-turn token."""
        ids = {int(self.llm.token_eos())}
        for text in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            toks = self.tokenize(text, special=True)
            if len(toks) == 1:
                ids.add(toks[0])
        return frozenset(ids)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def check_tokenizer(self, spec: WatermarkSpec) -> None:
        from .tokenizer import tokenizer_for

        tok = tokenizer_for(spec.tokenizer)
        if (self.llm.n_vocab() != spec.vocab_size
                or self.tokenize(_PROBE) != tok.encode(_PROBE, add_special_tokens=False).ids):
            raise TokenizerMismatchError(
                f"model {self.source} tokenises differently from the tokenizer key "
                f"{spec.key_id} was made for; make a key with this model's tokenizer")

    def _prompt_text(self, prompt: Prompt) -> str:
        if not self.chat_template:
            return prompt_text(prompt, None)
        import jinja2

        env = jinja2.Environment(loader=jinja2.BaseLoader(), autoescape=False)
        template = env.from_string(self.chat_template)
        return prompt_text(prompt, lambda messages: template.render(
            messages=messages, add_generation_prompt=True))

    def generate(self, prompts: Sequence[Prompt], *, scheme: Marker | None,
                 max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 1, seed: int | None = None,
                 on_text: TextCallback | None = None) -> list[Completion]:
        """Answer ``prompts`` one at a time (llama.cpp has no batched sampling here).

        ``seed``: answer ``i`` is sampled with seed ``seed + i``; None draws a fresh seed from
        the OS for each answer, so repeated prompts get independent answers.

        A prompt is a string (one user message) or a list of chat messages. ``batch_size`` is
        accepted for interface parity and ignored. Temperature 0 is greedy. ``on_text(i,
        text)`` is called after each new token of answer ``i``.
        """
        check_generate_args(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_p=top_p)
        sampling = scheme is not None and scheme.samples
        eog = self._eog
        out: list[Completion] = []
        for i, prompt in enumerate(prompts):
            procs = (llama_cpp.LogitsProcessorList([LlamaCppWatermark(
                scheme, temperature=temperature, top_p=top_p)]) if scheme is not None else None)
            # A sampling scheme applies temperature and top-p itself: llama.cpp then samples
            # the distribution it returns as is.
            temp, tp, tk = (1.0, 1.0, 0) if sampling else (temperature, top_p, self.top_k)
            # llama.cpp samples with the Llama object's stored seed: without a fresh one every
            # call would repeat the same draws (the same prompt, the same answer).
            self.llm.set_seed(seed + i if seed is not None
                              else int.from_bytes(os.urandom(4), "little"))
            p_ids = self.tokenize(self._prompt_text(prompt), special=True)
            if not p_ids:
                raise empty_prompt(i)
            comp: list[int] = []
            for tok in self.llm.generate(p_ids, temp=temp, top_k=tk, top_p=tp,
                                         min_p=0.0, typical_p=1.0, repeat_penalty=1.0,
                                         reset=True, logits_processor=procs):
                if tok in eog:
                    break
                comp.append(int(tok))
                if on_text is not None:
                    on_text(i, self.llm.detokenize(comp).decode("utf-8", errors="replace"))
                if len(comp) >= max_new_tokens:
                    break
            text = self.llm.detokenize(comp).decode("utf-8", errors="replace")
            out.append(Completion(prompt=prompt_label(prompt), text=text, prompt_ids=tuple(p_ids),
                                  completion_ids=tuple(comp)))
        return out


def load_model(model: str | Path | None = None, *, n_ctx: int = 4096,
               n_threads: int | None = None) -> LlamaCppModel:
    """Load a GGUF model (None: the embedded SmolLM2-135M-Instruct) in llama.cpp."""
    from .models import default_model_path

    path = default_model_path() if model is None else Path(model)
    if not path.is_file() or path.suffix != ".gguf":
        raise ModelNotFoundError(f"model {path} is not a .gguf file (llama.cpp reads GGUF only)")
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                              verbose=False, logits_all=False)
    except (ValueError, RuntimeError) as exc:
        raise ModelNotFoundError(f"llama.cpp cannot load {path}: {exc}") from None
    template = llm.metadata.get("tokenizer.chat_template") if llm.metadata else None
    return LlamaCppModel(llm=llm, source=str(path), chat_template=template)

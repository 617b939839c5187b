"""transformers adapter: loading models offline and generating with the watermark.

Needs the ``hf`` extra (torch, transformers, accelerate, gguf); importing this module without it
raises :class:`~distillmark.watermark.errors.MissingDependencyError` with the install line.

:func:`load_model` loads the embedded default model, a GGUF file (converted once and cached) or
a local Hugging Face model directory; :func:`generate` answers prompts with the scheme's
:class:`~.hf_processor.WatermarkLogitsProcessor` and draws tokens with
:class:`~.hf_sampler.InverseCDFSampler`. Both run under :data:`quiet_offline`: no model hub is
reachable and transformers logs only errors while they run, and the process's settings are
restored after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from contextlib import ContextDecorator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine_types import (
    Completion,
    Prompt,
    TextCallback,
    check_generate_args,
    empty_prompt,
    prompt_label,
    prompt_text,
)
from .errors import (
    MissingDependencyError,
    ModelNotFoundError,
    ParameterError,
    TokenizerMismatchError,
)
from .hf_processor import WatermarkLogitsProcessor
from .hf_sampler import InverseCDFSampler
from .models import cache_root, default_model_path

with MissingDependencyError.for_extra("hf"):
    import torch
    import transformers
    from huggingface_hub import constants as hub_constants

if TYPE_CHECKING:
    from .engine_types import Marker
    from .keys import WatermarkSpec

__all__ = [
    "Completion",
    "InverseCDFSampler",
    "LoadedModel",
    "WatermarkLogitsProcessor",
    "default_model_path",
    "generate",
    "load_model",
    "quiet_offline",
]

_OFFLINE = "HF_HUB_OFFLINE"


class _QuietOffline(ContextDecorator):
    """While calls into transformers run: no model hub reachable (``HF_HUB_OFFLINE=1`` and
    huggingface_hub's flag, unless the environment sets the variable itself) and transformers
    logging errors only, without progress bars. A context manager and a decorator; nested and
    concurrent uses (threads) share one such period, and the last to leave restores the
    environment, the flag, the verbosity and the progress bars as they were."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: tuple[str | None, bool, int, bool] = (None, False, 0, False)

    def __enter__(self) -> None:
        log = transformers.utils.logging
        with self._lock:
            if self._depth == 0:
                self._saved = (os.environ.get(_OFFLINE), hub_constants.HF_HUB_OFFLINE,
                               log.get_verbosity(), log.is_progress_bar_enabled())
                if self._saved[0] is None:
                    os.environ[_OFFLINE] = "1"
                    hub_constants.HF_HUB_OFFLINE = True
                log.set_verbosity_error()
                log.disable_progress_bar()
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        log = transformers.utils.logging
        with self._lock:
            self._depth -= 1
            if self._depth:
                return
            env, flag, verbosity, bars = self._saved
            if env is None:
                os.environ.pop(_OFFLINE, None)
            hub_constants.HF_HUB_OFFLINE = flag
            log.set_verbosity(verbosity)
            if bars:
                log.enable_progress_bar()


#: Around every call that loads or runs a model: offline, and transformers quiet.
quiet_offline = _QuietOffline()


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    digest = hashlib.sha256()
    with gguf.open("rb") as fh:
        digest.update(fh.read(1 << 20))
    digest.update(f"{st.st_size}".encode())
    return cache_root() / "models" / f"{gguf.stem}-{digest.hexdigest()[:16]}"


@dataclass
class LoadedModel:
    """A causal LM ready to generate, with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    source: str
    engine: str = "transformers"

    def tokenizer_json(self) -> str:
        return str(self.tokenizer.backend_tokenizer.to_str())

    def check_tokenizer(self, spec: WatermarkSpec) -> None:
        """Raise TokenizerMismatchError unless this model's tokenizer is the spec's."""
        from .tokenizer import fingerprint

        if fingerprint(self.tokenizer_json()) != spec.tokenizer.sha256:
            raise TokenizerMismatchError(
                f"model {self.source} has a different tokenizer from the one key {spec.key_id} "
                "was made for; make a key with --tokenizer pointing at this model")

    def generate(self, prompts: Sequence[Prompt], *, scheme: Marker | None,
                 max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                 batch_size: int = 8, seed: int | None = None,
                 on_text: TextCallback | None = None) -> list[Completion]:
        return generate(self, prompts, scheme=scheme, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, batch_size=batch_size, seed=seed,
                        on_text=on_text)


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {gguf.name} for transformers (once; cached in {target})", file=sys.stderr)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers marks GGUF-loaded models as quantised and refuses to save them; the weights
    # are already dequantised to float, so drop the marker and save plain safetensors.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@quiet_offline
def load_model(model: str | Path | None = None, *, device: str | None = None) -> LoadedModel:
    """Load a causal LM offline: the embedded default (``None``), a GGUF file, or a local
    Hugging Face model directory. GGUF models are converted once and cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path() if model is None else Path(model)
    if not path.exists():
        raise ModelNotFoundError(f"model {path} does not exist (give a GGUF file or a local "
                                 "Hugging Face model directory)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"model {path} is a file but not a .gguf model")
        cached = _gguf_cache_dir(path)
        if not (cached / "config.json").is_file() or not (cached / "tokenizer.json").is_file():
            _convert_gguf(path, cached)
        load_dir = cached
    else:
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no config.json (not a model)")
        load_dir = path
    try:
        lm = AutoModelForCausalLM.from_pretrained(str(load_dir), dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(load_dir))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load model {path}: {str(exc).splitlines()[0]}") from None
    if device:
        lm = lm.to(device)  # type: ignore[arg-type]
    lm.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model=lm, tokenizer=tok, source=str(path))


def _prompt_texts(tok: Any, prompts: Sequence[Prompt], chat: bool | None) -> list[str]:
    use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat

    def template(messages: list[dict[str, str]]) -> str:
        return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    return [prompt_text(p, template if use_chat else None) for p in prompts]


class _TextStreamer:
    """A transformers streamer (``put``/``end``, duck-typed ``BaseStreamer``) that hands each
    row's text so far to ``on_text(offset + row, text)`` after every generated token.

    ``put`` gets the prompt ``(B, L)`` first, then one ``(B,)`` tensor of new tokens per step;
    a row ends at its first end-of-sequence token (later ones are padding).
    """

    def __init__(self, tok: Any, on_text: TextCallback, *, offset: int, n_rows: int,
                 eos: set[int]) -> None:
        self.tok, self.on_text, self.offset, self.eos = tok, on_text, offset, eos
        self.ids: list[list[int]] = [[] for _ in range(n_rows)]
        self.done = [False] * n_rows
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for j, t in enumerate(value.reshape(-1).tolist()):
            if self.done[j]:
                continue
            if t in self.eos:
                self.done[j] = True
                continue
            self.ids[j].append(int(t))
            self.on_text(self.offset + j, self.tok.decode(self.ids[j], skip_special_tokens=True))

    def end(self) -> None:
        pass


@quiet_offline
def generate(lm: LoadedModel, prompts: Sequence[Prompt], *, scheme: Marker | None,
             max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
             batch_size: int = 8, seed: int | None = None, chat: bool | None = None,
             on_text: TextCallback | None = None) -> list[Completion]:
    """Answer ``prompts`` with ``lm``, watermarked with ``scheme`` (``None``: no watermark).

    A prompt is a string (one user message) or a list of chat messages. The chat template is
    applied when the tokenizer has one (``chat=None``). ``temperature`` 0 means greedy
    decoding. ``on_text(i, text)`` is called after each new token of answer ``i``.
    """
    check_generate_args(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p)
    if batch_size < 1:
        raise ParameterError(f"`batch_size` must be >= 1, got {batch_size}")
    tok, model = lm.tokenizer, lm.model
    if scheme is not None:
        width = model.get_output_embeddings().weight.shape[0]
        if width < scheme.vocab_size:
            raise ParameterError(f"the model's {width} logits are fewer than the spec's "
                                 f"vocab_size {scheme.vocab_size} (key made for another model?)")
    if seed is not None:
        torch.manual_seed(seed)
    texts = _prompt_texts(tok, prompts, chat)
    sampling = scheme is not None and scheme.samples
    out: list[Completion] = []
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        # Left padding whatever the tokenizer's default: every row's last tokens are its own,
        # so the watermark's context (and the model's next token) never comes from pads.
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False,
                  padding_side="left")
        for j, n in enumerate(enc["attention_mask"].sum(dim=1).tolist()):
            if n == 0:
                raise empty_prompt(i + j)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        processors: list[Any] = (
            [WatermarkLogitsProcessor(scheme, temperature=temperature, top_p=top_p)]
            if scheme is not None else [])
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens,
                                  "pad_token_id": tok.pad_token_id,
                                  "logits_processor": processors}
        if on_text is not None:
            kwargs["streamer"] = _TextStreamer(tok, on_text, offset=i, n_rows=len(chunk),
                                               eos=eos)
        # Sampling is done by InverseCDFSampler, placed last, and greedy decoding emits its
        # token: same distribution as transformers' warpers and multinomial, a fraction of
        # their cost on CPU.
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sampling:  # the scheme applies temperature and top-p itself
            processors.append(InverseCDFSampler())
        elif temperature > 0:
            processors.append(InverseCDFSampler(temperature=temperature, top_p=top_p))
        with torch.inference_mode():
            gen = model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        for j, row in enumerate(gen.tolist()):
            mask = enc["attention_mask"][j].tolist()
            prompt_ids = tuple(t for t, m in zip(row[:width], mask) if m)
            comp = row[width:]
            while comp and comp[-1] in eos:
                comp = comp[:-1]
            out.append(Completion(prompt=prompt_label(prompts[i + j]),
                                  text=tok.decode(comp, skip_special_tokens=True),
                                  prompt_ids=prompt_ids, completion_ids=tuple(comp)))
    return out

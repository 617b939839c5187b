"""transformers adapter: the watermark as a ``LogitsProcessor``, and loading models offline.

Needs the ``hf`` extra (torch, transformers, accelerate, gguf); importing this module without it
raises :class:`~distillmark.watermark.errors.MissingDependencyError` with the install line.

The processor applies :class:`~distillmark.watermark.greenlist.GreenList` exactly as the numpy
``bias`` does (the same rows from the same code, the same keyed table), staying in torch on the
hot path. On CPU with float32 logits a step is the numpy row computation plus one in-place add
of a ``(V,)`` table row per batch row, through numpy views of the tensors; elsewhere (GPU, half
precision) the table is held as a ``(n_lists, V)`` tensor of ``delta`` / ``0`` on the logits'
device, the rows are hashed in torch, and a step is a row gather plus an add.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .context import ROTATION
from .engine_types import (
    Completion,
    Prompt,
    TextCallback,
    messages_of,
    plain_prompt_text,
    prompt_label,
)
from .errors import (
    InputError,
    MissingDependencyError,
    ModelNotFoundError,
    ParameterError,
    TokenizerMismatchError,
)
from .greenlist import GreenList
from .models import cache_root, default_model_path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
try:
    import torch
    import transformers
    from transformers import LogitsProcessor
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        f"this needs the 'hf' extra ({exc.name} is not installed): "
        "pip install 'distillmark[hf]'") from None

if TYPE_CHECKING:
    from .keys import WatermarkSpec

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

__all__ = [
    "Completion",
    "InverseCDFSampler",
    "LoadedModel",
    "WatermarkLogitsProcessor",
    "default_model_path",
    "generate",
    "load_model",
]



def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_SIGN = -(1 << 63)
_FMIX1 = _signed(0xFF51AFD7ED558CCD)
_FMIX2 = _signed(0xC4CEB9FE1A85EC53)


class WatermarkLogitsProcessor(LogitsProcessor):
    """A scheme's watermark for ``model.generate(..., logits_processor=[processor])``.

    ``input_ids (B, L)`` hold each row's prompt and generated tokens (left-padded in a batch;
    pads are never read as long as prompts have at least ``h`` tokens), ``scores (B, W)`` the
    logits; ``W >= V``. The result equals ``scheme.process(scores, input_ids, ...)``, the numpy
    reference, to float precision.

    Logit-bias schemes (green-list) keep the model's own sampling: transformers applies its
    temperature and top-p after this processor. *Sampling* schemes (``scheme.samples``) choose
    or reweight the distribution themselves, so they take ``temperature`` and ``top_p`` here and
    ``generate`` must then sample at temperature 1 with no other warper (``hf.generate`` does).
    """

    def __init__(self, scheme: Any, *, temperature: float = 1.0, top_p: float = 1.0) -> None:
        for attr in ("process", "vocab_size", "context_width"):
            if not hasattr(scheme, attr):
                raise ParameterError(f"`scheme` must be a distillmark scheme, got "
                                     f"{type(scheme).__name__}")
        self.scheme = scheme
        self.temperature = temperature
        self.top_p = top_p
        self._prompt_width: int | None = None
        self._cache: dict[tuple[str, Any], Any] = {}

    def _on(self, name: str, device: torch.device, dtype: torch.dtype | None = None) -> Any:
        key = (name, (device, dtype))
        if key not in self._cache:
            s = self.scheme
            if name == "delta_table":
                value = torch.from_numpy(s.delta_table).to(device=device, dtype=dtype)
            elif name == "token_values":  # the uint64 values' bits, as torch has no uint64 math
                value = torch.from_numpy(s.context.token_values.view(np.int64).copy()).to(device)
            else:  # rows_by_token
                value = torch.from_numpy(s.context.rows_by_token).to(device)
            self._cache[key] = value
        return self._cache[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.FloatTensor:
        s = self.scheme
        V, h = s.vocab_size, s.context_width
        if scores.shape[-1] < V:
            raise ParameterError(f"logits width {scores.shape[-1]} is smaller than the spec's "
                                 f"vocab_size {V} (wrong model or tokenizer?)")
        if not isinstance(s, GreenList):
            return self._process_generic(input_ids, scores)
        if input_ids.shape[1] < h or s.params.delta == 0.0:
            return scores
        dev = scores.device
        if s.params.seeding == "selfhash":
            k = min(s.params.top_k, V)
            cand = torch.topk(scores[:, :V], k, dim=1).indices
            ctx = input_ids[:, input_ids.shape[1] - h:].cpu().numpy()
            green = s.candidate_green(ctx, cand.cpu().numpy())
            bias = torch.from_numpy(green).to(device=dev, dtype=scores.dtype) * s.params.delta
            scores.scatter_add_(1, cand, bias)
            return scores
        if dev.type == "cpu" and scores.dtype == torch.float32 and not input_ids.is_cuda:
            return self._add_rows_numpy(input_ids, scores)
        if not s.dense:  # many lists: the rows met, from the scheme's row cache
            ids = input_ids[:, input_ids.shape[1] - h:].cpu().numpy()
            rows_np = s.rows(ids)
            met = torch.from_numpy(np.stack([s.green_row(int(r)) for r in rows_np]))
            scores[:, :V] += met.to(device=dev, dtype=scores.dtype) * s.params.delta
            return scores
        if h == 0:
            rows = torch.zeros(input_ids.shape[0], dtype=torch.long, device=dev)
        elif h == 1:
            rows = self._on("rows_by_token", dev)[input_ids[:, -1].to(dev)]
        else:
            rows = self._rows_torch(input_ids[:, input_ids.shape[1] - h:].to(dev))
        table = self._on("delta_table", dev, scores.dtype)
        scores[:, :V] += table.index_select(0, rows)
        return scores

    def _add_rows_numpy(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                        ) -> torch.FloatTensor:
        """CPU float32 logits: ``GreenList.bias_`` on a numpy view of the scores (no copy, no
        gathered ``(B, V)`` temporary, rows hashed in Python integers): a step costs little more
        than one add per batch row; small torch ops cost several times more here."""
        h = self.scheme.context_width
        ids = input_ids.numpy()
        windows = ids[:, ids.shape[1] - h:].tolist() if h else [[]] * ids.shape[0]
        self.scheme.bias_(scores.detach().numpy(), windows)
        return scores

    def _rows_torch(self, windows: torch.Tensor) -> torch.Tensor:
        """``ContextRows.rows`` in torch int64 (two's-complement wraparound, logical shifts
        emulated with masks): ``windows (B, w)`` -> ``(B,)``, bit for bit the numpy result
        (the conformance vectors check it), without a host round trip per step."""
        c = self.scheme.context
        if c.n_rows == 1:
            return torch.zeros(windows.shape[0], dtype=torch.long, device=windows.device)
        vals = self._on("token_values", windows.device)[windows]

        def lsr(x: torch.Tensor, k: int) -> torch.Tensor:
            return (x >> k) & ((1 << (64 - k)) - 1)

        if c.combine == "min":  # unsigned minimum: flip the sign bit around a signed minimum
            s = (vals ^ _SIGN).min(dim=1).values ^ _SIGN
        else:
            s = vals[:, 0].clone()
            for j in range(1, vals.shape[1]):
                r = (ROTATION * j) % 64
                v = vals[:, j]
                s = s + (v << r | lsr(v, 64 - r)) if r else s + v
        s = s ^ lsr(s, 33)
        s = s * _FMIX1
        s = s ^ lsr(s, 33)
        s = s * _FMIX2
        s = s ^ lsr(s, 33)
        return lsr(s, 64 - int(c.n_rows).bit_length() + 1)

    def _process_generic(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                         ) -> torch.FloatTensor:
        """Any scheme through its numpy ``process`` (one host round trip per step)."""
        V = self.scheme.vocab_size
        if self._prompt_width is None:
            self._prompt_width = int(input_ids.shape[1])
        out = self.scheme.process(scores[:, :V].float().cpu().numpy(), input_ids.cpu().numpy(),
                                  prompt_width=self._prompt_width,
                                  temperature=self.temperature, top_p=self.top_p)
        scores[:, :V] = torch.from_numpy(np.ascontiguousarray(out)).to(scores)
        if scores.shape[1] > V and getattr(self.scheme, "samples", False):
            scores[:, V:] = -torch.inf
        return scores


class InverseCDFSampler(LogitsProcessor):
    """Sample the next token by inverse CDF and hand it to greedy decoding.

    transformers samples with ``torch.multinomial``, which on CPU costs about 1.5 ms per row at
    a 49,152-token vocabulary (two thirds of a small model's step). This processor, placed last,
    draws the token itself: softmax of ``scores / temperature``, optionally cut to the nucleus
    ``top_p``, one uniform per row, a binary search over cumulative sums (in two levels, blocks
    then columns, when the whole row is kept); it returns the scores set to ``-inf`` except at
    the drawn token, so ``generate(do_sample=False)`` emits it. Same distribution as
    transformers' temperature and top-p warpers followed by multinomial sampling (not the same
    random stream); the global torch generator drives it, so a seed set with
    ``torch.manual_seed`` reproduces a run.
    """

    def __init__(self, *, temperature: float = 1.0, top_p: float = 1.0) -> None:
        if not temperature > 0 or not 0 < top_p <= 1:
            raise ParameterError(f"need temperature > 0 and 0 < top_p <= 1, got {temperature}, "
                                 f"{top_p}")
        self.temperature = temperature
        self.top_p = top_p

    #: Columns per block of the two-level search (49,152 = 192 blocks of 256).
    BLOCK = 256

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.FloatTensor:
        if self.top_p < 1.0:
            pick = self._nucleus(scores)
        else:
            pick = self._full(scores)
        # In place: the scores are this step's own tensor, and filling them costs what a new
        # one would, without the allocation.
        scores.fill_(-torch.inf)
        scores.scatter_(1, pick, 0.0)
        return scores

    def _full(self, scores: torch.Tensor) -> torch.Tensor:
        """Inverse CDF over the whole row in two levels, so no pass over all ``W`` columns is
        made in float64: unnormalised weights ``exp((s - max) / T)`` in float32, their sums
        over blocks of :attr:`BLOCK` columns, a search over the block sums' cumulative sums,
        then over the chosen block's own (float64)."""
        B, W = scores.shape
        # In place on the scores (or on their float32 copy): the caller overwrites them next.
        e = scores.float()
        e.sub_(e.amax(dim=-1, keepdim=True))
        if self.temperature != 1.0:
            e.div_(self.temperature)
        e.exp_()
        bs = self.BLOCK
        nb = -(-W // bs)
        if nb * bs != W:
            e = torch.nn.functional.pad(e, (0, nb * bs - W))
        e = e.view(B, nb, bs)
        # 256 float32 terms per block sum (relative error ~1e-7); the block totals and every
        # cumulative sum are float64
        blocks = e.sum(dim=-1).double()
        cb = blocks.cumsum(dim=-1)
        u = torch.rand(B, 1, dtype=torch.float64, device=scores.device) * cb[:, -1:]
        bi = torch.searchsorted(cb, u, right=True).clamp_(max=nb - 1)
        bi = _last_with_mass(blocks, bi)
        inner = e.gather(1, bi[:, :, None].expand(B, 1, bs)).squeeze(1).double()
        ci = inner.cumsum(dim=-1)
        r = u - (cb.gather(1, bi) - blocks.gather(1, bi))
        j = torch.searchsorted(ci, r, right=True).clamp_(max=bs - 1)
        j = _last_with_mass(inner, j)
        return bi * bs + j

    def _nucleus(self, scores: torch.Tensor) -> torch.Tensor:
        """Top-p: sort, keep the smallest set of most likely tokens reaching ``top_p``, and
        search the cumulative sums of what is kept (float64)."""
        probs = torch.softmax(scores.double() / self.temperature, dim=-1)
        probs, order = probs.sort(dim=-1, descending=True)
        before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(before >= self.top_p, 0.0)
        cdf = probs.cumsum(dim=-1)
        u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)
        return order.gather(1, _last_with_mass(probs, pick))


def _last_with_mass(mass: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """``pick`` (``(B, 1)`` column indices into ``mass``), except where it points at a column
    of zero mass, which a search draws only when rounding puts the uniform at the row's total:
    there, the last column with mass."""
    bad = mass.gather(1, pick) == 0
    if not bool(bad.any()):
        return pick
    last = (mass.shape[1] - 1) - (mass > 0).flip(1).to(torch.int8).argmax(dim=1, keepdim=True)
    return torch.where(bad, last, pick)


# --------------------------------------------------------------------------------------------
# Models


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

    def generate(self, prompts: Sequence[Prompt], *, scheme: Any | None,
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
    if not use_chat:
        return [plain_prompt_text(p) for p in prompts]
    return [tok.apply_chat_template(messages_of(p), tokenize=False, add_generation_prompt=True)
            for p in prompts]


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


def generate(lm: LoadedModel, prompts: Sequence[Prompt], *, scheme: Any | None,
             max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
             batch_size: int = 8, seed: int | None = None, chat: bool | None = None,
             on_text: TextCallback | None = None) -> list[Completion]:
    """Answer ``prompts`` with ``lm``, watermarked with ``scheme`` (``None``: no watermark).

    A prompt is a string (one user message) or a list of chat messages. The chat template is
    applied when the tokenizer has one (``chat=None``). ``temperature`` 0 means greedy
    decoding. ``on_text(i, text)`` is called after each new token of answer ``i``.
    """
    if not prompts:
        raise InputError("no prompts given")
    if max_new_tokens < 1:
        raise ParameterError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ParameterError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, "
                             f"{top_p}")
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
    sampling = scheme is not None and getattr(scheme, "samples", False)
    out: list[Completion] = []
    eos = {tok.eos_token_id, tok.pad_token_id} - {None}
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        # Left padding whatever the tokenizer's default: every row's last tokens are its own,
        # so the watermark's context (and the model's next token) never comes from pads.
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False,
                  padding_side="left")
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

"""The watermark as a transformers ``LogitsProcessor`` (the ``hf`` extra).

:class:`WatermarkLogitsProcessor` applies any scheme through its numpy ``process``, and the
green list (:class:`~distillmark.watermark.greenlist.GreenList`, the scheme that
``in_place_bias`` returns) exactly as its numpy ``bias`` does (the same rows from the same
code, the same keyed table), staying in torch on the hot path. On CPU with float32 logits a
step is the numpy row computation plus one in-place add of a ``(V,)`` table row per batch row,
through numpy views of the tensors; elsewhere (GPU, half precision) the table is held as a
``(n_lists, V)`` tensor of ``delta`` / ``0`` on the logits' device, the rows are hashed in
torch, and a step is a row gather plus an add.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .context import ROTATION
from .engine_types import WatermarkHook
from .errors import MissingDependencyError, ParameterError

with MissingDependencyError.for_extra("hf"):
    import torch
    from transformers import LogitsProcessor

if TYPE_CHECKING:
    from .engine_types import Marker
    from .greenlist import GreenList

__all__ = ["WatermarkLogitsProcessor"]


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_SIGN = -(1 << 63)
_FMIX1 = _signed(0xFF51AFD7ED558CCD)
_FMIX2 = _signed(0xC4CEB9FE1A85EC53)


class WatermarkLogitsProcessor(WatermarkHook, LogitsProcessor):
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

    def __init__(self, scheme: Marker, *, temperature: float = 1.0, top_p: float = 1.0) -> None:
        super().__init__(scheme, temperature=temperature, top_p=top_p)
        self._cache: dict[tuple[str, Any], Any] = {}

    def _on(self, g: GreenList, name: str, device: torch.device,
            dtype: torch.dtype | None = None) -> Any:
        """``g``'s table ``name`` as a tensor on ``device``, made once."""
        key = (name, (device, dtype))
        if key not in self._cache:
            if name == "delta_table":
                value = torch.from_numpy(g.delta_table).to(device=device, dtype=dtype)
            elif name == "token_values":  # the uint64 values' bits, as torch has no uint64 math
                value = torch.from_numpy(g.context.token_values.view(np.int64).copy()).to(device)
            else:  # rows_by_token
                value = torch.from_numpy(g.context.rows_by_token).to(device)
            self._cache[key] = value
        return self._cache[key]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
                 ) -> torch.FloatTensor:
        V, h = self.scheme.vocab_size, self.scheme.context_width
        if scores.shape[-1] < V:
            raise ParameterError(f"logits width {scores.shape[-1]} is smaller than the spec's "
                                 f"vocab_size {V} (wrong model or tokenizer?)")
        s = self._bias
        if s is None:
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
            return self._add_rows_numpy(s, input_ids, scores)
        if not s.dense:  # many lists: the rows met, from the scheme's row cache
            ids = input_ids[:, input_ids.shape[1] - h:].cpu().numpy()
            rows_np = s.rows(ids)
            met = torch.from_numpy(np.stack([s.green_row(int(r)) for r in rows_np]))
            scores[:, :V] += met.to(device=dev, dtype=scores.dtype) * s.params.delta
            return scores
        if h == 0:
            rows = torch.zeros(input_ids.shape[0], dtype=torch.long, device=dev)
        elif h == 1:
            rows = self._on(s, "rows_by_token", dev)[input_ids[:, -1].to(dev)]
        else:
            rows = self._rows_torch(s, input_ids[:, input_ids.shape[1] - h:].to(dev))
        table = self._on(s, "delta_table", dev, scores.dtype)
        scores[:, :V] += table.index_select(0, rows)
        return scores

    def _add_rows_numpy(self, g: GreenList, input_ids: torch.LongTensor,
                        scores: torch.FloatTensor) -> torch.FloatTensor:
        """CPU float32 logits: ``GreenList.bias_`` on a numpy view of the scores (no copy, no
        gathered ``(B, V)`` temporary, rows hashed in Python integers): a step is one add per
        batch row, without the fixed cost of a dozen small torch operations."""
        h = g.context_width
        ids = input_ids.numpy()
        windows = ids[:, ids.shape[1] - h:].tolist() if h else [[]] * ids.shape[0]
        g.bias_(scores.detach().numpy(), windows)
        return scores

    def _rows_torch(self, g: GreenList, windows: torch.Tensor) -> torch.Tensor:
        """``ContextRows.rows`` in torch int64 (two's-complement wraparound, logical shifts
        emulated with masks): ``windows (B, w)`` -> ``(B,)``, bit for bit the numpy result
        (the conformance vectors check it), without a host round trip per step."""
        c = g.context
        if c.n_rows == 1:
            return torch.zeros(windows.shape[0], dtype=torch.long, device=windows.device)
        vals = self._on(g, "token_values", windows.device)[windows]

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
        if scores.shape[1] > V and self.scheme.samples:
            scores[:, V:] = -torch.inf
        return scores

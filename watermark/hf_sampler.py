"""Sampling for the transformers engine (the ``hf`` extra): the next token drawn by inverse CDF.

:class:`InverseCDFSampler` replaces transformers' temperature and top-p warpers and its
multinomial draw with one processor, so that ``generate(do_sample=False)`` emits the token it
drew: the same distribution, at a fraction of the cost on CPU.
"""

from __future__ import annotations

from .errors import MissingDependencyError, ParameterError

with MissingDependencyError.for_extra("hf"):
    import torch
    from transformers import LogitsProcessor

__all__ = ["InverseCDFSampler"]


class InverseCDFSampler(LogitsProcessor):
    """Sample the next token by inverse CDF and hand it to greedy decoding.

    transformers samples with ``torch.multinomial``, which on CPU makes up much of a small
    model's step at a vocabulary this size (docs/benchmarks.md). This processor, placed last,
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

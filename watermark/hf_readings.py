"""Readings of a transformers causal LM for the open-model audit, as plain numpy arrays.

The audit (``distillmark.verify.audit``) tests a suspect model's next-token distributions
against a key; this module is the torch side of it: the model's ``k`` most likely next tokens
and their probabilities after chosen prefixes of token sequences (teacher forcing, several
sequences per forward pass, right-padded so that positions keep their indices), and sequences
the model samples itself from its start token. Nothing here depends on a key.

Needs the ``hf`` extra (torch, transformers), like :mod:`.hf`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .errors import InputError, MissingDependencyError
from .hf import LoadedModel

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(
        f"this needs the 'hf' extra ({exc.name} is not installed): "
        "pip install 'distillmark[hf]'") from None

__all__ = ["cuda_available", "output_width", "sample_sequences", "top_k_after"]


def cuda_available() -> bool:
    """Whether torch sees a CUDA device."""
    return bool(torch.cuda.is_available())


def output_width(lm: LoadedModel) -> int:
    """Number of logits the model gives per position (its output embedding's rows)."""
    return int(lm.model.get_output_embeddings().weight.shape[0])


def top_k_after(lm: LoadedModel, sequences: Sequence[np.ndarray], seq: np.ndarray,
                pos: np.ndarray, k: int, *, batch_size: int = 8,
                progress: Callable[[int, int], None] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The model's ``k`` most likely next tokens after ``sequences[seq[i]][:pos[i] + 1]``.

    Args:
        lm: a loaded causal LM.
        sequences: token ids, each ``(n_j,) int64``.
        seq: ``(m,) int64``, the sequence of each prefix; ``pos``: ``(m,) int64``, its last
            position.
        k: tokens kept per prefix (at most the model's output width).
        batch_size: sequences per forward pass (sequences of similar length batch together).
        progress: called with (sequences done, sequences to read) after each pass.

    Returns:
        ``top_ids (m, k) int64`` and ``top_probs (m, k) float32``, most likely first.
    """
    model = lm.model
    wanted = {j: pos[seq == j] for j in np.unique(seq).tolist()}
    top_ids = np.zeros((seq.size, k), dtype=np.int64)
    top_probs = np.zeros((seq.size, k), dtype=np.float32)
    row_of = {(int(a), int(b)): r for r, (a, b) in enumerate(zip(seq, pos))}
    order = sorted(wanted, key=lambda j: sequences[j].size)
    device = next(model.parameters()).device
    done = 0
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            chunk = order[b:b + batch_size]
            width = max(sequences[j].size for j in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, j in enumerate(chunk):  # right padding: positions keep their indices
                ids[r, :sequences[j].size] = torch.from_numpy(sequences[j])
                mask[r, :sequences[j].size] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for r, j in enumerate(chunk):
                p = torch.from_numpy(wanted[j]).to(device)
                lp = torch.log_softmax(logits[r, p].float(), dim=-1)
                vals, idx = torch.topk(lp, k, dim=-1)
                rows = [row_of[(j, int(q))] for q in wanted[j].tolist()]
                top_ids[rows] = idx.cpu().numpy()
                top_probs[rows] = vals.exp().cpu().numpy()
            done += len(chunk)
            if progress is not None:
                progress(done, len(order))
    return top_ids, top_probs


def sample_sequences(lm: LoadedModel, n: int, *, length: int, seed: int, batch_size: int
                     ) -> list[np.ndarray]:
    """``n`` sequences the model samples itself (temperature 1, no watermark, no other
    filter) from its BOS token (or EOS where it has none), each ``(<= length + 1,) int64``
    including the start."""
    tok, model = lm.tokenizer, lm.model
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if start is None:
        raise InputError(f"model {lm.source} has neither a BOS nor an EOS token to start "
                         "generating from; supply text with --text")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            ids = torch.full((b, 1), int(start), dtype=torch.long, device=device)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=length, min_new_tokens=length,
                                 pad_token_id=tok.pad_token_id)
            out.extend(np.asarray(row, dtype=np.int64) for row in gen.cpu().tolist())
    return out

"""Students trained from scratch on a teacher's answers: the suspect of a distillation test
(extra ``hf``; torch and transformers are imported only when a student is trained).

:func:`train_bigram_student` fits a *neural bigram* language model, a Llama with no transformer
layers, ``logits = W RMSNorm(E[previous token])`` of rank ``d_model``: the next token's
distribution given the previous one, which is what a small LM's direct path learns first and
where an ``h = 1`` green-list mark lives. It is the smallest model that can learn such a mark,
and it trains on a CPU, so the whole question "was this model distilled from our answers?" can
be asked end to end (serve the student, probe it, audit its weights) on a laptop. Larger
students are trained with the usual tools; the tests do not care how a suspect was made.

Training: full-batch Adam on the answers' bigram counts (every (previous, next) pair of the
answers, the last prompt token included as the first answer token's predecessor, and the end
token after each answer), which is the next-token cross-entropy over the corpus, ``steps``
times. The output layer covers only the token ids of the student's own corpus (prompts and
answers, plus the special ids ``0``, ``1`` and the end token) and one "other" class that is
never a target, standing in for every other id: a student's support never depends on text it
did not see. When saved, the model is expanded back to the full vocabulary (unused ids copy
the "other" row, a logit that training pushed down), so it is an ordinary Hugging Face model
whose outputs are ids of the teacher's tokenizer. It is saved as a folder written beside its
destination and renamed onto it, so an interrupted run leaves no half model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distillmark.watermark.errors import InputError, ParameterError

__all__ = ["DEFAULT_VOCAB_SIZE", "TOKENIZER_FILES", "TokenPairs", "default_tokenizer_dir",
           "train_bigram_student"]

#: Files copied from the tokenizer directory into a saved student.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json")

#: Vocabulary of the embedded SmolLM2 tokenizer (the width of a saved student's output layer).
DEFAULT_VOCAB_SIZE = 49152

TokenPairs = Sequence[tuple[Sequence[int], Sequence[int]]]


def default_tokenizer_dir(gguf: str | Path | None = None) -> Path:
    """The transformers copy of a GGUF model (default: the embedded SmolLM2), which holds its
    tokenizer and chat template: the directory :func:`~distillmark.watermark.hf.load_model`
    converts once and caches."""
    from distillmark.watermark import hf
    from distillmark.watermark.models import default_model_path

    path = default_model_path() if gguf is None else Path(gguf)
    cached = hf._gguf_cache_dir(path)
    if not (cached / "tokenizer.json").is_file():
        hf.load_model(None if gguf is None else path)
    return cached


def _check_pairs(pairs: TokenPairs, vocab_size: int) -> list[tuple[list[int], list[int]]]:
    out = []
    for i, item in enumerate(pairs):
        try:
            p, c = item
        except (TypeError, ValueError):
            raise InputError(f"pair {i}: each pair must be (prompt_ids, completion_ids)"
                             ) from None
        p, c = [int(t) for t in p], [int(t) for t in c]
        if not p:
            raise InputError(f"pair {i}: prompt_ids is empty (the first answer token needs "
                             "the prompt's last token before it)")
        if any(t < 0 or t >= vocab_size for t in p + c):
            raise InputError(f"pair {i}: token ids must be in [0, {vocab_size}), the "
                             "tokenizer's vocabulary")
        out.append((p, c))
    if not out:
        raise InputError("no training pairs given")
    return out


def train_bigram_student(pairs: TokenPairs, out_dir: str | Path, *, d_model: int = 128,
                         steps: int = 30, lr: float = 0.03, seed: int = 0,
                         tokenizer_dir: str | Path | None = None, eos_id: int = 2,
                         vocab_size: int = DEFAULT_VOCAB_SIZE,
                         threads: int | None = None) -> dict[str, Any]:
    """Train a neural bigram student on ``pairs`` and save it as a Hugging Face model.

    Args:
        pairs: ``(prompt_ids, completion_ids)`` per teacher answer, ids of the teacher's
            tokenizer (``Completion.prompt_ids`` / ``completion_ids``); the loss is on the
            answers and their end token, the prompt's last token conditioning the first.
        out_dir: where the model goes (replaced atomically: written to ``out_dir.tmp``, then
            renamed); it also receives the tokenizer files of ``tokenizer_dir`` and
            ``distill_train.json`` (the returned info).
        d_model: rank of the bigram table (embedding width).
        steps: full-batch Adam steps.
        lr: Adam's learning rate.
        seed: initialisation seed (the result is deterministic given it).
        tokenizer_dir: directory holding the teacher's ``tokenizer.json`` (and its
            ``tokenizer_config.json`` and chat template, so the student renders prompts the
            way the teacher did); default: the embedded SmolLM2's (:func:`default_tokenizer_dir`).
        eos_id: the end token appended to every answer (SmolLM2's ``<|im_end|>`` is 2).
        vocab_size: width of the saved model's embedding and output layer.
        threads: torch threads (None: leave torch's setting).

    Returns:
        ``train_s``, ``steps``, ``final_loss``, ``bigram_mle_loss`` (the loss of the exact
        bigram table of the corpus, the floor), ``vocab_used``, ``n_seqs``, ``train_tokens``,
        ``distinct_bigrams``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if d_model < 1:
        raise ParameterError(f"`d_model` must be >= 1, got {d_model}")
    if steps < 1:
        raise ParameterError(f"`steps` must be >= 1, got {steps}")
    if not lr > 0:
        raise ParameterError(f"`lr` must be > 0, got {lr}")
    if not 0 <= eos_id < vocab_size:
        raise ParameterError(f"`eos_id` must be in [0, {vocab_size}), got {eos_id}")
    checked = _check_pairs(pairs, vocab_size)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else default_tokenizer_dir()
    if not (tok_dir / "tokenizer.json").is_file():
        raise InputError(f"tokenizer directory {tok_dir} has no tokenizer.json")
    out = Path(out_dir)

    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    used = sorted({t for p, c in checked for t in p + c} | {0, 1, eos_id})
    other = len(used)
    vr = other + 1
    vmap = np.full(vocab_size, other, dtype=np.int64)
    vmap[used] = np.arange(len(used))
    xs, ts = [], []
    for p, c in checked:
        seq = vmap[np.asarray(p + c + [eos_id], dtype=np.int64)]
        xs.append(seq[len(p) - 1:-1])
        ts.append(seq[len(p):])
    x_all, t_all = np.concatenate(xs), np.concatenate(ts)
    cells, counts = np.unique(x_all * vr + t_all, return_counts=True)
    ux, xi = np.unique(cells // vr, return_inverse=True)
    d = d_model
    E = torch.nn.Parameter(torch.randn(vr, d) * 0.02)
    W = torch.nn.Parameter(torch.randn(vr, d) * 0.02)
    g = torch.nn.Parameter(torch.ones(d))
    opt = torch.optim.Adam([E, W, g], lr=lr)
    uxt, xit = torch.from_numpy(ux), torch.from_numpy(xi)
    tt, ct = torch.from_numpy(cells % vr), torch.from_numpy(counts).float()
    eps = 1e-6
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for _ in range(steps):
        h = E[uxt]
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * g
        logits = h @ W.T
        loss = ((torch.logsumexp(logits, -1)[xit] - logits[xit, tt]) * ct).sum() / ct.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    tot = np.bincount(xi, weights=counts)
    mle = float(-(counts * np.log(counts / tot[xi])).sum() / counts.sum())
    mcfg = LlamaConfig(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=0,
                       num_attention_heads=1, num_key_value_heads=1, intermediate_size=4,
                       max_position_embeddings=4096, bos_token_id=1, eos_token_id=eos_id,
                       pad_token_id=eos_id, tie_word_embeddings=False, rms_norm_eps=eps)
    full = LlamaForCausalLM(mcfg)
    idx = torch.from_numpy(vmap)
    with torch.no_grad():
        full.model.embed_tokens.weight.copy_(E[idx])
        full.lm_head.weight.copy_(W[idx])
        full.model.norm.weight.copy_(g)
    info = {"train_s": train_s, "steps": steps, "final_loss": float(loss.detach()),
            "bigram_mle_loss": mle, "vocab_used": len(used), "n_seqs": len(checked),
            "train_tokens": int(t_all.size), "distinct_bigrams": int(cells.size)}
    save_student(full, out, tok_dir, info)
    return info


def save_student(model: Any, out: Path, tok_dir: Path, info: dict[str, Any]) -> None:
    """Save a trained student as a Hugging Face model folder at ``out``, with ``tok_dir``'s
    tokenizer files and ``distill_train.json`` (``info``): written beside ``out`` and renamed
    onto it, so an interrupted run leaves no half model."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy(tok_dir / name, tmp / name)
    (tmp / "distill_train.json").write_text(json.dumps(info))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)

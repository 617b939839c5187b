"""Students trained from scratch on a teacher's answers: the suspect of a distillation test
(extra ``hf``; torch and transformers are imported only when a student is trained).

:func:`train_bigram_student` fits a *neural bigram* language model, a Llama with no transformer
layers, ``logits = W RMSNorm(E[previous token])`` of rank ``d_model``: the next token's
distribution given the previous one, which is what a small LM's direct path learns first and
where an ``h = 1`` green-list mark lives. It is the smallest model that can learn such a mark,
and it learns it in seconds on a CPU, so the whole question "was this model distilled from our
answers?" can be asked end to end (serve the student, probe it, audit its weights) on a
laptop. Larger students are trained with the usual tools; the tests do not care how a suspect
was made.

Training: full-batch Adam on the answers' bigram counts (every (previous, next) pair of the
answers, the last prompt token included as the first answer token's predecessor, and the end
token after each answer), which is the next-token cross-entropy over the corpus, ``steps``
times. The output layer covers only the token ids of the student's own corpus (prompts and
answers, plus the special ids ``0``, ``1`` and the end token) and one "other" class that is
never a target, standing in for every other id: a student's support never depends on text it
did not see. When saved, the model is expanded back to the full vocabulary (unused ids copy
the "other" row, a logit that training pushed down), so it is an ordinary Hugging Face model
whose outputs are ids of the teacher's tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distillmark.watermark.errors import InputError, ParameterError
from distillmark.watermark.keys import WatermarkSpec

from .detect import DEFAULT_ALPHA

if TYPE_CHECKING:
    from distillmark.watermark.engine_types import Completion, Generator

    from .audit import AuditResult
    from .probe import ProbeResult

__all__ = ["TOKENIZER_FILES", "StoryResult", "StudentResult", "default_tokenizer_dir",
           "distillation_story", "train_bigram_student"]

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
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    full.save_pretrained(tmp)
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy(tok_dir / name, tmp / name)
    (tmp / "distill_train.json").write_text(json.dumps(info))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return info


# --------------------------------------------------------------------------------------------
# The whole story: a teacher, two students, the probe and the audit


@dataclass(frozen=True)
class StudentResult:
    """One student of :func:`distillation_story`: what it learned from, and what the two tests
    found.

    Attributes:
        name: the model id it was served under (``student-marked``, ``student-control``).
        marked: trained on the teacher's watermarked answers (else on its unwatermarked ones).
        n_train: teacher answers it was trained on.
        train: :func:`train_bigram_student`'s info (``train_s``, ``final_loss``, ...).
        probe: the closed-model test: the student served on loopback and probed.
        audit: the open-model test of its weights (``verify.audit``, distribution mode).
        seconds: training, serving, probing and auditing it took.
    """

    name: str
    marked: bool
    n_train: int
    train: dict[str, Any]
    probe: ProbeResult
    audit: AuditResult
    seconds: float

    def found(self, alpha: float = DEFAULT_ALPHA) -> bool:
        """Either test found the watermark."""
        return self.probe.is_watermarked(alpha) or self.audit.is_watermarked(alpha)

    def to_dict(self, alpha: float | None = None) -> dict[str, Any]:
        return {"name": self.name, "marked": self.marked, "n_train": self.n_train,
                "train": dict(self.train), "probe": self.probe.to_dict(alpha),
                "audit": self.audit.to_dict(alpha), "seconds": self.seconds}


@dataclass(frozen=True)
class StoryResult:
    """Both students: ``students[0]`` learned from watermarked answers, ``students[1]`` (the
    control) from unwatermarked ones, to the same prompts."""

    students: tuple[StudentResult, ...]
    teacher_seconds: float
    seconds: float

    def is_right(self, alpha: float = DEFAULT_ALPHA) -> bool:
        """The marked student is found by both tests, the control by neither."""
        return all((s.probe.is_watermarked(alpha) and s.audit.is_watermarked(alpha))
                   if s.marked else not s.found(alpha) for s in self.students)

    def to_dict(self, alpha: float | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"students": [s.to_dict(alpha) for s in self.students],
                             "teacher_seconds": self.teacher_seconds, "seconds": self.seconds}
        if alpha is not None:
            d["alpha"] = alpha
            d["story_right"] = self.is_right(alpha)
        return d


def distillation_story(teacher: Generator, spec: WatermarkSpec, train_prompts: Sequence[str],
                       probe_prompts: Sequence[str], workdir: str | Path, *,
                       answers: tuple[Sequence[Completion], Sequence[Completion]] = ((), ()),
                       tokenizer_dir: str | Path | None = None, max_new_tokens: int = 128,
                       temperature: float = 1.0, batch_size: int = 16, seed: int = 0,
                       samples: int = 4, probe_max_tokens: int = 64,
                       audit_sequences: int = 16, audit_len: int = 128, steps: int = 30,
                       d_model: int = 128, lr: float = 0.03,
                       progress: Callable[[str], None] | None = None) -> StoryResult:
    """Was a model distilled from our answers? Both cases, end to end, in one call.

    1. ``teacher`` answers ``train_prompts`` twice: watermarked with ``spec``, and without a
       watermark (the same prompts; ``max_new_tokens`` each). ``answers``: the teacher's
       (watermarked, unwatermarked) answers already in hand, to the same prompts, used first
       (``train_prompts`` may then be empty: nothing more is generated).
    2. Two bigram students are trained from scratch (:func:`train_bigram_student`): the
       *marked* one on the watermarked answers, the *control* on the unwatermarked ones.
    3. Each is served without a watermark by distillmark's OpenAI-compatible server on a free
       loopback port and probed (:func:`~distillmark.verify.probe.probe`): ``probe_prompts``
       (not in training), ``samples`` answers per prompt in one request, all pooled into one
       exact test.
    4. Each one's weights are audited (:mod:`~distillmark.verify.audit`, distribution mode)
       over ``audit_sequences`` sequences of ``audit_len`` tokens it samples itself.

    Needs the ``hf`` and ``serve`` extras. ``workdir`` receives the two students
    (``student-marked/``, ``student-control/``, ordinary Hugging Face models) and the probe's
    answer cache. ``tokenizer_dir`` holds the teacher's tokenizer files, copied into each
    student (default: the embedded SmolLM2's). ``progress(message)`` is told of each stage.
    """
    from distillmark.watermark.registry import scheme_for
    from distillmark.watermark.serve import ServeConfig, create_app, start_server

    from . import audit as au
    from .probe import SamplingParams, probe

    given_wm, given_clean = answers
    if len(given_wm) != len(given_clean):
        raise InputError(f"`answers` must hold as many watermarked as unwatermarked answers, "
                         f"got {len(given_wm)} and {len(given_clean)}")
    if not (train_prompts or given_wm) or not probe_prompts:
        raise InputError("the story needs training prompts (or answers) and probe prompts")
    trained_on = set(train_prompts) | {o.prompt for o in given_wm}
    if trained_on & set(probe_prompts):
        raise InputError("probe prompts must not be training prompts (held-out prompts only)")
    say = progress or (lambda message: None)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    scheme = scheme_for(spec)
    corpora: dict[bool, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    for marked in (True, False):
        corpora[marked] = [(o.prompt_ids, o.completion_ids)
                           for o in (given_wm if marked else given_clean)]
        if not train_prompts:
            continue
        say(f"teacher: {len(train_prompts)} more {'watermarked' if marked else 'unwatermarked'}"
            f" answers to train a student on")
        outs = teacher.generate(list(train_prompts), scheme=scheme if marked else None,
                                max_new_tokens=max_new_tokens, temperature=temperature,
                                batch_size=batch_size, seed=seed + (not marked))
        corpora[marked] += [(o.prompt_ids, o.completion_ids) for o in outs]
    teacher_seconds = time.perf_counter() - t_start
    from distillmark.watermark import hf

    students = []
    for marked in (True, False):
        t0 = time.perf_counter()
        name = "student-marked" if marked else "student-control"
        out = work / name
        say(f"{name}: training a bigram student on {len(corpora[marked])} "
            f"{'watermarked' if marked else 'unwatermarked'} answers")
        info = train_bigram_student(corpora[marked], out, d_model=d_model, steps=steps, lr=lr,
                                    seed=seed, tokenizer_dir=tokenizer_dir,
                                    vocab_size=spec.vocab_size)
        lm = hf.load_model(out)
        lm.check_tokenizer(spec)
        say(f"{name}: serving it on loopback and probing it with {len(probe_prompts)} "
            f"prompts x {samples} answers")
        config = ServeConfig(model_name=name, spec=None, max_n=samples,
                             max_batch=len(probe_prompts) * samples,
                             default_max_tokens=probe_max_tokens)
        with start_server(create_app(lm, config)) as server:
            found = probe(server.url, name, spec, list(probe_prompts),
                          sampling=SamplingParams(max_tokens=probe_max_tokens,
                                                  temperature=1.0),
                          samples=samples, concurrency=len(probe_prompts),
                          cache=work / "probe-cache", timeout=1800.0)
        say(f"{name}: auditing its weights over {audit_sequences} sequences it samples")
        contexts = au.generate_contexts(lm, audit_sequences, length=audit_len, seed=seed,
                                        batch_size=audit_sequences)
        readings = au.read_model(lm, contexts, batch_size=audit_sequences)
        audited = au.audit_readings(readings, scheme)
        students.append(StudentResult(name=name, marked=marked, n_train=len(corpora[marked]),
                                      train=info, probe=found, audit=audited,
                                      seconds=time.perf_counter() - t0))
    return StoryResult(students=tuple(students), teacher_seconds=teacher_seconds,
                       seconds=time.perf_counter() - t_start)

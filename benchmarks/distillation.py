"""The distillation experiment: does a student trained on watermarked answers carry the mark?

    python benchmarks/distillation.py              # default run (under an hour on 2 idle cores)
    python benchmarks/distillation.py --quick      # smoke run, a few minutes
    python benchmarks/distillation.py --lists 256  # the teacher key with 256 lists, not 65,536
    python benchmarks/distillation.py --scale 4    # 4x the data and a wider student (big machine)

Teacher: the embedded SmolLM2-135M-Instruct (transformers engine, batched) answers the training
prompts twice, once watermarked with a green-list key (gamma 0.25, delta 2, h = 1, 65,536
lists: the keygen defaults) and once without a watermark. Many lists matter for radioactivity:
with 256, the 12,600 distinct previous tokens of the training answers share each list
about 49 to one, so a continuation they have in common is one cell of the tests, counted once;
with 65,536 almost every previous token has a list of its own. Answers are cached on disk
(``benchmarks/out/distill/``), so a rerun generates nothing.

Students: for each fraction f in 0%, 1%, 5%, 10%, 100%, a fraction f of the training prompts
contribute their watermarked answer and the rest their unwatermarked one (the same prompts in
every corpus: the students differ only in which answers were watermarked). The default student
(``--student bigram``) is a neural bigram LM trained from scratch: a Llama with no transformer
layers, ``logits = W RMSNorm(E[previous token])`` (rank 128), trained by full-batch Adam on the
answers' next-token cross-entropy; its output layer covers only the token ids of its own corpus
while it trains and is expanded back to the full 49,152-token vocabulary when saved.
``--student transformer`` is what a competitor distils into: the pretrained SmolLM2-135M-Instruct
(the teacher's own weights, so the mark can only come from the sampled answers) fine-tuned on the
answers with transformers' Trainer, loss on the answers only, ``ft_epochs`` passes;
``--student lora`` the same with LoRA adapters (rank 16, merged when saved). Full fine-tuning
ran at 75-86 answer tokens/s on 2 CPU cores at load 2: ``--quick`` with a transformer student
trains the 0%, 10% and 100% students on 200 answers (about 21,000 answer tokens) each, under an
hour on 2 idle cores; the full sweep is for a GPU.

Tests, per student:

* closed model (black box, unsupervised), as an investigator runs it: the student is served by
  distillmark's own OpenAI-compatible server (``watermark.serve``, no watermark) on a free
  loopback port, and ``verify.probe`` asks it held-out prompts that were not in training (and,
  separately, ``closed_train_queries`` of the training prompts: what the provider's request log
  holds),
  ``closed_samples`` answers per prompt in one request each (``n``; temperature 1); every
  answer is re-tokenised and scored with the key, tuples deduplicated across all answers,
  tuples found in the prompts excluded; one exact binomial test (:func:`closed_model_probe`).
  The probe's answer cache lives in the student's directory, so a rerun asks nothing again.
  ``--closed direct`` generates the answers in process instead and pools their token ids
  (:func:`closed_model_test`), the earlier path.
* open model: ``distillmark.verify.audit`` on the saved weights, read over the student's own
  probe answers (under H0 they do not depend on the key), 256 tokens per context, six
  variants: the audit's default (distribution test, coverage weights), the distribution test
  with window or context weights, and reading mode with the argmax, the top 4, or every token
  of probability at least 0.03.

Calibration: the 0% student is tested, in every setting, against 20 fresh keys that it never
saw (and against the teacher's key, which it never saw either): no p-value may fall below 1e-3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _distill_prompts import prompt_set

OUT = Path(__file__).resolve().parent / "out" / "distill"

#: The teacher's key: fixed, so that figures are reproducible (a benchmark key, not a secret).
TEACHER_SECRET = hashlib.sha256(b"distillmark distillation teacher key, not secret").digest()


def null_secret(i: int) -> bytes:
    """The i-th key that no student ever saw (the calibration keys)."""
    return hashlib.sha256(f"distillmark distillation null key {i}".encode()).digest()


@dataclass(frozen=True)
class Config:
    n_train: int = 768            # training prompts (each answered with and without the mark)
    n_heldout: int = 400          # held-out prompts for the closed-model test
    max_new_tokens: int = 128     # teacher answer length
    teacher_temperature: float = 1.0
    teacher_batch: int = 128
    fractions: tuple[float, ...] = (0.0, 0.01, 0.05, 0.10, 1.0)
    student: str = "bigram"       # "bigram" (0-layer Llama), "transformer" or "lora"
    d_model: int = 128            # bigram student: rank
    steps: int = 30               # bigram student: full-batch Adam steps
    lr: float = 3e-3              # bigram student: 10x this
    seq_len: int = 192            # fine-tuned students: tokens per sequence
    ft_epochs: float = 1.0        # fine-tuned students: passes over the answers
    ft_lr: float | None = None    # fine-tuned students (None: 1e-4 full, 1e-3 LoRA)
    lora_rank: int = 16
    train_batch: int = 8          # fine-tuned students: sequences per step
    closed_queries: int = 400     # held-out prompts asked in the closed-model test ...
    closed_train_queries: int = 400  # ... and training prompts (the request log's)
    closed_samples: int = 4       # ... answers per prompt (one request each: OpenAI's n)
    closed_max_new: int = 128
    closed_batch: int = 200       # answers the student's server generates together
    closed_via: str = "probe"     # "probe" (serve + probe on loopback) or "direct"
    audit_contexts: int = 1600    # the student's own probe answers read by the audit
    audit_top_k: int = 256        # tokens per context the audit reads
    audit_len: int = 128
    null_keys: int = 20
    null_seeds: int = 1           # 0% students trained with different seeds
    threads: int = 2
    engine: str = "transformers"  # the teacher's engine: transformers, llama.cpp or auto
    lists: int = 65536            # green lists of the teacher's key (n_lists)

    def teacher_tag(self) -> str:
        """Cache directory of the teacher's answers: batches are cached one by one, so a
        larger ``n_train`` reuses every batch a smaller one generated."""
        d = {"max_new": self.max_new_tokens, "temp": self.teacher_temperature,
             "batch": self.teacher_batch, "prompts": "v2"}
        if self.engine != "transformers":  # other engines answer differently: their own cache
            d["engine"] = self.engine
        if self.lists != 256:  # another key, other answers
            d["lists"] = self.lists
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


QUICK = Config(n_train=64, n_heldout=64, steps=20, closed_queries=16, closed_train_queries=16,
               closed_max_new=64, audit_contexts=16, null_keys=10, null_seeds=1)
#: ``--quick`` with a fine-tuned student: 0%, 10% and 100% students on 200 answers each (about
#: 21,000 answer tokens: the answers average 105 tokens).
QUICK_FINETUNED = Config(n_train=200, n_heldout=64, fractions=(0.0, 0.10, 1.0),
                         closed_queries=32, closed_train_queries=32, closed_max_new=64,
                         audit_contexts=32, null_keys=10)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def teacher_spec(cfg: Config, secret: bytes = TEACHER_SECRET) -> Any:
    """The teacher's key (``secret`` = TEACHER_SECRET) or a null key: the default green-list
    parameters with ``cfg.lists`` lists."""
    from distillmark.watermark import BUILTIN_SMOLLM2, load_tokenizer, new_spec

    _, info = load_tokenizer(BUILTIN_SMOLLM2)
    return new_spec("greenlist", {"n_lists": cfg.lists}, info, secret=secret)


# --------------------------------------------------------------------------------------------
# Teacher answers (cached)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def teacher_answers(cfg: Config) -> dict[str, list[dict[str, Any]]]:
    """``{"wm": [...], "clean": [...]}``: one record per training prompt (prompt, prompt_ids,
    completion_ids), generated batch by batch and cached; an interrupted run resumes."""
    from distillmark.watermark import scheme_for

    prompts = prompt_set()[:cfg.n_train]
    cache = OUT / "teacher" / cfg.teacher_tag()
    cache.mkdir(parents=True, exist_ok=True)
    spec = teacher_spec(cfg)
    batches = [(kind, i) for i in range(0, len(prompts), cfg.teacher_batch)
               for kind in ("wm", "clean")]

    def batch_file(kind: str, i: int) -> Path:
        # named by its first prompt and its size: a smaller run's shorter last batch at the
        # same start is another file
        return cache / f"{kind}-{i:05d}x{len(prompts[i:i + cfg.teacher_batch])}.json"

    todo = [(k, i) for k, i in batches if not batch_file(k, i).is_file()]
    if todo:
        import torch

        from distillmark.watermark.engines import load_generator

        torch.set_num_threads(cfg.threads)
        log(f"teacher: {len(todo)} of {len(batches)} batches to generate (cache {cache})")
        lm = load_generator(cfg.engine, None)
        scheme = scheme_for(spec)
        t0, n_tok = time.perf_counter(), 0
        for j, (kind, i) in enumerate(todo):
            chunk = prompts[i:i + cfg.teacher_batch]
            outs = lm.generate(chunk, scheme=scheme if kind == "wm" else None,
                               max_new_tokens=cfg.max_new_tokens,
                               temperature=cfg.teacher_temperature,
                               batch_size=cfg.teacher_batch,
                               seed=1000 * i + (kind == "wm"))
            recs = [{"prompt": o.prompt, "prompt_ids": list(o.prompt_ids),
                     "completion_ids": list(o.completion_ids)} for o in outs]
            _write_atomic(batch_file(kind, i), json.dumps(recs))
            n_tok += sum(len(r["completion_ids"]) for r in recs)
            dt = time.perf_counter() - t0
            log(f"teacher: batch {j + 1}/{len(todo)} ({kind}), {n_tok} tokens, "
                f"{n_tok / dt:.0f} tok/s")
    out: dict[str, list[dict[str, Any]]] = {"wm": [], "clean": []}
    for kind, i in batches:
        out[kind].extend(json.loads(batch_file(kind, i).read_text()))
    return out


# --------------------------------------------------------------------------------------------
# Students


def corpus(answers: dict[str, list[dict[str, Any]]], fraction: float
           ) -> tuple[list[tuple[list[int], list[int]]], int]:
    """The training corpus of the ``fraction`` student: ``(prompt_ids, completion_ids)`` per
    training prompt, and how many of them are watermarked. The watermarked prompts are the first
    ``round(fraction * n)`` of a fixed order, so the 1% set is inside the 5% set, and so on."""
    n = len(answers["wm"])
    order = np.random.default_rng(12345).permutation(n)
    n_wm = round(fraction * n)
    wm_set = set(order[:n_wm].tolist())
    out = []
    for i in range(n):
        rec = answers["wm" if i in wm_set else "clean"][i]
        out.append((rec["prompt_ids"], rec["completion_ids"]))
    return out, n_wm


def train_finetuned(pairs: list[tuple[list[int], list[int]]], cfg: Config, *, seed: int,
                    out_dir: Path, eos_id: int = 2) -> dict[str, Any]:
    """Fine-tune the embedded SmolLM2-135M-Instruct on ``pairs``
    (:func:`distillmark.verify.lab.train_transformer_student`: transformers' Trainer, loss on
    the answers; every weight, or LoRA adapters of rank ``lora_rank`` merged when saved)."""
    from distillmark.verify.lab import train_transformer_student

    return train_transformer_student(
        pairs, out_dir, base=teacher_model_dir(),
        lora_rank=cfg.lora_rank if cfg.student == "lora" else None, epochs=cfg.ft_epochs,
        lr=cfg.ft_lr, batch_size=cfg.train_batch, max_len=cfg.seq_len, seed=seed,
        eos_id=eos_id, threads=cfg.threads)


def train_bigram(pairs: list[tuple[list[int], list[int]]], cfg: Config, *, seed: int,
                 out_dir: Path, eos_id: int = 2) -> dict[str, Any]:
    """Train a neural bigram student (:func:`distillmark.verify.lab.train_bigram_student`,
    rank ``d_model``, ``steps`` full-batch Adam steps at 10x the transformer's learning rate)
    and save it as a Hugging Face model in ``out_dir``."""
    from distillmark.verify.lab import train_bigram_student

    return train_bigram_student(pairs, out_dir, d_model=cfg.d_model, steps=cfg.steps,
                                lr=10 * cfg.lr, seed=seed, tokenizer_dir=teacher_model_dir(),
                                eos_id=eos_id, threads=cfg.threads)


def teacher_model_dir() -> Path:
    """The transformers copy of the embedded model (converted once, cached)."""
    from distillmark.verify.lab import default_tokenizer_dir

    return default_tokenizer_dir()


def student(answers: dict[str, list[dict[str, Any]]], fraction: float, cfg: Config, *,
            seed: int = 0) -> tuple[Path, dict[str, Any]]:
    """The trained student of ``fraction`` (cached on disk by its configuration)."""
    tag = hashlib.sha256(json.dumps({"teacher": cfg.teacher_tag(), "n": cfg.n_train,
                                     "f": fraction, "seed": seed, "kind": cfg.student,
                                     "d": cfg.d_model, "steps": cfg.steps, "lr": cfg.lr,
                                     "e": cfg.ft_epochs, "ft_lr": cfg.ft_lr,
                                     "r": cfg.lora_rank, "b": cfg.train_batch,
                                     "len": cfg.seq_len},
                                    sort_keys=True).encode()).hexdigest()[:12]
    out = OUT / "students" / f"f{fraction:g}-s{seed}-{tag}"
    info_file = out / "distill_train.json"
    pairs, n_wm = corpus(answers, fraction)
    if not info_file.is_file():
        log(f"student f={fraction:g} seed={seed}: training on {len(pairs)} answers "
            f"({n_wm} watermarked)")
        train = train_bigram if cfg.student == "bigram" else train_finetuned
        info = train(pairs, cfg, seed=seed, out_dir=out)
        log(f"student f={fraction:g} seed={seed}: {info['steps']} steps in "
            f"{info['train_s']:.0f} s, loss {info['final_loss']:.2f}")
    info = json.loads(info_file.read_text())
    info["n_wm_answers"] = n_wm
    info["wm_tokens"] = sum(len(c) for (_, c), i in zip(pairs, range(len(pairs)))
                            if corpus_is_wm(answers, fraction, i))
    return out, info


def corpus_is_wm(answers: dict[str, list[dict[str, Any]]], fraction: float, i: int) -> bool:
    n = len(answers["wm"])
    order = np.random.default_rng(12345).permutation(n)
    return i in set(order[:round(fraction * n)].tolist())


# --------------------------------------------------------------------------------------------
# The two tests


def student_answers(model_dir: Path, prompts: list[str], cfg: Config, *, seed: int = 0
                    ) -> list[dict[str, Any]]:
    """The student's answers to ``prompts`` (sampled at temperature 1, no watermark), cached."""
    cache = model_dir / f"answers-{len(prompts)}-{cfg.closed_max_new}-{seed}.json"
    if cache.is_file():
        return json.loads(cache.read_text())  # type: ignore[no-any-return]
    import torch

    from distillmark.watermark import hf

    torch.set_num_threads(cfg.threads)
    lm = hf.load_model(model_dir)
    outs = lm.generate(prompts, scheme=None, max_new_tokens=cfg.closed_max_new,
                       temperature=1.0, batch_size=200, seed=seed)
    recs = [{"prompt": o.prompt, "prompt_ids": list(o.prompt_ids),
             "completion_ids": list(o.completion_ids)} for o in outs]
    _write_atomic(cache, json.dumps(recs))
    return recs


def closed_model_probe(model_dir: Path, prompts: list[str], spec: Any, cfg: Config, *,
                       label: str = "probe") -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The closed-model step through the product: serve the student on loopback and probe it.

    The student (a Hugging Face directory) is loaded by the transformers engine and served by
    :func:`distillmark.watermark.serve.create_app` without a watermark on a free loopback
    port; :func:`distillmark.verify.probe.probe` asks it every prompt, ``closed_samples``
    answers per request, all requests at once (the server generates up to ``closed_batch``
    answers in one engine call). Answers are cached in the student's directory (the probe's
    own cache), so a rerun asks nothing; the port of the last run is reused when free, since
    the cache is keyed by the endpoint.

    Returns the probe's result as a dict (``queries`` = answers scored, ``requests`` = HTTP
    requests of this run, ``seconds``) and the ``(prompt, answer)`` pairs, read back from the
    cache with a budget of zero requests (re-scoring with other keys never asks again).
    """
    import torch

    from distillmark.verify.probe import SamplingParams, fetch_answers, probe
    from distillmark.watermark import hf
    from distillmark.watermark.serve import ServeConfig, create_app, start_server

    torch.set_num_threads(cfg.threads)
    k = cfg.closed_samples
    cache = model_dir / f"{label}-{len(prompts)}x{k}-{cfg.closed_max_new}"
    port_file = model_dir / "probe-port"
    lm = hf.load_model(model_dir)
    name = "student"
    conf = ServeConfig(model_name=name, spec=None, max_batch=cfg.closed_batch, max_n=k,
                       default_max_tokens=cfg.closed_max_new)
    sampling = SamplingParams(max_tokens=cfg.closed_max_new, temperature=1.0)
    with start_server(create_app(lm, conf), port=_reusable_port(port_file)) as server:
        port_file.write_text(str(server.port))
        t0 = time.perf_counter()
        res = probe(server.url, name, spec, prompts, sampling=sampling, samples=k, cache=cache,
                    concurrency=len(prompts), timeout=3600.0)
        seconds = time.perf_counter() - t0
        got = fetch_answers(server.url, name, prompts, sampling=sampling, samples=k,
                            cache=cache, max_requests=0)
    if got.stats.n_failed:
        raise RuntimeError(f"{got.stats.n_failed} probe answers are missing from {cache}")
    d = _closed_dict(res)
    d.update(queries=res.answers.n_answers, requests=res.queries.n_queries, seconds=seconds)
    return d, got.pairs


def _reusable_port(record: Path) -> int:
    """The loopback port recorded in ``record`` if it is free now, else 0 (any free port)."""
    import socket

    try:
        port = int(record.read_text())
    except (OSError, ValueError):
        return 0
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def answer_records(pairs: list[tuple[str, str]], spec: Any) -> list[dict[str, Any]]:
    """Probe answers as token-id records (``prompt``, ``prompt_ids`` = [], ``completion_ids``:
    the answer re-tokenised with the key's tokenizer), for the answer-count curve and the
    audit's contexts."""
    from distillmark.watermark.tokenizer import tokenizer_for

    tok = tokenizer_for(spec.tokenizer)
    enc = tok.encode_batch_fast([a for _, a in pairs], add_special_tokens=False)
    return [{"prompt": p, "prompt_ids": [], "completion_ids": list(e.ids)}
            for (p, _), e in zip(pairs, enc)]


def probe_curve(pairs: list[tuple[str, str]], spec: Any, checkpoints: tuple[int, ...]
                ) -> list[dict[str, Any]]:
    """The probe's test on the first n answers (in the order asked), for each n."""
    from distillmark.verify.probe import score_answers

    return [dict(_closed_dict(score_answers(pairs[:n], spec)), queries=n)
            for n in checkpoints if n <= len(pairs)]


def closed_model_test(answers: list[dict[str, Any]], spec: Any, *,
                      checkpoints: tuple[int, ...] = ()) -> dict[str, Any]:
    """Black-box test of a suspect from its answers (``verify.aggregate``): every answer scored
    with the key, tuples deduplicated across all answers, windows reaching into the prompt
    excluded (answers are pooled without their prompt, so only answer tokens with ``h`` answer
    tokens before them are scored), one exact test.

    The in-process path (``--closed direct``); the default is :func:`closed_model_probe`.
    ``checkpoints``: also report the p-value after the first n answers, for each n.
    """
    from distillmark.verify.aggregate import AggregateAccumulator
    from distillmark.watermark import scheme_for

    acc = AggregateAccumulator(scheme_for(spec))
    curve = []
    for n, a in enumerate(answers, 1):
        acc.add(np.asarray(a["completion_ids"], dtype=np.int64))
        if n in checkpoints:
            curve.append(_closed_dict(acc.result()))
    out = _closed_dict(acc.result())
    out["curve"] = curve
    return out


def _closed_dict(r: Any) -> dict[str, Any]:
    d: dict[str, Any] = r.to_dict()
    d["queries"] = d["n_texts"]
    return d


def queries_to_reach(answers: list[dict[str, Any]], spec: Any, log10_target: float
                     ) -> int | None:
    """Fewest answers (in the order asked) whose pooled closed-model p-value falls below
    ``10**log10_target``; None if all of them do not suffice."""
    from distillmark.verify.aggregate import AggregateAccumulator
    from distillmark.watermark import scheme_for

    acc = AggregateAccumulator(scheme_for(spec))
    for n, a in enumerate(answers, 1):
        acc.add(np.asarray(a["completion_ids"], dtype=np.int64))
        if acc.result().log10_pvalue < log10_target:
            return n
    return None


#: Audit variants recorded per student: (name, audit_readings keyword arguments).
AUDIT_VARIANTS = (
    ("coverage", {"mode": "distribution", "weighting": "coverage"}),
    ("distribution", {"mode": "distribution", "weighting": "window"}),
    ("distribution-context", {"mode": "distribution", "weighting": "context"}),
    ("reading", {"mode": "reading", "reading_k": 1}),
    ("reading-top4", {"mode": "reading", "reading_k": 4}),
    ("reading-learned", {"mode": "reading", "reading_k": 64, "min_prob": 0.03}),
)


def open_model_test(model_dir: Path, contexts: list[np.ndarray], specs: list[Any],
                    cfg: Config) -> list[dict[str, Any]]:
    """``distillmark.verify.audit`` on the saved weights: one reading of the model over
    ``contexts``, then every key and every variant of :data:`AUDIT_VARIANTS` tested on it."""
    import torch

    from distillmark.verify import audit as au
    from distillmark.watermark import scheme_for

    torch.set_num_threads(cfg.threads)
    lm = au.load_suspect(str(model_dir), specs[:1])
    readings = au.read_model(lm, contexts, top_k=cfg.audit_top_k, batch_size=16)
    return [{name: au.audit_readings(readings, scheme_for(s), **kw)
             for name, kw in AUDIT_VARIANTS} for s in specs]


ANCHORS = {  # Sander et al. 2024, unsupervised, as quoted in the issue
    0.05: ("p < 1e-5", "not reached (needs >= 10%)"),
    0.10: ("p < 1e-10", "p < 1e-5"),
}


def run(cfg: Config) -> dict[str, Any]:
    from distillmark.verify.probe import score_answers

    t_start = time.perf_counter()
    answers = teacher_answers(cfg)
    t_teacher = time.perf_counter() - t_start
    spec = teacher_spec(cfg)
    teacher_check = {k: closed_model_test(answers[k], spec) for k in ("wm", "clean")}
    log(f"teacher answers: watermarked green share {teacher_check['wm']['score_mean']:.3f} "
        f"(log10 p {teacher_check['wm']['log10_pvalue']:.0f}), clean "
        f"{teacher_check['clean']['score_mean']:.3f}")
    held = prompt_set()[cfg.n_train:cfg.n_train + cfg.n_heldout][:cfg.closed_queries]
    logged = prompt_set()[:cfg.n_train][:cfg.closed_train_queries]
    null_specs = [teacher_spec(cfg, null_secret(i)) for i in range(cfg.null_keys)]
    rows: list[dict[str, Any]] = []
    for f in cfg.fractions:
        for seed in range(cfg.null_seeds if f == 0.0 else 1):
            t0 = time.perf_counter()
            mdir, info = student(answers, f, cfg, seed=seed)
            marks = (10, 25, 50, 100, 200, 400, 800, 1600)
            pairs: list[tuple[str, str]] = []
            if cfg.closed_via == "probe":
                closed, pairs = closed_model_probe(mdir, held, spec, cfg)
                closed["curve"] = probe_curve(pairs, spec, marks)
                if logged:
                    closed["training_prompts"] = closed_model_probe(
                        mdir, logged, spec, cfg, label="probe-train")[0]
                ans = answer_records(pairs, spec)
            else:
                asked = [p for p in held for _ in range(cfg.closed_samples)]
                ans = student_answers(mdir, asked, cfg, seed=seed)
                closed = closed_model_test(ans, spec, checkpoints=marks)
            # Contexts: the student's own answers (under H0 they do not depend on the key),
            # read where its sampling went, as the black-box test sees it.
            ctx = [np.asarray(a["prompt_ids"] + a["completion_ids"], dtype=np.int64)
                   for a in ans[:cfg.audit_contexts]]
            opens = open_model_test(mdir, ctx, [spec] + (null_specs if f == 0.0 else []), cfg)
            row: dict[str, Any] = {
                "fraction": f, "seed": seed, "student": info, "closed": closed,
                "open": {m: r.to_dict() for m, r in opens[0].items()},
                "contexts": len(ctx),
            }
            if f == 0.0:
                # the same answers re-scored with keys the student never saw: no new query
                row["null_closed_log10_p"] = (
                    [score_answers(pairs, s).log10_pvalue for s in null_specs]
                    if cfg.closed_via == "probe" else
                    [closed_model_test(ans, s)["log10_pvalue"] for s in null_specs])
                row["null_open_log10_p"] = {m: [o[m].log10_pvalue for o in opens[1:]]
                                            for m in opens[0]}
            if f == 1.0:
                row["queries_to_1e-6"] = queries_to_reach(ans, spec, -6.0)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            log(f"f={f:g} seed={seed}: closed log10 p {closed['log10_pvalue']:.1f} "
                f"({closed['n_scored']} tuples from {closed['queries']} answers), open "
                f"coverage {opens[0]['coverage'].log10_pvalue:.1f}, reading "
                f"{opens[0]['reading'].log10_pvalue:.1f} ({row['seconds']:.0f} s)")
    return {"config": asdict(cfg), "teacher_seconds": t_teacher,
            "wall_seconds": time.perf_counter() - t_start,
            "teacher_check": teacher_check, "rows": rows,
            "load_average": os.getloadavg()}


def table(res: dict[str, Any]) -> str:
    lines = [("| watermarked fraction | wm answers (tokens) | closed: log10 p (tuples, answers) "
             "| closed, training prompts: log10 p | open: audit (coverage weights) "
             "| open, distribution (window / context weights) "
             "| open, reading (argmax / top-4 / p >= 0.03) | Sander et al. open / closed |"),
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        f = r["fraction"]
        a = ANCHORS.get(f, ("", ""))
        c, o = r["closed"], r["open"]
        seed = f" (seed {r['seed']})" if f == 0.0 and res["config"]["null_seeds"] > 1 else ""
        tr = c.get("training_prompts")
        logged = f"{tr['log10_pvalue']:.1f}" if tr else "-"
        lines.append(
            f"| {f:.0%}{seed} | {r['student']['n_wm_answers']} ({r['student']['wm_tokens']:,}) "
            f"| {c['log10_pvalue']:.1f} ({c['n_scored']:,}, {c['queries']}) | {logged} "
            f"| {o['coverage']['log10_pvalue']:.1f} "
            f"| {o['distribution']['log10_pvalue']:.1f} / "
            f"{o['distribution-context']['log10_pvalue']:.1f} "
            f"| {o['reading']['log10_pvalue']:.1f} / {o['reading-top4']['log10_pvalue']:.1f} / "
            f"{o['reading-learned']['log10_pvalue']:.1f} "
            f"| {a[0]} / {a[1]} |")
    nulls_c = [x for r in res["rows"] if r["fraction"] == 0.0 for x in r["null_closed_log10_p"]]
    nulls_o = [x for r in res["rows"] if r["fraction"] == 0.0
               for v in r["null_open_log10_p"].values() for x in v]
    q = next((r.get("queries_to_1e-6") for r in res["rows"] if r["fraction"] == 1.0), None)
    lines += ["",
              (f"0% students against {len(nulls_c)} keys they never saw: smallest p closed "
              f"1e{min(nulls_c):.2f}, open 1e{min(nulls_o):.2f} ({len(nulls_o)} open tests); "
              f"below 1e-3: {sum(x < -3 for x in nulls_c + nulls_o)}."),
              f"Closed-model answers for p < 1e-6 on the 100% student: {q}.",
              _closed_line(res),
              (f"Wall time {res['wall_seconds'] / 60:.1f} min (teacher "
              f"{res['teacher_seconds'] / 60:.1f} min), load average "
              f"{', '.join(f'{x:.1f}' for x in res['load_average'])}.")]
    return "\n".join(lines)


def _closed_line(res: dict[str, Any]) -> str:
    cfg = res["config"]
    rows = res["rows"]
    if cfg.get("closed_via", "direct") != "probe":
        return "Closed-model answers generated in process (--closed direct)."
    secs = [r["closed"]["seconds"] for r in rows]
    reqs = sum(r["closed"]["requests"] for r in rows)
    return (f"Closed-model step: each student served on loopback and probed with "
            f"{cfg['closed_queries']} prompts x {cfg['closed_samples']} samples per request; "
            f"{reqs} requests in all this run (0 when the probe's cache holds the answers), "
            f"probe {min(secs):.0f}-{max(secs):.0f} s per student; null keys re-score the "
            "cached answers without a request.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few-minute smoke run")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply data and student size")
    ap.add_argument("--stage", choices=("teacher", "all"), default="all")
    ap.add_argument("--threads", type=int, default=Config.threads, help="torch threads")
    ap.add_argument("--lists", type=int, default=Config.lists,
                    help="green lists of the teacher's key (default: keygen's, 65,536)")
    ap.add_argument("--student", choices=("bigram", "transformer", "lora"), default="bigram",
                    help="bigram: from scratch; transformer / lora: SmolLM2 fine-tuned")
    ap.add_argument("--closed", choices=("probe", "direct"), default="probe",
                    help="closed-model step: serve + probe the student on loopback (default), "
                         "or generate its answers in process")
    ap.add_argument("--engine", choices=("transformers", "llama.cpp", "auto"),
                    default="transformers",
                    help="the teacher's engine (llama.cpp: faster at batch 1 on CPU; answers "
                         "are cached per engine)")
    ap.add_argument("--n-train", type=int, default=None,
                    help="training prompts (default: the configuration's)")
    ap.add_argument("--fractions", default=None,
                    help="watermarked fractions, comma-separated (default: the configuration's)")
    args = ap.parse_args()
    quick = QUICK if args.student == "bigram" else QUICK_FINETUNED
    cfg = replace(quick if args.quick else Config(), threads=args.threads,
                  student=args.student, engine=args.engine, closed_via=args.closed,
                  lists=args.lists)
    if args.n_train is not None:
        cfg = replace(cfg, n_train=args.n_train)
    if args.fractions is not None:
        cfg = replace(cfg, fractions=tuple(float(f) for f in args.fractions.split(",")))
    if args.scale != 1.0:
        s = args.scale
        cfg = replace(cfg, n_train=int(cfg.n_train * s), closed_queries=int(cfg.closed_queries * s),
                      n_heldout=int(cfg.n_heldout * s), d_model=int(cfg.d_model * math.sqrt(s)),
                      audit_contexts=int(cfg.audit_contexts * s))
    log(f"config: {asdict(cfg)}")
    t0 = time.perf_counter()
    answers = teacher_answers(cfg)
    t_teacher = time.perf_counter() - t0
    log(f"teacher: {sum(len(r['completion_ids']) for r in answers['wm'])} watermarked, "
        f"{sum(len(r['completion_ids']) for r in answers['clean'])} clean tokens")
    if args.stage == "teacher":
        return
    res = run(cfg)  # finds the answers cached: the teacher's time is this stage's
    res["teacher_seconds"] = t_teacher
    res["wall_seconds"] += t_teacher
    name = ("quick" if args.quick else f"scale{args.scale:g}") + (
        f"-n{cfg.n_train}" if args.n_train is not None else "") + (
        f"-{cfg.student}" if cfg.student != "bigram" else "") + (
        f"-lists{cfg.lists}" if cfg.lists != Config.lists else "")
    _write_atomic(OUT / f"results-{name}.json", json.dumps(res, indent=1, default=str))
    print(table(res))


if __name__ == "__main__":
    main()

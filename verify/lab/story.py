"""The distillation story: was a model trained on our answers? Both cases, end to end.

A teacher answers prompts with and without the watermark; a bigram student is trained on each
set of answers (:mod:`.students`); each student is served without a watermark by
distillmark's own OpenAI-compatible server on a loopback port and probed with held-out
prompts (the closed-model test), and its weights are audited (the open-model test). The
student trained on watermarked answers should be found by both tests, the control by neither.

:func:`distillation_story` takes the prompts and every setting; :func:`demo_story` is the
story ``distillmark demo`` tells: it picks the tokenizer folder the students inherit and the
built-in prompts, around the teacher answers the demo already has. Needs the ``hf`` and
``serve`` extras (imported when a story is told).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillmark.watermark.errors import InputError

from ..decision import DEFAULT_ALPHA
from ..prompts import builtin_prompts
from .students import default_tokenizer_dir, train_bigram_student

if TYPE_CHECKING:
    from distillmark.watermark.engine_types import Completion, Generator
    from distillmark.watermark.keys import WatermarkSpec

    from ..audit import AuditResult
    from ..probe import ProbeResult

__all__ = ["StoryResult", "StudentResult", "demo_story", "distillation_story"]


@dataclass(frozen=True)
class StudentResult:
    """One student of :func:`distillation_story`: what it learned from, and what the two tests
    found.

    Attributes:
        name: the model id it was served under (``student-marked``, ``student-control``).
        marked: trained on the teacher's watermarked answers (else on its unwatermarked ones).
        n_train: teacher answers it was trained on.
        train: :func:`~.students.train_bigram_student`'s info (``train_s``, ``final_loss``,
            ...).
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
    2. Two bigram students are trained from scratch
       (:func:`~.students.train_bigram_student`): the *marked* one on the watermarked answers,
       the *control* on the unwatermarked ones.
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

    from .. import audit as au
    from ..probe import SamplingParams, probe

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


def demo_story(teacher: Generator, spec: WatermarkSpec, workdir: str | Path,
               answers: tuple[Sequence[Completion], Sequence[Completion]], *,
               train_answers: int, probe_prompts: int, samples: int = 4,
               max_new_tokens: int = 128, temperature: float = 1.0, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> StoryResult:
    """The story of ``distillmark demo``: :func:`distillation_story` around the teacher's
    (watermarked, unwatermarked) ``answers`` the demo already has.

    Each student learns from ``train_answers`` answers: the ones given, then answers to further
    built-in prompts; the next ``probe_prompts`` built-in prompts are the held-out probe. The
    students inherit the teacher's tokenizer files: a model directory's own, or, for a GGUF
    model (the embedded one by default), those of its transformers copy. ``workdir`` receives
    the students; ``progress(message)`` is told of each stage.
    """
    source = Path(teacher.source)
    if teacher.engine == "transformers" and (source / "tokenizer.json").is_file():
        tok_dir = source  # a model directory: the teacher's own tokenizer files
    else:  # a GGUF model (the embedded one by default): its transformers copy holds them
        tok_dir = default_tokenizer_dir(source if source.suffix == ".gguf" else None)
    extra = train_answers - len(answers[0])
    prompts = builtin_prompts(extra + probe_prompts)
    return distillation_story(teacher, spec, prompts[:extra], prompts[extra:], workdir,
                              answers=(answers[0], answers[1]), tokenizer_dir=tok_dir,
                              max_new_tokens=max_new_tokens, temperature=temperature,
                              seed=seed, samples=samples, progress=progress)

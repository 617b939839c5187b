"""The black-box test of a suspect model: ask it many prompts through an OpenAI-compatible
endpoint and test all its answers together for the watermark ("closed-model radioactivity",
Sander et al. 2024).

Two parts, kept apart so that experiments can score answers they got by other means:

- :func:`score_answers` (pure): ``(prompt, answer)`` pairs -> :class:`AnswersResult`. Answers
  are re-tokenised with the spec's tokenizer whatever tokenizer the suspect uses (the test is
  exact for any text that does not depend on the key); the first ``h`` tokens of each answer
  have no full window in the answer and are not scored (the endpoint's chat template, unknown
  here, stood before them); tuples that also occur in a prompt are left out (the suspect may
  copy its prompt, and prompts are not evidence); the distinct tuples of all answers are pooled
  into one exact test (:class:`~distillmark.verify.aggregate.AggregateAccumulator`), optionally
  restricted to the tuples of a reference corpus (``reference``: the "supervised" filter). The
  test stays exact only if the reference does not depend on the key: a corpus *watermarked
  with the key* is richer in green tuples than chance, and a clean model that shares its
  language reuses them (measured: the embedded SmolLM2 served without the watermark, filtered
  on its own watermarked answers, scored p = 2.5e-7). Such a reference is refused unless
  ``allow_marked_reference``; build it from the teacher's answers generated without the
  watermark instead.
- :func:`fetch_answers` (HTTP, needs the ``serve`` extra for httpx): concurrent queries
  (``samples`` answers per prompt in one request, OpenAI's ``n``),
  retries with exponential backoff on 429, 5xx, timeouts and dropped connections, a request
  budget, and an on-disk cache of answers (:class:`ResponseCache`, one file per answer, written
  atomically) so that an interrupted probe resumes without paying for any query twice.

:func:`probe` does both.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distillmark.watermark.errors import DistillmarkError, InputError, ParameterError
from distillmark.watermark.keys import WatermarkSpec
from distillmark.watermark.registry import Scheme

from .aggregate import AggregateAccumulator, AggregateResult, TupleSet
from .decision import DEFAULT_ALPHA, DEFAULT_MIN_SCORED, WrappedDecision
from .detect import Detector
from .grouping import batch_tuple_keys
from .nulls import run_test

__all__ = [
    "AnswersResult",
    "EndpointError",
    "FetchResult",
    "ProbeResult",
    "QueryStats",
    "ResponseCache",
    "SamplingParams",
    "chat_completions_url",
    "fetch_answers",
    "probe",
    "read_reference",
    "reference_from_texts",
    "reference_log10_pvalue",
    "score_answers",
]

_CACHE_VERSION = 1


class EndpointError(DistillmarkError, ConnectionError):
    """The endpoint cannot be used: unreachable, refusing the key, unknown model, broken."""


# --------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class AnswersResult(WrappedDecision):
    """The pooled exact test over a suspect's answers.

    Attributes:
        aggregate: the test on the distinct tuples of all answers
            (:class:`~distillmark.verify.aggregate.AggregateResult`: ``statistic``,
            ``pvalue``, ``log10_pvalue``, ``n_scored``, ...).
        n_answers: answers given (empty ones included).
        n_empty: answers with no text (nothing to score).
        n_prompt_excluded: scorable tuples left out because the same tuple occurs in a prompt.
        reference_log10_pvalue: log10 p-value of the reference corpus's own tuples tested for
            the key (0.0 without a reference); far below 0, the reference carries the
            watermark and the filtered test is not exact.
    """

    aggregate: AggregateResult
    n_answers: int
    n_empty: int
    n_prompt_excluded: int
    reference_log10_pvalue: float = 0.0

    nested_field: ClassVar[str] = "aggregate"


def _encode_all(detector: Detector, texts: Sequence[str]) -> list[np.ndarray]:
    if not texts:
        return []
    enc = detector.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in enc]


def _as_detector(spec: WatermarkSpec | Detector, tokenizer: str | Path | None) -> Detector:
    if isinstance(spec, Detector):
        return spec
    if not isinstance(spec, WatermarkSpec):
        raise ParameterError(f"`spec` must be a WatermarkSpec or a Detector, got "
                             f"{type(spec).__name__}")
    return Detector(spec, tokenizer=tokenizer)


def score_answers(pairs: Iterable[tuple[str, str]], spec: WatermarkSpec | Detector, *,
                  reference: TupleSet | None = None, min_scored: int = DEFAULT_MIN_SCORED,
                  exclude_prompts: bool = True, effect: float | None = None,
                  tokenizer: str | Path | None = None, allow_marked_reference: bool = False,
                  reference_alpha: float = 1e-3) -> AnswersResult:
    """Test ``(prompt, answer)`` pairs together for ``spec``'s watermark.

    Args:
        pairs: the prompts asked and the suspect's answers (text; any tokenizer made them).
        spec: the key (or a :class:`~distillmark.verify.detect.Detector` already built).
        reference: keep only tuples in this set (:func:`read_reference`); it must not be
            built from the answers tested, nor depend on the key (see the module's notes).
        allow_marked_reference: accept a reference whose own tuples test as watermarked at
            ``reference_alpha`` (the p-value is then not exact: biased toward "watermarked").
        min_scored: fewer distinct scored tuples than this is "insufficient evidence".
        exclude_prompts: leave out tuples that occur in any prompt (keep it on).
        effect: standardised per-tuple effect assumed by the power statement.
        tokenizer: path replacing the tokenizer recorded in the spec (same fingerprint).
    """
    detector = _as_detector(spec, tokenizer)
    scheme = detector.scheme
    ref_log10 = 0.0
    if reference is not None:
        ref_log10 = reference_log10_pvalue(reference, scheme)
        if ref_log10 < math.log10(reference_alpha) and not allow_marked_reference:
            raise InputError(
                f"the reference corpus carries this key's watermark (p = 1e{ref_log10:.1f}): "
                "filtering on its tuples finds the watermark in models that never saw it; "
                "build the reference from the teacher's answers generated without the "
                "watermark (generate --no-watermark --json), or accept a p-value that is not "
                "exact with --allow-marked-reference")
    prompts: list[str] = []
    answers: list[str] = []
    n_answers = 0
    for item in pairs:
        try:
            prompt, answer = item
        except (TypeError, ValueError):
            raise InputError("each pair must be (prompt, answer)") from None
        if not isinstance(prompt, str) or not isinstance(answer, str):
            raise InputError(f"prompts and answers must be str, got {type(prompt).__name__} "
                             f"and {type(answer).__name__}")
        n_answers += 1
        prompts.append(prompt)
        if answer.strip():
            answers.append(answer)
    acc = AggregateAccumulator(scheme)
    seqs = _encode_all(detector, answers)
    keys, _ = batch_tuple_keys(seqs, scheme)
    n_excluded = 0
    if exclude_prompts and keys.size:
        in_prompts = TupleSet.for_scheme(scheme)
        distinct = sorted({p for p in prompts if p.strip()})
        p_seqs = _encode_all(detector, distinct)
        if p_seqs:
            in_prompts.add(batch_tuple_keys(p_seqs, scheme)[0])
        drop = in_prompts.contains(keys)
        n_excluded = int(drop.sum())
        keys = keys[~drop]
    acc.add_keys(keys, n_texts=len(seqs), n_tokens=int(sum(s.size for s in seqs)))
    result = acc.result(reference=reference, min_scored=min_scored, effect=effect)
    return AnswersResult(aggregate=result, n_answers=n_answers,
                         n_empty=n_answers - len(answers), n_prompt_excluded=n_excluded,
                         reference_log10_pvalue=ref_log10)


def reference_log10_pvalue(reference: TupleSet, scheme: Scheme) -> float:
    """log10 p-value of the reference's distinct tuples tested for ``scheme``'s key: far
    below 0 means the reference was written with the key (and cannot filter exactly)."""
    keys = reference.keys()
    if keys.size == 0:
        return 0.0
    return float(run_test(scheme.test, scheme.key_scores(keys), scheme.test_params).log10_pvalue)


def reference_from_texts(texts: Iterable[str], spec: WatermarkSpec | Detector, *,
                         tokenizer: str | Path | None = None) -> TupleSet:
    """The distinct tuples of reference texts (the supervised filter; generated without the
    watermark, see :func:`read_reference`)."""
    detector = _as_detector(spec, tokenizer)
    ref = TupleSet.for_scheme(detector.scheme)
    batch: list[str] = []
    for t in texts:
        if t.strip():
            batch.append(t)
        if len(batch) >= 4096:
            ref.add(batch_tuple_keys(_encode_all(detector, batch), detector.scheme)[0])
            batch = []
    if batch:
        ref.add(batch_tuple_keys(_encode_all(detector, batch), detector.scheme)[0])
    return ref


def read_reference(path: str | Path, spec: WatermarkSpec | Detector, *,
                   field: str = "text", tokenizer: str | Path | None = None) -> TupleSet:
    """The tuples of a reference corpus — the answers a suspect could have learned from,
    generated *without* the watermark (a marked corpus biases the test; see
    :func:`score_answers`): JSON Lines whose ``field`` holds a text (as ``distillmark generate
    --json`` writes), or any other file read as one text.

    Errors name the file and line.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: no such reference file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, not a reference file") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot read reference file ({exc.strerror})") from None
    texts: list[str] = []
    if p.suffix == ".jsonl":
        for no, line_b in enumerate(raw.splitlines(), 1):
            if not line_b.strip():
                continue
            try:
                rec = json.loads(line_b.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InputError(f"{p}:{no}: not valid UTF-8 (byte {exc.start})") from None
            except json.JSONDecodeError as exc:
                raise InputError(f"{p}:{no}: invalid JSON ({exc.msg} at column {exc.colno})"
                                 ) from None
            if not isinstance(rec, dict) or not isinstance(rec.get(field), str):
                raise InputError(f"{p}:{no}: record has no {field!r} string field")
            texts.append(rec[field])
    else:
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InputError(f"{p}: not valid UTF-8 (byte {exc.start})") from None
    ref = reference_from_texts(texts, spec, tokenizer=tokenizer)
    if len(ref) == 0:
        raise InputError(f"{p}: the reference corpus holds no scorable text")
    return ref


# --------------------------------------------------------------------------------------------
# Querying


@dataclass(frozen=True)
class SamplingParams:
    """Sampling parameters sent with every query (part of the cache key)."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ParameterError(f"`max_tokens` must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ParameterError(f"`temperature` must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ParameterError(f"`top_p` must be in (0, 1], got {self.top_p}")

    def body(self, index: int) -> dict[str, Any]:
        d: dict[str, Any] = {"max_tokens": self.max_tokens, "temperature": self.temperature,
                             "top_p": self.top_p}
        if self.seed is not None:
            d["seed"] = self.seed + index
        return d


@dataclass(frozen=True)
class QueryStats:
    """What answering the prompts cost.

    Attributes:
        n_prompts: prompts to answer.
        n_samples: answers wanted per prompt (``n_prompts * n_samples`` in all).
        n_queries: HTTP requests sent (every retry counts: the budget is of requests; one
            request asks for all the samples of a prompt at once).
        n_fetched: answers received over HTTP in this run.
        n_cached: answers read from the cache (paid for by an earlier run).
        n_retries: requests repeated after a 429, a 5xx, a timeout or a dropped connection.
        n_failed: answers wanted but not obtained (refused as bad requests, or the budget ran
            out).
        budget_exhausted: the request budget stopped the probe before every answer was in.
    """

    n_prompts: int
    n_queries: int
    n_fetched: int
    n_cached: int
    n_retries: int
    n_failed: int
    budget_exhausted: bool
    n_samples: int = 1

    @property
    def n_wanted(self) -> int:
        """Answers asked for: ``n_prompts * n_samples``."""
        return self.n_prompts * self.n_samples

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FetchResult:
    """Answers of an endpoint: one ``(prompt, answer)`` pair per answer obtained, prompt by
    prompt in the order asked, the samples of a prompt in order."""

    pairs: list[tuple[str, str]]
    stats: QueryStats
    first_error: str = ""


def chat_completions_url(endpoint: str) -> str:
    """The chat-completions URL of an endpoint given as a server, ``…/v1`` or the full URL."""
    url = endpoint.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"--endpoint must be an http:// or https:// URL, got {endpoint!r}")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


class ResponseCache:
    """Answers on disk, one JSON file per (endpoint, model, prompt, sample index, sampling,
    API key).

    Each file is written to a temporary name and renamed, so a probe killed at any moment
    leaves either a whole answer or none. The API key enters only the file name's hash (answers
    differ between accounts); it is never written.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise InputError(f"--cache {self.directory} is not a directory")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create cache directory {self.directory}: "
                             f"{exc.strerror}") from None

    @staticmethod
    def key(url: str, model: str, prompt: str, params: dict[str, Any],
            api_key: str | None) -> str:
        who = hashlib.sha256(api_key.encode("utf-8")).hexdigest() if api_key else ""
        material = json.dumps([_CACHE_VERSION, url, model, prompt, params, who],
                              sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            warnings.warn(f"cache file {path} is unreadable; asking again", stacklevel=2)
            return None
        if not isinstance(rec, dict) or not isinstance(rec.get("answer"), str):
            warnings.warn(f"cache file {path} is not an answer record; asking again",
                          stacklevel=2)
            return None
        return rec

    def put(self, key: str, record: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.directory.glob("*.json"))


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


class _BadRequest(Exception):
    pass


def _error_message(resp: Any) -> str:
    try:
        err = resp.json().get("error", {})
        msg = err.get("message") if isinstance(err, dict) else str(err)
    except Exception:  # noqa: BLE001 - any non-JSON body
        msg = None
    return str(msg or resp.text[:200] or resp.reason_phrase).splitlines()[0]


def _retry_after(resp: Any) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def fetch_answers(endpoint: str, model: str, prompts: Sequence[str], *,
                  api_key: str | None = None, sampling: SamplingParams | None = None,
                  samples: int = 1, concurrency: int = 4, max_requests: int | None = None,
                  cache: ResponseCache | str | Path | None = None, retries: int = 5,
                  timeout: float = 120.0, backoff: float = 0.5, max_backoff: float = 30.0,
                  progress: Callable[[int, int], None] | None = None) -> FetchResult:
    """Ask ``model`` at ``endpoint`` every prompt (one user message each) and collect answers.

    Args:
        endpoint: the server (``http://host:port``), its ``…/v1`` or the full
            ``…/v1/chat/completions`` URL.
        api_key: sent as ``Authorization: Bearer``.
        sampling: ``max_tokens``, ``temperature``, ``top_p``, ``seed`` (per prompt: seed + i).
        samples: answers wanted per prompt. All of a prompt's samples are asked in one request
            (OpenAI's ``n``); an endpoint that returns fewer choices is asked the missing ones
            one request each (seeded ones then carry ``seed + i + k * len(prompts)`` for the
            k-th sample, so that a seeded endpoint does not repeat itself). Each (prompt,
            sample) is cached on its own.
        concurrency: requests in flight at once.
        max_requests: most HTTP requests to send in this run, retries included (None: no
            limit); cached answers cost none.
        cache: directory (or :class:`ResponseCache`) of answers: read first, written as they
            come.
        retries: further attempts after a 429, a 5xx, a timeout or a dropped connection, with
            exponential backoff (``backoff * 2**k`` seconds, jittered, at most
            ``max_backoff``; a 429's ``Retry-After`` is honoured up to ``max_backoff``).
        progress: ``progress(done, total)`` in answers (``total = len(prompts) * samples``).

    Raises:
        EndpointError: the endpoint refused the API key or the model, or stayed unreachable
            (or kept failing) through every retry. Answers received before are in the cache.
    """
    try:
        import httpx
    except ImportError:  # pragma: no cover - exercised only without the extra
        from distillmark.watermark.errors import MissingDependencyError

        raise MissingDependencyError("probing an endpoint needs httpx (the 'serve' extra): "
                                     "pip install 'distillmark[serve]'") from None
    if not prompts:
        raise InputError("no prompts to ask")
    if samples < 1:
        raise ParameterError(f"`samples` must be >= 1, got {samples}")
    if concurrency < 1:
        raise ParameterError(f"`concurrency` must be >= 1, got {concurrency}")
    if max_requests is not None and max_requests < 0:
        raise ParameterError(f"`max_requests` must be >= 0, got {max_requests}")
    if retries < 0 or timeout <= 0 or backoff < 0:
        raise ParameterError(f"need retries >= 0, timeout > 0 and backoff >= 0, got {retries}, "
                             f"{timeout}, {backoff}")
    if not isinstance(model, str) or not model:
        raise InputError("the model name must be a non-empty string")
    url = chat_completions_url(endpoint)
    sampling = sampling or SamplingParams()
    store = ResponseCache(cache) if isinstance(cache, (str, Path)) else cache
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    n_prompts, total = len(prompts), len(prompts) * samples
    answers: list[list[str | None]] = [[None] * samples for _ in prompts]
    state = {"queries": 0, "fetched": 0, "cached": 0, "retries": 0, "rejected": 0, "done": 0}
    flags: dict[str, Any] = {"budget": False, "fatal": None, "first_error": ""}

    def params(i: int, k: int) -> dict[str, Any]:
        """Cache parameters of sample ``k`` of prompt ``i`` (sample 0: those of a one-answer
        probe, so that its cache serves a probe with more samples)."""
        d = sampling.body(i)
        if k:
            d["sample"] = k
        return d

    keys = [[ResponseCache.key(url, model, p, params(i, k), api_key) for k in range(samples)]
            for i, p in enumerate(prompts)]
    todo: list[int] = []
    for i in range(n_prompts):
        for k in range(samples):
            rec = store.get(keys[i][k]) if store is not None else None
            if rec is not None:
                answers[i][k] = rec["answer"]
                state["cached"] += 1
                state["done"] += 1
        if any(a is None for a in answers[i]):
            todo.append(i)
    if progress is not None and state["done"]:
        progress(state["done"], total)
    rng = random.Random()

    async def ask(client: httpx.AsyncClient, i: int, n: int, k: int | None) -> list[str]:
        """One request for prompt ``i``: ``n`` choices, or (``k`` given) sample ``k`` alone."""
        body: dict[str, Any] = {"model": model,
                                "messages": [{"role": "user", "content": prompts[i]}],
                                **sampling.body(i)}
        if n > 1:
            body["n"] = n
        if k and sampling.seed is not None:
            body["seed"] = sampling.seed + i + k * n_prompts
        attempt = 0
        while True:
            if max_requests is not None and state["queries"] >= max_requests:
                flags["budget"] = True
                raise _BadRequest("the request budget is spent")
            state["queries"] += 1
            try:
                try:
                    resp = await client.post(url, json=body, headers=headers)
                except httpx.TimeoutException:
                    raise _Retryable(f"no answer within {timeout:g} s (timeout)") from None
                except httpx.TransportError as exc:
                    raise _Retryable(f"cannot reach {url}: {type(exc).__name__}"
                                     f"{': ' + str(exc) if str(exc) else ''}") from None
                status = resp.status_code
                if status == 200:
                    try:
                        data = resp.json()
                        choices = data["choices"]
                        if not isinstance(choices, list) or not choices:
                            raise TypeError
                        contents = [c["message"].get("content") for c in choices[:n]]
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        raise _Retryable("the endpoint sent a malformed answer (not an OpenAI "
                                         "chat completion)") from None
                    if any(c is not None and not isinstance(c, str) for c in contents):
                        raise _Retryable("the endpoint sent a malformed answer (content is "
                                         "not a string)")
                    return [c or "" for c in contents]
                msg = _error_message(resp)
                if status == 429 or status >= 500:
                    raise _Retryable(f"HTTP {status}: {msg}", _retry_after(resp))
                if status in (401, 403):
                    raise _Fatal(f"the endpoint refused the API key (HTTP {status}: {msg})")
                if status == 404:
                    raise _Fatal(f"HTTP 404 from {url}: {msg} (wrong --endpoint or --model?)")
                raise _BadRequest(f"HTTP {status}: {msg}")
            except _Retryable as exc:
                if attempt >= retries:
                    raise _Fatal(f"{exc} (after {attempt + 1} attempts)") from None
                wait = min(max_backoff, backoff * 2 ** attempt) * (0.5 + 0.5 * rng.random())
                if exc.retry_after is not None:
                    wait = min(max_backoff, max(wait, exc.retry_after))
                attempt += 1
                state["retries"] += 1
                await asyncio.sleep(wait)

    def got(i: int, k: int, text: str) -> None:
        answers[i][k] = text
        state["fetched"] += 1
        state["done"] += 1
        if store is not None:
            store.put(keys[i][k], {"endpoint": url, "model": model, "prompt": prompts[i],
                                   "params": params(i, k), "answer": text,
                                   "fetched": datetime.now(timezone.utc).isoformat()})
        if progress is not None:
            progress(state["done"], total)

    def failed(i: int, n: int, exc: _BadRequest) -> bool:
        """Count ``n`` answers of prompt ``i`` as not obtained (one request refused); True:
        stop the probe."""
        state["rejected"] += 1
        state["done"] += n
        if not flags["first_error"] and not flags["budget"]:
            flags["first_error"] = f"prompt {i + 1}: {exc}"
        if progress is not None:
            progress(state["done"], total)
        if not flags["budget"] and state["fetched"] == 0 and state["rejected"] >= 5:
            flags["fatal"] = (f"the endpoint rejected the first {state['rejected']} "
                              f"requests ({flags['first_error']})")
            return True
        return False

    async def answer(client: httpx.AsyncClient, i: int) -> None:
        """Every missing sample of prompt ``i``: all in one request when none is cached, then
        one request per sample the endpoint did not return."""
        missing = [k for k in range(samples) if answers[i][k] is None]
        if len(missing) == samples:
            try:
                texts = await ask(client, i, samples, None)
            except _BadRequest as exc:
                failed(i, samples, exc)
                return
            for k, text in zip(missing, texts):
                got(i, k, text)
            missing = missing[len(texts):]
        for k in missing:
            if flags["fatal"] is not None:
                return
            try:
                text = (await ask(client, i, 1, k))[0]
            except _BadRequest as exc:
                if failed(i, 1, exc):
                    return
                continue
            got(i, k, text)

    async def worker(client: httpx.AsyncClient, queue: asyncio.Queue[int]) -> None:
        while not queue.empty() and flags["fatal"] is None:
            i = queue.get_nowait()
            try:
                await answer(client, i)
            except _Fatal as exc:
                if flags["fatal"] is None:
                    flags["fatal"] = str(exc)
                return

    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in todo:
            queue.put_nowait(i)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
            await asyncio.gather(*(worker(client, queue) for _ in range(min(concurrency,
                                                                            len(todo)) or 1)))

    if todo:
        asyncio.run(main())
    n_have = sum(a is not None for row in answers for a in row)
    if flags["fatal"] is not None:
        where = (f"; {n_have} of {total} answers are cached in {store.directory}: run "
                 "the same command again to resume" if store is not None
                 else f"; {n_have} of {total} answers were received (use --cache DIR "
                 "to keep them across runs)")
        raise EndpointError(f"{flags['fatal']}{where}")
    stats = QueryStats(n_prompts=n_prompts, n_samples=samples, n_queries=state["queries"],
                       n_fetched=state["fetched"], n_cached=state["cached"],
                       n_retries=state["retries"], n_failed=total - n_have,
                       budget_exhausted=flags["budget"])
    pairs = [(p, a) for p, row in zip(prompts, answers) for a in row if a is not None]
    return FetchResult(pairs=pairs, stats=stats, first_error=flags["first_error"])


# --------------------------------------------------------------------------------------------
# Both


@dataclass(frozen=True)
class ProbeResult(WrappedDecision):
    """A probe of an endpoint: the pooled test on its answers and what the queries cost.

    Its JSON holds the endpoint and model, then the test's keys (as ``detect``:
    ``statistic``, ``pvalue``, ``n_scored``, ...) and the answers' counts, then the queries'
    (``n_queries``, ``n_cached``, ...), in one object.
    """

    answers: AnswersResult
    queries: QueryStats
    endpoint: str
    model: str

    nested_field: ClassVar[str] = "answers"
    leading_fields: ClassVar[tuple[str, ...]] = ("endpoint", "model")

    def detectable_fraction(self, alpha: float = DEFAULT_ALPHA) -> float:
        return self.answers.aggregate.detectable_fraction(alpha)


def probe(endpoint: str, model: str, spec: WatermarkSpec | Detector, prompts: Sequence[str],
          *, reference: TupleSet | None = None, min_scored: int = DEFAULT_MIN_SCORED,
          tokenizer: str | Path | None = None, allow_marked_reference: bool = False,
          **fetch: Any) -> ProbeResult:
    """:func:`fetch_answers` then :func:`score_answers`; ``fetch`` takes the former's options."""
    detector = _as_detector(spec, tokenizer)
    if reference is not None:  # refuse a marked reference before paying for any query
        score_answers([], detector, reference=reference,
                      allow_marked_reference=allow_marked_reference)
    got = fetch_answers(endpoint, model, prompts, **fetch)
    if not got.pairs:
        why = (" (the request budget was spent first)" if got.stats.budget_exhausted
               else f" ({got.first_error})" if got.first_error else "")
        raise EndpointError(f"the endpoint answered none of the {len(prompts)} prompts{why}")
    scored = score_answers(got.pairs, detector, reference=reference, min_scored=min_scored,
                           allow_marked_reference=allow_marked_reference)
    return ProbeResult(answers=scored, queries=got.stats,
                       endpoint=chat_completions_url(endpoint), model=model)

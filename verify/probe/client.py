"""The HTTP side of a probe: a suspect model's answers to many prompts from an OpenAI-compatible
endpoint.

:func:`fetch_answers` (needs the ``serve`` extra for httpx) sends concurrent queries
(``samples`` answers per prompt in one request, OpenAI's ``n``), retries with exponential
backoff on 429, 5xx, timeouts and dropped connections, keeps to a request budget, and reads and
writes an on-disk cache of answers (:class:`~.cache.ResponseCache`) as they come. An endpoint
is not trusted: each answer is read as it streams in, under one deadline for the whole answer
and a cap on its size.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distillmark.watermark.errors import DistillmarkError, InputError, ParameterError
from distillmark.watermark.files import decode_json

from .cache import ResponseCache

__all__ = ["DEFAULT_MAX_ANSWER_BYTES", "EndpointError", "FetchResult", "QueryStats",
           "SamplingParams", "chat_completions_url", "fetch_answers"]

#: The largest answer body a probe reads (16 MiB: thousands of times a long answer).
DEFAULT_MAX_ANSWER_BYTES = 16 << 20


class EndpointError(DistillmarkError, ConnectionError):
    """The endpoint cannot be used: unreachable, refusing the key, unknown model, broken."""


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


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Fatal(Exception):
    pass


class _BadRequest(Exception):
    pass


def _error_message(raw: bytes, reason: str) -> str:
    """The first line of an error answer's message (OpenAI's ``{"error": {"message"}}``, else
    the body's first 200 characters, else the status's reason)."""
    try:
        err = decode_json(raw, what="the answer").get("error", {})
        msg = err.get("message") if isinstance(err, dict) else str(err)
    except (InputError, AttributeError):  # not JSON, or not an object
        msg = None
    text = str(msg or raw[:200].decode("utf-8", "replace").strip() or reason)
    return (text.splitlines() or [reason])[0][:200]


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


async def _post(client: Any, url: str, body: dict[str, Any], headers: dict[str, str], *,
                max_bytes: int) -> tuple[int, str, Any, bytes]:
    """POST ``body``; the status, its reason, the headers and the body, read as it streams in
    and refused once it passes ``max_bytes`` (or says it will, by its Content-Length)."""
    too_big = (f"the endpoint sent an answer larger than {max_bytes} bytes "
               "(--max-answer-bytes)")
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise _Retryable(too_big)
        chunks, n = [], 0
        async for chunk in resp.aiter_bytes():  # decoded: a compressed body counts in full
            n += len(chunk)
            if n > max_bytes:
                raise _Retryable(too_big)
            chunks.append(chunk)
        return resp.status_code, resp.reason_phrase, resp.headers, b"".join(chunks)


def fetch_answers(endpoint: str, model: str, prompts: Sequence[str], *,
                  api_key: str | None = None, sampling: SamplingParams | None = None,
                  samples: int = 1, concurrency: int = 4, max_requests: int | None = None,
                  cache: ResponseCache | str | Path | None = None, retries: int = 5,
                  timeout: float = 120.0, backoff: float = 0.5, max_backoff: float = 30.0,
                  max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
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
        retries: further attempts after a 429, a 5xx, a timeout, a dropped connection, a
            malformed or oversized answer, with exponential backoff (``backoff * 2**k``
            seconds, jittered, at most ``max_backoff``; a 429's ``Retry-After`` is honoured up
            to ``max_backoff``).
        timeout: seconds for one whole answer, from the request to the body's last byte (an
            answer trickling in a byte at a time is cut off there, not only a silent one).
        max_answer_bytes: the largest answer body read (after decompression); a larger one
            is dropped as it streams in, never held whole.
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
    if max_answer_bytes < 1:
        raise ParameterError(f"`max_answer_bytes` must be >= 1, got {max_answer_bytes}")
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
                try:  # one deadline for the whole answer, however slowly it trickles in
                    status, reason, resp_headers, raw = await asyncio.wait_for(
                        _post(client, url, body, headers, max_bytes=max_answer_bytes), timeout)
                except (httpx.TimeoutException, asyncio.TimeoutError):
                    raise _Retryable(f"no answer within {timeout:g} s (timeout)") from None
                except httpx.DecodingError:
                    raise _Retryable("the endpoint sent a malformed answer (its compression "
                                     "is broken)") from None
                except httpx.TransportError as exc:
                    raise _Retryable(f"cannot reach {url}: {type(exc).__name__}"
                                     f"{': ' + str(exc) if str(exc) else ''}") from None
                if status == 200:
                    try:
                        data = decode_json(raw, what="the answer")
                        choices = data["choices"]
                        if not isinstance(choices, list) or not choices:
                            raise TypeError
                        contents = [c["message"].get("content") for c in choices[:n]]
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        # InputError (a ValueError) too: not UTF-8, not JSON, nested too deep
                        raise _Retryable("the endpoint sent a malformed answer (not an OpenAI "
                                         "chat completion)") from None
                    if any(c is not None and not isinstance(c, str) for c in contents):
                        raise _Retryable("the endpoint sent a malformed answer (content is "
                                         "not a string)")
                    return [c or "" for c in contents]
                msg = _error_message(raw, reason)
                if status == 429 or status >= 500:
                    raise _Retryable(f"HTTP {status}: {msg}", _retry_after(resp_headers))
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

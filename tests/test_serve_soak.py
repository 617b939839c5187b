"""A soak of the server: a fixed mix of a few hundred requests sent concurrently (answers,
refusals, 413s, deep JSON, crowded messages, clients that leave mid-stream, mid-answer or
mid-body). Afterwards the server still answers ``/health`` and a plain request with a
watermarked answer, it stopped generating for the clients that left, it logged no fault, and
the process grew by less than :data:`RSS_CEILING` of resident memory."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import resource
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import torch
from serving_helpers import MODEL_NAME, serving, tiny_generator

from distillmark.verify import Detector
from distillmark.watermark import WatermarkSpec, new_spec
from distillmark.watermark.keys import SECRET_BYTES
from distillmark.watermark.tokenizer import TokenizerInfo

#: Most resident memory the soak may add to the process (server and clients in one).
RSS_CEILING = 300 << 20
#: ``max_tokens`` of the requests whose clients leave: far more than they stay for.
LEAVE_TOKENS = 400
LIMITS: dict[str, Any] = {"max_body_bytes": 64 << 10, "max_messages": 64,
                          "default_max_tokens": 4, "max_tokens_limit": LEAVE_TOKENS,
                          "max_n": 4}
#: Requests of each kind (440 in all), sent at most CONCURRENCY at a time.
MIX = {"valid": 100, "invalid": 80, "oversized": 40, "deep": 30, "crowded": 30,
       "leaves_stream": 45, "leaves_answer": 25, "leaves_body": 30, "health": 60}
CONCURRENCY = 16
#: Longest the soak may take before it counts as hung (about 15 s on two busy cores).
SOAK_TIMEOUT = 180.0


class Recording:
    """Wraps a generator: records each engine call's ``max_new_tokens`` and the tokens it
    generated per answer (most of any of its answers)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.engine, self.source = inner.engine, inner.source
        self.model, self.tokenizer = inner.model, inner.tokenizer
        self.calls: list[list[int]] = []

    def check_tokenizer(self, spec: WatermarkSpec) -> None:
        self.inner.check_tokenizer(spec)

    def generate(self, prompts: Any, **kwargs: Any) -> Any:
        hook = kwargs.pop("on_text")
        steps = [0] * len(prompts)
        call = [int(kwargs["max_new_tokens"]), 0]
        self.calls.append(call)

        def count(i: int, text: str) -> None:
            steps[i] += 1
            call[1] = max(steps)
            hook(i, text)

        return self.inner.generate(prompts, on_text=count, **kwargs)


def resident_bytes() -> int:
    """The process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class _Errors(logging.Handler):
    """Keeps the error lines the server and uvicorn log."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def server_errors() -> Iterator[_Errors]:
    handler = _Errors()
    loggers = [logging.getLogger(name) for name in ("distillmark.serve", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# The requests: each returns what became of it ("200", "413", "left", ...)

Send = Callable[[httpx.AsyncClient, random.Random], Awaitable[str]]


def _messages(rng: random.Random, n: int = 1) -> list[dict[str, str]]:
    words = ["tell", "me", "a", "story", "about", "the", "sea", "😀", "<|im_end|>", "\x00"]
    return [{"role": rng.choice(["system", "user", "assistant", "user"]),
             "content": " ".join(rng.choices(words, k=rng.randint(1, 12)))} for _ in range(n)]


async def _post(client: httpx.AsyncClient, content: Any, **kwargs: Any) -> httpx.Response:
    return await client.post("/v1/chat/completions", content=content,
                             headers={"content-type": "application/json"}, **kwargs)


def _outcome(resp: httpx.Response) -> str:
    """The status, and whether a 200's body is a whole answer (a stream ends with [DONE]
    and no error) or a refusal's an OpenAI error body."""
    if "Traceback" in resp.text:
        return f"{resp.status_code} with a traceback"
    if resp.status_code != 200:
        err = resp.json().get("error", {})
        shaped = set(err) == {"message", "type", "param", "code"}
        return str(resp.status_code) if shaped else f"{resp.status_code} not OpenAI's shape"
    if resp.headers["content-type"].startswith("text/event-stream"):
        events = [e.removeprefix("data: ") for e in resp.text.split("\n\n") if e]
        whole = events[-1] == "[DONE]" and not any('"error"' in e for e in events[:-1])
        return "200" if whole else "200 broken stream"
    return "200" if resp.json()["choices"] else "200 without choices"


async def valid(client: httpx.AsyncClient, rng: random.Random) -> str:
    body: dict[str, Any] = {"model": MODEL_NAME, "messages": _messages(rng, rng.randint(1, 3)),
                            "max_tokens": rng.randint(1, 8), "n": rng.randint(1, 2),
                            "stream": rng.random() < 0.3}
    if rng.random() < 0.3:
        body["seed"] = rng.randrange(2**32)
    return _outcome(await _post(client, json.dumps(body)))


#: Changes that make a valid request a refused one (400, or 404 for the model).
BAD: list[dict[str, Any]] = [
    {"model": "gpt-4"}, {"model": 7}, {"messages": []}, {"messages": "hi"},
    {"temperature": 9}, {"n": 99}, {"max_tokens": 10**30}, {"seed": -1}, {"stop": ["a"] * 9},
    {"logprobs": True}, {"messages": [{"role": "robot"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}]


async def invalid(client: httpx.AsyncClient, rng: random.Random) -> str:
    body = {"model": MODEL_NAME, "messages": _messages(rng), **rng.choice(BAD)}
    return _outcome(await _post(client, json.dumps(body)))


async def oversized(client: httpx.AsyncClient, rng: random.Random) -> str:
    raw = b'{"model": "' + b"x" * (LIMITS["max_body_bytes"] + rng.randint(1, 8192)) + b'"}'
    if rng.random() < 0.5:
        return _outcome(await _post(client, raw))

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit while reading
        for i in range(0, len(raw), 4096):
            yield raw[i:i + 4096]

    return _outcome(await _post(client, chunks()))


async def deep(client: httpx.AsyncClient, rng: random.Random) -> str:
    d = rng.randint(2000, 20_000)
    return _outcome(await _post(client, b'{"model": "m", "x": ' + b"[" * d + b"]" * d + b"}"))


async def crowded(client: httpx.AsyncClient, rng: random.Random) -> str:
    n = rng.choice([LIMITS["max_messages"], LIMITS["max_messages"] + 1, 200])
    body = {"model": MODEL_NAME, "messages": _messages(rng, n), "max_tokens": 2}
    return _outcome(await _post(client, json.dumps(body)))


async def leaves_stream(client: httpx.AsyncClient, rng: random.Random) -> str:
    """Reads the stream until its first text, then hangs up."""
    body = {"model": MODEL_NAME, "messages": _messages(rng), "max_tokens": LEAVE_TOKENS,
            "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            return str(resp.status_code)
        async for line in resp.aiter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                return "left"
    return "200 ended before any text"


async def leaves_answer(client: httpx.AsyncClient, rng: random.Random) -> str:
    """Gives up waiting for a long answer."""
    body = {"model": MODEL_NAME, "messages": _messages(rng), "max_tokens": LEAVE_TOKENS}
    try:
        return _outcome(await _post(client, json.dumps(body), timeout=0.3))
    except httpx.TimeoutException:
        return "left"


async def leaves_body(client: httpx.AsyncClient, rng: random.Random) -> str:
    """Sends a part of the body its Content-Length announces, then hangs up."""
    url = client.base_url
    _, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
                 + b'{"model": "' + b"x" * rng.randint(0, 2000))
    await writer.drain()
    await asyncio.sleep(rng.random() * 0.2)
    writer.close()
    await writer.wait_closed()
    return "left"


async def health(client: httpx.AsyncClient, rng: random.Random) -> str:
    """The server answers /health at once while it works."""
    resp = await client.get("/health", timeout=10)
    return str(resp.status_code)


KINDS: dict[str, tuple[Send, set[str]]] = {
    "valid": (valid, {"200"}), "invalid": (invalid, {"400", "404"}),
    "oversized": (oversized, {"413"}), "deep": (deep, {"400"}),
    "crowded": (crowded, {"200", "400"}), "leaves_stream": (leaves_stream, {"left"}),
    "leaves_answer": (leaves_answer, {"left"}), "leaves_body": (leaves_body, {"left"}),
    "health": (health, {"200"})}


async def soak(base: str) -> list[tuple[str, str]]:
    """Every request of :data:`MIX` in a shuffled order, CONCURRENCY at a time; what became
    of each, by kind."""
    rng = random.Random(20240611)
    order = [kind for kind, n in MIX.items() for _ in range(n)]
    rng.shuffle(order)
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY)

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        async def one(kind: str, seed: int) -> tuple[str, str]:
            async with gate:
                try:
                    return kind, await KINDS[kind][0](client, random.Random(seed))
                except httpx.HTTPError as exc:
                    return kind, f"{type(exc).__name__}: {exc}"

        return await asyncio.gather(*(one(kind, i) for i, kind in enumerate(order)))


# --------------------------------------------------------------------------------------------


def test_the_server_survives_a_soak_of_mixed_and_hostile_requests(
        tokenizer_info: TokenizerInfo, server_errors: _Errors, one_thread: None) -> None:
    """440 requests, 16 at a time; then /health and a watermarked answer, no fault logged, no
    generation left running for a client that left, and under 300 MB of memory grown."""
    master = new_spec("greenlist", {}, tokenizer_info, secret=bytes(range(50, 50 + SECRET_BYTES)))
    gen = Recording(tiny_generator())
    with serving(gen, spec=master, **LIMITS) as url:
        base = url.removesuffix("/v1")
        warm = httpx.post(url + "/chat/completions", timeout=60, json={
            "model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "n": 2})
        assert warm.status_code == 200, warm.text
        gc.collect()
        before = resident_bytes()
        results = asyncio.run(asyncio.wait_for(soak(base), SOAK_TIMEOUT))
        gc.collect()
        grown = resident_bytes() - before

        wrong = [(kind, got) for kind, got in results if got not in KINDS[kind][1]]
        assert wrong == [], wrong
        assert len(results) == sum(MIX.values())
        resp = httpx.get(base + "/health", timeout=10)
        assert resp.status_code == 200 and resp.json()["status"] == "ok"
        served = sum(1 for kind, got in results if kind in ("valid", "crowded") and got == "200")
        assert resp.json()["requests_served"] >= served + 1
        answer = httpx.post(url + "/chat/completions", timeout=120, json={
            "model": MODEL_NAME, "messages": [{"role": "user", "content": "Tell me a story."}],
            "n": 4, "max_tokens": 40})
        assert answer.status_code == 200, answer.text
        texts = [c["message"]["content"] for c in answer.json()["choices"]]
    assert Detector(master).detect("\n".join(texts)).pvalue < 1e-6
    # every generation for a client that left stopped long before its max_tokens
    left = [steps for max_tokens, steps in gen.calls if max_tokens == LEAVE_TOKENS]
    assert left and max(left) < LEAVE_TOKENS // 2, left
    assert server_errors.lines == []
    assert grown < RSS_CEILING, f"resident memory grew by {grown >> 20} MiB"

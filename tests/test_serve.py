"""The OpenAI-compatible server, over real HTTP on loopback: answers and their watermark,
streaming, per-account keys, authentication, OpenAI error bodies, concurrency, and the CLI."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from scan_helpers import run_cli
from serving_helpers import MODEL_NAME, serving, tiny_generator

from distillmark.verify import Detector
from distillmark.watermark import (
    InputError,
    WatermarkSpec,
    new_spec,
    save_spec,
)
from distillmark.watermark.accounts import AccountLayer, AccountLayerParams
from distillmark.watermark.keys import SECRET_BYTES
from distillmark.watermark.serve import Accounts, ServeConfig, load_accounts
from distillmark.watermark.serve.accounts import Account
from distillmark.watermark.tokenizer import TokenizerInfo

SERVE_SECRET = bytes(range(100, 100 + SECRET_BYTES))
KEYS = {"sk-alice-0123456789": "alice", "sk-bob-9876543210": "bob"}
FORMS = '{"API_KEY": "ACCOUNT_ID", ...} or {"API_KEY": {"account": "ID", "number": N}, ...}'


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def master(tokenizer_info: TokenizerInfo) -> WatermarkSpec:
    return new_spec("greenlist", {}, tokenizer_info, secret=SERVE_SECRET,
                    accounts=AccountLayerParams())


@pytest.fixture(scope="module")
def marked_url(master: WatermarkSpec) -> Iterator[str]:
    with serving(tiny_generator(), spec=master) as url:
        yield url


@pytest.fixture(scope="module")
def accounts_url(master: WatermarkSpec) -> Iterator[str]:
    with serving(tiny_generator(), spec=master, accounts=KEYS) as url:
        yield url


def chat(url: str, *, api_key: str | None = None, timeout: float = 120,
         **body: Any) -> httpx.Response:
    payload: dict[str, Any] = {"model": MODEL_NAME,
                               "messages": [{"role": "user", "content": "Tell me a story."}],
                               "max_tokens": 24}
    payload.update(body)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.post(url + "/chat/completions", json=payload, headers=headers, timeout=timeout)


def answers_text(resp: httpx.Response) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [c["message"]["content"] for c in resp.json()["choices"]]


# --------------------------------------------------------------------------------------------
# Answers


def test_completion_has_openai_shape_and_carries_the_watermark(marked_url: str,
                                                               master: WatermarkSpec) -> None:
    resp = chat(marked_url, n=3, max_tokens=40, temperature=1.0, top_p=1.0)
    data = resp.json()
    assert resp.status_code == 200 and data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-") and data["model"] == MODEL_NAME
    assert [c["index"] for c in data["choices"]] == [0, 1, 2]
    for c in data["choices"]:
        assert c["message"]["role"] == "assistant" and c["message"]["content"]
        assert c["finish_reason"] in ("length", "stop")
    usage = data["usage"]
    assert usage["prompt_tokens"] > 0 and 3 <= usage["completion_tokens"] <= 120
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the three choices are different samples, and each carries the master key's mark
    texts = answers_text(resp)
    assert len(set(texts)) == 3
    detector = Detector(master)
    pooled = detector.detect("\n".join(texts))
    assert pooled.pvalue < 1e-10, pooled
    assert pooled.score_mean > 0.45


def test_unwatermarked_server_answers_carry_no_mark(master: WatermarkSpec) -> None:
    with serving(tiny_generator(), spec=None) as url:
        texts = answers_text(chat(url, n=4, max_tokens=40))
    result = Detector(master).detect("\n".join(texts))
    assert result.n_scored > 100 and not result.is_watermarked(1e-3), result
    assert abs(result.score_mean - 0.25) < 0.1


def test_seed_makes_an_answer_reproducible(marked_url: str) -> None:
    a = answers_text(chat(marked_url, seed=11, max_tokens=16))
    b = answers_text(chat(marked_url, seed=11, max_tokens=16))
    c = answers_text(chat(marked_url, seed=12, max_tokens=16))
    assert a == b and a != c


def test_conversations_and_text_parts_are_accepted(marked_url: str) -> None:
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                             {"type": "text", "text": " there"}]},
                {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "Go on."}]
    resp = chat(marked_url, messages=messages)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] > 5


def test_stop_sequences_cut_the_answer(marked_url: str) -> None:
    full = answers_text(chat(marked_url, seed=5, max_tokens=24))[0]
    stop = full[8:11]
    assert stop.strip()
    resp = chat(marked_url, seed=5, max_tokens=24, stop=[stop])
    cut = answers_text(resp)[0]
    assert cut == full[:full.find(stop)]
    assert resp.json()["choices"][0]["finish_reason"] == "stop"


# --------------------------------------------------------------------------------------------
# Streaming


def _stream(url: str, **body: Any) -> list[dict[str, Any]]:
    payload: dict[str, Any] = {"model": MODEL_NAME, "stream": True,
                               "messages": [{"role": "user", "content": "Tell me a story."}]}
    payload.update(body)
    events = []
    with httpx.stream("POST", url + "/chat/completions", json=payload, timeout=120) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            events.append({"done": True} if line == "data: [DONE]" else json.loads(line[6:]))
    return events


def test_streaming_sends_the_same_answer_token_by_token(marked_url: str) -> None:
    plain = answers_text(chat(marked_url, seed=3, max_tokens=30, n=2))
    events = _stream(marked_url, seed=3, max_tokens=30, n=2,
                     stream_options={"include_usage": True})
    assert events[-1] == {"done": True}
    chunks = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == MODEL_NAME
               for e in chunks)
    assert len({e["id"] for e in chunks}) == 1
    assert [c["delta"]["role"] for c in chunks[0]["choices"]] == ["assistant", "assistant"]
    texts = ["", ""]
    n_content = [0, 0]
    reasons: dict[int, str] = {}
    for e in chunks[1:]:
        for c in e["choices"]:
            if c["delta"].get("content"):
                texts[c["index"]] += c["delta"]["content"]
                n_content[c["index"]] += 1
            if c["finish_reason"] is not None:
                reasons[c["index"]] = c["finish_reason"]
    assert texts == plain
    # streamed as it was generated: many deltas per answer, not one block at the end
    assert min(n_content) >= 10
    assert set(reasons) == {0, 1}
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] >= 2


def test_streaming_error_before_the_stream_is_a_plain_error(marked_url: str) -> None:
    resp = httpx.post(marked_url + "/chat/completions", json={
        "model": MODEL_NAME, "stream": True, "messages": [], "max_tokens": 4})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages"


# --------------------------------------------------------------------------------------------
# Accounts and authentication


def test_unknown_or_missing_api_key_gets_401(accounts_url: str) -> None:
    for key, message in [(None, ("no API key given (send the header Authorization: Bearer "
                                "API_KEY)")),
                         ("sk-nobody", "incorrect API key provided")]:
        resp = chat(accounts_url, api_key=key)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == "Bearer"
        assert resp.json() == {"error": {"message": message, "type": "invalid_request_error",
                                          "param": None, "code": "invalid_api_key"}}
        assert "sk-nobody" not in resp.text
    assert httpx.get(accounts_url + "/models").status_code == 401
    ok = httpx.get(accounts_url + "/models",
                   headers={"Authorization": "Bearer sk-bob-9876543210"})
    assert ok.status_code == 200 and ok.json()["data"][0]["id"] == MODEL_NAME
    health = httpx.get(accounts_url.removesuffix("/v1") + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def _account_counts(master: WatermarkSpec, text: str) -> tuple[int, np.ndarray]:
    """Distinct cells of ``text`` and the green cells of account numbers 0..7."""
    detector = Detector(master)
    cells = np.unique(detector.scheme.tuple_keys(detector.encode(text)))
    layer = AccountLayer(master.secret, master.vocab_size, master.accounts)
    return cells.size, layer.counts(cells, np.zeros(cells.size, dtype=np.int64), 1, bits=3)[0]


def test_each_accounts_answers_carry_the_provider_mark_and_name_their_account(
        accounts_url: str, master: WatermarkSpec) -> None:
    from scipy import stats

    for api_key, number in (("sk-alice-0123456789", 1), ("sk-bob-9876543210", 2)):
        text = "\n".join(answers_text(chat(accounts_url, api_key=api_key, n=4, max_tokens=40)))
        provider = Detector(master).detect(text)
        assert provider.pvalue < 1e-10, provider  # the mark every account shares
        n, counts = _account_counts(master, text)
        own = stats.binom.sf(counts[number] - 1, n, 0.25)
        assert own < 1e-10, (number, counts)
        for other in (set(range(1, 8)) - {number}):  # exact Binomial(n, 1/4) for the others
            assert stats.binom.sf(counts[other] - 1, n, 0.25) > 1e-4, (other, counts)


def test_accounts_hold_only_digests() -> None:
    accts = Accounts.from_mapping(KEYS)
    assert accts.account_for("sk-alice-0123456789") == Account("alice", 1)
    assert accts.account_for("sk-alice") is None
    assert "sk-alice" not in repr(accts) and "sk-alice" not in str(accts.by_digest)
    assert accts.account_ids == ["alice", "bob"] and len(accts) == 2
    assert [a.number for a in accts.accounts] == [1, 2]


@pytest.mark.parametrize(("content", "message"), [
    (b"{nope", ("is not valid JSON: Expecting property name enclosed in double quotes at line 1 "
               "column 2")),
    (b"[]", f"must hold one JSON object {FORMS}, got list"),
    (b"{}", f"no accounts (expected {FORMS})"),
    (b'{"k1": "a", "k1": "b"}', ("an API key appears twice (the same key cannot belong to two "
                               "accounts)")),
    (b'{"k1": 5}', ("entry 1: the account id must be a non-empty string of at most 256 "
                   "characters, got 5")),
    (b'{"": "a"}', ("entry 1: the API key must be a non-empty string of at most 512 characters "
                   "without surrounding spaces")),
    (b'{" k": "a"}', ("entry 1: the API key must be a non-empty string of at most 512 characters "
                     "without surrounding spaces")),
    (b'{"k1": "a", "k2": {"account": "b", "number": 3}}', (
        "entry 2: give every account a number, or none (then an account's number is its "
        "position in the file)")),
    (b'{"k1": {"account": "a", "number": 3}, "k2": {"account": "b", "number": 3}}',
     "entry 2: number 3 belongs to both 'a' and 'b'"),
    (b'{"k1": {"account": "a", "number": 0}}', (
        'entry 1: expected {"account": "ID", "number": N} with N in 1..4294967295, got '
        "{'account': 'a', 'number': 0}")),
    (b"\xff\xfe", "is not UTF-8 (byte offset 0)"),
])
def test_bad_accounts_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "accounts.json"
    path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        load_accounts(path)
    sep = " " if message.startswith(("is ", "must")) else ": "
    assert str(exc.value) == f"accounts file {path}{sep}{message}"


def test_accounts_need_a_key_with_an_account_layer(tokenizer_info: TokenizerInfo) -> None:
    plain = new_spec("greenlist", {}, tokenizer_info)
    with pytest.raises(ValueError, match="has no account layer"):
        ServeConfig(model_name="m", spec=plain, accounts=Accounts.from_mapping(KEYS))
    with pytest.raises(ValueError, match="rides on a green-list key with lefthash seeding"):
        new_spec("transformers-kgw", {"hashing_key": 15485863}, tokenizer_info,
                 accounts=AccountLayerParams())


def test_numbered_accounts_file(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps({"sk-1": {"account": "acme", "number": 70000},
                                "sk-2": {"account": "acme", "number": 70000},
                                "sk-3": {"account": "zeta", "number": 5}}))
    accts = load_accounts(path)
    assert accts.account_for("sk-2") == Account("acme", 70000)
    assert [(a.id, a.number) for a in accts.accounts] == [("zeta", 5), ("acme", 70000)]


# --------------------------------------------------------------------------------------------
# Bad requests: OpenAI error bodies, never a 500


BAD_REQUESTS = [
    ({"model": None}, 400, "model", None),
    ({"messages": None}, 400, "messages", None),
    ({"messages": []}, 400, "messages", None),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role", None),
    # no text, and the model has no chat template: nothing to answer from
    ({"messages": [{"role": "user", "content": []}]}, 400, "messages", None),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages.0.content", None),
    ({"model": "gpt-4"}, 404, "model", "model_not_found"),
    ({"temperature": 2.5}, 400, "temperature", None),
    ({"temperature": "hot"}, 400, "temperature", None),
    ({"top_p": 0}, 400, "top_p", None),
    ({"max_tokens": 0}, 400, "max_tokens", None),
    ({"max_tokens": 10_000}, 400, "max_tokens", None),
    ({"max_tokens": 512}, 400, "messages", "context_length_exceeded"),
    ({"n": 0}, 400, "n", None),
    ({"n": 99}, 400, "n", None),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ({"logprobs": True}, 400, "logprobs", "unsupported_parameter"),
    ({"tools": [{"type": "function"}]}, 400, "tools", "unsupported_parameter"),
    ({"presence_penalty": 0.5}, 400, "presence_penalty", "unsupported_parameter"),
    ({"seed": "x"}, 400, "seed", None),
]


@pytest.mark.parametrize(("change", "status", "param", "code"), BAD_REQUESTS)
def test_bad_request_gets_an_openai_error(marked_url: str, change: dict[str, Any], status: int,
                                          param: str, code: str | None) -> None:
    body: dict[str, Any] = {"model": MODEL_NAME, "max_tokens": 4,
                            "messages": [{"role": "user", "content": "Hi"}]}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    resp = httpx.post(marked_url + "/chat/completions", json=body, timeout=60)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert err["code"] == code and err["message"] and "Traceback" not in resp.text


@pytest.mark.parametrize(("method", "path", "content", "status", "message"), [
    ("POST", "/v1/chat/completions", b"{nope", 400, (
        "the request body is not valid JSON: Expecting property name enclosed in double "
        "quotes at line 1 column 2")),
    ("POST", "/v1/chat/completions", b"[1, 2]", 400, "the request body must be a JSON object"),
    ("POST", "/v1/chat/completions", b"", 400, ("the request body is missing (send a JSON "
                                              "object)")),
    ("GET", "/v1/chat/completions", b"", 405, ("method GET is not allowed on "
                                             "/v1/chat/completions")),
    ("GET", "/v1/embeddings", b"", 404, "unknown path /v1/embeddings"),
])
def test_malformed_http_gets_an_openai_error(marked_url: str, method: str, path: str,
                                             content: bytes, status: int, message: str) -> None:
    base = marked_url.removesuffix("/v1")
    resp = httpx.request(method, base + path, content=content,
                         headers={"content-type": "application/json"})
    assert resp.status_code == status
    assert resp.json()["error"]["message"] == message


# --------------------------------------------------------------------------------------------
# Concurrency


class CountingGenerator:
    """Wraps a generator: records the number of prompts of each engine call and the tokens
    each call generates, and spends at least ``delay`` seconds per token, so that a long
    answer lasts long enough for other requests to arrive meanwhile on any machine."""

    def __init__(self, inner: Any, *, delay: float = 0.005) -> None:
        self.inner = inner
        self.engine, self.source = inner.engine, inner.source
        self.model, self.tokenizer = inner.model, inner.tokenizer
        self.delay = delay
        self.calls: list[int] = []
        self.tokens: list[int] = []
        self.started = threading.Event()

    def check_tokenizer(self, spec: WatermarkSpec) -> None:
        self.inner.check_tokenizer(spec)

    def generate(self, prompts: Any, **kwargs: Any) -> Any:
        self.calls.append(len(prompts))
        self.tokens.append(0)
        k = len(self.tokens) - 1
        hook = kwargs.pop("on_text")
        self.started.set()

        def slow(i: int, text: str) -> None:
            self.tokens[k] += 1
            time.sleep(self.delay)
            hook(i, text)

        return self.inner.generate(prompts, on_text=slow, **kwargs)


def test_requests_are_batched_and_the_event_loop_stays_free(master: WatermarkSpec) -> None:
    gen = CountingGenerator(tiny_generator())
    with serving(gen, spec=master, max_batch=8) as url:
        results: dict[int, list[str]] = {}

        def ask(i: int, max_tokens: int) -> None:
            results[i] = answers_text(chat(url, max_tokens=max_tokens))

        first = threading.Thread(target=ask, args=(0, 200))
        first.start()
        assert gen.started.wait(60)
        # while the worker generates, the server still answers at once ...
        health = httpx.get(url.removesuffix("/v1") + "/health", timeout=30)
        assert health.status_code == 200
        assert first.is_alive()
        # ... and requests arriving meanwhile wait together, then share one engine call
        others = [threading.Thread(target=ask, args=(i, 20)) for i in range(1, 5)]
        for t in others:
            t.start()
        for t in [first, *others]:
            t.join(120)
    assert sorted(results) == [0, 1, 2, 3, 4]
    assert gen.calls[0] == 1 and sum(gen.calls) == 5
    assert max(gen.calls[1:]) >= 2, gen.calls


def test_the_n_choices_of_a_request_share_one_engine_call(master: WatermarkSpec) -> None:
    """A probe asks for several samples of a prompt with ``n``: they are generated together,
    one batch, with or without a seed, never one engine call per choice."""
    gen = CountingGenerator(tiny_generator(), delay=0.0)
    with serving(gen, spec=master, max_batch=8) as url:
        first = answers_text(chat(url, n=4, max_tokens=12))
        seeded = answers_text(chat(url, n=3, max_tokens=12, seed=5))
    assert gen.calls == [4, 3]
    assert len(first) == 4 and len(seeded) == 3


# --------------------------------------------------------------------------------------------
# The command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command_errors_are_one_line(tmp_path: Path, master: WatermarkSpec) -> None:
    key = save_spec(master, tmp_path / "wm.json")
    bad = tmp_path / "accounts.json"
    bad.write_text("{}")
    not_model = tmp_path / "model.txt"
    not_model.write_text("hello")
    cases = [
        ((), "give --key KEY to watermark the answers, or --no-watermark to serve without one"),
        (("--key", key, "--no-watermark"), ("give --key KEY to watermark the answers, or "
                                           "--no-watermark to serve without one")),
        (("--no-watermark", "--accounts", bad),
         f"accounts file {bad}: no accounts (expected {FORMS})"),
        (("--no-watermark", "--model", not_model, "--port", _free_port()),
         f"model {not_model} is a file but not a .gguf model"),
        (("--no-watermark", "--port", 70000), "--port must be in 0..65535, got 70000"),
        (("--key", tmp_path / "missing.json"),
         (f"key file {tmp_path / 'missing.json'} does not exist (make one with "
         "`distillmark keygen`)")),
        (("--key", key, "--log", tmp_path / "no" / "log.jsonl"),  # refused before loading
         (f"cannot write --log {tmp_path / 'no' / 'log.jsonl'}: folder {tmp_path / 'no'} does "
         "not exist")),
        (("--key", key, "--log", tmp_path), f"cannot write --log {tmp_path}: it is a directory"),
    ]
    for args, message in cases:
        r = run_cli("serve", *args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert r.stderr.splitlines()[-1] == f"distillmark: error: {message}", r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = run_cli("serve", "--no-watermark", "--port", port)
        assert r.exit_code == 2
        assert r.stderr.splitlines()[-1].startswith(
            f"distillmark: error: cannot listen on 127.0.0.1:{port}: ")


def test_engines_hand_out_growing_text(master: WatermarkSpec) -> None:
    """The streaming hook: each call sees the answer so far, ending with the final text."""
    gen = tiny_generator()
    seen: dict[int, list[str]] = {0: [], 1: []}
    outs = gen.generate(["Hi", [{"role": "user", "content": "Yo"}]], scheme=None,
                        max_new_tokens=12, seed=4, on_text=lambda i, t: seen[i].append(t))
    for i, o in enumerate(outs):
        assert len(seen[i]) == len(o.completion_ids) == 12
        assert seen[i][-1] == o.text
        assert all(b.startswith(a.rstrip("\ufffd")) for a, b in zip(seen[i], seen[i][1:]))
    assert outs[1].prompt == "Yo"
    np.testing.assert_array_equal(np.diff([len(s) for s in seen[0]]) >= 0, True)


class FaultyGenerator(CountingGenerator):
    """Fails a whole engine call when one of its prompts says so."""

    def generate(self, prompts: Any, **kwargs: Any) -> Any:
        texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
        if any("BOOM" in t for t in texts):
            self.calls.append(len(prompts))
            raise ValueError("the engine cannot take BOOM\nsecond line")
        if any("CRASH" in t for t in texts):
            self.calls.append(len(prompts))
            raise RuntimeError("internal state /secret/path corrupted")
        return super().generate(prompts, **kwargs)


@contextmanager
def _errors_logged() -> Iterator[list[logging.LogRecord]]:
    """Error records of the server's loggers and the HTTP server's, while the block runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(n) for n in ("distillmark.serve", "uvicorn.error")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


def test_engine_faults_become_error_bodies_and_spare_batched_neighbours(
        master: WatermarkSpec) -> None:
    gen = FaultyGenerator(tiny_generator())
    with serving(gen, spec=master) as url:
        def ask(content: str, **body: Any) -> httpx.Response:
            return chat(url, messages=[{"role": "user", "content": content}], **body)

        bad = ask("BOOM")
        assert bad.status_code == 400
        assert bad.json()["error"]["message"] == ("the request cannot be answered: the engine "
                                                  "cannot take BOOM")
        with _errors_logged() as errors:
            crash = ask("CRASH")
        assert crash.status_code == 500
        assert [(r.name, r.exc_info) for r in errors] == [("distillmark.serve", None)]
        assert errors[0].getMessage() == (
            "internal error on /v1/chat/completions: RuntimeError: internal state "
            "/secret/path corrupted")
        assert crash.json()["error"] == {"message": "the server failed to answer; try again",
                                         "type": "server_error", "param": None,
                                         "code": "internal_error"}
        assert "/secret/path" not in crash.text
        events = _stream(url, messages=[{"role": "user", "content": "CRASH"}], max_tokens=4)
        assert events[-1] == {"done": True}
        assert events[-2] == {"error": crash.json()["error"]}

        # a bad request batched with good ones: the batch fails, each is retried alone
        gen.started.clear()
        results: dict[str, httpx.Response] = {}
        first = threading.Thread(target=lambda: results.update(long=ask("long", max_tokens=150)))
        first.start()
        assert gen.started.wait(60)
        n_calls = len(gen.calls)
        threads = [threading.Thread(target=lambda c=c: results.update({c: ask(c)}))
                   for c in ("fine one", "BOOM", "fine two")]
        for t in threads:
            t.start()
        for t in [first, *threads]:
            t.join(120)
    assert results["long"].status_code == 200
    assert results["fine one"].status_code == results["fine two"].status_code == 200
    assert results["BOOM"].status_code == 400
    later = gen.calls[n_calls:]
    assert later[0] == 3 and sorted(later[1:]) == [1, 1, 1], gen.calls


def test_a_client_that_leaves_stops_its_generation(master: WatermarkSpec) -> None:
    """A client that times out (and will retry) must not leave its request generating ahead
    of everything else."""
    gen = CountingGenerator(tiny_generator())
    with serving(gen, spec=master) as url:
        with pytest.raises(httpx.TimeoutException):
            chat(url, max_tokens=500, timeout=0.5)
        ok = chat(url, max_tokens=4)
        assert ok.status_code == 200
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
    assert len(gen.tokens) == 2 and 0 < gen.tokens[0] < 500, gen.tokens
    assert health["requests_served"] == 1


# --------------------------------------------------------------------------------------------
# Hostile requests: refused before any work, within limits


def test_a_stranger_is_refused_before_the_body_is_read(accounts_url: str) -> None:
    big = b'{"model": "x", "messages": [' + b'{"role": "user", "content": "a"},' * 400_000
    t0 = time.monotonic()
    resp = httpx.post(accounts_url + "/chat/completions", content=big + b"{}]}",
                      headers={"content-type": "application/json"}, timeout=60)
    assert resp.status_code == 401 and time.monotonic() - t0 < 5
    bad = httpx.post(accounts_url + "/chat/completions", content=b"{nope",
                     headers={"content-type": "application/json"})
    assert bad.status_code == 401  # no schema details for a request without a key


def test_oversized_deep_or_crowded_bodies_get_one_clear_error(master: WatermarkSpec) -> None:
    with serving(tiny_generator(), spec=master, max_body_bytes=4096, max_messages=3) as url:
        def post(content: bytes) -> httpx.Response:
            return httpx.post(url + "/chat/completions", content=content,
                              headers={"content-type": "application/json"}, timeout=60)

        resp = post(b'{"model": "m", "messages": []' + b" " * 5000 + b"}")
        assert resp.status_code == 413
        assert resp.json()["error"]["message"] == "the request body is larger than 4096 bytes"
        deep = post(b"[" * 2000 + b"]" * 2000)
        assert deep.status_code == 400
        assert deep.json()["error"]["message"] == (
            "the request body nests JSON arrays or objects too deeply")
        msgs = [{"role": "user", "content": "hi"}] * 4
        crowded = post(json.dumps({"model": MODEL_NAME, "messages": msgs}).encode())
        assert crowded.status_code == 400
        assert crowded.json()["error"]["message"] == (
            "messages: at most 3 messages per request, got 4")
        for seed in (-1, 2**32):
            r = chat(url, seed=seed)
            assert r.status_code == 400 and r.json()["error"]["param"] == "seed", r.text
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200


def test_a_client_that_leaves_mid_body_is_no_server_fault(marked_url: str,
                                                          caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    """A client that hangs up before its body ends is not logged as an internal error (any
    client could fill the log with them)."""
    base = httpx.URL(marked_url)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            with socket.create_connection((base.host, base.port)) as sock:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
                             b'\r\n{"model": ')
                time.sleep(0.1)
        time.sleep(0.5)
        assert httpx.get(marked_url.removesuffix("/v1") + "/health").status_code == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_request_of_20000_messages_is_answered_in_seconds(master: WatermarkSpec) -> None:
    with serving(tiny_generator(), spec=master, max_messages=20_000) as url:
        msgs = [{"role": "user", "content": f"message {i}"} for i in range(20_000)]
        t0 = time.monotonic()
        resp = httpx.post(url + "/chat/completions", timeout=60,
                          json={"model": MODEL_NAME, "messages": msgs, "max_tokens": 4})
        assert resp.status_code == 400 and time.monotonic() - t0 < 10
        assert resp.json()["error"]["code"] == "context_length_exceeded"
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200


def test_the_request_log_records_what_each_account_was_served(tmp_path: Path,
                                                               master: WatermarkSpec) -> None:
    from distillmark.watermark.serve.log import RequestLog, read_log, text_digest

    log = RequestLog(tmp_path / "requests.jsonl", max_bytes=1024, keep=8)
    with serving(tiny_generator(), spec=master, accounts=KEYS, log=log) as url:
        answers = [answers_text(chat(url, api_key="sk-alice-0123456789", max_tokens=20))[0]
                   for _ in range(6)]
        answers_text(chat(url, api_key="sk-bob-9876543210", max_tokens=20))
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files[0] == "requests.jsonl" and files[1] == "requests.jsonl.1"  # rotated at 1 kB
    assert all((tmp_path / f).stat().st_size <= 1024 for f in files)
    alice = list(read_log(tmp_path / "requests.jsonl", account="alice"))
    assert [r.number for r in alice] == [1] * len(alice)
    assert {d for r in alice for d in r.answer_digests} == {text_digest(a) for a in answers}
    assert all(r.messages == ({"role": "user", "content": "Tell me a story."},) for r in alice)
    assert "sk-alice" not in "".join(p.read_text() for p in tmp_path.iterdir())

    hashed = RequestLog(tmp_path / "hashed.jsonl", hashes_only=True)
    hashed.record(request_id="r", account="bob", number=2, key_id=master.key_id, model="m",
                  messages=[{"role": "user", "content": "secret question"}],
                  answers=["an answer"], usage={})
    hashed.close()
    text = (tmp_path / "hashed.jsonl").read_text()
    assert "secret question" not in text and "an answer" not in text
    (rec,) = read_log(tmp_path / "hashed.jsonl")
    assert rec.messages is None and rec.answer_digests == (text_digest("an answer"),)


def test_a_server_with_100000_accounts_names_each_one(master: WatermarkSpec) -> None:
    """Nothing is built per account: 100,000 accounts load as digests and numbers, and an
    answer to the last one is attributed to it among all of them."""
    from distillmark.verify.attribute import Attributor
    from distillmark.verify.candidates import Candidates

    mapping = {f"sk-{i:06d}-{'x' * 16}": f"acct-{i}" for i in range(1, 100_001)}
    with serving(tiny_generator(), spec=master, accounts=mapping) as url:
        texts = answers_text(chat(url, api_key="sk-100000-" + "x" * 16, n=4, max_tokens=40))
        assert chat(url, api_key="sk-100001-" + "x" * 16).status_code == 401
    att = Attributor(master, Candidates.from_accounts(Accounts.from_mapping(mapping)))
    r = att.attribute_pooled(texts)
    assert r.n_candidates == 100_000
    assert r.account_at(1e-6) == "acct-100000", r

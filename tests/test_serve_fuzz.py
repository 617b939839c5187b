"""Hostile bodies for the chat route, generated: arbitrary bytes, arbitrary JSON and near-valid
chat requests sent to the real server on loopback. Each gets a 200 answer or an OpenAI error
body with a 4xx status, never a 5xx or a traceback; without a valid API key, always a 401.
The parser itself (:mod:`~distillmark.watermark.serve.request`) is also driven directly."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from serving_helpers import MODEL_NAME, serving, tiny_generator

from distillmark.watermark import WatermarkSpec, new_spec
from distillmark.watermark.accounts import AccountLayerParams
from distillmark.watermark.keys import SECRET_BYTES
from distillmark.watermark.serve.intake import validation_error
from distillmark.watermark.serve.protocol import APIError, stop_strings
from distillmark.watermark.serve.request import ChatRequest, message_text
from distillmark.watermark.tokenizer import TokenizerInfo

KEYS = {"sk-alice-0123456789": "alice", "sk-bob-9876543210": "bob"}
#: Small limits, so that every accepted request costs a few tokens and 413s are reachable.
LIMITS: dict[str, Any] = {"default_max_tokens": 4, "max_tokens_limit": 8, "max_n": 2,
                          "max_body_bytes": 16 << 10, "max_messages": 16}
#: Examples per test over HTTP (fewer for the second server): the whole file runs in under a
#: minute on two busy cores.
HTTP_EXAMPLES = 90
#: No "explain" phase: its report parses this file's source, which has failed on CPython 3.11
#: (SystemError from ast) after a failing example here, hiding the example.
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]
FUZZ = settings(max_examples=HTTP_EXAMPLES, deadline=None, phases=PHASES,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --------------------------------------------------------------------------------------------
# Strategies

HUGE_INTS = st.integers(min_value=-(10**40), max_value=10**40) | st.sampled_from(
    [2**31, 2**32, 2**32 - 1, 2**53 + 1, 2**63, 2**64, -(2**63) - 1, 10**4000 - 1])
INTS = st.integers(min_value=-3, max_value=10) | HUGE_INTS
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 5e-324, 1e-300, 1e-30, 0.5, 1.0, 2.0, 2.0000001, 1e308])
SCALARS = (st.none() | st.booleans() | INTS | FLOATS | st.text(max_size=30))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=8)
TEXT = st.text(max_size=60) | st.sampled_from(["", "\x00", "<|im_end|>", "<|im_start|>user",
                                               "\ufffd", "😀" * 20, "a\r\nb"])
PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "text", "image_url", "input_audio", "", "TEXT"])
     | JSON_VALUES},
    optional={"text": TEXT | JSON_VALUES, "image_url": JSON_VALUES, "extra": JSON_VALUES})
CONTENT = TEXT | st.lists(PART, max_size=4) | st.none() | JSON_VALUES
ROLES = st.sampled_from(["system", "developer", "user", "user", "assistant", "tool",
                         "function", "", "USER"]) | JSON_VALUES
MESSAGE = st.fixed_dictionaries({"role": ROLES}, optional={
    "content": CONTENT, "name": TEXT, "tool_calls": JSON_VALUES, "refusal": JSON_VALUES})
VALID_MESSAGE = st.fixed_dictionaries({
    "role": st.sampled_from(["system", "developer", "user", "assistant"]),
    "content": TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
                               min_size=1, max_size=3)})
#: A chat request the server answers (unless its messages hold no text at all).
VALID_BODY = st.fixed_dictionaries(
    {"model": st.just(MODEL_NAME), "messages": st.lists(VALID_MESSAGE, min_size=1, max_size=4)},
    optional={"max_tokens": st.integers(1, LIMITS["max_tokens_limit"]),
              "temperature": st.floats(0.0, 2.0), "top_p": st.floats(0.0, 1.0, exclude_min=True),
              "n": st.integers(1, LIMITS["max_n"]), "seed": st.integers(0, 2**32 - 1),
              "stream": st.booleans(),
              "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
              "stop": st.lists(st.text(min_size=1, max_size=8), max_size=4), "user": TEXT})
#: Where an edit of a valid body lands: every field the server reads, fields it refuses,
#: fields it ignores, and the parts of the first and last messages.
PATHS: list[tuple[str | int, ...]] = [(name,) for name in (
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
    "seed", "stream", "stream_options", "stop", "logprobs", "top_logprobs", "tools",
    "response_format", "logit_bias", "presence_penalty", "frequency_penalty", "user",
    "metadata", "x-unknown")] + [
    ("messages", 0), ("messages", 0, "role"), ("messages", 0, "content"),
    ("messages", -1, "content"), ("messages", 0, "content", 0),
    ("messages", 0, "content", 0, "type"), ("messages", 0, "content", 0, "text"),
    ("messages", 0, "name"), ("stream_options", "include_usage")]
#: An edit's value: deletion, a wrong type or an extreme, or a message or part gone astray.
DELETE = object()
EDIT_VALUES = (st.just(DELETE) | SCALARS | JSON_VALUES | PART | MESSAGE | CONTENT
               | st.lists(VALID_MESSAGE, min_size=LIMITS["max_messages"] + 1,
                          max_size=LIMITS["max_messages"] + 4))


def _edited(body: dict[str, Any], edits: list[tuple[tuple[str | int, ...], Any]]
            ) -> dict[str, Any]:
    """``body`` with each edit applied where its path leads (an edit that leads nowhere is
    dropped)."""
    for path, value in edits:
        node: Any = body
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else (
                node[key] if isinstance(node, list) and isinstance(key, int) and node else None)
        last = path[-1]
        if isinstance(node, dict) and isinstance(last, str):
            if value is DELETE:
                node.pop(last, None)
            else:
                node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and node:
            if value is DELETE:
                del node[last]
            else:
                node[last] = value
    return body


#: A chat body near a valid one: a valid body, and none to three edits of it.
CHAT_BODY = st.builds(_edited, VALID_BODY, st.lists(st.tuples(st.sampled_from(PATHS),
                                                               EDIT_VALUES), max_size=3))
#: Raw texts no JSON encoder writes: deep nesting, long numbers, lone surrogates, NaN.
ODD_JSON = st.one_of(
    st.integers(1, 3000).map(lambda d: "[" * d + "]" * d),
    st.integers(1, 3000).map(lambda d: '{"a":' * d + "1" + "}" * d),
    st.integers(1, 3000).map(lambda d: "[" * d),
    st.sampled_from(["9" * 5000, "1e999", "-1e999", "NaN", "Infinity", '"\\ud800"',
                     '"\\udfff\\ud800x"', '"\\u0000"', "1" * 4300, "{}", "[]", "null"]))


def _mutate(raw: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    """``raw`` with each edit's bytes replacing one byte at its position (modulo the length)."""
    out = bytearray(raw)
    for pos, new in edits:
        i = pos % (len(out) + 1)
        out[i:i + 1] = new
    return bytes(out)


def _encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


VALID_BYTES = CHAT_BODY.map(_encode)
#: What a hostile client may send as a body.
BODIES = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    JSON_VALUES.map(_encode),
    VALID_BYTES,
    VALID_BYTES,
    st.tuples(VALID_BYTES, st.lists(st.tuples(st.integers(0, 10**4), st.binary(max_size=3)),
                                    min_size=1, max_size=3)).map(lambda t: _mutate(*t)),
    st.tuples(CHAT_BODY, ODD_JSON, st.sampled_from(["x-field", "seed", "messages", "stop"]))
    .map(lambda t: _encode(t[0])[:-1] + f', "{t[2]}": {t[1]}}}'.encode()),
    ODD_JSON.map(str.encode),
    st.integers(LIMITS["max_body_bytes"] - 8, LIMITS["max_body_bytes"] + 64).map(
        lambda n: b'{"model": "' + b"x" * n + b'"}'),
)

# --------------------------------------------------------------------------------------------
# What every answer must be


def assert_error_body(resp: httpx.Response) -> dict[str, Any]:
    """``resp`` is an OpenAI error: a 4xx status and ``{"error": {message, type, param,
    code}}`` with the types OpenAI gives them; returns the error."""
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:400])
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"] and "\n" not in err["message"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    return err


def assert_answer(resp: httpx.Response) -> None:
    """``resp`` is a chat completion (plain or streamed) or an OpenAI error with a 4xx."""
    assert "Traceback" not in resp.text
    if resp.status_code != 200:
        assert_error_body(resp)
        return
    if resp.headers["content-type"].startswith("text/event-stream"):
        events = [e.removeprefix("data: ") for e in resp.text.split("\n\n") if e]
        assert events[-1] == "[DONE]", resp.text[-400:]
        for event in map(json.loads, events[:-1]):
            if "error" in event:  # refused once the stream had begun: still not a fault
                assert event["error"]["type"] == "invalid_request_error", event
            else:
                assert event["object"] == "chat.completion.chunk", event
        return
    data = resp.json()
    assert data["object"] == "chat.completion" and data["model"] == MODEL_NAME
    assert 1 <= len(data["choices"]) <= LIMITS["max_n"]
    assert all(isinstance(c["message"]["content"], str) for c in data["choices"])


# --------------------------------------------------------------------------------------------
# Fixtures: one server without accounts, one with


class _Errors(logging.Handler):
    """Keeps the error lines the server logs (an unexpected fault is logged as one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread: a few tokens at a time go faster without threads that compete for a
    busy machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def server_errors() -> Iterator[_Errors]:
    """The server's error log; every test below ends with it empty."""
    handler = _Errors()
    logger = logging.getLogger("distillmark.serve")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(autouse=True)
def _no_server_faults(server_errors: _Errors) -> Iterator[None]:
    server_errors.lines.clear()
    yield
    assert server_errors.lines == []


@pytest.fixture(scope="module")
def master(tokenizer_info: TokenizerInfo) -> WatermarkSpec:
    return new_spec("greenlist", {}, tokenizer_info, secret=bytes(range(7, 7 + SECRET_BYTES)),
                    accounts=AccountLayerParams())


@pytest.fixture(scope="module")
def open_client(master: WatermarkSpec) -> Iterator[httpx.Client]:
    """A client of a server without accounts (every request is served)."""
    with serving(tiny_generator(), spec=master, **LIMITS) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def accounts_client(master: WatermarkSpec) -> Iterator[httpx.Client]:
    """A client of a server with accounts (:data:`KEYS`)."""
    with serving(tiny_generator(), spec=master, accounts=KEYS, **LIMITS) as url, \
            httpx.Client(base_url=url, timeout=60) as client:
        yield client


def post(client: httpx.Client, content: bytes, headers: dict[str, str] | None = None
         ) -> httpx.Response:
    return client.post("/chat/completions", content=content,
                       headers={"content-type": "application/json", **(headers or {})})


# --------------------------------------------------------------------------------------------
# Over HTTP


@FUZZ
@given(body=BODIES)
def test_any_body_gets_an_answer_or_an_openai_4xx(open_client: httpx.Client, body: bytes
                                                   ) -> None:
    assert_answer(post(open_client, body))


@FUZZ
@given(body=CHAT_BODY)
def test_any_near_valid_chat_request_gets_an_answer_or_an_openai_4xx(
        open_client: httpx.Client, body: dict[str, Any]) -> None:
    raw = _encode(body)
    resp = post(open_client, raw)
    assert_answer(resp)
    if len(raw) > LIMITS["max_body_bytes"]:
        assert resp.status_code == 413
        return
    try:
        req = ChatRequest.model_validate(json.loads(raw))
    except ValidationError:
        assert resp.status_code == 400  # the parser's refusal, not a 404 or a 413
    else:
        if resp.status_code == 200:
            assert req.model == MODEL_NAME and len(req.messages) <= LIMITS["max_messages"]


def _accepted(auth: str | None) -> bool:
    """Whether the server takes ``auth`` as an Authorization header naming one of KEYS."""
    scheme, _, token = (auth or "").partition(" ")
    return scheme.lower() == "bearer" and token.strip() in KEYS


#: Authorization headers of strangers: none, malformed, other schemes, near-miss keys.
STRANGERS = st.one_of(
    st.none(),
    st.sampled_from(["", "Bearer", "bearer sk-alice-012345678",
                     "Basic c2stYWxpY2UtMDEyMzQ1Njc4OQ==", "sk-alice-0123456789",
                     "Bearer sk-alice-0123456789x", "Bearer sk-ALICE-0123456789",
                     "Bearer  sk-bob-987654321", "Token sk-bob-9876543210"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(
        lambda t: f"Bearer {t}"),
).filter(lambda h: not _accepted(h))


@FUZZ
@given(body=BODIES, auth=STRANGERS)
def test_a_stranger_gets_a_401_whatever_the_body(accounts_client: httpx.Client, body: bytes,
                                                 auth: str | None) -> None:
    resp = post(accounts_client, body,
                {"authorization": auth.strip()} if auth is not None else None)
    assert resp.status_code == 401, resp.text[:400]
    assert assert_error_body(resp)["code"] == "invalid_api_key"
    assert resp.headers["www-authenticate"] == "Bearer"


@settings(max_examples=HTTP_EXAMPLES // 2, deadline=None, phases=PHASES,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(body=BODIES, key=st.sampled_from(sorted(KEYS)))
def test_an_account_gets_an_answer_or_an_openai_4xx(accounts_client: httpx.Client,
                                                    body: bytes, key: str) -> None:
    assert_answer(post(accounts_client, body, {"authorization": f"Bearer {key}"}))


# --------------------------------------------------------------------------------------------
# The parser alone


@settings(max_examples=250, deadline=None, phases=PHASES)
@given(data=CHAT_BODY | JSON_VALUES)
def test_the_parser_takes_a_body_or_words_one_4xx(data: Any) -> None:
    """Whatever JSON value: a ChatRequest whose messages read as text or refuse with a 400,
    or pydantic's complaint worded as a 400 with a one-line message."""
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        assert errors
        for err in errors:
            api = validation_error(dict(err))
            assert api.status == 400 and api.message and "\n" not in api.message
            json.dumps(api.body())
        return
    assert isinstance(data, dict) and req.messages
    for i, m in enumerate(req.messages):
        try:
            assert isinstance(message_text(m, i), str)
        except APIError as exc:
            assert exc.status == 400 and exc.param == f"messages.{i}.content"
    try:
        assert all(isinstance(s, str) and s for s in stop_strings(req.stop))
    except APIError as exc:
        assert exc.status == 400 and exc.param == "stop"

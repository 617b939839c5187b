"""The black-box probe: pooled scoring of answers (pure), and the HTTP client against real
servers on loopback (the tiny model served watermarked and not, a killed and restarted server,
scripted fake endpoints for retries, budgets and faults), and the ``probe`` command."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from scipy import stats
from serving_helpers import MODEL_NAME, serving, tiny_generator
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from typer.testing import CliRunner

from distillmark.cli.main import app
from distillmark.verify import Verdict
from distillmark.verify.probe import (
    EndpointError,
    ResponseCache,
    SamplingParams,
    chat_completions_url,
    fetch_answers,
    probe,
    read_reference,
    reference_from_texts,
    score_answers,
)
from distillmark.verify.prompts import builtin_prompts
from distillmark.watermark import InputError, ParameterError, WatermarkSpec, new_spec, save_spec
from distillmark.watermark.accounts import AccountLayerParams
from distillmark.watermark.keys import SECRET_BYTES
from distillmark.watermark.serve import start_server
from distillmark.watermark.tokenizer import TokenizerInfo

PROBE_SECRET = bytes(range(150, 150 + SECRET_BYTES))
RUNNER = CliRunner()
PROMPTS = builtin_prompts(12)
SAMPLING = SamplingParams(max_tokens=40)
DETECT_KEYS = {"statistic", "pvalue", "log10_pvalue", "n_tokens", "n_scored", "n_repeated",
               "score_mean", "null_mean", "z_score", "test", "min_scored", "scheme", "key_id",
               "alpha", "verdict"}
PROBE_KEYS = {"endpoint", "model", "n_answers", "n_empty", "n_prompt_excluded", "n_prompts",
              "n_samples", "n_queries", "n_fetched", "n_cached", "n_retries", "n_failed",
              "budget_exhausted", "n_filtered", "n_reference", "detectable_fraction"}


@pytest.fixture(scope="module", autouse=True)
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def spec(tokenizer_info: TokenizerInfo) -> WatermarkSpec:
    return new_spec("greenlist", {}, tokenizer_info, secret=PROBE_SECRET)


@pytest.fixture(scope="module")
def marked_url(spec: WatermarkSpec) -> Iterator[str]:
    with serving(tiny_generator(seed=1), spec=spec) as url:
        yield url


@pytest.fixture(scope="module")
def plain_url() -> Iterator[str]:
    with serving(tiny_generator(seed=2), spec=None) as url:
        yield url


@pytest.fixture(scope="module")
def marked_pairs(marked_url: str) -> list[tuple[str, str]]:
    return fetch_answers(marked_url, MODEL_NAME, PROMPTS, sampling=SAMPLING).pairs


@pytest.fixture(scope="module")
def plain_pairs(plain_url: str) -> list[tuple[str, str]]:
    got = fetch_answers(plain_url, MODEL_NAME, builtin_prompts(24), sampling=SAMPLING,
                        concurrency=8)
    assert len(got.pairs) == 24
    return got.pairs


def cli(*args: Any, env: dict[str, str] | None = None) -> Any:
    result = RUNNER.invoke(app, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}") from result.exception
    assert "Traceback" not in result.stdout + result.stderr
    return result


def error_line(result: Any) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return str(lines[0])


# --------------------------------------------------------------------------------------------
# Scoring (no HTTP)


def test_answers_are_pooled_with_distinct_tuples(spec: WatermarkSpec,
                                                 marked_pairs: list[tuple[str, str]]) -> None:
    once = score_answers(marked_pairs, spec)
    assert once.n_answers == len(PROMPTS) and once.n_empty == 0
    assert once.is_watermarked(1e-6), once
    # asking again and getting the same answers adds no evidence
    thrice = score_answers(marked_pairs * 3, spec)
    assert thrice.n_scored == once.n_scored and thrice.pvalue == once.pvalue
    assert thrice.aggregate.n_repeated > once.aggregate.n_repeated


def test_empty_answers_are_counted_not_scored(spec: WatermarkSpec,
                                              marked_pairs: list[tuple[str, str]]) -> None:
    with_empty = [*marked_pairs, ("Hi", ""), ("Hello", "   \n")]
    r = score_answers(with_empty, spec)
    assert r.n_answers == len(marked_pairs) + 2 and r.n_empty == 2
    assert r.n_scored == score_answers(marked_pairs, spec).n_scored
    nothing = score_answers([("Hi", ""), ("Hello", " ")], spec)
    assert nothing.n_scored == 0 and nothing.verdict() == Verdict.INSUFFICIENT
    assert nothing.to_dict(1e-3)["detectable_fraction"] is None


def test_prompt_windows_are_not_evidence(spec: WatermarkSpec,
                                         marked_pairs: list[tuple[str, str]]) -> None:
    """A suspect that echoes its (watermarked) prompt is not convicted by the echo."""
    text = "\n".join(a for _, a in marked_pairs)
    echoed = score_answers([(text, text)], spec)
    assert echoed.n_scored == 0 and echoed.n_prompt_excluded > 200
    assert echoed.verdict() == Verdict.INSUFFICIENT
    counted = score_answers([(text, text)], spec, exclude_prompts=False)
    assert counted.n_scored > 200 and counted.is_watermarked(1e-6)


def test_reference_filter_scores_only_reference_tuples(
        spec: WatermarkSpec, marked_pairs: list[tuple[str, str]],
        plain_pairs: list[tuple[str, str]], tmp_path: Path) -> None:
    """The filtered test is the test of the kept tuples; a reference that does not carry the
    key (here: the unwatermarked server's answers) is accepted as it is."""
    plain_ref = reference_from_texts([a for _, a in plain_pairs], spec)
    kept = score_answers(marked_pairs, spec, reference=plain_ref)
    assert -3 < kept.reference_log10_pvalue <= 0
    assert kept.to_dict()["reference_log10_pvalue"] == kept.reference_log10_pvalue
    # mechanics, on a reference that overlaps the answers (marked: allowed explicitly)
    ref_texts = [a for _, a in marked_pairs[:3]]
    ref = reference_from_texts(ref_texts, spec)
    full = score_answers(marked_pairs, spec)
    filtered = score_answers(marked_pairs, spec, reference=ref, allow_marked_reference=True)
    agg = filtered.aggregate
    assert agg.n_reference == len(ref) and agg.n_filtered > 0 and agg.n_scored > 0
    assert agg.n_scored + agg.n_filtered == full.n_scored
    # the same set from a file, as JSON Lines (generate --json) or as one text file
    jl = tmp_path / "ref.jsonl"
    jl.write_text("".join(json.dumps({"prompt": "p", "text": t}) + "\n" for t in ref_texts))
    assert np.array_equal(read_reference(jl, spec).keys(), ref.keys())
    txt = tmp_path / "ref.txt"
    txt.write_text(ref_texts[0])
    assert len(read_reference(txt, spec)) > 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"prompt": "no text"}\n')
    with pytest.raises(InputError, match=rf"^{bad}:2: record has no 'text' string field$"):
        read_reference(bad, spec)


def test_a_reference_carrying_the_key_is_refused(spec: WatermarkSpec,
                                                marked_pairs: list[tuple[str, str]],
                                                plain_pairs: list[tuple[str, str]]) -> None:
    """Tuples of text written with the key are green more often than chance: filtering a
    clean model's answers on them would convict it. Refused unless asked for."""
    marked_ref = reference_from_texts([a for _, a in marked_pairs], spec)
    with pytest.raises(InputError, match=r"^the reference corpus carries this key's watermark "
                                         r"\(p = 1e-\d+\.\d\): filtering on its tuples"):
        score_answers(plain_pairs, spec, reference=marked_ref)
    allowed = score_answers(plain_pairs, spec, reference=marked_ref,
                            allow_marked_reference=True)
    assert allowed.reference_log10_pvalue < -10


def _foreign_tokenizer(texts: list[str]) -> Tokenizer:
    """A small BPE tokenizer trained here: token boundaries unlike SmolLM2's."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400,
                                                       special_tokens=["[UNK]"]))
    return tok


def test_p_values_are_calibrated_on_another_tokenizers_text(
        tokenizer_info: TokenizerInfo, human_texts: list[str], tmp_path: Path) -> None:
    """Answers written with another tokenizer are re-tokenised with the key's: the null holds."""
    foreign = _foreign_tokenizer(human_texts[:100])
    rng = np.random.default_rng(0)
    vocab = foreign.get_vocab_size()
    answers = [foreign.decode(rng.integers(1, vocab, size=60).tolist()) for _ in range(30)]
    pairs = list(zip(builtin_prompts(30), answers))
    pvalues = []
    for _ in range(40):
        key = new_spec("greenlist", {}, tokenizer_info, secret=os.urandom(32))
        r = score_answers(pairs, key)
        assert r.n_scored > 300
        pvalues.append(r.pvalue)
    assert stats.kstest(pvalues, "uniform", alternative="greater").pvalue > 1e-3
    assert min(pvalues) > 1e-4
    # the same answers served by an endpoint: probed through HTTP, one clean verdict
    by_prompt = dict(pairs)
    key = save_spec(new_spec("greenlist", {}, tokenizer_info, secret=PROBE_SECRET),
                    tmp_path / "wm.json")
    with scripted(lambda p, a: completion(by_prompt[p])) as (url, _):
        r = cli("probe", "--endpoint", url, "--model", "other", "--key", key,
                "--n-prompts", 30, "--json")
    assert r.exit_code == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["verdict"] == "not watermarked" and d["n_answers"] == 30 and d["n_scored"] > 300


# --------------------------------------------------------------------------------------------
# Probing real servers


def test_probe_finds_the_watermarked_endpoint(marked_url: str, spec: WatermarkSpec,
                                              tmp_path: Path) -> None:
    key = save_spec(spec, tmp_path / "wm.json")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    r = cli("probe", "--endpoint", marked_url, "--model", MODEL_NAME, "--key", key,
            "--prompts", prompts, "--max-tokens", 40, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert DETECT_KEYS | PROBE_KEYS <= set(d)
    assert d["verdict"] == "watermarked" and d["log10_pvalue"] < -10
    assert d["n_prompts"] == d["n_queries"] == d["n_fetched"] == d["n_answers"] == len(PROMPTS)
    assert d["n_cached"] == d["n_retries"] == d["n_failed"] == 0
    assert d["key_id"] == spec.key_id and "secret" not in r.stdout
    # human output: verdict line, cost line, tuples line
    h = cli("probe", "--endpoint", marked_url, "--model", MODEL_NAME, "--key", key,
            "--n-prompts", 6, "--max-tokens", 40)
    assert h.exit_code == 0
    lines = h.stdout.splitlines()
    assert lines[0].startswith(f"{MODEL_NAME} at {chat_completions_url(marked_url)}: "
                               "watermarked (p = ")
    assert lines[1].startswith("answers: 6 of 6 prompts (6 fetched, 0 from the cache")
    assert lines[2].startswith("tuples: ")


def test_probe_clears_the_unwatermarked_endpoint(plain_url: str, spec: WatermarkSpec,
                                                 tmp_path: Path) -> None:
    key = save_spec(spec, tmp_path / "wm.json")
    r = cli("probe", "--endpoint", plain_url + "/chat/completions", "--model", MODEL_NAME,
            "--key", key, "--n-prompts", 12, "--max-tokens", 40)
    assert r.exit_code == 1, r.stderr
    lines = r.stdout.splitlines()
    assert ": not watermarked (p = " in lines[0]
    assert lines[-1].startswith("power: at this level the test finds, one time in two, a mark "
                                "carried by ")


def test_probe_p_values_are_calibrated_over_keys(plain_pairs: list[tuple[str, str]],
                                                 tokenizer_info: TokenizerInfo) -> None:
    """An unwatermarked endpoint's answers, tested with 40 independent keys: p ~ uniform."""
    pvalues = []
    for _ in range(40):
        key = new_spec("greenlist", {}, tokenizer_info, secret=os.urandom(32))
        r = score_answers(plain_pairs, key)
        assert r.n_scored > 500
        pvalues.append(r.pvalue)
    assert stats.kstest(pvalues, "uniform", alternative="greater").pvalue > 1e-3
    assert min(pvalues) > 1e-4


def test_probe_needs_the_api_key_of_an_accounts_server(spec: WatermarkSpec,
                                                       tmp_path: Path) -> None:
    key = save_spec(spec, tmp_path / "wm.json")
    served = replace(spec, accounts=AccountLayerParams())  # accounts need an account layer
    with serving(tiny_generator(), spec=served, accounts={"sk-probe-1": "acct"}) as url:
        args = ("probe", "--endpoint", url, "--model", MODEL_NAME, "--key", key,
                "--n-prompts", 3, "--max-tokens", 8)
        r = cli(*args)
        assert r.exit_code == 2
        assert error_line(r) == (
            "distillmark: error: the endpoint refused the API key (HTTP 401: no API key given "
            "(send the header Authorization: Bearer API_KEY)); 0 of 3 answers were received "
            "(use --cache DIR to keep them across runs)")
        r = cli(*args, "--api-key-env", "DM_TEST_KEY", env={"DM_TEST_KEY": "sk-probe-1"})
        assert r.exit_code in (0, 1), r.stderr
        assert "sk-probe-1" not in r.stdout + r.stderr
        r = cli(*args, "--api-key-env", "DM_UNSET_KEY", env={"DM_UNSET_KEY": ""})
        assert r.exit_code == 2
        assert error_line(r) == ("distillmark: error: environment variable DM_UNSET_KEY "
                                 "(--api-key-env) is not set or empty")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_cli_server(model_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "distillmark", "serve", "--no-watermark", "--model",
         str(model_dir), "--engine", "transformers", "--port", str(port), "--threads", "1",
         "--served-model-name", MODEL_NAME, "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not start")


def test_probe_cache_survives_a_killed_server(tmp_path: Path) -> None:
    """Kill the server mid-probe: what was fetched is cached, the probe stops with one line;
    restart and rerun: it resumes, and no prompt is asked twice."""
    gen = tiny_generator(seed=3)
    model_dir = tmp_path / "tiny"
    gen.model.save_pretrained(model_dir)
    gen.tokenizer.save_pretrained(model_dir)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    prompts = builtin_prompts(30)
    cache = tmp_path / "cache"
    sampling = SamplingParams(max_tokens=64, seed=0)
    server = _start_cli_server(model_dir, port)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fetch_answers(url, MODEL_NAME, prompts, sampling=sampling, cache=cache,
                          concurrency=1, retries=2, backoff=0.05, timeout=30)
        except BaseException as exc:  # noqa: BLE001 - examined below
            failure.append(exc)

    try:
        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 300
        while len(list(cache.glob("*.json"))) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        worker.join(120)
    finally:
        if server.poll() is None:
            server.kill()
    n_cached = len(list(cache.glob("*.json")))
    assert 4 <= n_cached < len(prompts), n_cached
    assert not list(cache.glob(".tmp-*")), "a half-written cache file"
    assert len(failure) == 1 and isinstance(failure[0], EndpointError)
    message = str(failure[0])
    assert message.startswith(f"cannot reach {url}/v1/chat/completions: ConnectError")
    assert message.endswith(f"(after 3 attempts); {n_cached} of 30 answers are cached in "
                            f"{cache}: run the same command again to resume")

    server = _start_cli_server(model_dir, port)
    try:
        got = fetch_answers(url, MODEL_NAME, prompts, sampling=sampling, cache=cache,
                            concurrency=4)
        served = httpx.get(f"{url}/health").json()["requests_served"]
    finally:
        server.kill()
        server.wait(30)
    s = got.stats
    assert (s.n_cached, s.n_fetched, s.n_queries) == (n_cached, 30 - n_cached, 30 - n_cached)
    assert served == 30 - n_cached
    assert len(got.pairs) == 30 and [p for p, _ in got.pairs] == prompts
    # a third run pays nothing at all
    again = fetch_answers(url, MODEL_NAME, prompts, sampling=sampling, cache=cache)
    assert again.stats.n_queries == 0 and again.stats.n_cached == 30
    assert again.pairs == got.pairs


# --------------------------------------------------------------------------------------------
# Scripted endpoints: retries, budget, faults


class Script:
    """A fake OpenAI endpoint: ``behaviour(prompt, attempt)`` -> a response."""

    def __init__(self, behaviour: Callable[[str, int], Response]) -> None:
        self.behaviour = behaviour
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            body = await request.json()
            prompt = body["messages"][-1]["content"]
            with self.lock:
                self.attempts[prompt] = self.attempts.get(prompt, 0) + 1
                attempt = self.attempts[prompt]
            return self.behaviour(prompt, attempt)


def completion(text: str | None) -> JSONResponse:
    return JSONResponse({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text},
         "finish_reason": "stop"}]})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "x", "param": None,
                                   "code": None}}, status_code=status, headers=headers)


@contextmanager
def scripted(behaviour: Callable[[str, int], Response]) -> Iterator[tuple[str, Script]]:
    script = Script(behaviour)
    server = start_server(script.app)
    try:
        yield server.url, script
    finally:
        server.stop()


def test_retries_after_429_and_5xx_with_backoff() -> None:
    def flaky(prompt: str, attempt: int) -> Response:
        if attempt == 1:
            return error(429, "slow down", {"Retry-After": "0"})
        if attempt == 2:
            return error(503, "overloaded")
        if attempt == 3 and prompt.startswith("Write"):
            return Response("<html>bad gateway</html>", status_code=502)
        return completion(f"an answer to {prompt}")

    prompts = builtin_prompts(6)
    with scripted(flaky) as (url, script):
        t0 = time.monotonic()
        got = fetch_answers(url, "m", prompts, retries=3, backoff=0.01, concurrency=3)
        elapsed = time.monotonic() - t0
    n_extra = sum(p.startswith("Write") for p in prompts)
    assert [a for _, a in got.pairs] == [f"an answer to {p}" for p in prompts]
    assert got.stats.n_retries == 2 * len(prompts) + n_extra
    assert got.stats.n_queries == 3 * len(prompts) + n_extra == sum(script.attempts.values())
    assert elapsed < 30  # backoff of 10 ms, doubling: no long sleeps
    with scripted(flaky) as (url, _), pytest.raises(
            EndpointError, match=r"^HTTP 503: overloaded \(after 2 attempts\); 0 of 6 answers "
                                 r"were received"):
        fetch_answers(url, "m", prompts, retries=1, backoff=0.01)


def test_request_budget_stops_the_probe_and_cache_makes_reruns_free(tmp_path: Path) -> None:
    prompts = builtin_prompts(10)
    with scripted(lambda p, a: completion(f"answer {p}")) as (url, script):
        got = fetch_answers(url, "m", prompts, max_requests=4, cache=tmp_path, concurrency=2)
        assert got.stats.budget_exhausted and got.stats.n_queries == 4
        assert len(got.pairs) == 4 and got.stats.n_failed == 6
        rest = fetch_answers(url, "m", prompts, max_requests=6, cache=tmp_path)
        assert not rest.stats.budget_exhausted
        assert (rest.stats.n_cached, rest.stats.n_queries) == (4, 6)
        assert sum(script.attempts.values()) == 10 and set(script.attempts.values()) == {1}
        # another model, temperature, or API key is another question: not served from cache
        other = fetch_answers(url, "m", prompts[:2], cache=tmp_path,
                              sampling=SamplingParams(temperature=0.5))
        assert other.stats.n_cached == 0
        keyed = fetch_answers(url, "m", prompts[:2], cache=tmp_path, api_key="sk-1")
        assert keyed.stats.n_cached == 0
    for f in tmp_path.glob("*.json"):
        assert "sk-1" not in f.read_text()


def test_cache_files_are_whole_answers_keyed_by_the_question(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    url = "http://h/v1/chat/completions"
    k = ResponseCache.key(url, "m", "p", {"max_tokens": 5}, None)
    assert k != ResponseCache.key(url, "m", "p", {"max_tokens": 6}, None)
    assert k != ResponseCache.key(url, "m2", "p", {"max_tokens": 5}, None)
    assert k != ResponseCache.key(url, "m", "p", {"max_tokens": 5}, "key")
    assert cache.get(k) is None
    cache.put(k, {"answer": "hello"})
    assert cache.get(k) == {"answer": "hello"} and len(cache) == 1
    (tmp_path / f"{k}.json").write_text("{broken")
    with pytest.warns(UserWarning, match="unreadable; asking again"):
        assert cache.get(k) is None


def test_empty_and_malformed_answers(tmp_path: Path) -> None:
    def odd(prompt: str, attempt: int) -> Response:
        if "tides" in prompt or prompt.startswith("Explain"):
            return completion(None if attempt % 2 else "")
        return completion("A short but real answer about many different things indeed.")

    prompts = builtin_prompts(4)
    with scripted(odd) as (url, _):
        got = fetch_answers(url, "m", prompts)
    assert len(got.pairs) == 4 and sum(not a for _, a in got.pairs) >= 1

    half = '{"choices": [{"message": {"content": "a \\ud800 b"}}]}'  # half a surrogate pair
    with scripted(lambda p, a: Response(half, media_type="application/json")) as (url, _):
        got = fetch_answers(url, "m", prompts[:1], cache=tmp_path)
    assert got.pairs == [(prompts[0], "a \ufffd b")]  # cached as UTF-8 like any answer

    deep = '{"choices": ' + "[" * 100_000 + "]" * 100_000 + "}"
    long_number = '{"choices": [{"message": {"content": 1' + "9" * 5000 + "}}]}"
    for body in ("not json", deep, long_number):
        with scripted(lambda p, a, body=body: Response(body, status_code=200)) as (url, _), \
                pytest.raises(EndpointError, match=r"^the endpoint sent a malformed answer \(not "
                                                   r"an OpenAI chat completion\) \(after 2 "
                                                   r"attempts\)"):
            fetch_answers(url, "m", prompts, retries=1, backoff=0.01)


def endless(byte_every: float = 0.0, chunk: bytes = b"x") -> StreamingResponse:
    """An answer that never ends: ``chunk`` after ``chunk``, one every ``byte_every`` s."""

    async def body() -> Any:
        yield b'{"choices": [{"message": {"content": "'
        while True:
            await asyncio.sleep(byte_every)
            yield chunk

    return StreamingResponse(body(), media_type="application/json")


def test_an_answer_trickling_in_is_cut_off_at_the_timeout(spec: WatermarkSpec,
                                                          tmp_path: Path) -> None:
    """The timeout holds for the whole answer: one byte every 0.1 s never idles long enough
    for a timeout per read, and never ends."""
    with scripted(lambda p, a: endless(byte_every=0.1)) as (url, script):
        t0 = time.monotonic()
        with pytest.raises(EndpointError, match=r"^no answer within 1 s \(timeout\) \(after 2 "
                                                r"attempts\); 0 of 1 answers were received"):
            fetch_answers(url, "m", PROMPTS[:1], timeout=1, retries=1, backoff=0.01)
        assert time.monotonic() - t0 < 30  # two deadlines of 1 s, not an endless read
        assert sum(script.attempts.values()) == 2
        key = save_spec(spec, tmp_path / "wm.json")
        r = cli("probe", "--endpoint", url, "--model", "m", "--key", key, "--n-prompts", 1,
                "--timeout", 1, "--retries", 0)
        assert r.exit_code == 2
        assert error_line(r) == ("distillmark: error: no answer within 1 s (timeout) (after 1 "
                                 "attempts); 0 of 1 answers were received (use --cache DIR to "
                                 "keep them across runs)")


def test_an_answer_past_the_size_cap_is_dropped_as_it_streams() -> None:
    too_big = (r"^the endpoint sent an answer larger than 4096 bytes \(--max-answer-bytes\) "
               r"\(after 2 attempts\)")
    # streamed without a length and never ending: read up to the cap, not to the end
    with scripted(lambda p, a: endless(chunk=b"x" * 1024)) as (url, _), \
            pytest.raises(EndpointError, match=too_big):
        fetch_answers(url, "m", PROMPTS[:1], max_answer_bytes=4096, retries=1, backoff=0.01,
                      timeout=60)
    # a length over the cap is refused from the header
    with scripted(lambda p, a: completion("y" * 5000)) as (url, _), \
            pytest.raises(EndpointError, match=too_big):
        fetch_answers(url, "m", PROMPTS[:1], max_answer_bytes=4096, retries=1, backoff=0.01)
    with scripted(lambda p, a: completion("y" * 3000)) as (url, _):
        got = fetch_answers(url, "m", PROMPTS[:1], max_answer_bytes=4096)
        assert got.pairs == [(PROMPTS[0], "y" * 3000)]
    # an error's body is capped alike
    with scripted(lambda p, a: error(503, "z" * 5000)) as (url, _), \
            pytest.raises(EndpointError, match=too_big):
        fetch_answers(url, "m", PROMPTS[:1], max_answer_bytes=4096, retries=1, backoff=0.01)


def test_requests_rejected_as_bad_stop_early() -> None:
    with scripted(lambda p, a: error(400, "max_tokens is too large")) as (url, script):
        with pytest.raises(EndpointError, match=r"^the endpoint rejected the first 5 requests "
                                                r"\(prompt \d+: HTTP 400: max_tokens is too "
                                                r"large\)"):
            fetch_answers(url, "m", builtin_prompts(40), concurrency=1)
        assert sum(script.attempts.values()) == 5


def test_probe_command_faults_are_one_line(spec: WatermarkSpec, tmp_path: Path) -> None:
    key = save_spec(spec, tmp_path / "wm.json")
    down = f"http://127.0.0.1:{_free_port()}"
    base = ("probe", "--model", "m", "--key", key)
    broken = tmp_path / "prompts.jsonl"
    broken.write_text('{"prompt": "one"}\n{"prompt": "two"\n')
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    cases = [
        ((*base, "--endpoint", down, "--n-prompts", 2, "--retries", 1, "--backoff", 0.01),
         (f"distillmark: error: cannot reach {down}/v1/chat/completions: ConnectError: "
          "All connection attempts failed (after 2 attempts); 0 of 2 answers were received "
          "(use --cache DIR to keep them across runs)")),
        ((*base, "--endpoint", down, "--prompts", broken),
         (f"distillmark: error: {broken}:2: not valid JSON: Expecting ',' delimiter at "
          "column 17")),
        ((*base, "--endpoint", down, "--prompts", deep),
         f"distillmark: error: {deep}:1: JSON arrays or objects nested too deeply"),
        ((*base, "--endpoint", "ftp://x"),
         "distillmark: error: --endpoint must be an http:// or https:// URL, got 'ftp://x'"),
        ((*base, "--endpoint", down, "--n-prompts", 0),
         "distillmark: error: the number of prompts must be >= 1, got 0"),
        ((*base, "--endpoint", down, "--temperature", 3),
         "distillmark: error: --temperature must be in [0, 2], got 3.0"),
        ((*base, "--endpoint", down, "--reference", tmp_path / "nope.jsonl"),
         f"distillmark: error: {tmp_path / 'nope.jsonl'}: no such reference file"),
    ]
    for args, line in cases:
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert error_line(r) == line
    with scripted(lambda p, a: error(404, "no such model")) as (url, _):
        r = cli(*base, "--endpoint", url, "--n-prompts", 2)
        assert r.exit_code == 2
        assert error_line(r).startswith(
            "distillmark: error: HTTP 404 from http://127.0.0.1:")
        assert "no such model (wrong --endpoint or --model?)" in r.stderr
    with scripted(lambda p, a: completion("")) as (url, _):
        r = cli(*base, "--endpoint", url, "--n-prompts", 5, "--json")
        assert r.exit_code == 1
        d = json.loads(r.stdout)
        assert d["verdict"] == "insufficient evidence" and d["n_empty"] == 5
        assert d["n_scored"] == 0


def test_chat_completions_url() -> None:
    for given in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/chat/completions"):
        assert chat_completions_url(given) == "http://h:1/v1/chat/completions"
    with pytest.raises(InputError):
        chat_completions_url("h:1")


def test_probe_function_combines_fetch_and_score(marked_url: str, spec: WatermarkSpec) -> None:
    r = probe(marked_url, MODEL_NAME, spec, builtin_prompts(4), sampling=SAMPLING)
    d = r.to_dict(1e-3)
    assert r.queries.n_queries == 4 and r.answers.n_answers == 4
    assert d["pvalue"] == r.pvalue and d["n_queries"] == 4 and d["model"] == MODEL_NAME


def test_probe_command_refuses_a_marked_reference_before_asking(
        spec: WatermarkSpec, marked_pairs: list[tuple[str, str]], tmp_path: Path) -> None:
    key = save_spec(spec, tmp_path / "wm.json")
    ref = tmp_path / "teacher.jsonl"
    ref.write_text("".join(json.dumps({"text": a}) + "\n" for _, a in marked_pairs))
    down = f"http://127.0.0.1:{_free_port()}"  # never reached: the refusal comes first
    r = cli("probe", "--endpoint", down, "--model", "m", "--key", key, "--reference", ref)
    assert r.exit_code == 2
    line = error_line(r)
    assert line.startswith("distillmark: error: the reference corpus carries this key's "
                           "watermark (p = 1e-")
    assert line.endswith("or accept a p-value that is not exact with "
                         "--allow-marked-reference")


def test_core_imports_stay_free_of_the_serving_stack() -> None:
    """``import distillmark.verify`` and the CLI must not pull in fastapi, uvicorn, httpx or
    torch: detection works with the core dependencies alone."""
    code = ("import sys, distillmark.verify, distillmark.verify.probe, distillmark.cli.main; "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'httpx', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Several samples per prompt


def test_samples_come_in_one_request_per_prompt(marked_url: str, spec: WatermarkSpec,
                                                tmp_path: Path) -> None:
    prompts = builtin_prompts(4)
    got = fetch_answers(marked_url, MODEL_NAME, prompts, sampling=SAMPLING, samples=3,
                        cache=tmp_path / "c")
    s = got.stats
    assert (s.n_prompts, s.n_samples, s.n_wanted, s.n_queries) == (4, 3, 12, 4)
    assert s.n_fetched == 12 and s.n_cached == s.n_failed == 0
    assert [p for p, _ in got.pairs] == [p for p in prompts for _ in range(3)]
    for i in range(4):  # three different draws of the same prompt
        assert len({a for _, a in got.pairs[3 * i:3 * i + 3]}) == 3
    assert len(list((tmp_path / "c").glob("*.json"))) == 12
    # the cached answers come back in the same order, for free
    again = fetch_answers(marked_url, MODEL_NAME, prompts, sampling=SAMPLING, samples=3,
                          cache=tmp_path / "c")
    assert again.pairs == got.pairs and again.stats.n_queries == 0
    assert again.stats.n_cached == 12
    # a one-sample probe of the same question reads sample 0 of each prompt from the cache
    one = fetch_answers(marked_url, MODEL_NAME, prompts, sampling=SAMPLING,
                        cache=tmp_path / "c")
    assert one.stats.n_queries == 0 and one.pairs == got.pairs[::3]
    r = probe(marked_url, MODEL_NAME, spec, prompts, sampling=SAMPLING, samples=3,
              cache=tmp_path / "c")
    assert r.answers.n_answers == 12 and r.is_watermarked(1e-6)


def test_samples_fall_back_to_one_request_each(tmp_path: Path) -> None:
    """An endpoint that ignores ``n`` (one choice per request) is asked each missing sample
    alone, with its own seed; an interrupted probe asks only the samples it lacks."""
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()
    fake = FastAPI()

    @fake.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        with lock:
            bodies.append(body)
            k = len(bodies)
        return completion(f"answer {k} to {body['messages'][-1]['content']}")

    prompts = builtin_prompts(3)
    server = start_server(fake)
    try:
        got = fetch_answers(server.url, "m", prompts, samples=4, cache=tmp_path,
                            sampling=SamplingParams(seed=100), concurrency=1, timeout=600)
        assert got.stats.n_queries == 12 and got.stats.n_fetched == 12
        assert len({a for _, a in got.pairs}) == 12
        first = [b for b in bodies if b.get("n") == 4]
        alone = [b for b in bodies if "n" not in b]
        assert [b["seed"] for b in first] == [100, 101, 102]
        # sample k of prompt i alone: seed + i + k * n_prompts
        assert sorted(b["seed"] for b in alone) == sorted(100 + i + 3 * k for i in range(3)
                                                          for k in range(1, 4))
        # lose two cached samples: the rerun asks exactly those, one request each
        files = sorted(tmp_path.glob("*.json"))
        recs = [json.loads(f.read_text()) for f in files]
        lost = [f for f, r in zip(files, recs) if r["params"].get("sample") in (2, 3)
                and r["prompt"] == prompts[1]]
        assert len(lost) == 2
        for f in lost:
            f.unlink()
        bodies.clear()
        again = fetch_answers(server.url, "m", prompts, samples=4, cache=tmp_path,
                              sampling=SamplingParams(seed=100), timeout=600)
        assert again.stats.n_cached == 10 and again.stats.n_queries == 2
        assert sorted(b["seed"] for b in bodies) == [100 + 1 + 3 * 2, 100 + 1 + 3 * 3]
        assert all("n" not in b for b in bodies)
        assert [p for p, _ in again.pairs] == [p for p in prompts for _ in range(4)]
    finally:
        server.stop()


def test_samples_count_against_the_request_budget(tmp_path: Path) -> None:
    with scripted(lambda p, a: completion(f"answer {p}")) as (url, _):
        got = fetch_answers(url, "m", builtin_prompts(5), samples=2, max_requests=4,
                            concurrency=1, timeout=600)
    # each prompt: one request for n = 2 (one choice back), one for the second sample
    assert got.stats.n_queries == 4 and got.stats.budget_exhausted
    assert len(got.pairs) == 4 and got.stats.n_failed == 6 and got.stats.n_wanted == 10
    with pytest.raises(ParameterError, match="`samples` must be >= 1, got 0"):
        fetch_answers(url, "m", ["x"], samples=0)


def test_probe_command_samples(marked_url: str, spec: WatermarkSpec, tmp_path: Path) -> None:
    key = save_spec(spec, tmp_path / "wm.json")
    r = cli("probe", "--endpoint", marked_url, "--model", MODEL_NAME, "--key", key,
            "--n-prompts", 3, "--samples", 2, "--max-tokens", 30, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["n_prompts"], d["n_samples"], d["n_queries"], d["n_answers"]) == (3, 2, 3, 6)
    h = cli("probe", "--endpoint", marked_url, "--model", MODEL_NAME, "--key", key,
            "--n-prompts", 3, "--samples", 2, "--max-tokens", 30)
    assert h.stdout.splitlines()[1].startswith("answers: 6 of 6 (3 prompts x 2 samples) "
                                               "(6 fetched, 0 from the cache")
    bad = cli("probe", "--endpoint", marked_url, "--model", MODEL_NAME, "--key", key,
              "--samples", 0)
    assert bad.exit_code == 2
    assert error_line(bad) == "distillmark: error: --samples must be >= 1, got 0"

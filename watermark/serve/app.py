"""The FastAPI application: OpenAI's chat-completion routes in front of a generator.

``POST /v1/chat/completions`` (plain JSON, or server-sent events with ``"stream": true``),
``GET /v1/models`` and ``GET /health``. A request is checked (model, fields the server cannot
honour, ``max_tokens``, ``n``, stop strings, the model's context), its account found from its
API key, and its key's scheme built (an account's own key is derived from the master key and
cached); then it is queued for the generation worker (:mod:`.batching`) and its answers
awaited, or streamed as the worker hands out their growing text. A streamed answer holds back
a partial UTF-8 character and whatever could begin a stop string until it is settled.

Every error, the framework's own (validation, unknown path or method) included, is answered
in OpenAI's shape (:class:`~.protocol.APIError`); an unexpected fault is logged as one line and
answered with a 500 that reveals nothing of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..accounts import AccountLayer, AccountMarked
from ..engine_types import Completion, Generator, Marker, Prompt
from ..errors import DistillmarkError
from ..registry import scheme_for
from .accounts import Account
from .batching import GenerationQueue, Job
from .config import ServeConfig
from .intake import read_chat_request, validation_error
from .limits import context_limit as engine_context_limit
from .limits import prompt_counter
from .protocol import PENALTIES, UNSUPPORTED, APIError, missing_extra, stop_strings, truncate
from .request import message_text

try:
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra(exc) from None

__all__ = ["create_app"]

log = logging.getLogger("distillmark.serve")


def _reply(error: APIError) -> JSONResponse:
    """``error`` as a response: its OpenAI body and status (401s ask for a Bearer key)."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _answer_errors_as_openai_does(app: FastAPI) -> None:
    """Every error ``app`` answers, the framework's own included, in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _reply(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        return _reply(validation_error(errors[0] if errors else
                                        {"loc": (), "msg": "invalid request"}))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _reply(APIError(404, f"unknown path {request.url.path}", code="not_found"))
        if exc.status_code == 405:
            return _reply(APIError(405, f"method {request.method} is not allowed on "
                                   f"{request.url.path}", code="method_not_allowed"))
        return _reply(APIError(exc.status_code, str(exc.detail)))

    app.add_middleware(_OneLineFaults)


class _OneLineFaults:
    """A fault (an exception no handler answers) becomes a 500 that reveals nothing and one
    line in the log. Outside the framework's own fault handler, which would log a traceback
    and raise the fault again to the server (which logs another)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:  # noqa: BLE001 - every fault answered alike
            log.error("internal error on %s: %s: %s", scope.get("path", "?"),
                      type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            if not started:
                await _reply(APIError(500, "the server failed to answer; try again",
                                      type="server_error", code="internal_error")
                             )(scope, receive, send)


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Mark the job abandoned when its client disconnects (a timed-out client that will
    retry must not leave its old request generating ahead of the retry)."""
    while not job.future.done():
        if await request.is_disconnected():
            job.abandoned = True
            return
        await asyncio.sleep(0.25)


def _choices(outs: list[Completion], max_tokens: int, stops: list[str]
             ) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Each answer's text, cut at the first stop string, with its finish reason; and usage."""
    choices = []
    for o in outs:
        text, stopped = truncate(o.text, stops)
        reason = "stop" if stopped or len(o.completion_ids) < max_tokens else "length"
        choices.append((text, reason))
    n_comp = sum(len(o.completion_ids) for o in outs)
    n_prompt = len(outs[0].prompt_ids) if outs else 0
    return choices, {"prompt_tokens": n_prompt, "completion_tokens": n_comp,
                     "total_tokens": n_prompt + n_comp}


def create_app(generator: Generator, config: ServeConfig) -> FastAPI:
    """The FastAPI application serving ``generator`` under ``config``.

    ``generator`` must already have been checked against ``config.spec``'s tokenizer
    (``generator.check_tokenizer(spec)``); the CLI does it.
    """
    queue_box: dict[str, GenerationQueue] = {}
    spec = config.spec
    provider = scheme_for(spec) if spec is not None else None
    layer = (AccountLayer(spec.secret, spec.vocab_size, spec.accounts)
             if spec is not None and spec.accounts is not None else None)
    stats = {"requests": 0, "completion_tokens": 0}
    context_limit = engine_context_limit(generator)
    count_prompt = prompt_counter(generator) if context_limit is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        q = GenerationQueue(generator, max_batch=config.max_batch)
        q.start()
        queue_box["q"] = q
        try:
            yield
        finally:
            await q.stop()

    app = FastAPI(title="distillmark", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.stats = stats

    _answer_errors_as_openai_does(app)

    # ---- authentication and the key of a request

    def _account(request: Request) -> Account | None:
        if config.accounts is None:
            return None
        auth = request.headers.get("authorization", "")
        scheme_name, _, token = auth.partition(" ")
        if scheme_name.lower() != "bearer" or not token.strip():
            raise APIError(401, "no API key given (send the header Authorization: Bearer "
                           "API_KEY)", code="invalid_api_key")
        account = config.accounts.account_for(token.strip())
        if account is None:
            raise APIError(401, "incorrect API key provided", code="invalid_api_key")
        return account

    def _scheme(account: Account | None) -> Marker | None:
        """The provider's scheme; for an account, with the account layer on top (nothing is
        built per account but this small object)."""
        if provider is None or account is None or layer is None:
            return provider
        return AccountMarked(provider, layer, account.number)

    # ---- endpoints

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.model_name,
                "requests_served": stats["requests"],
                "completion_tokens": stats["completion_tokens"]}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _account(request)
        return {"object": "list", "data": [{"id": config.model_name, "object": "model",
                                            "created": 0, "owned_by": "distillmark"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Any:
        account = _account(request)  # before the body is read: no work for a stranger
        body = await read_chat_request(request, max_bytes=config.max_body_bytes,
                                       max_messages=config.max_messages)
        if body.model != config.model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves "
                           f"{config.model_name!r}", param="model", code="model_not_found")
        extra = body.model_extra or {}
        for name in UNSUPPORTED:
            value = extra.get(name)
            if value not in (None, False, [], {}, "none"):
                raise APIError(400, f"{name} is not supported by this server", param=name,
                               code="unsupported_parameter")
        for name in PENALTIES:
            if extra.get(name) not in (None, 0, 0.0):
                raise APIError(400, f"{name} is not supported by this server (only 0)",
                               param=name, code="unsupported_parameter")
        if body.max_tokens is not None and body.max_completion_tokens is not None \
                and body.max_tokens != body.max_completion_tokens:
            raise APIError(400, "max_tokens and max_completion_tokens disagree",
                           param="max_tokens")
        max_tokens = body.max_completion_tokens or body.max_tokens or config.default_max_tokens
        if max_tokens > config.max_tokens_limit:
            raise APIError(400, f"max_tokens must be at most {config.max_tokens_limit}, got "
                           f"{max_tokens}", param="max_tokens")
        n = body.n or 1
        if n > config.max_n:
            raise APIError(400, f"n must be at most {config.max_n}, got {n}", param="n")
        stops = stop_strings(body.stop)
        messages = [{"role": m.role, "content": message_text(m, i)}
                    for i, m in enumerate(body.messages)]
        prompt: Prompt = messages
        if count_prompt is not None and context_limit is not None:
            room = context_limit - max_tokens
            n_prompt = await asyncio.get_running_loop().run_in_executor(None, count_prompt,
                                                                        prompt, room)
            if n_prompt == 0:  # messages without text, and no chat template to add some
                raise APIError(400, "messages: the messages give the model no text to answer "
                               "from", param="messages")
            if n_prompt > room:
                raise APIError(400, f"this model's context is {context_limit} tokens; the "
                               f"messages take at least {n_prompt} and max_tokens asks for "
                               f"{max_tokens}: shorten them or lower max_tokens",
                               param="messages", code="context_length_exceeded")
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        scheme = _scheme(account)
        key = scheme.key_id if scheme is not None else ""
        number = account.number if account is not None else 0
        group = None if body.seed is not None else (key, number, max_tokens, temperature,
                                                    top_p)
        loop = asyncio.get_running_loop()
        job = Job(prompts=[prompt] * n, scheme=scheme, group=group, max_tokens=max_tokens,
                   temperature=temperature, top_p=top_p, seed=body.seed,
                   future=loop.create_future())
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())

        def served(outs: list[Completion]) -> None:
            """Log what this request was answered (the texts the client received)."""
            if config.log is not None:
                choices, usage = _choices(outs, max_tokens, stops)
                config.log.record(request_id=rid, account=account.id if account else None,
                                  number=account.number if account else None, key_id=key,
                                  model=config.model_name, messages=messages,
                                  answers=[text for text, _ in choices], usage=usage)

        job.on_done = served
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                _stream(job, rid=rid, created=created, stops=stops, include_usage=include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watch = asyncio.ensure_future(_watch_disconnect(request, job))
        try:
            outs = await _submit(job)
        finally:
            watch.cancel()
        choices, usage = _choices(outs, max_tokens, stops)
        return {"id": rid, "object": "chat.completion", "created": created,
                "model": config.model_name, "system_fingerprint": None,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": reason}
                            for i, (text, reason) in enumerate(choices)],
                "usage": usage}

    async def _submit(job: Job) -> list[Completion]:
        await queue_box["q"].queue.put(job)
        try:
            outs = await job.future
        except (DistillmarkError, ValueError, IndexError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise APIError(400, f"the request cannot be answered: {first}") from None
        stats["requests"] += 1
        stats["completion_tokens"] += sum(len(o.completion_ids) for o in outs)
        if job.on_done is not None:
            job.on_done(outs)
        return outs

    async def _stream(job: Job, *, rid: str, created: int, stops: list[str],
                      include_usage: bool) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()

        def on_text(i: int, text: str) -> None:  # runs in the generating thread
            loop.call_soon_threadsafe(updates.put_nowait, (i, text))

        job.on_text = on_text
        n = len(job.prompts)
        sent = [""] * n
        finished = [False] * n
        hold = max((len(s) for s in stops), default=1) - 1

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            d = {"id": rid, "object": "chat.completion.chunk", "created": created,
                 "model": config.model_name, "system_fingerprint": None, "choices": choices}
            d.update(extra)
            return f"data: {json.dumps(d)}\n\n"

        def delta(i: int, text: str, final: bool) -> str | None:
            text, stopped = truncate(text, stops)
            if not final and not stopped:
                # hold back a partial UTF-8 character and what could begin a stop string
                text = text.rstrip("\ufffd")
                text = text[:max(len(sent[i]), len(text) - hold)] if hold else text
            if stopped:
                finished[i] = True
            if not text.startswith(sent[i]) or len(text) == len(sent[i]):
                return None
            new, sent[i] = text[len(sent[i]):], text
            return chunk([{"index": i, "delta": {"content": new}, "logprobs": None,
                           "finish_reason": None}])

        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None} for i in range(n)])
        submit = asyncio.ensure_future(_submit(job))
        submit.add_done_callback(lambda _: updates.put_nowait(None))
        try:
            while True:
                item = await updates.get()
                if item is None:
                    break
                i, text = item
                if not finished[i]:
                    out = delta(i, text, final=False)
                    if out:
                        yield out
            try:
                outs = submit.result()
            except APIError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            except Exception as exc:  # noqa: BLE001 - the stream has begun: report in-band
                log.error("internal error while streaming: %s", type(exc).__name__)
                err = APIError(500, "the server failed to answer; try again",
                               type="server_error", code="internal_error")
                yield f"data: {json.dumps(err.body())}\n\n"
                yield "data: [DONE]\n\n"
                return
            choices, usage = _choices(outs, job.max_tokens, stops)
            for i, o in enumerate(outs):
                if not finished[i]:
                    out = delta(i, o.text, final=True)
                    if out:
                        yield out
            yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}
                         for i, (_, reason) in enumerate(choices)])
            if include_usage:
                yield chunk([], usage=usage)
            yield "data: [DONE]\n\n"
        finally:
            if not submit.done():  # the client went away: stop generating for it
                job.abandoned = True
                job.future.cancel()
                submit.cancel()

    return app

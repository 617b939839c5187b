"""An OpenAI-compatible HTTP server whose answers carry the watermark (extra ``serve``).

``POST /v1/chat/completions`` (plain JSON or server-sent events with ``"stream": true``),
``GET /v1/models`` and ``GET /health``, in front of any :class:`~distillmark.watermark.engines.
Generator` (transformers or llama.cpp). Every answer is generated with the scheme of the
server's key; with an accounts file, the API key of a request picks its account, and the answer
carries that account's own key, derived from the master key (:func:`~distillmark.watermark.
keys.derive_account_spec`), so a leaked answer can later be attributed to the account.

Concurrency: the event loop never generates. Requests go to one queue; one worker thread takes
every request waiting when it becomes free, groups those that can share a batch (same key,
``max_tokens``, ``temperature`` and ``top_p``, no ``seed``) and generates each group in one
engine call (transformers pads a batch and samples its rows together; llama.cpp answers them in
turn). A request with a ``seed`` runs alone, so that its answer depends on its seed only.

Errors: every failure is an OpenAI-style body ``{"error": {"message", "type", "param",
"code"}}`` with a 4xx status for a bad request (never a traceback), 401 for a missing or unknown
API key, 404 for an unknown model or path, 500 only for a fault of the server itself. API keys
are held only as SHA-256 digests and never logged; keys' secrets never leave the process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .engine_types import Completion, Generator, Prompt
from .errors import DistillmarkError, InputError, MissingDependencyError, ParameterError
from .keys import WatermarkSpec, derive_account_spec
from .registry import Scheme, scheme_for

try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(f"this needs the 'serve' extra ({exc.name} is not installed): "
                                 "pip install 'distillmark[serve]'") from None

__all__ = [
    "Accounts",
    "RunningServer",
    "ServeConfig",
    "create_app",
    "load_accounts",
    "start_server",
]

log = logging.getLogger("distillmark.serve")

#: Request fields the server cannot honour: refused with a 400 rather than silently ignored.
_UNSUPPORTED = ("logprobs", "top_logprobs", "tools", "functions", "tool_choice",
                "function_call", "logit_bias", "response_format")
_PENALTIES = ("presence_penalty", "frequency_penalty")


# --------------------------------------------------------------------------------------------
# Accounts


def _digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Accounts:
    """API keys -> account ids. Only the keys' SHA-256 digests are held (never the keys)."""

    by_digest: Mapping[str, str] = field(repr=False)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str], *, where: str = "accounts") -> Accounts:
        """From ``{api_key: account_id}``; one :class:`InputError` line per problem."""
        if not mapping:
            raise InputError(f"{where}: no accounts (expected {{\"API_KEY\": \"ACCOUNT_ID\", "
                             "...})")
        out: dict[str, str] = {}
        for i, (key, account) in enumerate(mapping.items(), 1):
            if not isinstance(key, str) or not key.strip() or len(key) > 512:
                raise InputError(f"{where}: entry {i}: the API key must be a non-empty string "
                                 "of at most 512 characters")
            if not isinstance(account, str) or not account or len(account) > 256:
                raise InputError(f"{where}: entry {i}: the account id must be a non-empty "
                                 f"string of at most 256 characters, got {account!r}")
            out[_digest(key)] = account
        return cls(by_digest=out)

    def account_for(self, api_key: str) -> str | None:
        """The account of ``api_key``, or None if it is not a known key."""
        return self.by_digest.get(_digest(api_key))

    @property
    def account_ids(self) -> list[str]:
        return sorted(set(self.by_digest.values()))

    def __len__(self) -> int:
        return len(self.by_digest)


def load_accounts(path: str | Path) -> Accounts:
    """Read an accounts file: one JSON object mapping API keys to account ids."""
    p = Path(path)
    where = f"accounts file {p}"
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{where} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"{where} cannot be read: {exc.strerror}") from None

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for k, v in items:
            if k in seen:
                raise InputError(f"{where}: an API key appears twice (the same key cannot "
                                 "belong to two accounts)")
            seen[k] = v
        return seen

    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs)
    except UnicodeDecodeError as exc:
        raise InputError(f"{where} is not UTF-8 (byte offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno} column "
                         f"{exc.colno}") from None
    if not isinstance(data, dict):
        raise InputError(f"{where} must hold one JSON object {{\"API_KEY\": \"ACCOUNT_ID\", "
                         f"...}}, got {type(data).__name__}")
    return Accounts.from_mapping(data, where=where)


# --------------------------------------------------------------------------------------------
# Errors in OpenAI's shape


class APIError(Exception):
    """An error answered to the client: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (status, message, type,
                                                                       param, code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


# --------------------------------------------------------------------------------------------
# Requests


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_ContentPart] | None = None


class ChatRequest(BaseModel):
    """The fields of a chat-completion request this server reads (others are ignored)."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    seed: int | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None


def _message_text(m: _Message, i: int) -> str:
    if m.content is None:
        return ""
    if isinstance(m.content, str):
        return m.content
    texts = []
    for j, part in enumerate(m.content):
        if part.type != "text" or part.text is None:
            raise APIError(400, f"messages.{i}.content.{j}: only text parts are supported, "
                           f"got type {part.type!r}", param=f"messages.{i}.content")
        texts.append(part.text)
    return "".join(texts)


def _stops(stop: str | list[str] | None) -> list[str]:
    items = [stop] if isinstance(stop, str) else list(stop or [])
    if len(items) > 4 or any(not s for s in items):
        raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")
    return items


def _truncate(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the first stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


# --------------------------------------------------------------------------------------------
# The generation queue


@dataclass
class _Job:
    prompts: list[Prompt]
    scheme: Scheme | None
    group: tuple[Any, ...] | None  # None: must run alone
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    future: asyncio.Future[list[Completion]]
    on_text: Callable[[int, str], None] | None = None
    streamed: bool = False  # text of this job has been handed out already
    abandoned: bool = False  # the client went away: stop generating if nobody else waits


class _Abandoned(Exception):
    """Raised from the per-token hook to stop a generation every client has left."""


class _GenerationQueue:
    """One worker thread generates; the event loop only queues jobs and awaits their futures."""

    def __init__(self, generator: Generator, *, max_batch: int) -> None:
        self.generator = generator
        self.max_batch = max_batch
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distillmark-gen")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            while not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            groups: dict[Any, list[_Job]] = {}
            for i, job in enumerate(jobs):
                groups.setdefault(job.group if job.group is not None else ("alone", i),
                                  []).append(job)
            for group in groups.values():
                # batches of at most max_batch prompts (a request's n choices stay together)
                batch: list[_Job] = []
                for job in group:
                    if batch and sum(len(j.prompts) for j in batch) + len(job.prompts) > \
                            self.max_batch:
                        await self._generate(loop, batch)
                        batch = []
                    batch.append(job)
                if batch:
                    await self._generate(loop, batch)

    async def _generate(self, loop: asyncio.AbstractEventLoop, batch: list[_Job]) -> None:
        batch = [j for j in batch if not j.future.done()]  # the client went away
        if not batch:
            return
        try:
            outs = await loop.run_in_executor(self.executor, self._call, batch)
        except _Abandoned:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(APIError(499, "the client closed the request",
                                                      code="client_closed"))
            return
        except Exception as exc:  # noqa: BLE001 - turned into an error answer below
            # Find the request at fault: the others still get answers. A streamed request
            # that already sent text cannot start again: it ends with an error.
            if len(batch) > 1:
                for job in batch:
                    if job.streamed and not job.future.done():
                        job.future.set_exception(APIError(
                            500, "generation failed mid-stream; send the request again",
                            type="server_error", code="internal_error"))
                    else:
                        await self._generate(loop, [job])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        k = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(outs[k:k + len(job.prompts)])
            k += len(job.prompts)

    def _call(self, batch: list[_Job]) -> list[Completion]:
        first = batch[0]
        prompts = [p for job in batch for p in job.prompts]
        owners: list[tuple[_Job, int]] = [(job, c) for job in batch
                                          for c in range(len(job.prompts))]

        def on_text(index: int, text: str) -> None:
            if all(j.abandoned for j in batch):
                raise _Abandoned
            job, choice = owners[index]
            if job.on_text is not None:
                job.streamed = True
                job.on_text(choice, text)

        return self.generator.generate(prompts, scheme=first.scheme,
                                       max_new_tokens=first.max_tokens,
                                       temperature=first.temperature, top_p=first.top_p,
                                       batch_size=max(1, len(prompts)), seed=first.seed,
                                       on_text=on_text)


# --------------------------------------------------------------------------------------------
# The application


@dataclass(frozen=True)
class ServeConfig:
    """What the server serves and its limits.

    Attributes:
        model_name: the id clients give as ``model`` (``GET /v1/models`` lists it).
        spec: the master watermark spec; None serves without a watermark.
        accounts: API keys -> accounts; None: no authentication, every answer carries
            ``spec``'s own watermark.
        max_batch: most prompts generated together (transformers; llama.cpp takes them in turn).
        default_max_tokens: ``max_tokens`` of a request that gives none.
        max_tokens_limit: largest ``max_tokens`` accepted.
        max_n: largest ``n`` (choices per request) accepted.
        cached_schemes: account schemes kept built (each holds its green table).
    """

    model_name: str
    spec: WatermarkSpec | None = None
    accounts: Accounts | None = None
    max_batch: int = 8
    default_max_tokens: int = 256
    max_tokens_limit: int = 4096
    max_n: int = 8
    cached_schemes: int = 8

    def __post_init__(self) -> None:
        for name in ("max_batch", "default_max_tokens", "max_tokens_limit", "max_n",
                     "cached_schemes"):
            if getattr(self, name) < 1:
                raise ParameterError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ParameterError(f"`default_max_tokens` {self.default_max_tokens} exceeds "
                                 f"`max_tokens_limit` {self.max_tokens_limit}")
        if self.spec is not None and self.accounts is not None:
            for account in self.accounts.account_ids:  # refuses interop keys up front
                derive_account_spec(self.spec, account)


def _context_limit(generator: Generator) -> int | None:
    """Tokens of context the model takes (prompt + answer), where the engine says."""
    llm = getattr(generator, "llm", None)
    if llm is not None and hasattr(llm, "n_ctx"):
        return int(llm.n_ctx())
    model = getattr(generator, "model", None)
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) else None


def _prompt_counter(generator: Generator) -> Callable[[Prompt], int] | None:
    """A function counting a prompt's tokens once the engine's chat template is applied, or
    None where the engine cannot say.

    transformers: a separate copy of the tokenizer's backend, since the generating thread
    changes the padding state of the model's own tokenizer (a fast tokenizer used from two
    threads while one reconfigures it fails with "Already borrowed"). llama.cpp: its
    tokenizer only reads the vocabulary.
    """
    from .engine_types import messages_of, plain_prompt_text

    tok = getattr(generator, "tokenizer", None)
    if tok is not None and hasattr(tok, "backend_tokenizer"):  # transformers
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        backend.no_padding()
        backend.no_truncation()
        template = bool(getattr(tok, "chat_template", None))

        def count(prompt: Prompt) -> int:
            text = (tok.apply_chat_template(messages_of(prompt), tokenize=False,
                                            add_generation_prompt=True)
                    if template else plain_prompt_text(prompt))
            return len(backend.encode(text, add_special_tokens=False).ids)

        return count
    render = getattr(generator, "_prompt_text", None)
    tokenize = getattr(generator, "tokenize", None)
    if render is not None and tokenize is not None:  # llama.cpp
        return lambda prompt: len(tokenize(render(prompt), special=True))
    return None


def create_app(generator: Generator, config: ServeConfig) -> FastAPI:
    """The FastAPI application serving ``generator`` under ``config``.

    ``generator`` must already have been checked against ``config.spec``'s tokenizer
    (``generator.check_tokenizer(spec)``); the CLI does it.
    """
    queue_box: dict[str, _GenerationQueue] = {}
    schemes: OrderedDict[str, Scheme] = OrderedDict()
    schemes_lock = threading.Lock()
    stats = {"requests": 0, "completion_tokens": 0}
    context_limit = _context_limit(generator)
    count_prompt = _prompt_counter(generator) if context_limit is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        q = _GenerationQueue(generator, max_batch=config.max_batch)
        q.start()
        queue_box["q"] = q
        try:
            yield
        finally:
            await q.stop()

    app = FastAPI(title="distillmark", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.stats = stats

    # ---- errors, all in OpenAI's shape

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            return APIError(400, "the request body is not valid JSON").response()
        # pydantic reports a union's branches as loc parts (str, list[...]): keep field names
        loc = [x for x in loc if not any(c in x for c in "[]") and x not in ("str", "list")]
        param = ".".join(loc) or None
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "missing" and param is not None:
            return APIError(400, f"missing required parameter: {param}", param=param).response()
        if "input" in err and err.get("type") != "model_attributes_type":
            shown = json.dumps(err["input"])[:80]
            msg = f"{msg}, got {shown}"
        if param is None:
            msg = ("the request body is missing (send a JSON object)"
                   if err.get("type") == "missing" else "the request body must be a JSON object")
            return APIError(400, msg).response()
        return APIError(400, f"{param}: {msg}" if param else msg, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return APIError(404, f"unknown path {request.url.path}", code="not_found").response()
        if exc.status_code == 405:
            return APIError(405, f"method {request.method} is not allowed on "
                            f"{request.url.path}", code="method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s: %s", request.url.path, type(exc).__name__,
                  str(exc).splitlines()[0] if str(exc) else "")
        return APIError(500, "the server failed to answer; try again", type="server_error",
                        code="internal_error").response()

    # ---- authentication and the key of a request

    def _account(request: Request) -> str | None:
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

    def _scheme(account: str | None) -> Scheme | None:
        spec = config.spec
        if spec is None:
            return None
        name = account or ""
        with schemes_lock:
            if name in schemes:
                schemes.move_to_end(name)
                return schemes[name]
        sch = scheme_for(spec if account is None else derive_account_spec(spec, account))
        with schemes_lock:
            schemes[name] = sch
            while len(schemes) > config.cached_schemes:
                schemes.popitem(last=False)
        return sch

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
    async def chat(request: Request, body: ChatRequest) -> Any:
        account = _account(request)
        if body.model != config.model_name:
            raise APIError(404, f"the model {body.model!r} does not exist; this server serves "
                           f"{config.model_name!r}", param="model", code="model_not_found")
        extra = body.model_extra or {}
        for name in _UNSUPPORTED:
            value = extra.get(name)
            if value not in (None, False, [], {}, "none"):
                raise APIError(400, f"{name} is not supported by this server", param=name,
                               code="unsupported_parameter")
        for name in _PENALTIES:
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
        stops = _stops(body.stop)
        messages = [{"role": m.role, "content": _message_text(m, i)}
                    for i, m in enumerate(body.messages)]
        prompt: Prompt = messages
        if count_prompt is not None and context_limit is not None:
            n_prompt = await asyncio.get_running_loop().run_in_executor(None, count_prompt,
                                                                        prompt)
            if n_prompt + max_tokens > context_limit:
                raise APIError(400, f"this model's context is {context_limit} tokens; the "
                               f"messages take {n_prompt} and max_tokens asks for "
                               f"{max_tokens}: shorten them or lower max_tokens",
                               param="messages", code="context_length_exceeded")
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        scheme = await asyncio.get_running_loop().run_in_executor(None, _scheme, account)
        key = scheme.key_id if scheme is not None else ""
        group = None if body.seed is not None else (key, max_tokens, temperature, top_p)
        loop = asyncio.get_running_loop()
        job = _Job(prompts=[prompt] * n, scheme=scheme, group=group, max_tokens=max_tokens,
                   temperature=temperature, top_p=top_p, seed=body.seed,
                   future=loop.create_future())
        rid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())
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

    async def _watch_disconnect(request: Request, job: _Job) -> None:
        """Mark the job abandoned when its client disconnects (a timed-out client that will
        retry must not leave its old request generating ahead of the retry)."""
        while not job.future.done():
            if await request.is_disconnected():
                job.abandoned = True
                return
            await asyncio.sleep(0.25)

    async def _submit(job: _Job) -> list[Completion]:
        await queue_box["q"].queue.put(job)
        try:
            outs = await job.future
        except (DistillmarkError, ValueError, IndexError) as exc:
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise APIError(400, f"the request cannot be answered: {first}") from None
        stats["requests"] += 1
        stats["completion_tokens"] += sum(len(o.completion_ids) for o in outs)
        return outs

    def _choices(outs: list[Completion], max_tokens: int, stops: list[str]
                 ) -> tuple[list[tuple[str, str]], dict[str, int]]:
        choices = []
        for o in outs:
            text, stopped = _truncate(o.text, stops)
            reason = "stop" if stopped or len(o.completion_ids) < max_tokens else "length"
            choices.append((text, reason))
        n_comp = sum(len(o.completion_ids) for o in outs)
        n_prompt = len(outs[0].prompt_ids) if outs else 0
        return choices, {"prompt_tokens": n_prompt, "completion_tokens": n_comp,
                         "total_tokens": n_prompt + n_comp}

    async def _stream(job: _Job, *, rid: str, created: int, stops: list[str],
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
            text, stopped = _truncate(text, stops)
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


# --------------------------------------------------------------------------------------------
# Running it


@dataclass
class RunningServer:
    """A server running in a background thread (tests, benchmarks, experiments, the demo)."""

    server: Any
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL of the OpenAI API: ``http://HOST:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> RunningServer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port); InputError if it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def start_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", timeout: float = 60.0) -> RunningServer:
    """Serve ``app`` from a background thread; returns once it accepts connections."""
    sock = bind_socket(host, port)
    real_port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"distillmark-serve-{real_port}")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise DistillmarkError(f"the server on {host}:{real_port} did not start")
        time.sleep(0.01)
    return RunningServer(server=server, thread=thread, host=host, port=real_port)


def run_server_on(app: FastAPI, sock: socket.socket, *, log_level: str = "info") -> None:
    """Serve ``app`` on a listening socket (:func:`bind_socket`) until interrupted."""
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                           lifespan="on"))
    server.run(sockets=[sock])


def default_threads() -> int:
    """Torch/llama.cpp threads when none are given: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)

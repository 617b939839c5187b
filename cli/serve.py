"""``distillmark serve``: an OpenAI-compatible server whose answers carry the watermark."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from distillmark.watermark import InputError
from distillmark.watermark.engine_types import Generator
from distillmark.watermark.engines import load_generator, resolve_engine
from distillmark.watermark.files import check_writable
from distillmark.watermark.models import DEFAULT_MODEL_FILE
from distillmark.watermark.ring import load_active_key

from .common import errors_exit, info
from .options import EngineOption, ModelOption, key_option, no_watermark_option

DEFAULT_MODEL_NAME = DEFAULT_MODEL_FILE.split(".")[0]  # SmolLM2-135M-Instruct


def _model_name(model: str | None) -> str:
    if model is None:
        return DEFAULT_MODEL_NAME
    p = Path(model)
    return p.stem if p.suffix == ".gguf" else (p.resolve().name or str(p))


def serve(
    key: Annotated[Path | None, key_option(
        "Watermark every answer with this key (spec file), or with the active key of a key "
        "ring.")] = None,
    no_watermark: Annotated[bool, no_watermark_option(
        "Serve without a watermark (a control model).")] = False,
    accounts: Annotated[Path | None, typer.Option(
        help="JSON object mapping API keys to accounts: requests need one of the keys "
             "(Bearer), and each account's answers carry --key's mark and the account's "
             "number (--key needs an account layer).")
    ] = None,
    log: Annotated[Path | None, typer.Option(
        "--log", help="Append every answered request to this JSON Lines file (rotated).")
    ] = None,
    log_hashes: Annotated[bool, typer.Option(
        "--log-hashes", help="Log SHA-256 digests of messages and answers, not their text.")
    ] = False,
    log_max_bytes: Annotated[int, typer.Option(
        help="Rotate the log before it passes this size.")] = 256 << 20,
    log_keep: Annotated[int, typer.Option(help="Rotated log files kept.")] = 8,
    max_body_bytes: Annotated[int, typer.Option(
        help="Largest request body read (413 beyond).")] = 8 << 20,
    max_messages: Annotated[int, typer.Option(
        help="Most messages in one request.")] = 1024,
    model: ModelOption = None,
    engine: EngineOption = "auto",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(
        help="Model id clients ask for (default: the model file's or directory's name; "
             f"{DEFAULT_MODEL_NAME} for the embedded model).")] = None,
    max_batch: Annotated[int | None, typer.Option(
        help="Most prompts generated together (default: 8 on transformers, 1 on llama.cpp).")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of a request that gives none.")] = 256,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens accepted.")] = 4096,
    max_n: Annotated[int, typer.Option(help="Largest n (choices per request) accepted.")] = 8,
    threads: Annotated[int | None, typer.Option(
        help="CPU threads for generation (default: all this process may use).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, watermarking every answer.

    POST /v1/chat/completions (JSON or "stream": true), GET /v1/models, GET /health. Runs until
    interrupted; exit status 2 if it cannot start (bad key, model, accounts file or address).
    """
    with errors_exit():
        if no_watermark == (key is not None):
            raise InputError("give --key KEY to watermark the answers, or --no-watermark to "
                             "serve without one")
        if log_level not in ("debug", "info", "warning", "error"):
            raise InputError(f"--log-level must be debug, info, warning or error, got "
                             f"{log_level!r}")
        if port < 0 or port > 65535:
            raise InputError(f"--port must be in 0..65535, got {port}")
        spec = load_active_key(key) if key is not None else None
        from distillmark.watermark import serve as srv

        accts = srv.load_accounts(accounts) if accounts is not None else None
        name = served_model_name or _model_name(model)
        resolved = resolve_engine(engine, model)
        n_threads = threads or srv.default_threads()
        if n_threads < 1:
            raise InputError(f"--threads must be >= 1, got {threads}")
        config = srv.ServeConfig(model_name=name, spec=spec, accounts=accts,
                                 max_batch=max_batch or (8 if resolved == "transformers" else 1),
                                 default_max_tokens=max_tokens,
                                 max_tokens_limit=max_tokens_limit, max_n=max_n,
                                 max_body_bytes=max_body_bytes, max_messages=max_messages)
        if log is not None:  # before loading: a log that cannot be written fails at once
            check_writable(log, what=f"--log {log}")
        sock = srv.bind_socket(host, port)  # before loading: a busy port fails at once
        info(f"loading {name} ({resolved})…")
        gen: Generator
        if resolved == "llama.cpp":
            from distillmark.watermark import llamacpp

            gen = llamacpp.load_model(model, n_threads=n_threads)
        else:
            import torch

            torch.set_num_threads(n_threads)
            gen = load_generator(resolved, model)
        if spec is not None:
            gen.check_tokenizer(spec)
        if log is not None:  # opened last: a server that cannot start leaves no log behind
            from distillmark.watermark.serve.log import RequestLog

            config = replace(config, log=RequestLog(log, max_bytes=log_max_bytes, keep=log_keep,
                                                    hashes_only=log_hashes))
        app = srv.create_app(gen, config)
        real_port = sock.getsockname()[1]
        mark = ("without a watermark" if spec is None else
                f"watermarked with key {spec.key_id}" + (
                    f" and, for each of {len(accts.accounts)} accounts, its number"
                    if accts is not None else ""))
        info(f"serving {name} ({gen.engine}) at http://{host}:{real_port}/v1, {mark}; "
             "Ctrl-C stops")
        logging.basicConfig(level=log_level.upper(), format="distillmark: %(message)s")
        srv.run_server_on(app, sock, log_level=log_level)

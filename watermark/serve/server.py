"""Running the application: a listening socket, uvicorn in the foreground (``distillmark
serve``) or in a background thread (:func:`start_server`: tests, benchmarks, the demo).

The socket is bound before the model loads, so a busy port fails at once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DistillmarkError, InputError
from .protocol import missing_extra

try:
    import uvicorn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_extra(exc) from None

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["RunningServer", "bind_socket", "default_threads", "run_server_on", "start_server"]


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


def _uvicorn_server(app: FastAPI, log_level: str) -> Any:
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False,
                                         lifespan="on"))


def start_server(app: FastAPI, *, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning", timeout: float = 60.0) -> RunningServer:
    """Serve ``app`` from a background thread; returns once it accepts connections."""
    sock = bind_socket(host, port)
    real_port = int(sock.getsockname()[1])
    server = _uvicorn_server(app, log_level)
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
    _uvicorn_server(app, log_level).run(sockets=[sock])


def default_threads() -> int:
    """Torch/llama.cpp threads when none are given: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)

"""The generation queue: one worker thread generates, the event loop never does.

Requests go to one queue; the worker takes every request waiting when it becomes free, groups
those that can share a batch (same key, ``max_tokens``, ``temperature`` and ``top_p``, no
``seed``) and generates each group in one engine call, at most ``max_batch`` prompts at a time
(a request's ``n`` choices stay together; transformers pads a batch and samples its rows
together, llama.cpp answers them in turn). A request with a ``seed`` runs alone, so that its
answer depends on its seed only. When a batch fails, each of its requests is tried alone, so
that only the one at fault gets the error; a client that leaves stops the generation once no
other client of the batch waits. Needs the core alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..engine_types import Completion, Generator, Marker, Prompt
from .protocol import APIError

__all__ = ["GenerationQueue", "Job"]


@dataclass
class Job:
    """One request waiting for its answers: its ``n`` prompts, how to sample them, and the
    future its answers go to."""

    prompts: list[Prompt]
    scheme: Marker | None
    group: tuple[Any, ...] | None  # None: must run alone
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    future: asyncio.Future[list[Completion]]
    on_text: Callable[[int, str], None] | None = None
    on_done: Callable[[list[Completion]], None] | None = None  # called with the answers
    streamed: bool = False  # text of this job has been handed out already
    abandoned: bool = False  # the client went away: stop generating if nobody else waits


class _Abandoned(Exception):
    """Raised from the per-token hook to stop a generation every client has left."""


class GenerationQueue:
    """One worker thread generates; the event loop only queues jobs and awaits their futures."""

    def __init__(self, generator: Generator, *, max_batch: int) -> None:
        self.generator = generator
        self.max_batch = max_batch
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
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
            groups: dict[Any, list[Job]] = {}
            for i, job in enumerate(jobs):
                groups.setdefault(job.group if job.group is not None else ("alone", i),
                                  []).append(job)
            for group in groups.values():
                # batches of at most max_batch prompts (a request's n choices stay together)
                batch: list[Job] = []
                for job in group:
                    if batch and sum(len(j.prompts) for j in batch) + len(job.prompts) > \
                            self.max_batch:
                        await self._generate(loop, batch)
                        batch = []
                    batch.append(job)
                if batch:
                    await self._generate(loop, batch)

    async def _generate(self, loop: asyncio.AbstractEventLoop, batch: list[Job]) -> None:
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

    def _call(self, batch: list[Job]) -> list[Completion]:
        first = batch[0]
        prompts = [p for job in batch for p in job.prompts]
        owners: list[tuple[Job, int]] = [(job, c) for job in batch
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


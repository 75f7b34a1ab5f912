"""The thread that owns the served model's running batch: it admits rows between decode steps, drops cancelled
ones, and settles each request's future from the event loop's side.

Messages reach it through one queue (submit, cancel, stop), so the batch is only ever touched by this thread. A
row that fails alone (`Generation.error`) fails only its own request; if the engine itself raises, every row in
flight fails and a fresh batch takes over, so the server lives on. `open_rows` (rows submitted and not yet
settled) bounds the waiting queue: `submit` raises `ServerBusy` when it is full, before any work is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import queue
import threading
from collections.abc import Hashable

from kvmesh.llm.base import GenerationRequest, RowError
from kvmesh.llm.local import LocalLM


class ServerBusy(RuntimeError):
    """Too many requests waiting or running; the client should retry later."""


class ServerClosing(RuntimeError):
    """The server is shutting down and admits no new request."""


class EngineThread:
    """Owns `model`'s running batch (see the module docstring).

    Args:
        model: the served model.
        seed: seeds the batch's sampler.
        max_open: most requests admitted at once (decoding or waiting for a slot); more get `ServerBusy`.
    """

    def __init__(self, model: LocalLM, seed: int | None = None, max_open: int = 256) -> None:
        self.model, self.seed, self.max_open = model, seed, max_open
        self.batch = model.new_batch(seed)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.open_rows = 0  # changed on the event loop's thread only
        self.batch_rows = 0  # rows in the batch (decoding or waiting for a slot) after the engine's last step
        self.closing = False
        self._tags = itertools.count()
        self.thread = threading.Thread(target=self._run, name="kvmesh-engine", daemon=True)
        self.thread.start()

    def submit(self, request: GenerationRequest) -> tuple[Hashable, asyncio.Future]:
        """Queue a row; returns its tag (for `cancel`) and a future, on the caller's event loop, that gets its
        `Generation` or its error."""
        if self.closing:
            raise ServerClosing("the server is shutting down; retry on another instance")
        if self.open_rows >= self.max_open:
            raise ServerBusy(f"{self.open_rows} requests are already waiting or running (the server's limit)")
        loop = asyncio.get_running_loop()
        future, tag = loop.create_future(), next(self._tags)
        self.open_rows += 1
        future.add_done_callback(self._closed)
        self.inbox.put(("submit", tag, request, future, loop))
        return tag, future

    def _closed(self, _future: asyncio.Future) -> None:
        self.open_rows -= 1

    def cancel(self, tag: Hashable, future: asyncio.Future) -> None:
        """Drop a request whose client went away: its row leaves the batch at the next step."""
        if not future.done():
            future.cancel()
        self.inbox.put(("cancel", tag))

    def stop(self) -> None:
        """Admit nothing more, drop every row, and end the thread (after its current step)."""
        self.closing = True
        self.inbox.put(("stop",))
        self.thread.join(timeout=30)

    def _run(self) -> None:
        futures: dict[Hashable, tuple[asyncio.Future, asyncio.AbstractEventLoop]] = {}
        busy = False
        while True:
            if busy and not self.batch.has_work:  # going idle: hand the freed activations back to the system
                release_memory()
            busy = self.batch.has_work
            messages = [self.inbox.get()] if not busy else []  # idle: sleep until a message comes
            while not self.inbox.empty():
                messages.append(self.inbox.get())
            for message in messages:
                if message[0] == "stop":
                    for tag, (future, loop) in futures.items():
                        self.batch.cancel(tag)
                        loop.call_soon_threadsafe(_settle, future, None, ServerClosing("the server shut down"))
                    return
                if message[0] == "cancel":
                    self.batch.cancel(message[1])
                    futures.pop(message[1], None)
                    self.batch_rows = len(self.batch.rows) + len(self.batch.waiting)
                    continue
                _, tag, request, future, loop = message
                try:
                    self.batch.submit(request, tag)
                    futures[tag] = (future, loop)
                except Exception as error:  # a prompt too long for the context, a bad row: this request fails
                    loop.call_soon_threadsafe(_settle, future, None, error)
            try:
                finished = self.batch.step()
            except Exception as error:  # the engine itself failed: every row in it fails, the server lives on
                for future, loop in futures.values():
                    loop.call_soon_threadsafe(_settle, future, None, error)
                futures.clear()
                self.batch = self.model.new_batch(self.seed)
                continue
            self.batch_rows = len(self.batch.rows) + len(self.batch.waiting)
            for tag, generation in finished:
                if tag in futures:
                    future, loop = futures.pop(tag)
                    failure = RowError(generation.error) if generation.error is not None else None
                    loop.call_soon_threadsafe(_settle, future, generation, failure)


def release_memory() -> None:
    """Return the C allocator's free memory to the system (glibc's `malloc_trim`; elsewhere nothing): a batch of
    long prompts leaves hundreds of MB of freed activations cached in the process, which an idle server keeps
    otherwise."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _settle(future: asyncio.Future, result, error) -> None:
    if not future.done():  # a client that went away cancelled it
        future.set_exception(error) if error is not None else future.set_result(result)

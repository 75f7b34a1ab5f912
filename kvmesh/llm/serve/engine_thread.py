"""The thread that owns the served model's running batch: it admits rows between decode steps, drops cancelled
ones, and settles each request's future from the event loop's side.

Messages reach it through one queue (submit, cancel, stop), so the batch is only ever touched by this thread. A
row that fails alone (`Generation.error`) fails only its own request; if the engine itself raises, every row in
flight fails and a fresh batch takes over, so the server lives on; if the thread's own loop fails, every request
fails with `EngineFailed` and `/health` says so. `open_rows` (rows admitted and not yet let go by the engine, a
cancelled one until the engine has taken its cancel) bounds the queue: `check_room` raises `ServerBusy` when it is full,
which the app asks before spending any work on a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import queue
import threading
import time
from collections.abc import Hashable

from kvmesh.llm.base import GenerationRequest, RowError
from kvmesh.llm.local import LocalLM

log = logging.getLogger("kvmesh")


class ServerBusy(RuntimeError):
    """Too many requests waiting or running; the client should retry later."""


class ServerClosing(RuntimeError):
    """The server is shutting down and admits no new request."""


class EngineFailed(RuntimeError):
    """The engine thread stopped on an error of its own; the server cannot answer until it is restarted."""


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
        self.open_rows = 0  # admitted and not yet gone from the engine; changed on the event loop's thread only
        self.batch_rows = 0  # rows in the batch (decoding or waiting for a slot) after the engine's last step
        self.cancelled = 0  # rows dropped because their client went away
        self.failure: BaseException | None = None  # what stopped the thread, if anything did
        self.closing = False
        self._tags = itertools.count()
        self.thread = threading.Thread(target=self._guarded, name="kvmesh-engine", daemon=True)
        self.thread.start()

    def check_room(self) -> None:
        """Raise `ServerClosing`, `ServerBusy` or `EngineFailed` when a request cannot be admitted now (checked
        before any work is spent on it, and again by `submit`)."""
        if self.failure is not None:
            raise EngineFailed(
                f"the engine stopped ({type(self.failure).__name__}: {self.failure}); restart the server"
            )
        if self.closing:
            raise ServerClosing("the server is shutting down; retry on another instance")
        if self.open_rows >= self.max_open:
            raise ServerBusy(f"{self.open_rows} requests are already waiting or running (the server's limit)")

    def submit(self, request: GenerationRequest) -> tuple[Hashable, asyncio.Future]:
        """Queue a row; returns its tag (for `cancel`) and a future, on the caller's event loop, that gets its
        `Generation` or its error."""
        self.check_room()
        loop = asyncio.get_running_loop()
        future, tag = loop.create_future(), next(self._tags)
        self.open_rows += 1
        self.inbox.put(("submit", tag, request, future, loop))
        if not self.thread.is_alive():  # it ended between the check and the put: nobody will read the message
            self._drain(EngineFailed("the engine is not running; restart the server"))
        return tag, future

    def _gone(self) -> None:  # on the event loop: the engine let go of one admitted row
        self.open_rows -= 1

    def cancel(self, tag: Hashable, future: asyncio.Future) -> None:
        """Drop a request whose client went away: its row leaves the batch at the next step (and only then stops
        counting against `max_open`)."""
        if not future.done():
            future.cancel()
        self.inbox.put(("cancel", tag))

    def stop(self, wait_s: float = 5.0) -> None:
        """Admit nothing more, drop every row, and end the thread (after its current step; waits `wait_s` at most:
        the thread is a daemon, it ends with the process anyway)."""
        self.closing = True
        self.inbox.put(("stop",))
        self.thread.join(timeout=wait_s)

    def _guarded(self) -> None:
        futures: dict[Hashable, tuple[asyncio.Future, asyncio.AbstractEventLoop]] = {}
        try:
            self._run(futures)
        except BaseException as error:  # a bug in the loop itself: fail every request now, refuse new ones
            self.failure = error
            log.exception("the engine thread stopped")
            for tag in list(futures):
                self._leave(futures, tag, error=EngineFailed("the engine stopped; see the server log"))
        finally:  # requests still queued when the thread ends get an answer too
            self._drain(EngineFailed("the engine is not running") if self.failure else ServerClosing("shut down"))

    def _drain(self, error: BaseException) -> None:
        """Fail every submit still in the inbox (the thread has ended, or is ending)."""
        while not self.inbox.empty():
            message = self.inbox.get()
            if message[0] == "submit":
                _, _, _, future, loop = message
                loop.call_soon_threadsafe(_settle, future, None, error)
                loop.call_soon_threadsafe(self._gone)

    def _leave(self, futures: dict, tag: Hashable, generation=None, error: BaseException | None = None) -> None:
        """Settle `tag`'s future (if its client still waits) and count the row as gone."""
        future, loop = futures.pop(tag)
        loop.call_soon_threadsafe(_settle, future, generation, error)
        loop.call_soon_threadsafe(self._gone)

    def _run(self, futures: dict) -> None:
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
                    log.info(
                        "shutting down: %d request(s) left dropped; %d cancelled in all (clients gone, grace over)",
                        len(futures),
                        self.cancelled + len(futures),
                    )
                    for tag in list(futures):
                        self.batch.cancel(tag)
                        self._leave(futures, tag, error=ServerClosing("the server shut down"))
                    return
                if message[0] == "cancel":
                    if message[1] in futures:  # not finished meanwhile
                        self.batch.cancel(message[1])
                        self._leave(futures, message[1])
                        self.cancelled += 1
                    self.batch_rows = len(self.batch.rows) + len(self.batch.waiting)
                    continue
                _, tag, request, future, loop = message
                futures[tag] = (future, loop)
                try:
                    self.batch.submit(request, tag)
                except Exception as error:  # a prompt too long for the context, a bad row: this request fails
                    self._leave(futures, tag, error=error)
            try:
                finished = self.batch.step()
            except Exception as error:  # the engine itself failed: every row in it fails, the server lives on
                log.error("the engine's step failed for %d rows: %s: %s", len(futures), type(error).__name__, error)
                for tag in list(futures):
                    self._leave(futures, tag, error=error)
                self.batch, self.batch_rows = self.model.new_batch(self.seed), 0
                continue
            self.batch_rows = len(self.batch.rows) + len(self.batch.waiting)
            for tag, generation in finished:
                if tag in futures:
                    failure = RowError(generation.error) if generation.error is not None else None
                    self._leave(futures, tag, generation, failure)


_TRIM = threading.Lock()
_TRIM_EVERY_S = 2.0  # the trim takes the allocator's locks: not more often than this
_trimmed_at = [0.0]


def release_memory() -> None:
    """Return the C allocator's free memory to the system (glibc's `malloc_trim`; elsewhere nothing): a batch of
    long prompts leaves hundreds of MB of freed activations cached in the process, which an idle server keeps
    otherwise. One trim at a time, at most every `_TRIM_EVERY_S` seconds; a call meanwhile does nothing."""
    if not _TRIM.acquire(blocking=False):
        return
    try:
        if time.monotonic() - _trimmed_at[0] < _TRIM_EVERY_S:
            return
        with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        _trimmed_at[0] = time.monotonic()
    finally:
        _TRIM.release()


def _settle(future: asyncio.Future, result, error) -> None:
    if not future.done():  # a client that went away cancelled it
        future.set_exception(error) if error is not None else future.set_result(result)

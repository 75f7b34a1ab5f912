"""The routes of `kvmesh serve` and how one request becomes one row of the running batch.

A request is validated (`kvmesh.llm.serve.bodies`), tokenized in a worker thread (never on the event loop, so a
long prompt does not stall other clients), checked against the reply cap, and submitted to the `EngineThread`.
While it runs, the handler watches its client: a client that disconnects (or a stream closed early, or a handler
cancelled by the server's shutdown) cancels the row, which leaves the batch at the next step. A full queue
answers 503 with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from kvmesh.llm.base import ContextLengthError, Generation, GenerationRequest, RowError, normalize_stop
from kvmesh.llm.local import LocalLM
from kvmesh.llm.serve.bodies import ChatBody, CompletionBody, SamplingBody
from kvmesh.llm.serve.engine_thread import EngineFailed, EngineThread, ServerBusy, ServerClosing
from kvmesh.llm.serve.protection import Guard, error_body, install_error_handlers
from kvmesh.llm.serve.replies import choice_logprobs, chunk_choice, sse

log = logging.getLogger("kvmesh")
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # the engine's reasons in OpenAI's words


@dataclass
class ServerLimits:
    """What one server allows a request.

    Args:
        max_tokens: the reply cap of a request that names none.
        max_tokens_limit: the most a request may ask for (more: 400); None: up to the model's context, where the
            engine stops a reply anyway.
        max_body_bytes: request bodies over this get 413 before they are read (1 MiB: about 200k tokens of text).
        body_timeout: seconds a client may take to send its body (more: 408), so a slow sender holds nothing.
        max_open: requests admitted at once, decoding or waiting (more: 503 with Retry-After).
        api_key: clients must send `Authorization: Bearer KEY` (None: no key).
        openapi: serve the machine-readable schema at /openapi.json (the HTML docs pages need a CDN: not served).
    """

    max_tokens: int = 256
    max_tokens_limit: int | None = None
    max_body_bytes: int = 2**20
    body_timeout: float = 30.0
    max_open: int = 256
    api_key: str | None = None
    openapi: bool = False


class EventStream(StreamingResponse):
    """Server-sent events that stop as soon as the client disconnects (the generator's cleanup then runs, which
    cancels the row), whatever ASGI version the server speaks: it always listens for the disconnect."""

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                with contextlib.suppress(OSError):  # the client went away mid-send
                    await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (its body is read by then, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(model: LocalLM, seed: int | None = None, limits: ServerLimits | None = None):
    """The server's ASGI app for `model` (uvicorn runs it: `kvmesh serve`)."""
    limits = limits or ServerLimits()
    engine = EngineThread(model, seed, limits.max_open)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await run_in_threadpool(engine.stop)  # after uvicorn's grace period: every row left is dropped

    schema = "/openapi.json" if limits.openapi else None
    app = FastAPI(
        title="kvmesh", description=f"An OpenAI-compatible server over {model.spec}", lifespan=lifespan,
        docs_url=None, redoc_url=None, openapi_url=schema,
    )  # fmt: skip
    app.state.engine = engine
    install_error_handlers(app)

    def check_model(name: str) -> None:
        if name != model.spec:
            raise HTTPException(404, f"this server serves {model.spec!r}, not {name!r}")

    def row(ids: list[int], body: SamplingBody) -> GenerationRequest:
        body.unsupported()
        logprobs = body.wants_logprobs()  # refuses what it cannot return, naming the field
        asked = body.asked_tokens or limits.max_tokens
        if body.min_tokens > asked:  # with max_tokens given, the body's own validation said so already
            raise HTTPException(400, f"min_tokens ({body.min_tokens}) is more than the reply cap ({asked}, the "
                                     "server's default max_tokens); lower min_tokens or send max_tokens")  # fmt: skip
        if limits.max_tokens_limit is not None and asked > limits.max_tokens_limit:
            raise HTTPException(
                400, f"max_tokens {asked} is over this server's limit of {limits.max_tokens_limit} (--max-tokens-limit)"
            )
        try:
            return GenerationRequest(
                ids, asked, body.temperature, normalize_stop(body.stop) + model.chat.stop,
                min_new_tokens=body.min_tokens, top_p=body.top_p, logprobs=logprobs, seed=body.seed,
            )  # fmt: skip
        except ValueError as error:
            raise HTTPException(400, str(error)) from error

    def room() -> None:
        """Refuse a request the engine cannot take now, before any work is spent on it."""
        try:
            engine.check_room()
        except ServerBusy as error:
            raise HTTPException(503, f"{error}; retry shortly", headers={"Retry-After": "1"}) from error
        except (ServerClosing, EngineFailed) as error:
            raise HTTPException(503, str(error)) from error

    def submit(request: GenerationRequest) -> tuple[int, asyncio.Future]:
        room()  # again: others may have been admitted while this one was tokenized
        return engine.submit(request)

    async def answer(http: Request, request: GenerationRequest, body: SamplingBody, kind: str, echo: str = ""):
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        head = {"id": ident, "created": int(time.time()), "model": model.spec}
        if body.stream:
            return _stream(request, body, kind, head, echo)
        tag, done = submit(request)
        watch = asyncio.ensure_future(_client_gone(http))
        try:
            await asyncio.wait([done, watch], return_when=asyncio.FIRST_COMPLETED)
        finally:  # the client left, or the server is shutting down: the row goes too
            watch.cancel()
            if not done.done():
                engine.cancel(tag, done)
        if done.cancelled():
            raise HTTPException(499, "the client closed the request")
        generation = await _finish(done)
        choice = _choice(kind, echo + generation.text) | {"index": 0, "finish_reason": FINISH[generation.finish_reason]}
        if body.return_token_ids:
            choice["token_ids"] = generation.token_ids
        if generation.logprobs is not None:
            choice["logprobs"] = choice_logprobs(model, generation, kind)
        obj = "chat.completion" if kind == "chat" else "text_completion"
        return head | {"object": obj, "choices": [choice], "usage": _usage(generation)}

    def _stream(request: GenerationRequest, body: SamplingBody, kind: str, head: dict, echo: str) -> EventStream:
        pieces: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        request.on_text = lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece)
        tag, done = submit(request)
        with_usage = bool((body.stream_options or {}).get("include_usage"))
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def event(text: str, first: bool, **extra) -> str:
            return sse(head | {"object": obj, "choices": [chunk_choice(kind, text, first) | extra]})

        async def events() -> AsyncIterator[str]:
            first, waiter = True, asyncio.ensure_future(pieces.get())
            try:
                if echo:
                    yield event(echo, first, index=0, finish_reason=None)
                    first = False
                while True:
                    await asyncio.wait([waiter, done], return_when=asyncio.FIRST_COMPLETED)
                    if not waiter.done():
                        break
                    yield event(waiter.result(), first, index=0, finish_reason=None)
                    first, waiter = False, asyncio.ensure_future(pieces.get())
                while not pieces.empty():  # pieces handed out in the row's last step
                    yield event(pieces.get_nowait(), first, index=0, finish_reason=None)
                    first = False
                try:
                    generation = await _finish(done)
                except HTTPException as error:  # headers are sent: the error goes as the stream's last event
                    yield sse(error_body(error.status_code, str(error.detail)))
                    return
                last = {"index": 0, "finish_reason": FINISH[generation.finish_reason]}
                if body.return_token_ids:
                    last["token_ids"] = generation.token_ids
                if generation.logprobs is not None:
                    last["logprobs"] = choice_logprobs(model, generation, kind)
                yield event("", first, **last)
                if with_usage:
                    yield sse(head | {"object": obj, "choices": [], "usage": _usage(generation)})
                yield "data: [DONE]\n\n"
            finally:  # the client left (or the stream ended): a row still running is dropped
                waiter.cancel()
                if not done.done():
                    engine.cancel(tag, done)

        return EventStream(events(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict:
        """Liveness (503 once the engine has failed), and the load: requests admitted (`requests`), rows in the
        running batch (`rows`), rows dropped because their client went away (`cancelled`)."""
        load = {"requests": engine.open_rows, "rows": engine.batch_rows, "cancelled": engine.cancelled}
        if engine.failure is not None:  # what failed is in the server's log, not shown to whoever asks
            return JSONResponse({"status": "failed", **load}, status_code=503)
        return {"status": "ok", **load}

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model.spec, "object": "model", "owned_by": "kvmesh", "created": 0}
        if model.context_length is not None:
            card["max_model_len"] = model.context_length
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionBody, http: Request):
        check_model(body.model)
        room()
        prompt = body.prompt
        if isinstance(prompt, list) and (len(prompt) != 1 and not all(isinstance(t, int) for t in prompt)):
            raise HTTPException(400, "send one prompt per request (text, or a list of token ids)")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
            prompt = prompt[0]
        ids = await run_in_threadpool(model.encode_prompt, prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise HTTPException(400, "the prompt is empty")
        if model.context_length is not None and len(ids) >= model.context_length:  # before looking at each id
            raise HTTPException(400, f"the prompt is {len(ids):,} tokens; {model.spec} reads at most "
                                     f"{model.context_length:,} positions (and needs one for its reply)")  # fmt: skip
        if max(ids) >= len(model.tokenizer) or min(ids) < 0:
            raise HTTPException(400, f"token ids must lie in [0, {len(model.tokenizer)}) for {model.spec}")
        echo = prompt if body.echo and isinstance(prompt, str) else ""
        if body.echo and not echo:  # token ids: their text, as the model reads it
            echo = await run_in_threadpool(model.tokenizer.decode, ids)
        return await answer(http, row(ids, body), body, "text", echo)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatBody, http: Request):
        check_model(body.model)
        room()
        transcript = [(m.role, m.content) for m in body.messages]
        _, ids = await run_in_threadpool(model.encode_transcript, transcript)
        return await answer(http, row(ids, body), body, "chat")

    return Guard(app, limits.api_key, limits.max_body_bytes, limits.body_timeout)


def _choice(kind: str, text: str) -> dict:
    return {"message": {"role": "assistant", "content": text}} if kind == "chat" else {"text": text}


def _usage(generation: Generation) -> dict:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


async def _finish(future: asyncio.Future) -> Generation:
    try:
        return await future
    except (ContextLengthError, ValueError) as error:
        raise HTTPException(400, str(error)) from error
    except RowError as error:
        raise HTTPException(500, f"this request's row failed alone (the others went on): {error}") from error
    except (ServerClosing, EngineFailed) as error:
        raise HTTPException(503, str(error)) from error
    except Exception as error:  # the engine's step failed for every row in it (logged by the engine thread)
        log.error("a request failed in the engine: %s: %s", type(error).__name__, error)
        raise HTTPException(500, "the engine failed on this request's batch; see the server log") from error

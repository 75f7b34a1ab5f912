"""`kvmesh serve`: an OpenAI-compatible HTTP server over one in-process model, with continuous batching.

    GET  /v1/models              the served model (its id is the spec it was loaded under; `max_model_len`)
    POST /v1/completions         prompt as text or as token ids; `stream`, `stop`, `max_tokens`, `temperature`,
                                 `min_tokens`, `return_token_ids` (vLLM's extension: the generated ids)
    POST /v1/chat/completions    messages rendered with the model's chat template; `stream` too

Every request becomes one row of the model's running batch (`kvmesh.llm.engine`). One engine thread owns the
batch: between decode steps it admits the rows that arrived, so concurrent requests join the batch that is
already decoding (continuous batching) instead of waiting for it to drain. Streamed replies are the engine's
own pieces (`GenerationRequest.on_text`), sent as server-sent events; usage comes last (with
`stream_options.include_usage`) and always carries `prompt_tokens_details.cached_tokens`: this engine keeps no
prefix cache across requests, so it is a true 0.

Caveats: one model per server; a request's `seed` is not per request (rows share the batch's sampler, seeded
with `--seed`), so sampled replies are reproducible only for the same requests in the same order; greedy replies
do not depend on what they are batched with.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from kvmesh.llm.base import ContextLengthError, Generation, GenerationRequest, normalize_stop
from kvmesh.llm.local import LocalLM

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # the engine's reasons in OpenAI's words


class _Sampling(BaseModel):
    """What both endpoints take besides the prompt (unknown fields are ignored, as OpenAI's servers do)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict | None = None
    seed: int | None = None
    min_tokens: int = Field(default=0, ge=0)
    return_token_ids: bool = False
    n: int = Field(default=1, ge=1, le=1)


class CompletionBody(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = None


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class EngineThread:
    """Owns the model's running batch: admits arriving rows between decode steps and steps while any has work."""

    def __init__(self, model: LocalLM, seed: int | None = None) -> None:
        self.model = model
        self.batch = model.new_batch(seed)
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="kvmesh-engine", daemon=True)
        self.thread.start()

    def submit(self, request: GenerationRequest) -> asyncio.Future:
        """Queue a row; the future (on the caller's event loop) gets its `Generation`, or its error."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.inbox.put((request, future, loop))
        return future

    def _run(self) -> None:
        futures: dict[int, tuple[asyncio.Future, asyncio.AbstractEventLoop]] = {}
        while True:
            waiting = [self.inbox.get()] if not self.batch.has_work else []  # idle: sleep until a request comes
            while not self.inbox.empty():
                waiting.append(self.inbox.get())
            for request, future, loop in waiting:
                try:
                    self.batch.submit(request, id(request))
                    futures[id(request)] = (future, loop)
                except Exception as error:  # a prompt too long for the context, a bad row: this request fails
                    loop.call_soon_threadsafe(_settle, future, None, error)
            try:
                finished = self.batch.step()
            except Exception as error:  # the engine itself failed: every row in it fails, the server lives on
                for future, loop in futures.values():
                    loop.call_soon_threadsafe(_settle, future, None, error)
                futures.clear()
                self.batch = self.model.new_batch()
                continue
            for tag, generation in finished:
                future, loop = futures.pop(tag)
                loop.call_soon_threadsafe(_settle, future, generation, None)


def _settle(future: asyncio.Future, result, error) -> None:
    if not future.done():  # a client that went away cancelled it
        future.set_exception(error) if error is not None else future.set_result(result)


def _usage(generation: Generation) -> dict:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def create_app(model: LocalLM, seed: int | None = None, max_tokens: int = 256) -> FastAPI:
    """The server's app for `model` (uvicorn runs it: `kvmesh serve`); `max_tokens` caps a request that names none."""
    app = FastAPI(title="kvmesh", description=f"An OpenAI-compatible server over {model.spec}")
    engine = EngineThread(model, seed)

    def check_model(name: str) -> None:
        if name != model.spec:
            raise HTTPException(404, f"this server serves {model.spec!r}, not {name!r}")

    def row(ids: list[int], body: _Sampling) -> GenerationRequest:
        limit = body.max_completion_tokens or body.max_tokens or max_tokens
        try:
            return GenerationRequest(
                ids,
                limit,
                body.temperature,
                normalize_stop(body.stop) + model.chat.stop,
                min_new_tokens=min(body.min_tokens, limit),
            )
        except ValueError as error:
            raise HTTPException(400, str(error)) from error

    async def answer(request: GenerationRequest, body: _Sampling, kind: str, shape) -> dict | StreamingResponse:
        created, ident = int(time.time()), f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        head = {"id": ident, "created": created, "model": model.spec}
        if not body.stream:
            generation = await _finish(engine.submit(request))
            choice = shape(generation.text) | {"index": 0, "finish_reason": FINISH[generation.finish_reason]}
            if body.return_token_ids:
                choice["token_ids"] = generation.token_ids
            obj = "chat.completion" if kind == "chat" else "text_completion"
            return head | {"object": obj, "choices": [choice], "usage": _usage(generation)}
        pieces: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        request.on_text = lambda piece: loop.call_soon_threadsafe(pieces.put_nowait, piece)
        done = engine.submit(request)
        with_usage = bool((body.stream_options or {}).get("include_usage"))
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        async def events() -> AsyncIterator[str]:
            waiter = asyncio.ensure_future(pieces.get())
            while True:
                await asyncio.wait([waiter, done], return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    choice = shape(waiter.result(), delta=True) | {"index": 0, "finish_reason": None}
                    yield _sse(head | {"object": obj, "choices": [choice]})
                    waiter = asyncio.ensure_future(pieces.get())
                    continue
                waiter.cancel()
                break
            while not pieces.empty():  # pieces handed out in the row's last step
                choice = shape(pieces.get_nowait(), delta=True) | {"index": 0, "finish_reason": None}
                yield _sse(head | {"object": obj, "choices": [choice]})
            try:
                generation = await _finish(done)
            except HTTPException as error:
                yield _sse({"error": {"message": error.detail, "code": error.status_code}})
                return
            last = shape("", delta=True) | {"index": 0, "finish_reason": FINISH[generation.finish_reason]}
            if body.return_token_ids:
                last["token_ids"] = generation.token_ids
            yield _sse(head | {"object": obj, "choices": [last]})
            if with_usage:
                yield _sse(head | {"object": obj, "choices": [], "usage": _usage(generation)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models() -> dict:
        card = {"id": model.spec, "object": "model", "owned_by": "kvmesh", "created": 0}
        if model.context_length is not None:
            card["max_model_len"] = model.context_length
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionBody) -> dict | StreamingResponse:
        check_model(body.model)
        prompt = body.prompt
        if isinstance(prompt, list) and (len(prompt) != 1 and not all(isinstance(t, int) for t in prompt)):
            raise HTTPException(400, "send one prompt per request (text, or a list of token ids)")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
            prompt = prompt[0]
        ids = model.encode_prompt(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise HTTPException(400, "the prompt is empty")
        if max(ids) >= len(model.tokenizer) or min(ids) < 0:
            raise HTTPException(400, f"token ids must lie in [0, {len(model.tokenizer)}) for {model.spec}")
        return await answer(row(ids, body), body, "text", _text_choice)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatBody) -> dict | StreamingResponse:
        check_model(body.model)
        _, ids = model.encode_transcript([(m.role, m.content) for m in body.messages])
        return await answer(row(ids, body), body, "chat", _chat_choice)

    return app


def _text_choice(text: str, delta: bool = False) -> dict:
    return {"text": text}


def _chat_choice(text: str, delta: bool = False) -> dict:
    return (
        {"delta": {"role": "assistant", "content": text}}
        if delta
        else {"message": {"role": "assistant", "content": text}}
    )


async def _finish(future: asyncio.Future) -> Generation:
    try:
        return await future
    except ContextLengthError as error:
        raise HTTPException(400, str(error)) from error
    except ValueError as error:
        raise HTTPException(400, str(error)) from error


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"

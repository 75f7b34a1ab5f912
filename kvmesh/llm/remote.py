"""OpenAIModel: a model behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp's server, `kvmesh serve`).

    load_model("openai:http://127.0.0.1:8000/v1#smollm2-135m")
    load_model("openai:http://gpu-box:8000/v1#served-name@HuggingFaceTB/SmolLM2-135M-Instruct")

The spec is the server's base URL and, after `#`, the model name it serves. The tokenizer is loaded here, from
the part after `@` when given, else from the served name (an alias, a folder or a Hugging Face id; vLLM names a
model by the path it was started with, which is a folder here). With it, prompts are rendered and encoded
exactly as for an in-process model and sent as token ids to `/v1/completions` (every engine above takes a list
of ids), so prompt, edge and budget counts stay exact.

A running batch sends each row as its own request as soon as it is submitted, concurrently (at most
`concurrency` in flight per model), across agents and tasks: the server batches them. `step` returns the rows
that finished, waiting a moment (`POLL_S`) for one. Rows with `on_text` stream (server-sent events); their
pieces are handed out inside `step`, on the caller's thread, like the engine's.

Usage: prompt and completion tokens come from the server's `usage`; the generated ids from the response when the
server returns them (`return_token_ids`: vLLM, `kvmesh serve`), else the local encoding of the text, with the
server's count. Cached prompt tokens come from `usage.prompt_tokens_details.cached_tokens` (vLLM needs
`--enable-prompt-tokens-details`, SGLang `--enable-cache-report`); a server that does not report them gives
`cached_tokens=None`: unknown, never 0.

Errors: the `openai` client's own retries (with backoff) and timeouts are configured, not rewritten; whatever
still fails raises `RemoteModelError` saying what went wrong and how to fix it: an unreachable server, a model
name it does not serve (checked once, before the first request), an HTTP error, a malformed response, a timeout.

Caveats: KV channels read and write a model's cache, so they refuse an `OpenAIModel` before any request (it is
not a `KVModel`); LoRA adapters are the server's business (serve the adapter as a model and name it).

Rows as the in-process engine runs them: a sampled row sends a seed of its own (its request's `seed`, else
`row_seed`: from the batch's seed, its prompt and the prompt's repeat count, so rows of one prompt differ and a
rerun repeats them in any submission order; `kvmesh serve` and vLLM honour a per-request seed); a reply is
clipped to the served context (prompt + `max_tokens` at most the context, where the engine stops the row with
"length"); `cancel` drops a row's request (the connection is closed, and `kvmesh serve` then drops the row).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import queue
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass

import openai

from kvmesh.llm.base import SERVER_SCHEME, Generation, GenerationRequest, check_context
from kvmesh.llm.registry import ModelNotAvailableError, locate_model
from kvmesh.llm.tokenized import TokenizedModel

# the longest `step` waits for a row: streamed pieces go out this often, and a team that also has in-process
# models keeps their batches moving while requests are out
POLL_S = 0.02


class RemoteModelError(ModelNotAvailableError):
    """A request to an OpenAI-compatible server failed; the message says what happened and how to fix it."""


@dataclass(frozen=True)
class RemoteSpec:
    """A parsed `openai:URL#served-name[@tokenizer]` spec."""

    base_url: str
    served: str
    tokenizer: str

    @classmethod
    def parse(cls, spec: str) -> RemoteSpec:
        body = spec[len(SERVER_SCHEME) :] if spec.startswith(SERVER_SCHEME) else spec
        url, _, name = body.partition("#")
        served, _, tokenizer = name.partition("@")
        if not url.startswith(("http://", "https://")) or not served:
            raise RemoteModelError(
                f"{spec!r} is not a server spec; write openai:http://HOST:PORT/v1#MODEL-NAME (the name the server "
                "serves, as /v1/models lists it), optionally followed by @TOKENIZER (an alias, folder or Hugging "
                "Face id) when that name is not one"
            )
        return cls(url.rstrip("/"), served, tokenizer or served)


@dataclass
class _Flight:
    """One row out on the wire: its future and the pieces its stream has brought that `step` has not handed out."""

    request: GenerationRequest
    future: concurrent.futures.Future
    pieces: queue.SimpleQueue


class OpenAIModel(TokenizedModel):
    """A `LanguageModel` served over HTTP; see the module docstring.

    Args:
        spec: `openai:URL#served-name[@tokenizer]`.
        tokenizer: the served model's tokenizer (loaded here).
        concurrency: requests in flight at once, per model.
        timeout: seconds one request may take (the `openai` client's timeout).
        max_retries: the `openai` client's retries of transient failures (connection errors, 408, 429, 5xx).
        api_key: sent as the bearer token (servers on loopback ignore it).
    """

    def __init__(
        self,
        spec: str,
        tokenizer,
        concurrency: int = 32,
        timeout: float = 120.0,
        max_retries: int = 2,
        api_key: str = "kvmesh",
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        super().__init__(tokenizer, spec)
        self.remote = RemoteSpec.parse(spec)
        self.concurrency, self.timeout, self.max_retries, self.api_key = concurrency, timeout, max_retries, api_key
        self.context_length: int | None = None  # from /v1/models when the server says (vLLM's max_model_len)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = self._limit = None
        self._checked = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OpenAIModel({self.spec!r})"

    # --- the event loop the requests run on ----------------------------------------------------------------

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name=f"kvmesh-http-{self.remote.served}", daemon=True).start()

                async def setup() -> None:  # the client and semaphore belong to the loop they are used on
                    self._client = openai.AsyncOpenAI(
                        base_url=self.remote.base_url,
                        api_key=self.api_key,
                        timeout=self.timeout,
                        max_retries=self.max_retries,
                    )
                    self._limit = asyncio.Semaphore(self.concurrency)

                asyncio.run_coroutine_threadsafe(setup(), loop).result()
                self._loop = loop
            return self._loop

    def call(self, coroutine) -> concurrent.futures.Future:
        """Run `coroutine` on the model's event loop; the future holds its result or its `RemoteModelError`."""
        return asyncio.run_coroutine_threadsafe(_explained(self, coroutine), self._start())

    def check(self) -> None:
        """Ask the server which models it serves (once): an unreachable server or a name it does not serve fails
        here, before any request."""
        if self._checked:
            return
        models = self.call(self._models()).result()
        names = [m.id for m in models]
        if self.remote.served not in names:
            raise RemoteModelError(
                f"{self.remote.base_url} serves {names}, not {self.remote.served!r}; put one of those names after '#' "
                f"in the spec (openai:{self.remote.base_url}#NAME)"
            )
        extra = next(m for m in models if m.id == self.remote.served).model_extra or {}
        if isinstance(extra.get("max_model_len"), int):
            self.context_length = extra["max_model_len"]
        self._checked = True

    async def _models(self):
        return [model async for model in self._client.models.list()]

    # --- one row ---------------------------------------------------------------------------------------------

    async def complete(self, request: GenerationRequest, seed: int | None, pieces: queue.SimpleQueue) -> Generation:
        """One row as one completion request (streamed when the row has `on_text`); `seed`: the row's own."""
        limit = request.max_new_tokens
        if self.context_length is not None:  # as in process: the reply stops at the context's last position
            limit = min(limit, self.context_length - len(request.prompt_ids))
        settings = {
            "model": self.remote.served,
            "prompt": list(request.prompt_ids),
            "max_tokens": limit,
            "temperature": request.temperature,
            "stop": list(request.stop) or None,
            "seed": seed if request.temperature > 0 else None,
            "extra_body": {"return_token_ids": True, **_min_tokens(request, limit)},
        }
        if request.top_p < 1:
            settings["top_p"] = request.top_p
        if request.logprobs:
            settings["logprobs"] = 0  # the chosen tokens' log-probabilities, no alternatives
        async with self._limit:
            started = time.perf_counter()
            if request.on_text is None:
                response = await self._client.completions.create(**settings)
                first = time.perf_counter()
                choice, usage = _only_choice(response), response.usage
                text, ids, reason = choice.text, _extra(choice, "token_ids"), choice.finish_reason
                logprobs = _logprobs(choice)
            else:
                stream = await self._client.completions.create(
                    **settings, stream=True, stream_options={"include_usage": True}
                )
                parts, ids, logprobs, reason, usage, first = [], [], [], None, None, None
                async for chunk in stream:
                    usage = chunk.usage or usage
                    for choice in chunk.choices:
                        if choice.text:
                            first = first or time.perf_counter()
                            parts.append(choice.text)
                            pieces.put(choice.text)
                        ids += _extra(choice, "token_ids") or []
                        logprobs += _logprobs(choice) or []
                        reason = choice.finish_reason or reason
                text = "".join(parts)
            done = time.perf_counter()
        if usage is None or reason is None:
            raise RemoteModelError(
                f"{self.remote.base_url} answered a completion without "
                f"{'usage' if usage is None else 'a finish reason'}; kvmesh needs an OpenAI-compatible server that "
                "reports usage (vLLM, SGLang, llama.cpp, kvmesh serve)"
            )
        details = getattr(usage, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) if details is not None else None
        return Generation(
            text=text,
            token_ids=list(ids) if ids else self.encode_prompt(text),
            prompt_tokens=usage.prompt_tokens,
            finish_reason="length" if reason == "length" else "stop",
            ttft_s=(first or done) - started,
            latency_s=done - started,
            started_at=started,
            cached_tokens=cached,
            reported_completion_tokens=usage.completion_tokens,
            logprobs=logprobs if request.logprobs else None,
        )

    def new_batch(self, seed: int | None = None) -> RemoteBatch:
        return RemoteBatch(self, seed)


class RemoteBatch:
    """A running batch whose rows are requests in flight (`RunningBatch`)."""

    def __init__(self, model: OpenAIModel, seed: int | None = None) -> None:
        self.model, self.seed = model, seed
        self.flights: dict[Hashable, _Flight] = {}
        self.asked: Counter[tuple] = Counter()  # sampled rows submitted per prompt and settings: a row's seed

    @property
    def has_work(self) -> bool:
        return bool(self.flights)

    def submit(self, request: GenerationRequest, tag: Hashable) -> None:
        if request.prefill_only or request.prefix is not None or request.keep_kv or request.latent_steps:
            raise RemoteModelError(
                f"{self.model.spec}: a row that builds or reads a KV cache, or thinks in latent steps, cannot go over "
                "HTTP (the server keeps its cache and hidden states to itself); use channel='text' edges for agents "
                "on a served model"
            )
        if request.adapter is not None:
            raise RemoteModelError(
                f"{self.model.spec}: LoRA adapter {request.adapter} cannot be sent to a server; serve it there as a "
                "model of its own (vLLM: --lora-modules NAME=PATH) and point the agent at openai:URL#NAME"
            )
        self.model.check()
        check_context(len(request.prompt_ids), self.model.context_length)
        pieces: queue.SimpleQueue = queue.SimpleQueue()
        prompt, seed = tuple(request.prompt_ids), request.seed
        if seed is None and request.temperature > 0:  # greedy rows draw nothing: they take no seed and no count
            key = (prompt, request.temperature, request.top_p)  # rows alike in all but their turn share a count
            seed = row_seed(self.seed, prompt, self.asked[key])
            self.asked[key] += 1
        future = self.model.call(self.model.complete(request, seed, pieces))
        self.flights[tag] = _Flight(request, future, pieces)

    def cancel(self, tag: Hashable) -> None:
        """Drop a row: its request is cancelled (the connection closes) and it returns no result."""
        flight = self.flights.pop(tag, None)
        if flight is not None:
            flight.future.cancel()

    def step(self) -> list[tuple[Hashable, Generation]]:
        """Wait until a row finishes (at most `POLL_S`); hand out streamed pieces; return the finished rows."""
        if not self.flights:
            return []
        futures = [f.future for f in self.flights.values()]
        concurrent.futures.wait(futures, timeout=POLL_S, return_when=concurrent.futures.FIRST_COMPLETED)
        finished = []
        for tag, flight in list(self.flights.items()):
            while not flight.pieces.empty():
                flight.request.on_text(flight.pieces.get())
            if flight.future.done():
                del self.flights[tag]
                finished.append((tag, flight.future.result()))  # a failed request raises its RemoteModelError
        return finished


def row_seed(seed: int | None, prompt: tuple[int, ...], repeat: int) -> int | None:
    """The seed of a row: from the batch's seed, the row's prompt and how many rows of that prompt came before it,
    so rows differ (the same prompt sampled again too) and a rerun gives each row its seed again, whatever order
    the rows were submitted in (the scheduler submits in the order earlier rows finished). None: the server's."""
    if seed is None:
        return None
    digest = hashlib.blake2b(f"{seed}:{repeat}:{','.join(map(str, prompt))}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def _min_tokens(request: GenerationRequest, limit: int) -> dict:
    return {"min_tokens": min(request.min_new_tokens, limit)} if request.min_new_tokens else {}


def _logprobs(choice) -> list[float] | None:
    """The chosen tokens' log-probabilities of a completion choice (OpenAI's `logprobs.token_logprobs`)."""
    logprobs = getattr(choice, "logprobs", None)
    return list(logprobs.token_logprobs or []) if logprobs is not None else None


def _only_choice(response):
    if not getattr(response, "choices", None):
        raise RemoteModelError("the server answered a completion with no choices; is it an OpenAI-compatible server?")
    return response.choices[0]


def _extra(item, name: str):
    """A field the OpenAI schema does not name (vLLM's `token_ids`), or None."""
    value = getattr(item, name, None)
    if value is None and getattr(item, "model_extra", None):
        value = item.model_extra.get(name)
    return value


async def _explained(model: OpenAIModel, coroutine):
    """`coroutine`'s result; the `openai` client's errors (after its retries) as `RemoteModelError`s with a fix."""
    where = f"{model.remote.base_url} (model {model.remote.served!r})"
    try:
        return await coroutine
    except openai.APITimeoutError as error:
        raise RemoteModelError(
            f"{where} did not answer within {model.timeout:g} s ({model.max_retries} retries); the server may be "
            "overloaded or still starting: wait for it, or raise the timeout"
        ) from error
    except openai.APIConnectionError as error:
        raise RemoteModelError(
            f"cannot reach {where}: {error.__cause__ or error} (after {model.max_retries} retries). Is the server "
            f"running and is the URL right? Start one with: {_serve_hint(model)}"
        ) from error
    except openai.NotFoundError as error:
        raise RemoteModelError(f"{where}: not found (HTTP 404: {_detail(error)}); check the URL ends in /v1") from error
    except openai.APIStatusError as error:
        raise RemoteModelError(f"{where} refused the request: HTTP {error.status_code}: {_detail(error)}") from error
    except openai.APIResponseValidationError as error:
        raise RemoteModelError(f"{where} sent a malformed response: {error}") from error


def _serve_hint(model: OpenAIModel) -> str:
    """The `kvmesh serve` command that would answer this model's URL and name."""
    url = urllib.parse.urlsplit(model.remote.base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    host = "" if url.hostname in ("127.0.0.1", "localhost") else f" --host {url.hostname}"
    return f"kvmesh serve --model {model.remote.served}{host} --port {port}"


def _detail(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or body.get("error")
        if isinstance(message, dict):
            message = message.get("message")
        if message:
            return str(message)
    return str(getattr(error, "message", error))


def load_remote(spec: str, **settings) -> OpenAIModel:
    """An `OpenAIModel` for `spec`, with its tokenizer loaded here (`settings`: `OpenAIModel`'s)."""
    from transformers import AutoTokenizer

    remote = RemoteSpec.parse(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(locate_model(remote.tokenizer))
    except Exception as error:
        raise RemoteModelError(
            f"{spec}: kvmesh counts tokens with the served model's own tokenizer, and {remote.tokenizer!r} gives none "
            f"here ({error}); name one after '@': openai:{remote.base_url}#{remote.served}@smollm2-135m (an alias, "
            "a local folder or a Hugging Face id)"
        ) from error
    return OpenAIModel(spec, tokenizer, **settings)

"""What the runtime needs of a model: the `LanguageModel` protocol, its running batch, and one row's request and result.

Every model call in kvmesh is a row of a running batch: the scheduler `submit`s rows (an agent's turn, or a
prefill-only row that builds a cache and generates nothing), `step`s the batch until it has no work, and reads
each finished row's `Generation`. `kvmesh.llm.local.LocalLM` (an in-process Hugging Face model) implements the
protocol; any other backend that does can stand wherever an agent's model goes.

KV channels need more than text in and text out: they read and write the model's cache, so they also need the
model in this process (`KVModel`); they refuse other backends before any call.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kvmesh.llm.prefix import LatentSpan as LatentSpan  # re-exported: callers import it with the request
from kvmesh.llm.prefix import PrefixCache

if TYPE_CHECKING:
    import torch

    from kvmesh.llm.chat import ChatFormat
    from kvmesh.llm.segment import KVSegment


SERVER_SCHEME = "openai:"  # `openai:http://HOST:PORT/v1#MODEL`: a model behind an OpenAI-compatible server


def normalize_stop(stop) -> tuple[str, ...]:
    """Stop strings as a tuple: a single string is one stop string, not a sequence of characters."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    stops = tuple(stop)
    for item in stops:
        if not isinstance(item, str) or not item:
            raise ValueError(f"stop strings must be non-empty strings, got {item!r}")
    return stops


class ContextLengthError(ValueError):
    """A prompt that does not fit the model's context; the message gives both lengths and how to fix it."""


def context_length_of(model) -> int | None:
    """A model's context in positions, or None when it names none (an optional `LanguageModel` attribute)."""
    return getattr(model, "context_length", None)


def encode_data(model, text: str, literal: Sequence[tuple[int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
    """`model.encode_with_spans(text, literal)`; a backend whose method takes no `literal` encodes plainly."""
    if _takes_literal(type(model)):
        return model.encode_with_spans(text, literal)
    return model.encode_with_spans(text)


@functools.cache
def _takes_literal(backend: type) -> bool:
    """Whether a backend's `encode_with_spans` takes `literal` (asked once per class: prompts are planned often)."""
    try:
        return "literal" in inspect.signature(backend.encode_with_spans).parameters
    except (TypeError, ValueError):  # a builtin or C method without a signature
        return False


PROMPT_FIXES = "shorten the task's text or shards, send fewer or shorter messages (a lower max_new_tokens)"


def check_context(
    prompt_tokens: int, context_length: int | None, who: str = "a prompt", fixes: str = PROMPT_FIXES
) -> None:
    """Refuse a prompt that leaves no position for a generated token (`context_length` None: no known limit)."""
    if context_length is not None and prompt_tokens >= context_length:
        raise ContextLengthError(
            f"{who} is {prompt_tokens:,} tokens but the model reads at most {context_length:,} positions (and needs "
            f"one for its reply); {fixes}, or use a model with a longer context"
        )


class RowError(RuntimeError):
    """One row of a running batch could not go on (its logits were not numbers); the other rows were not touched."""


@dataclass
class GenerationRequest:
    """One row of a running batch.

    Args:
        prompt_ids: token ids of the full prompt, exactly as the model reads them.
        max_new_tokens: upper bound on generated tokens for this row; 0 makes a prefill-only row, which reads its
            prompt (keeping its cache with `keep_kv`, or writing into its `prefix`'s buffer) and generates nothing.
        temperature: 0 is greedy; above 0 samples from softmax(logits / temperature).
        top_p: nucleus sampling: a sampled row draws from its most likely tokens whose mass reaches top_p (1: all;
            0: the most likely one). Greedy rows ignore it.
        logprobs: record the log-probability of each chosen token under the model's distribution as the row
            sees it (after `min_new_tokens` has held back its end-of-sequence tokens) (`Generation.logprobs`).
        seed: the row's own sampling seed: its draws then depend on it alone, not on what it is batched with or
            when it joined (None: the running batch's shared generator).
        stop: strings that end generation; the text is cut before the first one found.
        prefix: a prebuilt cache of the prompt's first tokens (a `PrefixCache`, such as
            `kvmesh.kvcomm.assembly.Assembly`); only the remaining prompt tokens are prefilled, into its buffers.
            Its optional `latent` (a `LatentSpan`) names positions only some layers read.
        keep_kv: return the row's cache of its prompt and of its generated tokens (`Generation.prompt_kv`,
            `Generation.reply_kv`), for cache reuse downstream.
        keep_prompt_kv: with keep_kv, False keeps only the reply's cache (the prompt's is a copy of every
            prompt position, wasted when nobody reads it).
        min_new_tokens: end-of-sequence tokens are never chosen before this many tokens (fixed-length replies for
            timing experiments, as `min_new_tokens` in transformers).
        adapter: a LoRA adapter folder (what peft's `save_pretrained` writes) the row runs with; None runs the base
            weights. Rows with different adapters on one model share its forward passes (`kvmesh.llm.adapters`).
        on_text: called with each new piece of the reply's text as it is decoded; the pieces join into
            `Generation.text` (`kvmesh.llm.streaming`: a stop string's beginning is held back until settled).
        latent_steps: latent thoughts to run after the prompt, before any token (LatentMAS): each feeds the row's
            last hidden state back as its next input (`kvmesh.llm.thoughts`) and adds one position to its cache;
            `Generation.prompt_kv` then covers the prompt and those positions. A prefill-only row with latent
            steps runs them and then finishes.
    """

    prompt_ids: list[int]
    max_new_tokens: int = 256
    temperature: float = 0.0
    stop: tuple[str, ...] = ()
    prefix: PrefixCache | None = None
    keep_kv: bool = False
    keep_prompt_kv: bool = True
    min_new_tokens: int = 0
    adapter: str | None = None
    on_text: Callable[[str], None] | None = field(default=None, compare=False, repr=False)
    latent_steps: int = 0
    top_p: float = 1.0
    logprobs: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        self.stop = normalize_stop(self.stop)
        if not self.prompt_ids:
            raise ValueError("a generation request needs a non-empty prompt")
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0 (0: prefill only), got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p}")
        if not isinstance(self.latent_steps, int) or self.latent_steps < 0:
            raise ValueError(f"latent_steps must be an integer >= 0, got {self.latent_steps!r}")
        if not 0 <= self.min_new_tokens <= max(self.max_new_tokens, 0):
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}")
        if self.adapter is not None and not isinstance(self.adapter, str):
            self.adapter = str(self.adapter)  # a Path
        if self.prefix is not None and not 0 < self.prefix.length < len(self.prompt_ids):
            raise ValueError("a prefix cache must cover part of the prompt and leave at least one token to prefill")

    @property
    def prefill_only(self) -> bool:
        return self.max_new_tokens == 0


@dataclass
class Generation:
    """The result of one row.

    `token_ids` are every token the model generated for this row, including a final end-of-sequence token or
    the tokens that completed a stop string; `text` is their decoded text with special tokens removed and cut
    before any stop string. A row that could not go on (its logits not numbers) finishes alone with reason
    "error" and the reason in `error`; `check()` raises it as a `RowError` for callers that need a reply.
    `completion_tokens == len(token_ids)`. Times count from `started_at` (a `time.perf_counter()` value), when the
    row was admitted to the batch. A prefill-only row finishes with reason "prefill" and no tokens. `prefill_s` is
    the compute its prefill cost: its share (by tokens) of the batched forward pass it was prefilled in. A server
    backend (`kvmesh.llm.remote`) reports the prompt tokens its own prefix cache served as `cached_tokens` (None
    when the server does not say: unknown, never 0) and its own completion count when it does not return the ids.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "eos", "stop", "length", "prefill" or "error"
    ttft_s: float
    latency_s: float
    started_at: float = 0.0
    prompt_kv: KVSegment | None = None  # with keep_kv: the prompt's cache, positions 0 ..
    reply_kv: KVSegment | None = None  # with keep_kv: the cache of the generated tokens that were fed back
    prefill_s: float = 0.0
    cached_tokens: int | None = 0  # prompt tokens a server served from its own cache; None: it did not say
    reported_completion_tokens: int | None = None  # a server's own count, when its ids are not returned
    latent_steps: int = 0  # latent thoughts run after the prompt (their positions end `prompt_kv`)
    logprobs: list[float] | None = None  # with `GenerationRequest.logprobs`: one per token id
    error: str | None = None  # why the row failed (finish_reason "error")

    def check(self) -> Generation:
        """This generation, or `RowError` if its row failed."""
        if self.error is not None:
            raise RowError(self.error)
        return self

    @property
    def completion_tokens(self) -> int:
        if self.reported_completion_tokens is not None:
            return self.reported_completion_tokens
        return len(self.token_ids)


@runtime_checkable
class RunningBatch(Protocol):
    """Rows that join between steps and leave when done (continuous batching)."""

    @property
    def has_work(self) -> bool: ...

    def submit(self, request: GenerationRequest, tag: Hashable) -> None:
        """Queue a row; it joins the batch at the next `step` that has a free slot. A prompt that does not fit the
        model's context raises `ContextLengthError` here, before any forward pass; a reply ends ("length") at
        the context's last position."""

    def step(self) -> list[tuple[Hashable, Generation]]:
        """Admit waiting rows, advance every row by one token (one batched forward pass); return finished rows
        (a row that failed alone among them: finish_reason "error")."""

    def cancel(self, tag: Hashable) -> None:
        """Drop the row submitted under `tag`: waiting, it never starts; running, it leaves at the next `step`
        without a result. An unknown or finished tag is ignored."""


@runtime_checkable
class LanguageModel(Protocol):
    """A model agents can run on: tokenization with its own tokenizer, its chat format, and running batches.

    Token counts everywhere come from `encode_prompt` / `encode_with_spans`, so they are the model's own.

    Optional: a `context_length` attribute (positions the model reads, prompt and reply together; see
    `context_length_of`), and `encode_with_spans`'s `literal` argument (see `encode_data`). Backends written
    before they existed still run, without the context check and the control-token guard.
    """

    spec: str  # the name it was loaded under
    chat: ChatFormat  # renders transcripts into the exact prompt text, and the stop strings that layout needs

    def render(self, messages: Sequence) -> str:
        """The exact prompt text for a transcript, ready for a new assistant turn."""

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (its special tokens are written in the text itself)."""

    def encode_with_spans(
        self, text: str, literal: Sequence[tuple[int, int]] = ()
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode_prompt(text)` and the character span of each token. `literal`: character ranges that are data
        (a task, a shard, a message), where a control token's text is encoded as plain text, never as the token."""

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text token ids stand for, special tokens included (the inverse of `encode_prompt`)."""

    def count_tokens(self, text: str) -> int:
        """Number of tokens of `text` (no special tokens added)."""

    def new_batch(self, seed: int | None = None) -> RunningBatch:
        """A running batch on this model; `seed` seeds sampling (greedy rows ignore it)."""


@runtime_checkable
class KVModel(LanguageModel, Protocol):
    """A `LanguageModel` in this process whose KV cache channels can read and write.

    `model` is the transformers causal LM (its config gives the cache layout; its rotary embedding, the
    positions of cached keys); `eos_ids` its end-of-sequence tokens.
    """

    model: torch.nn.Module
    eos_ids: set[int]


def run_requests(
    model: LanguageModel, requests: Sequence[GenerationRequest], seed: int | None = None
) -> list[Generation]:
    """Run prepared rows to completion on one running batch of `model`; results in request order."""
    batch = model.new_batch(seed)
    for index, request in enumerate(requests):
        batch.submit(request, index)
    results: list[Generation | None] = [None] * len(requests)
    while batch.has_work:
        for index, generation in batch.step():
            results[index] = generation.check()
    return results  # type: ignore[return-value]


def stream_request(
    model: LanguageModel, request: GenerationRequest, seed: int | None = None
) -> Iterator[str | Generation]:
    """Run one row on its own running batch of `model`, yielding its reply's text pieces as they are decoded
    and, last, its `Generation` (the pieces join into its text). Lazy: nothing runs until it is iterated."""
    pieces: list[str] = []
    request.on_text = pieces.append
    batch = model.new_batch(seed)
    batch.submit(request, 0)
    while batch.has_work:
        finished = batch.step()
        yield from pieces
        pieces.clear()
        for _, generation in finished:
            yield generation.check()

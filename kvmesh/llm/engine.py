"""The generation engine: a running batch of rows that join between decode steps and leave when done.

Why our own loop rather than `model.generate`: each row has its own max_new_tokens, temperature and stop
strings; we need time to first token and exact token ids per row; and work arrives while others decode (an
agent's turn becomes ready when its upstream agents finish), so rows must join a running batch: continuous
batching, as serving engines do it.

One `LocalRunningBatch.step()`:
  1. admit waiting rows (up to `max_rows`): prefill them (`kvmesh.llm.prefill`: plain rows in length buckets,
     rows on prefix caches) and stack their caches, left-padded, onto the running cache; prefill-only rows
     (`max_new_tokens=0`: a cache to build, nothing to generate) leave right after their prefill;
  2. choose one token per row (greedy, or sampled at the row's temperature);
  3. retire rows that hit EOS, a stop string or their token limit (their cache rows are dropped, and padding
     columns no row needs any more are trimmed);
  4. one forward pass of the remaining rows over the shared cache (`kvmesh.llm.runner.ModelRunner`).

The pieces: `ModelRunner` (one model: its forward pass, stop strings, engine time), `StackedRows` (rows on one
left-padded cache: each prefill's output, and the running batch itself, `kvmesh.llm.rows`), the prefill paths
(`kvmesh.llm.prefill`) and this module's `LocalRunningBatch`, which admits, steps and retires rows.

Left padding is exact: position ids count only real tokens and the attention mask hides pads, so a row's
greedy output does not depend on what it is batched with (tests check equality on real prompts).

Latent columns: a row's prefix may say that some of its positions are read only by some layers
(`LatentSpan`, kv-select's shared context). The batch tracks them beside the mask (`latent`: which columns,
`reads`: which layers of each row read them) and hands each forward pass the columns every layer must skip
(`kvmesh.llm.layer_mask`), through joins, retirements and trims like the mask itself.

Latent thoughts: a row with `latent_steps` feeds its last final hidden state back as its next input that many
times before it chooses a token (`kvmesh.llm.thoughts`). It decodes with the others: a step where some rows think
hands the model input embeddings for every row (the token rows' own embeddings, the thinking rows' thoughts), so
thinking rows cost one batched forward pass per thought like any decoding row. A prefill-only row with thoughts
stays for them and leaves after the last one, with its cache of the prompt and the thoughts.

Adapters: a row may name a LoRA adapter (`GenerationRequest.adapter`, loaded by `kvmesh.llm.adapters`) and keeps
that version from submission to its end; every forward pass hands the LoRA layers one adapter name per row, so
rows with different adapters share it. Rows that name none pass nothing (the plain path).

Caveat: a model with sliding-window layers cannot stack caches of different lengths, so there rows join only an
empty batch, prefill in one padded bucket, and padding is never trimmed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable

import torch

from kvmesh.llm.adapters import adapters_of, names_per_row
from kvmesh.llm.base import Generation, GenerationRequest, check_context
from kvmesh.llm.cache import read_columns
from kvmesh.llm.prefill import prefill_parts
from kvmesh.llm.rows import Row, StackedRows
from kvmesh.llm.runner import ModelRunner
from kvmesh.llm.sampling import choose_tokens, chosen_logprobs, unusable_rows
from kvmesh.llm.segment import KVSegment
from kvmesh.llm.streaming import TextStream
from kvmesh.llm.thoughts import THOUGHT


class LocalRunningBatch:
    """A running batch over one in-process model. `submit` rows at any time; `step` until `has_work` is False.

    Args:
        runner: the model's `ModelRunner`.
        max_rows: most rows decoding at once; later submissions wait for a free slot.
        seed: seeds sampling; greedy rows ignore it.
    """

    def __init__(self, runner: ModelRunner, max_rows: int = 32, seed: int | None = None) -> None:
        self.runner = runner
        self.max_rows = max_rows
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.waiting: deque[Row] = deque()
        self.running: StackedRows | None = None  # the rows decoding, in batch order
        self.cancelled: set[Hashable] = set()  # tags of running rows to drop at the next step

    @property
    def rows(self) -> list[Row]:
        return self.running.rows if self.running is not None else []

    @property
    def has_work(self) -> bool:
        return bool(self.running is not None or self.waiting)

    def submit(self, request: GenerationRequest, tag: Hashable) -> None:
        prompt = len(request.prompt_ids)
        limit = self.runner.context_length
        # a prefill-only row may fill the context; thoughts take positions like tokens
        check_context(prompt + request.latent_steps - (1 if request.prefill_only else 0), limit)
        if request.latent_steps and not self.runner.mergeable:
            raise ValueError(
                "latent thoughts need a model whose cache keeps every position; this one has sliding-window layers "
                "(run latent_steps=0 on it)"
            )
        row = Row(request, tag, stream=TextStream(request.on_text, request.stop) if request.on_text else None)
        if request.seed is not None:
            row.generator = torch.Generator().manual_seed(request.seed)
        if request.adapter is not None:  # a bad adapter fails here; the row keeps this version to its end
            (row.adapter,) = adapters_of(self.runner.model).acquire([request.adapter])
        self.waiting.append(row)

    def cancel(self, tag: Hashable) -> None:
        """Drop the row submitted under `tag`: waiting, it never starts; running, it leaves at the next `step`
        without a result (its cache row and adapter freed). An unknown or finished tag is ignored."""
        for row in self.waiting:
            if row.tag == tag:
                self.waiting.remove(row)
                self._release(row)
                return
        if any(row.tag == tag for row in self.rows):
            self.cancelled.add(tag)

    def _release(self, row: Row) -> None:
        if row.adapter is not None:  # a superseded adapter version goes once its last row has left
            adapters_of(self.runner.model).release(row.adapter)

    def _prefilled(self, row: Row, now: float, prompt_kv: KVSegment | None = None) -> tuple[Hashable, Generation]:
        """A prefill-only row's result: its cache (if kept; a thinking row's is read at its end), no tokens."""
        self._release(row)
        seconds = now - row.started_at
        prompt, prompt_kv = len(row.request.prompt_ids), prompt_kv or row.prompt_kv
        generation = Generation("", [], prompt, "prefill", seconds, seconds, row.started_at, prompt_kv)
        generation.prefill_s, generation.latent_steps = row.prefill_s, row.thoughts
        return row.tag, generation

    def _prefill(self, rows: list[Row]) -> tuple[list[StackedRows], list[tuple[Hashable, Generation]]]:
        """Prefill newly admitted rows, part by part. Returns the parts' rows that go on to decode and the results
        of prefill-only rows, which leave as soon as their part is done (their caches never join the batch)."""
        going: list[StackedRows] = []
        finished: list[tuple[Hashable, Generation]] = []
        for part in prefill_parts(self.runner, rows):
            now = time.perf_counter()
            finished += [self._prefilled(row, now) for row in part.rows if row.leaves_after_prefill]
            decoding = [b for b, row in enumerate(part.rows) if not row.leaves_after_prefill]
            if decoding:
                going.append(part.select(decoding))
        return going, finished

    def _admit(self) -> list[tuple[Hashable, Generation]]:
        """Prefill waiting rows into free slots; returns the results of prefill-only rows among them."""
        if not self.waiting or (self.running is not None and not self.runner.mergeable):
            return []
        count = min(len(self.waiting), self.max_rows - len(self.rows))
        if count <= 0:
            return []
        joining = [self.waiting.popleft() for _ in range(count)]
        now = time.perf_counter()
        for row in joining:
            row.started_at = now
        going, finished = self._prefill(joining)
        if going:  # join the running batch: one stack, every part left-padded to the widest
            running = [] if self.running is None else [self.running]
            self.running = StackedRows.stack(running + going, self.runner.model.config)
        return finished

    def _finished(self, row: Row, token: int) -> str | None:
        row.generated.append(token)
        if token in self.runner.eos_ids:
            return "eos"
        if self.runner.stop_hit(row):
            return "stop"
        if len(row.generated) >= row.request.max_new_tokens:
            return "length"
        limit = self.runner.context_length
        if limit is not None and len(row.request.prompt_ids) + row.thoughts + len(row.generated) >= limit:
            return "length"  # the next token would have no position
        return None

    def _prompt_kv(self, index: int, row: Row) -> KVSegment | None:
        """The row's prompt cache at its end, its thoughts' positions included: the columns before its fed-back
        tokens (a row's real tokens end at the right edge of the cache, and padding is trimmed from the left
        only)."""
        if row.prompt_kv is not None or not (row.request.keep_kv and row.request.keep_prompt_kv):
            return row.prompt_kv
        end = self.running.mask.shape[1] - max(len(row.generated) - 1, 0)
        ids = (*row.request.prompt_ids, *(THOUGHT,) * row.thoughts)
        return KVSegment(*read_columns(self.running.cache, index, end - len(ids), end), 0, ids)

    def _reply_kv(self, index: int, row: Row) -> KVSegment:
        """The cache of the row's generated tokens that were fed back (all but the last): the row's newest
        columns, since every row's real tokens end at the right edge of the cache."""
        fed = row.generated[:-1]
        width = self.running.mask.shape[1]
        start = len(row.request.prompt_ids) + row.thoughts
        return KVSegment(*read_columns(self.running.cache, index, width - len(fed), width), start, tuple(fed))

    def _retire(self, keep: list[int]) -> None:
        """Keep only batch rows `keep` (none: the batch empties), and trim padding columns nobody needs."""
        if not keep:
            self.running = None
            return
        self.running = self.running.select(keep)
        if self.runner.mergeable:  # sliding-window layers track positions themselves
            self.running.trim_padding()

    def _suppress_eos(self) -> None:
        """Rows below their `min_new_tokens` may not end: their end-of-sequence logits go to -inf."""
        early = [i for i, row in enumerate(self.rows) if len(row.generated) < row.request.min_new_tokens]
        if early:
            logits = self.running.logits
            rows = torch.tensor(early, device=logits.device)[:, None]
            logits[rows, self.runner.eos_index.to(logits.device)[None, :]] = float("-inf")

    def _result(self, index: int, row: Row, reason: str, now: float) -> Generation:
        """A finished decoding row's result (its caches read before its cache row is dropped)."""
        self._release(row)
        text = row.text if row.text is not None else self.runner.text(row.generated)
        if row.stream is not None:
            row.stream.finish(text)
        return Generation(
            text=text,
            token_ids=row.generated,
            prompt_tokens=len(row.request.prompt_ids),
            finish_reason=reason,
            ttft_s=row.first_token_at - row.started_at,
            latency_s=now - row.started_at,
            started_at=row.started_at,
            prompt_kv=self._prompt_kv(index, row),
            reply_kv=self._reply_kv(index, row) if row.request.keep_kv else None,
            prefill_s=row.prefill_s,
            latent_steps=row.thoughts,
            logprobs=list(row.logprobs) if row.request.logprobs else None,
        )

    def _failed(self, row: Row, now: float, why: str) -> Generation:
        """A row that cannot go on: its result says why; the batch goes on without it."""
        self._release(row)
        generation = Generation("", row.generated, len(row.request.prompt_ids), "error", 0.0, now - row.started_at)
        generation.started_at, generation.error = row.started_at, why
        return generation

    def _decode(self, tokens: torch.Tensor) -> None:
        """Feed each remaining row its chosen token (B,), or its next latent thought: one forward pass over the
        shared cache."""
        running = self.running
        running.mask = torch.cat([running.mask, running.mask.new_ones((len(running.rows), 1))], dim=-1)
        running.latent = torch.cat([running.latent, running.latent.new_zeros((len(running.rows), 1))], dim=-1)
        adapters = names_per_row([row.adapter for row in running.rows])
        thinking = [i for i, row in enumerate(running.rows) if row.thinking]
        embeds = None
        if thinking:  # every row reads embeddings then: the token rows' own, the thinking rows' thoughts
            embeds = self.runner.embed(tokens[:, None])
            embeds[thinking] = self.runner.thought_inputs(running.hidden[thinking])
        running.logits, running.hidden = self.runner.forward(
            tokens[:, None],
            running.mask,
            running.positions,
            running.cache,
            running.latent,
            running.reads,
            adapters,
            embeds,
        )
        running.positions = running.positions + 1
        for i in thinking:
            running.rows[i].thoughts += 1

    @torch.inference_mode()
    def step(self) -> list[tuple[Hashable, Generation]]:
        """Admit, choose one token per row, retire finished rows, run one decode forward pass."""
        begin = time.perf_counter()
        done = self._admit()
        if self.running is None:
            self.runner.busy_s += time.perf_counter() - begin
            return done
        self._suppress_eos()
        logits, device = self.running.logits, self.running.logits.device
        broken = unusable_rows(logits)  # such a row fails alone; its logits must not reach the sampler
        # a row that thinks, or has thought and generates nothing, uses no token: greedy draws none from the generator
        unused = torch.tensor([row.thinking or row.request.prefill_only for row in self.rows], device=device)
        temperatures = self.running.temperatures.masked_fill(unused | broken, 0)
        logits = logits.masked_fill(broken[:, None], 0.0) if bool(broken.any()) else logits
        own = [row.generator for row in self.rows]
        tokens = choose_tokens(logits, temperatures, self.generator, self.running.top_ps, own if any(own) else None)
        wanted = [row.request.logprobs for row in self.rows]
        logprobs = chosen_logprobs(logits, tokens).tolist() if any(wanted) else None
        broken_rows, now = broken.tolist(), time.perf_counter()
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(self.rows, tokens.tolist(), strict=True)):
            if row.tag in self.cancelled:  # its client went away: it leaves without a result
                self.cancelled.discard(row.tag)
                self._release(row)
                continue
            if broken_rows[i]:
                why = "the model's logits for this row are not numbers (NaN or infinite); it cannot be continued"
                done.append((row.tag, self._failed(row, now, why)))
                continue
            if row.thinking:  # its next input is a thought: the token chosen for it is not used
                keep.append(i)
                continue
            if row.request.prefill_only:  # its thoughts are done, and it generates nothing
                done.append(self._prefilled(row, now, self._prompt_kv(i, row)))
                continue
            if not row.generated:
                row.first_token_at = now
            if logprobs is not None and wanted[i]:
                row.logprobs.append(logprobs[i])
            reason = self._finished(row, token)
            if reason is None:
                keep.append(i)
                if row.stream is not None:
                    row.stream.update(self.runner.text(row.generated))
            else:
                done.append((row.tag, self._result(i, row, reason, now)))
        if len(keep) < len(tokens):
            self._retire(keep)
            tokens = tokens[torch.tensor(keep, dtype=torch.long, device=tokens.device)]
        if self.running is not None:
            self._decode(tokens)
        self.runner.busy_s += time.perf_counter() - begin
        return done

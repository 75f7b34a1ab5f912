"""The generation engine: a running batch of rows that join between decode steps and leave when done.

Why our own loop rather than `model.generate`: each row has its own max_new_tokens, temperature and stop
strings; we need time to first token and exact token ids per row; and work arrives while others decode (an
agent's turn becomes ready when its upstream agents finish), so rows must join a running batch: continuous
batching, as serving engines do it.

One `DecodeBatch.step()`:
  1. admit waiting rows (up to `max_rows`): prefill them in length buckets, since padding is pure waste in
     compute-bound prefill, and stack their caches, left-padded, onto the running cache; prefill-only rows
     (`max_new_tokens=0`: a cache to build, nothing to generate) leave right after their prefill;
  2. choose one token per row (greedy, or sampled at the row's temperature);
  3. retire rows that hit EOS, a stop string or their token limit (their cache rows are dropped, and padding
     columns no row needs any more are trimmed);
  4. one forward pass of the remaining rows over the shared cache.

Left padding is exact: position ids count only real tokens and the attention mask hides pads, so a row's
greedy output does not depend on what it is batched with (tests check equality on real prompts).

Latent columns: a row's prefix may say that some of its positions are read only by some layers
(`LatentSpan`, kv-select's shared context). The batch tracks them beside the mask (`latent`: which columns,
`reads`: which layers of each row read them) and hands each forward pass the columns every layer must skip
(`kvmesh.llm.layer_mask`), through joins, retirements and trims like the mask itself.

Adapters: a row may name a LoRA adapter (`GenerationRequest.adapter`, loaded by `kvmesh.llm.adapters`) and keeps
that version from submission to its end; every forward pass hands the LoRA layers one adapter name per row, so
rows with different adapters share it. Rows that name none pass nothing (the plain path).

Shapes: B = rows in the batch, W = cache width (longest row incl. its left padding), V = vocabulary,
L = layers.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kvmesh.llm.adapters import adapters_of, names_per_row
from kvmesh.llm.base import Generation, GenerationRequest, LatentSpan, check_context
from kvmesh.llm.cache import (
    cache_argument,
    can_merge,
    new_cache,
    read_columns,
    select_rows,
    stack_left_padded,
    trim_left,
)
from kvmesh.llm.layer_mask import use_layer_masks
from kvmesh.llm.layout import dropped_columns, left_pad, length_buckets
from kvmesh.llm.sampling import choose_tokens
from kvmesh.llm.segment import KVSegment
from kvmesh.llm.streaming import TextStream


@dataclass
class _Row:
    request: GenerationRequest
    tag: Hashable
    generated: list[int] = field(default_factory=list)
    text: str | None = None  # set when a stop string cut the text
    started_at: float = 0.0
    first_token_at: float = 0.0
    prefill_s: float = 0.0  # this row's share of the prefill forward pass it was in
    prompt_kv: KVSegment | None = None
    adapter: str | None = None  # the name of the row's adapter version inside the model (None: base)
    stream: TextStream | None = None  # with `on_text`: the reply's pieces handed out so far


class BatchDecoder:
    """What the engine needs to know about one model: its weights, tokenizer and special tokens.

    `busy_s` adds up the seconds spent inside `DecodeBatch.step` (prefill, decode, cache bookkeeping) for
    this model, so callers can tell engine time from everything else.
    """

    def __init__(self, model, tokenizer, eos_ids: set[int], pad_id: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.mergeable = can_merge(model.config)  # False for sliding-window models: no joining mid-flight
        self.context_length: int | None = getattr(model.config, "max_position_embeddings", None)
        self.layers = model.config.num_hidden_layers
        self.layer_masks = use_layer_masks(model)  # False: an attention kernel without a dense mask
        self.eos_index = torch.tensor(sorted(eos_ids), dtype=torch.long)
        self.busy_s = 0.0

    def text(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def stop_hit(self, row: _Row) -> bool:
        """Check the tail of the generated text for a stop string; cut the text there if found."""
        stops = row.request.stop
        if not stops:
            return False
        window = max(len(s.encode()) for s in stops) + 2  # a stop string of b bytes spans at most b tokens
        tail = self.tokenizer.decode(row.generated[-window:], skip_special_tokens=True)
        if not any(s in tail for s in stops):
            return False
        text = self.text(row.generated)
        cuts = [text.find(s) for s in stops if s in text]
        if not cuts:
            return False
        row.text = text[: min(cuts)]
        return True

    def forward(self, ids, mask, positions, cache, latent=None, reads=None, adapters=None) -> torch.Tensor:
        """One forward pass; returns the last position's logits (B, V). `latent` (B, W) and `reads` (B, L): the
        columns only some layers read, and which layers of each row read them; `adapters`: B adapter names."""
        hidden = self.hidden(latent, reads) if latent is not None else {}
        selection = adapters_of(self.model).selecting(adapters) if adapters else contextlib.nullcontext()
        with selection:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **cache_argument(self.model, cache),
                logits_to_keep=1,
                **({"hidden": hidden} if hidden else {}),
            )
        return out.logits[:, -1, :]

    def hidden(self, latent: torch.Tensor, reads: torch.Tensor) -> dict[int, torch.Tensor]:
        """{layer: (B, W) columns it must skip} for the layers that skip any."""
        if not bool(latent.any()):
            return {}
        if not self.layer_masks:
            raise NotImplementedError(
                f"{self.model.config._attn_implementation} attention takes no dense mask, so some layers cannot skip "
                "latent columns; load the model with attn_implementation='sdpa' or 'eager'"
            )
        skip = latent[:, None, :] & ~reads[:, :, None]  # (B, L, W)
        return {layer: skip[:, layer] for layer in range(self.layers) if bool(skip[:, layer].any())}

    def latent_of(self, prefix, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """One row's (1, width) latent columns and (1, L) layers that read them, from its prefix's `latent`."""
        span: LatentSpan | None = getattr(prefix, "latent", None)
        latent = torch.zeros((1, width), dtype=torch.bool, device=device)
        reads = torch.ones((1, self.layers), dtype=torch.bool, device=device)
        if span is not None:
            latent[0, span.start : span.end] = True
            reads[0] = False
            reads[0, sorted(span.layers)] = True
        return latent, reads


@dataclass
class _Joined:
    """Rows admitted in one step that go on to decode: their stacked cache and per-row state."""

    cache: object
    mask: torch.Tensor  # (B, W)
    logits: torch.Tensor  # (B, V)
    positions: torch.Tensor  # (B, 1)
    latent: torch.Tensor  # (B, W) bool: columns only some layers read
    reads: torch.Tensor  # (B, L) bool: the layers of each row that read them
    rows: list[_Row]


class DecodeBatch:
    """A running batch over one model. `submit` rows at any time; `step` until `has_work` is False.

    Args:
        decoder: the model's `BatchDecoder`.
        max_rows: most rows decoding at once; later submissions wait for a free slot.
        seed: seeds sampling; greedy rows ignore it.
    """

    def __init__(self, decoder: BatchDecoder, max_rows: int = 32, seed: int | None = None) -> None:
        self.decoder = decoder
        self.max_rows = max_rows
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.waiting: deque[_Row] = deque()
        self.rows: list[_Row] = []  # batch order
        self.cache = None
        self.mask = self.logits = self.positions = self.temperatures = self.latent = self.reads = None

    @property
    def has_work(self) -> bool:
        return bool(self.rows or self.waiting)

    def submit(self, request: GenerationRequest, tag: Hashable) -> None:
        prompt = len(request.prompt_ids)
        limit = self.decoder.context_length
        check_context(prompt - 1 if request.prefill_only else prompt, limit)  # a prefill-only row may fill it
        row = _Row(request, tag, stream=TextStream(request.on_text, request.stop) if request.on_text else None)
        if request.adapter is not None:  # a bad adapter fails here; the row keeps this version to its end
            (row.adapter,) = adapters_of(self.decoder.model).acquire([request.adapter])
        self.waiting.append(row)

    def _release(self, row: _Row) -> None:
        if row.adapter is not None:  # a superseded adapter version goes once its last row has left
            adapters_of(self.decoder.model).release(row.adapter)

    def _prefill_on_prefix(self, row: _Row, device):
        """One row whose prompt starts with a prebuilt cache: prefill only the rest, at its true positions.

        The prefix's cache adopts its buffers, so the rest is written into them in place."""
        prefix, prompt = row.request.prefix, row.request.prompt_ids
        cache = prefix.cache(self.decoder.model.config)
        ids = torch.tensor([prompt[prefix.length :]], device=device)
        mask = torch.ones((1, len(prompt)), dtype=torch.long, device=device)
        mask[0, dropped_columns(prefix)] = 0
        position_ids = torch.arange(prefix.length, len(prompt), device=device)[None]
        latent, reads = self.decoder.latent_of(prefix, len(prompt), device)
        logits = self.decoder.forward(ids, mask, position_ids, cache, latent, reads, names_per_row([row.adapter]))
        return cache, mask, logits, position_ids[:, -1:] + 1, latent, reads

    def _prefill_on_prefixes(self, rows: list[_Row], device):
        """Rows whose prompts start with prebuilt caches, prefilled in one forward pass: their prefixes stacked
        left-padded to one width, their remaining tokens left-padded after them (the gap is masked, positions
        are each row's own), so a row reads exactly what it would alone."""
        config = self.decoder.model.config
        prefixes = [row.request.prefix for row in rows]
        rests = [row.request.prompt_ids[prefix.length :] for row, prefix in zip(rows, prefixes, strict=True)]
        front = max(prefix.length for prefix in prefixes)
        cache = stack_left_padded([prefix.cache(config) for prefix in prefixes], front, config)
        ids, rest_mask = left_pad(rests, self.decoder.pad_id, device)
        width = front + ids.shape[1]
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        latent = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
        reads = torch.ones((len(rows), self.decoder.layers), dtype=torch.bool, device=device)
        position_ids = torch.zeros(ids.shape, dtype=torch.long, device=device)
        for b, (prefix, rest) in enumerate(zip(prefixes, rests, strict=True)):
            mask[b, front - prefix.length : front] = 1
            mask[b, [front - prefix.length + p for p in dropped_columns(prefix)]] = 0
            row_latent, row_reads = self.decoder.latent_of(prefix, prefix.length, device)
            latent[b, front - prefix.length : front], reads[b] = row_latent[0], row_reads[0]
            position_ids[b, ids.shape[1] - len(rest) :] = torch.arange(prefix.length, prefix.length + len(rest))
        mask[:, front:] = rest_mask
        adapters = names_per_row([r.adapter for r in rows])
        logits = self.decoder.forward(ids, mask, position_ids, cache, latent, reads, adapters)
        return cache, mask, logits, position_ids[:, -1:] + 1, latent, reads

    def _keep_prompt(self, row: _Row, cache, batch_row: int, start: int, end: int) -> None:
        """A row's prompt cache, read right after its prefill: for prefill-only rows, which leave now, and on
        models whose caches keep only a window (a decoding row's prompt is read when it finishes: `_prompt_kv`,
        so the copy is not part of its time to first token)."""
        wanted = row.request.keep_kv and row.request.keep_prompt_kv
        if wanted and (row.request.prefill_only or not self.decoder.mergeable):
            columns = read_columns(cache, batch_row, start, end)
            row.prompt_kv = KVSegment(*columns, 0, tuple(row.request.prompt_ids))

    def _prefilled(self, row: _Row, now: float) -> tuple[Hashable, Generation]:
        """A prefill-only row's result: its cache (if kept), no tokens."""
        self._release(row)
        seconds = now - row.started_at
        prompt = len(row.request.prompt_ids)
        generation = Generation("", [], prompt, "prefill", seconds, seconds, row.started_at, row.prompt_kv)
        generation.prefill_s = row.prefill_s
        return row.tag, generation

    def _prefill(self, rows: list[_Row]) -> tuple[_Joined | None, list[tuple[Hashable, Generation]]]:
        """Prefill newly admitted rows bucket by bucket (rows with a prefix cache one by one, only their remaining
        tokens). Returns the rows that go on to decode, stacked, and the results of prefill-only rows, which
        leave at once (their caches never join the running batch)."""
        lengths = [len(r.request.prompt_ids) for r in rows]
        plain = [i for i, r in enumerate(rows) if r.request.prefix is None]
        if not self.decoder.mergeable:
            buckets = [plain]
        else:
            buckets = [[plain[i] for i in b] for b in length_buckets([lengths[i] for i in plain])]
        device, config = self.decoder.model.device, self.decoder.model.config
        parts: list[tuple] = []  # (cache, mask, logits, next positions, latent, reads, rows) of rows decoding on
        finished: list[tuple[Hashable, Generation]] = []
        for bucket in (b for b in buckets if b):
            ids, mask = left_pad([rows[i].request.prompt_ids for i in bucket], self.decoder.pad_id, device)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            cache, adapters = new_cache(config), names_per_row([rows[i].adapter for i in bucket])
            began = time.perf_counter()
            logits = self.decoder.forward(ids, mask, position_ids, cache, None, None, adapters)
            now = time.perf_counter()
            tokens = sum(lengths[i] for i in bucket)
            going = []
            for b, i in enumerate(bucket):
                rows[i].prefill_s = (now - began) * lengths[i] / tokens
                self._keep_prompt(rows[i], cache, b, mask.shape[1] - lengths[i], mask.shape[1])
                if rows[i].request.prefill_only:
                    finished.append(self._prefilled(rows[i], now))
                else:
                    going.append(b)
            if len(going) < len(bucket) and going:
                index = torch.tensor(going, device=device)
                select_rows(cache, index)
                mask, logits, position_ids = mask[index], logits[index], position_ids[index]
            if going:
                latent = torch.zeros(mask.shape, dtype=torch.bool, device=device)
                reads = torch.ones((len(going), self.decoder.layers), dtype=torch.bool, device=device)
                parts.append(
                    (cache, mask, logits, position_ids[:, -1:] + 1, latent, reads, [rows[bucket[b]] for b in going])
                )
        on_prefix = [row for row in rows if row.request.prefix is not None]
        # rows that keep their prompt's cache read it as one run of columns: those prefill alone, with no gap
        alone = [row for row in on_prefix if row.request.keep_kv and row.request.keep_prompt_kv]
        together = [row for row in on_prefix if row not in alone]
        if len(together) > 1 and self.decoder.mergeable:
            began = time.perf_counter()
            cache, mask, logits, positions, latent, reads = self._prefill_on_prefixes(together, device)
            now = time.perf_counter()
            rests = [len(r.request.prompt_ids) - r.request.prefix.length for r in together]
            going = []
            for b, row in enumerate(together):
                row.prefill_s = (now - began) * rests[b] / sum(rests)
                if row.request.prefill_only:
                    finished.append(self._prefilled(row, now))
                else:
                    going.append(b)
            if going:
                index = torch.tensor(going, device=device)
                if len(going) < len(together):
                    select_rows(cache, index)
                parts.append(
                    (
                        cache,
                        mask[index],
                        logits[index],
                        positions[index],
                        latent[index],
                        reads[index],
                        [together[b] for b in going],
                    )
                )
        else:
            alone = on_prefix
        for row in alone:
            began = time.perf_counter()
            cache, mask, row_logits, row_positions, latent, reads = self._prefill_on_prefix(row, device)
            row.prefill_s = time.perf_counter() - began
            self._keep_prompt(row, cache, 0, 0, mask.shape[1])
            if row.request.prefill_only:
                finished.append(self._prefilled(row, time.perf_counter()))
            else:
                parts.append((cache, mask, row_logits, row_positions, latent, reads, [row]))
        if not parts:
            return None, finished
        width = max(mask.shape[1] for _, mask, *_ in parts)
        return (
            _Joined(
                stack_left_padded([p[0] for p in parts], width, config),
                torch.cat([F.pad(p[1], (width - p[1].shape[1], 0)) for p in parts]),
                torch.cat([p[2] for p in parts]),
                torch.cat([p[3] for p in parts]),
                torch.cat([F.pad(p[4], (width - p[4].shape[1], 0)) for p in parts]),
                torch.cat([p[5] for p in parts]),
                [row for p in parts for row in p[6]],
            ),
            finished,
        )

    def _admit(self) -> list[tuple[Hashable, Generation]]:
        """Prefill waiting rows into free slots; returns the results of prefill-only rows among them."""
        if not self.waiting or (self.rows and not self.decoder.mergeable):
            return []
        count = min(len(self.waiting), self.max_rows - len(self.rows))
        if count <= 0:
            return []
        joining = [self.waiting.popleft() for _ in range(count)]
        now = time.perf_counter()
        for row in joining:
            row.started_at = now
        joined, finished = self._prefill(joining)
        if joined is None:
            return finished
        cache, mask, logits, positions = joined.cache, joined.mask, joined.logits, joined.positions
        latent, reads = joined.latent, joined.reads
        temperatures = torch.tensor([r.request.temperature for r in joined.rows], device=logits.device)
        if self.rows:  # join the running batch: pad both sides to a common width
            width = max(self.mask.shape[1], mask.shape[1])
            cache = stack_left_padded([self.cache, cache], width, self.decoder.model.config)
            mask, latent = (
                torch.cat([F.pad(ours, (width - ours.shape[1], 0)), F.pad(new, (width - new.shape[1], 0))])
                for ours, new in ((self.mask, mask), (self.latent, latent))
            )
            logits = torch.cat([self.logits, logits])
            positions = torch.cat([self.positions, positions])
            temperatures = torch.cat([self.temperatures, temperatures])
            reads = torch.cat([self.reads, reads])
        self.cache, self.mask, self.logits, self.positions = cache, mask, logits, positions
        self.temperatures, self.latent, self.reads = temperatures, latent, reads
        self.rows = self.rows + joined.rows
        return finished

    def _finished(self, row: _Row, token: int) -> str | None:
        row.generated.append(token)
        if token in self.decoder.eos_ids:
            return "eos"
        if self.decoder.stop_hit(row):
            return "stop"
        if len(row.generated) >= row.request.max_new_tokens:
            return "length"
        limit = self.decoder.context_length
        if limit is not None and len(row.request.prompt_ids) + len(row.generated) >= limit:
            return "length"  # the next token would have no position
        return None

    def _prompt_kv(self, index: int, row: _Row) -> KVSegment | None:
        """The row's prompt cache at its end: the columns before its fed-back tokens (a row's real tokens end at
        the right edge of the cache, and padding is trimmed from the left only)."""
        if row.prompt_kv is not None or not (row.request.keep_kv and row.request.keep_prompt_kv):
            return row.prompt_kv
        end = self.mask.shape[1] - (len(row.generated) - 1)
        prompt = row.request.prompt_ids
        return KVSegment(*read_columns(self.cache, index, end - len(prompt), end), 0, tuple(prompt))

    def _reply_kv(self, index: int, row: _Row) -> KVSegment:
        """The cache of the row's generated tokens that were fed back (all but the last): the row's newest
        columns, since every row's real tokens end at the right edge of the cache."""
        fed = row.generated[:-1]
        width = self.mask.shape[1]
        start = len(row.request.prompt_ids)
        return KVSegment(*read_columns(self.cache, index, width - len(fed), width), start, tuple(fed))

    def _retire(self, keep: list[int]) -> None:
        """Keep only batch rows `keep`, dropping their cache rows and padding columns nobody needs."""
        index = torch.tensor(keep, device=self.mask.device)
        select_rows(self.cache, index)
        self.mask, self.positions = self.mask[index], self.positions[index]
        self.temperatures = self.temperatures[index]
        self.latent, self.reads = self.latent[index], self.reads[index]
        self.rows = [self.rows[i] for i in keep]
        unused = int(self.mask.argmax(dim=1).min())  # leading columns that are padding in every row
        if unused > 0 and self.decoder.mergeable:  # sliding-window layers track positions themselves
            trim_left(self.cache, unused)
            self.mask, self.latent = self.mask[:, unused:], self.latent[:, unused:]

    def _suppress_eos(self) -> None:
        """Rows below their `min_new_tokens` may not end: their end-of-sequence logits go to -inf."""
        early = [i for i, row in enumerate(self.rows) if len(row.generated) < row.request.min_new_tokens]
        if early:
            rows = torch.tensor(early, device=self.logits.device)[:, None]
            self.logits[rows, self.decoder.eos_index.to(self.logits.device)[None, :]] = float("-inf")

    @torch.inference_mode()
    def step(self) -> list[tuple[Hashable, Generation]]:
        """Admit, choose one token per row, retire finished rows, run one decode forward pass."""
        begin = time.perf_counter()
        done = self._admit()
        if not self.rows:
            self.decoder.busy_s += time.perf_counter() - begin
            return done
        self._suppress_eos()
        tokens = choose_tokens(self.logits, self.temperatures, self.generator)
        now = time.perf_counter()
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(self.rows, tokens.tolist(), strict=True)):
            if not row.generated:
                row.first_token_at = now
            reason = self._finished(row, token)
            if reason is None:
                keep.append(i)
                if row.stream is not None:
                    row.stream.update(self.decoder.text(row.generated))
                continue
            self._release(row)
            text = row.text if row.text is not None else self.decoder.text(row.generated)
            if row.stream is not None:
                row.stream.finish(text)
            generation = Generation(
                text=text,
                token_ids=row.generated,
                prompt_tokens=len(row.request.prompt_ids),
                finish_reason=reason,
                ttft_s=row.first_token_at - row.started_at,
                latency_s=now - row.started_at,
                started_at=row.started_at,
                prompt_kv=self._prompt_kv(i, row),
                reply_kv=self._reply_kv(i, row) if row.request.keep_kv else None,
                prefill_s=row.prefill_s,
            )
            done.append((row.tag, generation))
        if len(keep) < len(self.rows):
            if keep:
                self._retire(keep)
            else:
                self.rows, self.cache = [], None
        if self.rows:
            tokens = tokens[torch.tensor(keep, device=tokens.device)] if len(keep) < len(tokens) else tokens
            self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=-1)
            self.latent = torch.cat([self.latent, self.latent.new_zeros((len(self.rows), 1))], dim=-1)
            adapters = names_per_row([r.adapter for r in self.rows])
            self.logits = self.decoder.forward(
                tokens[:, None], self.mask, self.positions, self.cache, self.latent, self.reads, adapters
            )
            self.positions = self.positions + 1
        self.decoder.busy_s += time.perf_counter() - begin
        return done

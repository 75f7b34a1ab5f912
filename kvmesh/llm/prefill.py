"""Prefill: newly admitted rows read their prompts, one forward pass per part, in one of three ways.

    path              rows                                          one forward pass over
    plain             rows without a prefix, in length buckets      their prompts, left-padded to the longest
    on prefixes       rows whose prompts start with a `PrefixCache`  their prefixes stacked left-padded, then
                                                                    their remaining tokens left-padded after them
    on a prefix       one such row alone                            its remaining tokens, after its prefix

Plain rows are bucketed by length because padding is pure waste in compute-bound prefill
(`kvmesh.llm.layout.length_buckets`). Rows on prefixes go together when there are several on a model that can
stack caches; a row that keeps its prompt's cache goes alone, since that cache is read as one run of columns and
stacking leaves a gap between a prefix and its rest. A row on a prefix writes its rest into the prefix's own
buffers (alone in place; together on a stacked copy, from which a prefill-only row's rest is copied back, since
filling the prefix is all such a row is for: cache assembly's own text).

Each part is a `StackedRows` of every row in it, prefill-only ones included (the running batch lets those go);
each row's `prefill_s` is its share, by the tokens it prefilled, of its part's time, and a row whose prompt cache
must be read now (`keep_prompt`) has it in `prompt_kv`.

Exactness: positions count only real tokens and the mask hides padding and gaps, so a row reads exactly what it
would alone (tests compare batched and solo greedy outputs).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch
from transformers import DynamicCache

from kvmesh.llm.adapters import names_per_row
from kvmesh.llm.cache import new_cache, read_columns, stack_left_padded
from kvmesh.llm.layout import dropped_columns, latent_columns, left_pad, length_buckets
from kvmesh.llm.rows import Row, StackedRows
from kvmesh.llm.runner import ModelRunner
from kvmesh.llm.segment import KVSegment


def prefill_parts(runner: ModelRunner, rows: list[Row]) -> Iterator[StackedRows]:
    """Prefill `rows`, yielding each part as soon as its forward pass is done: plain rows bucket by bucket, then
    rows on prefixes together, then rows on a prefix alone."""
    plain = [row for row in rows if row.request.prefix is None]
    for bucket in _buckets(runner, plain):
        yield prefill_plain(runner, bucket)
    on_prefix = [row for row in rows if row.request.prefix is not None]
    alone = [row for row in on_prefix if _keeps_prompt(row)]
    together = [row for row in on_prefix if not _keeps_prompt(row)]
    if len(together) > 1 and runner.mergeable:
        yield prefill_on_prefixes(runner, together)
    else:
        alone = on_prefix
    for row in alone:
        yield prefill_on_prefix(runner, row)


def _buckets(runner: ModelRunner, rows: list[Row]) -> list[list[Row]]:
    """Plain rows in length buckets; one bucket on a model that cannot stack caches (no joining later)."""
    if not rows:
        return []
    if not runner.mergeable:
        return [rows]
    return [[rows[i] for i in bucket] for bucket in length_buckets([len(row.request.prompt_ids) for row in rows])]


def prefill_plain(runner: ModelRunner, rows: list[Row]) -> StackedRows:
    """Rows without a prefix: their prompts left-padded to the longest, from position 0."""
    began = time.perf_counter()
    device, lengths = runner.model.device, [len(row.request.prompt_ids) for row in rows]
    ids, mask = left_pad([row.request.prompt_ids for row in rows], runner.pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache, adapters = new_cache(runner.model.config), names_per_row([row.adapter for row in rows])
    logits, hidden = runner.forward(ids, mask, positions, cache, None, None, adapters)
    _share_time(rows, lengths, time.perf_counter() - began)
    width = mask.shape[1]
    for b, (row, length) in enumerate(zip(rows, lengths, strict=True)):
        keep_prompt(runner, row, cache, b, width - length, width)
    latent = torch.zeros(mask.shape, dtype=torch.bool, device=device)
    reads = torch.ones((len(rows), runner.layers), dtype=torch.bool, device=device)
    return StackedRows(cache, mask, logits, hidden, positions[:, -1:] + 1, latent, reads, rows)


def prefill_on_prefixes(runner: ModelRunner, rows: list[Row]) -> StackedRows:
    """Rows on prefixes, together: the prefixes stacked left-padded to the longest (`front` columns), each row's
    remaining tokens left-padded after them (the gap masked, positions each row's own). The stacked cache is a
    copy, so a prefill-only row's rest is copied back into its prefix's buffers; no row keeps its prompt's cache
    here (the gap splits it)."""
    began = time.perf_counter()
    config, device = runner.model.config, runner.model.device
    prefixes = [row.request.prefix for row in rows]
    rests = [row.request.prompt_ids[prefix.length :] for row, prefix in zip(rows, prefixes, strict=True)]
    front = max(prefix.length for prefix in prefixes)
    cache = stack_left_padded([prefix.cache(config) for prefix in prefixes], front, config)
    ids, rest_mask = left_pad(rests, runner.pad_id, device)
    width = front + ids.shape[1]
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    latent = torch.zeros((len(rows), width), dtype=torch.bool, device=device)
    reads = torch.ones((len(rows), runner.layers), dtype=torch.bool, device=device)
    positions = torch.zeros(ids.shape, dtype=torch.long, device=device)
    for b, (prefix, rest) in enumerate(zip(prefixes, rests, strict=True)):
        first = front - prefix.length  # the prefix's first column
        mask[b, first:front] = 1
        mask[b, [first + p for p in dropped_columns(prefix)]] = 0
        row_latent, row_reads = latent_columns(prefix, prefix.length, runner.layers, device)
        latent[b, first:front], reads[b] = row_latent[0], row_reads[0]
        positions[b, ids.shape[1] - len(rest) :] = torch.arange(prefix.length, prefix.length + len(rest))
    mask[:, front:] = rest_mask
    adapters = names_per_row([row.adapter for row in rows])
    logits, hidden = runner.forward(ids, mask, positions, cache, latent, reads, adapters)
    for b, (row, prefix, rest) in enumerate(zip(rows, prefixes, rests, strict=True)):
        if row.request.prefill_only:  # its product is its prefix filled in place, and the stack is a copy
            keys, values = read_columns(cache, b, width - len(rest), width)
            end = prefix.length + len(rest)
            prefix.keys[:, :, prefix.length : end], prefix.values[:, :, prefix.length : end] = keys, values
    _share_time(rows, [len(rest) for rest in rests], time.perf_counter() - began)
    return StackedRows(cache, mask, logits, hidden, positions[:, -1:] + 1, latent, reads, rows)


def prefill_on_prefix(runner: ModelRunner, row: Row) -> StackedRows:
    """One row on a prefix, alone: only its remaining tokens, at their true positions. The prefix's cache adopts
    its buffers, so the rest is written into them in place."""
    began = time.perf_counter()
    device = runner.model.device
    prefix, prompt = row.request.prefix, row.request.prompt_ids
    cache = prefix.cache(runner.model.config)
    ids = torch.tensor([prompt[prefix.length :]], device=device)
    mask = torch.ones((1, len(prompt)), dtype=torch.long, device=device)
    mask[0, dropped_columns(prefix)] = 0
    positions = torch.arange(prefix.length, len(prompt), device=device)[None]
    latent, reads = latent_columns(prefix, len(prompt), runner.layers, device)
    logits, hidden = runner.forward(ids, mask, positions, cache, latent, reads, names_per_row([row.adapter]))
    row.prefill_s = time.perf_counter() - began
    keep_prompt(runner, row, cache, 0, 0, len(prompt))
    return StackedRows(cache, mask, logits, hidden, positions[:, -1:] + 1, latent, reads, [row])


def _share_time(rows: Sequence[Row], tokens: Sequence[int], seconds: float) -> None:
    """Each row's share of a forward pass's `seconds`, by the tokens it prefilled in it."""
    total = sum(tokens)
    for row, count in zip(rows, tokens, strict=True):
        row.prefill_s = seconds * count / total


def _keeps_prompt(row: Row) -> bool:
    """Whether the row returns its prompt's cache (`Generation.prompt_kv`)."""
    return row.request.keep_kv and row.request.keep_prompt_kv


def keep_prompt(runner: ModelRunner, row: Row, cache: DynamicCache, batch_row: int, start: int, end: int) -> None:
    """A row's prompt cache, read right after its prefill: for prefill-only rows that leave now, and on models
    whose caches keep only a window (a decoding row's prompt is read when it finishes, so the copy is not part of
    its time to first token)."""
    if _keeps_prompt(row) and (row.leaves_after_prefill or not runner.mergeable):
        columns = read_columns(cache, batch_row, start, end)
        row.prompt_kv = KVSegment(*columns, 0, tuple(row.request.prompt_ids))

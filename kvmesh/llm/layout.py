"""How rows lie in a batch: prefill buckets of similar lengths, left padding, and a prefix's latent columns.

Left padding keeps every row's last token in the last column, so one decode step appends one column for all rows;
the mask hides the padding (and, for a prefix with `LatentSpan.dropped`, the columns token selection dropped).
A prefix's `LatentSpan` becomes the row's latent columns and the layers that read them, which the engine turns
into the columns each layer must skip (`kvmesh.llm.layer_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvmesh.llm.prefix import PrefixCache

MAX_PADDING = 0.10  # a prefill bucket may pad at most this share of its real tokens


def length_buckets(lengths: Sequence[int], max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Group indices so that left-padding each group to its longest member wastes at most `max_padding`."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    buckets: list[list[int]] = []
    total = 0
    for index in order:
        length = lengths[index]
        if buckets and (len(buckets[-1]) + 1) * length - (total + length) <= max_padding * (total + length):
            buckets[-1].append(index)
            total += length
        else:
            buckets.append([index])
            total = length
    return buckets


def left_pad(rows: Sequence[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W) ids and 0/1 mask of `rows` left-padded with `pad_id` to the longest."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


def dropped_columns(prefix: PrefixCache) -> list[int]:
    """Prefix positions that no layer reads (`LatentSpan.dropped`), sorted."""
    return sorted(prefix.latent.dropped) if prefix.latent is not None else []


def latent_columns(prefix: PrefixCache, width: int, layers: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's (1, width) latent columns and (1, layers) layers that read them, from its prefix's `latent`
    (no latent columns, every layer reading, without one)."""
    latent = torch.zeros((1, width), dtype=torch.bool, device=device)
    reads = torch.ones((1, layers), dtype=torch.bool, device=device)
    span = prefix.latent
    if span is not None:
        latent[0, span.start : span.end] = True
        reads[0] = False
        reads[0, sorted(span.layers)] = True
    return latent, reads

"""How rows lie in a batch: prefill buckets of similar lengths, left padding, and prefix columns no layer reads.

Left padding keeps every row's last token in the last column, so one decode step appends one column for all rows;
the mask hides the padding (and, for a prefix with `LatentSpan.dropped`, the columns token selection dropped).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kvmesh.llm.base import LatentSpan

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


def dropped_columns(prefix) -> list[int]:
    """Prefix positions that no layer reads (`LatentSpan.dropped`), sorted."""
    span: LatentSpan | None = getattr(prefix, "latent", None)
    return sorted(span.dropped) if span is not None else []

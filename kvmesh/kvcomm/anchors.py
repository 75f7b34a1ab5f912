"""The anchor pool: what earlier dense prefills taught about how a reused segment differs in a new context.

When a receiver prefills densely, every reused-able segment of its prompt yields an *anchor*: the difference
between the segment's real keys/values in the receiver's context and the donor's keys/values moved to the same
positions (the "offset"). A later receiver of the same placeholder (same receiver, same kind of segment) adds a
weighted average of its anchors' offsets to the moved donor cache instead of prefilling.

    weights = softmax(-distance(descriptor, anchor descriptors) / temperature)
    offset[t] = sum_a weights[a] * anchor_offset[a][t]   (position-aligned; zero past an anchor's end)
    applied in place to the moved donor cache (`apply`); anchors below a negligible weight are skipped

Descriptors are unit vectors (the donor's keys averaged over tokens), so distances lie in [0, 2].

Reuse or prefill (as in KVCOMM): with n anchors, reuse when the entropy of the weights is at most
`gamma * log2(n)` (one anchor clearly closest); otherwise prefill densely and let that call add an anchor. With
no anchors, always prefill. Higher gamma reuses more.

Bounds: at most `max_anchors` per placeholder and `max_tokens` positions per anchor, offsets kept in float16,
and `max_bytes` over the whole pool. Eviction takes the least-used of the five oldest anchors of a placeholder
(the most crowded placeholder when the byte budget is exceeded), so a useful old anchor survives a burst.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

import torch

OLDEST = 5  # eviction looks at this many of a placeholder's oldest anchors


@dataclass(eq=False)  # identity: anchors hold tensors
class Anchor:
    descriptor: torch.Tensor  # (F,) unit vector
    key_offset: torch.Tensor  # (L, H, S_a, D) float16
    value_offset: torch.Tensor  # (L, H, S_a, D) float16
    born: int
    uses: int = 0

    @property
    def nbytes(self) -> int:
        return self.key_offset.nbytes + self.value_offset.nbytes + self.descriptor.nbytes


def describe(keys: torch.Tensor) -> torch.Tensor:
    """A segment's descriptor: its keys (L, H, S, D) averaged over tokens, flattened, unit length. (L*H*D,)"""
    mean = keys.float().mean(dim=2).flatten()
    return mean / mean.norm().clamp_min(1e-12)


class AnchorPool:
    """Anchors per placeholder key, bounded in count, length and bytes."""

    def __init__(
        self,
        max_anchors: int = 20,
        max_tokens: int = 1024,
        max_bytes: int = 512 * 2**20,
        temperature: float = 0.02,
        gamma: float = 0.8,
    ) -> None:
        if max_anchors < 1 or max_tokens < 1 or max_bytes < 1:
            raise ValueError("anchor pool bounds must be positive")
        if not 0 <= gamma <= 1:
            raise ValueError(f"gamma must be within [0, 1], got {gamma}")
        self.max_anchors, self.max_tokens, self.max_bytes = max_anchors, max_tokens, max_bytes
        self.temperature, self.gamma = temperature, gamma
        self.pools: dict[Hashable, list[Anchor]] = {}
        self.nbytes = 0
        self.evicted = 0
        self._clock = 0

    def __len__(self) -> int:
        return sum(len(anchors) for anchors in self.pools.values())

    def add(self, key: Hashable, descriptor: torch.Tensor, key_offset: torch.Tensor, value_offset: torch.Tensor):
        """Store the offsets (L, H, S, D) seen for placeholder `key` (kept: the first `max_tokens` positions)."""
        self._clock += 1
        anchor = Anchor(
            descriptor.detach().float(),
            key_offset[:, :, : self.max_tokens].detach().to(torch.float16).clone(),
            value_offset[:, :, : self.max_tokens].detach().to(torch.float16).clone(),
            born=self._clock,
        )
        pool = self.pools.setdefault(key, [])
        if len(pool) >= self.max_anchors:
            self._evict(key)
        pool.append(anchor)
        self.nbytes += anchor.nbytes
        while self.nbytes > self.max_bytes and len(self) > 1:
            self._evict(max(self.pools, key=lambda k: len(self.pools[k])))

    def _evict(self, key: Hashable) -> None:
        pool = self.pools[key]
        oldest = sorted(pool, key=lambda a: a.born)[:OLDEST]
        victim = min(oldest, key=lambda a: (a.uses, a.born))
        pool.remove(victim)
        self.nbytes -= victim.nbytes
        self.evicted += 1
        if not pool:
            del self.pools[key]

    def weights(self, key: Hashable, descriptor: torch.Tensor) -> torch.Tensor | None:
        """Softmax weights over `key`'s anchors, or None when the entropy test says prefill densely."""
        pool = self.pools.get(key)
        if not pool:
            return None
        distances = torch.stack([(a.descriptor - descriptor).norm() for a in pool])
        weights = torch.softmax(-distances / self.temperature, dim=0)
        entropy = -(weights * weights.clamp_min(1e-12).log2()).sum().item()
        if len(pool) > 1 and entropy > self.gamma * math.log2(len(pool)):
            return None
        return weights

    def apply(self, key: Hashable, weights: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add the weighted, position-aligned offsets of `key`'s anchors to `keys` and `values` (L, H, S, D) in
        place. Layer 0 gets none (it is exact); positions past an anchor's end get none from it."""
        for weight, anchor in zip(weights.tolist(), self.pools[key], strict=True):
            if weight == 0:
                continue
            anchor.uses += 1
            span = min(keys.shape[2], anchor.key_offset.shape[2])
            keys[1:, :, :span].add_(anchor.key_offset[1:, :, :span], alpha=weight)
            values[1:, :, :span].add_(anchor.value_offset[1:, :, :span], alpha=weight)

"""The anchor pool: what earlier dense prefills taught about how a reused segment differs in a new context.

When a receiver prefills densely, every reused-able segment of its prompt yields an *anchor*: the difference
between the segment's real keys/values in the receiver's context and the donor's keys/values moved to the same
positions (the "offset"). A later receiver of the same placeholder (same receiver, same kind of segment) adds a
weighted average of its anchors' offsets to the moved donor cache instead of prefilling.

    weights = softmax(-distance(descriptor, anchor descriptors) / temperature)
    offset[t] = sum_a weights[a] * anchor_offset[a][t]   (position-aligned; zero past an anchor's end)
    applied in place to the moved donor cache (`apply`); anchors below a negligible weight are skipped

Descriptors are unit vectors (the donor's keys averaged over tokens), so distances lie in [0, 2]. With
SmolLM2-135M (`python benchmarks/descriptor_distances.py`): 1K-token synthetic notes lie 0.03-0.05 apart,
HumanEval prompts 0.19-0.23, and texts of different kinds 0.46-0.67. The default temperature (0.1) therefore
averages the anchors of the same kind of text almost uniformly and all but ignores those of other kinds.
Averaging matters. With 5 agents, 128-token replies and 3 anchors per placeholder
(`kvmesh bench kv-reuse --output-tokens 128`, then with `--temperature 0.0001` and `--no-correct`), the first 32
greedy tokens of the calls that reused matched dense in 11/12 calls with the average of the anchors, 8/12 with
the nearest anchor alone, and 0/12 uncorrected.

Reuse or prefill: reuse when the placeholder has at least `min_anchors` anchors and the nearest lies within
`gamma` of the new segment's descriptor; otherwise prefill densely, and that call adds an anchor. Larger gamma
reuses more; `min_anchors` buys the averaging above with a few dense calls per placeholder.
KVCOMM tests the entropy of the weights instead; that refuses exactly the case above, where many anchors are
equally close, and averaging them is what works best.

Bounds: at most `max_anchors` per placeholder and `max_tokens` positions per anchor, offsets kept in float16,
and `max_bytes` over the whole pool. Eviction takes the least-used of the five oldest anchors of a placeholder
(when the byte budget is exceeded: of the most crowded placeholder that keeps `min_anchors` after it), so a
useful old anchor survives a burst and no placeholder is starved back into dense prefill.
"""

from __future__ import annotations

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
        max_bytes: int = 1024 * 2**20,
        temperature: float = 0.1,
        gamma: float = 0.3,
        min_anchors: int = 3,
    ) -> None:
        if max_anchors < 1 or max_tokens < 1 or max_bytes < 1 or not 1 <= min_anchors <= max_anchors:
            raise ValueError("anchor pool bounds must be positive")
        if not 0 <= gamma <= 2 or temperature <= 0:
            raise ValueError(
                f"need 0 <= gamma <= 2 (a descriptor distance) and temperature > 0, got {gamma}, {temperature}"
            )
        self.max_anchors, self.max_tokens, self.max_bytes = max_anchors, max_tokens, max_bytes
        self.temperature, self.gamma, self.min_anchors = temperature, gamma, min_anchors
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
            # the most crowded placeholder, sparing those that would fall below min_anchors while others can give
            spare = [k for k, pool in self.pools.items() if len(pool) > self.min_anchors] or list(self.pools)
            self._evict(max(spare, key=lambda k: len(self.pools[k])))

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
        """Softmax weights over `key`'s anchors, or None (prefill densely) when there are fewer than
        `min_anchors` or none lies within gamma."""
        pool = self.pools.get(key)
        if not pool or len(pool) < self.min_anchors:
            return None
        distances = torch.stack([(a.descriptor - descriptor).norm() for a in pool])
        if distances.min().item() > self.gamma:
            return None
        return torch.softmax(-distances / self.temperature, dim=0)

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

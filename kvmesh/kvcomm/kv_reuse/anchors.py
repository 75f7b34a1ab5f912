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

On disk (`AnchorFolder`): a pool learned in one process can be loaded by the next, so a single `kvmesh run`
reuses what earlier runs learned. A folder holds `manifest.json` (format version; per model: its name, the
cache layout fingerprint and sink tokens its anchors depend on, the bounds it was saved under, its file) and
one tensor file per model (`torch.save`, read back with `weights_only=True`, so loading runs no pickled code).
Every file is written atomically (`kvmesh.runs.write_atomic`: a temporary file in the same folder, moved over
the old one), so a crash leaves either the old file or the new one, never a torn one; the temporary file it may
leave behind (`.NAME.*.tmp`) is never read.
Caveats: a pool is refused (ValueError, saying what differs) when made for another model, layout or chat
template; it is not checked against the team that made it, so a folder should serve one team setup (other
roles or prompts make its offsets less apt: use another folder). Loading applies the current bounds (cutting
longer anchors, evicting beyond `max_anchors` or the byte budget). One process should write a folder at a time:
the last save wins.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import torch

from kvmesh.runs import write_atomic

OLDEST = 5  # eviction looks at this many of a placeholder's oldest anchors
FORMAT = 1  # version of the on-disk layout; folders of another version are refused
MANIFEST = "manifest.json"


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
        self.version = 0  # bumped by every change (anchors added, uses counted): tells a save what is new
        self._clock = 0

    def __len__(self) -> int:
        return sum(len(anchors) for anchors in self.pools.values())

    def add(self, key: Hashable, descriptor: torch.Tensor, key_offset: torch.Tensor, value_offset: torch.Tensor):
        """Store the offsets (L, H, S, D) seen for placeholder `key` (kept: the first `max_tokens` positions)."""
        self._clock += 1
        self.version += 1
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
        self._fit_bytes()

    def _fit_bytes(self) -> None:
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
            self.version += 1
            span = min(keys.shape[2], anchor.key_offset.shape[2])
            keys[1:, :, :span].add_(anchor.key_offset[1:, :, :span], alpha=weight)
            values[1:, :, :span].add_(anchor.value_offset[1:, :, :span], alpha=weight)

    # --- on disk -----------------------------------------------------------------------------------------------

    def state(self) -> dict:
        """Everything `restore` needs, as tensors and plain values (what `torch.load(weights_only=True)` reads)."""
        fields = ("descriptor", "key_offset", "value_offset", "born", "uses")
        pools = [[key, [{f: getattr(a, f) for f in fields} for a in anchors]] for key, anchors in self.pools.items()]
        return {"clock": self._clock, "pools": pools}

    def restore(self, state: dict, device: torch.device | str | None = None) -> int:
        """Add the anchors of a `state()` (moved to `device`), within this pool's bounds; returns how many it
        holds afterwards."""
        for key, anchors in state["pools"]:
            pool = self.pools.setdefault(key, [])
            for a in anchors:
                anchor = Anchor(
                    a["descriptor"].to(device, torch.float),
                    a["key_offset"][:, :, : self.max_tokens].to(device, torch.float16).contiguous(),
                    a["value_offset"][:, :, : self.max_tokens].to(device, torch.float16).contiguous(),
                    born=int(a["born"]),
                    uses=int(a["uses"]),
                )
                pool.append(anchor)
                self.nbytes += anchor.nbytes
            while len(pool) > self.max_anchors:
                self._evict(key)
        self._fit_bytes()
        self._clock = max(self._clock, int(state["clock"]))
        self.version += 1
        return len(self)


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """What differs between a saved identity and the current one, field by field ("fingerprint.layers 2, now 30")."""
    found = []
    for key, value in now.items():
        old = saved.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            found += _differences(old, value, f"{prefix}{key}.")
        elif old != value:
            found.append(f"{prefix}{key} {old!r}, now {value!r}")
    return found


def _file_name(model: str) -> str:
    """A model's pool file: readable, and unique per model name (the hash tells apart names the slug merges)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-.")[:60]
    return f"anchors-{slug}-{hashlib.sha256(model.encode()).hexdigest()[:8]}.pt"


class AnchorFolder:
    """Anchor pools kept in a folder: one file per model and a manifest naming them (see the module docstring).

    `identity` dicts (JSON values) say what a pool's anchors are valid for; their "model" entry names it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._manifest: dict | None = None

    def _fix(self) -> str:
        return f"pass another anchors_dir (--anchors DIR), or delete {self.path} to start afresh"

    def manifest(self) -> dict:
        """The folder's manifest (an empty one when there is none yet); read once, kept up to date by `save`."""
        if self._manifest is None:
            file = self.path / MANIFEST
            if not file.exists():
                return {"format": FORMAT, "pools": {}}
            try:
                manifest = json.loads(file.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"anchor manifest {file} cannot be read ({error}); {self._fix()}") from error
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                found = manifest.get("format") if isinstance(manifest, dict) else None
                raise ValueError(
                    f"anchor manifest {file} has format {found!r}, this kvmesh reads format {FORMAT}; {self._fix()}"
                )
            self._manifest = manifest
        return self._manifest

    def check_model(self, model: str) -> None:
        """Refuse a folder that holds pools for other models only: it belongs to another team. (`load` does not
        ask: a channel also builds engines for agents whose edges never read its caches.)"""
        pools = self.manifest()["pools"]
        if pools and model not in pools:
            held = ", ".join(repr(name) for name in pools)
            raise ValueError(
                f"anchors in {self.path} were made for {held}, not {model!r}: a model's anchors are meaningless to "
                f"another model; {self._fix()}"
            )

    def load(self, identity: dict, pool: AnchorPool, device: torch.device | str | None = None) -> int:
        """Restore into `pool` the anchors saved for `identity`; returns how many it holds (0: none saved yet).
        Raises ValueError, saying what differs, for anchors made for another model, layout or chat template."""
        model = identity["model"]
        entry = self.manifest()["pools"].get(model)
        if entry is None:
            return 0
        differs = _differences(entry, identity)
        if differs:
            raise ValueError(f"anchors in {self.path} for {model!r} were made with {'; '.join(differs)}; {self._fix()}")
        file = self.path / entry["file"]
        try:
            state = torch.load(file, map_location=device, weights_only=True)
        except Exception as error:  # torch raises many kinds for a missing, cut or foreign file
            raise ValueError(f"cannot read anchors {file} ({type(error).__name__}: {error}); {self._fix()}") from error
        if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("model") != model:
            raise ValueError(f"anchors {file} are not {model!r}'s (format {FORMAT}); {self._fix()}")
        return pool.restore(state, device)

    def save(self, identity: dict, pool: AnchorPool, settings: dict | None = None) -> Path:
        """Write `pool` as `identity`'s anchors (its file, then the manifest, which also records `settings`: the
        bounds it was learned under); returns the file written."""
        self.path.mkdir(parents=True, exist_ok=True)
        model = identity["model"]
        file = self.path / _file_name(model)
        state = {"format": FORMAT, "model": model, **pool.state()}
        write_atomic(file, lambda out: torch.save(state, out))
        manifest = self.manifest()
        saved = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        entry = {**identity, "file": file.name, "anchors": len(pool), "settings": settings or {}, "saved": saved}
        manifest = {**manifest, "format": FORMAT, "pools": {**manifest["pools"], model: entry}}
        text = json.dumps(manifest, indent=2).encode()
        write_atomic(self.path / MANIFEST, lambda out: out.write(text))
        self._manifest = manifest
        return file

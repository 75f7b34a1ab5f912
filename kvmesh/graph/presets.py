"""Named topologies, the fixed baselines every designer is compared against.

Agents are ordered; spatial edges always point from an earlier to a later agent in some order, so every preset
is a DAG by construction. Names follow what users of GPTSwarm/AgentPrune know (FullConnected = `complete`).

| preset   | spatial edges (n agents a0..a(n-1))                               | temporal edges |
|----------|-------------------------------------------------------------------|----------------|
| chain    | a_i -> a_(i+1)                                                    | `temporal=`    |
| star     | hub -> every other (`direction="out"`) or every other -> hub ("in") | `temporal=`  |
| tree     | parent -> children, `branching` children per node, rooted at a0  | `temporal=`    |
| complete | a_i -> a_j for all i < j                                          | `temporal=`    |
| layered  | complete bipartite between consecutive layers (`layers` of them)  | `temporal=`    |
| random   | a_i -> a_j for i < j in a seeded random order, with prob. `p`     | `temporal=`    |
| debate   | none                                                              | all -> all, self included |

`temporal` is one of `none`, `self` (each agent reads its own last output) or `complete` (each agent reads the
whole previous round). Left unset, it follows `rounds`: `none` for one round, `complete` for more, as in
GPTSwarm and AgentPrune, whose multi-round graphs pass every agent's last reply forward. A multi-round team
without temporal edges would repeat its first round word for word, so `Team` refuses one.
"""

from __future__ import annotations

import inspect
import random as _random
from collections.abc import Callable, Sequence
from itertools import pairwise

from kvmesh.graph.edge import SPATIAL, TEMPORAL, Edge, GraphError
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL

EdgeList = list[tuple[str, str]]
TEMPORAL_MODES = ("none", "self", "complete")


def _chain(names: Sequence[str]) -> EdgeList:
    return list(pairwise(names))


def _star(names: Sequence[str], hub: str | int = 0, direction: str = "out") -> EdgeList:
    if isinstance(hub, int) and not -len(names) <= hub < len(names):
        raise GraphError(f"star hub index {hub} is out of range for {len(names)} agents")
    center = names[hub] if isinstance(hub, int) else hub
    if center not in names:
        raise GraphError(f"star hub {center!r} is not one of the agents {list(names)}")
    if direction not in ("out", "in"):
        raise GraphError(f"star direction must be 'out' (hub speaks first) or 'in' (hub listens), got {direction!r}")
    others = [n for n in names if n != center]
    return [(center, n) for n in others] if direction == "out" else [(n, center) for n in others]


def _tree(names: Sequence[str], branching: int = 2) -> EdgeList:
    if branching < 1:
        raise GraphError(f"tree branching must be >= 1, got {branching}")
    return [(names[(i - 1) // branching], names[i]) for i in range(1, len(names))]


def _complete(names: Sequence[str]) -> EdgeList:
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]


def _layered(names: Sequence[str], layers: int | Sequence[int] = 2) -> EdgeList:
    if isinstance(layers, int):
        if not 1 <= layers <= len(names):
            raise GraphError(f"layered needs between 1 and {len(names)} layers, got {layers}")
        base, extra = divmod(len(names), layers)
        sizes = [base + (1 if i < extra else 0) for i in range(layers)]
    else:
        sizes = list(layers)
        if sum(sizes) != len(names) or min(sizes, default=0) < 1:
            raise GraphError(f"layer sizes {sizes} must be positive and add up to {len(names)} agents")
    groups, start = [], 0
    for size in sizes:
        groups.append(list(names[start : start + size]))
        start += size
    return [(u, v) for upper, lower in pairwise(groups) for u in upper for v in lower]


def _random_dag(names: Sequence[str], p: float = 0.5, seed: int = 0) -> EdgeList:
    if not 0.0 <= p <= 1.0:
        raise GraphError(f"random edge probability p must be in [0, 1], got {p}")
    rng = _random.Random(seed)
    order = list(names)
    rng.shuffle(order)
    return [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order)) if rng.random() < p]


_SPATIAL_BUILDERS: dict[str, Callable[..., EdgeList]] = {
    "chain": _chain,
    "star": _star,
    "tree": _tree,
    "complete": _complete,
    "layered": _layered,
    "random": _random_dag,
}
PRESETS = (*_SPATIAL_BUILDERS, "debate")


def default_temporal(rounds: int) -> str:
    """The temporal edges a preset gets when none are asked for: each round reads the whole previous one."""
    return "complete" if rounds > 1 else "none"


def _temporal_edges(names: Sequence[str], mode: str) -> EdgeList:
    if mode == "none":
        return []
    if mode == "self":
        return [(n, n) for n in names]
    if mode == "complete":
        return [(u, v) for u in names for v in names]
    raise GraphError(f"temporal must be one of {', '.join(TEMPORAL_MODES)}, got {mode!r}")


def preset_options(name: str) -> list[str]:
    """The options preset `name` takes besides `temporal`, `channel` and `rounds`."""
    if name == "debate":
        return []
    return list(inspect.signature(_SPATIAL_BUILDERS[name]).parameters)[1:]


def build_preset(
    name: str,
    names: Sequence[str],
    temporal: str | None = None,
    channel: str = DEFAULT_CHANNEL,
    rounds: int = 1,
    **options,
) -> list[Edge]:
    """Edges of preset `name` over agent `names`. Options are the preset's own (hub, branching, layers, p, seed);
    `temporal` None means `default_temporal(rounds)` (debate: always `complete`)."""
    if name not in PRESETS:
        raise GraphError(f"unknown topology {name!r}; presets: {', '.join(PRESETS)}")
    unknown = sorted(set(options) - set(preset_options(name)))
    if unknown:
        valid = ", ".join(preset_options(name)) or "none"
        raise GraphError(f"topology {name!r} has no option {', '.join(map(repr, unknown))}; its options: {valid}")
    if name == "debate":
        spatial: EdgeList = []
        temporal = temporal or "complete"
    else:
        spatial = _SPATIAL_BUILDERS[name](names, **options)
    edges = [Edge(u, v, SPATIAL, channel) for u, v in spatial]
    edges += [Edge(u, v, TEMPORAL, channel) for u, v in _temporal_edges(names, temporal or default_temporal(rounds))]
    return edges

"""Edges of a communication graph: who passes a message to whom, when, and over which channel.

Kinds: `spatial` edges pass a message within a round, `temporal` ones from round r to round r + 1. The
decision step reads every agent over implicit edges of kind `decision`, which no `CommGraph` stores (usage
tables and pictures name them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from kvmesh.kvcomm.channel import DEFAULT_CHANNEL, ChannelNotAvailableError, base_channel, channel_names

SPATIAL, TEMPORAL, DECISION = "spatial", "temporal", "decision"
EDGE_KINDS = (SPATIAL, TEMPORAL)


class GraphError(ValueError):
    """An invalid communication graph; the message names the offending agents or edges."""


class ChannelNameError(GraphError, ChannelNotAvailableError):
    """An edge names a channel that does not exist: a bad graph, and the one error for unknown channels."""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str = SPATIAL
    channel: str = DEFAULT_CHANNEL
    weight: float | None = None

    def to_dict(self) -> dict:
        data = {"source": self.source, "target": self.target, "kind": self.kind, "channel": self.channel}
        if self.weight is not None:
            data["weight"] = self.weight
        return data

    @property
    def key(self) -> str:
        return edge_key(self.source, self.target, self.kind)


def edge_key(source: str, target: str, kind: str) -> str:
    """Stable key for an edge in usage tables: `source->target` plus its kind when not spatial (agent names are
    checked by `check_agent_name`, so two edges never share a key)."""
    return f"{source}->{target}" if kind == SPATIAL else f"{source}->{target} ({kind})"


def check_agent_name(name: object) -> str:
    """`name` if it can name an agent: a non-empty string without surrounding spaces, without the `->` of edge
    keys and not ending like a kind suffix (agents `a->b` and `c` would key edges a->b->c and a->(b->c) alike)."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise GraphError(f"agent name must be a non-empty string without surrounding spaces, got {name!r}")
    if "->" in name:
        raise GraphError(f"agent name {name!r} contains '->', which edge keys use between two agents; rename it")
    suffix = next((kind for kind in (SPATIAL, TEMPORAL, DECISION) if name.endswith(f" ({kind})")), None)
    if suffix:
        raise GraphError(f"agent name {name!r} ends like the '({suffix})' of edge keys; rename it")
    return name


def coerce_edge(edge: Edge | dict | Sequence) -> Edge:
    """An `Edge` from an Edge, a dict of its fields, or a (source, target[, kind, channel, weight]) tuple."""
    if isinstance(edge, Edge):
        found = edge
    elif isinstance(edge, dict):
        fields = ("source", "target", "kind", "channel", "weight")
        unknown = set(edge) - set(fields)
        if unknown or "source" not in edge or "target" not in edge:
            raise GraphError(
                f"edge {edge} needs 'source' and 'target' and may have {fields[2:]}; unknown: {sorted(unknown)}"
            )
        found = Edge(**edge)
    elif isinstance(edge, list | tuple) and 2 <= len(edge) <= 5:
        found = Edge(*edge)
    else:
        raise GraphError(
            f"an edge is an Edge, a dict or a (source, target[, kind, channel, weight]) tuple, got {edge!r}"
        )
    if found.kind not in EDGE_KINDS:
        raise GraphError(f"edge kind must be one of {EDGE_KINDS}, got {found.kind!r}")
    if base_channel(found.channel) not in channel_names():  # a variant's label is checked by the team
        raise ChannelNameError(
            f"edge channel must be one of {channel_names()} or a variant of one (NAME@LABEL, LABEL as the channel's "
            f"`variant` reads it), got {found.channel!r}"
        )
    return found


class GraphView(Protocol):
    """What pictures read of a graph: its agents in order, its edges, and its levels."""

    agents: list[str]

    def edges(self, kind: str | None = None) -> list[Edge]: ...

    def levels(self) -> list[list[str]]: ...

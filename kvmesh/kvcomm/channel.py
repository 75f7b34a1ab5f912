"""Channels: how a message travels on an edge. The `Channel` protocol, and the registry that names channels.

A channel is a property of an edge (`Edge.channel`) and of the decision maker's reading (`Decision.channel`).
The runtime never names one: it asks the team's channel objects, through these hooks, in this order:

    check(sender, receiver, where)      when the team is built: can this channel join these two agents?
    prepare(model)                      before the first call: set up per-model state, or refuse the model
    layout(model, glue, content, ...)   planning a receiver's turn: the prompt pieces that carry one message
    place(model, receiver, pieces)      before its row runs: a preparation that builds the turn's cache from
                                        the cached pieces (yielding the prefill-only rows it needs), or None:
                                        prefill the whole prompt
    keeps(turn)                         which caches the turn's row must keep (its prompt's, its reply's)
    learn(turn, generation)             after its row: store what later turns read, learn from the turn
    stats()                             what the channel did, for run summaries
    kv_bytes(model, pieces)             optional: bytes of KV cache one message's pieces move into a receiver
                                        (default: all of their source caches)
    reads_reply                         optional attribute (default True): False for a channel whose receivers read
                                        the sender's prompt cache, not its reply; a sender read only over such
                                        channels prefills and generates nothing
    save()                              optional, called by whoever runs the team after a run
                                        (`save_channels`): keep what the channel learned on disk
                                        (kv-reuse: its anchors, when `anchors_dir` is set)

Caches that later turns of a task read live in the task's store (`TurnView.store`), keyed by `task_key(model)`
and `reply_key(agent, round)`; the scheduler drops the store when the task finishes.

The registry maps names to implementations lazily (a channel's module is imported when a team first uses it);
`register_channel` adds one. Names that are known but cannot run (none today) and unknown names
raise one error type, `ChannelNotAvailableError`, wherever they appear: an edge, the decision, a config.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kvmesh.kvcomm.assembly import Piece, Preparation
    from kvmesh.llm.base import Generation, LanguageModel
    from kvmesh.llm.segment import KVSegment

TASK = "task"  # the store key of the task's cache (its context and question, as the first turn encoded them)


def task_key(model: LanguageModel) -> tuple:
    """The store key of the task's cache made by `model` (a cache is meaningful only to the model that made it)."""
    return (TASK, model.spec)


def reply_key(agent: str, round_: int | str, channel: str | None = None) -> tuple:
    """The store key of the cache an agent's message carries in a round: its reply's (kv-reuse), or what
    another `channel` keeps of the turn under its own name (kv-select: the turn's prompt)."""
    return ("reply", agent, round_) if channel is None else ("reply", agent, round_, channel)


class ChannelNotAvailableError(ValueError, NotImplementedError):
    """A channel that is unknown, not available yet, or unable to join what it was asked to; the message says
    which channels there are and how to fix it."""


@dataclass(frozen=True)
class Cached:
    """A cache in a task's store, and the channel that made it."""

    channel: str
    segment: KVSegment


@dataclass(frozen=True)
class Keep:
    """Which caches a turn's row must keep: its prompt's and its reply's."""

    prompt: bool = False
    reply: bool = False


@dataclass
class TurnView:
    """What a channel sees of one turn.

    Args:
        receiver: (agent, round); anchor pools and reply caches are kept per receiver.
        model: the agent's model.
        pieces: the turn's prompt pieces (`kvmesh.kvcomm.assembly.Piece`).
        task_span: where the task's tokens lie in the prompt, [start, end).
        assembled: whether the turn's cache was placed from caches (else it prefills its whole prompt).
        read_over: the channels over which later turns read this turn's reply.
        store: the task's caches, read by its later turns (see `task_key`, `reply_key`).
    """

    receiver: tuple[str, int | str]
    model: LanguageModel
    pieces: Sequence[Piece]
    task_span: tuple[int, int]
    assembled: bool
    read_over: frozenset[str]
    store: dict[Hashable, Cached] = field(default_factory=dict)


class Endpoint(Protocol):
    """One end of an edge, as `check` sees it (an agent)."""

    name: str
    model: object  # a LanguageModel, or the spec it loads from
    model_spec: str


class Channel(Protocol):
    """What the runtime asks of a channel; see the module docstring for when each hook runs."""

    name: str

    def check(self, sender: Endpoint, receiver: Endpoint, where: str) -> None:
        """Refuse (`ChannelNotAvailableError`) an edge whose ends this channel cannot join; loads no model."""

    def prepare(self, model: LanguageModel) -> None:
        """Set up per-model state before the first call; raise, saying why, for a model this channel cannot use."""

    def layout(
        self, model: LanguageModel, glue: str, content: str, cached: KVSegment | None, key: Hashable
    ) -> list[Piece]:
        """The pieces of a receiver's prompt that carry one message: `glue` (its header, after a blank line)
        then `content`; `cached` is the sender's reply cache when one was kept, `key` names its kind."""

    def place(self, model: LanguageModel, receiver: Hashable, pieces: Sequence[Piece]) -> Preparation:
        """Build the receiver's cache from the pieces whose cache this channel made: a preparation returning
        the `Assembly`, or None to prefill the whole prompt."""

    def keeps(self, turn: TurnView) -> Keep:
        """Which caches the turn's row must keep for this channel."""

    def learn(self, turn: TurnView, generation: Generation) -> None:
        """After the turn's row finished: store in `turn.store` what later turns read, and learn from it."""

    def stats(self) -> dict:
        """What the channel did (for summaries); {} when there is nothing to say."""


# name -> "module:class" (imported on first use), or None for a channel that is known but not available yet.
_REGISTRY: dict[str, str | Callable[..., Channel] | None] = {
    "text": "kvmesh.kvcomm.text:TextChannel",
    "kv-reuse": "kvmesh.kvcomm.kv_reuse.channel:KVReuseChannel",
    "kv-select": "kvmesh.kvcomm.kv_select.channel:KVSelectChannel",
    "c2c": "kvmesh.kvcomm.c2c.channel:C2CChannel",
}


def channel_names() -> tuple[str, ...]:
    """Every channel name an edge may carry, available or not."""
    return tuple(_REGISTRY)


def available_channels() -> tuple[str, ...]:
    """The channels that can run."""
    return tuple(name for name, target in _REGISTRY.items() if target is not None)


def register_channel(name: str, factory: Callable[..., Channel]) -> None:
    """Make `name` a channel: `factory(settings)` (settings may be None) builds a team's instance of it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a channel name is a non-empty string, got {name!r}")
    _REGISTRY[name] = factory


def check_channel(name: str, where: str) -> None:
    """Raise `ChannelNotAvailableError` unless `name` is a channel that can run; `where` says who names it."""
    if name not in _REGISTRY:
        raise ChannelNotAvailableError(f"{where}: {name!r} is not a channel; channels: {', '.join(_REGISTRY)}")
    if _REGISTRY[name] is None:
        available = ", ".join(available_channels())
        raise ChannelNotAvailableError(
            f"{where} uses channel {name!r}, which is not available yet; available: {available}. "
            "Set channel='text' there."
        )


def _implementation(name: str):
    check_channel(name, "a team")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, cls = target.split(":")
        target = getattr(importlib.import_module(module), cls)
    return target


def channel_settings(name: str, settings=None, label: str | None = None):
    """`settings` for channel `name` as its settings class: an instance, a dict of its fields, or None (defaults).
    `label` names them in errors (default: the channel's name)."""
    settings_class = getattr(_implementation(name), "settings_class", None)
    if settings_class is None:
        if settings:
            raise ValueError(f"channel {name!r} takes no settings, got {settings!r}")
        return None
    if settings is None:
        return settings_class()
    if isinstance(settings, settings_class):
        return settings
    if not isinstance(settings, dict):
        raise TypeError(f"{label or name} settings must be a {settings_class.__name__} or a dict, got {settings!r}")
    unknown = set(settings) - set(settings_class.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {label or name} settings {sorted(unknown)}; see {settings_class.__name__}")
    return settings_class(**settings)


def make_channel(name: str, settings=None) -> Channel:
    """A new instance of channel `name`, with its own state (engines, anchors) and `settings` (see
    `channel_settings`)."""
    return _implementation(name)(channel_settings(name, settings))


_DEFAULTS: dict[str, Channel] = {}


def default_channel(name: str) -> Channel:
    """A shared instance with default settings, for laying out prompts outside a team."""
    if name not in _DEFAULTS:
        _DEFAULTS[name] = make_channel(name)
    return _DEFAULTS[name]


def settings_of(channel: Channel) -> dict | None:
    """A channel's settings as a dict (for specs), or None when it has none."""
    config = getattr(channel, "config", None)
    return None if config is None else {k: getattr(config, k) for k in config.__dataclass_fields__}


def save_channels(channels: Mapping[str, Channel]) -> list:
    """Let each channel that keeps state on disk save it (the optional `save` hook; kv-reuse writes its anchors
    to `anchors_dir`); returns what they wrote. Call it after a run, e.g. `save_channels(team.channels)`."""
    return [written for channel in channels.values() for written in getattr(channel, "save", list)()]


def metadata_key(name: str) -> str:
    """The key under which a message says how a channel served it (`kv-reuse` -> `kv_reuse`)."""
    return name.replace("-", "_")


def reads_caches(pieces: Sequence[Piece]) -> set[str]:
    """The channels whose caches a turn's pieces would read."""
    return {piece.channel for piece in pieces if piece.source is not None and piece.channel}


def kv_bytes_moved(channel: Channel, model: LanguageModel, pieces: Sequence[Piece]) -> int:
    """Bytes of KV cache that `pieces` (one message) move into a receiver's cache over `channel`."""
    own = getattr(channel, "kv_bytes", None)
    if own is not None:
        return own(model, pieces)
    return sum(piece.source.nbytes for piece in pieces if piece.source is not None)

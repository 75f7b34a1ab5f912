"""Channels: how a message travels on an edge. The `Channel` base class, and the registry that names channels.

A channel is a property of an edge (`Edge.channel`) and of the decision maker's reading (`Decision.channel`).
The runtime never names one: it asks the team's channel objects, through these hooks (all declared on `Channel`,
each with the default of a channel that needs nothing), in this order:

    check(sender, receiver, where)      when the team is built: can this channel join these two agents?
    prepare(model)                      before the first call: set up per-model state, or refuse the model
    layout(model, glue, content, ...)   planning a receiver's turn: the prompt pieces that carry one message,
                                        placed where the channel says (in place, or `Piece.front`)
    place(model, receiver, pieces)      before its row runs: a preparation that builds the turn's cache from
                                        the cached pieces (yielding the prefill-only rows it needs), or None:
                                        prefill the whole prompt
    kv_bytes(model, pieces)             bytes of KV cache one message's pieces move into the receiver
    keeps(turn)                         which caches the turn's row must keep (its prompt's, its reply's)
    learn(turn, generation)             after its row: store what later turns read, learn from the turn
    stats()                             what the channel did, for run summaries
    save()                              after a run (`save_channels`): keep what the channel learned on disk
    wants_calibration(), calibrate()    before use, on training tasks (`kvmesh.evals.calibrate` runs them)

and class attributes: `settings_class` (the settings dataclass: spec keys and CLI flags) and `reads_reply`
(False for a channel whose receivers read the sender's prompt cache, not its reply).

Variants: an edge may name `NAME@LABEL` (`kv-select@30`, `kv-select@100+t5`): channel NAME with the settings its
`variant` hook derives from LABEL, as an instance of its own (its own state and statistics, its own name on pieces
and stored caches), so one graph can carry a channel at several settings. A team gives a variant settings of its
own under its full name, or it derives them from the team's settings of NAME. Channels without variants refuse
any LABEL.

`plan_cache` is the runtime's one entry for a turn's cache: which channel places it (a turn reads caches over
one channel at a time) and the bytes each message moves. Caches that later turns of a task read live in the
task's store (`TurnView.store`), keyed by `task_key(model)` and `reply_key(agent, round)`; the scheduler drops
the store when the task finishes.

The registry (a `kvmesh.plugins.Registry`) maps names to implementations lazily (a channel's module is imported
when a team first uses it); `register_channel` adds one, and so does another package's `kvmesh.channels` entry
point. Unknown names raise one error type, `ChannelNotAvailableError`, wherever they
appear: an edge, the decision, a config.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kvmesh.kvcomm.assembly import OWN, Piece, Preparation
from kvmesh.plugins import Registry

if TYPE_CHECKING:
    from kvmesh.llm.base import Generation, LanguageModel
    from kvmesh.llm.segment import KVSegment

DEFAULT_CHANNEL = "text"  # what an edge carries unless it says otherwise
VARIANT = "@"  # NAME@LABEL: variant LABEL of channel NAME (see the module docstring)
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
    """Which caches a turn's row must keep: its prompt's and its reply's; `thoughts`: latent steps the row runs
    after its prompt, whose positions its prompt cache then ends with (`GenerationRequest.latent_steps`)."""

    prompt: bool = False
    reply: bool = False
    thoughts: int = 0


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


class Channel:
    """How a message travels on an edge: every hook the runtime calls, each with the default of a channel that
    needs nothing (the text channel's behaviour). A channel subclasses this and overrides what it does; see the
    module docstring for when each hook runs.

    Class attributes:
        name: the name edges carry (`Edge.channel`).
        summary: one line for users choosing a channel (`kvmesh run --channel`'s help), with what it needs.
        settings_class: the channel's settings dataclass (its fields are its spec keys and CLI flags), or None
            when it takes none.
        reads_reply: False when receivers read the sender's prompt cache instead of its reply (a sender read only
            over such channels prefills and generates nothing).
        carries_caches: messages arrive as KV caches (the receiver's cache is placed from them); a turn reads
            caches over one such channel at a time, so a team refuses an agent reading over two.
        calibrates: the channel can be calibrated on training tasks (`calibrate`); `wants_calibration` says
            whether it needs that before use.
    """

    name: str = ""
    summary: str = ""
    settings_class: type | None = None
    reads_reply: bool = True
    carries_caches: bool = False
    calibrates: bool = False

    def __init__(self, settings: object | None = None) -> None:
        if settings is None and self.settings_class is not None:
            settings = self.settings_class()
        self.config = settings  # an instance of `settings_class`, or None

    def check(self, sender: Endpoint, receiver: Endpoint, where: str) -> None:
        """Refuse (`ChannelNotAvailableError`) an edge whose ends this channel cannot join; loads no model."""

    def prepare(self, model: LanguageModel) -> None:
        """Set up per-model state before the first call; raise, saying why, for a model this channel cannot use."""

    def layout(
        self, model: LanguageModel, glue: str, content: str, cached: KVSegment | None, key: Hashable
    ) -> list[Piece]:
        """The pieces of a receiver's prompt that carry one message: `glue` (its header, after a blank line)
        then `content`; `cached` is the sender's cache this channel kept, `key` names its kind. A channel places
        its pieces: in the message's place, or (`Piece.front`) in front of the receiver's whole prompt.
        Default: the message as the receiver's own text."""
        return [Piece(own=True, text=glue + content, kind=OWN)]

    def place(self, model: LanguageModel, receiver: Hashable, pieces: Sequence[Piece]) -> Preparation | None:
        """Build the receiver's cache from the pieces whose cache this channel made: a preparation returning
        the `Assembly`, or None to prefill the whole prompt (the default: a channel that makes no caches)."""
        return None

    def keeps(self, turn: TurnView) -> Keep:
        """Which caches the turn's row must keep for this channel (default: none)."""
        return Keep()

    def learn(self, turn: TurnView, generation: Generation) -> None:
        """After the turn's row finished: store in `turn.store` what later turns read, and learn from it."""

    def kv_bytes(self, model: LanguageModel, pieces: Sequence[Piece]) -> int:
        """Bytes of KV cache one message's `pieces` move into a receiver's cache (default: all of their caches)."""
        return sum(piece.source.nbytes for piece in pieces if piece.source is not None)

    def stats(self) -> dict:
        """What the channel did (for summaries); {} when there is nothing to say."""
        return {}

    def save(self) -> list[Path]:
        """Keep what the channel learned on disk (kv-reuse: its anchors, when `anchors_dir` is set); returns the
        files written. Called by whoever runs the team after a run (`save_channels`); default: nothing."""
        return []

    def wants_calibration(self) -> bool:
        """Whether this channel should be calibrated on training tasks before it is used (`calibrate`)."""
        return False

    def begin_calibration(self) -> None:
        """Called on a probe team's instance before the calibration tasks run: start recording what `calibrate`
        reads."""

    def calibrate(self, probe: Callable[[object], Channel]) -> object:
        """New settings measured on training tasks: `probe(settings)` runs them on a team whose instance of this
        channel has `settings` and returns that instance, having recorded what it saw."""
        raise NotImplementedError(f"channel {self.name!r} asks for no calibration")

    def settings_dict(self) -> dict | None:
        """The channel's settings as a dict (for specs), or None when it has none."""
        return None if self.config is None else asdict(self.config)

    @classmethod
    def variant(cls, label: str, settings: object | None) -> object | None:
        """The settings of this channel's variant `label` (edges name it `NAME@LABEL`), derived from `settings`
        (the team's settings of the channel, or its defaults); raise ValueError, saying which labels exist, for a
        label that names none. Default: a channel without variants."""
        raise ValueError(f"channel {cls.name!r} has no variants; name it {cls.name!r} alone")


class _ChannelRegistry(Registry):
    """The channel registry, with the messages edges, decisions and configs have always shown."""

    def unknown_message(self, name: str, where: str | None) -> str:
        return f"{where}: {name!r} is not a channel; channels: {', '.join(self.names())}. {self.how_to_add()}"

    def unavailable_message(self, name: str, where: str | None) -> str:
        return (
            f"{where} uses channel {name!r}, which is not available yet; available: {', '.join(self.available())}. "
            "Set channel='text' there."
        )


# kvmesh's channels, name -> "module:class" (imported on first use); other packages add theirs as
# `kvmesh.channels` entry points (see kvmesh.plugins)
_REGISTRY: Registry[Callable[..., Channel]] = _ChannelRegistry(
    "channel",
    "kvmesh.channels",
    {
        "text": "kvmesh.kvcomm.text:TextChannel",
        "kv-reuse": "kvmesh.kvcomm.kv_reuse.channel:KVReuseChannel",
        "kv-select": "kvmesh.kvcomm.kv_select.channel:KVSelectChannel",
        "c2c": "kvmesh.kvcomm.c2c.channel:C2CChannel",
    },
    error=ChannelNotAvailableError,
    adder="register_channel(name, factory)",
)


def channel_names() -> tuple[str, ...]:
    """Every channel name an edge may carry, available or not."""
    return _REGISTRY.names()


def available_channels() -> tuple[str, ...]:
    """The channels that can run."""
    return _REGISTRY.available()


def channel_summaries() -> dict[str, str]:
    """Each channel that can run, with its one-line summary (empty for a factory that gives none)."""
    return {name: getattr(_REGISTRY.get(name), "summary", "") for name in available_channels()}


def channels_help() -> str:
    """Every channel that can run with its summary, for a `channel` setting's help."""
    listed = "; ".join(f"{name}: {text}" if text else name for name, text in channel_summaries().items())
    return f"Channels: {listed}."


def register_channel(name: str, factory: Callable[..., Channel]) -> None:
    """Make `name` a channel: `factory(settings)` (settings may be None) builds a team's instance of it."""
    _REGISTRY.register(name, factory)


def check_channel(name: str, where: str) -> None:
    """Raise `ChannelNotAvailableError` unless `name` is a channel (or a variant of one) that can run; `where`
    says who names it."""
    _REGISTRY.check(base_channel(name), where)
    if VARIANT in name:
        variant_settings(name, where=where)


def channel_name(value: str) -> str:
    """`value`, if it names a channel or a variant of one that can run (a `channel` setting's check); else
    `ChannelNotAvailableError`, saying which channels there are."""
    check_channel(value, "channel")
    return value


def base_channel(name: str) -> str:
    """The channel a name runs: itself, or for a variant the channel it varies (`kv-select@30` -> `kv-select`)."""
    return name.split(VARIANT, 1)[0]


def variant_settings(name: str, base: object | None = None, where: str | None = None):
    """The settings of variant `name` (`NAME@LABEL`), derived from `base`, the settings of NAME (see
    `channel_settings`; None: its defaults). Refuses, with `ChannelNotAvailableError`, a label the channel does not
    know, saying where it was named."""
    channel, label = name.split(VARIANT, 1)
    implementation = _implementation(channel)
    try:
        if not (isinstance(implementation, type) and issubclass(implementation, Channel)):
            raise ValueError(f"channel {channel!r} has no variants; name it {channel!r} alone")
        return implementation.variant(label, channel_settings(channel, base))
    except ValueError as error:
        raise ChannelNotAvailableError(f"{where or 'a team'}: {name!r}: {error}") from None


def _implementation(name: str):
    return _REGISTRY.get(base_channel(name), "a team")


def channel_settings(name: str, settings=None, label: str | None = None):
    """`settings` for channel `name` as its settings class: an instance, a dict of its fields, or None (defaults).
    `label` names them in errors (default: the channel's name)."""
    settings_class = settings_class_of(name)
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
    return settings_class(**_known_fields(settings_class, settings, label or name))


def _known_fields(settings_class: type, settings: dict, label: str) -> dict:
    unknown = set(settings) - set(settings_class.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown {label} settings {sorted(unknown)}; see {settings_class.__name__}")
    return settings


def make_channel(name: str, settings=None, base=None) -> Channel:
    """A new instance of channel `name`, with its own state (engines, anchors) and `settings` (see
    `channel_settings`). A variant (`NAME@LABEL`) takes the settings its label derives from `base`, the settings
    of NAME, with the fields a dict of `settings` gives on top (a settings instance is taken whole: a saved
    spec's); its instance carries the variant's name."""
    settings_class = settings_class_of(name)
    if VARIANT in name and (settings is None or isinstance(settings, dict)):
        derived = variant_settings(name, base)
        settings = replace(derived, **_known_fields(settings_class, settings, name)) if settings else derived
    channel = _implementation(name)(channel_settings(name, settings))
    if name != base_channel(name):
        channel.name = name  # what its pieces, stored caches and statistics are keyed by
    return channel


_DEFAULTS: dict[str, Channel] = {}


def default_channel(name: str) -> Channel:
    """A shared instance with default settings, for laying out prompts outside a team."""
    if name not in _DEFAULTS:
        _DEFAULTS[name] = make_channel(name)
    return _DEFAULTS[name]


def settings_of(channel: Channel) -> dict | None:
    """A channel's settings as a dict (for specs), or None when it has none."""
    return channel.settings_dict()


def save_channels(channels: Mapping[str, Channel]) -> list:
    """Let each channel that keeps state on disk save it (the optional `save` hook; kv-reuse writes its anchors
    to `anchors_dir`); returns what they wrote. Call it after a run, e.g. `save_channels(team.channels)`."""
    return [written for channel in channels.values() for written in channel.save()]


def metadata_key(name: str) -> str:
    """The key under which a message says how a channel served it (`kv-reuse` -> `kv_reuse`; variants under
    their channel's key)."""
    return base_channel(name).replace("-", "_")


def reads_caches(pieces: Sequence[Piece]) -> set[str]:
    """The channels whose caches a turn's pieces would read."""
    return {piece.channel for piece in pieces if piece.source is not None and piece.channel}


def kv_bytes_moved(channel: Channel, model: LanguageModel, pieces: Sequence[Piece]) -> int:
    """Bytes of KV cache that `pieces` (one message) move into a receiver's cache over `channel`."""
    return channel.kv_bytes(model, pieces)


def reads_replies(channels: Mapping[str, Channel], names: Iterable[str]) -> bool:
    """Whether any of the channels `names` reads a sender's reply (rather than only its prompt's cache)."""
    return any(channels[name].reads_reply for name in names)


@dataclass(frozen=True)
class CachePlan:
    """How a turn's cache is prepared: the channel that places it (None: the turn prefills its whole prompt),
    its preparation (None: it declined, run dense), and per inbound message the KV bytes it moves."""

    channel: str | None = None
    preparation: Preparation | None = None
    kv_bytes: list[int] | None = None


def plan_cache(
    channels: Mapping[str, Channel],
    model: LanguageModel,
    receiver: Hashable,
    pieces: Sequence[Piece],
    message_pieces: Sequence[Sequence[Piece]],
) -> CachePlan:
    """The turn's cache: placed by the one channel whose caches its `pieces` read (a turn reads caches over one
    channel at a time), with the bytes each message (`message_pieces`) moves once a preparation runs."""
    reading = reads_caches(pieces)
    if len(reading) > 1:
        raise NotImplementedError(f"a turn reads caches over one channel at a time, this one over {sorted(reading)}")
    if not reading:
        return CachePlan()
    (name,) = reading
    channel = channels[name]
    preparation = channel.place(model, receiver, pieces)
    if preparation is None:
        return CachePlan(name)
    return CachePlan(name, preparation, [channel.kv_bytes(model, own) for own in message_pieces])


def usable_task_cache(store: Mapping[Hashable, Cached], model: LanguageModel, reading: Iterable[str]) -> Cached | None:
    """The task's cache `model` made earlier, for a turn whose messages bring caches over the channels `reading`;
    None when those include another channel than the task cache's (a turn reads caches over one channel)."""
    cached = store.get(task_key(model))
    others = set(reading) - ({cached.channel} if cached is not None else set())
    return None if others else cached


# Team keywords that set one channel's settings (`Team(reuse=...)`, `reuse:` in specs), kept from before `channels=`.
_KEYWORDS = {"reuse": "kv-reuse"}


def channel_for_keyword(keyword: str) -> str:
    """The channel whose settings a Team keyword sets (`reuse` -> `kv-reuse`)."""
    return _KEYWORDS[keyword]


def settings_class_of(name: str) -> type | None:
    """Channel `name`'s settings dataclass, or None when it takes no settings. Its fields are the channel's keys in
    specs and `channels=`, and its flags on the command line (`--<channel>-<field>`, or a field's `alias`)."""
    implementation = _implementation(name)
    # a registered factory that is not a Channel class declares no settings
    is_channel_class = isinstance(implementation, type) and issubclass(implementation, Channel)
    return implementation.settings_class if is_channel_class else None


def carries_caches(name: str) -> bool:
    """Whether channel `name` (or a variant) brings messages as KV caches (`Channel.carries_caches`); a factory
    that is not a Channel class counts as one that does (it might)."""
    implementation = _implementation(name)
    return (
        implementation.carries_caches
        if isinstance(implementation, type) and issubclass(implementation, Channel)
        else True
    )

"""One plug-in mechanism: a `Registry` of named factories for each kind of thing kvmesh looks up by name.

    CHANNELS = Registry("channel", "kvmesh.channels", {"text": "kvmesh.kvcomm.text:TextChannel"})
    CHANNELS.names()                 # every name: built-ins in order, then entry points, then registered ones
    CHANNELS.get("text")             # the factory, its module imported on first use
    CHANNELS.register("mine", Mine)  # from code (a notebook, a test)

kvmesh keeps one registry per kind, beside the code that uses it: channels (`kvmesh.kvcomm.channel`),
benchmarks (`kvmesh.evals.benchmarks.BENCHMARKS`), designers (`kvmesh.topology.DESIGNERS`), model backends
(`kvmesh.llm.local.BACKENDS`, by a spec's scheme: `openai:...`) and agent tools (`kvmesh.agents.tools.TOOLS`).
Names come from three places:

1. built-ins: the registry's own map of name -> "module:attr" (None: known, not available yet);
2. entry points of the registry's group (`kvmesh.channels`, `kvmesh.benchmarks`, `kvmesh.designers`,
   `kvmesh.backends`, `kvmesh.tools`) in any installed distribution: how another package adds one;
3. `register(name, factory)`: from code; it replaces whatever had the name.

kvmesh declares its own in code rather than as entry points in its pyproject: names keep the order they are
declared in (setuptools writes entry points sorted, and `text` is the first channel, the default), a checkout
that is not installed (or an editable install made before a name was added) still has every built-in, and what
exists sits beside what uses it. A built-in may name a module of a higher package (kvmesh's tools live in
`kvmesh.evals`, beside the sandbox they need): it is imported only when the name is used.

Each registry raises one error type (the channel registry keeps `ChannelNotAvailableError`) whose message lists
the names there are and says how to add one.

Caveats: entry points are read once per registry, on first use; `refresh()` reads them again (after a
distribution was put on `sys.path` in a running process). An entry point cannot replace a built-in or an
earlier distribution's entry point of the same name with another target: it is ignored, with a warning.
"""

from __future__ import annotations

import importlib
import warnings
import weakref
from collections.abc import Iterator, Mapping
from copy import copy as shallow_copy
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class PluginNotAvailableError(ValueError):
    """A name no registry entry has, or one known but not available; the message lists the names there are."""


# every registry, so that `refresh` reaches them all (weak: copies made in tests go away with them)
_REGISTRIES: weakref.WeakSet[Registry] = weakref.WeakSet()


class Registry(Generic[T]):
    """Named factories of one kind, imported when first asked for; reads like a mapping of name -> factory
    (`in`, iteration over names, `registry[name]`, `keys()`, `values()`, `items()`).

    Args:
        kind: what one entry is, for messages ("channel").
        group: the entry-point group other packages declare theirs in ("kvmesh.channels").
        builtins: kvmesh's own, name -> "module:attr", or None for a name known but not available yet.
        error: the error `get` and `check` raise (a subclass of Exception taking one message).
        adder: how code adds one, for messages (default: "<kind> registry's register(name, factory)").
    """

    def __init__(
        self,
        kind: str,
        group: str,
        builtins: Mapping[str, str | None] | None = None,
        error: type[Exception] = PluginNotAvailableError,
        adder: str | None = None,
    ) -> None:
        self.kind, self.group, self.error = kind, group, error
        self.adder = adder or f"the {kind} registry's register(name, factory)"
        self._builtins: dict[str, str | None] = dict(builtins or {})
        self._registered: dict[str, T] = {}
        self._discovered: dict[str, EntryPoint] | None = None
        _REGISTRIES.add(self)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.group!r}: {', '.join(self.names())})"

    # --- sources -----------------------------------------------------------------------------------------------

    def register(self, name: str, factory: T) -> None:
        """Make `name` an entry whose factory is `factory`, replacing whatever had the name."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name is a non-empty string, got {name!r}")
        self._registered[name] = factory

    def refresh(self) -> None:
        """Read the entry points again on next use (after a distribution was added to or removed from sys.path)."""
        self._discovered = None

    def copy(self, builtins: Mapping[str, str | None] | None = None) -> Registry[T]:
        """An independent registry with these entries and `builtins` added (tests swap one in for a while)."""
        other = shallow_copy(self)
        other._builtins = self._builtins | dict(builtins or {})
        other._registered = dict(self._registered)
        other._discovered = None
        _REGISTRIES.add(other)
        return other

    def _entry_points(self) -> dict[str, EntryPoint]:
        if self._discovered is None:
            found: dict[str, EntryPoint] = {}
            for point in entry_points(group=self.group):
                if point.name not in self._builtins and point.name not in found:
                    found[point.name] = point
                    continue
                taken = self._builtins[point.name] if point.name in self._builtins else found[point.name].value
                if taken != point.value:  # the same target twice (kvmesh's own metadata, say) is no conflict
                    warnings.warn(
                        f"{self.group} entry point {point.name} = {point.value!r} is ignored: {point.name!r} is "
                        f"already {taken!r}; rename the entry point",
                        stacklevel=3,
                    )
            self._discovered = found
        return self._discovered

    # --- lookup ------------------------------------------------------------------------------------------------

    def names(self) -> tuple[str, ...]:
        """Every name, available or not: built-ins in their order, then entry points (sorted), then registered."""
        return tuple(dict.fromkeys([*self._builtins, *sorted(self._entry_points()), *self._registered]))

    def available(self) -> tuple[str, ...]:
        """The names whose factory can be loaded."""
        return tuple(name for name in self.names() if self._builtins.get(name) is not None or self._is_plugin(name))

    def _is_plugin(self, name: str) -> bool:
        return name in self._registered or name in self._entry_points()

    def check(self, name: str, where: str | None = None) -> None:
        """Raise the registry's error unless `name` can be loaded (imports nothing); `where` says who names it."""
        if name not in self.names():
            raise self.error(self.unknown_message(name, where))
        if name not in self.available():
            raise self.error(self.unavailable_message(name, where))

    def get(self, name: str, where: str | None = None) -> T:
        """The factory named `name`, its module imported on first use; the registry's error when there is none."""
        self.check(name, where)
        if name in self._registered:
            return self._registered[name]
        point = self._entry_points().get(name) or EntryPoint(name, self._builtins[name], self.group)
        return point.load()

    # --- messages (a registry whose errors have an established wording overrides these) ----------------------

    def unknown_message(self, name: str, where: str | None) -> str:
        return (
            f"{_prefix(where)}unknown {self.kind} {name!r}; known {self.kind}s: {', '.join(sorted(self.names()))}. "
            f"{self.how_to_add()}"
        )

    def unavailable_message(self, name: str, where: str | None) -> str:
        return f"{_prefix(where)}{self.kind} {name!r} is not available yet; available: {', '.join(self.available())}"

    def how_to_add(self) -> str:
        return f'Add one with {self.adder}, or as a {self.group!r} entry point (name = "module:attr") of a package.'

    # --- read as a mapping -------------------------------------------------------------------------------------

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def keys(self) -> tuple[str, ...]:
        return self.names()

    def values(self) -> list[T]:
        """The factory of every available name (imports each)."""
        return [self.get(name) for name in self.available()]

    def items(self) -> list[tuple[str, T]]:
        """(name, factory) for every available name (imports each)."""
        return [(name, self.get(name)) for name in self.available()]


def _prefix(where: str | None) -> str:
    return f"{where}: " if where else ""


def refresh() -> None:
    """Make every registry read its entry points again on next use (after changing sys.path in this process)."""
    importlib.invalidate_caches()  # importlib.metadata caches what each sys.path folder holds
    for registry in list(_REGISTRIES):
        registry.refresh()

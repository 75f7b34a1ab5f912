"""Fair timings of several ways to do the same work ("modes"): warm-up, interleaved rounds, median with range.

    timings = time_modes({"dense": run_dense, "reuse": run_reuse}, repeats=3, warmup=1)
    timings.spread("reuse")                  # seconds: median, min, max over the rounds
    timings.ratios("dense", "reuse")         # dense / reuse, one ratio per round
    timings.summary("dense")                 # per mode: seconds, and time relative to dense, each a Spread
    format_spread(timings.spread("reuse"))   # "0.412 (0.398-0.431)"

The protocol: every mode is called `warmup` times first (not recorded: first-call allocations, lazy loading,
caches), then `repeats` rounds in which every mode runs once, in an order rotated by one each round, so that no
mode always runs first (over as many rounds as modes, each mode takes each position once). A cyclic rotation
keeps each mode's neighbour: a mode always runs right after the same other mode, so a mode that leaves the machine
hot or its caches cold affects the same follower every round. A ratio between two modes is taken within each
round (the two times were measured back to back, under the same load) and only then summarised; a ratio of
medians would pair times from different rounds.

Results keep every round (its order, each mode's seconds, optionally a fingerprint of each mode's output, to
check that repeated runs did the same work) and the last round's outputs. `Timings.to_json` / `from_json` carry
the rounds through a run folder, so a resumed study continues the rotation (`first_round`) and its summary covers
rounds from both processes.

Caveats: with 2 modes and 3 rounds the first mode still runs first twice (a caller timing many items can pass
`first_round` to continue the rotation across them); a median of 3 is coarse, and the min-max range is there to
show how much a shared machine moved the numbers.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Clock = Callable[[], float]


@dataclass(frozen=True)
class Spread:
    """The median of some values, with their min and max."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        values = list(values)
        if not values:
            raise ValueError("a spread needs at least one value")
        return cls(statistics.median(values), min(values), max(values))

    def scaled(self, factor: float) -> Spread:
        """Every value times `factor` (seconds per task from seconds, milliseconds from seconds)."""
        return Spread(self.median * factor, self.min * factor, self.max * factor)

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max}


def format_spread(spread: Spread | Mapping[str, float], digits: int = 3, unit: str = "") -> str:
    """ "median (min-max)" with `digits` decimals; `unit` goes right after the median, as given (" s": "0.41 s
    (0.40-0.43)", "x": "2.10x (1.90-2.30)")."""
    if isinstance(spread, Mapping):
        spread = Spread(spread["median"], spread["min"], spread["max"])
    return f"{spread.median:.{digits}f}{unit} ({spread.min:.{digits}f}-{spread.max:.{digits}f})"


def digest(value: Any) -> str:
    """A short fingerprint of a JSON-able value (its sorted JSON's SHA-256), to compare outputs across rounds."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Round:
    """One round: its index (counted from the first round of the study), the order the modes ran in, each mode's
    seconds and, when a fingerprint was asked for, each mode's output fingerprint."""

    index: int
    order: tuple[str, ...]
    seconds: dict[str, float]
    fingerprints: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "index": self.index,
            "order": list(self.order),
            "seconds": dict(self.seconds),
            "fingerprints": dict(self.fingerprints),
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Round:
        return cls(int(data["index"]), tuple(data["order"]), dict(data["seconds"]), dict(data.get("fingerprints", {})))


@dataclass
class Timings(Generic[T]):
    """Rounds of timed modes (`time_modes`); `outputs` holds each mode's return value from the last round run in
    this process (empty for rounds read back from disk)."""

    modes: tuple[str, ...]
    rounds: list[Round]
    outputs: dict[str, T] = field(default_factory=dict)

    def _known(self, mode: str) -> None:
        if mode not in self.modes:
            raise KeyError(f"no mode {mode!r} was timed; the modes: {', '.join(self.modes)}")

    def seconds(self, mode: str) -> list[float]:
        """`mode`'s seconds in each round, in round order."""
        self._known(mode)
        return [r.seconds[mode] for r in self.rounds]

    def spread(self, mode: str) -> Spread:
        return Spread.of(self.seconds(mode))

    def ratios(self, numerator: str, denominator: str) -> list[float]:
        """`numerator`'s seconds over `denominator`'s, within each round (round order)."""
        return [a / b for a, b in zip(self.seconds(numerator), self.seconds(denominator), strict=True)]

    def agree(self, mode: str) -> bool | None:
        """Whether every round's output of `mode` had the same fingerprint; None when none was taken."""
        self._known(mode)
        prints = [r.fingerprints.get(mode) for r in self.rounds]
        return None if None in prints else len(set(prints)) == 1

    def summary(self, reference: str | None = None) -> dict[str, dict]:
        """Per mode: "seconds" (median/min/max over rounds) and, with a `reference` mode, "ratio": the mode's time
        over the reference's, taken per round (below 1: faster than the reference), with "ratios" per round."""
        if reference is not None:
            self._known(reference)
        summary = {}
        for mode in self.modes:
            row: dict[str, Any] = {"seconds": self.spread(mode).as_dict(), "rounds": self.seconds(mode)}
            if reference is not None:
                ratios = self.ratios(mode, reference)
                row |= {"ratio": Spread.of(ratios).as_dict(), "ratios": ratios}
            summary[mode] = row
        return summary

    def to_json(self) -> dict:
        return {"modes": list(self.modes), "rounds": [r.to_json() for r in self.rounds]}

    @classmethod
    def from_json(cls, data: Mapping) -> Timings:
        return cls(tuple(data["modes"]), [Round.from_json(r) for r in data["rounds"]])


def combine(timings: Sequence[Timings]) -> Timings:
    """The rounds of several timings of the same modes as one (e.g. one timing per task, summarised together)."""
    if not timings:
        raise ValueError("nothing to combine: pass at least one Timings")
    modes = timings[0].modes
    if any(t.modes != modes for t in timings):
        raise ValueError(f"timings of different modes cannot be combined: {sorted({t.modes for t in timings})}")
    return Timings(modes, [r for t in timings for r in t.rounds], dict(timings[-1].outputs))


def rotation(modes: Sequence[str], index: int) -> tuple[str, ...]:
    """The order of round `index`: `modes` rotated left by `index` places."""
    shift = index % len(modes) if modes else 0
    return (*modes[shift:], *modes[:shift])


def time_modes(
    modes: Mapping[str, Callable[[], T]],
    repeats: int = 3,
    warmup: int = 1,
    *,
    clock: Clock = time.perf_counter,
    warm: Mapping[str, Callable[[], object]] | None = None,
    first_round: int = 0,
    fingerprint: Callable[[T], str] | None = None,
    on_round: Callable[[Round, dict[str, T]], None] | None = None,
) -> Timings[T]:
    """Time each mode's callable, fairly: see the module docstring.

    Args:
        modes: name -> a callable doing the mode's work once; what it returns is kept for the last round.
        repeats: rounds, each running every mode once (at least 1).
        warmup: untimed calls of each mode before the first round (0: none).
        clock: seconds now (`time.perf_counter`; tests pass a clock they advance themselves).
        warm: name -> a cheaper callable to warm that mode up with instead of its own (e.g. one batch of many).
        first_round: index of the first round: the rotation continues from it (a resumed run, or many items).
        fingerprint: maps a mode's output to a string that must be the same in every round (`Timings.agree`).
        on_round: called after each round with it and that round's outputs (to log it as it finishes).
    """
    if not modes:
        raise ValueError("time_modes needs at least one mode")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1 (one round runs every mode once), got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be 0 or more calls per mode, got {warmup}")
    if first_round < 0:
        raise ValueError(f"first_round must be 0 or more, got {first_round}")
    not_callable = [name for name, run in modes.items() if not callable(run)]
    if not_callable:
        raise TypeError(f"each mode must be a callable taking no arguments; not callable: {not_callable}")
    stray = sorted(set(warm or {}) - set(modes))
    if stray:
        raise ValueError(f"warm names modes that are not timed: {stray}; the modes: {', '.join(modes)}")
    names = tuple(modes)
    for _ in range(warmup):
        for name in names:
            (warm or {}).get(name, modes[name])()
    rounds, outputs = [], {}
    for index in range(first_round, first_round + repeats):
        order, seconds, outputs = rotation(names, index), {}, {}
        for name in order:
            started = clock()
            outputs[name] = modes[name]()
            seconds[name] = clock() - started
        prints = {name: fingerprint(outputs[name]) for name in names} if fingerprint else {}
        done = Round(index, order, {name: seconds[name] for name in names}, prints)
        rounds.append(done)
        if on_round is not None:
            on_round(done, outputs)
    return Timings(names, rounds, outputs)

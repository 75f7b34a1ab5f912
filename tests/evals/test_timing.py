"""`kvmesh.evals.timing`: warm-up unrecorded, rotated rounds, per-round ratios, on a clock the test advances."""

import json

import pytest

from kvmesh.evals.timing import Round, Spread, Timings, combine, digest, format_spread, rotation, time_modes


class FakeClock:
    """A clock that moves only when a mode says it took some time."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recording_modes(clock: FakeClock, durations: dict[str, list[float]], calls: list[str]) -> dict:
    """Modes that log each call and take durations[mode][k] seconds on their k-th call (warm-up calls included)."""

    def mode(name: str):
        def run():
            k = sum(1 for c in calls if c == name)
            calls.append(name)
            clock.now += durations[name][k]
            return f"{name} call {k}"

        return run

    return {name: mode(name) for name in durations}


def test_warm_up_calls_run_first_and_are_not_recorded():
    clock, calls = FakeClock(), []
    durations = {"a": [50.0, 50.0, 1.0, 2.0, 3.0], "b": [70.0, 70.0, 4.0, 5.0, 6.0]}
    timings = time_modes(recording_modes(clock, durations, calls), repeats=3, warmup=2, clock=clock)
    assert calls[:4] == ["a", "b", "a", "b"] and len(calls) == 4 + 6
    assert timings.seconds("a") == [1.0, 2.0, 3.0]  # the 50 s warm-up calls left out
    assert timings.seconds("b") == [4.0, 5.0, 6.0]
    assert timings.outputs == {"a": "a call 4", "b": "b call 4"}  # the last round's


def test_a_warm_callable_replaces_the_mode_s_own_warm_up():
    clock, calls, warmed = FakeClock(), [], []
    modes = recording_modes(clock, {"a": [1.0, 1.0], "b": [1.0, 1.0, 1.0]}, calls)
    time_modes(modes, repeats=2, warmup=1, clock=clock, warm={"a": lambda: warmed.append("a")})
    assert warmed == ["a"] and calls == ["b", "a", "b", "b", "a"]  # b warmed itself, then rounds ab, ba


def test_rounds_rotate_so_no_mode_always_runs_first():
    clock, calls = FakeClock(), []
    modes = recording_modes(clock, {m: [1.0] * 4 for m in "abc"}, calls)
    timings = time_modes(modes, repeats=3, warmup=0, clock=clock)
    assert [r.order for r in timings.rounds] == [("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b")]
    assert calls == list("abcbcacab")
    assert [r.index for r in timings.rounds] == [0, 1, 2]
    later = time_modes(modes, repeats=1, warmup=0, clock=clock, first_round=4)  # a resumed run's 5th round
    assert later.rounds[0].order == ("b", "c", "a") and later.rounds[0].index == 4


def test_a_ratio_is_taken_within_each_round_then_summarised():
    clock, calls = FakeClock(), []
    # round 0: a 2 s, b 1 s; round 1: a 9 s, b 3 s; round 2: a 4 s, b 4 s
    timings = time_modes(
        recording_modes(clock, {"a": [2.0, 9.0, 4.0], "b": [1.0, 3.0, 4.0]}, calls), warmup=0, clock=clock
    )
    assert timings.ratios("a", "b") == [2.0, 3.0, 1.0]
    summary = timings.summary(reference="b")
    assert summary["a"]["ratios"] == [2.0, 3.0, 1.0]
    assert summary["a"]["ratio"] == {"median": 2.0, "min": 1.0, "max": 3.0}
    # the median of per-round ratios (2.0) is not the ratio of medians (4 / 3): rounds are paired
    assert summary["a"]["seconds"] == {"median": 4.0, "min": 2.0, "max": 9.0}
    assert summary["b"]["ratio"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert "ratio" not in timings.summary()["a"]


def test_fingerprints_tell_whether_repeated_outputs_agree():
    clock = FakeClock()
    answers = iter(["x", "x", "y"])
    timings = time_modes(
        {"steady": lambda: "same", "drifting": lambda: next(answers)}, warmup=0, clock=clock, fingerprint=digest
    )
    assert timings.agree("steady") is True and timings.agree("drifting") is False
    assert time_modes({"a": lambda: 1}, warmup=0, clock=clock).agree("a") is None  # no fingerprint asked for


def test_each_round_is_handed_over_as_it_finishes_and_survives_json():
    clock, calls, seen = FakeClock(), [], []
    modes = recording_modes(clock, {"a": [1.0, 2.0], "b": [3.0, 4.0]}, calls)
    timings = time_modes(modes, repeats=2, warmup=0, clock=clock, on_round=lambda r, out: seen.append((r, out)))
    assert [r for r, _ in seen] == timings.rounds
    assert seen[0][1] == {"a": "a call 0", "b": "b call 0"}
    back = Timings.from_json(json.loads(json.dumps(timings.to_json())))
    assert back.rounds == timings.rounds and back.modes == ("a", "b")
    assert combine([timings, back]).seconds("b") == [3.0, 4.0, 3.0, 4.0]


def test_bad_input_is_refused_saying_what_to_change():
    clock = FakeClock()
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        time_modes({"a": lambda: None}, repeats=0, clock=clock)
    with pytest.raises(ValueError, match="warmup must be 0 or more"):
        time_modes({"a": lambda: None}, warmup=-1, clock=clock)
    with pytest.raises(ValueError, match="at least one mode"):
        time_modes({}, clock=clock)
    with pytest.raises(TypeError, match=r"not callable: \['a'\]"):
        time_modes({"a": 3}, clock=clock)
    with pytest.raises(ValueError, match=r"not timed: \['c'\]"):
        time_modes({"a": lambda: None}, warm={"c": lambda: None}, clock=clock)
    with pytest.raises(KeyError, match="no mode 'c'"):
        time_modes({"a": lambda: None}, warmup=0, clock=clock).summary(reference="c")
    with pytest.raises(ValueError, match="different modes"):
        combine([Timings(("a",), []), Timings(("b",), [])])


def test_spreads_and_their_format():
    assert Spread.of([3.0, 1.0, 2.0, 10.0]) == Spread(2.5, 1.0, 10.0)
    assert format_spread(Spread(0.4123, 0.398, 0.431)) == "0.412 (0.398-0.431)"
    assert format_spread({"median": 2.0, "min": 1.5, "max": 3.0}, digits=1, unit=" s") == "2.0 s (1.5-3.0)"
    assert format_spread(Spread(2.1, 1.9, 2.3), digits=2, unit="x") == "2.10x (1.90-2.30)"
    assert Spread(1.0, 0.5, 2.0).scaled(1000) == Spread(1000.0, 500.0, 2000.0)
    assert rotation(("a", "b"), 3) == ("b", "a")
    with pytest.raises(ValueError, match="at least one value"):
        Spread.of([])
    assert Round.from_json(Round(1, ("a",), {"a": 1.0}).to_json()) == Round(1, ("a",), {"a": 1.0})

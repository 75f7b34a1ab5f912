"""`kvmesh bench kv-reuse` end to end on the tiny random model: timed rounds, reuse after warm-up, agreement."""

import statistics

import pytest

from kvmesh.config import ConfigError
from kvmesh.evals.studies.kv_reuse import KVReuseStudyConfig, format_table, run_study

SMALL = {
    "model": "tiny-random",
    "agents": 3,
    "input_tokens": 24,
    "prefix_tokens": 12,
    "output_tokens": 6,
    "tasks": 3,
    "warmup": 2,
    "min_anchors": 2,
    "agreement_tokens": 4,
    "gamma": 2.0,  # reuse whenever an anchor exists (random weights put unrelated texts far apart)
}


def test_the_benchmark_runs_end_to_end_with_repeated_timings(tiny):
    lines = []
    result = run_study(KVReuseStudyConfig(**SMALL, repeats=3), progress=lines.append)
    assert len(result["ttft"]) == len(result["ttft_dense_s"]) == len(result["ttft_reuse_s"]) == 3
    for agent, dense, reuse in zip(result["ttft"], result["ttft_dense_s"], result["ttft_reuse_s"], strict=True):
        assert agent["rounds"] == 3 == len(agent["dense_s"]) == len(agent["reuse_s"])  # 1 measured task x 3
        assert all(s > 0 for s in agent["dense_s"] + agent["reuse_s"])
        assert agent["speedups"] == pytest.approx(
            [d / r for d, r in zip(agent["dense_s"], agent["reuse_s"], strict=True)]
        )
        assert agent["speedup"]["median"] == pytest.approx(statistics.median(agent["speedups"]))
        assert (agent["speedup"]["min"], agent["speedup"]["max"]) == (min(agent["speedups"]), max(agent["speedups"]))
        assert dense == statistics.median(agent["dense_s"]) and reuse == statistics.median(agent["reuse_s"])
    assert result["speedup_last_agent"] == result["ttft"][-1]["speedup"]["median"]
    assert result["reuse_rate"] == 1.0  # after the warm-up tasks every later agent has an anchor per piece
    # agent 1 reuses only its own prefix template, exactly as a dense prefill encodes it: its tokens agree
    assert result["agreement"] >= 1 / 3 and result["anchor_memory_mb"] > 0
    assert len(lines) == 9 and "dense fallback" in lines[4] and "dense fallback" not in lines[7]
    assert all("not timed" in line for line in lines[:6]) and all("TTFT dense" in line for line in lines[6:])
    table = format_table(result)
    assert [line.split()[:2] for line in table[2:5]] == [["agent", "1"], ["agent", "2"], ["agent", "3"]]


def test_repeats_below_one_are_refused():
    with pytest.raises(ConfigError, match=r"repeats.*at least 1"):
        KVReuseStudyConfig(repeats=0)
    with pytest.raises(ConfigError, match=r"warmup_calls.*0 or more"):
        KVReuseStudyConfig(warmup_calls=-1)

"""`kvmesh bench kv-reuse` end to end on the tiny random model: timings, reuse after warm-up, agreement."""

from kvmesh.evals.studies.kv_reuse import KVReuseStudyConfig, run_study


def test_the_benchmark_runs_end_to_end(tiny):
    config = KVReuseStudyConfig(
        model="tiny-random",
        agents=3,
        input_tokens=24,
        prefix_tokens=12,
        output_tokens=6,
        tasks=3,
        warmup=2,
        min_anchors=2,
        agreement_tokens=4,
        gamma=2.0,  # reuse whenever an anchor exists (random weights put unrelated texts far apart)
    )
    lines = []
    result = run_study(config, progress=lines.append)
    assert len(result["ttft_dense_s"]) == len(result["ttft_reuse_s"]) == 3
    assert result["reuse_rate"] == 1.0  # after the warm-up task every later agent has an anchor per piece
    assert 0 <= result["agreement"] <= 1 and result["anchor_memory_mb"] > 0
    assert result["speedup_last_agent"] == result["ttft_dense_s"][-1] / result["ttft_reuse_s"][-1]
    assert len(lines) == 9 and "dense fallback" in lines[4] and "dense fallback" not in lines[7]
    assert 0 <= result["agreement_reused_calls"] <= 1

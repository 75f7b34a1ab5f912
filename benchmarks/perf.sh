#!/usr/bin/env bash
# The README's Performance figures: each benchmark's --json output saved to RUNS/NAME.json, then recorded into
# results/perf-NAME.json (benchmarks/record_results.py timing). A finished benchmark is not run again, so after an
# interruption this continues with the next; delete RUNS/NAME.json to measure one again.
#
#   bash benchmarks/perf.sh [RUNS] [NAME ...]      # RUNS: runs/perf; NAMEs: a subset, by default all below
#
# Run it on a quiet machine: every figure is a time. Nothing here downloads.
set -euo pipefail
runs=${1:-runs/perf}
shift || true
wanted=" ${*:-} "
mkdir -p "$runs"

# measure NAME TITLE COMMAND...: run COMMAND (its --json output) unless RUNS/NAME.json exists, then record it
measure() {
    local name=$1 title=$2
    shift 2
    [[ $wanted == "  " || $wanted == *" $name "* ]] || return 0
    local out=$runs/$name.json
    if [[ ! -s $out ]]; then
        echo "== $name: $*" >&2
        ".venv/bin/$1" "${@:2}" > "$out.partial"
        mv "$out.partial" "$out"
    fi
    .venv/bin/python benchmarks/record_results.py timing "$out" --name "perf-$name" --title "$title" --command "$*"
}

measure batching "16 math word problems through run_batch against one by one (3-agent chain)" \
    python benchmarks/batching.py --json
measure batching-trivia "16 trivia questions through run_batch against one by one (3-agent chain)" \
    python benchmarks/batching.py --workload trivia --json
measure overhead "team.run wall time against time in the generation engine (4 agents, complete, 2 rounds)" \
    python benchmarks/overhead.py --json
measure onednn "oneDNN against MKL linear layers: prefill and decode" python benchmarks/onednn.py --json
measure kv-reuse "time to first token per agent, dense prefill against KV cache reuse (5 agents)" \
    kvmesh bench kv-reuse --json
measure adapters "agents on different LoRA adapters in one batch against adapter by adapter" \
    python benchmarks/adapters.py --json
measure serving "16 tasks over HTTP against kvmesh serve, batched against one at a time" \
    python benchmarks/serving.py --json
measure ray "32 InfoQA tasks on Ray workers against one process" python benchmarks/ray_eval.py --json

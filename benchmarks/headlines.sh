#!/usr/bin/env bash
# The README's headline figures under the protocol of "Results a reviewer can trust": each run resumable (run this
# again after an interruption: finished seeds, rounds and samples are kept), then recorded into results/.
#
#   bash benchmarks/headlines.sh [optima|design|latent|all] [RUNS] [TASKS]
#
# RUNS is where the runs go (runs/headlines); TASKS the benchmarks, quoted ("infoqa infoqa-projects"). Two runs
# on different tasks may go side by side (OMP_NUM_THREADS=1 each on a 2-core machine).
#
# On a 2-core CPU this takes many hours (Optima about an hour per seed and domain). Nothing here downloads: the
# models are the packaged ones.
set -euo pipefail
what=${1:-all}
runs=${2:-runs/headlines}
tasks=${3:-infoqa infoqa-projects}
kvmesh=${KVMESH:-.venv/bin/kvmesh}
python=${PYTHON:-.venv/bin/python}
record() { "$python" benchmarks/record_results.py "$@"; }

for task in $tasks; do
    if [[ $what == optima || $what == all ]]; then
        out=$runs/optima-$task
        command="kvmesh optima train --task $task --seeds 0 1 2 --test --out $out"
        $kvmesh optima train --task "$task" --seeds 0 1 2 --test --out "$out"
        record optima "$out" --name "optima-$task" --title "Optima's default run on $task, 3 seeds" --command "$command"
    fi
    if [[ $what == design || $what == all ]]; then
        out=$runs/agp-$task
        $kvmesh design train "$task" --designer agp --seeds 0 1 2 --resume --out "$out"
        command="kvmesh design eval $task --designers $out --baselines complete --limit 200 --out $out-test"
        $kvmesh design eval "$task" --designers "$out" --baselines complete --limit 200 --resume --out "$out-test"
        record design "$out-test" --name "agp-$task" --title "AGP against the complete graph on $task, 3 seeds" \
            --command "kvmesh design train $task --designer agp --seeds 0 1 2 --out $out; $command"
    fi
    if [[ $what == latent || $what == all ]]; then
        out=$runs/latent-$task
        command="kvmesh bench latent --task $task --fractions 10 20 30 50 70 90 100 --seeds 0 1 2 --out $out"
        $kvmesh bench latent --task "$task" --fractions 10 20 30 50 70 90 100 --seeds 0 1 2 --out "$out"
        record latent "$out" --name "latent-$task" --title "Latent channels against text on $task, 3 seeds" \
            --command "$command"
    fi
done

#!/usr/bin/env bash
# The README's headline figures under the protocol of "Results a reviewer can trust": each run resumable (run this
# again after an interruption: finished seeds, rounds and samples are kept), then recorded into results/.
#
#   bash benchmarks/headlines.sh [optima|design|latent|all] [RUNS] [TASKS]
#
# RUNS is where the runs go (runs/headlines); TASKS the benchmarks, quoted ("infoqa infoqa-projects"). Two runs
# on different tasks may go side by side (OMP_NUM_THREADS=1 each on a 2-core machine).
#
# On a 2-core CPU this takes many hours (Optima about two hours per seed and domain at one thread), longer than one
# session on a machine that keeps nothing: Optima, AGP and the latent bench therefore run one seed per command, and
# each finished seed is kept in results/seeds/NAME (benchmarks/keep_seeds.py; commit it). A seed already kept is not run
# again; once every seed is kept, the figure is recorded from the kept folder. Nothing here downloads: the models
# are the packaged ones.
set -euo pipefail
what=${1:-all}
runs=${2:-runs/headlines}
tasks=${3:-infoqa infoqa-projects}
kvmesh=${KVMESH:-.venv/bin/kvmesh}
python=${PYTHON:-.venv/bin/python}
record() { "$python" benchmarks/record_results.py "$@"; }
seeds="0 1 2"

# run_seeds KIND NAME OUT COMMAND...: run COMMAND --seeds S --out OUT for each seed S not kept in results/seeds/NAME
# yet, keeping each as it finishes.
run_seeds() {
    local kind=$1 name=$2 out=$3 seed todo; shift 3
    todo=$("$python" benchmarks/keep_seeds.py missing "results/seeds/$name" --kind "$kind" --seeds $seeds)
    for seed in $todo; do
        "$@" --seeds "$seed" --out "$out"
        "$python" benchmarks/keep_seeds.py "$kind" "$out" --seed "$seed" --into "results/seeds/$name"
    done
}

for task in $tasks; do
    if [[ $what == optima || $what == all ]]; then
        run_seeds optima "optima-$task" "$runs/optima-$task" $kvmesh optima train --task "$task" --test
        command="kvmesh optima train --task $task --seeds S --test --out $runs/optima-$task, for S in $seeds"
        record optima "results/seeds/optima-$task" --name "optima-$task" --title "Optima's default run on $task, 3 seeds" \
            --command "$command"
    fi
    if [[ $what == design || $what == all ]]; then
        # one seed per session: train it, score it on test against the complete graph, keep it
        name=agp-$task train=$runs/agp-$task
        todo=$("$python" benchmarks/keep_seeds.py missing "results/seeds/$name" --kind design --seeds $seeds)
        for seed in $todo; do
            $kvmesh design train "$task" --designer agp --seeds "$seed" --resume --out "$train"
            $kvmesh design eval "$task" --designers "$train" --baselines complete --limit 200 --resume \
                --out "$train-test-$seed"
            "$python" benchmarks/keep_seeds.py design "$train-test-$seed" --seed "$seed" --into "results/seeds/$name"
        done
        command="kvmesh design train $task --designer agp --seeds S --out $train; kvmesh design eval $task"
        command+=" --designers $train --baselines complete --limit 200 --out $train-test-S, for S in $seeds"
        record design "results/seeds/$name" --name "$name" --title "AGP against the complete graph on $task, 3 seeds" \
            --command "$command"
    fi
    if [[ $what == latent || $what == all ]]; then
        fractions="10 20 30 50 70 90 100"
        run_seeds latent "latent-$task" "$runs/latent-$task" $kvmesh bench latent --task "$task" --fractions $fractions
        command="kvmesh bench latent --task $task --fractions $fractions --seeds S --out $runs/latent-$task, for S in $seeds"
        record latent "results/seeds/latent-$task" --name "latent-$task" \
            --title "Latent channels against text on $task, 3 seeds" --command "$command"
    fi
done

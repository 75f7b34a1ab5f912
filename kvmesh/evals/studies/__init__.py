"""Studies behind `kvmesh bench`: each runs several methods on the same inputs in one process and prints one table.

    kv_reuse.py   `kvmesh bench kv-reuse`: time to first token, dense prefill against cache reuse
    latent.py     `kvmesh bench latent`: latent channels against the text relay on InfoQA (accuracy and time)
    latent_teams.py  the agents, teams and tasks every latent mode runs (the demo and `kvmesh c2c train` too)
    latent_report.py the latent study's table and plot

Words: a *benchmark* is a task suite (`kvmesh.evals.benchmarks`: GSM8K, HumanEval, InfoQA); a *study* compares
methods on one (here); the repository's top-level `benchmarks/` scripts print speed ratios of the library's own
parts. `kvmesh bench` is the command that runs a study.
"""

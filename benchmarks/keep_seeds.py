"""Keep each finished seed of a seeded run in `results/seeds/NAME`, so that the seeds can be run in different sessions
(on machines that do not keep run folders) and still be recorded as one figure.

    python benchmarks/keep_seeds.py optima runs/headlines/optima-infoqa --seed 0 --into results/seeds/optima-infoqa
    python benchmarks/keep_seeds.py latent runs/headlines/latent-infoqa --seed 1 --into results/seeds/latent-infoqa
    python benchmarks/keep_seeds.py design runs/headlines/agp-infoqa-test --seed 2 --into results/seeds/agp-infoqa
    python benchmarks/keep_seeds.py missing results/seeds/optima-infoqa --kind optima --seeds 0 1 2   # "1 2"

A kept folder is laid out like the run it came from, less everything heavy: each seed's result file
(`seed-N/results.json` for Optima, `seed-N/summary.json` for `bench latent`) and a `seeds.json` rebuilt from every
kept seed with the producer's own figures function, so `record_results.py optima|latent FOLDER` reads it as it
reads a finished run. A designer seed (`design`: a `kvmesh design eval` folder whose designers were one seeds
group) keeps that seed's run summary, the baselines' summaries (the latest session's), its paired comparisons in a
merged `paired.json`, and its figures in `seed-N/figures.json`, from which `seeds-GROUP.json` is rebuilt, so
`record_results.py design FOLDER` reads it too.

Nothing is recomputed: a seed is kept only once its run has written its result, and keeping a seed again
replaces it. The run's configuration must match the kept seeds' (the seed aside): a seed of another configuration
is refused, naming the settings that differ.

Each kept seed also records where and when it was kept (`seed-N/kept.json`: commit, machine, date, versions), and
`seeds.json` lists them. A latent bench seed is refused when the seeds kept before ran on another kind of machine
(CPU or core count): its timings would be averaged with theirs.

Caveats: transcripts, adapters and per-task samples stay in the run folder; the kept files hold figures and the
paired comparisons the run already computed. Test-scoring counts are those of the machine that ran each seed:
`record_results.py` adds them up across the kept seeds (each session scored its baselines again).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kvmesh.evals.results import provenance
from kvmesh.evals.seeds import SEEDS_FILE, check_seeds, seed_folder, write_seed_summary
from kvmesh.evals.studies.latent import SUMMARY as LATENT_SUMMARY
from kvmesh.evals.studies.latent_report import seed_figures as latent_figures
from kvmesh.runs import read_json, write_json
from kvmesh.training.optima.loop import seed_figures as optima_figures

# kind -> (each seed's result file, its figures function)
KINDS: dict[str, tuple[str, Callable[[dict], dict[str, float]]]] = {
    "optima": ("results.json", optima_figures),
    "latent": (LATENT_SUMMARY, latent_figures),
    "design": ("figures.json", lambda kept: kept["figures"]),
}
PER_SEED = ("seed", "seeds", "out")  # settings that differ between the seeds of one run by design
KEPT = "kept.json"  # beside each kept result: where and when it was kept


class KeepError(ValueError):
    """A seed that cannot be kept; the message says which file or setting and what to do."""


def kept_seeds(into: Path, kind: str) -> list[int]:
    """The seeds kept in `into` for `kind`, in ascending order."""
    result = KINDS[kind][0]
    return sorted(int(p.parent.name.removeprefix("seed-")) for p in into.glob(f"seed-*/{result}"))


def _comparable(config: dict) -> dict:
    return {key: value for key, value in config.items() if key not in PER_SEED}


def _config(path: Path) -> dict:
    summary = read_json(path)
    if not isinstance(summary, dict) or not isinstance(summary.get("config"), dict):
        raise KeepError(f"{path} records no configuration: it is not a seeds summary of kvmesh.evals.seeds")
    return summary["config"]


def keep(kind: str, run: Path, seed: int, into: Path) -> dict:
    """Copy seed `seed`'s result from `run` into `into` and rebuild `into`/seeds.json; returns that summary."""
    if kind == "design":
        return keep_design(run, seed, into)
    result_name, figures_of = KINDS[kind]
    source = seed_folder(run, seed) / result_name
    if not source.is_file():
        raise KeepError(f"{source} does not exist: seed {seed} of {run} has not finished (run it to the end first)")
    if not (run / SEEDS_FILE).is_file():
        raise KeepError(f"{run / SEEDS_FILE} does not exist: {run} is not a seeded run (pass --seeds to its command)")
    config = _config(run / SEEDS_FILE)
    if (into / SEEDS_FILE).is_file():
        before = _config(into / SEEDS_FILE)
        names = _comparable(before).keys() | _comparable(config).keys()
        differ = sorted(name for name in names if before.get(name) != config.get(name))
        if differ:
            raise KeepError(
                f"seed {seed} of {run} was run with other settings than the seeds kept in {into} "
                f"({', '.join(differ)}): keep it in another folder, or rerun it with the kept seeds' settings"
            )
    where = provenance()
    if kind == "latent":
        _same_machine(into, where["machine"])
    target = seed_folder(into, seed) / result_name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    write_json(target.parent / KEPT, where)
    seeds = kept_seeds(into, kind)
    per_seed = {s: figures_of(read_json(seed_folder(into, s) / result_name)) for s in seeds}
    kept = {str(s): read_json(seed_folder(into, s) / KEPT) for s in seeds if (seed_folder(into, s) / KEPT).is_file()}
    return write_seed_summary(into, per_seed, config=config | {"seeds": seeds}, kept=kept)


def keep_design(run: Path, seed: int, into: Path) -> dict:
    """Keep seed `seed` of the one designer seeds group `kvmesh design eval` scored in `run` (see the module
    docstring); returns the rebuilt seeds-GROUP.json."""
    groups = sorted(run.glob("seeds-*.json"))
    if len(groups) != 1:
        found = ", ".join(p.name for p in groups) or "none"
        raise KeepError(f"{run} holds {found}: keep the seeds of one designer group, scored by one design eval")
    summary = read_json(groups[0])
    name = summary.get("runs", {}).get(str(seed))
    if name is None:
        raise KeepError(f"{groups[0]} has no seed {seed} (seeds {summary.get('seeds')}): score that seed's designer")
    if (into / groups[0].name).is_file():
        before = read_json(into / groups[0].name)
        for key in ("benchmark", "split", "baselines"):
            if before.get(key) != summary.get(key):
                raise KeepError(
                    f"{run} scored {key} {summary.get(key)!r}, the seeds kept in {into} {before.get(key)!r}: keep it "
                    "in another folder, or score it as the kept seeds were"
                )
    for scored in (name, *summary["baselines"]):  # the baselines as this session scored them
        (into / scored).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / scored / "summary.json", into / scored / "summary.json")
    paired = read_json(run / "paired.json")
    merged = read_json(into / "paired.json") if (into / "paired.json").is_file() else {**paired, "paired": {}}
    write_json(into / "paired.json", {**merged, "paired": {**merged["paired"], name: paired["paired"][name]}})
    folder = seed_folder(into, seed)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"figures": summary["per_seed"][str(seed)], "run": name, "designer": summary["designers"][str(seed)]}
    write_json(folder / "figures.json", record)
    write_json(folder / KEPT, provenance())
    seeds = kept_seeds(into, "design")
    kept = {s: read_json(seed_folder(into, s) / "figures.json") for s in seeds}
    extra = {key: summary[key] for key in ("benchmark", "split", "baselines")}
    extra |= {"runs": {str(s): k["run"] for s, k in kept.items()}}
    extra |= {"designers": {str(s): k["designer"] for s, k in kept.items()}}
    extra["kept"] = {str(s): read_json(seed_folder(into, s) / KEPT) for s in seeds}
    return write_seed_summary(into, {s: k["figures"] for s, k in kept.items()}, groups[0].name, **extra)


def _same_machine(into: Path, machine: dict) -> None:
    """Refuse a timed seed from another kind of machine than the seeds kept before (CPU model and cores)."""
    for path in into.glob(f"seed-*/{KEPT}"):
        before = read_json(path)["machine"]
        differ = [key for key in ("cpu", "cores", "gpu") if before.get(key) != machine.get(key)]
        if differ:
            raise KeepError(
                f"{path.parent.name} was kept on another machine ({', '.join(differ)} differ: {before} against "
                f"{machine}); timings from both would be averaged: rerun this seed on that machine, or keep every "
                "seed in another folder"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", required=True)
    for kind in KINDS:
        one = actions.add_parser(kind, help=f"keep a finished seed of a seeded {kind} run")
        one.add_argument("run", help="the run's --out folder")
        one.add_argument("--seed", type=int, required=True, help="the finished seed to keep")
        one.add_argument("--into", required=True, help="the kept folder, e.g. results/seeds/NAME")
    missing = actions.add_parser("missing", help="print the seeds of --seeds not yet kept in FOLDER")
    missing.add_argument("into", help="the kept folder")
    missing.add_argument("--kind", choices=list(KINDS), required=True)
    missing.add_argument("--seeds", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)
    if args.action == "missing":
        have = set(kept_seeds(Path(args.into), args.kind))
        print(" ".join(str(s) for s in check_seeds(args.seeds) if s not in have))
        return 0
    try:
        summary = keep(args.action, Path(args.run), args.seed, Path(args.into))
    except (KeepError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"kept seed {args.seed} in {args.into}; kept seeds: {summary['seeds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

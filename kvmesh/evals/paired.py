"""Two evaluation runs compared on the same tasks: paired accuracy difference, McNemar p, paired intervals.

kvmesh report runs/complete runs/agp runs/optima     # the first run is the reference; compare_runs

Two systems scored on the same task ids differ task by task; comparing their two accuracies as if they were
independent samples throws that pairing away and needs far more tasks to see the same gap. Here samples are
matched by id: the accuracy difference (other - reference) gets an exact McNemar p-value (from the tasks only
one run got right) and Newcombe's paired score interval (a bootstrap collapses when few tasks are
discordant), and the per-task differences of total tokens, generated tokens and seconds get paired bootstrap
intervals, where both runs record them (oracle and given-completion runs ran no model, so
they have none; the result says what was left out and why).

Caveats:
- Only the ids both runs hold are compared; how many each run has alone is reported, never silently dropped.
- A task's seconds are its team's elapsed time from the start of its batch (`UsageReport.wall_time_s`), so
  they include the tasks batched beside it: compare times between runs with the same batch size
  (`compare_runs` says when they differ).
- The bootstrap is seeded and runs over the paired ids in sorted order, so the same two runs always give the
  same intervals, whatever order their samples were written in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from kvmesh.agents.usage import format_rows
from kvmesh.evals.stats import mcnemar_exact, paired_bootstrap, paired_difference
from kvmesh.evals.store import read_samples
from kvmesh.evals.summary import load_summary

NO_MODEL = "no model ran: an oracle or given-completions run"


def _total(field: str) -> Callable[[dict], float]:
    return lambda sample: sample["usage"]["total"][field]


# per-task quantities compared: name -> (how tables call it, how to read it from a sample line)
QUANTITIES: dict[str, tuple[str, Callable[[dict], float]]] = {
    "total_tokens": ("total tokens", _total("total_tokens")),
    "output_tokens": ("generated tokens", _total("output_tokens")),
    "seconds": ("seconds", lambda sample: sample["usage"]["wall_time_s"]),
}


def _by_id(samples: list[dict], name: str) -> dict[str, dict]:
    """{task id: sample}, refusing lines that are not samples and ids that appear more than once."""
    for number, sample in enumerate(samples, start=1):
        if not isinstance(sample, dict) or "id" not in sample or "correct" not in sample:
            raise ValueError(f"{name}: sample {number} is not a scored sample (needs 'id' and 'correct')")
    counts = Counter(str(s["id"]) for s in samples)
    repeated = sorted(i for i, count in counts.items() if count > 1)
    if repeated:
        shown = ", ".join(f"{i!r} ({counts[i]} times)" for i in repeated[:5])
        raise ValueError(
            f"{name} repeats task ids: {shown}; a run scores each task once, so pairing would be ambiguous "
            "(was it merged from several runs?)"
        )
    return {str(s["id"]): s for s in samples}


def _value(sample: dict, read: Callable[[dict], float]) -> float | None:
    try:
        value = read(sample)
    except (KeyError, TypeError):
        return None
    return None if value is None else float(value)


def _missing(name: str, values: list[float | None]) -> str | None:
    """Why `name` cannot be compared on a quantity (None: every paired task records it)."""
    lacking = sum(v is None for v in values)
    if not lacking:
        return None
    if lacking == len(values):
        return f"not recorded by {name} ({NO_MODEL}?)"
    return f"not recorded by {name} on {lacking} of {len(values)} paired tasks"


def paired_comparison(
    reference: list[dict], other: list[dict], seed: int = 0, *, names: tuple[str, str] = ("reference", "other")
) -> dict:
    """Compare the sample lines of two runs on the task ids they share; differences are other - reference.

    Returns n (paired tasks), only_in_reference and only_in_other (ids one run lacks), accuracy of each on the
    paired tasks, accuracy_difference (other - reference, Newcombe's paired score interval, n), discordant
    (tasks only one run got right) with mcnemar_p, per_task (for each of `QUANTITIES` both runs record: each
    run's mean and the difference with its paired bootstrap interval), and skipped (quantity -> why it was left
    out). `names` name the runs in errors and reasons. Refuses runs that share no id, repeat an id, or hold
    different gold answers for one id.
    """
    ref_name, other_name = names
    ref_by_id, other_by_id = _by_id(reference, ref_name), _by_id(other, other_name)
    ids = sorted(ref_by_id.keys() & other_by_id.keys())  # sorted: sample order must not move the bootstrap
    if not ids:
        raise ValueError(
            f"{ref_name} ({len(ref_by_id)} tasks) and {other_name} ({len(other_by_id)} tasks) share no task id, "
            "so they cannot be paired; run both on the same benchmark, split, seed and data file"
        )
    for task_id in ids:
        ref_gold, other_gold = ref_by_id[task_id].get("gold"), other_by_id[task_id].get("gold")
        if ref_gold is not None and other_gold is not None and ref_gold != other_gold:
            raise ValueError(
                f"task {task_id!r} has gold {ref_gold!r} in {ref_name} but {other_gold!r} in {other_name}: the runs "
                "share ids but not tasks (different data file or generator seed?)"
            )
    ref_right = [bool(ref_by_id[i]["correct"]) for i in ids]
    other_right = [bool(other_by_id[i]["correct"]) for i in ids]
    only_reference = sum(r and not o for r, o in zip(ref_right, other_right, strict=True))
    only_other = sum(o and not r for r, o in zip(ref_right, other_right, strict=True))
    n = len(ids)
    result = {
        "n": n,
        "only_in_reference": len(ref_by_id) - n,
        "only_in_other": len(other_by_id) - n,
        "accuracy": {"reference": sum(ref_right) / n, "other": sum(other_right) / n},
        "accuracy_difference": paired_difference(
            sum(r and o for r, o in zip(ref_right, other_right, strict=True)),
            only_other,
            only_reference,
            sum(not r and not o for r, o in zip(ref_right, other_right, strict=True)),
        ),
        "discordant": {"only_reference": only_reference, "only_other": only_other},
        "mcnemar_p": mcnemar_exact(only_reference, only_other),
        "per_task": {},
        "skipped": {},
        "seed": seed,
    }
    for key, (_, read) in QUANTITIES.items():
        ref_values = [_value(ref_by_id[i], read) for i in ids]
        other_values = [_value(other_by_id[i], read) for i in ids]
        reasons = [_missing(ref_name, ref_values), _missing(other_name, other_values)]
        if any(reasons):
            result["skipped"][key] = "; ".join(r for r in reasons if r)
            continue
        result["per_task"][key] = {
            "reference": sum(ref_values) / n,
            "other": sum(other_values) / n,
            **paired_bootstrap([o - r for r, o in zip(ref_values, other_values, strict=True)], seed=seed),
        }
    return result


def _signed(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


def _difference(entry: dict, digits: int) -> str:
    low, high = entry["ci95"]
    return f"{_signed(entry['value'], digits)} [{_signed(low, digits)}, {_signed(high, digits)}]"


def _rows(comparison: dict) -> list[str]:
    """One table column: a comparison's cells in the order of `compare_runs`'s row labels."""
    accuracy, discordant = comparison["accuracy"], comparison["discordant"]
    cells = [
        str(comparison["n"]),
        f"{comparison['only_in_reference']} / {comparison['only_in_other']}",
        f"{accuracy['reference']:.3f} -> {accuracy['other']:.3f}",
        _difference(comparison["accuracy_difference"], 3),
        f"{discordant['only_reference']} / {discordant['only_other']}",
        f"{comparison['mcnemar_p']:.3g}",
    ]
    for key in QUANTITIES:
        entry, digits = comparison["per_task"].get(key), 2 if key == "seconds" else 1
        if entry is None:
            cells += ["-", "-"]
        else:
            cells += [f"{entry['reference']:.{digits}f} -> {entry['other']:.{digits}f}", _difference(entry, digits)]
    return cells


def compare_runs(folders: Sequence[str | Path], seed: int = 0) -> str:
    """A plain-text table pairing each run folder with the first (the reference) on their shared task ids."""
    if len(folders) < 2:
        raise ValueError(f"a paired comparison needs two or more runs, got {len(folders)}")
    names = [str(f) for f in folders]
    summaries = [load_summary(f) for f in folders]  # refuses a folder that is not a finished run
    samples = [read_samples(f) for f in folders]
    reference = names[0]
    comparisons = [
        paired_comparison(samples[0], other, seed, names=(reference, name))
        for name, other in zip(names[1:], samples[1:], strict=True)
    ]
    labels = [
        "tasks paired",
        "tasks only in reference / only in this run",
        "accuracy: reference -> this run",
        "  difference [95% Newcombe paired]",
        "right only in reference / only in this run",
        "McNemar exact p",
    ]
    for label, _ in QUANTITIES.values():
        labels += [f"{label}/task: reference -> this run", "  difference [95% paired bootstrap]"]
    columns = [_rows(c) for c in comparisons]
    rows = [(f"paired with {reference}", *names[1:])]
    rows += [(label, *[column[i] for column in columns]) for i, label in enumerate(labels)]
    notes = []
    for name, comparison in zip(names[1:], comparisons, strict=True):
        skipped: dict[str, list[str]] = {}  # reason -> quantities, so a run without usage takes one line
        for key, why in comparison["skipped"].items():
            skipped.setdefault(why, []).append(QUANTITIES[key][0])
        notes += [f"{name}: {', '.join(labels)} not compared: {why}" for why, labels in skipped.items()]
    timed = [0, *(n for n, c in enumerate(comparisons, start=1) if "seconds" in c["per_task"])]
    batch = {names[n]: summaries[n]["config"].get("batch_size") for n in timed}
    if len(timed) > 1 and len(set(batch.values())) > 1:
        sizes = ", ".join(f"{name} {size}" for name, size in batch.items())
        notes.append(f"batch sizes differ ({sizes}): a task's seconds include the tasks batched beside it")
    return "\n".join(format_rows(rows) + (["", *notes] if notes else []))

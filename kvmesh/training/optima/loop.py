"""The Optima loop: sample the team's conversations, reward them, train a LoRA adapter on the best, repeat.

    iteration 0        the team as it is, and the prompt-only compact baseline, scored on validation tasks
    iteration k        rollouts of the k-th block of training tasks by the current policy (sampled, seeded)
                       -> rewards (score, tokens against the task's most, readability, penalties; `scoring`)
                       -> SFT: the best rollout per task above the threshold, the top share of those
                          (`selection`, `sft_data`, `trainers.train_sft`)
                       -> DPO: the best rollouts branched at their first turns, best against worst child
                          (`dpo_data`, `trainers.train_dpo`)
                       -> the new adapter, scored on the same validation tasks (`kvmesh eval`'s runner)
    choice             the trained iteration with the best validation accuracy (fewer generated tokens on a tie)
    --test             the choice, iteration 0 and the compact baseline scored once on test tasks, and the
                       choice compared with each on the same tasks (McNemar p, paired bootstrap intervals)
    results.json, path.png   every point (accuracy, F1, generated and prompt+completion tokens per task)

Everything is written as it finishes (`kvmesh.runs`: JSON files atomically, rollouts and branches appended to
fsynced JSONL logs), so a killed run resumes where it stopped (`resume`): finished iterations are kept; inside an
iteration, finished rollout chunks, branches, the trained adapter and the evaluation's finished samples are
kept. A fresh run that fails before its first result (a model that does not load, Ctrl-C during the first
baseline) leaves nothing behind, so the corrected command starts afresh. Rollouts and branches are seeded per
chunk, so a resumed chunk draws what the first attempt would have. Each iteration's training tasks are a block
of the train split of their own, choices read the validation split, and only `--test` reads the test split: no
task is trained on and scored, and no choice is made on test. Each point's folder holds `team.json` (with its
adapter, relative to the file, and the ids of the tasks it trained on) that `kvmesh eval --spec` runs as is, on
any data, leaving those tasks out.
"""

from __future__ import annotations

import copy
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

from kvmesh.agents.team import Team
from kvmesh.config import ConfigError
from kvmesh.evals.benchmarks import make_benchmark
from kvmesh.evals.figures import Point, plot_tradeoff
from kvmesh.evals.paired import paired_comparison
from kvmesh.evals.runner import run_eval
from kvmesh.evals.seeds import run_seeds
from kvmesh.evals.store import read_samples
from kvmesh.llm.local import load_model
from kvmesh.runs import (
    CONFIG,
    Comparison,
    Opened,
    Wording,
    append_jsonl,
    open_config,
    read_json,
    read_log,
    repair_log,
    rewrite_jsonl,
    start_run,
    write_json,
)
from kvmesh.training.examples import example_id
from kvmesh.training.optima.config import OptimaConfig
from kvmesh.training.optima.dpo_data import branch, preference_pairs
from kvmesh.training.optima.rollout import Rollout, reframed, sample_rollouts
from kvmesh.training.optima.scoring import RewardConfig, score_rollouts
from kvmesh.training.optima.selection import select_best, top_share
from kvmesh.training.optima.sft_data import sft_examples
from kvmesh.training.optima.teams import base_spec, compact_spec, eval_config, policy_spec, spec_members
from kvmesh.training.optima.trainers import ADAPTER, LoraSettings, train_dpo, train_sft

Progress = Callable[[str], None]
BASELINES = ("iteration 0", "prompt-only compact")
POINT_FIGURES = ("accuracy", "f1", "generated_tokens", "total_tokens")


# Settings that decide only how saved rollouts are rewarded, selected and trained on: a resumed run may change
# them until its first iteration has trained (rewards are recomputed from the saved rollouts).
BEFORE_TRAINING = (
    "token_weight",
    "token_count",
    "readability_weight",
    "threshold",
    "top_share",
    "train_overlong",
    "min_gap",
    "similarity",
    "reference",
    "rank",
    "learning_rate",
    "epochs",
    "train_batch_size",
    "beta",
)


OPTIMA_RUN = Wording(resume="pass {resume}", out="{out}")  # fields: the CLI shows them as flags


def _check_run(config: OptimaConfig, out: Path, progress: Progress) -> Opened:
    """A fresh run starts in an empty folder; a resumed one needs the same settings (those that decide what it
    trains), except `BEFORE_TRAINING` ones while no iteration has trained: those changes are recorded in
    config.json."""
    trained = any(out.glob("iteration-*/train.json"))
    # `test` and `eval_tasks` decide only the final, separate step; `seeds` is the loop over runs like this one
    ignore = ("resume", "out", "changed", "seeds", "test", "eval_tasks")
    rules = Comparison(ignore=ignore, allowed=() if trained else BEFORE_TRAINING)
    opened = open_config(out, asdict(config), config.resume, OPTIMA_RUN, rules)
    if opened.changed:
        record, wanted = read_json(out / CONFIG), asdict(config)
        history = [*record.get("changed", []), {k: [record.get(k), wanted[k]] for k in opened.changed}]
        write_json(out / CONFIG, {**wanted, "changed": history}, sort_keys=True)
        progress(f"resuming with changed {', '.join(opened.changed)} (before any training; recorded in config.json)")
    return opened


def _jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL log; a last line torn by a kill mid-write is dropped (from the file too)."""
    repair_log(path)
    return read_log(path)


class OptimaRun:
    """One run of the loop in `config.out`; `run()` does what is left and returns the results."""

    def __init__(self, config: OptimaConfig, progress: Progress = print, baselines: Path | None = None) -> None:
        """`baselines`: where the untrained baselines are scored (default OUT/baselines); seeds of one run share
        them, since they are greedy and the data is the same: scored once, not once per seed."""
        self.config, self.progress, self.out = config, progress, Path(config.out)
        self.baselines = baselines or self.out / "baselines"
        self.benchmark = make_benchmark(config.task, config.data_path, config.data_seed)
        self.train = self.benchmark.samples("train")
        self.by_id = {sample.id: sample for sample in self.train}
        needed = config.iterations * config.train_tasks
        if len(self.train) < needed:
            raise ConfigError(
                f"{{iterations}} x {{train_tasks}} = {needed} training tasks, the train split has {len(self.train)}",
                "OptimaConfig",
            )
        self.base = base_spec(config)
        self.reward = RewardConfig(
            token_weight=config.token_weight, readability_weight=config.readability_weight, count=config.token_count
        )
        self.lora = LoraSettings(
            base=config.model,
            rank=config.rank,
            alpha=2 * config.rank,
            learning_rate=config.learning_rate,
            epochs=config.epochs,
            batch_size=config.train_batch_size,
            beta=config.beta,
            reference=config.reference,
            seed=config.seed,
        )

    # --- evaluation ------------------------------------------------------------------------------------------

    def evaluate(self, folder: Path, spec: dict, label: str, split: str = "validation") -> dict:
        """Score `spec` on `split` (validation: `val_tasks`; test: `eval_tasks`), resumable in `folder/split`; one
        point of the path. `folder/team.json` is the spec, runnable as is by `kvmesh eval --spec`."""
        folder.mkdir(parents=True, exist_ok=True)
        spec_path = folder / "team.json"
        write_json(spec_path, _relative_adapters(spec, folder))
        tasks = self.config.val_tasks if split == "validation" else self.config.eval_tasks
        self.progress(f"{label}: scoring on {tasks} {split} tasks")
        settings = eval_config(self.config, spec=str(spec_path), split=split, limit=tasks)
        summary = run_eval(settings, folder / split, resume=True, progress=False)
        metrics, tokens = summary["metrics"], summary["tokens_per_task"]
        point = {
            "label": label,
            "split": split,
            "accuracy": metrics["accuracy"]["value"],
            "accuracy_ci95": metrics["accuracy"]["ci95"],
            "f1": metrics["f1"]["value"],
            "generated_tokens": tokens["output_tokens"]["value"],
            "total_tokens": tokens["input_tokens"]["value"] + tokens["output_tokens"]["value"],
            "tasks": summary["samples"],
            "folder": str(folder / split),
        }
        if "test_scorings" in summary:
            point["test_scorings"] = summary["test_scorings"]
        self.progress(
            f"{label} ({split}): accuracy {point['accuracy']:.3f}, F1 {point['f1']:.3f}, "
            f"{point['generated_tokens']:.1f} generated and {point['total_tokens']:.1f} prompt+completion tokens/task"
        )
        return point

    def test(self, specs: dict[str, tuple[Path, dict]], chosen: str) -> dict:
        """Score the chosen iteration and both baselines on test, once, and pair the choice with each."""
        points = {label: self.evaluate(folder, spec, label, "test") for label, (folder, spec) in specs.items()}
        runs = {label: read_samples(point["folder"]) for label, point in points.items()}
        paired = {
            f"{chosen} vs {label}": paired_comparison(runs[label], runs[chosen], names=(label, chosen))
            for label in BASELINES
        }
        for name, comparison in paired.items():
            self.progress(
                f"test, {name}: accuracy {comparison['accuracy']['other']:.3f} against "
                f"{comparison['accuracy']['reference']:.3f} on {comparison['n']} tasks, McNemar p = "
                f"{comparison['mcnemar_p']:.3g}"
            )
        return {"points": list(points.values()), "paired": paired}

    # --- one iteration ---------------------------------------------------------------------------------------

    def rollouts(self, folder: Path, team: Team, explorer: Team, iteration: int) -> list[Rollout]:
        """The iteration's rollouts, chunk by chunk (each chunk appended once finished, seeded by its index): per
        task, the policy's samples first, then `explorer`'s (the compact team), reframed as the policy's."""
        config = self.config
        block = self.train[(iteration - 1) * config.train_tasks : iteration * config.train_tasks]
        path = folder / "rollouts.jsonl"
        rows = _jsonl(path)
        counts = Counter(row["task_id"] for row in rows)
        finished = {task for task, count in counts.items() if count >= config.samples}
        if len(finished) < len(counts):  # a chunk cut short by a kill: its rows go, the chunk runs again
            rows = [row for row in rows if row["task_id"] in finished]
            rewrite_jsonl(path, rows)
        done = [Rollout.from_dict(row) for row in rows]
        for index, start in enumerate(range(0, len(block), config.batch_size)):
            chunk = [s.task for s in block[start : start + config.batch_size]]
            if all(task.id in finished for task in chunk):
                continue
            seed = config.seed * 1_000_003 + iteration * 1009 + index
            own = config.samples - config.explored_samples
            fresh = []
            if own:
                fresh += sample_rollouts(
                    team, chunk, own, config.temperature, seed, config.batch_size, score=self.score
                )
            if config.explored_samples:
                extra = sample_rollouts(
                    explorer,
                    chunk,
                    config.explored_samples,
                    config.temperature,
                    seed + 1,
                    config.batch_size,
                    score=self.score,
                )
                fresh += [reframed(replace(r, sample=r.sample + own), explorer, team, "compact") for r in extra]
            order = {example_id(task, i): i for i, task in enumerate(chunk)}
            fresh.sort(key=lambda r: (order[r.task_id], r.sample))  # task-major, as sample_rollouts orders them
            append_jsonl(path, [r.to_dict() for r in fresh])
            done += fresh
            self.progress(f"iteration {iteration}: {len({r.task_id for r in done})}/{len(block)} tasks rolled out")
        return done

    def score(self, task, result) -> float:
        sample = self.by_id[task.id]
        return float(self.benchmark.score(sample, result.answer or "").correct)

    def branches(self, folder: Path, team: Team, kept: Sequence[Rollout], iteration: int) -> list[list[Rollout]]:
        """DPO's branches: each kept rollout branched at its first `branch_turns` turns (resumable)."""
        path = folder / "branches.jsonl"
        rows = _jsonl(path)
        done = {(row["task_id"], row["turn_index"]): [Rollout.from_dict(c) for c in row["children"]] for row in rows}
        for number, rollout in enumerate(kept):
            for turn_index in range(min(self.config.branch_turns, len(rollout.turns))):
                if (rollout.task_id, turn_index) in done:
                    continue
                seed = self.config.seed * 1_000_003 + iteration * 1009 + 7919 * number + turn_index
                task = self.by_id[rollout.task_id].task
                children = branch(
                    team,
                    rollout,
                    turn_index,
                    self.config.children,
                    self.config.temperature,
                    seed,
                    task=task,
                    score=self.score,
                )
                done[(rollout.task_id, turn_index)] = children
                row = {
                    "task_id": rollout.task_id,
                    "turn_index": turn_index,
                    "children": [c.to_dict() for c in children],
                }
                append_jsonl(path, [row])
            self.progress(f"iteration {iteration}: branched {number + 1}/{len(kept)} rollouts")
        return list(done.values())

    def iterate(self, iteration: int, adapter: str | None) -> str:
        """Run iteration `iteration` (what is left of it) from `adapter`; returns the new adapter's folder."""
        config, folder = self.config, self.out / f"iteration-{iteration}"
        trained = folder / ADAPTER
        if (folder / "train.json").exists():
            return str(trained)
        folder.mkdir(parents=True, exist_ok=True)
        started, kind = time.perf_counter(), config.kind(iteration)
        policy = policy_spec(self.base, adapter, config.temperature)
        team = Team.from_spec(policy)
        explorer = Team.from_spec(compact_spec(policy, type(self.benchmark)))
        judge = load_model(config.model)  # the frozen base model: readability of each message
        rollouts = score_rollouts(self.rollouts(folder, team, explorer, iteration), self.reward, judge)
        write_json(folder / "rewards.json", [r.to_dict() for r in rollouts])
        kept = top_share(select_best(rollouts, config.threshold), config.top_share)
        self.progress(f"iteration {iteration}: {len(kept)} of {len(rollouts)} rollouts kept ({kind})")
        if kind == "sft":
            if not kept:
                best = max((r.total for r in rollouts), default=float("nan"))
                raise ConfigError(
                    f"iteration {iteration}: no rollout reached {{threshold}} {config.threshold} (the best reward was "
                    f"{best:.3f}; rewards are in {folder / 'rewards.json'}): lower {{threshold}} and resume",
                    "OptimaConfig",
                )
            data = sft_examples(kept, judge.tokenizer, keep_overlong=config.train_overlong)
            if not data:
                raise ConfigError(
                    f"iteration {iteration}: the {len(kept)} kept rollouts have no turn to train on (every turn was "
                    "cut at {max_new_tokens} or answered by a tool): raise {max_new_tokens} or pass {train_overlong}",
                    "OptimaConfig",
                )
            losses = train_sft(data, self.lora, folder, adapter)
        else:
            branched = [
                score_rollouts(children, self.reward, judge)
                for children in self.branches(folder, team, kept, iteration)
            ]
            data = preference_pairs(branched, config.min_gap, config.similarity)
            dpo = LoraSettings(**{**asdict(self.lora), "learning_rate": self.lora.learning_rate / 10})
            losses = train_dpo(data, dpo, folder, adapter)
        record = {
            "kind": kind,
            "rollouts": len(rollouts),
            "kept": len(kept),
            "examples" if kind == "sft" else "pairs": len(data),
            "losses": losses,
            "seconds": time.perf_counter() - started,
        }
        write_json(folder / "train.json", record)
        self.progress(
            f"iteration {iteration}: trained on {len(data)} {kind} rows; loss {losses[0]:.3f} -> {losses[-1]:.3f}"
        )
        return str(trained)

    def run(self) -> dict:
        with start_run(self.out, lambda: _check_run(self.config, self.out, self.progress)):
            return self._run()

    def _run(self) -> dict:
        started = time.perf_counter()
        compact = compact_spec(self.base, type(self.benchmark))
        specs = {
            "iteration 0": (self.baselines / "iteration-0", self.base),
            "prompt-only compact": (self.baselines / "compact", compact),
        }
        points = [self.evaluate(folder, spec, label) for label, (folder, spec) in specs.items()]
        adapter = None
        for iteration in range(1, self.config.iterations + 1):
            adapter = self.iterate(iteration, adapter)
            label, folder = f"iteration {iteration}", self.out / f"iteration-{iteration}"
            # the tasks its adapters trained on, so that `kvmesh eval --spec` on any data leaves them out
            trained_on = [s.id for s in self.train[: iteration * self.config.train_tasks]]
            specs[label] = (folder, policy_spec(self.base, adapter) | {"seen_ids": trained_on})
            points.append(self.evaluate(folder, specs[label][1], label))
        chosen = choose_iteration(points)
        self.progress(f"chosen on validation: {chosen}")
        results = {"points": points, "chosen": chosen, "config": asdict(self.config)}
        if self.config.test:
            results["test"] = self.test({label: specs[label] for label in (*BASELINES, chosen)}, chosen)
        elif (self.out / "results.json").is_file() and "test" in read_json(self.out / "results.json"):
            results["test"] = read_json(self.out / "results.json")["test"]  # scored before: kept, not redone
        results["seconds"] = time.perf_counter() - started
        results["plot"] = str(plot_path(points, self.out / "path.png"))
        write_json(self.out / "results.json", results)
        return results


def _relative_adapters(spec: dict, folder: Path) -> dict:
    """`spec` with each member's adapter path relative to `folder`, where the spec is written (specs read a
    relative adapter from their own folder), so the run folder can move and `kvmesh eval --spec` still runs it."""
    spec = copy.deepcopy(spec)
    for member in spec_members(spec):
        if member.get("adapter"):
            member["adapter"] = os.path.relpath(Path(member["adapter"]).resolve(), folder.resolve())
    return spec


def choose_iteration(points: Sequence[dict]) -> str:
    """The trained iteration with the best validation accuracy; fewer generated tokens break a tie, then the
    earlier iteration."""
    trained = [p for p in points if p["label"] not in BASELINES]
    return min(trained, key=lambda p: (-p["accuracy"], p["generated_tokens"], points.index(p)))["label"]


def plot_path(points: Sequence[dict], path: Path) -> Path:
    """Accuracy against generated tokens per task for every point; trained iterations are stars."""
    marks = [
        Point(
            p["label"],
            p["accuracy"],
            *p["accuracy_ci95"],
            p["generated_tokens"],
            p["label"] not in BASELINES,
            p["tasks"],
        )
        for p in points
    ]
    return plot_tradeoff(marks, path, xlabel="generated tokens per task", title="Optima: accuracy against tokens")


def optima_train(config: OptimaConfig, progress: Progress = print) -> dict:
    """Run (or resume) the loop `config` describes; returns what results.json holds. With `seeds`, one run per
    seed in OUT/seed-N, then OUT/seeds.json with every point's figures across seeds (validation, and test with
    `--test`); returns that summary with each seed's results under "runs"."""
    if not config.seeds:
        return OptimaRun(config, progress).run()

    def run_one(seed: int, folder: Path) -> dict:
        progress(f"seed {seed}: {folder}")
        one = replace(config, seed=seed, seeds=[], out=str(folder))
        say = lambda line: progress(f"seed {seed}: {line}")  # noqa: E731
        return OptimaRun(one, say, baselines=Path(config.out) / "baselines").run()

    summary, runs = run_seeds(config.seeds, config.out, run_one, seed_figures, config=asdict(config))
    return summary | {"runs": runs}


def seed_figures(results: dict) -> dict[str, float]:
    """One seed's figures, flat: each validation point's, the choice's on validation, and with --test each
    tested point's and the paired accuracy differences."""
    figures = {}
    for point in results["points"]:
        figures |= {f"validation/{point['label']}/{k}": point[k] for k in POINT_FIGURES}
    chosen = next(p for p in results["points"] if p["label"] == results["chosen"])
    figures |= {f"validation/chosen/{k}": chosen[k] for k in POINT_FIGURES}
    for point in results.get("test", {}).get("points", []):
        label = "chosen" if point["label"] == results["chosen"] else point["label"]
        figures |= {f"test/{label}/{k}": point[k] for k in POINT_FIGURES}
    for name, comparison in results.get("test", {}).get("paired", {}).items():
        figures[f"test/{name.replace(results['chosen'], 'chosen')}/accuracy_difference"] = comparison[
            "accuracy_difference"
        ]["value"]
    return figures

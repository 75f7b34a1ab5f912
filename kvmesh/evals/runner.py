"""`kvmesh eval`: run a team on a benchmark, one durable line per finished sample, a summary at the end.

    samples = benchmark.samples(split)[:limit]            # stable ids; resume skips the finished ones
    for chunk of batch_size pending samples:
        for each TeamFinished event of runtime.execute(team, chunk tasks):   # as each task finishes
            score its answer -> store.add(sample line)                         # appended, flushed, fsynced
    summary.json <- metrics with 95% intervals, token statistics, configuration, versions

`--oracle` feeds gold answers and `--completions FILE` feeds answers from any source through the same `score`
without loading a model. Samples are written in the order they finish; ids say which is which.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kvmesh.agents import TeamFinished
from kvmesh.agents.graph import RUNNABLE_CHANNELS
from kvmesh.agents.runtime import execute
from kvmesh.evals.benchmarks import Sample, make_benchmark
from kvmesh.evals.jsonl import read_jsonl
from kvmesh.evals.results import open_run, read_samples
from kvmesh.evals.roles import benchmark_team
from kvmesh.evals.sandbox import NOT_A_BOUNDARY
from kvmesh.evals.stats import mean_interval, proportion

log = logging.getLogger("kvmesh")


@dataclass
class EvalConfig:
    """What `kvmesh eval` runs; saved as config.json beside the results.

    Args:
        benchmark: gsm8k, humaneval or infoqa.
        model: alias, local folder or Hugging Face id for every agent (ignored with spec).
        topology: a preset, or "single" for one agent alone.
        agents: number of agents (roles cycle through the benchmark's list).
        rounds: rounds of communication.
        decision: decision, majority or last.
        spec: a team spec file; replaces model, topology, agents, rounds and decision.
        split: data split (gsm8k train/test; infoqa train/validation/test; humaneval test).
        limit: run only the first `limit` samples of the split.
        seed: seeds sampling and InfoQA generation.
        batch_size: tasks per batched runtime pass.
        max_new_tokens: cap on tokens per agent turn.
        data_path: GSM8K folder, or an InfoQA JSONL file.
        allow_code_execution: lets generated code run in the sandbox: required for HumanEval; for GSM8K it
            runs the programmer's code (without it, the programmer only writes about its calculation).
        oracle: score gold answers instead of running a model.
        completions: a JSONL file of {"id", "completion"} to score instead of running a model.
        shards: InfoQA only: "own" (each agent its shard), "all" (everyone reads all) or "none".
        channel: how agents read each other (ignored with spec): text, or kv-reuse (every edge and the decision
            maker read the senders' KV caches through the reuse engine).
        designer: a saved topology designer (`kvmesh design train` writes one): the team it was trained
            with, each task on the graph it designs; replaces spec and the team options. Samples it
            trained or validated on are left out (also when a spec names the designer).
        exclude_ids: sample ids to leave out as well (`kvmesh design eval` passes every id any compared
            designer saw, so that each team runs on the same test tasks).
    """

    benchmark: str
    model: str = "smollm2-135m"
    topology: str = "chain"
    agents: int = 3
    rounds: int = 1
    decision: str = "decision"
    spec: str | None = None
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int = 256
    data_path: str | None = None
    allow_code_execution: bool = False
    oracle: bool = False
    completions: str | None = None
    shards: str = "own"
    channel: str = "text"
    designer: str | None = None
    exclude_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.oracle and self.completions:
            raise ValueError("use either --oracle or --completions, not both")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.channel not in RUNNABLE_CHANNELS:
            raise ValueError(f"--channel must be one of {', '.join(RUNNABLE_CHANNELS)}, got {self.channel!r}")
        if self.designer and self.spec:
            raise ValueError("use either --designer or --spec: a designer brings the team it was trained with")


# Settings newer than some saved runs, at the value those runs behaved with: such runs still resume.
ADDED_SETTINGS = {"designer": None, "exclude_ids": []}


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for package in ("kvmesh", "torch", "transformers", "langchain-core"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _load_completions(path: str, known: set[str]) -> dict[str, str]:
    """{id: completion} from a JSONL file; every id must be a task of the run, once, with a string completion.
    Tasks without a line are scored as wrong answers (an empty completion) and counted in the summary."""
    answers: dict[str, str] = {}
    for where, row in read_jsonl(path):
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("completion"), str):
            raise ValueError(f"{where}: need a JSON object with 'id' and a string 'completion'")
        task_id = str(row["id"])
        if task_id not in known:
            raise ValueError(f"{where}: id {task_id!r} is not a task of this run (check --split and --limit)")
        if task_id in answers:
            raise ValueError(f"{where}: duplicate id {task_id!r}")
        answers[task_id] = row["completion"]
    return answers


def _sample_line(sample: Sample, answer: str, score, result=None, designed: bool = False) -> dict:
    line = {
        "id": sample.id,
        "gold": sample.gold,
        "correct": score.correct,
        "extracted": score.extracted,
        "answer": answer,
        **score.metrics,
    }
    if result is not None:
        data = result.to_dict()
        line |= {key: data[key] for key in ("messages", "usage", "stop_reason")}
        if designed:
            line["graph"] = data["graph"]
    return line


def run_eval(config: EvalConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) one evaluation into `out`; returns the summary also written to summary.json."""
    benchmark = make_benchmark(
        config.benchmark, config.data_path, config.seed, config.allow_code_execution, config.shards
    )
    samples = benchmark.samples(config.split)
    team = None if config.oracle or config.completions else _team(config)
    seen = set(config.exclude_ids)
    if team is not None and team.designer is not None:  # from --designer or a spec naming one
        seen |= set(getattr(team.designer, "seen_ids", ()))
    excluded = sum(1 for s in samples if s.id in seen)
    samples = [s for s in samples if s.id not in seen][: config.limit]
    if excluded:
        log.info("left out %d samples a designer trained or validated on", excluded)
    by_id = {s.id: s for s in samples}
    started = time.perf_counter()
    with open_run(out, asdict(config), resume, ADDED_SETTINGS) as store:
        pending = [by_id[i] for i in store.pending(list(by_id))]
        bar = _Progress(len(samples), len(samples) - len(pending)) if progress else None
        if config.oracle or config.completions:
            answers = _load_completions(config.completions, set(by_id)) if config.completions else None
            for sample in pending:
                answer = sample.oracle if answers is None else answers.get(sample.id, "")
                line = _sample_line(sample, answer, benchmark.score(sample, answer))
                if answers is not None and sample.id not in answers:
                    line["completion_missing"] = True
                store.add(line)
                if bar:
                    bar.tick(line)
        else:
            _write_graph(team, out)
            for sample in pending:  # refuse shards that no agent would read, before any model call
                sample.task.check_shards(team.agent_names)
            for start in range(0, len(pending), config.batch_size):
                chunk = pending[start : start + config.batch_size]
                for event in execute(team, [s.task for s in chunk]):
                    if isinstance(event, TeamFinished):
                        sample, answer = chunk[event.task_index], event.result.answer or ""
                        score = benchmark.score(sample, answer)
                        line = _sample_line(sample, answer, score, event.result, team.designer is not None)
                        store.add(line)
                        if bar:
                            bar.tick(line)
        if bar is not None:
            bar.close()
    previous = Path(out, "summary.json")
    earlier = 0.0  # seconds spent by earlier parts of a resumed run
    if resume and previous.exists():
        earlier = json.loads(previous.read_text()).get("seconds") or 0.0
    engine = team.reuse.stats() if team is not None and team.uses_kv_reuse else None
    summary = summarize(out, config, earlier + time.perf_counter() - started, engine)
    if seen:
        summary["excluded_seen"] = excluded
    Path(out, "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write_graph(team, out: str | Path) -> None:
    """graph.json beside the results, for `kvmesh viz RUN`: the graph, the decision maker, each agent's role."""
    from kvmesh.topology.draw import team_picture_options

    data = {"graph": team.graph.to_dict(), **team_picture_options(team)}
    Path(out, "graph.json").write_text(json.dumps(data, indent=2))


def _team(config: EvalConfig):
    from kvmesh.agents import Team

    if config.designer:
        from kvmesh.topology import load_designer

        team = load_designer(config.designer).apply()
    elif config.spec:
        team = Team.from_spec(config.spec)
    else:
        team = benchmark_team(
            config.benchmark,
            config.model,
            config.topology,
            config.agents,
            config.rounds,
            config.decision,
            config.max_new_tokens,
            seed=config.seed,
            code_execution=config.allow_code_execution,
            channel=config.channel,
        )
        programmer = any(agent.role == "programming expert" for agent in team.agents)
        if config.benchmark == "gsm8k" and programmer and not config.allow_code_execution:
            log.warning("the programming expert's code is not run; pass --allow-code-execution to run it")
    members = [*team.agents, *([team.decision.agent] if team.decision.agent else [])]
    running = sorted({f"{a.name}: {t.name}" for a in members for t in a.tools if t.runs_code})
    if running and not config.allow_code_execution:
        raise PermissionError(
            f"the team's tools run generated code ({', '.join(running)}); pass --allow-code-execution to accept "
            f"that ({NOT_A_BOUNDARY})"
        )
    return team


class _Progress:
    """A tqdm bar showing the running accuracy and tokens per task of the samples finished in this process."""

    def __init__(self, total: int, done: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, desc="eval", unit="task", dynamic_ncols=True, mininterval=1.0)
        self.counted = self.correct = self.tokens = 0

    def tick(self, line: dict) -> None:
        self.counted += 1
        self.correct += bool(line["correct"])
        self.tokens += line.get("usage", {}).get("total", {}).get("total_tokens", 0)
        self.bar.set_postfix(acc=f"{self.correct / self.counted:.3f}", tok_per_task=f"{self.tokens / self.counted:.0f}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _agent_means(usages: list[dict | None]) -> dict:
    """Mean prompt, completion, cached and total tokens and model calls of one agent per task (0 where absent)."""
    n = len(usages)

    def mean(get) -> float:
        return sum(get(u) for u in usages if u) / n

    return {
        "input_tokens": mean(lambda u: u["input_tokens"]),
        "output_tokens": mean(lambda u: u["output_tokens"]),
        "cache_read": mean(lambda u: u["input_token_details"]["cache_read"]),
        "total_tokens": mean(lambda u: u["total_tokens"]),
        "calls": mean(lambda u: u["calls"]),
    }


def _reuse_summary(turns: list[dict], engine: dict | None) -> dict:
    """kv-reuse over every saved turn that had a cached piece to reuse (so it survives resume), plus the
    engine's anchor memory when this process ran the team."""
    reused = [m for m in turns if m["kv_reuse"] == "reused"]
    summary = {
        "turns": len(turns),
        "reused_turns": len(reused),
        "reuse_rate": len(reused) / len(turns),
        "cache_read_tokens": sum(m["usage"]["input_token_details"]["cache_read"] for m in reused),
        "prompt_tokens": sum(m["usage"]["input_tokens"] for m in turns),
    }
    if engine is not None:
        keys = ("anchor_memory_mb", "anchors", "template_encode_s", "config")
        summary |= {"engine": {key: engine[key] for key in keys}}
    return summary


def summarize(out: str | Path, config: EvalConfig, seconds: float | None = None, engine: dict | None = None) -> dict:
    """Metrics with 95% intervals and token statistics over every sample in `out`; `engine`: the team's
    kv-reuse statistics (`ReuseChannel.stats()`) when it ran in this process."""
    rows = read_samples(out)
    if not rows:
        raise ValueError(f"{out} has no finished samples to summarize")
    n = len(rows)
    metrics = {"accuracy": proportion(sum(bool(r["correct"]) for r in rows), n)}
    for key in ("strict", "flexible", "pass@1", "f1", "answer_in_reply"):
        if key in rows[0]:
            values = [float(r[key]) for r in rows]
            metrics[key] = proportion(int(sum(values)), n) if key != "f1" else mean_interval(values, bounds=(0, 1))
    usage_rows = [r["usage"] for r in rows if "usage" in r]
    tokens = {}
    if usage_rows:
        for field in ("input_tokens", "output_tokens"):
            tokens[field] = mean_interval([u["total"][field] for u in usage_rows])
        tokens["cache_read"] = mean_interval([u["total"]["input_token_details"]["cache_read"] for u in usage_rows])
        tokens["total_tokens"] = mean_interval([u["total"]["total_tokens"] for u in usage_rows])
        agents = sorted({a for u in usage_rows for a in u["per_agent"]})
        tokens["model_calls"] = mean_interval([u["total"]["calls"] for u in usage_rows])
        tokens["per_agent"] = {a: _agent_means([u["per_agent"].get(a) for u in usage_rows]) for a in agents}
    missing = sum(1 for r in rows if r.get("completion_missing"))
    kv_turns = [m for r in rows for m in r.get("messages", ()) if "kv_reuse" in m]
    return {
        "benchmark": config.benchmark,
        "samples": n,
        **({"missing_completions": missing} if config.completions else {}),
        "metrics": metrics,
        "tokens_per_task": tokens,
        **({"kv_reuse": _reuse_summary(kv_turns, engine)} if kv_turns else {}),
        "seconds": seconds,
        "config": asdict(config),
        "seed": config.seed,
        "versions": _versions(),
    }

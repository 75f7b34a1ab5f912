"""`kvmesh eval`: run a team on a benchmark, one durable line per finished sample, a summary at the end.

    plan = plan_eval(config)                   the benchmark's samples of the split, minus what a designer saw
                                               (and `exclude_ids`), cut to `limit`; stable ids
    with open_run(out, config) as store:       the single writer: config.json checked on resume, samples.jsonl
        for line in run_chunk(config, pending):    builds its team (once per process), runs the samples
            store.add(line)                        `batch_size` at a time through `Team.stream_batch`, scores
                                                   each as it finishes -> appended, flushed, fsynced
    summary.json <- summarize(out, config)    metrics with 95% intervals, token statistics, configuration

`run_chunk(config, samples)` needs nothing but its arguments, so any worker process can run a share of the
samples; it keeps its team for the next chunk of the same config, so a kv-reuse team's anchors carry over.
`--oracle` feeds gold answers and `--completions FILE` feeds answers from any source through the same `score`
without loading a model. Samples are written in the order they finish; ids say which is which.

A designer (`designer`, or a spec naming one) lives above this package: the caller passes the function that
loads one (`load_designer`, as `kvmesh.topology.load_designer`; the CLI does).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from kvmesh.agents.decision import DECISION_METHOD, METHODS
from kvmesh.agents.events import TeamFinished
from kvmesh.agents.spec import spec_seen_ids
from kvmesh.agents.team import Team
from kvmesh.config import ConfigError, check_choices
from kvmesh.evals.benchmarks import (
    BENCHMARKS,
    SINGLE,
    Benchmark,
    Sample,
    benchmark_class,
    configured_team,
    make_benchmark,
)
from kvmesh.evals.benchmarks.gsm8k import ENV_VAR as GSM8K_PATH_VARIABLE
from kvmesh.evals.benchmarks.infoqa import SHARD_MODES
from kvmesh.evals.benchmarks.splits import ALL
from kvmesh.evals.calibrate import MIN_TASKS, calibrate, needs_calibration
from kvmesh.evals.channel_settings import channels_field, check_channel_settings
from kvmesh.evals.executors import LocalExecutor
from kvmesh.evals.jsonl import read_jsonl
from kvmesh.evals.ledger import TEST_SPLITS, ScoringKeys, count_run, run_id
from kvmesh.evals.sandbox import NOT_A_BOUNDARY
from kvmesh.evals.store import discard_if_empty, open_run
from kvmesh.evals.summary import summarize
from kvmesh.graph.presets import PRESETS, TEMPORAL_MODES
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL, channel_name, channels_help, check_channel, save_channels
from kvmesh.runs import CONFIG, content_hash, write_json

log = logging.getLogger("kvmesh")
DesignerLoader = Callable[..., object]  # (folder, team=None) -> a designer with .apply() and .seen_ids


@dataclass
class EvalConfig:
    """What `kvmesh eval` runs; saved as config.json beside the results.

    Args:
        benchmark: gsm8k, humaneval or infoqa.
        model: alias, local folder or Hugging Face id for every agent.
        topology: a preset, or "single" for one agent alone.
        agents: number of agents (roles cycle through the benchmark's list).
        rounds: rounds of communication.
        temporal: edges between rounds: none, self (each agent reads its own last reply) or complete (each reads
            every agent's); default: complete when rounds > 1, else none.
        decision: decision, majority or last.
        spec: a team spec file; it sets the team, so the team options (model, topology, agents, rounds, temporal,
            decision, channel, max_new_tokens) are not used (the CLI refuses them beside it).
        split: train, validation or test (disjoint), or all: every task of a held-out source (a user's
            file, HumanEval); default: the benchmark's scoring split (test; all for those). Scoring test or all
            is counted per configuration (`kvmesh.evals.ledger`) and the count recorded in summary.json.
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
        channel: how agents read each other, on every edge (and the decision maker's reading).
        designer: a saved topology designer (`kvmesh design train` writes one): the team it was trained
            with, each task on the graph it designs; replaces spec and the team options. Samples it
            trained or validated on are left out (also when a spec names the designer).
        channels: settings of the team's channel, by channel name (its settings class's fields; on the command
            line `--<channel>-<field>`, e.g. `--kv-reuse-anchors-dir DIR` or its alias `--anchors DIR`, which keeps
            kv-reuse's anchors across runs, saved after each chunk of samples, also when interrupted).
        calibrate: training-split tasks to calibrate channels on that ask for it before use (kv-select without
            layers or scores: at least 16; 0: none, kv-select then chooses by the depth prior alone). A spec
            whose kv-select settings hold layers or scores is not calibrated again.
        exclude_ids: sample ids to leave out as well (`kvmesh design eval` passes every id any compared
            designer saw, so that each team runs on the same test tasks).
    """

    benchmark: str = field(metadata={"choices": BENCHMARKS})
    model: str = "smollm2-135m"
    topology: str = field(default="chain", metadata={"choices": (*PRESETS, SINGLE)})
    agents: int = 3
    rounds: int = 1
    temporal: str | None = field(default=None, metadata={"choices": TEMPORAL_MODES})
    decision: str = field(default=DECISION_METHOD, metadata={"choices": METHODS})
    spec: str | None = None
    split: str | None = None
    limit: int | None = None
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int = 256
    data_path: str | None = None
    allow_code_execution: bool = False
    oracle: bool = False
    completions: str | None = None
    shards: str = field(default="own", metadata={"choices": SHARD_MODES})
    channel: str = field(default=DEFAULT_CHANNEL, metadata={"check": channel_name, "more_help": channels_help})
    designer: str | None = None
    channels: dict[str, dict] = field(default_factory=dict)
    calibrate: int = 16
    exclude_ids: list[str] = field(default_factory=list)

    # what a spec or a designer sets instead: not used then, and not recorded (their team is, resolved)
    team_fields: ClassVar[tuple[str, ...]] = (
        "model",
        "topology",
        "agents",
        "rounds",
        "temporal",
        "decision",
        "channel",
        "max_new_tokens",
        "channels",
    )

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.split is None:  # resolved here, so that config.json records the split a run scored
            self.split = benchmark_class(self.benchmark).default_split(self.data_path)
        check_channel(self.channel, f"{owner}.channel")
        check_choices(self)
        if self.oracle and self.completions:
            raise ConfigError("use either {oracle} or {completions}, not both", owner)
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"{{limit}} must be at least 1, got {self.limit}", owner)
        if self.batch_size < 1:
            raise ConfigError(f"{{batch_size}} must be at least 1, got {self.batch_size}", owner)
        check_channel_settings(self)
        if self.calibrate and self.calibrate < MIN_TASKS:
            raise ConfigError(f"{{calibrate}} must be 0 or at least {MIN_TASKS} tasks, got {self.calibrate}", owner)
        if self.designer and self.spec:
            raise ConfigError("use either {designer} or {spec}: a designer brings the team it was trained with", owner)

    @property
    def scores_given_answers(self) -> bool:
        """Whether answers come from the oracle or a completions file instead of a team."""
        return bool(self.oracle or self.completions)


# Settings newer than some saved runs, at the value those runs behaved with: such runs still resume.
# A value, or a function of the new configuration giving the value older runs behaved with: before `temporal`
# existed, no preset had temporal edges, which the new default (None) gives only for one round.
ADDED_SETTINGS = {
    "designer": None,
    "exclude_ids": [],
    "temporal": lambda config: None if config.get("rounds", 1) == 1 else "none",
    "channels": {},
    "calibrate": 16,
}
RECORDS = ("inputs", "team")  # what older runs lack


# --- the team ---------------------------------------------------------------------------------------------------

# The last config's team (a worker runs one config) and the training task ids its channels calibrated on.
_BUILT: dict[str, tuple[Team, list[str]]] = {}


def build_team(config: EvalConfig, load_designer: DesignerLoader | None = None) -> tuple[Team, list[str]]:
    """The team `config` describes (a designer's, a spec's, or the benchmark's default team), and the ids of the
    training tasks its channels were calibrated on here (none when nothing asked for it)."""
    if config.designer:
        if load_designer is None:
            raise ConfigError("{designer} needs a designer loader: pass load_designer=kvmesh.topology.load_designer")
        team = load_designer(config.designer).apply()
    elif config.spec:
        team = Team.from_spec(config.spec, designer_loader=load_designer)
    else:
        team = configured_team(config)
        programmer = any(agent.role == "programming expert" for agent in team.agents)
        if config.benchmark == "gsm8k" and programmer and not config.allow_code_execution:
            log.warning("the programming expert's code is not run; pass --allow-code-execution to run it")
    if config.channels and not (config.spec or config.designer):
        team = team.with_channels(config.channels)
    calibrated_on = []
    if config.calibrate and needs_calibration(team):
        tasks = calibration_tasks(config)
        team, calibrated_on = calibrate(team, tasks, config.batch_size), [task.id for task in tasks]
    running = sorted({f"{a.name}: {t.name}" for a in team.members for t in a.tools if t.runs_code})
    if running and not config.allow_code_execution:
        raise PermissionError(
            f"the team's tools run generated code ({', '.join(running)}); pass --allow-code-execution to accept "
            f"that ({NOT_A_BOUNDARY})"
        )
    return team, calibrated_on


def calibration_tasks(config: EvalConfig) -> list:
    """The first `config.calibrate` tasks of the benchmark's training split, for the channels that calibrate."""
    if config.split in ("train", ALL):  # calibration tasks would be scored too
        raise ConfigError(
            f"the team's channels calibrate on the train split, which {{split}} {config.split} contains: score "
            "{split} test (or validation), or pass {calibrate} 0",
            "EvalConfig",
        )
    benchmark = make_benchmark(config.benchmark, config.data_path, config.seed, config.allow_code_execution)
    try:
        samples = benchmark.samples("train")
    except (KeyError, ValueError) as error:
        raise ConfigError(
            f"the team's channels calibrate on the train split, which {config.benchmark} lacks: pass {{calibrate}} 0"
            " to choose layers by the depth prior alone",
            "EvalConfig",
        ) from error
    if len(samples) < config.calibrate:
        raise ConfigError(f"{{calibrate}} {config.calibrate}: the train split has {len(samples)} tasks", "EvalConfig")
    return [sample.task for sample in samples[: config.calibrate]]


def team_of(config: EvalConfig, load_designer: DesignerLoader | None = None, fresh: bool = False) -> Team:
    """This process's team for `config`, built on first use (or anew with `fresh`)."""
    key = json.dumps(asdict(config), sort_keys=True)
    if fresh or key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = build_team(config, load_designer)
    return _BUILT[key][0]


def calibrated_on(config: EvalConfig) -> list[str]:
    """The training task ids the channels of this process's team for `config` were calibrated on."""
    return _BUILT.get(json.dumps(asdict(config), sort_keys=True), (None, []))[1]


# --- plan, chunks, store, summary ------------------------------------------------------------------------------


@dataclass
class EvalPlan:
    benchmark: Benchmark
    samples: list[Sample]  # what the run scores, in order
    seen: int  # ids a designer saw or `exclude_ids` names
    excluded: int  # samples of the split left out for that


def plan_eval(config: EvalConfig, team: Team | None = None, load_designer: DesignerLoader | None = None) -> EvalPlan:
    """The samples `config` runs: its split, minus what its designer saw and `exclude_ids`, cut to `limit`. A
    designer that chose one fixed graph leaves no designer on the team, so `config.designer` is read as well."""
    benchmark = make_benchmark(
        config.benchmark, config.data_path, config.seed, config.allow_code_execution, config.shards
    )
    samples = benchmark.samples(config.split)
    seen = set(config.exclude_ids)
    if team is not None and team.designer is not None:  # from --designer or a spec naming one
        seen |= set(team.designer.seen_ids)
    if config.designer and load_designer is not None:
        seen |= set(load_designer(config.designer).seen_ids)
    if config.spec:  # a trained team's spec names the tasks its training saw (an Optima iteration's)
        seen |= set(spec_seen_ids(config.spec))
    excluded = sum(1 for s in samples if s.id in seen)
    if excluded:
        log.info("left out %d samples the team's training saw", excluded)
    return EvalPlan(benchmark, [s for s in samples if s.id not in seen][: config.limit], len(seen), excluded)


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


def _load_completions(path: str, known: set[str] | None = None) -> dict[str, str]:
    """{id: completion} from a JSONL file; every id once, with a string completion, and (given `known`) a task
    of the run. Tasks without a line are scored as wrong answers (an empty completion) and counted in the
    summary."""
    answers: dict[str, str] = {}
    for where, row in read_jsonl(path):
        if not isinstance(row, dict) or "id" not in row or not isinstance(row.get("completion"), str):
            raise ValueError(f"{where}: need a JSON object with 'id' and a string 'completion'")
        task_id = str(row["id"])
        if known is not None and task_id not in known:
            raise ValueError(f"{where}: id {task_id!r} is not a task of this run (check --split and --limit)")
        if task_id in answers:
            raise ValueError(f"{where}: duplicate id {task_id!r}")
        answers[task_id] = row["completion"]
    return answers


def run_chunk(
    config: EvalConfig, samples: Sequence[Sample], load_designer: DesignerLoader | None = None
) -> Iterator[dict]:
    """Score `samples`, yielding one sample line each as it finishes (the team runs them `batch_size` at a
    time); with oracle or completions, no model runs."""
    benchmark = make_benchmark(
        config.benchmark, config.data_path, config.seed, config.allow_code_execution, config.shards
    )
    if config.scores_given_answers:
        answers = _load_completions(config.completions) if config.completions else None
        for sample in samples:
            answer = sample.oracle if answers is None else answers.get(sample.id, "")
            line = _sample_line(sample, answer, benchmark.score(sample, answer))
            if answers is not None and sample.id not in answers:
                line["completion_missing"] = True
            yield line
        return
    team = team_of(config, load_designer)
    try:
        for event in team.stream_batch([s.task for s in samples], batch_size=config.batch_size):
            if isinstance(event, TeamFinished):
                sample, answer = samples[event.task_index], event.result.answer or ""
                score = benchmark.score(sample, answer)
                yield _sample_line(sample, answer, score, event.result, team.designer is not None)
    finally:
        save_channels(team.channels)  # kv-reuse's anchors, when a folder keeps them


@dataclass(frozen=True)
class EvalWork:
    """One evaluation's work as any process can run it (an executor ships it to its workers)."""

    config: EvalConfig
    load_designer: DesignerLoader | None = None

    def run(self, samples: Sequence[Sample]) -> Iterator[dict]:
        return run_chunk(self.config, samples, self.load_designer)

    def team_stats(self) -> dict:
        """The channel statistics of the team this process ran (none with given answers)."""
        return {} if self.config.scores_given_answers else team_of(self.config, self.load_designer).channel_stats()


# where input files are: not compared on resume (a relative and an absolute path name one file; a moved folder is
# the same input), since `inputs` records each one's content hash, which is
LOCATIONS = ("spec", "completions", "designer", "data_path")


def run_record(config: EvalConfig, team: Team | None) -> dict:
    """What config.json records: the settings in effect (a spec's or designer's run leaves out the team options
    they replace), the team resolved (`Team.to_spec`, when one runs) and a content hash of every input file."""
    settings = asdict(config)
    if config.spec or config.designer:
        for name in EvalConfig.team_fields:
            settings.pop(name)
    inputs = {name: str(getattr(config, name)) for name in ("spec", "completions", "designer") if getattr(config, name)}
    source = config.data_path or (os.environ.get(GSM8K_PATH_VARIABLE) if config.benchmark == "gsm8k" else None)
    if source:
        inputs["data"] = source
    if team is not None and getattr(team.designer, "path", None) is not None:
        inputs["designer"] = str(team.designer.path)  # also when a spec names it
    record = settings | {"inputs": {name: content_hash(Path(path).expanduser()) for name, path in inputs.items()}}
    if team is not None:
        record["team"] = team.to_spec()
    return record


def test_keys(config: EvalConfig, record: dict, team: Team | None) -> ScoringKeys | None:
    """What a run on test is counted under (`kvmesh.evals.ledger`); None when it scores no test split, or no team
    ran (an oracle or given completions check the scorer, not a system)."""
    if config.split not in TEST_SPLITS or team is None:
        return None
    adapters = {a.name: content_hash(Path(a.adapter)) for a in team.members if a.adapter is not None}
    return ScoringKeys.of(record, adapters)


def team_models(team: Team) -> list[str]:
    return sorted({agent.model_spec for agent in team.members})


def run_eval(
    config: EvalConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    load_designer: DesignerLoader | None = None,
    executor=None,
) -> dict:
    """Run (or resume) one evaluation into `out`; returns the summary also written to summary.json.
    `executor` runs the samples (`kvmesh.evals.executors`: here by default, or on Ray actors); this process
    stays the one writer of the run folder either way.

    Everything that can fail at the start fails before `out` is touched: the team (every model loaded), the
    samples (their shards must fit the team and its models' context) and a completions file. A fresh run that
    still fails before its first sample (a crash, Ctrl-C) removes what it wrote."""
    executor = executor or LocalExecutor()
    team = team_of(config, load_designer, fresh=True)
    plan = plan_eval(config, team, load_designer)
    if len(plan.samples) < (config.limit or 0):
        log.warning(
            "--limit %d but the %s split has %d samples to run; running those",
            config.limit,
            config.split,
            len(plan.samples),
        )
    running = None if config.scores_given_answers else team
    if running is not None:
        running.check_tasks([s.task for s in plan.samples])
    if config.completions:  # every id of the file must be a task of the run, finished or not
        _load_completions(config.completions, {s.id for s in plan.samples})
    record = run_record(config, running)
    folder = Path(out)
    before = frozenset(p.name for p in folder.iterdir()) if folder.is_dir() else frozenset()
    started = time.perf_counter()
    try:
        # a spec or designer run records no team fields; one saved by older code did, at their defaults
        optional = RECORDS + (EvalConfig.team_fields if config.spec or config.designer else ())
        with open_run(
            out, record, resume, ADDED_SETTINGS, optional=optional, upgrade=channels_field, ignore=LOCATIONS
        ) as store:
            by_id = {s.id: s for s in plan.samples}
            pending = [by_id[i] for i in store.pending(list(by_id))]
            # for `kvmesh viz RUN`: the graph, the decision maker, each agent's role (an oracle's: the team it
            # stands in for)
            graph = {"graph": team.graph.to_dict(), **team.picture_options()}
            write_json(Path(out, "graph.json"), graph)
            bar = _Progress(len(plan.samples), len(plan.samples) - len(pending)) if progress else None
            keys = test_keys(config, record, running)
            try:
                for line in executor.lines(EvalWork(config, load_designer), pending):
                    if keys is not None:  # a look at test from its first scored task; a resume is the same look
                        count_run(keys, run_id(out), out)
                        keys = None
                    store.add(line)
                    if bar:
                        bar.tick(line)
            finally:  # also on Ctrl-C, so that what the caller prints next is not overwritten by the bar
                if bar is not None:
                    bar.close()
    except BaseException:
        if CONFIG not in before:  # a fresh start (with or without --resume) that failed: leave nothing behind
            discard_if_empty(folder, keep=before)
        raise
    previous = Path(out, "summary.json")
    earlier = 0.0  # seconds spent by earlier parts of a resumed run
    if resume and previous.exists():
        earlier = json.loads(previous.read_text()).get("seconds") or 0.0
    channels = executor.channel_stats(running)
    summary = summarize(out, config, earlier + time.perf_counter() - started, channels)
    summary["split"] = plan.benchmark.split_rule(config.split).to_dict()
    keys = test_keys(config, record, running)
    if keys is not None:  # a run that scored nothing new here (all resumed) was counted when it first scored
        summary["test_scorings"] = count_run(keys, run_id(out), out)
        summary["test_set_scorings"] = keys.test_set_scorings()
    summary["workers"] = executor.used
    if running is not None:
        summary["models"] = team_models(running)
    if plan.seen:
        summary["excluded_seen"] = plan.excluded
    if calibration := calibrated_on(config):  # train ids, never scored (calibration_tasks refuses that)
        summary["calibrated_on"] = calibration
    write_json(Path(out, "summary.json"), summary)
    return summary


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

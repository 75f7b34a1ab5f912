"""`kvmesh bench latent`: latent channels against text on InfoQA with two agents, every mode on the same tasks.

The sender holds every shard of a task, the receiver gets the question alone and answers it. Modes:

    none            the receiver alone, without the shards: the floor
    text            the sender writes a message (up to `message_tokens`), the receiver reads it as text
    kv-select@P     the sender only prefills; the receiver reads its prompt cache in P% of the layers,
                    chosen on calibration attention (`calibrate` training tasks) and the depth prior
    c2c:<mapper>    the mapper's sender prefills; its cache, mapped into the receiver's format, is read in
                    front of the receiver's prompt (a folder from `kvmesh c2c fit|train`)
    c2c-fusion:<mapper>  the mapper's sender prefills; the receiver's cache of the question is fused with the
                    sender's cache of it (C2C's own mode: no context is read)
    text:<sender>   the text relay from each c2c mapper's sender model (the relay c2c is measured against)
    skyline         the receiver reads the shards itself

Every mode runs the same tasks through `Team.run_batch` at the same batch size; seconds per task is the wall
time of the whole mode over its tasks (the sender's prefill or message and the receiver's answer included,
calibration not: it is reported apart). Accuracy is InfoQA's exact match with a 95% Wilson interval;
generated tokens and KV bytes moved are means per task, from the runtime's own usage.

With `out`, each finished mode is appended to `modes.jsonl` beside `config.json` at once (fsynced, `kvmesh.runs`),
and a rerun with the same settings resumes after the modes it finished (other settings are refused, naming them);
`plot.png` draws accuracy against time per task.

Prompts are the same in every mode: the sender holds the notes (no instruction to relay them, which made both
the relay and the latent read worse on validation tasks) and the receiver has one worked example that reads
notes, so modes differ only in what the receiver reads. Caveat: SmolLM2-135M copies formats better than it
follows instructions; the figures are about this model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from kvmesh.agents.agent import Agent
from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.config import ConfigError
from kvmesh.evals.benchmarks.base import SOLO
from kvmesh.evals.benchmarks.infoqa import EXAMPLES, InfoQA, short_answer
from kvmesh.evals.calibrate import calibrate
from kvmesh.evals.stats import proportion
from kvmesh.graph import CommGraph, Edge
from kvmesh.runs import append_jsonl, open_config, read_log, repair_log, start_run

SENDER, RECEIVER = "sender", "receiver"
# The sender only holds the notes: told to copy or summarise them, or shown a worked relay turn, SmolLM2-135M
# relayed worse (InfoQA validation, 64 tasks: 0.312 against 0.344 for this prompt) and kv-select read worse
# (at every layer: 0.234 against 0.375), since the receiver then reads a whole instructed exchange first.
SENDER_PROMPT = "You hold these notes."
RECEIVER_PROMPT = "Answer the question with a few words, from your notes or your teammate. End with: Answer: X"

KV_SELECT = "kv-select"  # the channel this study compares against the text relay, by its edge name
MODES = "modes.jsonl"


@dataclass
class LatentStudyConfig:
    """What `kvmesh bench latent` runs.

    Args:
        model: the receiver's model, also the sender's on text and kv-select edges.
        limit: test tasks (every mode runs the same ones).
        data_path: an InfoQA JSONL file instead of the generator's test split (as `kvmesh eval` takes it).
        seed: seeds the InfoQA generator (calibration draws from its train split).
        fractions: kv-select's layer fractions, in percent.
        mappers: c2c mapper folders (`kvmesh c2c fit|train`), one mode each.
        calibrate: training tasks kv-select calibrates its layer choice on (at least 16).
        only: run only the modes with these names (kv-select@30, c2c:ridge, ...); empty: every mode.
        batch_size: tasks per batched runtime pass, the same in every mode.
        message_tokens: cap on the text relay's message.
        answer_tokens: cap on the receiver's answer.
        out: a folder that keeps the configuration and each finished mode (a rerun resumes).
    """

    model: str = "smollm2-135m"
    limit: int = 200
    data_path: str | None = None
    seed: int = 0
    fractions: list[int] = field(default_factory=lambda: [10, 20, 30, 50, 100])
    mappers: list[str] = field(default_factory=list)
    calibrate: int = 16
    only: list[str] = field(default_factory=list)
    batch_size: int = 16
    message_tokens: int = 48
    answer_tokens: int = 16
    out: str | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        bad = [f for f in self.fractions if not 0 < f <= 100]
        if bad:
            raise ConfigError(f"{{fractions}} are percentages in (0, 100], got {bad}", owner)
        for name in ("limit", "batch_size", "message_tokens", "answer_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{{{name}}} must be at least 1, got {getattr(self, name)}", owner)


def _sender(model: str, max_new_tokens: int) -> Agent:
    return Agent(SENDER, SENDER, system_prompt=SENDER_PROMPT, model=model, max_new_tokens=max_new_tokens)


def _receiver(config: LatentStudyConfig) -> Agent:
    return Agent(
        RECEIVER,
        RECEIVER,
        system_prompt=RECEIVER_PROMPT,
        model=config.model,
        max_new_tokens=config.answer_tokens,
        examples=EXAMPLES[SOLO],
    )


def _pair(config: LatentStudyConfig, channel: str, sender_model: str | None = None, **channels) -> Team:
    sender = _sender(sender_model or config.model, config.message_tokens)
    graph = CommGraph([SENDER, RECEIVER], [Edge(SENDER, RECEIVER, channel=channel)])
    return Team([sender, _receiver(config)], graph, decision="last", channels=channels or None)


def _alone(config: LatentStudyConfig) -> Team:
    return Team([_receiver(config)], CommGraph([RECEIVER]), decision="last")


def _shards(task: Task) -> list[str]:
    shards = task.shards or []
    return list(shards.values()) if isinstance(shards, dict) else list(shards)


def tasks_for(samples, reader: str | None) -> list[Task]:
    """Each sample's question; its shards, joined, go to `reader` (None: nobody reads them)."""
    return [
        Task(
            s.task.question,
            id=s.id,
            shards={reader: "\n".join(_shards(s.task))} if reader else None,
            extract_answer=short_answer,
        )
        for s in samples
    ]


def run_mode(team: Team, tasks: Sequence[Task], samples, benchmark: InfoQA, batch_size: int) -> dict:
    """One mode over `tasks`: accuracy, time per task, generated tokens and KV bytes moved (means per task)."""
    started, results = time.perf_counter(), []
    for start in range(0, len(tasks), batch_size):
        results += team.run_batch(list(tasks[start : start + batch_size]))
    seconds = time.perf_counter() - started
    correct = sum(benchmark.score(s, r.answer or "").correct for s, r in zip(samples, results, strict=True))
    totals = [r.usage.total for r in results]
    return {
        "accuracy": correct / len(tasks),
        "ci95": proportion(correct, len(tasks))["ci95"],
        "seconds_per_task": seconds / len(tasks),
        "generated_tokens": sum(t.output_tokens for t in totals) / len(tasks),
        "input_tokens": sum(t.input_tokens for t in totals) / len(tasks),
        "cache_read": sum(t.cache_read for t in totals) / len(tasks),
        "kv_bytes": sum(t.kv_bytes for t in totals) / len(tasks),
        "tasks": len(tasks),
    }


def _c2c_modes(config: LatentStudyConfig) -> list[tuple[str, Callable[[], Team], str]]:
    """c2c:<mapper> (context transfer) and c2c-fusion:<mapper> (fusion over the question) for each mapper, and the
    text relay from each distinct mapper sender."""
    from kvmesh.kvcomm.c2c.mappers.base import load_mapper  # imported on use: only c2c modes need it

    modes, senders = [], []
    for folder in config.mappers:
        mapper = load_mapper(folder)
        sender = mapper.config.sender
        if sender not in senders and sender != config.model:
            senders.append(sender)
        for prefix, mode in (("c2c", "transfer"), ("c2c-fusion", "fusion")):
            settings = {"mapper": folder, "mode": mode}
            build = lambda c=settings, s=sender: _pair(config, "c2c", s, c2c=c)  # noqa: E731
            modes.append((f"{prefix}:{Path(folder).name}", build, SENDER))
    relays = [(f"text:{s}", lambda s=s: _pair(config, "text", s), SENDER) for s in senders]
    return relays + modes


# a mode: its name, its team given kv-select's calibration scores (None: not calibrated), the shards' reader
Mode = tuple[str, Callable[[tuple | None], Team], str | None]


def _kv_select(config: LatentStudyConfig, fraction: int, scores: tuple | None) -> Team:
    settings = _pair(config, KV_SELECT).channels[KV_SELECT].config
    return _pair(config, KV_SELECT, **{KV_SELECT: replace(settings, fraction=fraction / 100, scores=scores)})


def _modes(config: LatentStudyConfig) -> list[Mode]:
    """The modes these settings run, in order (`only` applied); an `only` that names no mode is refused."""
    modes: list[Mode] = [
        ("none", lambda _: _alone(config), None),
        ("text", lambda _: _pair(config, "text"), SENDER),
    ]
    modes += [(f"kv-select@{f}", lambda scores, f=f: _kv_select(config, f, scores), SENDER) for f in config.fractions]
    c2c = _c2c_modes(config) if config.mappers else []
    modes += [(name, lambda _, build=build: build(), reader) for name, build, reader in c2c]
    modes.append(("skyline", lambda _: _alone(config), RECEIVER))
    if config.only:
        unknown = sorted(set(config.only) - {name for name, _, _ in modes})
        if unknown:
            known = ", ".join(name for name, _, _ in modes)
            raise ConfigError(
                f"{{only}} names no mode {unknown}; the modes of these settings: {known}", "LatentStudyConfig"
            )
        modes = [mode for mode in modes if mode[0] in config.only]
    return modes


def run_study(config: LatentStudyConfig, progress: Callable[[str], None] = print) -> dict:
    """Every mode on the same tasks; see the module docstring. What can fail at the start (the data, the
    mappers, `only`) fails before `out` is touched; a fresh run that fails before its first result (the
    calibration or a mode) leaves nothing in `out` (`kvmesh.runs.start_run`)."""
    benchmark = InfoQA(config.data_path, config.seed)
    samples = benchmark.samples("test")[: config.limit]
    modes = _modes(config)
    if not config.out:
        return _run_modes(config, modes, benchmark, samples, {}, progress)
    out = Path(config.out)
    with start_run(out, lambda: open_config(out, asdict(config), resume=True)):
        return _run_modes(config, modes, benchmark, samples, _finished(out), progress)


def _run_modes(
    config: LatentStudyConfig,
    modes: list[Mode],
    benchmark: InfoQA,
    samples: list,
    done: dict,
    progress: Callable[[str], None],
) -> dict:
    """Run the modes not `done` (and kv-select's calibration, when a kv-select mode needs it), logging each."""
    calibration: dict = done.pop("calibration", {})
    scores = calibration.get("scores")
    if scores is None and any(name.startswith("kv-select@") and name not in done for name, _, _ in modes):
        started = time.perf_counter()
        train = tasks_for(InfoQA(None, config.seed).samples("train")[: config.calibrate], SENDER)
        team = calibrate(_pair(config, KV_SELECT), train, config.batch_size)
        scores = team.channels[KV_SELECT].config.scores
        calibration = {
            "tasks": len(train),
            "split": "train",
            "seconds": time.perf_counter() - started,
            "scores": scores,
        }
        _write(config, "calibration", calibration)
    results = []
    for name, build, reader in modes:
        if name not in done:
            team = build(scores)
            progress(f"{name}: {len(samples)} tasks")
            done[name] = {
                "name": name,
                **run_mode(team, tasks_for(samples, reader), samples, benchmark, config.batch_size),
            }
            if KV_SELECT in team.channels:
                done[name]["layers"] = team.channels[KV_SELECT].layers_by_spec()
            _write(config, "mode", done[name])
        line = done[name]
        progress(f"{name}: accuracy {line['accuracy']:.3f}, {line['seconds_per_task']:.3f} s/task")
        results.append(line)
    report = {"modes": results, "tasks": len(samples), "calibration": calibration, "config": asdict(config)}
    if config.out:
        report["plot"] = str(plot_modes(results, Path(config.out) / "plot.png"))
    return report


def plot_modes(modes: Sequence[dict], path: Path) -> Path:
    """Accuracy (95% interval) against seconds per task, one point per mode."""
    from kvmesh.evals.figures import Point, plot_tradeoff

    points = [
        Point(m["name"], m["accuracy"], *m["ci95"], m["seconds_per_task"], m["name"] == "skyline", m["tasks"])
        for m in modes
    ]
    return plot_tradeoff(points, path, xlabel="seconds per task (batched, sender and receiver)", unit="s")


# --- resuming ---------------------------------------------------------------------------------------------------


def _finished(out: Path) -> dict:
    """Modes (and the calibration) an earlier run in `out` finished, by name; a line torn by a kill is cut."""
    lines = out / MODES
    repair_log(lines)
    return {r["name"] if r["kind"] == "mode" else "calibration": r["data"] for r in read_log(lines)}


def _write(config: LatentStudyConfig, kind: str, data: dict) -> None:
    if config.out:
        append_jsonl(Path(config.out) / MODES, [{"kind": kind, "name": data.get("name", kind), "data": data}])

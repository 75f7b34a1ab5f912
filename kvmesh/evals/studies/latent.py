"""`kvmesh bench latent`: latent channels against text on InfoQA with two agents, every mode on the same tasks.

The sender holds every shard of a task, the receiver gets the question alone and answers it. Modes:

    none            the receiver alone, without the shards: the floor
    text            the sender writes a message (up to `message_tokens`), the receiver reads it as text
    kv-select@P     the sender only prefills; the receiver reads its prompt cache in P% of the layers,
                    chosen on calibration attention (`calibrate` training tasks) and the depth prior
    kv-select@P:tokens@T  as kv-select@P, reading only the T% of the context tokens its own tokens attend to
                    most (token selection; T = 100 is kv-select@P itself)
    kv-select@100+tN  the sender runs N latent thoughts after its prompt (LatentMAS), the receiver reads the
                    prompt's cache and the thoughts in every layer
    c2c:<mapper>    the mapper's sender prefills; its cache, mapped into the receiver's format, is read in
                    front of the receiver's prompt (a folder from `kvmesh c2c fit|train`)
    c2c-fusion:<mapper>  the mapper's sender prefills; the receiver's cache of the question is fused with the
                    sender's cache of it (C2C's own mode: no context is read)
    text:<sender>   the text relay from each c2c mapper's sender model (the relay c2c is measured against)
    skyline         the receiver reads the shards itself
    avp:<mode>      with `peers` = ["avp"]: AVP run on the same tasks and prompts (`kvmesh.evals.peers.avp`):
                    avp:direct, avp:text, avp:latent@N (N latent steps), avp:cross@N:<sender> (its cross-model
                    projection from each mapper's sender)

Every mode runs the same tasks through `Team.run_batch` at the same batch size. Timing (`kvmesh.evals.timing`):
each mode first runs its first batch `warmup` times (not timed), then `repeats` rounds run every mode over all
the tasks once, in an order rotated each round; seconds per task is a mode's wall time over its tasks (the
sender's prefill or message and the receiver's answer included, calibration not: it is reported apart),
reported as the median over rounds with the min and max, and "vs text" is the mode's time over the text relay's,
taken within each round, then summarised the same way. Greedy decoding makes every round's outputs the same:
accuracy and token counts are the last round's, and `outputs_agree` says whether each round's transcripts had
the same fingerprint. Accuracy is InfoQA's exact match with a 95% Wilson interval; generated tokens and KV bytes
moved are means per task, from the runtime's own usage. Every mode run is a row of the report and its table
(`format_table`), the layer fractions and the token-selection curve (`token_fractions`, at
`token_layer_fraction` of the layers) included.

With `out`, the calibration and each finished round (every mode's seconds, output fingerprint and figures) are
appended to `modes.jsonl` beside `config.json` at once (fsynced, `kvmesh.runs`), and a rerun with the same settings
resumes after the rounds it finished, continuing their rotation (other settings are refused, naming them);
`summary.json` holds the report and `plot.png` draws accuracy against the median time per task.

Prompts are the same in every mode: the sender holds the notes (no instruction to relay them, which made both
the relay and the latent read worse on validation tasks) and the receiver has one worked example that reads
notes, so modes differ only in what the receiver reads. Caveat: SmolLM2-135M copies formats better than it
follows instructions; the figures are about this model.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvmesh.agents.result import TeamResult
from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.config import ConfigError
from kvmesh.evals.benchmarks import benchmark_class
from kvmesh.evals.benchmarks.infoqa import InfoQA
from kvmesh.evals.calibrate import calibrate
from kvmesh.evals.ledger import TEST_SPLITS, ScoringKeys, count_run, run_id
from kvmesh.evals.stats import proportion
from kvmesh.evals.studies.latent_report import REFERENCE, mode_rows, plot_modes
from kvmesh.evals.studies.latent_teams import (
    KV_SELECT,
    RECEIVER,
    SENDER,
    alone_team,
    kv_select_team,
    pair_team,
    study_agents,
    tasks_for,
)
from kvmesh.evals.timing import Round, Timings, digest, time_modes
from kvmesh.runs import append_jsonl, content_hash, open_config, read_log, repair_log, start_run, write_json

MODES, SUMMARY = "modes.jsonl", "summary.json"


@dataclass
class LatentStudyConfig:
    """What `kvmesh bench latent` runs.

    Args:
        model: the receiver's model, also the sender's on text and kv-select edges.
        task: infoqa, or infoqa-projects (a domain no prompt was tuned on).
        limit: test tasks (every mode runs the same ones).
        data_path: an InfoQA JSONL file to score, every task in it (unless `split` asks for one), instead of the
            generator's test split; tasks a mapper was fitted or checked on, or kv-select calibrated on, are left
            out (the report says how many).
        split: the split to score: default test (a file: all of it).
        data_seed: seeds the generator's test tasks (the same for every seed).
        seed: chooses kv-select's calibration tasks (from the task's train split, never a scored task).
        seeds: run once per seed (each in OUT/seed-N, resumable) and write OUT/seeds.json: each mode's accuracy,
            time and paired difference from text, with a 95% interval across seeds.
        fractions: kv-select's layer fractions, in percent.
        token_fractions: kv-select's token fractions (the share of context tokens read), in percent, each run at
            `token_layer_fraction` of the layers: the token-selection curve (100 adds no mode of its own).
        token_layer_fraction: the layer fraction, in percent, that the token-selection curve runs at.
        thoughts: latent thoughts the sender runs after its prompt, one kv-select@100+tN mode each.
        mappers: c2c mapper folders (`kvmesh c2c fit|train`), one mode each.
        peers: peer systems to run beside kvmesh's modes ("avp", from the `peers` extra).
        avp_steps: AVP's latent steps, one avp:latent@N mode each (and its cross-model modes at the first).
        calibrate: training tasks kv-select calibrates its layer choice on (at least 16).
        only: run only the modes with these names (kv-select@30, c2c:ridge, ...); empty: every mode.
        batch_size: tasks per batched runtime pass, the same in every mode.
        message_tokens: cap on the text relay's message.
        answer_tokens: cap on the receiver's answer.
        repeats: timed rounds; each runs every mode over all the tasks once, in an order rotated each round.
        warmup: untimed runs of each mode's first batch before the first round.
        out: a folder that keeps the configuration, each finished round and the report (a rerun resumes).
    """

    model: str = "smollm2-135m"
    task: str = field(default="infoqa", metadata={"choices": ("infoqa", "infoqa-projects")})
    limit: int = 200
    data_path: str | None = None
    split: str | None = None
    data_seed: int = 0
    seed: int = 0
    seeds: list[int] = field(default_factory=list)
    fractions: list[int] = field(default_factory=lambda: [10, 20, 30, 50, 100])
    token_fractions: list[int] = field(default_factory=lambda: [10, 30, 50])
    token_layer_fraction: int = 100
    thoughts: list[int] = field(default_factory=lambda: [1, 5, 20])
    mappers: list[str] = field(default_factory=list)
    peers: list[str] = field(default_factory=list, metadata={"choices": ("avp",)})
    avp_steps: list[int] = field(default_factory=lambda: [5, 20])
    calibrate: int = 16
    only: list[str] = field(default_factory=list)
    batch_size: int = 16
    message_tokens: int = 48
    answer_tokens: int = 16
    repeats: int = 3
    warmup: int = 1
    out: str | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if set(self.peers) - {"avp"}:
            raise ConfigError(f"{{peers}} may name avp, got {self.peers}", owner)
        for name in ("fractions", "token_fractions"):
            bad = [f for f in getattr(self, name) if not 0 < f <= 100]
            if bad:
                raise ConfigError(f"{{{name}}} are percentages in (0, 100], got {bad}", owner)
        if not self.avp_steps or any(n < 0 for n in self.avp_steps):
            raise ConfigError(f"{{avp_steps}} are AVP's latent steps, 0 or more each, got {self.avp_steps}", owner)
        if any(n < 1 for n in self.thoughts):
            raise ConfigError(f"{{thoughts}} are latent steps, at least 1 each, got {self.thoughts}", owner)
        if not 0 < self.token_layer_fraction <= 100:
            raise ConfigError(
                f"{{token_layer_fraction}} is a percentage in (0, 100], got {self.token_layer_fraction}", owner
            )
        for name in ("limit", "batch_size", "message_tokens", "answer_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{{{name}}} must be at least 1, got {getattr(self, name)}", owner)
        if self.warmup < 0:
            raise ConfigError(f"{{warmup}} must be 0 or more, got {self.warmup}", owner)
        if self.seeds and not self.out:
            raise ConfigError("{seeds} runs one study per seed in OUT/seed-N: pass {out}", owner)


def run_batches(team: Team, tasks: Sequence[Task], batch_size: int) -> list[TeamResult]:
    """One mode's work: `tasks` through `team.run_batch`, `batch_size` at a time."""
    results: list[TeamResult] = []
    for start in range(0, len(tasks), batch_size):
        results += team.run_batch(list(tasks[start : start + batch_size]))
    return results


def score_mode(results: Sequence[TeamResult], samples, benchmark: InfoQA) -> dict:
    """A mode's figures from its results: accuracy (95% interval), generated and input tokens, cache reads, KV
    bytes moved and latent thoughts run (means per task)."""
    each = [benchmark.score(s, r.answer or "").correct for s, r in zip(samples, results, strict=True)]
    correct, totals, count = sum(each), [r.usage.total for r in results], len(results)
    return {
        "correct": [bool(c) for c in each],  # per task, in sample order: what paired comparisons read
        "accuracy": correct / count,
        "ci95": proportion(correct, count)["ci95"],
        "generated_tokens": sum(t.output_tokens for t in totals) / count,
        "input_tokens": sum(t.input_tokens for t in totals) / count,
        "cache_read": sum(t.cache_read for t in totals) / count,
        "kv_bytes": sum(t.kv_bytes for t in totals) / count,
        "latent_steps": sum(t.latent_steps for t in totals) / count,
        "tasks": count,
    }


def _fingerprint(results: Sequence[TeamResult]) -> str:
    """What must not change between rounds: every reply and answer, in task order."""
    return digest([[*(m.content for m in r.messages), r.answer] for r in results])


def _mapper_senders(config: LatentStudyConfig) -> list[str]:
    """The distinct sender models of the study's c2c mappers (other than the receiver's)."""
    from kvmesh.kvcomm.c2c.mappers.base import load_config  # imported on use: only c2c modes need it

    return list(dict.fromkeys(s for s in (load_config(f).sender for f in config.mappers) if s != config.model))


def _c2c_modes(config: LatentStudyConfig) -> list[tuple[str, Callable[[], Team], str]]:
    """c2c:<mapper> (context transfer) and c2c-fusion:<mapper> (fusion over the question) for each mode a mapper
    serves, and the text relay from each distinct mapper sender."""
    from kvmesh.kvcomm.c2c.mappers.base import load_mapper  # imported on use: only c2c modes need it

    modes = []
    for folder in config.mappers:
        mapper = load_mapper(folder)
        for prefix, mode in (("c2c", "transfer"), ("c2c-fusion", "fusion")):
            if mode in mapper.modes:
                settings, sender = {"mapper": folder, "mode": mode}, mapper.config.sender
                build = lambda c=settings, s=sender: pair_team(config, "c2c", s, c2c=c)  # noqa: E731
                modes.append((f"{prefix}:{Path(folder).name}", build, SENDER))
    relays = [(f"text:{s}", lambda s=s: pair_team(config, "text", s), SENDER) for s in _mapper_senders(config)]
    return relays + modes


def _peer_modes(config: LatentStudyConfig) -> list[tuple[str, Callable[[], object], str | None]]:
    """AVP's modes on the study's own agents and tasks (`peers`); see the module docstring."""
    if "avp" not in config.peers:
        return []
    from kvmesh.evals.peers.avp import AVPPair  # imported on use: the `peers` extra

    first = config.avp_steps[0]
    settings = [("direct", "direct", 0, None, None), ("text", "text", 0, None, SENDER)]
    settings += [(f"latent@{n}", "latent", n, None, SENDER) for n in config.avp_steps]
    settings += [(f"cross@{first}:{s}", "cross", first, s, SENDER) for s in _mapper_senders(config)]
    return [
        (f"avp:{name}", lambda m=mode, n=n, s=s: AVPPair(m, *study_agents(config, s), steps=n), reader)
        for name, mode, n, s, reader in settings
    ]


# a mode: its name, its team given kv-select's calibration scores (None: not calibrated), the shards' reader
Mode = tuple[str, Callable[[tuple | None], Team], str | None]


def _kv_select_modes(config: LatentStudyConfig) -> list[Mode]:
    """kv-select at each layer fraction, then the token-selection curve at `token_layer_fraction` of the layers
    (a mode both lists name runs once), then latent thoughts at every layer."""
    settings = {f"kv-select@{f}": (f, 100, 0) for f in config.fractions}
    layers = config.token_layer_fraction
    for tokens in config.token_fractions:
        name = f"kv-select@{layers}" + (f":tokens@{tokens}" if tokens < 100 else "")
        settings.setdefault(name, (layers, tokens, 0))
    settings |= {f"kv-select@100+t{n}": (100, 100, n) for n in config.thoughts}
    return [
        (name, lambda scores, f=f, t=t, n=n: kv_select_team(config, f, t, n, scores), SENDER)
        for name, (f, t, n) in settings.items()
    ]


def _modes(config: LatentStudyConfig) -> list[Mode]:
    """The modes these settings run, in order (`only` applied); an `only` that names no mode is refused."""
    modes: list[Mode] = [
        ("none", lambda _: alone_team(config), None),
        ("text", lambda _: pair_team(config, "text"), SENDER),
        *_kv_select_modes(config),
    ]
    c2c = _c2c_modes(config) if config.mappers else []
    modes += [(name, lambda _, build=build: build(), reader) for name, build, reader in c2c + _peer_modes(config)]
    modes.append(("skyline", lambda _: alone_team(config), RECEIVER))
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
    """Every mode on the same tasks, `config.repeats` timed rounds; see the module docstring. One call is one run
    (one seed, one folder: `config.out`). What can fail at the start (the data, the mappers, `only`) fails before
    `out` is touched; a fresh run that fails before its first result (the calibration or a round) leaves nothing
    in `out` (`kvmesh.runs.start_run`)."""
    benchmark = benchmark_class(config.task)(config.data_path, config.data_seed)
    split = config.split or benchmark.default_split(config.data_path)  # a file: all of it
    seen, every = learned_from(config), benchmark.samples(split)
    samples = [s for s in every if s.id not in seen][: config.limit]
    if not samples:
        raise ConfigError(
            f"no task of split {split!r} left to score: {len(every)} in it, {len(every) - len(samples)} of them "
            "learned from (calibration or a mapper); score another {split} or bring more tasks",
            "LatentStudyConfig",
        )
    modes = _modes(config)
    if not config.out:
        report = _run_rounds(config, modes, benchmark, samples, {}, [], progress)
        return report | _provenance(config, benchmark, split, every, seen, f"unsaved:{uuid.uuid4()}", None)
    out = Path(config.out)
    with start_run(out, lambda: open_config(out, asdict(config), resume=True)):
        calibration, rounds = _finished(out)
        report = _run_rounds(config, modes, benchmark, samples, calibration, rounds, progress)
        report |= _provenance(config, benchmark, split, every, seen, run_id(out), out)
        write_json(out / SUMMARY, report)
        return report


def _provenance(config: LatentStudyConfig, benchmark, split: str, every, seen, run: str, out) -> dict:
    """Where the scored tasks came from, how many the channels had learned from (left out), and, on test, this
    study's looks at it (`kvmesh.evals.ledger`)."""
    record = {"excluded_seen": sum(1 for s in every if s.id in seen), "split": benchmark.split_rule(split).to_dict()}
    if split in TEST_SPLITS:
        settings = {k: v for k, v in asdict(config).items() if k not in ("out", "repeats", "warmup", "seeds")}
        data = content_hash(Path(config.data_path)) if config.data_path else None
        keys = ScoringKeys.of(
            {"benchmark": config.task, "split": split, "seed": config.data_seed, "inputs": {"data": data}}
            | {"study": "latent", "settings": settings}
        )
        record |= {"test_scorings": count_run(keys, run, out or "."), "test_set_scorings": keys.test_set_scorings()}
    return record


def _calibration_samples(config: LatentStudyConfig) -> list:
    return benchmark_class(config.task)(None, config.seed).samples("train")[: config.calibrate]


def learned_from(config: LatentStudyConfig) -> set[str]:
    """Ids of the tasks the study's channels learned from: each mapper's fitting and checking tasks (recorded in
    its folder) and kv-select's calibration tasks; none of them is scored."""
    from kvmesh.kvcomm.c2c.mappers.base import load_config  # imported on use: only c2c modes need it

    seen = (
        {s.id for s in _calibration_samples(config)}
        if any(m.startswith("kv-select") for m in _names(config))
        else set()
    )
    for folder in config.mappers:
        data = load_config(folder).data
        seen |= set(data.get("train_ids", ())) | set(data.get("validation_ids", ()))
    return seen


def _names(config: LatentStudyConfig) -> list[str]:
    return [name for name, _, _ in _modes(config)]


def _calibration(config: LatentStudyConfig, progress: Callable[[str], None]) -> dict:
    """kv-select's calibration scores on training tasks (timed apart from the modes), logged."""
    started = time.perf_counter()
    train = tasks_for(_calibration_samples(config), SENDER)
    progress(f"calibrating kv-select on {len(train)} training tasks")
    team = calibrate(pair_team(config, KV_SELECT), train, config.batch_size)
    calibration = {
        "tasks": len(train),
        "ids": [task.id for task in train],
        "split": "train",
        "seconds": time.perf_counter() - started,
        "scores": team.channels[KV_SELECT].config.scores,
    }
    _write(config, "calibration", "calibration", calibration)
    return calibration


def _run_rounds(
    config: LatentStudyConfig,
    modes: list[Mode],
    benchmark: InfoQA,
    samples: list,
    calibration: dict,
    rounds: list[dict],
    progress: Callable[[str], None],
) -> dict:
    """Run the rounds not among `rounds` (the records of finished ones, logged as each finishes; kv-select's
    calibration first, when a kv-select mode needs it), then the report."""
    names = tuple(name for name, _, _ in modes)
    first = len(rounds)
    if first < config.repeats:
        if not calibration and any(name.startswith("kv-select@") for name in names):
            calibration = _calibration(config, progress)
        teams = {name: build(calibration.get("scores")) for name, build, _ in modes}
        tasks = {name: tasks_for(samples, reader) for name, _, reader in modes}

        def log(timed: Round, outputs: dict[str, list[TeamResult]]) -> None:
            figures = {name: score_mode(outputs[name], samples, benchmark) for name in names}
            for name, team in teams.items():
                if KV_SELECT in team.channels:
                    figures[name]["layers"] = team.channels[KV_SELECT].layers_by_spec()
            rounds.append({**timed.to_json(), "figures": figures})
            _write(config, "round", f"round {timed.index}", rounds[-1])
            times = ", ".join(f"{name} {timed.seconds[name]:.2f}" for name in timed.order)
            progress(f"round {timed.index + 1}/{config.repeats} (seconds, in the order run): {times}")

        progress(f"{len(names)} modes x {len(samples)} tasks, rounds {first + 1}..{config.repeats}")
        time_modes(
            {name: lambda name=name: run_batches(teams[name], tasks[name], config.batch_size) for name in names},
            repeats=config.repeats - first,
            warmup=config.warmup,
            warm={name: lambda name=name: teams[name].run_batch(tasks[name][: config.batch_size]) for name in names},
            first_round=first,
            fingerprint=_fingerprint,
            on_round=log,
        )
    timings = Timings(names, [Round.from_json(r) for r in rounds])
    report = {
        "modes": mode_rows(timings, rounds[-1]["figures"], [sample.id for sample in samples]),
        "tasks": len(samples),
        "repeats": len(rounds),
        "warmup": config.warmup,
        "reference": REFERENCE if REFERENCE in names else None,
        "orders": [list(r.order) for r in timings.rounds],
        "calibration": calibration,
        "config": asdict(config),
    }
    if "avp" in config.peers:  # what AVP's handshake answers for each cross-model pair it ran
        from kvmesh.evals.peers.avp import describe

        report["peers"] = {"avp": describe([(s, config.model) for s in _mapper_senders(config)])}
    if config.out:
        report["plot"] = str(plot_modes(report["modes"], Path(config.out) / "plot.png"))
    return report


def _finished(out: Path) -> tuple[dict, list[dict]]:
    """The calibration and the rounds (in round order) an earlier run in `out` finished; a line torn by a kill
    is cut."""
    lines = out / MODES
    repair_log(lines)
    calibration, rounds = {}, {}
    for record in read_log(lines):
        if record["kind"] == "calibration":
            calibration = record["data"]
        elif record["kind"] == "round":
            rounds[record["data"]["index"]] = record["data"]
    return calibration, [rounds[i] for i in sorted(rounds)]


def _write(config: LatentStudyConfig, kind: str, name: str, data: dict) -> None:
    if config.out:
        append_jsonl(Path(config.out) / MODES, [{"kind": kind, "name": name, "data": data}])

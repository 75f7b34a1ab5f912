"""The designer contract, in the style of DSPy optimizers, and what every designer shares.

    designer = GDesigner(GDesignerConfig(steps=24), metric=score)    # metric(example, TeamResult) -> [0, 1]
    designed = designer.compile(team, trainset, valset)             # a Team whose graph is chosen per task
    designed.run(task); designer.design(task) -> CommGraph          # deterministic at evaluation
    designer.save("runs/agp/designer"); Designer.load("runs/agp/designer").apply(team)

A designer binds to a team: its agents (in order), its rounds and its channel fix the candidate edges
(`kvmesh.topology.candidates`), and the team's own graph is the "before" picture and the anchor topology. With
`channels` (two or more: `text`, `kv-select@100`, `kv-select@100+t5`, ...) every kept edge also chooses its
channel, a categorical per candidate edge that every designer learns; the team sets each channel up.
Examples in `trainset`/`valset` are `Task`s or objects with a `.task` (benchmark samples); the metric gets
the example back with the team's result.

Training maximises utility = score − λ·cost / normaliser (`kvmesh.training.reward`), where the cost is what the
task's run spent in the unit `cost` names: prompt and completion tokens (counted by the model's tokenizer, the
default), generated tokens, seconds of its model calls, or KV bytes moved; REINFORCE designers train
in `kvmesh.training.reinforce`, which sees a designer as a `GraphPolicy`. A saved designer is a
folder: `designer.json` (kind, config, the team spec, the ids it trained and validated on, training figures)
and `weights.pt`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.config import ConfigError
from kvmesh.graph.edge import TEMPORAL
from kvmesh.graph.graph import CommGraph
from kvmesh.kvcomm.channel import DEFAULT_CHANNEL, check_channel
from kvmesh.plugins import PluginNotAvailableError, Registry
from kvmesh.topology.candidates import Candidates, Sampled, sample_design, threshold_design
from kvmesh.training.reinforce import Metric, ReinforceConfig, reinforce

DESIGNER_FILE, WEIGHTS_FILE = "designer.json", "weights.pt"


@dataclass
class DesignerConfig(ReinforceConfig):
    """Training settings every designer shares.

    Args:
        threshold: probability above which the evaluation graph keeps an edge (or an agent).
        channels: the channels each kept edge chooses among (two or more; variants such as kv-select@30 and
            kv-select@100+t5 too); empty: every edge on the team's own channel. Choosing designers weigh cost in
            time unless a cost is given.
        cost: what a task's run costs (tokens, generated, time or kv-bytes; see the REINFORCE settings); default:
            time when edges choose among channels, else tokens.
    """

    threshold: float = 0.5
    channels: list[str] = field(default_factory=list)
    cost: str = ""  # "": time when choosing channels, else tokens (see ReinforceConfig.cost)

    def __post_init__(self) -> None:
        self.channels = list(self.channels)
        if not self.cost:
            self.cost = "time" if len(self.channels) > 1 else "tokens"
        super().__post_init__()
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"{{threshold}} must be in (0, 1), got {self.threshold}")
        if len(self.channels) == 1 or len(set(self.channels)) < len(self.channels):
            raise ConfigError(
                f"{{channels}} lists the channels edges choose among: two or more, each once (got {self.channels}); "
                "leave it empty to keep the team's own channel"
            )
        for name in self.channels:
            try:
                check_channel(name, "{channels}")
            except ValueError as error:
                raise ConfigError(str(error)) from None


@dataclass
class Probabilities:
    """One forward pass for B tasks: spatial (B, E), temporal (B, T), keep (B, N) or None, and whatever the
    designer's regularisers need (`extra`)."""

    spatial: torch.Tensor
    temporal: torch.Tensor
    keep: torch.Tensor | None = None
    extra: Any = None
    channels: tuple[torch.Tensor, torch.Tensor] | None = None  # (B, E, C), (B, T, C) when edges choose channels

    def channels_of(self, b: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Task `b`'s channel probabilities, (E, C) and (T, C)."""
        return None if self.channels is None else (self.channels[0][b], self.channels[1][b])


class Designer:
    """Base class: subclasses set `kind` and `config_class`, and implement `_build` and `probabilities`."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type[DesignerConfig]] = DesignerConfig
    per_task: ClassVar[bool] = True  # False: one graph for every task (the team gets it as its graph)
    prunes_agents: ClassVar[bool] = False  # True: a task's graph may leave agents out

    def __init__(self, config: DesignerConfig | None = None, metric: Metric | None = None) -> None:
        if config is not None and not isinstance(config, self.config_class):
            raise TypeError(f"{self.kind} expects {self.config_class.__name__} settings, got {type(config).__name__}")
        self.config = config or self.config_class()
        self.metric = metric
        self.module: torch.nn.Module | None = None
        self.candidates: Candidates | None = None
        self.team: Team | None = None
        self.seen_ids: list[str] = []
        self.training: dict = {}  # figures from compile: seconds, normaliser, validation, history
        self.path: Path | None = None

    @property
    def channels(self) -> list[str]:
        """The channels its graphs may put an edge on beyond the team's own (a `GraphDesigner`'s)."""
        return list(self.config.channels)

    # --- binding -----------------------------------------------------------------------------------------------

    def bind(self, team: Team) -> None:
        """Fix the candidates from `team` and build the parameters (once; a second team must match: the same
        agents in the same order, rounds on the same side of one, and the same channel)."""
        candidates = _candidates_for(team, self.config.channels)
        if self.candidates is not None:
            if candidates != self.candidates:
                raise ValueError(
                    f"this {self.kind} designer was built for {_describe(self.candidates)}, "
                    f"not for {_describe(candidates)}"
                )
            self.team = self.team or team
            return
        self.candidates = candidates
        self.team = team
        with torch.random.fork_rng(devices=[]):  # reproducible initial weights, the caller's RNG untouched
            torch.manual_seed(self.config.seed)
            self._build(team)

    def _build(self, team: Team) -> None:
        raise NotImplementedError

    def probabilities(self, tasks: Sequence[Task], noise: torch.Generator | None = None) -> Probabilities:
        """Edge (and keep) probabilities for `tasks`; `noise` draws a designer's random parts (training)."""
        raise NotImplementedError

    def anchor_pairs(self, team: Team) -> list[tuple[int, int]]:
        """The team's own spatial edges as index pairs (the anchor topology)."""
        index = {name: i for i, name in enumerate(team.agent_names)}
        return [(index[e.source], index[e.target]) for e in team.graph.edges() if e.kind != TEMPORAL]

    # --- designing ---------------------------------------------------------------------------------------------

    def _require_bound(self) -> Candidates:
        if self.candidates is None:
            raise RuntimeError(f"this {self.kind} designer is not bound to a team: compile it or load a saved one")
        return self.candidates

    def sample_batch(self, tasks: Sequence[Task], generator: torch.Generator) -> tuple[list[Sampled], Probabilities]:
        """One sampled graph per task (spatial DAGs), with log-probabilities that carry gradients."""
        candidates = self._require_bound()
        self.module.train()
        probs = self.probabilities(tasks, noise=generator)
        keep = probs.keep if probs.keep is not None else [None] * len(tasks)
        samples = [
            sample_design(candidates, probs.spatial[b], probs.temporal[b], generator, keep[b], probs.channels_of(b))
            for b in range(len(tasks))
        ]
        return samples, probs

    @torch.no_grad()
    def design_batch(self, tasks: Sequence[Task]) -> list[CommGraph]:
        """The deterministic evaluation graph of each task."""
        candidates = self._require_bound()
        self.module.eval()
        probs = self.probabilities(tasks)
        keep = probs.keep if probs.keep is not None else [None] * len(tasks)
        threshold = self.config.threshold
        return [
            threshold_design(candidates, probs.spatial[b], probs.temporal[b], threshold, keep[b], probs.channels_of(b))
            for b in range(len(tasks))
        ]

    def design(self, task: Task | str) -> CommGraph:
        return self.design_batch([Task.coerce(task)])[0]

    # --- training hooks ----------------------------------------------------------------------------------------

    def regularizers(self, probs: Probabilities) -> dict[str, torch.Tensor]:
        """Extra loss terms, already weighted (name -> scalar)."""
        return {}

    def advantages(self, utilities: torch.Tensor) -> torch.Tensor:
        """Utility minus a baseline: the batch mean by default."""
        return utilities - utilities.mean()

    def after_update(self, step: int) -> None:
        """Called after each optimiser step (AgentPrune prunes here)."""

    def extra_state(self) -> dict:
        """State beyond the module's weights that training and saving must keep."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def compile(
        self,
        team: Team,
        trainset: Sequence,
        valset: Sequence = (),
        metric: Metric | None = None,
        out: str | Path | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> Team:
        """Train on `trainset`, keep the version that does best on `valset`, return the designed team.
        `out`: a folder for checkpoints (every update) so that `resume=True` continues a killed run."""
        self.bind(team)
        reinforce(self, self.rollout_team(team), trainset, valset, self._metric(metric), out, resume, progress)
        return self.apply(team)

    def rollout_team(self, team: Team) -> Team:
        """`team` with every channel this designer's graphs may choose set up, for training rollouts (each batch
        passes its graphs; a team without a choice is returned as it is)."""
        return team.with_graph(team.graph, designer=self) if self._require_bound().choosing else team

    def _metric(self, metric: Metric | None) -> Metric:
        metric = metric or self.metric
        if metric is None:
            raise ValueError("compile needs a metric(example, result) -> float, given here or to the designer")
        return metric

    def apply(self, team: Team | None = None) -> Team:
        """`team` (default: the one bound) with this designer choosing its graph."""
        team = team or self.team
        self.bind(team)
        if not self.per_task:
            return team.with_graph(self.design_batch([Task("fixed graph")])[0])
        return team.with_graph(team.graph, designer=self)

    # --- saving ------------------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        self._require_bound()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        data = {
            "kind": self.kind,
            "config": asdict(self.config),
            "team": self.team.to_spec(),
            "seen_ids": self.seen_ids,
            "training": self.training,
            "extra": self.extra_state(),
        }
        torch.save(self.module.state_dict(), path / WEIGHTS_FILE)
        (path / DESIGNER_FILE).write_text(json.dumps(data, indent=2))
        self.path = path
        return path

    @staticmethod
    def load(path: str | Path, team: Team | None = None, kinds: Registry[type[Designer]] | None = None) -> Designer:
        """A saved designer, bound to `team` or to the team rebuilt from its saved spec; `kinds` names each kind's
        class (default `DESIGNERS`: kvmesh's and other packages'; use `kvmesh.topology.load_designer`)."""
        path = Path(path)
        if not (path / DESIGNER_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no saved designer ({DESIGNER_FILE} is missing)")
        data = json.loads((path / DESIGNER_FILE).read_text())
        cls = (DESIGNERS if kinds is None else kinds).get(data.get("kind"), where=str(path))
        known = {f.name for f in fields(cls.config_class)}
        designer = cls(cls.config_class(**{k: v for k, v in data["config"].items() if k in known}))
        saved = Team.from_spec(data["team"])  # agents name their models; nothing loads until a call
        choices = designer.config.channels
        if team is not None and _candidates_for(team, choices) != _candidates_for(saved, choices):
            raise ValueError(
                f"{path}: this designer was built for {_describe(_candidates_for(saved, choices))}, "
                f"not for {_describe(_candidates_for(team, choices))}"
            )
        designer.bind(team or saved)
        designer.module.load_state_dict(torch.load(path / WEIGHTS_FILE, weights_only=True))
        designer.load_extra_state(data.get("extra") or {})
        designer.seen_ids, designer.training, designer.path = data["seen_ids"], data.get("training", {}), path
        return designer


class DesignerNotAvailableError(PluginNotAvailableError):
    """A designer kind no entry has; the message lists the kinds there are and how to add one."""


# kind -> class; kvmesh's own in code (see kvmesh.plugins), other packages' as `kvmesh.designers` entry points
DESIGNERS: Registry[type[Designer]] = Registry(
    "designer",
    "kvmesh.designers",
    {
        "edge-logits": "kvmesh.topology.edge_logits:EdgeLogitsDesigner",
        "gdesigner": "kvmesh.topology.gdesigner:GDesigner",
        "agp": "kvmesh.topology.agp:AGP",
    },
    error=DesignerNotAvailableError,
    adder="kvmesh.topology.DESIGNERS.register(kind, cls)",
)


def _candidates_for(team: Team, choices: Sequence[str] = ()) -> Candidates:
    """The team's candidates: on `choices` when edges choose their channel, else on the team's one channel."""
    if choices:
        return Candidates.build(team.agent_names, team.rounds, choices)
    channels = team.graph.channels() or {DEFAULT_CHANNEL}
    if len(channels) > 1:
        raise ValueError(
            f"designers put every edge on one channel unless given channels to choose among; the team's graph "
            f"mixes {sorted(channels)}. Use graph.with_channel(...) first, or pass them as channels."
        )
    return Candidates.build(team.agent_names, team.rounds, tuple(channels))


def _describe(candidates: Candidates) -> str:
    rounds = "several rounds" if candidates.temporal else "one round"
    on = " or ".join(repr(c) for c in candidates.channels)
    return f"agents {list(candidates.agents)} over {rounds} on {on} edges"

"""What `kvmesh optima train` runs: one dataclass, whose field docs are the command's help.

The defaults are the demonstration run: the InfoQA team (3 agents on a complete graph and a decision maker) on
`smollm2-135m`, two SFT iterations of 64 training tasks × 4 samples each, every iteration scored on the first 100
validation tasks; with `--test`, the iteration chosen on validation, iteration 0 and the prompt-only baseline are
then scored once on the first 200 test tasks and compared pairwise. `--seeds 0 1 2` runs it once per seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmesh.config import ConfigError
from kvmesh.graph.presets import PRESETS
from kvmesh.training.optima.scoring import COUNTS

METHODS = ("sft", "dpo", "sft-dpo")
TASKS = ("infoqa", "infoqa-projects")
# The prompt-only baseline: the same team told to be terse and structured, without training.
COMPACT_PROTOCOL = (
    "Be terse: write only the facts that answer the question, as short as 'Name: fact.', or write "
    "'Nothing.' when you hold none; never repeat a message."
)


@dataclass
class OptimaConfig:
    """Optima: train a team to reach its answers with fewer tokens (iterative SFT and DPO with LoRA).

    Args:
        out: the run folder: config.json, baselines/, iteration-K/ (rollouts, rewards, data, adapter, eval),
            results.json and path.png.
        task: the benchmark the team trains on.
        model: the base model of every agent (alias, folder or Hugging Face id).
        method: sft (iterative SFT), dpo (iterative DPO) or sft-dpo (SFT and DPO iterations alternating).
        iterations: training iterations after iteration 0 (the team as it is).
        resume: continue the run in `out`: finished iterations, rollouts, branches and evaluations are kept.
        topology: the team's graph (a preset); a decision maker reads every agent.
        agents: agents in the team, besides the decision maker.
        data_path: an InfoQA JSONL file instead of the generator: training reads its train split, choices its
            validation split, `--test` its test split (each line's `split`, else a hash of the id and data_seed).
        seed: seeds sampling and training (rollouts, branches, LoRA initialisation and data order).
        seeds: run once per seed, each in OUT/seed-N (resumable), and write OUT/seeds.json: every figure's mean with
            a 95% interval across seeds beside each seed's; the data (data_seed) is the same for every seed.
        data_seed: seeds the InfoQA generator (or a file's hash split): the tasks, the same whatever the seed.
        train_tasks: training-split tasks per iteration (iteration k takes the k-th block: no task twice).
        samples: sampled conversations per training task.
        temperature: sampling temperature of rollouts (SmolLM2-135M: 1.0 solved 2% of 32 training tasks, 0.3
            22%, with samples nearly alike).
        explore: share of each task's samples drawn by the prompt-only compact team instead of the policy
            (Optima's format-diverse exploration); their prompts are re-rendered with the policy's own system
            prompts and examples, so rewards count what the policy would read and SFT teaches the compact form
            under the policy's prompts.
        val_tasks: validation tasks every iteration and baseline is scored on; the iteration with the best
            validation accuracy (fewer generated tokens on a tie) is the run's choice.
        test: score the chosen iteration, iteration 0 and the prompt-only baseline on `eval_tasks` test tasks,
            once (a later run with --test reads those scores; each summary counts the configuration's test
            scorings), with paired comparisons (McNemar, paired bootstrap) of the chosen iteration against both.
        eval_tasks: test tasks `--test` scores.
        batch_size: tasks per batched runtime pass (rollouts and evaluation).
        max_new_tokens: cap on each agent turn.
        token_weight: λ_tokens: the reward loses token_weight at the most tokens any rollout of a task spent.
        token_count: the tokens the reward's cost counts: generated (what the team wrote; every rollout of a
            task reads the same ~800-token frame, which would drown the difference) or all (prompt + completion).
        readability_weight: λ_read: weight of readability (1 / the base model's largest loss on a message, in (0, 1]).
        threshold: a task's best rollout is kept for SFT only if its reward reaches this (at the default weights,
            solved InfoQA tasks score about -0.6 to 0.3, the shortest highest, and unsolved ones below -0.2).
        top_share: of the kept rollouts, the best share overall is trained on.
        train_overlong: SFT also on turns cut at max_new_tokens (they never closed their turn; off by default).
        branch_turns: DPO: turns of a rollout branched (the first ones of its agents, in order).
        children: DPO: sampled continuations per branched turn.
        min_gap: DPO: least reward gap between the best and worst child for a pair.
        similarity: DPO: children whose texts are at least this similar count as one (the better kept).
        reference: DPO's reference policy: initial (the base model) or previous (the last iteration's adapter).
        rank: LoRA rank.
        learning_rate: SFT learning rate (DPO uses a tenth of it).
        epochs: passes over an iteration's SFT examples or DPO pairs.
        train_batch_size: examples per optimiser step.
        beta: DPO's beta.
    """

    out: str
    task: str = field(default="infoqa", metadata={"choices": TASKS})
    model: str = "smollm2-135m"
    method: str = field(default="sft", metadata={"choices": METHODS})
    iterations: int = 2
    resume: bool = True
    topology: str = field(default="complete", metadata={"choices": PRESETS})
    agents: int = 3
    data_path: str | None = None
    seed: int = 0
    seeds: list[int] = field(default_factory=list)
    data_seed: int = 0
    train_tasks: int = 64
    samples: int = 4
    temperature: float = 0.5
    explore: float = 0.5
    val_tasks: int = 100
    test: bool = False
    eval_tasks: int = 200
    batch_size: int = 32
    max_new_tokens: int = 48
    token_weight: float = 1.0
    token_count: str = field(default="generated", metadata={"choices": COUNTS})
    readability_weight: float = 0.1
    threshold: float = 0.0
    top_share: float = 1.0
    train_overlong: bool = False
    branch_turns: int = 1
    children: int = 4
    min_gap: float = 0.2
    similarity: float = 0.9
    reference: str = field(default="initial", metadata={"choices": ("initial", "previous")})
    rank: int = 16
    learning_rate: float = 2e-4
    epochs: int = 3
    train_batch_size: int = 8
    beta: float = 0.1

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if self.method not in METHODS:
            raise ConfigError(f"{{method}} must be one of {', '.join(METHODS)}, got {self.method!r}", owner)
        for name in (
            "iterations",
            "agents",
            "train_tasks",
            "samples",
            "val_tasks",
            "eval_tasks",
            "batch_size",
            "max_new_tokens",
            "rank",
            "epochs",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{{{name}}} must be at least 1, got {getattr(self, name)}", owner)
        if not self.learning_rate > 0:
            raise ConfigError(f"{{learning_rate}} must be above 0, got {self.learning_rate}", owner)
        if self.temperature <= 0:
            raise ConfigError(
                f"{{temperature}} must be above 0 to sample different rollouts, got {self.temperature}", owner
            )
        if not 0 <= self.explore <= 1:
            raise ConfigError(f"{{explore}} is a share of the samples, in [0, 1]; got {self.explore}", owner)
        if not 0 < self.top_share <= 1 or not 0 < self.similarity <= 1:
            raise ConfigError("{top_share} and {similarity} must be in (0, 1]", owner)
        if self.children < 2 and self.method != "sft":
            raise ConfigError(f"{{children}} must be at least 2 to compare continuations, got {self.children}", owner)

    @property
    def explored_samples(self) -> int:
        """Samples per task drawn by the compact team (the rest by the policy)."""
        return round(self.explore * self.samples)

    def kind(self, iteration: int) -> str:
        """The update of iteration `iteration` (1-based): sft, dpo, or alternating starting with sft."""
        if self.method != "sft-dpo":
            return self.method
        return "sft" if iteration % 2 == 1 else "dpo"

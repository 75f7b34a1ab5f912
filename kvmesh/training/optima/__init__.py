"""Optima (thunlp/Optima) on any team graph: rollouts through the ordinary `Team` runtime, their reward (score,
honest token cost, readability, penalties), selection for iSFT, per-agent SFT examples with every token the agent
did not write masked, iDPO preference pairs from branching at conversation turns, TRL's trainers on a LoRA
adapter (`trainers`), and the resumable loop with its held-out evaluation (`loop`, `kvmesh optima train`).

    results  = optima_train(OptimaConfig(out="runs/optima", method="sft", iterations=2))

    rollouts = sample_rollouts(team, tasks, samples, temperature, seed, batch_size, score=metric)
    score_rollouts(rollouts, RewardConfig(), base_model)             sets rollout.parts
    kept     = top_share(select_best(rollouts, threshold), share)
    sft      = sft_examples(kept, base_model)                        input_ids + labels (-100 off the agent's reply)
    groups   = branches(team, [(task, rollout, turn), ...], children, temperature, seed, score=metric)
    pairs    = preference_pairs([score_rollouts(g, ...) for g in groups], min_gap, similarity)
"""

from kvmesh.training.optima.config import OptimaConfig
from kvmesh.training.optima.dpo_data import (
    ReplayTool,
    branch,
    branch_points,
    branches,
    deduplicate,
    near_duplicate,
    preference_pairs,
)
from kvmesh.training.optima.loop import optima_train
from kvmesh.training.optima.rollout import (
    PromptMismatchError,
    Rollout,
    RolloutTurn,
    end_of_turn_id,
    sample_rollouts,
)
from kvmesh.training.optima.scoring import (
    RewardConfig,
    RewardParts,
    message_losses,
    penalties,
    readability,
    score_rollouts,
)
from kvmesh.training.optima.selection import ranked, select_best, top_share
from kvmesh.training.optima.sft_data import IGNORE, sft_examples

__all__ = [
    "IGNORE",
    "OptimaConfig",
    "PromptMismatchError",
    "ReplayTool",
    "RewardConfig",
    "RewardParts",
    "Rollout",
    "RolloutTurn",
    "branch",
    "branch_points",
    "branches",
    "deduplicate",
    "end_of_turn_id",
    "message_losses",
    "near_duplicate",
    "optima_train",
    "penalties",
    "preference_pairs",
    "ranked",
    "readability",
    "sample_rollouts",
    "score_rollouts",
    "select_best",
    "sft_examples",
    "top_share",
]

"""iDPO preference pairs (Optima): branch a conversation at one of its turns, then pair the best child with the worst.

    branch    every turn before `turn_index` is replayed exactly (a training-only `ReplayTool` answers it with the
              recorded reply: no model call), and `children` continuations of that turn and of everything after
              it are sampled, batched, through the ordinary `Team` runtime
    pairs     per branch point: children ranked by reward, near-duplicates removed (their branched replies'
              normalised texts at difflib ratio >= `similarity`; the better-rewarded one stays), then the best
              child against the worst when their reward gap is at least `min_gap`

A child is a `Rollout` whose `branched_at` is the branched turn and `parent_sample` the rollout it came from; its
turns are the parent's recorded turns up to `branched_at`, then its own (with their prompt ids).

Counting: a replayed turn costs no tokens in the child's run, but it was spent in the original rollout, and the
child's conversation is that prefix plus its own turns. So a child's tokens are the prefix's recorded prompt and
completion tokens plus what its own run spent, and under a token budget the child's run gets what the original
had left after the prefix (its stop reason and penalty follow from that).

Each pair is plain JSON values, in TRL's pre-tokenized DPO layout (`prompt_ids`, `chosen_ids`, `rejected_ids`),
plus who spoke, where, and the two rewards. The branched turn's prompt is the same in every child (it reads only
replayed replies); `branches` checks that, and that every replayed turn came back word for word.

Caveats: children must be scored (`score_rollouts`) before pairing; a child whose run stopped before the branched
turn, or whose branched reply a tool answered or edited, takes no part in its pairs. The parent itself is not a
candidate (its reward was measured against other rollouts' normaliser); add it to a group to make it one.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import replace

from kvmesh.agents.team import Team
from kvmesh.agents.tools import Tool, ToolTurn
from kvmesh.training.examples import example_task
from kvmesh.training.optima.rollout import Rollout, RolloutTurn, Score, batch_seed, team_variant
from kvmesh.training.optima.selection import ranked

REPLAY = "replay"
BRANCH = "optima_branch"  # the task metadata key that names a branch point
ReplayKey = tuple[str | None, str | None, str, int | str]  # (task id, branch point, agent, round)


class ReplayTool(Tool):
    """Training only: answers each recorded turn with its recorded reply, by (task id, branch point, agent, round).
    The branch point is the task's `metadata["optima_branch"]`, so several points of one task run in one batch
    while the task keeps its id (scorers may look it up)."""

    name = REPLAY

    def __init__(self, replies: Mapping[ReplayKey, str]) -> None:
        self.replies = dict(replies)

    def before(self, turn: ToolTurn) -> str | None:
        return self.replies.get((turn.task.id, turn.task.metadata.get(BRANCH), turn.agent, turn.round))


def branch_points(rollout: Rollout) -> list[int]:
    """The turns of `rollout` that can be branched: those a model wrote."""
    return [index for index, turn in enumerate(rollout.turns) if turn.model_call]


def _spent(turns: Sequence[RolloutTurn]) -> tuple[int, int]:
    return sum(t.prompt_tokens for t in turns), sum(t.completion_tokens for t in turns)


def branches(
    team: Team,
    points: Sequence[tuple[object, Rollout, int]],
    children: int,
    temperature: float,
    seed: int,
    batch_size: int | None = None,
    *,
    score: Score,
) -> list[list[Rollout]]:
    """The children of each (task, rollout, turn_index) point, `children` each, batched `batch_size` at a time
    across points (None: all at once; points under different remaining token budgets run apart). `task` is what
    the rollout was sampled from (a `Task` or a benchmark `Sample`); each child is scored `score(task, result)`."""
    groups: dict[int | None, list[tuple[int, int]]] = {}  # remaining budget -> (point, child) jobs
    replies: dict[ReplayKey, str] = {}
    tasks = []
    for p, (example, rollout, index) in enumerate(points):
        if index not in branch_points(rollout):
            raise ValueError(f"turn {index} of rollout {rollout.task_id}#{rollout.sample} is not a model's turn")
        task = example_task(example)
        if task.question != rollout.question:
            raise ValueError(f"point {p}: the task's question is not rollout {rollout.task_id}'s")
        key = f"{rollout.sample}@{index}/{p}"  # tells apart the branch points of one task
        tasks.append(replace(task, metadata={**task.metadata, BRANCH: key}))
        replies |= {(task.id, key, t.agent, t.round): t.reply for t in rollout.turns[:index]}
        budget = team.token_budget
        if budget is not None:
            budget -= sum(_spent(rollout.turns[:index]))
            if budget < 1:
                raise ValueError(f"point {p}: the turns before {index} spent the whole token budget")
        groups.setdefault(budget, []).extend((p, k) for k in range(children))
    tool, found, number = ReplayTool(replies), [[] for _ in points], 0
    for budget, jobs in groups.items():
        size = batch_size or len(jobs)
        for start in range(0, len(jobs), size):
            chunk, seeded = jobs[start : start + size], batch_seed(seed, number)
            number += 1
            variant = team_variant(team, seeded, temperature, tool, budget)
            for (p, k), result in zip(chunk, variant.run_batch([tasks[p] for p, _ in chunk]), strict=True):
                example, rollout, index = points[p]
                fresh = Rollout.from_result(result, variant, rollout.task_id, k, seeded, score(example, result))
                found[p].append(_child(rollout, index, fresh))
    return found


def branch(
    team: Team,
    rollout: Rollout,
    turn_index: int,
    children: int,
    temperature: float,
    seed: int,
    *,
    task,
    score: Score,
) -> list[Rollout]:
    """`children` continuations of turn `turn_index` of `rollout` (sampled from `task`), in one batch; see
    `branches`."""
    return branches(team, [(task, rollout, turn_index)], children, temperature, seed, score=score)[0]


def _child(parent: Rollout, index: int, fresh: Rollout) -> Rollout:
    """A child's whole conversation: the parent's recorded prefix, then the fresh run's own turns and tokens."""
    prefix = parent.turns[:index]
    for old, new in zip(prefix, fresh.turns, strict=False):
        if (new.tool, new.agent, new.round, new.reply) != (REPLAY, old.agent, old.round, old.reply):
            raise RuntimeError(f"the replay of {parent.task_id}#{parent.sample} diverged at {old.agent} {old.round}")
    own = fresh.turns[len(prefix) :]
    if own and own[0].prompt_ids != parent.turns[index].prompt_ids:
        raise RuntimeError(f"the branched turn of {parent.task_id}#{parent.sample} read another prompt than recorded")
    prompt, completion = _spent(prefix)
    return replace(
        fresh,
        turns=[*prefix, *own],
        prompt_tokens=prompt + fresh.prompt_tokens,
        completion_tokens=completion + fresh.completion_tokens,
        branched_at=index,
        parent_sample=parent.sample,
    )


# --- pairs ----------------------------------------------------------------------------------------------------


def near_duplicate(a: str, b: str, similarity: float) -> bool:
    """Whether two texts, case-folded with whitespace collapsed, have a difflib ratio of at least `similarity`."""
    a, b = " ".join(a.casefold().split()), " ".join(b.casefold().split())
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= similarity


def deduplicate(texts: Sequence[str], similarity: float) -> list[int]:
    """Indices of `texts` kept, in order: each text is dropped when it is a near-duplicate of one kept before it."""
    kept: list[int] = []
    for i, text in enumerate(texts):
        if not any(near_duplicate(texts[j], text, similarity) for j in kept):
            kept.append(i)
    return kept


def preference_pairs(groups: Sequence[Sequence[Rollout]], min_gap: float, similarity: float) -> list[dict]:
    """Per group (the scored children of one branch point, as `branches` returns them): near-duplicates removed
    (the better-rewarded stays), then the best child against the worst when their reward gap is at least
    `min_gap`; see the module docstring for a pair's fields."""
    pairs = []
    for group in groups:
        if not group:
            continue
        first, index = group[0], group[0].branched_at
        if index is None or any((c.task_id, c.branched_at) != (first.task_id, index) for c in group):
            raise ValueError("a group holds the children of one branch point: the same task and branched turn")
        usable = [
            c for c in group if len(c.turns) > index and c.turns[index].model_call and not c.turns[index].edited_by
        ]
        ordered = ranked(usable)
        kept = [ordered[i] for i in deduplicate([c.turns[index].reply for c in ordered], similarity)]
        if len(kept) < 2 or kept[0].total - kept[-1].total < min_gap:
            continue
        chosen, rejected = kept[0].turns[index], kept[-1].turns[index]
        if chosen.prompt_ids != rejected.prompt_ids:
            raise ValueError(f"children of {first.task_id} at turn {index} read different prompts: not one branch")
        pairs.append(
            {
                "prompt_ids": list(chosen.prompt_ids),
                "chosen_ids": list(chosen.reply_ids),
                "rejected_ids": list(rejected.reply_ids),
                "chosen": chosen.reply,
                "rejected": rejected.reply,
                "agent": chosen.agent,
                "role": chosen.role,
                "round": chosen.round,
                "task_id": first.task_id,
                "sample": first.parent_sample,
                "turn_index": index,
                "rewards": {"chosen": kept[0].total, "rejected": kept[-1].total},
            }
        )
    return pairs

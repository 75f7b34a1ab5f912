"""iSFT examples (Optima): every kept conversation becomes one example per agent turn, from that agent's own view.

    input_ids = the exact prompt ids the agent read (its system prompt, examples, private notes, the task, the
                messages it received, the chat markup) + its reply ids (the reply, then the end-of-turn token)
    labels    = -100 on every prompt position, the reply ids on the reply positions

So the loss is on what the agent wrote and nothing else: every token another agent wrote reaches it only inside
its prompt, where it is masked. Each example names its agent, role, round, task and rollout, so a trainer can
train one adapter per role or one shared adapter; all fields are plain JSON values (TRL's SFTTrainer takes a
dataset with `input_ids` and `labels` as it is).

Left out, each for a reason: turns a tool answered (no model wrote them), turns a tool's `after` hook edited (the
reply holds text the model did not write), turns cut at their max_new_tokens unless `keep_overlong` (they never
closed, and teaching to stop mid-reply is worse than not teaching), and examples longer than `max_length` when
given (a trainer would truncate them from the right, cutting the only labelled part). Those dropped for length
are logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from kvmesh.training.optima.rollout import Rollout, RolloutTurn, end_of_turn_id

IGNORE = -100  # the label of positions left out of the loss (PyTorch's and transformers' ignore_index)
log = logging.getLogger("kvmesh")


def _trainable(turn: RolloutTurn, keep_overlong: bool) -> bool:
    return turn.model_call and not turn.edited_by and (keep_overlong or turn.finish_reason != "length")


def sft_example(rollout: Rollout, index: int) -> dict:
    """The example of turn `index` of `rollout` (no checks: see `sft_examples`)."""
    turn = rollout.turns[index]
    return {
        "input_ids": [*turn.prompt_ids, *turn.reply_ids],
        "labels": [IGNORE] * len(turn.prompt_ids) + list(turn.reply_ids),
        "agent": turn.agent,
        "role": turn.role,
        "round": turn.round,
        "task_id": rollout.task_id,
        "sample": rollout.sample,
        "turn_index": index,
        "reward": None if rollout.parts is None else rollout.parts.total,
    }


def sft_examples(
    rollouts: Sequence[Rollout], tokenizer, max_length: int | None = None, keep_overlong: bool = False
) -> list[dict]:
    """One example per trainable agent turn of each rollout, in order (see the module docstring).

    `tokenizer`: the trained model's tokenizer (or its `LocalLM`); every id must lie in its vocabulary and every
    closed reply must end with its end-of-turn token, or the rollouts came from another tokenizer (ValueError)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a LocalLM's, or the tokenizer itself
    end, vocabulary = end_of_turn_id(tokenizer), len(tokenizer)
    examples, too_long = [], 0
    for rollout in rollouts:
        for index, turn in enumerate(rollout.turns):
            if not _trainable(turn, keep_overlong):
                continue
            where = f"rollout {rollout.task_id}#{rollout.sample}, turn {index} ({turn.agent})"
            if not turn.prompt_ids:
                raise ValueError(f"{where}: a model turn without prompt ids")
            closed = turn.finish_reason != "length" and end is not None
            if closed and (not turn.reply_ids or turn.reply_ids[-1] != end):
                raise ValueError(f"{where}: the reply does not end with this tokenizer's end-of-turn token {end}")
            if max(turn.prompt_ids + turn.reply_ids) >= vocabulary:
                raise ValueError(f"{where}: token ids beyond this tokenizer's {vocabulary} (another model's rollout?)")
            if max_length is not None and len(turn.prompt_ids) + len(turn.reply_ids) > max_length:
                too_long += 1
                continue
            examples.append(sft_example(rollout, index))
    if too_long:
        log.warning("left out %d SFT examples longer than max_length=%d tokens", too_long, max_length)
    return examples

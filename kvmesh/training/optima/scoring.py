"""Optima's reward for a rollout: task score, less its tokens' cost, plus readability, less penalties.

    total = utility(score, tokens, λ_tokens, normaliser)          score − λ_tokens · tokens / normaliser
          + λ_read · readability
          − Σ penalties

- `tokens`: what `RewardConfig.count` says, as the runtime counted it: `generated` (default), the tokens the
  team wrote, which are also what its receivers read; or `all`, prompt + completion. Every rollout of a task reads
  the same fixed frame (system prompts, examples: about 800 of some 900 prompt + completion tokens for InfoQA's
  team), so under `all` a rollout half as long costs only a few percent less and the repeat penalty outweighs
  brevity. A run stopped by the token budget or the context counts what it spent (and pays the `stopped`
  penalty), never zero. Evaluations report both counts either way.
- `normaliser`: per task, the most tokens any rollout of that task spent (Optima), so the token cost lies in
  [0, λ_tokens]; a caller may pass its own per task (children of a branch scored against their parents' figure).
- `readability`: Optima's 1 / (the largest per-message loss): each message's mean token NLL under the frozen
  base model, read on the message alone from a start token, floored at `loss_floor` so that a very predictable
  message cannot outweigh the score; readability lies in (0, 1 / loss_floor]. Higher is more readable. Only
  messages the model wrote count (not tool answers, not empty ones); a rollout without one has readability 0.
  The forward passes call the transformers model directly, outside any adapter selection, so a model with
  kvmesh LoRA adapters loaded (`kvmesh.llm.adapters`) still scores with its base weights. All messages of all
  rollouts go through one length-sorted sequence of batched passes.
- penalties, each by name in `RewardParts.penalties`: `overlong` per turn cut at its max_new_tokens (finish
  "length"); `empty` once when every message is empty (or there is none); `impersonation` per message that
  speaks for another agent (a line that starts with another agent's name as a speaker label, "agent_2:", or with a
  "Message from <agent>" header copied from the prompt layout); `repeat` per message whose normalised text
  (case-folded, whitespace collapsed) an earlier message of the conversation already said; `stopped` once when
  the budget or the context stopped the run.

Caveats: speaker labels are the team's own agents' names, looked for in those agents' messages: not the decision
maker's name ("decision" is a common word), and not in the decision maker's message, which may cite who said
what. The decision step is left out of the repeat check by default: a decision maker that restates a member's
answer word for word is doing its job. A "Message from X" header is looked for with X any of the team's agents.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from kvmesh.agents.decision import DECISION_ROUND
from kvmesh.config import ConfigError
from kvmesh.training.optima.rollout import RewardParts, Rollout
from kvmesh.training.reward import utility

PENALTIES = ("overlong", "empty", "impersonation", "repeat", "stopped")
COUNTS = ("generated", "all")
LOGITS_CAP = 2**25  # logits per readability pass (positions × vocabulary): 128 MB in float32


@dataclass
class RewardConfig:
    """Weights of Optima's reward.

    Args:
        token_weight: λ_tokens in score − λ_tokens · tokens / normaliser (Optima: 0.4 to 0.6).
        readability_weight: λ_read, the weight of readability = 1 / the largest per-message loss (Optima: 0.6
            to 1.0); 0 skips the base model's forward passes.
        loss_floor: per-message losses below this count as this, so readability is at most 1 / loss_floor.
        overlong_penalty: subtracted per turn that hit its max_new_tokens.
        empty_penalty: subtracted when every message of the conversation is empty.
        impersonation_penalty: subtracted per message in which an agent speaks for another.
        repeat_penalty: subtracted per message that repeats an earlier one of the conversation.
        stopped_penalty: subtracted when the token budget or the context stopped the run.
        repeat_in_decision: count the decision maker's message in the repeat check too.
        readability_batch_size: messages per forward pass of the base model.
        count: the tokens the token cost counts: generated (what the team wrote) or all (prompt + completion).
    """

    token_weight: float = 0.5
    readability_weight: float = 0.6
    loss_floor: float = 1.0
    overlong_penalty: float = 0.2
    empty_penalty: float = 1.0
    impersonation_penalty: float = 0.5
    repeat_penalty: float = 0.2
    stopped_penalty: float = 0.5
    repeat_in_decision: bool = False
    readability_batch_size: int = 16
    count: str = "generated"

    def __post_init__(self) -> None:
        if self.count not in COUNTS:
            raise ConfigError(f"{{count}} must be one of {', '.join(COUNTS)}, got {self.count!r}", type(self).__name__)
        named = ["token_weight", "readability_weight", *(f"{n}_penalty" for n in PENALTIES)]
        negative = [name for name in named if getattr(self, name) < 0]
        if negative:
            raise ConfigError(", ".join("{" + name + "}" for name in negative) + " must be >= 0", type(self).__name__)
        if self.loss_floor <= 0 or self.readability_batch_size < 1:
            raise ConfigError("{loss_floor} must be > 0 and {readability_batch_size} at least 1", type(self).__name__)


# --- readability ----------------------------------------------------------------------------------------------


def _batches(lengths: Sequence[int], batch_size: int, cap: int) -> list[list[int]]:
    """Indices of non-empty rows, sorted by length, grouped `batch_size` at a time and so that a group's padded
    width times its rows stays within `cap` positions (at least one row per group)."""
    order = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < batch_size and (len(groups[-1]) + 1) * (lengths[i] + 1) <= cap:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


@torch.no_grad()
def message_losses(model, texts: Sequence[str], batch_size: int = 16) -> list[float | None]:
    """Each text's mean token NLL (nats) under `model` (a `LocalLM`), read alone after a start token (BOS, else
    EOS) so its first token is predicted too; None for an empty text.

    Texts are encoded as data (a control token they spell stays text), sorted by length and run `batch_size` at a
    time: one forward pass per batch, right-padded, with an attention mask. A batch also stays within
    `LOGITS_CAP` logits (positions × vocabulary), so long messages on a large vocabulary run fewer at a time."""
    tokenizer = model.tokenizer
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else min(model.eos_ids)
    encoded = [model.encode_with_spans(text, [(0, len(text))])[0] if text else [] for text in texts]
    losses: list[float | None] = [None] * len(texts)
    cap = max(1, LOGITS_CAP // len(tokenizer))
    device = model.device
    for rows in _batches([len(ids) for ids in encoded], batch_size, cap):
        width = 1 + max(len(encoded[i]) for i in rows)
        ids = torch.full((len(rows), width), model.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, i in enumerate(rows):
            ids[b, : 1 + len(encoded[i])] = torch.tensor([start, *encoded[i]])
            mask[b, : 1 + len(encoded[i])] = 1
        logits = model.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device), reduction="none")
        target = mask[:, 1:].to(device).float()
        means = (nll * target).sum(1) / target.sum(1)
        for b, i in enumerate(rows):
            losses[i] = means[b].item()
    return losses


def readability(model, texts: Sequence[str], batch_size: int = 16, loss_floor: float = 1.0) -> list[float | None]:
    """Each text's readability, 1 / max(its mean token NLL, loss_floor): higher is more readable (None if empty)."""
    return [None if loss is None else 1.0 / max(loss, loss_floor) for loss in message_losses(model, texts, batch_size)]


# --- penalties ------------------------------------------------------------------------------------------------


def _normalised(text: str) -> str:
    return " ".join(text.casefold().split())


def impersonates(text: str, speaker: str, agents: Sequence[str]) -> bool:
    """Whether `speaker`'s message speaks for another of `agents`: a line that opens with another agent's name as
    a speaker label ("agent_2:", "**agent_2**:", "[agent_2]:"; checked for the agents' own messages, as a decision
    maker may cite who said what), or with a "Message from <agent>" header (checked for everyone)."""
    others = "|".join(re.escape(name) for name in agents if name != speaker) if speaker in agents else ""
    if others and re.search(rf"(?im)^[ \t>*_#-]*\[?(?:{others})\]?[*_ \t]*:", text):
        return True
    names = "|".join(re.escape(name) for name in agents)
    return bool(names) and re.search(rf"(?im)^[ \t>*_#-]*message from (?:{names})\b", text) is not None


def penalties(rollout: Rollout, config: RewardConfig) -> dict[str, float]:
    """The penalties of one rollout, by name (only those that fired); see the module docstring."""
    found: dict[str, float] = {}
    overlong = sum(1 for turn in rollout.turns if turn.finish_reason == "length")
    if overlong:
        found["overlong"] = config.overlong_penalty * overlong
    if all(not turn.reply.strip() for turn in rollout.turns):
        found["empty"] = config.empty_penalty
    speaking = sum(1 for turn in rollout.turns if impersonates(turn.reply, turn.agent, rollout.agents))
    if speaking:
        found["impersonation"] = config.impersonation_penalty * speaking
    seen: set[str] = set()
    repeats = 0
    for turn in rollout.turns:
        text = _normalised(turn.reply)
        if not text or (turn.round == DECISION_ROUND and not config.repeat_in_decision):
            continue
        repeats += text in seen
        seen.add(text)
    if repeats:
        found["repeat"] = config.repeat_penalty * repeats
    if rollout.stop_reason != "completed":
        found["stopped"] = config.stopped_penalty
    return found


# --- the reward -----------------------------------------------------------------------------------------------


def counted(rollout: Rollout, count: str = "generated") -> int:
    """The tokens of `rollout` the token cost counts (`RewardConfig.count`)."""
    return rollout.completion_tokens if count == "generated" else rollout.tokens


def normalisers(rollouts: Sequence[Rollout], count: str = "generated") -> dict[str, float]:
    """Per task id: the most tokens (as `count` counts them) any of its rollouts spent (at least 1)."""
    most: dict[str, float] = {}
    for rollout in rollouts:
        most[rollout.task_id] = max(most.get(rollout.task_id, 1.0), float(counted(rollout, count)))
    return most


def score_rollouts(
    rollouts: Sequence[Rollout],
    config: RewardConfig,
    model=None,
    normaliser: Mapping[str, float] | None = None,
) -> list[Rollout]:
    """Score every rollout in place (`rollout.parts`, a `RewardParts`) and return them, in order.

    `model`: the frozen base model for readability (needed unless readability_weight is 0); `normaliser`: tokens
    per task id that cost λ_tokens, for the tasks it names (default: the most any rollout of the task spent)."""
    if model is None and config.readability_weight > 0:
        raise ValueError("readability needs the frozen base model: pass model=, or set readability_weight=0")
    scale = normalisers(rollouts, config.count) | dict(normaliser or {})
    written = [(r, t) for r, rollout in enumerate(rollouts) for t, turn in enumerate(rollout.turns) if turn.model_call]
    worst: dict[int, float] = {}  # rollout -> its largest per-message loss
    if config.readability_weight > 0:
        texts = [rollouts[r].turns[t].reply for r, t in written]
        for (r, _), loss in zip(written, message_losses(model, texts, config.readability_batch_size), strict=True):
            if loss is not None:
                worst[r] = max(worst.get(r, 0.0), loss)
    for r, rollout in enumerate(rollouts):
        norm = scale[rollout.task_id]
        read = 1.0 / max(worst[r], config.loss_floor) if r in worst else 0.0
        fired = penalties(rollout, config)
        tokens = counted(rollout, config.count)
        total = utility(rollout.score, tokens, config.token_weight, norm)
        total += config.readability_weight * read - sum(fired.values())
        cost = config.token_weight * tokens / norm
        rollout.parts = RewardParts(rollout.score, tokens, norm, cost, read, fired, total)
    return list(rollouts)

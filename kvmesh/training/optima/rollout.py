"""Optima rollouts: K sampled conversations per task through the ordinary `Team` runtime, kept as token ids.

    jobs      = (task, sample) for every task and k < samples, task-major
    batch b   = the next `batch_size` jobs, mixing tasks and samples, run by `team.run_batch` on a copy of the
                team whose agents sample at `temperature` with seed `batch_seed(seed, b)`
    rollout   = Rollout.from_result(result): every turn's exact prompt ids and reply ids, the task's score and the
                tokens the runtime counted

What a turn holds: `prompt_ids` are exactly the ids the model read. The runtime records the prompt as text
(`response_metadata["prompt"]`); it is re-encoded with the model's own `encode_prompt`, and the length is checked
against the call's `input_tokens`. `PromptMismatchError` refuses what cannot be re-encoded from its text: a turn
that read cached pieces (a kv-reuse, kv-select or c2c edge: the sender's generated ids, not its text's), or a
length mismatch (a task that spells a control token such as `<|im_end|>`, which the runtime reads as text).
Rollouts need `text` edges. `reply_ids` are the model's tokenization of
the reply (canonical, not necessarily the ids it sampled) plus the end-of-turn token the chat template closes an
assistant turn with (`<|im_end|>` for SmolLM2), so a trained model learns to stop; a turn cut at its
`max_new_tokens` (finish_reason "length") never closed, so it gets no end-of-turn token.

Counting: a rollout's tokens are the team's prompt + completion tokens from the runtime's own usage. A run stopped
by the token budget or the context still counts everything it spent (Optima counted such runs as zero tokens).

Caveats: one seed drives one running batch, so a rollout is reproducible only with the same tasks, samples,
batch size and seed (the same call gives the same rollouts); its recorded seed is its batch's seed. Turns a tool
answered have no prompt and cost no tokens; turns a tool's `after` hook edited are marked (`edited_by`).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from kvmesh.agents.result import TeamResult
from kvmesh.agents.team import Team
from kvmesh.agents.tools import Tool
from kvmesh.kvcomm.channel import channel_names, metadata_key
from kvmesh.llm.chat import MARKER
from kvmesh.training.examples import example_id, example_task

Score = Callable[[Any, TeamResult], float]  # (example: a Task or a benchmark Sample, result) -> score in [0, 1]


class PromptMismatchError(ValueError):
    """A recorded prompt whose re-encoded ids are not the ids the model read."""


@dataclass
class RewardParts:
    """What a rollout's reward is made of; `total` = score − token_cost + readability_weight · readability −
    Σ penalties (`token_cost` = token_weight · tokens / normaliser)."""

    score: float
    tokens: int
    normaliser: float
    token_cost: float
    readability: float
    penalties: dict[str, float] = field(default_factory=dict)
    total: float = 0.0


@dataclass
class RolloutTurn:
    """One message of a rollout. `round` is an int, or "decision" for the decision maker's turn; `tool` names the
    tool that answered the turn (no prompt, no tokens); `edited_by` the tools whose `after` hooks edited the reply."""

    agent: str
    role: str
    round: int | str
    prompt: str | None
    prompt_ids: list[int]
    reply: str
    reply_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    tool: str | None = None
    edited_by: list[str] = field(default_factory=list)

    @property
    def model_call(self) -> bool:
        return self.tool is None


@dataclass
class Rollout:
    """One conversation of one task: its turns in schedule order, answer, score, tokens and (once scored) reward.

    `agents`: the team's agents (not its decision maker), whose names the reward's check for an agent speaking
    for another looks for. `prompt_tokens` and `completion_tokens` are the runtime's totals. A child of a branch
    (`kvmesh.training.optima.dpo_data`) has `branched_at`, the turn it was sampled from (its turns before that are
    rollout `parent_sample`'s, replayed), and its `sample` is its index among the branch's children. An explored
    rollout (`reframed`) names the `protocol` whose team sampled it; its prompts are already the policy's."""

    task_id: str
    question: str
    sample: int
    seed: int | None
    agents: list[str]
    turns: list[RolloutTurn]
    answer: str | None
    score: float
    prompt_tokens: int
    completion_tokens: int
    stop_reason: str = "completed"
    parts: RewardParts | None = None
    branched_at: int | None = None
    parent_sample: int | None = None
    protocol: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def total(self) -> float:
        """The reward (raises until the rollout is scored)."""
        if self.parts is None:
            raise ValueError(f"rollout {self.task_id}#{self.sample} has no reward yet; score_rollouts first")
        return self.parts.total

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("turns", "parts")}
        data["turns"] = [asdict(turn) for turn in self.turns]
        data["parts"] = None if self.parts is None else asdict(self.parts)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Rollout:
        values = dict(data)
        values["turns"] = [RolloutTurn(**turn) for turn in data["turns"]]
        values["parts"] = None if data.get("parts") is None else RewardParts(**data["parts"])
        return cls(**values)

    @classmethod
    def from_result(
        cls, result: TeamResult, team: Team, task_id: str, sample: int = 0, seed: int | None = None, score: float = 0.0
    ) -> Rollout:
        """A rollout of `result`, which `team` (or a copy of it) produced; see the module docstring for the ids."""
        members = {agent.name: agent for agent in team.members}
        ends: dict[int, int | None] = {}
        turns = []
        for message in result.messages:
            agent, meta, usage = members[message.name], message.response_metadata, message.usage_metadata
            llm = agent.llm
            if id(llm) not in ends:
                ends[id(llm)] = end_of_turn_id(llm.tokenizer)
            reply_ids = llm.encode_with_spans(message.content, [(0, len(message.content))])[0]
            prompt, prompt_ids, finish = meta.get("prompt"), [], meta.get("finish_reason")
            if prompt is not None:
                cached = [key for key in map(metadata_key, channel_names()) if key in meta]
                if cached:  # its pieces held a sender's generated ids, which its text need not re-encode to
                    raise PromptMismatchError(
                        f"task {task_id}, agent {message.name!r} round {meta['round']} read cached pieces "
                        f"({cached[0]}: {meta[cached[0]]}), so its prompt ids are not its text's; rollouts need "
                        "text edges"
                    )
                prompt_ids = llm.encode_prompt(prompt)
                if len(prompt_ids) != usage["input_tokens"]:
                    raise PromptMismatchError(
                        f"task {task_id}, agent {message.name!r} round {meta['round']}: the recorded prompt "
                        f"re-encodes to {len(prompt_ids)} tokens but the model read {usage['input_tokens']}; "
                        "rollouts need prompts that are plain text (edges that read text, no control token "
                        "spelled in the task)"
                    )
                if finish != "length" and ends[id(llm)] is not None:
                    reply_ids = [*reply_ids, ends[id(llm)]]
            turns.append(
                RolloutTurn(
                    agent=message.name,
                    role=agent.role,
                    round=meta["round"],
                    prompt=prompt,
                    prompt_ids=prompt_ids,
                    reply=message.content,
                    reply_ids=reply_ids,
                    finish_reason=finish,
                    prompt_tokens=usage["input_tokens"],
                    completion_tokens=usage["output_tokens"],
                    tool=meta.get("tool"),
                    edited_by=list(meta.get("edited_by", [])),
                )
            )
        total = result.usage.total
        return cls(
            task_id=task_id,
            question=result.task.question,
            sample=sample,
            seed=seed,
            agents=team.agent_names,
            turns=turns,
            answer=result.answer,
            score=float(score),
            prompt_tokens=total.input_tokens,
            completion_tokens=total.output_tokens,
            stop_reason=result.stop_reason,
        )


def reframed(rollout: Rollout, sampled_by: Team, policy: Team, protocol: str) -> Rollout:
    """`rollout`, which `sampled_by` produced, as if `policy` had written the same replies: each turn's prompt
    gets the policy agent's frame (system prompt, examples, markup) around the same user turn, re-encoded with
    its model, and the rollout's prompt tokens are recounted from those ids (what the policy would read)."""
    sampler = {agent.name: agent for agent in sampled_by.members}
    target = {agent.name: agent for agent in policy.members}
    turns, prompt_tokens = [], rollout.prompt_tokens
    for turn in rollout.turns:
        if turn.prompt is None:
            turns.append(turn)
            continue
        old, new = sampler[turn.agent], target[turn.agent]
        llm = new.llm
        before, _ = llm.chat.frame(old.system_text(), old.examples)
        if not turn.prompt.startswith(before):
            raise PromptMismatchError(
                f"task {rollout.task_id}, agent {turn.agent!r}: its prompt does not start with the frame of the team "
                "that sampled it; pass the team the rollout came from"
            )
        prompt = llm.chat.frame(new.system_text(), new.examples)[0] + turn.prompt[len(before) :]
        ids = llm.encode_prompt(prompt)
        prompt_tokens += len(ids) - len(turn.prompt_ids)
        turns.append(replace(turn, prompt=prompt, prompt_ids=ids, prompt_tokens=len(ids)))
    return replace(rollout, turns=turns, prompt_tokens=prompt_tokens, protocol=protocol)


def end_of_turn_id(tokenizer) -> int | None:
    """The token the chat template closes an assistant turn with (`<|im_end|>` for SmolLM2): the first token after
    an assistant message's content, when it is a control token; else the tokenizer's EOS (None if it has none)."""
    if getattr(tokenizer, "chat_template", None):
        turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": MARKER}]
        after = tokenizer.apply_chat_template(turns, tokenize=False).partition(MARKER)[2]
        ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        if ids and ids[0] in tokenizer.added_tokens_decoder:
            return ids[0]
    return tokenizer.eos_token_id


def batch_seed(seed: int, batch: int) -> int:
    """The sampling seed of batch `batch` of a run seeded `seed` (distinct per (seed, batch), same across runs)."""
    return random.Random(f"optima-{seed}-{batch}").randrange(2**31)


def team_variant(
    team: Team,
    seed: int | None,
    temperature: float | None = None,
    first_tool: Tool | None = None,
    token_budget: int | None = -1,
) -> Team:
    """A shallow copy of `team` whose members sample at `temperature` (None: their own), seeded `seed`, with
    `first_tool` ahead of each member's tools and `token_budget` (-1: the team's). It shares the team's graph,
    designer and channel objects (a kv-reuse engine keeps what it learnt); the original is untouched."""

    def member(agent):
        changes: dict = {} if temperature is None else {"temperature": temperature}
        if first_tool is not None:
            changes["tools"] = (first_tool, *agent.tools)
        return replace(agent, **changes) if changes else agent

    variant = copy.copy(team)  # `plan()` reads agents, decision, token budget and seed from these attributes
    variant.agents = [member(agent) for agent in team.agents]
    if team.decision.agent is not None:
        variant.decision = replace(team.decision, agent=member(team.decision.agent))
    variant.seed = seed
    if token_budget != -1:
        variant.token_budget = token_budget
    return variant


def sample_rollouts(
    team: Team,
    tasks: Sequence,
    samples: int,
    temperature: float,
    seed: int,
    batch_size: int | None = None,
    *,
    score: Score,
) -> list[Rollout]:
    """`samples` rollouts of each task (a `Task` or a benchmark `Sample`), in task-major order, each scored with
    `score(task, result)`; `batch_size` rollouts run together (None or 0: all at once)."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    jobs = [(index, k) for index in range(len(tasks)) for k in range(samples)]
    size = batch_size or max(len(jobs), 1)
    rollouts: list[Rollout] = []
    for number, start in enumerate(range(0, len(jobs), size)):
        chunk = jobs[start : start + size]
        seeded = batch_seed(seed, number)
        variant = team_variant(team, seeded, temperature)
        results = variant.run_batch([example_task(tasks[index]) for index, _ in chunk])
        for (index, k), result in zip(chunk, results, strict=True):
            example = tasks[index]
            rollouts.append(
                Rollout.from_result(
                    result, variant, example_id(example, index), k, seeded, float(score(example, result))
                )
            )
    return rollouts

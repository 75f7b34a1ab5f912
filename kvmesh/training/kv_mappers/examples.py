"""Training examples for c2c's trained mappers, built from the prompts the mapper will be used with, and the
receiver's loss over its reply in each c2c mode.

    sender, receiver = study_agents(LatentStudyConfig(model=R), sender_model=S)   # `kvmesh bench latent`'s pair
    examples = build_examples(sender, receiver, infoqa_tasks)
    loss = transfer_loss(fuser, receiver_lm, example, rope)    # the mapped sender prompt in front of the receiver's
    loss = fusion_loss(fuser, receiver_lm, example, rope)      # the receiver's task rows fused with the sender's

An example holds what each agent's turn really reads (`kvmesh.agents.prompts.plan_prompt` with the agent's system
prompt, worked examples and the task as the team lays it out: the sender holds the notes, the receiver the
question alone) and the receiver's target reply in its worked example's format: the notes' sentences that hold
the answer, then "Answer: <gold>", then the end of its turn (`target_reply`). The loss is the receiver's next-token
cross-entropy over that whole reply.

Both models are frozen: what does not depend on the mapper (the sender's position-free cache, the receiver's rows
of its prompt before the task) is computed once per example, without gradients, and kept on it.

Caveat: the reply's sentences are picked from the notes by the answer's words; for a two-hop task that is the
second hop's sentence, as the worked example's format has one sentence before the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kvmesh.agents.agent import Agent
from kvmesh.agents.prompts import plan_prompt
from kvmesh.agents.task import Task
from kvmesh.evals.benchmarks.infoqa import InfoQATask
from kvmesh.kvcomm.assembly import TASK
from kvmesh.kvcomm.c2c.capture import position_free_kv, prefix_cache
from kvmesh.kvcomm.c2c.mappers.base import KVMapper
from kvmesh.kvcomm.c2c.task_fusion import task_rows
from kvmesh.kvcomm.rope import LayerRope
from kvmesh.llm.cache import cache_argument

GATE_FLOOR = 1e-6  # a soft gate's least value in the training bias: log 1e-6 ≈ -13.8 leaves almost no attention


@dataclass
class Example:
    """One training example, tokenized as the two turns read it.

    Args:
        senders: the sender's whole prompt and [start, end) of the task in it: [0] holding the task's own notes,
            [1] holding another task's notes with this task's question (the content control: what the receiver
            gets from a sender that read the wrong notes).
        prompt_ids: the receiver's own prompt (what follows a mapped context in transfer; all it reads in fusion).
        task_span: [start, end) of the task in it.
        task_text: the task's text (both prompts hold it; fusion aligns the two tokenizations over it).
        reply_ids: the receiver's target reply, its end of turn included.
        cached: tensors of the frozen models, computed on first use.
    """

    senders: tuple[tuple[list[int], tuple[int, int]], tuple[list[int], tuple[int, int]]]
    prompt_ids: list[int]
    task_span: tuple[int, int]
    task_text: str
    reply_ids: list[int]
    cached: dict = field(default_factory=dict, repr=False)

    @property
    def sender_ids(self) -> list[int]:
        return self.senders[0][0]

    @property
    def sender_task(self) -> tuple[int, int]:
        return self.senders[0][1]


def target_reply(task: InfoQATask) -> str:
    """The reply in the receiver's worked example's format: the notes' sentences that name the answer, then
    "Answer: <gold>"."""
    sentences = [s.strip() for shard in task.shards for s in re.split(r"(?<=\.)\s+", shard) if s.strip()]
    answer = re.compile(rf"(?:^|\W){re.escape(task.answer)}(?:\W|$)", re.IGNORECASE)
    evidence = [s for s in sentences if answer.search(s)]
    return "\n".join([*evidence[:1], f"Answer: {task.answer}"])


def end_of_turn(model) -> list[int]:
    """The ids a model's chat layout writes after an assistant's reply, up to its first end-of-sequence token."""
    marker = "\x00reply\x00"
    text = model.chat.render([("user", "x"), ("assistant", marker)], add_generation_prompt=False)
    ids = model.encode_prompt(text[text.index(marker) + len(marker) :])
    ends = [i for i, token in enumerate(ids) if token in model.eos_ids]
    return ids[: ends[0] + 1] if ends else []


def _plan(agent: Agent, task: Task):
    plan = plan_prompt(
        agent.llm, agent.system_text(), task.question, context=task.context, shard=task.shard_for(agent.name, 0),
        examples=agent.examples,
    )  # fmt: skip
    (task_piece,) = [piece for piece in plan.pieces if piece.kind == TASK]
    return plan, task_piece.text


def build_examples(sender: Agent, receiver: Agent, infoqa: Sequence[InfoQATask]) -> list[Example]:
    """Examples for `infoqa` tasks: the sender holds every shard, the receiver the question alone; each also holds
    the sender's prompt with the next task's notes (the content control)."""
    built = []
    for index, item in enumerate(infoqa):
        senders = []
        for source in (item, infoqa[(index + 1) % len(infoqa)]):
            notes = "\n".join(shard.strip() for shard in source.shards)
            sent, _ = _plan(sender, Task(item.question, id=item.id, shards={sender.name: notes}))
            senders.append((sent.token_ids, sent.task_span))
        read, task_text = _plan(receiver, Task(item.question, id=item.id))
        reply = receiver.llm.tokenizer(target_reply(item), add_special_tokens=False)["input_ids"]
        built.append(
            Example(tuple(senders), read.token_ids, read.task_span, task_text, reply + end_of_turn(receiver.llm))
        )
    return built


def reply_loss(
    receiver, ids: Sequence[int], reply: int, cache: tuple[torch.Tensor, torch.Tensor] | None = None, hidden=None
) -> torch.Tensor:
    """The receiver's cross-entropy over the last `reply` tokens of `ids`, read after `cache` (rotated keys and
    values (L, H, C, D) at positions 0 .. C - 1; None: nothing); `hidden`: per-layer column masks or biases
    (`kvmesh.llm.layer_mask`)."""
    model, offset = receiver.model, 0 if cache is None else cache[0].shape[2]
    kwargs = {} if cache is None else cache_argument(model, prefix_cache(*cache, model.config))
    logits = model(
        input_ids=torch.tensor([list(ids)]),
        position_ids=torch.arange(offset, offset + len(ids))[None],
        attention_mask=torch.ones(1, offset + len(ids), dtype=torch.long),
        logits_to_keep=reply + 1,
        use_cache=True,
        **kwargs,
        **({"hidden": hidden} if hidden else {}),
    ).logits[0, :-1]
    return F.cross_entropy(logits.float(), torch.tensor(list(ids[-reply:])))


def sender_cache(sender, example: Example, layers: Sequence[int], rope: LayerRope, which: int = 0):
    """The sender's position-free cache of its prompt `which` (0: its own notes, 1: the control's), in the layers
    a mapper reads, kept on the example."""
    key = ("sender", which)
    if key not in example.cached:
        example.cached[key] = position_free_kv(sender, example.senders[which][0], layers, rope)
    return example.cached[key]


def transfer_loss(mapper: KVMapper | None, receiver, example: Example, context, rope: LayerRope) -> torch.Tensor:
    """The receiver's reply loss reading `context` (a sender's position-free cache) mapped by `mapper` in front of
    its own prompt; `mapper` None reads nothing (the no-communication baseline). A gated mapper's gate g scales
    the attention its layer pays the mapped context (a log g bias on those columns): a closed gate hides it, as
    the channel does."""
    ids, reply = example.prompt_ids + example.reply_ids, len(example.reply_ids)
    if mapper is None:
        return reply_loss(receiver, ids, reply)
    keys, values = mapper.transfer(*context)
    return reply_loss(receiver, ids, reply, (rope.apply(keys), values), gate_columns(mapper, keys.shape[2], len(ids)))


def gate_columns(mapper: KVMapper, context: int, own: int) -> dict[int, torch.Tensor] | None:
    """Per receiver layer, how its gate acts on the `context` mapped columns (and not on the `own` ones after
    them): hard gates (all 0 or 1: eval mode, or saturated) hide a closed layer's columns exactly, as the channel
    does; soft ones add log g to their logits, g floored at GATE_FLOOR (log 0 would make the loss's gradient NaN)."""
    gates = mapper.layer_gates()
    if gates is None:
        return None
    if bool(((gates == 0) | (gates == 1)).all()):  # hard: a mask, no bias
        closed = (gates <= 0).tolist()
        hide = torch.cat([torch.ones(1, context, dtype=torch.bool), torch.zeros(1, own, dtype=torch.bool)], dim=1)
        return {layer: hide for layer, shut in enumerate(closed) if shut} or None
    bias = gates.clamp_min(GATE_FLOOR).log()
    return {layer: torch.cat([g.expand(1, context), torch.zeros(1, own)], dim=1) for layer, g in enumerate(bias)}


def fusion_rows(
    sender, receiver, example: Example, layers: Sequence[int], ropes: tuple[LayerRope, LayerRope], which: int = 0
):
    """What fusion reads, kept on the example: the receiver's rotated cache before its task, its position-free
    rows of the task, and the sender's (prompt `which`: 0 its own notes, 1 the control's) position-free rows of
    the task laid out on the receiver's task tokens."""
    if "receiver" not in example.cached:
        start, end = example.task_span
        keys, values = position_free_kv(receiver, example.prompt_ids[:end], rope=ropes[1])
        before = (ropes[1].apply(keys[:, :, :start]), values[:, :, :start])
        example.cached["receiver"] = (before, (keys[:, :, start:end], values[:, :, start:end]))
    key = ("fusion", which)
    if key not in example.cached:
        ids, (lo, hi) = example.senders[which]
        sender_keys, sender_values = sender_cache(sender, example, layers, ropes[0], which)
        rows = task_rows(
            example.task_text, ids[lo:hi], sender_keys[:, :, lo:hi], sender_values[:, :, lo:hi], sender.tokenizer,
            receiver.tokenizer,
        )  # fmt: skip
        example.cached[key] = (rows.keys, rows.values)
    return (*example.cached["receiver"], example.cached[key])


def fusion_loss(mapper: KVMapper | None, receiver, example: Example, rows, rope: LayerRope) -> torch.Tensor:
    """The receiver's reply loss when its task rows are fused with the sender's by `mapper` (None: its own rows,
    the no-communication baseline); `rows` from `fusion_rows`."""
    (before_keys, before_values), (own_keys, own_values), sender_rows = rows
    start, end = example.task_span
    if mapper is not None:
        own_keys, own_values = mapper.fuse(own_keys, own_values, *sender_rows)
    keys = torch.cat([before_keys, rope.apply(own_keys, torch.arange(start, end))], dim=2)
    values = torch.cat([before_values, own_values], dim=2)
    ids = example.prompt_ids[end:] + example.reply_ids
    return reply_loss(receiver, ids, len(example.reply_ids), (keys, values))

"""The agents, teams and tasks every mode of `kvmesh bench latent` runs.

Public so that everything that must run the study's exact prompts builds them here: the study itself, `kvmesh
demo`'s side-by-side, `kvmesh c2c train` (a mapper learns on the prompts it is used with) and the tests that
compare kvmesh's modes with a peer's. The study's settings (`LatentStudyConfig`) say which model and token caps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from kvmesh.agents.agent import Agent
from kvmesh.agents.task import Task
from kvmesh.agents.team import Team
from kvmesh.evals.benchmarks.base import SOLO
from kvmesh.evals.benchmarks.infoqa import EXAMPLES, short_answer
from kvmesh.graph import CommGraph, Edge


class StudySettings(Protocol):
    """What the builders read of the study's settings (`LatentStudyConfig` has them)."""

    model: str  # the receiver's model, also the sender's by default
    message_tokens: int  # cap on a text relay's message
    answer_tokens: int  # cap on the receiver's answer


SENDER, RECEIVER = "sender", "receiver"
# The sender only holds the notes: told to copy or summarise them, or shown a worked relay turn, SmolLM2-135M
# relayed worse (InfoQA validation, 64 tasks: 0.312 against 0.344 for this prompt) and kv-select read worse
# (at every layer: 0.234 against 0.375), since the receiver then reads a whole instructed exchange first.
SENDER_PROMPT = "You hold these notes."
RECEIVER_PROMPT = "Answer the question with a few words, from your notes or your teammate. End with: Answer: X"
KV_SELECT = "kv-select"  # the channel the study compares against the text relay, by its edge name


def study_agents(config: StudySettings, sender_model: str | None = None) -> tuple[Agent, Agent]:
    """The study's sender (on `sender_model`, default the receiver's model; it holds the notes and writes up to
    `message_tokens` on a text edge) and receiver (one worked example, answers in up to `answer_tokens`)."""
    sender = Agent(
        SENDER,
        SENDER,
        system_prompt=SENDER_PROMPT,
        model=sender_model or config.model,
        max_new_tokens=config.message_tokens,
    )
    return sender, _receiver(config)


def _receiver(config: StudySettings) -> Agent:
    return Agent(
        RECEIVER,
        RECEIVER,
        system_prompt=RECEIVER_PROMPT,
        model=config.model,
        max_new_tokens=config.answer_tokens,
        examples=EXAMPLES[SOLO],
    )


def pair_team(config: StudySettings, channel: str, sender_model: str | None = None, **channels) -> Team:
    """Sender -> receiver over one `channel` edge; `channels` are the channels' settings by edge name."""
    sender, receiver = study_agents(config, sender_model)
    graph = CommGraph([SENDER, RECEIVER], [Edge(SENDER, RECEIVER, channel=channel)])
    return Team([sender, receiver], graph, decision="last", channels=channels or None)


def alone_team(config: StudySettings) -> Team:
    """The receiver alone: the floor without shards, the skyline when it reads them itself."""
    return Team([_receiver(config)], CommGraph([RECEIVER]), decision="last")


def kv_select_team(
    config: StudySettings, fraction: int, tokens: int = 100, thoughts: int = 0, scores: tuple | None = None
) -> Team:
    """A kv-select pair reading `fraction`% of the layers and `tokens`% of the context tokens, after `thoughts`
    latent steps of the sender; `scores` are calibration scores (None: the depth prior alone)."""
    settings = pair_team(config, KV_SELECT).channels[KV_SELECT].config
    chosen = replace(settings, fraction=fraction / 100, token_fraction=tokens / 100, thoughts=thoughts, scores=scores)
    return pair_team(config, KV_SELECT, **{KV_SELECT: chosen})


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

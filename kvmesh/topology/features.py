"""Node features a GNN designer reads: one row per agent and one for the task's virtual node.

For agent i on a task (D = the sentence encoder's width, 384 for MiniLM):

    [ e(profile_i) | e(notes_i) | e(task) | cos(profile_i, task) | relevance(notes_i, task) | has_notes | 0 ]

and for the task node `[ 0 | 0 | e(task) | 0 | 0 | 0 | 1 ]`, so F = 3·D + 4. `profile_i` is the agent's role
and system prompt; `notes_i` its private shard of the task, if any; `task` the question with its shared
context. `relevance` is the best cosine between the task and any one sentence of the notes: a whole-shard
embedding averages the one fact that matters with its distractors (`python benchmarks/designer_features.py`:
on 200 InfoQA validation tasks the agent ranked first by whole-shard cosine holds the answer 85.5% of the time,
by best sentence 100%).

Caveat: the designer reads the task and the agents' notes as embeddings only; its own cost (a few
milliseconds of MiniLM per task on a CPU) is not counted as LLM tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kvmesh.agents.agent import Agent
    from kvmesh.agents.task import Task
    from kvmesh.llm.embedding import SentenceEncoder

EXTRA_FEATURES = 4  # cos(profile, task), relevance(notes, task), has_notes, is_task


def sentences(text: str) -> list[str]:
    return [s for s in (part.strip() for part in re.split(r"(?<=[.!?])\s+|\n+", text)) if s]


def task_text(task: Task) -> str:
    return f"{task.context.strip()}\n{task.question.strip()}" if task.context else task.question.strip()


class NodeFeatures:
    """Builds (B, N + 1, F) features for B tasks over a team's N agents (the task node last)."""

    def __init__(self, encoder: SentenceEncoder, agents: Sequence[Agent]) -> None:
        self.encoder = encoder
        self.names = [agent.name for agent in agents]
        self.profiles = [f"{agent.role}. {agent.system_text()}" for agent in agents]
        self.dim = 3 * encoder.dim + EXTRA_FEATURES

    def __call__(self, tasks: Sequence[Task]) -> torch.Tensor:
        n = len(self.names)
        notes = [[task.shard_for(name, i) or "" for i, name in enumerate(self.names)] for task in tasks]
        pieces = [[sentences(text) for text in row] for row in notes]
        texts = [task_text(t) for t in tasks]
        flat = self.profiles + texts + [t for row in notes for t in row]
        flat += [s for row in pieces for parts in row for s in parts]
        vectors = self.encoder.encode(flat)
        d = self.encoder.dim
        profiles, rest = vectors[:n], vectors[n:]
        task_vectors, rest = rest[: len(tasks)], rest[len(tasks) :]
        note_vectors, sentence_vectors = rest[: len(tasks) * n].view(len(tasks), n, d), rest[len(tasks) * n :]
        features = torch.zeros(len(tasks), n + 1, self.dim)
        offset = 0
        for b, task_vector in enumerate(task_vectors):
            features[b, :n, :d] = profiles
            features[b, :n, d : 2 * d] = note_vectors[b]
            features[b, :, 2 * d : 3 * d] = task_vector
            features[b, :n, 3 * d] = profiles @ task_vector
            for i, parts in enumerate(pieces[b]):
                if parts:
                    block = sentence_vectors[offset : offset + len(parts)]
                    features[b, i, 3 * d + 1] = (block @ task_vector).max()
                    features[b, i, 3 * d + 2] = 1.0
                    offset += len(parts)
            features[b, n, 3 * d + 3] = 1.0
        return features

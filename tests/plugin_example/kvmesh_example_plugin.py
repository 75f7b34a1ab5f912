"""A package outside kvmesh that plugs into it through entry points only: a channel, a benchmark, a designer
and a model backend. `tests/test_plugins.py` installs it (this file and a `*.dist-info` naming them) into a
temporary folder on sys.path; kvmesh never imports it by name.

    [kvmesh.channels]    marked = kvmesh_example_plugin:MarkedChannel
    [kvmesh.benchmarks]  capitals = kvmesh_example_plugin:Capitals
    [kvmesh.designers]   fixed-logits = kvmesh_example_plugin:FixedLogits
    [kvmesh.backends]    echo = kvmesh_example_plugin:load_echo     (specs `echo:MODEL`)
"""

from __future__ import annotations

from collections.abc import Hashable

from kvmesh.agents.task import Task
from kvmesh.evals.benchmarks.base import Benchmark, Sample, Score
from kvmesh.kvcomm.assembly import Piece
from kvmesh.kvcomm.text import TextChannel
from kvmesh.llm.base import Generation, GenerationRequest, LanguageModel, RunningBatch
from kvmesh.llm.local import load_model
from kvmesh.llm.segment import KVSegment
from kvmesh.llm.tokenized import TokenizedModel
from kvmesh.topology.edge_logits import EdgeLogitsDesigner

MARK = "[marked by a plug-in]"


class MarkedChannel(TextChannel):
    """The text channel, with each message marked: the receiver reads `MARK` before the sender's reply."""

    name = "marked"

    def layout(
        self, model: LanguageModel, glue: str, content: str, cached: KVSegment | None, key: Hashable
    ) -> list[Piece]:
        return super().layout(model, glue, f"{MARK} {content}", cached, key)


class Capitals(Benchmark):
    """Two questions held in memory; an answer is correct when it names the capital."""

    name = "capitals"
    ROLES = (("geographer", "Name the capital city. End with: Answer: X"),)
    DECISION_PROMPT = "Give the capital city. End with: Answer: X"
    QUESTIONS = (("capitals/0", "What is the capital of France?", "Paris"), ("capitals/1", "Of Italy?", "Rome"))

    def samples(self, split: str) -> list[Sample]:
        return [Sample(id_, Task(question, id=id_), gold, f"Answer: {gold}") for id_, question, gold in self.QUESTIONS]

    def score(self, sample: Sample, answer: str) -> Score:
        return Score(sample.gold.lower() in answer.lower(), answer.strip())


class FixedLogits(EdgeLogitsDesigner):
    """The edge-logits designer under a kind of its own: saved and loaded by that kind."""

    kind = "fixed-logits"


class CountingBatch:
    """A running batch that passes rows to another and counts them."""

    def __init__(self, inner: RunningBatch, model: EchoModel) -> None:
        self.inner, self.model = inner, model

    @property
    def has_work(self) -> bool:
        return self.inner.has_work

    def submit(self, request: GenerationRequest, tag: Hashable) -> None:
        self.model.rows += 1
        self.inner.submit(request, tag)

    def step(self) -> list[tuple[Hashable, Generation]]:
        return self.inner.step()


class EchoModel(TokenizedModel):
    """Backend `echo:MODEL`: the in-process model MODEL's rows, run behind a backend of its own (counted)."""

    def __init__(self, spec: str, inner: TokenizedModel) -> None:
        super().__init__(inner.tokenizer, spec)
        self.inner = inner
        self.rows = 0

    def new_batch(self, seed: int | None = None) -> CountingBatch:
        return CountingBatch(self.inner.new_batch(seed), self)


def load_echo(spec: str) -> EchoModel:
    """The backend's factory: `echo:tiny-random` wraps the in-process `tiny-random`."""
    return EchoModel(spec, load_model(spec.removeprefix("echo:")))

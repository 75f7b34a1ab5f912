"""The scheduler on its own, through the `LanguageModel` protocol: a scripted character-level backend that is not
a `LocalLM` runs whole teams, and every engine step serves the rows of every task at once."""

import time

import pytest

from kvmesh import Agent, ChannelNotAvailableError, CommGraph, LanguageModel, Task, Team
from kvmesh.llm.base import Generation, GenerationRequest
from kvmesh.llm.chat import ChatFormat


class Characters:
    """A tokenizer with one token per character and no chat template (the plain "Role: text" layout)."""

    chat_template = None
    bos_token = ""


class ScriptedBatch:
    """Each row writes "seen N" (N: its prompt's length), one character per step."""

    def __init__(self, log: list[int]) -> None:
        self.rows: list[list] = []
        self.log = log  # rows served by each step

    @property
    def has_work(self) -> bool:
        return bool(self.rows)

    def submit(self, request: GenerationRequest, tag) -> None:
        reply = f"seen {len(request.prompt_ids)}"[: request.max_new_tokens]
        self.rows.append([request, tag, reply, 0, time.perf_counter()])

    def step(self):
        self.log.append(len(self.rows))
        done, kept = [], []
        for row in self.rows:
            row[3] += 1
            request, tag, reply, count, started = row
            if count < len(reply):
                kept.append(row)
                continue
            ids = [ord(c) for c in reply]
            elapsed = time.perf_counter() - started
            done.append((tag, Generation(reply, ids, len(request.prompt_ids), "eos", elapsed, elapsed, started)))
        self.rows = kept
        return done


class ScriptedModel:
    """A `LanguageModel` that is not a LocalLM: no torch, no weights."""

    spec = "scripted"  # written to the protocol's required members only: no context_length, no literal=

    def __init__(self) -> None:
        self.chat = ChatFormat.for_tokenizer(Characters())
        self.steps: list[int] = []

    def render(self, messages) -> str:
        return self.chat.render(messages)

    def encode_prompt(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def encode_with_spans(self, text: str):
        return self.encode_prompt(text), [(i, i + 1) for i in range(len(text))]

    def decode(self, token_ids) -> str:
        return "".join(map(chr, token_ids))

    def count_tokens(self, text: str) -> int:
        return len(text)

    def new_batch(self, seed=None) -> ScriptedBatch:
        return ScriptedBatch(self.steps)


def team_on(model, channel="text", names=("a", "b")):
    agents = [Agent(n, role=f"{n} role", model=model, max_new_tokens=16) for n in names]
    graph = CommGraph.preset("chain", agents).with_channel(channel)
    return Team(agents, graph, decision={"method": "decision", "channel": channel})


def test_any_language_model_runs_a_team_with_exact_usage():
    model = ScriptedModel()
    assert isinstance(model, LanguageModel)
    result = team_on(model).run(Task("Q?", shards=["note for a", "note for b"]))
    assert [m.name for m in result.messages] == ["a", "b", "decision"]
    for message in result.messages:
        prompt = message.response_metadata["prompt"]
        assert message.content == f"seen {len(prompt)}"  # the backend saw exactly the planned prompt
        assert message.usage_metadata["input_tokens"] == len(prompt)
    assert "Message from a (this round):\nseen" in result.messages[1].response_metadata["prompt"]
    assert result.usage.per_edge["a->b"].input_tokens == len(
        f"Message from a (this round):\n{result.messages[0].content}"
    )


def test_each_step_serves_every_task():
    model = ScriptedModel()
    results = team_on(model).run_batch([Task(f"Question {i}?") for i in range(3)])
    assert len(results) == 3 and all(r.answer.startswith("seen") for r in results)
    # three tasks in lockstep: a's rows of all tasks, then b's, then the decision's: never fewer than 3 a step
    assert model.steps and min(model.steps) == 3 and max(model.steps) == 3


def test_kv_channels_refuse_a_model_outside_this_process_before_any_call():
    model = ScriptedModel()
    with pytest.raises(ChannelNotAvailableError, match=r"agent 'a' cannot take part in kv-reuse: scripted: kv-reuse"):
        team_on(model, channel="kv-reuse").run("Q?")
    assert model.steps == []  # nothing ran
    with pytest.raises(TypeError, match="model must be a LanguageModel"):
        Agent("x", model=object())

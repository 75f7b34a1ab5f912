"""The kv-reuse channel inside a team: piece-wise prompts, reuse through the runtime, usage and clear errors."""

import pytest
import torch

from kvmesh import Agent, ChannelNotAvailableError, CommGraph, ReuseConfig, Task, Team, UnsupportedModelError
from kvmesh.agents.prompts import Inbound, plan_prompt
from kvmesh.graph import Edge
from kvmesh.kvcomm.channel import save_channels
from kvmesh.llm.cache import cache_argument, new_cache, read_columns
from kvmesh.llm.segment import KVSegment

TASK = Task(
    "Where does Mira's brother live?",
    shards=["Mira's brother is Tavo.", "Tavo lives in Oslo. Lena has a cat."],
)


def team_of(model, channel="kv-reuse", reuse=None, max_new_tokens=8, names=("a", "b")):
    agents = [Agent(n, role=f"{n} expert", model=model, max_new_tokens=max_new_tokens) for n in names]
    graph = CommGraph.preset("chain", agents).with_channel(channel)
    decision = {"method": "decision", "channel": channel}
    return Team(agents, graph, decision=decision, reuse=reuse or ReuseConfig(min_anchors=1))


def encoded(model, ids):
    cache = new_cache(model.model.config)
    with torch.inference_mode():
        model.model(input_ids=torch.tensor([ids]), **cache_argument(model.model, cache))
    return KVSegment(*read_columns(cache, 0, 0, len(ids)), 0, tuple(ids))


def test_pieces_read_exactly_like_the_text_prompt(tiny):
    """Dense kv-reuse turns see the very ids a text turn sees: same text, same tokens, same edge counts, and
    those are the rendered transcript's own."""
    fields = {
        "system": "You are the checker.",
        "question": "What is 2 + 3?",
        "context": "Numbers are small.",
        "shard": "Two plus three is five.",
        "instruction": "Answer briefly.",
        "examples": [("Question: 1 + 1?", "2")],
    }
    messages = [("a", "spatial", "It is 5."), ("b", "temporal", "Five.")]

    def over(channel):
        return [Inbound(a, kind, channel, content) for a, kind, content in messages]

    pieces, text = (
        plan_prompt(tiny, **fields, inbound=over("kv-reuse")),
        plan_prompt(tiny, **fields, inbound=over("text")),
    )
    assert (pieces.text, pieces.token_ids, pieces.edge_tokens) == (text.text, text.token_ids, text.edge_tokens)
    assert [m.content for m in pieces.messages] == [m.content for m in text.messages]
    assert text.text == tiny.render(text.messages) and text.token_ids == tiny.encode_prompt(text.text)
    lo, hi = pieces.task_span
    assert tiny.tokenizer.decode(pieces.token_ids[lo:hi]) == "Context:\nNumbers are small.\n\nQuestion: What is 2 + 3?"
    assert pieces.pieces[1].own and not pieces.pieces[-1].own  # private notes are prefilled; the tail is batched


def test_a_reply_is_read_as_its_senders_ids_and_a_tool_appendix_as_own_text(tiny):
    reply = tiny.encode_prompt("The sum is 5.")
    kv = encoded(tiny, [*tiny.encode_prompt("x"), *reply]).slice(1)
    appendix = "\n\nProgram output:\n5"
    message = Inbound("a", "spatial", "kv-reuse", "The sum is 5." + appendix, kv)
    plan = plan_prompt(tiny, "You check.", "What is 2 + 3?", inbound=[message])
    sourced = [p for p in plan.pieces if p.source is not None]
    assert [p.token_ids for p in sourced] == [tuple(reply)] and sourced[0].key == ("reply", "a", "spatial")
    assert plan.pieces[-2].own and tiny.tokenizer.decode(plan.pieces[-2].token_ids) == appendix
    as_text = Inbound("a", "spatial", "text", message.content)
    assert plan.text == plan_prompt(tiny, "You check.", "What is 2 + 3?", inbound=[as_text]).text


def test_the_channel_runs_in_a_team_and_reports_reused_tokens(tiny):
    team = team_of("tiny-random")
    first, second = team.run(TASK), team.run(TASK)
    kinds = [[m.response_metadata.get("kv_reuse") for m in r.messages] for r in (first, second)]
    assert kinds[0] == [None, "dense", "dense"]  # agent a has nothing cached to read; b and decision learn
    assert kinds[1] == [None, "reused", "reused"]
    for message in second.messages[1:]:
        meta, usage = message.response_metadata, message.usage_metadata
        assert usage["input_tokens"] == len(tiny.encode_prompt(meta["prompt"]))
        assert 0 < usage["input_token_details"]["cache_read"] < usage["input_tokens"]
    assert second.usage.total.cache_read == sum(
        m.usage_metadata["input_token_details"]["cache_read"] for m in second.messages
    )
    edge = second.usage.per_edge["a->b"]  # the header and reply from caches; a cut reply's last token never was fed
    assert edge.input_tokens - 1 <= edge.cache_read <= edge.input_tokens
    assert first.usage.per_edge["a->b"].cache_read == 0
    stats = team.channels["kv-reuse"].stats()
    assert stats["calls"] == 4 and stats["reused_calls"] == 2 and stats["anchor_memory_mb"] > 0


def test_run_batch_shares_the_engine_across_tasks(tiny):
    team = team_of("tiny-random", names=("a", "b", "c"), reuse=ReuseConfig(min_anchors=1, gamma=2.0))  # any anchor
    tasks = [Task(f"What is {n} + 1?", id=str(n)) for n in range(6)]
    results = team.run_batch(tasks[:3]) + team.run_batch(tasks[3:])
    reused = [m for r in results[3:] for m in r.messages if m.response_metadata.get("kv_reuse") == "reused"]
    assert len(reused) == 9  # b, c and the decision of the second batch, all from the first batch's anchors
    assert all(m.usage_metadata["input_token_details"]["cache_read"] > 0 for m in reused)


@pytest.mark.slow
@pytest.mark.parametrize("fresh", [False, True], ids=["same-team", "fresh-team-from-anchors-dir"])
def test_a_sample_seen_before_is_reused_without_changing_a_word(smollm, tmp_path, fresh):
    """With one anchor from the very same task, the reused caches are the dense ones (to float16 offsets), so
    every reply equals the text channel's; and so when the anchors come from an earlier team's saved folder."""
    text = team_of(smollm, channel="text").run(TASK)
    reuse = ReuseConfig(min_anchors=1, anchors_dir=str(tmp_path))
    team = team_of(smollm, reuse=reuse)
    team.run(TASK)
    if fresh:
        assert save_channels(team.channels)
        team = team_of(smollm, reuse=reuse)
    again = team.run(TASK)
    assert [m.response_metadata.get("kv_reuse") for m in again.messages] == [None, "reused", "reused"]
    assert [m.content for m in again.messages] == [m.content for m in text.messages]


def cache_read(result):
    return result.usage.total.cache_read


def test_anchors_dir_lets_a_fresh_team_reuse_what_an_earlier_one_learned(tiny, tmp_path):
    """One `kvmesh run` is one team in one process: without a folder it starts with no anchors and reuses
    nothing; with one, the next team loads what the last one saved and reuses, replying as the dense turns did."""
    reuse = ReuseConfig(min_anchors=1, anchors_dir=str(tmp_path))
    first = team_of("tiny-random", reuse=reuse)
    learned = first.run(TASK)
    stats = first.channels["kv-reuse"].stats()
    assert cache_read(learned) == 0 and stats["anchors_loaded"] == 0 and "min_anchors=1" in stats["note"]
    assert [p.name for p in save_channels(first.channels)] == [p.name for p in tmp_path.glob("anchors-*.pt")]
    assert save_channels(first.channels) == []  # nothing new since: nothing written
    second = team_of("tiny-random", reuse=reuse)
    again = second.run(TASK)
    stats = second.channels["kv-reuse"].stats()
    assert [m.response_metadata.get("kv_reuse") for m in again.messages] == [None, "reused", "reused"]
    assert cache_read(again) > 0 and stats["anchors_loaded"] == stats["anchors"] > 0 and "note" not in stats
    assert [m.content for m in again.messages] == [m.content for m in learned.messages]
    alone = team_of("tiny-random")  # no folder: a fresh process's team, with the hint in its stats
    assert cache_read(alone.run(TASK)) == 0
    assert "pass anchors_dir (--anchors DIR)" in alone.channels["kv-reuse"].stats()["note"]


def test_anchors_made_for_another_model_are_refused_when_the_team_is_built(tiny, tmp_path):
    first = team_of("tiny-random", reuse=ReuseConfig(min_anchors=1, anchors_dir=str(tmp_path)))
    first.run(TASK)
    save_channels(first.channels)
    with pytest.raises(ValueError, match=r"made for 'tiny-random', not 'smollm2-135m'.*--anchors DIR.*delete"):
        team_of("smollm2-135m", reuse={"anchors_dir": str(tmp_path)})  # by name, before the model loads


def test_kv_reuse_needs_one_model_per_edge(tmp_path):
    agents = [Agent("a", model="tiny-random"), Agent("b", model=str(tmp_path / "another-model"))]
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel="kv-reuse")])
    with pytest.raises(ValueError, match="different models"):
        Team(agents, graph, decision="last")


def test_unsupported_models_fail_before_any_call(sliding):
    team = team_of(sliding)
    with pytest.raises(UnsupportedModelError, match=r"agent 'a' cannot take part in kv-reuse.*sliding"):
        team.run(TASK)


def test_a_c2c_edge_without_a_mapper_says_how_to_get_one():
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel="c2c")])
    with pytest.raises(ChannelNotAvailableError, match=r"needs a mapper.*kvmesh c2c fit"):
        Team([Agent("a"), Agent("b")], graph)


def test_spec_round_trip_keeps_channels_and_reuse_settings():
    team = team_of("tiny-random", reuse=ReuseConfig(gamma=0.2, min_anchors=2))
    again = Team.from_spec(team.to_spec())
    assert again.graph == team.graph and again.decision.channel == "kv-reuse"
    assert again.reuse == team.reuse
    with pytest.raises(ValueError, match="unknown reuse settings"):
        Team([Agent("a")], "chain", reuse={"gama": 0.1})


def test_every_model_call_of_a_kv_reuse_team_is_a_row_of_the_running_batch(tiny, monkeypatch):
    """Templates, own text (the notes) and turns all go through the engine: no other path reaches the model."""
    from kvmesh.llm.runner import ModelRunner

    engine_calls, model_calls = [], []
    through = ModelRunner.forward
    monkeypatch.setattr(ModelRunner, "forward", lambda self, *args: engine_calls.append(1) or through(self, *args))
    hook = tiny.model.register_forward_pre_hook(lambda *args: model_calls.append(1))
    try:
        team = team_of("tiny-random", names=("a", "b", "c"))
        team.run_batch([TASK, TASK])  # learns
        again = team.run_batch([TASK, TASK])  # reads caches, with the notes prefilled in place
    finally:
        hook.remove()
    assert any(m.response_metadata.get("kv_reuse") == "reused" for r in again for m in r.messages)
    assert len(model_calls) == len(engine_calls) > 0
    assert team.channels["kv-reuse"].stats()["template_encode_s"] > 0

"""kv-select edges: a receiver reads its sender's context cache in the chosen layers."""

import pytest

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.graph import Edge
from kvmesh.kvcomm.channel import ChannelNotAvailableError
from kvmesh.llm.base import GenerationRequest

TASK = Task("Where is the blue key?", id="t", shards={"a": "The blue key is in the attic. The red one is lost."})


def pair(channels=None, model="tiny-random"):
    agents = [Agent("a", model=model, max_new_tokens=6), Agent("b", model=model, max_new_tokens=10)]
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel="kv-select")])
    return Team(agents, graph, decision="last", channels=channels)


def test_every_layer_reading_the_context_is_the_dense_read_of_it(tiny):
    result = pair({"kv-select": {"fraction": 1.0}}).run(TASK)
    sender, receiver = result.messages
    assert sender.content == "" and sender.usage_metadata["output_tokens"] == 0  # read only as a cache: it is silent
    context = tiny.encode_prompt(sender.response_metadata["prompt"])
    own = tiny.encode_prompt(receiver.response_metadata["prompt"])
    (dense,) = tiny.generate_requests([GenerationRequest(context + own, max_new_tokens=10)])
    assert receiver.content == dense.text.strip()  # replies are recorded stripped
    usage = receiver.usage_metadata
    assert usage["input_tokens"] == len(context) + len(own)
    assert usage["input_token_details"]["cache_read"] == len(context)
    assert result.usage.per_edge["a->b"].cache_read == len(context)


def test_fewer_layers_read_less_and_the_layers_are_reported(tiny):
    team = pair({"kv-select": {"layers": (1,)}})
    result = team.run(TASK)
    stats = team.channel_stats()["kv-select"]
    assert stats["layers"] == {"tiny-random": [1]} and stats["calls"] == 1
    full = pair({"kv-select": {"fraction": 1.0}})
    full.run(TASK)
    assert stats["kv_bytes"] < full.channel_stats()["kv-select"]["kv_bytes"]
    assert result.messages[1].usage_metadata["input_token_details"]["cache_read"] > 0


def test_different_models_are_refused_naming_both():
    with pytest.raises(ChannelNotAvailableError, match=r"different models \(tiny-random and smollm2-135m\)"):
        agents = [Agent("a", model="tiny-random"), Agent("b", model="smollm2-135m")]
        Team(agents, CommGraph(["a", "b"], [Edge("a", "b", channel="kv-select")]), decision="last")


@pytest.mark.slow
def test_exact_on_smollm2_for_a_batch_of_tasks(smollm):
    tasks = [
        Task(f"Where is the {colour} key?", id=colour, shards={"a": f"The {colour} key is in the {room}."})
        for colour, room in (("blue", "attic"), ("red", "kitchen"), ("green", "garden shed"))
    ]
    results = pair({"kv-select": {"fraction": 1.0}}, model="smollm2-135m").run_batch(tasks)
    for result in results:
        sender, receiver = result.messages
        ids = smollm.encode_prompt(sender.response_metadata["prompt"] + receiver.response_metadata["prompt"])
        (dense,) = smollm.generate_requests([GenerationRequest(ids, max_new_tokens=10)])
        assert receiver.content == dense.text.strip()


def test_a_sender_whose_text_someone_reads_still_speaks(tiny):
    agents = [Agent(n, model="tiny-random", max_new_tokens=4) for n in "abc"]
    edges = [Edge("a", "b", channel="kv-select"), Edge("a", "c")]  # c reads a's reply as text
    result = Team(agents, CommGraph(list("abc"), edges), decision="last").run(TASK)
    assert result.messages[0].usage_metadata["output_tokens"] == 4
    majority = Team(agents[:2], CommGraph(["a", "b"], edges[:1]), decision="majority").run(TASK)
    assert majority.messages[0].usage_metadata["output_tokens"] == 4  # every reply is a vote


def test_a_relaying_receiver_passes_on_only_its_own_prompt(tiny):
    agents = [Agent(n, model="tiny-random", max_new_tokens=4) for n in "abc"]
    edges = [
        Edge("a", "b", channel="kv-select"),
        Edge("a", "c", channel="kv-select"),
        Edge("b", "c", channel="kv-select"),
    ]
    result = Team(agents, CommGraph(list("abc"), edges), decision="last").run(TASK)
    a, b, c = result.messages
    own = {m.name: len(tiny.encode_prompt(m.response_metadata["prompt"])) for m in (a, b, c)}
    # c reads a's context and b's own prompt (not b's copy of a's context): each context once
    assert c.usage_metadata["input_token_details"]["cache_read"] == own["a"] + own["b"]
    assert result.usage.per_edge["b->c"].cache_read == own["b"]


def test_each_message_reports_the_kv_bytes_it_moved(tiny):
    events = list(pair({"kv-select": {"fraction": 1.0}}).stream(TASK))
    (sent,) = [e for e in events if type(e).__name__ == "MessageSent"]
    sender = next(e.message for e in events if type(e).__name__ == "AgentFinished" and e.agent == "a")
    config = tiny.model.config
    positions = len(tiny.encode_prompt(sender.response_metadata["prompt"]))
    per_position = 2 * config.num_key_value_heads * config.head_dim * 4  # keys and values, float32
    assert sent.channel == "kv-select" and sent.kv_bytes == config.num_hidden_layers * positions * per_position
    one = list(pair({"kv-select": {"layers": (1,)}}).stream(TASK))
    (fewer,) = [e for e in one if type(e).__name__ == "MessageSent"]
    assert fewer.kv_bytes == (positions + 1) * per_position  # layer 1 reads every position, layer 0 the sink
    result = next(e for e in one if type(e).__name__ == "TeamFinished").result
    receiver = next(e for e in one if type(e).__name__ == "AgentFinished" and e.agent == "b")
    assert result.usage.per_edge["a->b"].kv_bytes == receiver.usage.kv_bytes == fewer.kv_bytes
    assert result.usage.to_dict()["per_edge"]["a->b"]["kv_bytes"] == fewer.kv_bytes


def test_calibration_scores_choose_the_layers_and_survive_a_spec_round_trip(tiny, tmp_path):
    from kvmesh.evals.calibrate import calibrate_kv_select, needs_calibration

    team = pair({"kv-select": {"fraction": 0.5, "keep_first": False, "weight": 1.0}})
    assert needs_calibration(team)
    tasks = [Task(f"Where is key {i}?", id=str(i), shards={"a": f"Key {i} is in room {i * 7}."}) for i in range(16)]
    with pytest.raises(ValueError, match="at least 16 training tasks"):
        calibrate_kv_select(team, tasks[:3])
    calibrated = calibrate_kv_select(team, tasks)
    again = calibrate_kv_select(team, tasks)
    config = calibrated.channels["kv-select"].config
    assert (
        config.scores is not None
        and len(config.scores) == 2
        and config.scores == again.channels["kv-select"].config.scores
    )
    assert not needs_calibration(calibrated)
    best = max(range(2), key=lambda layer: (config.scores[layer], -layer))
    assert calibrated.channels["kv-select"].config.chosen(2) == {best}
    path = tmp_path / "team.yaml"
    calibrated.save_spec(path)
    reloaded = Team.from_spec(path)
    assert reloaded.channels["kv-select"].config == config


def test_batched_receivers_read_as_each_alone(tiny):
    tasks = [
        Task(f"Where is the {colour} key?", id=colour, shards={"a": f"The {colour} key is in the {room}."})
        for colour, room in (("blue", "attic"), ("red", "kitchen behind the old oven"), ("green", "shed"))
    ]
    team = pair({"kv-select": {"layers": (0,)}})
    batched = team.run_batch(tasks)
    for task, result in zip(tasks, batched, strict=True):
        alone = team.run(task)
        assert [m.content for m in result.messages] == [m.content for m in alone.messages]
        tokens = ("input_tokens", "output_tokens", "cache_read", "kv_bytes")
        assert [getattr(result.usage.total, k) for k in tokens] == [getattr(alone.usage.total, k) for k in tokens]


def test_token_selection_reads_fewer_tokens_and_bytes(tiny):
    full = pair({"kv-select": {"fraction": 1.0}})
    half = pair({"kv-select": {"fraction": 1.0, "token_fraction": 0.5}})
    full_result, half_result = full.run(TASK), half.run(TASK)
    positions = half_result.messages[1].usage_metadata["input_token_details"]["cache_read"]
    stats = half.channel_stats()["kv-select"]
    assert stats["dropped_tokens"] == (positions - 1) // 2  # half of the tokens after the sink, rounded to keep
    kept = positions - stats["dropped_tokens"]
    assert half_result.usage.per_edge["a->b"].kv_bytes * positions == full_result.usage.per_edge["a->b"].kv_bytes * kept
    with pytest.raises(ValueError, match="token_fraction must be in"):
        pair({"kv-select": {"token_fraction": 0}})


def test_two_loaded_models_that_share_geometry_and_tokenizer_may_join(tiny, sliding):
    from kvmesh import LocalLM

    twin = LocalLM(tiny.model, tiny.tokenizer, "tiny-random-copy")  # a fine-tuned copy: another spec, one KV layout
    agents = [Agent("a", model=tiny, max_new_tokens=2), Agent("b", model=twin, max_new_tokens=4)]
    Team(agents, CommGraph(["a", "b"], [Edge("a", "b", channel="kv-select")]), decision="last").run(TASK)
    with pytest.raises(ChannelNotAvailableError, match=r"different KV geometry .*\(tiny-random and tiny-gemma3\)"):
        agents = [Agent("a", model=tiny), Agent("b", model=sliding)]
        Team(agents, CommGraph(["a", "b"], [Edge("a", "b", channel="kv-select")]), decision="last")

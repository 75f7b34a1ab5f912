"""AVP as a peer: on the study's prompts its shared modes answer as kvmesh's do (so the comparison is fair), and
its zero-step hand-off is kv-select at every layer."""

import pytest

from kvmesh.evals.benchmarks.infoqa import InfoQA
from kvmesh.evals.peers.avp import AVPPair
from kvmesh.evals.studies.latent import LatentStudyConfig
from kvmesh.evals.studies.latent_teams import SENDER, alone_team, kv_select_team, pair_team, study_agents, tasks_for

SMALL = LatentStudyConfig(model="tiny-random", message_tokens=4, answer_tokens=6)


@pytest.fixture(scope="module")
def samples():
    return InfoQA(None, 0).samples("validation")[:3]


def _replies(results):
    return [r.messages[-1].content for r in results]


def test_avp_direct_and_text_answer_as_kvmeshs_none_and_text_modes(tiny, samples):
    alone = alone_team(SMALL).run_batch(tasks_for(samples, None))
    direct = AVPPair("direct", *study_agents(SMALL)).run_batch(tasks_for(samples, None))
    assert _replies(direct) == _replies(alone)
    relayed = pair_team(SMALL, "text").run_batch(tasks_for(samples, SENDER))
    avp_text = AVPPair("text", *study_agents(SMALL)).run_batch(tasks_for(samples, SENDER))
    assert [r.messages[0].content for r in avp_text] == [r.messages[0].content for r in relayed]  # the messages
    assert _replies(avp_text) == _replies(relayed)
    assert [r.usage.total.input_tokens for r in avp_text] == [r.usage.total.input_tokens for r in relayed]


def test_avp_with_no_latent_step_reads_what_kv_select_reads_at_every_layer(tiny, samples):
    tasks = tasks_for(samples, SENDER)
    kv_select = kv_select_team(SMALL, 100).run_batch(tasks)
    handed = AVPPair("latent", *study_agents(SMALL), steps=0).run_batch(tasks)
    assert _replies(handed) == _replies(kv_select)
    thinking = AVPPair("latent", *study_agents(SMALL), steps=3).run_batch(tasks)
    assert _replies(thinking) != _replies(handed)  # its steps change what is read: the equality above can fail
    for ours, theirs in zip(kv_select, handed, strict=True):  # AVP's own counts: the same prompt and cache read
        assert theirs.usage.total.input_tokens == ours.usage.total.input_tokens
        assert theirs.usage.total.cache_read == ours.usage.total.cache_read > 0
    for zero, three in zip(handed, thinking, strict=True):
        assert three.usage.total.cache_read == zero.usage.total.cache_read + 3
        assert three.usage.total.latent_steps == 3 and three.usage.total.kv_bytes > zero.usage.total.kv_bytes > 0


def test_bad_modes_and_peers_are_refused():
    with pytest.raises(ValueError, match="AVP mode must be one of"):
        AVPPair("merge", *study_agents(SMALL))
    from kvmesh.config import ConfigError

    with pytest.raises(ConfigError, match="peers"):
        LatentStudyConfig(peers=["other"])


def test_the_study_runs_avp_beside_kvmeshs_modes_on_the_same_tasks(tiny):
    from kvmesh.evals.studies.latent import run_study

    config = LatentStudyConfig(
        model="tiny-random", limit=3, batch_size=3, message_tokens=3, answer_tokens=3, fractions=[100],
        token_fractions=[], thoughts=[], peers=["avp"], avp_steps=[0, 2], repeats=1, warmup=0,
    )  # fmt: skip
    report = run_study(config, progress=lambda line: None)
    modes = {m["name"]: m for m in report["modes"]}
    assert {"avp:direct", "avp:text", "avp:latent@0", "avp:latent@2"} <= set(modes)
    for avp, kvmesh in (("avp:direct", "none"), ("avp:text", "text"), ("avp:latent@0", "kv-select@100")):
        assert modes[avp]["tasks"] == modes[kvmesh]["tasks"] == 3
        assert modes[avp]["accuracy"] == modes[kvmesh]["accuracy"]
        assert modes[avp]["generated_tokens"] == pytest.approx(modes[kvmesh]["generated_tokens"])  # same replies
    assert modes["avp:latent@2"]["latent_steps"] == 2 and modes["avp:latent@2"]["seconds_per_task"] > 0
    assert report["peers"]["avp"] == {"version": "0.6.2", "handshakes": {}}  # no mapper: no cross-model pair


def test_avps_cross_model_projection_runs_from_another_model_and_reads_one_position(tiny, gemma_tokenized, samples):
    from kvmesh.evals.peers.avp import handshake

    sender, receiver = study_agents(SMALL)
    sender.model = gemma_tokenized  # another model, another tokenizer
    results = AVPPair("cross", sender, receiver, steps=2).run_batch(tasks_for(samples[:1], SENDER))
    total = results[0].usage.total
    assert total.cache_read == 1 and total.latent_steps == 2  # AVP hands over one projected vector
    alone = alone_team(SMALL).run_batch(tasks_for(samples[:1], None))[0]  # the receiver's same prompt, by kvmesh
    assert results[0].usage.per_agent["receiver"].input_tokens == alone.usage.total.input_tokens + 1
    assert handshake(gemma_tokenized, tiny).startswith("mode=LATENT")  # AVP accepts the pair (shared vocabulary)

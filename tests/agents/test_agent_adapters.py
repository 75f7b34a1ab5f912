"""Agents with LoRA adapters: an agent's adapter changes its replies, rides in specs, and agents with different
adapters over one base model still share every batched forward pass.

Real peft LoRA adapters of tiny-random (nonzero B), on a private copy of tiny-random so the session's shared
`tiny` never has any.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM

from kvmesh import Agent, CommGraph, LocalLM, Team
from kvmesh.graph import Edge
from kvmesh.llm import onednn
from kvmesh.llm.adapters import AdapterError
from kvmesh.llm.registry import resolve

TOKENS = 8


def save_lora(folder, seed):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(resolve("tiny-random"))
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj", "down_proj"])
    get_peft_model(model, config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def lm(tiny):
    model = AutoModelForCausalLM.from_pretrained(resolve("tiny-random")).eval()
    onednn.enable(model)
    return LocalLM(model, tiny.tokenizer, "tiny-random")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("agent-adapters")
    return [save_lora(root / f"role{seed}", seed) for seed in range(2)]


@pytest.fixture
def shapes(lm):
    """(rows, tokens per row) of every forward pass of the private model."""
    seen = []
    hook = lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    yield seen
    hook.remove()


def agent(name, lm, adapter=None):
    # equal-length roles: both prompts fall in one prefill bucket
    return Agent(name, role=f"{name} role", model=lm, max_new_tokens=TOKENS, adapter=adapter)


def replies(result):
    return {m.name: m.content for m in result.messages}


def test_an_agents_adapter_changes_only_its_own_replies(lm, adapters):
    plain = Team([agent("a", lm), agent("b", lm)], CommGraph(["a", "b"]), decision="majority").run("Q?")
    adapted = Team([agent("a", lm, adapters[0]), agent("b", lm)], CommGraph(["a", "b"]), decision="majority")
    result = adapted.run("Q?")
    assert replies(result)["a"] != replies(plain)["a"]
    assert replies(result)["b"] == replies(plain)["b"]  # b reads nothing from a, and has no adapter


def train_lora(folder, prompt_ids, reply_ids, steps=100):
    """Real optimizer steps of a LoRA on tiny-random until it answers `prompt_ids` with `reply_ids`; saved as
    a training loop saves it. Returns the folder and the last loss."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve("tiny-random"))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    ids = torch.tensor([prompt_ids + reply_ids])
    labels = torch.tensor([[-100] * len(prompt_ids) + reply_ids])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    return str(folder), loss.item()


def test_an_adapter_saved_by_training_loads_into_an_agent_and_changes_what_it_says(lm, tmp_path):
    reply = lm.encode_prompt(" The sky is blue.")  # no end token: the random model's tied embedding cannot reach it

    def sky(adapter=None):
        member = Agent("a", role="a role", model=lm, max_new_tokens=len(reply), adapter=adapter)
        return Team([member], CommGraph(["a"]), decision="majority").run("Which colour is the sky?").messages[0]

    before = sky()
    folder, loss = train_lora(tmp_path / "policy", lm.encode_prompt(before.response_metadata["prompt"]), reply)
    assert loss < 0.1
    assert before.content != "The sky is blue."
    assert sky(folder).content == "The sky is blue."


def test_agents_with_different_adapters_share_one_batched_pass_and_equal_running_alone(lm, adapters, shapes):
    team = Team([agent("a", lm, adapters[0]), agent("b", lm, adapters[1])], CommGraph(["a", "b"]), decision="majority")
    together = replies(team.run("Which colour is the sky?"))
    prefill = [rows for rows, tokens in shapes if tokens > 1]
    decode = [rows for rows, tokens in shapes if tokens == 1]
    assert prefill == [2] and decode[0] == 2  # both agents' rows in every pass while both decode
    for name, adapter in (("a", adapters[0]), ("b", adapters[1])):
        alone = Team([agent(name, lm, adapter)], CommGraph([name]), decision="majority").run("Which colour is the sky?")
        assert replies(alone)[name] == together[name]
    assert together["a"] != together["b"]


def test_the_spec_round_trips_the_adapter_and_reads_relative_folders_from_the_spec_file(adapters, tmp_path):
    team = Team([Agent("a", model="tiny-random", adapter=adapters[0]), Agent("b", model="tiny-random")], "chain")
    path = tmp_path / "team.yaml"
    team.save_spec(path)
    again = Team.from_spec(path)
    assert [a.adapter for a in again.agents] == [adapters[0], None]  # an absent field means no adapter
    assert again.to_spec() == team.to_spec()
    (tmp_path / "specs").mkdir()
    spec = tmp_path / "specs" / "relative.yaml"
    spec.write_text("model: tiny-random\nagents:\n  - {name: a, adapter: ../policy}\n")
    assert Team.from_spec(spec).agents[0].adapter == str((tmp_path / "policy").resolve())


def test_a_bad_adapter_fails_before_any_model_call_naming_the_agent(lm, tmp_path, shapes):
    team = Team([agent("a", lm), agent("b", lm, tmp_path / "missing")], CommGraph(["a", "b"]), decision="majority")
    with pytest.raises(AdapterError, match=r"agent 'b': adapter folder .*missing does not exist"):
        team.run("Q?")
    assert shapes == []


def test_kv_channels_are_refused_in_a_team_with_adapters(lm, adapters):
    graph = CommGraph(["a", "b"], [Edge("a", "b", channel="kv-reuse")])
    team = Team([agent("a", lm), agent("b", lm, adapters[0])], graph, decision="last")
    with pytest.raises(ValueError, match=r"run with LoRA adapters and this team uses kv-reuse.*channel='text'"):
        team.run("Q?")

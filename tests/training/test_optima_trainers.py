"""One iteration's weight update on tiny-random: what TRL's SFT and DPO trainers learn from kvmesh's data.

A falling loss proves little (a wrong mask or swapped pairs lower it too), so these tests measure what changed:
- SFT: the log-likelihood per token of the labelled reply must rise, and that of the masked prompt and of
  another agent's turn inside it must not. A real rollout's label mask is rebuilt from the recorded text.
- DPO: the chosen-over-rejected margin must widen, and the first step's loss shows which reference was used
  (the base model, or the adapter the iteration starts from).
Measured here (2 epochs, learning rate 5e-2): the reply gains about 5.4 nats per token and the prompt about 0.
Labels on every token make the prompt gain 4.5; a labelled other turn gains 4.5 itself. The DPO margin rises by
about 46 nats, and falls by 58 when chosen and rejected are swapped.
"""

import math
import sys

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvmesh import Agent, CommGraph, Task, Team
from kvmesh.llm.registry import resolve
from kvmesh.training.optima import IGNORE, sft_examples
from kvmesh.training.optima.rollout import Rollout
from kvmesh.training.optima.trainers import ADAPTER, LoraSettings, train_dpo, train_sft


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve("tiny-random"))


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _settings(**changes):
    defaults = {"base": "tiny-random", "rank": 4, "dropout": 0.0, "learning_rate": 5e-2, "epochs": 2, "batch_size": 2}
    return LoraSettings(**(defaults | changes))


def _base():
    return AutoModelForCausalLM.from_pretrained(resolve("tiny-random")).eval()


def _adapted(folder):
    return peft.PeftModel.from_pretrained(_base(), str(folder / ADAPTER)).eval()


def _token_logps(model, ids) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i = 1 .. len(ids) - 1."""
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1], -1)
    return logps.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def _mean_gain(before, after, lo, hi) -> float:
    """Mean log-likelihood gain (nats per token) of the tokens at positions lo .. hi - 1."""
    return float((after[lo - 1 : hi - 1] - before[lo - 1 : hi - 1]).mean())


def test_sft_learns_the_labelled_reply_and_nothing_of_the_masked_prompt(tokenizer, tmp_path):
    head = _ids(tokenizer, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere is the key?<|im_end|>\n")
    other = _ids(tokenizer, "<|im_start|>assistant\nBo thinks it is in the cellar.<|im_end|>")
    tail = _ids(tokenizer, "\n<|im_start|>user\nAnd you?<|im_end|>\n<|im_start|>assistant\n")
    reply = _ids(tokenizer, "Under the old oak tree.<|im_end|>")
    ids, prompt = head + other + tail + reply, len(head + other + tail)
    example = {"input_ids": ids, "labels": [IGNORE] * prompt + reply}
    before = _token_logps(_base(), ids)
    train_sft([example] * 4, _settings(), tmp_path)
    after = _token_logps(_adapted(tmp_path), ids)
    learnt = _mean_gain(before, after, prompt, len(ids))
    masked = _mean_gain(before, after, 1, prompt)
    other_turn = _mean_gain(before, after, len(head), len(head) + len(other))
    assert learnt > 2.0  # the reply, learnt at the right positions
    assert masked < 1.0  # the masked prompt: not learnt
    assert other_turn < 1.0  # nor another agent's turn inside it


def test_a_rollouts_examples_label_exactly_each_agents_own_reply(tokenizer):
    task = Task("Where is the blue key?", id="t", shards={"a": "The blue key is in the attic."})
    agents = [Agent(n, role=f"role of {n}", model="tiny-random", max_new_tokens=12, stop=("e",)) for n in "ab"]
    team = Team(agents, CommGraph(["a", "b"], [("a", "b")]), decision="last")
    result = team.run(task)
    examples = sft_examples([Rollout.from_result(result, team, "t")], tokenizer)
    assert [e["agent"] for e in examples] == [m.name for m in result.messages] == ["a", "b"]  # both closed turns
    for example, message in zip(examples, result.messages, strict=True):
        # built from the text the runtime recorded, not from the rollout's ids
        prompt = _ids(tokenizer, message.response_metadata["prompt"])
        reply = _ids(tokenizer, message.content + "<|im_end|>")
        assert len(prompt) == message.usage_metadata["input_tokens"]  # what the model read
        assert example["input_ids"] == prompt + reply
        assert example["labels"] == [IGNORE] * len(prompt) + reply
    a, b = result.messages
    assert f"Message from a (this round):\n{a.content}" in b.response_metadata["prompt"]  # a's turn: masked in b's


def _completion_logp(model, prompt, completion) -> float:
    return float(_token_logps(model, prompt + completion)[len(prompt) - 1 :].sum())


def _margin(model, pair) -> float:
    prompt = pair["prompt_ids"]
    return _completion_logp(model, prompt, pair["chosen_ids"]) - _completion_logp(model, prompt, pair["rejected_ids"])


@pytest.fixture(scope="module")
def pair(tokenizer):
    return {
        "prompt_ids": _ids(tokenizer, "<|im_start|>user\nWhere is the key?<|im_end|>\n<|im_start|>assistant\n"),
        "chosen_ids": _ids(tokenizer, "Attic.<|im_end|>"),
        "rejected_ids": _ids(tokenizer, "I do not know where it is.<|im_end|>"),
    }


@pytest.fixture(scope="module")
def first_dpo(pair, tmp_path_factory):
    """A first DPO iteration from a fresh LoRA: (its output folder, its logged losses)."""
    out = tmp_path_factory.mktemp("dpo") / "first"
    return out, train_dpo([pair] * 4, _settings(), out)


def test_dpo_widens_the_chosen_replys_margin_over_the_reference(pair, first_dpo):
    out, losses = first_dpo
    assert losses[0] == pytest.approx(math.log(2), abs=1e-4)  # a fresh LoRA starts as its reference
    assert _margin(_adapted(out), pair) - _margin(_base(), pair) > 10.0  # swapped pairs: about -58 here


@pytest.mark.parametrize("reference", ["previous", "initial"])
def test_dpo_continues_an_adapter_against_the_configured_reference(pair, first_dpo, tmp_path, reference):
    out = tmp_path / reference
    start = str(first_dpo[0] / ADAPTER)
    losses = train_dpo([pair] * 2, _settings(reference=reference, epochs=1), out, init_adapter=start)
    assert (out / ADAPTER / "adapter_model.safetensors").is_file()
    # the first step's loss is -log sigmoid(beta * (policy margin - reference margin)), the policy being the
    # adapter the iteration starts from
    if reference == "previous":  # that adapter itself: equal margins
        assert losses[0] == pytest.approx(math.log(2), abs=1e-4)
    else:  # the base model, which that adapter already beats on this pair
        assert losses[0] < 0.5


def test_no_data_and_no_training_stack_are_clear_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="no rollout was kept"):
        train_sft([], _settings(), tmp_path)
    with pytest.raises(ValueError, match="clear reward gap"):
        train_dpo([], _settings(), tmp_path)
    monkeypatch.setitem(sys.modules, "trl", None)  # what Python does when trl is not installed
    with pytest.raises(ImportError, match=r"pip install 'kvmesh\[train\]'"):
        train_sft([{"input_ids": [1, 2], "labels": [-100, 2]}], _settings(), tmp_path)
    with pytest.raises(ValueError, match="reference must be one of"):
        LoraSettings(reference="latest")

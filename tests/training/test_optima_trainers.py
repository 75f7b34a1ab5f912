"""One iteration's weight update on tiny-random: TRL's SFT and DPO trainers train a LoRA adapter on kvmesh's
pre-tokenized data, change its weights and lower the loss on their batch; a missing training stack is a clear
error."""

import sys

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kvmesh.llm.registry import resolve
from kvmesh.training.optima.trainers import ADAPTER, LoraSettings, train_dpo, train_sft


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve("tiny-random"))


def _settings(**changes):
    return LoraSettings(
        **{"base": "tiny-random", "rank": 4, "learning_rate": 5e-2, "epochs": 2, "batch_size": 2, **changes}
    )


def _masked_loss(model, example) -> float:
    ids, labels = torch.tensor([example["input_ids"]]), torch.tensor([example["labels"]])
    with torch.no_grad():
        return float(model(input_ids=ids, labels=labels).loss)


def _sequence_logp(model, prompt, completion) -> float:
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return float(torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None]).sum())


def _adapted(folder):
    base = AutoModelForCausalLM.from_pretrained(resolve("tiny-random"))
    return peft.PeftModel.from_pretrained(base, str(folder / ADAPTER)).eval()


def test_an_sft_step_trains_the_adapter_on_the_unmasked_tokens_only(tokenizer, tmp_path):
    prompt, reply = _ids(tokenizer, "Question: where is the key?\n"), _ids(tokenizer, "In the attic.<|im_end|>")
    example = {"input_ids": prompt + reply, "labels": [-100] * len(prompt) + reply}
    base = AutoModelForCausalLM.from_pretrained(resolve("tiny-random")).eval()
    before = _masked_loss(base, example)
    losses = train_sft([example] * 4, _settings(), tmp_path)
    adapted = _adapted(tmp_path)
    assert _masked_loss(adapted, example) < before
    assert losses and all(loss == loss for loss in losses)  # logged, finite
    lora_b = [p for name, p in adapted.named_parameters() if "lora_B" in name]
    assert lora_b and any(bool(p.abs().sum() > 0) for p in lora_b)  # B starts at zero: training moved it
    # the prompt is masked: a second run on the same replies after another prompt trains the same reply tokens
    assert example["labels"][: len(prompt)] == [-100] * len(prompt)


def test_a_dpo_step_prefers_the_chosen_reply_and_continues_an_adapter(tokenizer, tmp_path):
    prompt = _ids(tokenizer, "Question: where is the key?\n")
    chosen, rejected = _ids(tokenizer, "Attic.<|im_end|>"), _ids(tokenizer, "I do not know where it is.<|im_end|>")
    pair = {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}
    base = AutoModelForCausalLM.from_pretrained(resolve("tiny-random")).eval()
    margin = _sequence_logp(base, prompt, chosen) - _sequence_logp(base, prompt, rejected)
    losses = train_dpo([pair] * 4, _settings(), tmp_path / "first")
    adapted = _adapted(tmp_path / "first")
    assert _sequence_logp(adapted, prompt, chosen) - _sequence_logp(adapted, prompt, rejected) > margin
    assert losses[-1] < losses[0]
    # the next iteration starts from that adapter, against either reference
    for reference in ("initial", "previous"):
        out = tmp_path / reference
        train_dpo(
            [pair] * 2, _settings(reference=reference, epochs=1), out, init_adapter=str(tmp_path / "first" / ADAPTER)
        )
        assert (out / ADAPTER / "adapter_model.safetensors").is_file()


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

"""LoRA adapters per row: loading peft folders onto a model, mixed-adapter batches, staleness and clear errors.

The adapters are real peft LoRA adapters of tiny-random with nonzero B (`init_lora_weights=False`), saved with
`save_pretrained`; they load onto a private copy of tiny-random, so the session's shared `tiny` never has any.
"""

import json
import shutil
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from kvmesh import LocalLM
from kvmesh.llm import onednn
from kvmesh.llm.adapters import AdapterError, adapters_of, has_adapters
from kvmesh.llm.base import GenerationRequest
from kvmesh.llm.registry import resolve

PROMPTS = ["What is the capital of France?", "List three colours.", "Say hi.", "What is 7 times 6?"]


def fresh_model(folder=None):
    return AutoModelForCausalLM.from_pretrained(folder or resolve("tiny-random")).eval()


def save_lora(folder, seed, targets=("q_proj", "v_proj", "down_proj"), model=None, **options):
    """A peft LoRA adapter with random nonzero A and B, saved as peft saves it."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=list(targets), **options)
    get_peft_model(model or fresh_model(), config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def lm(tiny):
    """A private tiny-random on the oneDNN path, as `load_model` builds it."""
    model = fresh_model()
    onednn.enable(model)
    return LocalLM(model, tiny.tokenizer, "tiny-random")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [save_lora(root / f"a{seed}", seed) for seed in range(3)]


def prompts(lm):
    return [lm.encode_prompt(lm.render([("user", p)])) for p in PROMPTS]


def tokens(lm, requests):
    return [g.token_ids for g in lm.generate_requests(requests)]


def test_an_adapter_changes_the_output_and_matches_peft_on_a_fresh_model(lm, adapters):
    from peft import PeftModel

    ids = torch.tensor([prompts(lm)[0]])
    reference = PeftModel.from_pretrained(fresh_model(), adapters[0]).eval()  # plain F.linear, peft's own wrapper
    loaded = adapters_of(lm.model).load(adapters[0])
    with torch.inference_mode():
        expected = reference(input_ids=ids).logits
        with adapters_of(lm.model).selecting([loaded]):
            ours = lm.model(input_ids=ids).logits
        base = lm.model(input_ids=ids).logits
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    assert (ours - base).abs().max() > 1.0  # the adapter really changes the model
    greedy = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    (row,) = lm.generate_requests([GenerationRequest(ids[0].tolist(), 12, min_new_tokens=12, adapter=adapters[0])])
    assert row.token_ids == greedy[0, ids.shape[1] :].tolist()


def test_a_mixed_adapter_batch_equals_each_adapter_run_alone(lm, adapters, tiny):
    choices = [None, *adapters]
    rows = [GenerationRequest(p, 10, adapter=a) for p in prompts(lm) for a in choices]
    mixed = tokens(lm, rows)
    for adapter in choices:  # each adapter's rows as their own batch
        mine = [i for i, r in enumerate(rows) if r.adapter == adapter]
        assert tokens(lm, [rows[i] for i in mine]) == [mixed[i] for i in mine]
    for i in range(0, len(rows), len(choices)):  # the same prompt reads differently under each adapter
        assert len({tuple(t) for t in mixed[i : i + len(choices)]}) == len(choices)
    base = [i for i, r in enumerate(rows) if r.adapter is None]  # base rows are the plain model's, exactly
    assert tokens(tiny, [rows[i] for i in base]) == [mixed[i] for i in base]
    assert not has_adapters(tiny.model)


def test_mixed_rows_share_every_forward_pass(lm, adapters):
    shapes = []
    hook = lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        ids = prompts(lm)[0]
        choices = [None, *adapters]
        lm.generate_requests([GenerationRequest(ids, 6, min_new_tokens=6, adapter=a) for a in choices])
        with_adapters, shapes[:] = list(shapes), []
        lm.generate_requests([GenerationRequest(ids, 6, min_new_tokens=6) for _ in choices])
    finally:
        hook.remove()
    assert with_adapters == shapes == [(4, len(ids))] + [(4, 1)] * 5  # one prefill, then 5 decode passes of 4 rows


def test_rows_that_join_a_running_batch_keep_their_adapter(lm, adapters):
    ids = prompts(lm)
    first = [GenerationRequest(ids[0], 4, adapter=adapters[0]), GenerationRequest(ids[1], 12, adapter=adapters[1])]
    later = [GenerationRequest(ids[2], 8, adapter=adapters[2]), GenerationRequest(ids[3], 6)]
    batch, results = lm.new_batch(), {}
    for i, request in enumerate(first):
        batch.submit(request, i)
    for _ in range(3):
        results.update(batch.step())
    for i, request in enumerate(later, start=len(first)):
        batch.submit(request, i)  # joins rows already decoding, and stays after the first one leaves
    while batch.has_work:
        results.update(batch.step())
    for i, request in enumerate(first + later):
        assert results[i].token_ids == tokens(lm, [request])[0]


def test_rows_on_prefix_caches_keep_their_adapter(lm, adapters):
    from kvmesh.kvcomm.assembly import Assembly

    ids = prompts(lm)[:2]
    rows = []
    for prompt, adapter in zip(ids, adapters, strict=False):
        (built,) = lm.generate_requests([GenerationRequest(prompt[:9], 0, keep_kv=True, adapter=adapter)])
        prefix = Assembly.of(built.prompt_kv, prompt[9:], spare=8)
        rows.append(GenerationRequest(prompt, 8, prefix=prefix, adapter=adapter))
    dense = [tokens(lm, [GenerationRequest(p, 8, adapter=a)])[0] for p, a in zip(ids, adapters, strict=False)]
    assert tokens(lm, rows) == dense  # both on prefixes in one forward pass, each under its own adapter


def test_an_overwritten_adapter_is_reloaded_and_running_rows_keep_their_version(lm, tmp_path):
    folder = save_lora(tmp_path / "policy", seed=10)
    other = save_lora(tmp_path / "reference", seed=11)
    ids = prompts(lm)[1]
    before = tokens(lm, [GenerationRequest(ids, 8, adapter=folder)])
    batch = lm.new_batch()
    batch.submit(GenerationRequest(ids, 8, adapter=folder), "old")  # holds the version it was submitted with
    old = adapters_of(lm.model).current[tmp_path.resolve() / "policy"].name
    save_lora(tmp_path / "policy", seed=11)  # a training step saves over it, at once: same sizes
    batch.submit(GenerationRequest(ids, 8, adapter=folder), "new")
    results = {}
    while batch.has_work:
        results.update(batch.step())
    expected = tokens(lm, [GenerationRequest(ids, 8, adapter=other)])
    assert expected != before
    assert results["old"].token_ids == before[0] and results["new"].token_ids == expected[0]
    assert tokens(lm, [GenerationRequest(ids, 8, adapter=folder)]) == expected
    assert adapters_of(lm.model).current[tmp_path.resolve() / "policy"].name in lm.model.peft_config
    assert old not in lm.model.peft_config  # the superseded version was deleted once its last row left


def test_missing_folder_or_files_are_refused(lm, tmp_path):
    with pytest.raises(AdapterError, match="does not exist; pass the folder peft's save_pretrained wrote"):
        lm.generate_requests([GenerationRequest([1, 2, 3], 2, adapter=str(tmp_path / "nowhere"))])
    folder = save_lora(tmp_path / "half", seed=1)
    (tmp_path / "half" / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"lacks adapter_model.safetensors"):
        adapters_of(lm.model).load(folder)


def test_an_adapter_named_for_another_base_model_is_refused_naming_both(lm, adapters, tmp_path):
    folder = tmp_path / "renamed"
    shutil.copytree(adapters[0], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(resolve("smollm2-135m"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterError, match=r"trained on smollm2-135m .*not on tiny-random"):
        adapters_of(lm.model).load(folder)


def test_an_adapter_of_another_architecture_is_refused_by_its_shapes(lm, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(lm.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    other = LlamaForCausalLM(config).eval()
    other.name_or_path = "some-org/narrow-llama"
    folder = save_lora(tmp_path / "narrow", seed=2, model=other)
    with pytest.raises(AdapterError, match=r"made for some-org/narrow-llama, not for model 'tiny-random'.*shapes"):
        adapters_of(lm.model).load(folder)
    deeper = LlamaForCausalLM(config.__class__(**{**config.to_dict(), "hidden_size": 64, "num_hidden_layers": 3}))
    folder = save_lora(tmp_path / "deeper", seed=3, model=deeper, targets=("q_proj",))
    with pytest.raises(AdapterError, match=r"targets modules it lacks, e.g. model.layers.2.self_attn.q_proj"):
        adapters_of(lm.model).load(folder)
    assert all(name.startswith("kvmesh") for name in lm.model.peft_config)  # nothing half-loaded stays


def test_dora_is_refused(lm, tmp_path):
    folder = save_lora(tmp_path / "dora", seed=4, use_dora=True)
    with pytest.raises(AdapterError, match="DoRA"):
        adapters_of(lm.model).load(folder)


def test_peft_not_installed_says_how_to_install_it(lm, tmp_path, monkeypatch):
    folder = save_lora(tmp_path / "fresh", seed=5)
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` now fails as it does where it is not installed
    with pytest.raises(AdapterError, match=r"pip install 'kvmesh\[train\]' \(or pip install peft\)"):
        lm.generate_requests([GenerationRequest(prompts(lm)[0], 2, adapter=folder)])


def test_a_rewrite_that_keeps_the_files_stat_is_caught_by_their_hash(lm, tmp_path, monkeypatch):
    from kvmesh.llm import adapters as module

    folder = save_lora(tmp_path / "policy", seed=20)
    ids = prompts(lm)[2]
    before = tokens(lm, [GenerationRequest(ids, 8, adapter=folder)])
    frozen = module._stat(tmp_path / "policy")
    monkeypatch.setattr(module, "_stat", lambda folder: frozen)  # a filesystem with coarse timestamps
    save_lora(tmp_path / "policy", seed=21)
    after = tokens(lm, [GenerationRequest(ids, 8, adapter=folder)])
    assert after != before and after == tokens(lm, [GenerationRequest(ids, 8, adapter=save_lora(tmp_path / "b", 21))])


@pytest.mark.slow
def test_a_mixed_adapter_batch_equals_each_adapter_alone_on_smollm(smollm, tmp_path):
    from peft import LoraConfig, get_peft_model

    folder = resolve("smollm2-135m")
    builder = get_peft_model(fresh_model(folder), LoraConfig(r=8, lora_alpha=16))  # peft's targets: q_proj, v_proj
    saved = []
    for seed in range(2):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, parameter in builder.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        builder.save_pretrained(tmp_path / f"a{seed}")
        saved.append(str(tmp_path / f"a{seed}"))
    del builder
    model = fresh_model(folder)
    onednn.enable(model)
    private = LocalLM(model, smollm.tokenizer, "smollm2-135m")
    choices = [None, *saved]
    rows = [GenerationRequest(p, 16, adapter=a) for p in prompts(private) for a in choices]
    mixed = tokens(private, rows)
    for adapter in choices:
        mine = [i for i, r in enumerate(rows) if r.adapter == adapter]
        assert tokens(private, [rows[i] for i in mine]) == [mixed[i] for i in mine]
    assert mixed[1::3] != mixed[2::3]  # the two adapters say different things

import torch

from kvmesh import load_model
from kvmesh.llm import onednn


def test_same_outputs_as_the_default_path(tiny):
    plain = load_model("tiny-random", onednn=False)
    assert plain is not tiny
    prompts = [tiny.render([("user", q)]) for q in ("Hello there!", "What is two plus two?")]
    ids = torch.tensor([tiny.encode_prompt(prompts[1])])
    with torch.inference_mode():
        fast, slow = tiny.model(input_ids=ids).logits, plain.model(input_ids=ids).logits
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)
    assert [g.token_ids for g in tiny.generate(prompts, max_new_tokens=12)] == [
        g.token_ids for g in plain.generate(prompts, max_new_tokens=12)
    ]


def test_weight_changes_are_picked_up_and_gradients_use_the_dense_path():
    layer = torch.nn.Linear(8, 4)
    assert onednn.enable(torch.nn.Sequential(layer)) == 1
    x = torch.randn(3, 5, 8)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    with torch.no_grad():
        layer.weight.mul_(2.0)  # an optimizer step would do the same: the cached oneDNN copy must follow
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    layer(x).sum().backward()  # grad mode: the ordinary F.linear, so gradients reach the parameters
    assert layer.weight.grad is not None and layer.bias.grad is not None


def test_switch_via_environment(monkeypatch):
    monkeypatch.setenv("KVMESH_ONEDNN", "0")
    assert not onednn.wanted(None) and onednn.wanted(True)
    monkeypatch.setenv("KVMESH_ONEDNN", "1")
    assert onednn.wanted(None) and not onednn.wanted(False)

"""Shared fixtures: real models, loaded once per test session.

`tiny` is a 2-layer random Llama with SmolLM2's tokenizer (pure plumbing, milliseconds per call); `smollm` is the
real SmolLM2-135M-Instruct. Both come from the offline alias registry (converted once into KVMESH_CACHE).
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

from kvmesh import load_model


@pytest.fixture(scope="session")
def tiny():
    return load_model("tiny-random")


@pytest.fixture(scope="session")
def smollm():
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def sliding(tiny):
    """A tiny random Gemma 3 (sliding window of 8 on most layers) with SmolLM2's tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from kvmesh import LocalLM

    config = Gemma3TextConfig(
        vocab_size=len(tiny.tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        initializer_range=0.3,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        pad_token_id=tiny.pad_id,
        eos_token_id=sorted(tiny.eos_ids)[0],
        bos_token_id=tiny.tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    return LocalLM(Gemma3ForCausalLM(config).eval(), tiny.tokenizer, "tiny-gemma3")


@pytest.fixture(scope="session")
def gemma_tokenized(tiny):
    """A tiny random Gemma 3 (layers 1 and 3 full attention) with Gemma 3's own tokenizer, which splits text
    differently from SmolLM2's (the packaged gemma3-270m's tokenizer; no weights of it are loaded)."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from kvmesh import LocalLM
    from kvmesh.llm.registry import resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve("gemma3-270m"))
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        sliding_window=8,
        initializer_range=0.3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    return LocalLM(Gemma3ForCausalLM(config).eval(), tokenizer, "tiny-gemma3-tokenizer")


@pytest.fixture
def forwards(tiny):
    """Record (rows, tokens per row) of every forward pass of the tiny model: prefill has tokens > 1."""
    shapes = []
    hook = tiny.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    yield shapes
    hook.remove()

"""Shared fixtures: real models, loaded once per test session.

`tiny` is a 2-layer random Llama with SmolLM2's tokenizer (pure plumbing, milliseconds per call); `smollm` is the
real SmolLM2-135M-Instruct. Both come from the offline alias registry (converted once into KVMESH_CACHE).
"""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

from kvmesh import load_model


@pytest.fixture(autouse=True)
def test_ledger(tmp_path_factory, monkeypatch):
    """Each test counts its test-split scorings in a ledger of its own, never the user's."""
    path = tmp_path_factory.mktemp("ledger") / "test-scorings.jsonl"
    monkeypatch.setenv("KVMESH_TEST_LEDGER", str(path))
    return path


@pytest.fixture(scope="session")
def tiny():
    return load_model("tiny-random")


@pytest.fixture(scope="session")
def smollm():
    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_gemma3():
    """Builds tiny random Gemma 3 models (seed 0): `tiny_gemma3(tokenizer, layer_types, sliding_window, **config)`
    gives a `Gemma3ForCausalLM` in eval mode whose vocabulary and special tokens are the tokenizer's."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    def build(tokenizer, layer_types: list[str], sliding_window: int, **overrides):
        settings = {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            **overrides,
        }
        config = Gemma3TextConfig(
            vocab_size=len(tokenizer),
            num_hidden_layers=len(layer_types),
            layer_types=layer_types,
            sliding_window=sliding_window,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.bos_token_id,
            **settings,
        )
        torch.manual_seed(0)
        return Gemma3ForCausalLM(config).eval()

    return build


@pytest.fixture(scope="session")
def gemma_tokenizer():
    """Gemma 3's own tokenizer (the packaged gemma3-270m's; none of its weights are loaded)."""
    from transformers import AutoTokenizer

    from kvmesh.llm.registry import resolve

    return AutoTokenizer.from_pretrained(resolve("gemma3-270m"))


@pytest.fixture(scope="session")
def sliding(tiny, tiny_gemma3):
    """A tiny random Gemma 3 (sliding window of 8 on most layers) with SmolLM2's tokenizer."""
    from kvmesh import LocalLM

    layers = ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]
    model = tiny_gemma3(
        tiny.tokenizer, layers, 8, hidden_size=64, intermediate_size=128, num_attention_heads=4, initializer_range=0.3
    )
    return LocalLM(model, tiny.tokenizer, "tiny-gemma3")


@pytest.fixture(scope="session")
def gemma_tokenized(tiny_gemma3, gemma_tokenizer):
    """A tiny random Gemma 3 (layers 1 and 3 full attention) with Gemma 3's own tokenizer, which splits text
    differently from SmolLM2's."""
    from kvmesh import LocalLM

    layers = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    model = tiny_gemma3(gemma_tokenizer, layers, 8, hidden_size=32, intermediate_size=64, initializer_range=0.3)
    return LocalLM(model, gemma_tokenizer, "tiny-gemma3-tokenizer")


@pytest.fixture(scope="session")
def latent_loop():
    """A plain transformers loop, the reference for latent thoughts: `latent_loop(lm, ids, steps, then=(),
    tokens=0)` prefills `ids`, feeds `steps` realigned hidden states back, prefills `then` after them and decodes
    `tokens` greedy tokens. Returns the cache's keys and values (L, H, S, D) after the thoughts and the ids."""
    from transformers import DynamicCache

    from kvmesh.llm.cache import cache_argument
    from kvmesh.llm.thoughts import Realignment

    @torch.no_grad()
    def run(lm, ids, steps, then=(), tokens=0):
        model, realign = lm.model, Realignment.of(lm.model)
        cache = DynamicCache(config=model.config)

        def forward(position, **inputs):
            length = next(iter(inputs.values())).shape[1]
            positions = torch.arange(position, position + length)[None]
            return model(**inputs, **cache_argument(model, cache), position_ids=positions, output_hidden_states=True)

        out = forward(0, input_ids=torch.tensor([list(ids)]))
        position = len(ids)
        for _ in range(steps):
            out = forward(position, inputs_embeds=realign(out.hidden_states[-1][:, -1])[:, None])
            position += 1
        keys = torch.stack([layer.keys[0] for layer in cache.layers]).clone()
        values = torch.stack([layer.values[0] for layer in cache.layers]).clone()
        if then:
            out = forward(position, input_ids=torch.tensor([list(then)]))
            position += len(then)
        generated = []
        for _ in range(tokens):
            generated.append(int(out.logits[0, -1].argmax()))
            out = forward(position, input_ids=torch.tensor([[generated[-1]]]))
            position += 1
        return keys, values, generated

    return run


@pytest.fixture
def forwards(tiny):
    """Record (rows, tokens per row) of every forward pass of the tiny model: prefill has tokens > 1."""
    shapes = []
    hook = tiny.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    yield shapes
    hook.remove()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(command: list[str], url: str, deadline_s: float = 120.0, env: dict | None = None):
    """Start a server process and wait until `url` answers; returns the process (its output goes to a log file)."""
    import subprocess
    import tempfile
    import time
    import urllib.request
    from pathlib import Path

    log = Path(tempfile.mkdtemp()) / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env or os.environ.copy())
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{url} did not answer within {deadline_s:g} s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def launch():
    """`start_server`, for tests that start a server of their own."""
    return start_server


@pytest.fixture(scope="session")
def ports():
    """`free_port`: a loopback port nothing listens on, for each call."""
    return free_port


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (a server to start, or one to fail to reach)."""
    return free_port()


@pytest.fixture(scope="session")
def tiny_server():
    """`kvmesh serve --model tiny-random` on a free loopback port, for the session: yields its base URL."""
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "kvmesh.cli", "serve", "--model", "tiny-random", "--port", str(port)]
    process = start_server(command, f"{url}/models", env=env)
    yield url
    process.terminate()
    process.wait(timeout=30)

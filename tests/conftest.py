"""Shared fixtures: real models, loaded once per test session.

`tiny` is a 2-layer random Llama with SmolLM2's tokenizer (pure plumbing, milliseconds per call); `smollm` is the
real SmolLM2-135M-Instruct. Both come from the offline alias registry (converted once into KVMESH_CACHE).
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

from kvmesh import load_model


@pytest.fixture(scope="session")
def tiny():
    return load_model("tiny-random")


@pytest.fixture(scope="session")
def smollm():
    return load_model("smollm2-135m")

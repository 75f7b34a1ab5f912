"""A real third-party engine behind the client backend: vLLM's CPU build (`make vllm` puts it in .venv-vllm, its
own environment) serving the converted SmolLM2 folder on loopback; a team through it answers as in-process."""

import os
import sys
from pathlib import Path

import pytest

from kvmesh import Agent, CommGraph, Edge, Team, load_model
from kvmesh.llm.registry import resolve

VLLM_PYTHON = Path(os.environ.get("KVMESH_VLLM_PYTHON", Path(__file__).resolve().parents[2] / ".venv-vllm/bin/python"))
TASKS = ["What is the capital of France?", "Name three primary colours.", "How many legs does a spider have?"]


@pytest.fixture(scope="module")
def vllm_url(launch, ports):
    if not VLLM_PYTHON.exists():
        pytest.skip(f"vLLM is not installed at {VLLM_PYTHON}: run `make vllm` (make test does)")
    port = ports()
    command = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(resolve("smollm2-135m")),
        "--served-model-name",
        "smollm2-135m",
        "--dtype",
        "float32",
        "--gpu-memory-utilization",
        "0.3",
        "--enable-prompt-tokens-details",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}
    server = launch(command, f"http://127.0.0.1:{port}/v1/models", deadline_s=600, env=env)
    yield f"http://127.0.0.1:{port}/v1"
    server.terminate()
    server.wait(timeout=60)


def chain(model) -> Team:
    agents = [
        Agent("solver", "solver", model=model, max_new_tokens=24),
        Agent("checker", "checker", model=model, max_new_tokens=24),
    ]
    return Team(agents, CommGraph(["solver", "checker"], [Edge("solver", "checker")]), decision="last")


def test_a_team_through_vllm_answers_as_the_in_process_team(vllm_url, smollm):
    served = load_model(f"openai:{vllm_url}#smollm2-135m")
    over_http, local = chain(served).run_batch(TASKS), chain(smollm).run_batch(TASKS)
    for theirs, ours in zip(over_http, local, strict=True):
        assert [m.content for m in theirs.messages] == [m.content for m in ours.messages]
        assert theirs.usage.total.input_tokens == ours.usage.total.input_tokens  # the same ids went in
        assert theirs.usage.total.output_tokens == ours.usage.total.output_tokens
        cached = theirs.usage.total.cache_read
        assert isinstance(cached, int) and cached >= 0  # vLLM reports it (--enable-prompt-tokens-details)
    assert sys.modules.get("vllm") is None  # vLLM lives in its own environment, never kvmesh's

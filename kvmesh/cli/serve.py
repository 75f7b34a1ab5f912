"""`kvmesh serve`: an OpenAI-compatible server over one in-process model (`kvmesh.llm.serve`).

kvmesh serve --model smollm2-135m --host 127.0.0.1 --port 8000

Other processes then use it as any OpenAI-compatible server, kvmesh teams included:
`load_model("openai:http://127.0.0.1:8000/v1#smollm2-135m")`, or `--model openai:...` on `kvmesh run|eval`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.config import ConfigError


@dataclass
class ServeConfig:
    """Serve one model over HTTP with OpenAI's API (/v1/models, /v1/completions, /v1/chat/completions).

    Args:
        model: the model to serve (alias, folder or Hugging Face id); clients name it by this spec.
        host: the address to listen on (127.0.0.1: this machine only).
        port: the port to listen on.
        max_batch_size: rows that decode together; more requests wait for a slot.
        max_tokens: the reply cap of a request that names none.
        seed: seeds the sampler sampled requests share (greedy ones ignore it).
    """

    model: str = "smollm2-135m"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    max_tokens: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"{{port}} must be in 1..65535, got {self.port}", type(self).__name__)
        if self.max_batch_size < 1 or self.max_tokens < 1:
            raise ConfigError("{max_batch_size} and {max_tokens} must be at least 1", type(self).__name__)


def serve(args: argparse.Namespace) -> int:
    config = config_from_args(ServeConfig, args)
    import uvicorn

    from kvmesh.llm.local import load_model
    from kvmesh.llm.serve import create_app

    model = load_model(config.model)
    model.max_batch_size = config.max_batch_size
    app = create_app(model, seed=config.seed, max_tokens=config.max_tokens)
    url = f"http://{config.host}:{config.port}/v1"
    print(f"kvmesh: serving {model.spec} at {url} (clients: openai:{url}#{model.spec})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser("serve", help="serve a model over HTTP with OpenAI's API (continuous batching)")
    add_config_arguments(parser, ServeConfig)
    parser.set_defaults(handler=serve)

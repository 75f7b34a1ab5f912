"""`kvmesh serve`: an OpenAI-compatible server over one in-process model (`kvmesh.llm.serve`).

kvmesh serve --model smollm2-135m --host 127.0.0.1 --port 8000

Other processes then use it as any OpenAI-compatible server, kvmesh teams included:
`load_model("openai:http://127.0.0.1:8000/v1#smollm2-135m")`, or `--model openai:...` on `kvmesh run|eval`.

The port is bound before the model loads, so a busy port fails at once with what to do. SIGTERM or Ctrl-C stop
admitting requests, let running ones finish for `--grace` seconds, drop the rest and exit.

Caveat: uvicorn times nothing before a request's headers are complete, so connections that never send them hold
`--max-connections` slots; facing untrusted clients, put a reverse proxy with a header timeout in front.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass

from kvmesh.cli.flags import add_config_arguments, config_from_args
from kvmesh.config import ConfigError

API_KEY_VARIABLE = "KVMESH_API_KEY"


@dataclass
class ServeConfig:
    """Serve one model over HTTP with OpenAI's API (/v1/models, /v1/completions, /v1/chat/completions).

    Args:
        model: the model to serve (alias, folder or Hugging Face id); clients name it by this spec.
        host: the address to listen on (127.0.0.1: this machine only).
        port: the port to listen on.
        max_batch_size: rows that decode together; more requests wait for a slot.
        max_tokens: the reply cap of a request that names none.
        max_tokens_limit: the most a request may ask for (more is refused); default: up to the model's context.
        max_body_bytes: request bodies over this many bytes are refused (413) before they are read.
        body_timeout: seconds a client may take to send its body (more: 408).
        max_waiting: requests admitted at once, decoding or waiting; more get 503 with Retry-After.
        max_connections: open connections at once; more get 503 before anything is read.
        api_key: require `Authorization: Bearer KEY` on every route but /health (default: the KVMESH_API_KEY
            environment variable, which keeps the key out of the process list; unset: no key).
        openapi: serve the API schema at /openapi.json.
        grace: seconds running requests get to finish on SIGTERM or Ctrl-C before they are dropped.
        seed: seeds the sampler sampled requests share (greedy ones ignore it).
    """

    model: str = "smollm2-135m"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 32
    max_tokens: int = 256
    max_tokens_limit: int | None = None
    max_body_bytes: int = 2**20
    body_timeout: float = 30.0
    max_waiting: int = 256
    max_connections: int = 1024
    api_key: str | None = None
    openapi: bool = False
    grace: float = 10.0
    seed: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if not 0 < self.port < 65536:
            raise ConfigError(f"{{port}} must be in 1..65535, got {self.port}", owner)
        for name in ("max_batch_size", "max_tokens", "max_body_bytes", "max_waiting", "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{{{name}}} must be at least 1, got {getattr(self, name)}", owner)
        if self.max_tokens_limit is not None and self.max_tokens_limit < self.max_tokens:
            raise ConfigError(
                f"{{max_tokens_limit}} ({self.max_tokens_limit}) is below {{max_tokens}} ({self.max_tokens}), the "
                "cap of a request that names none; raise it or lower {max_tokens}",
                owner,
            )
        if self.grace < 0 or self.body_timeout <= 0:
            raise ConfigError("{grace} (0 or more) and {body_timeout} (above 0) are seconds", owner)
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_VARIABLE) or None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); a port in use or an address not on this machine raises ConfigError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {error.strerror}; another server may hold the port: pick another "
            "with {port}, or stop that one",
            "ServeConfig",
        ) from error
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(args: argparse.Namespace) -> int:
    config = config_from_args(ServeConfig, args)
    import uvicorn

    from kvmesh.llm.local import load_model
    from kvmesh.llm.serve import ServerLimits, create_app

    sock = bind(config.host, config.port)
    model = load_model(config.model)
    model.max_batch_size = config.max_batch_size
    limits = ServerLimits(
        max_tokens=config.max_tokens,
        max_tokens_limit=config.max_tokens_limit,
        max_body_bytes=config.max_body_bytes,
        body_timeout=config.body_timeout,
        max_open=config.max_waiting,
        api_key=config.api_key,
        openapi=config.openapi,
    )
    app = create_app(model, seed=config.seed, limits=limits)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            timeout_graceful_shutdown=config.grace,
            lifespan="on",
            limit_concurrency=config.max_connections,
        )
    )
    url = f"http://{config.host}:{config.port}/v1"
    print(f"kvmesh: serving {model.spec} at {url} (clients: openai:{url}#{model.spec})", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    return 0


def add_parser(commands) -> None:
    parser = commands.add_parser("serve", help="serve a model over HTTP with OpenAI's API (continuous batching)")
    add_config_arguments(parser, ServeConfig)
    parser.set_defaults(handler=serve)

"""A `kvmesh serve` process of a test's own (tiny-random, loopback only), with settings the test picks."""

import os
import sys

import pytest


@pytest.fixture
def serve(launch, ports):
    """`serve(*flags)` starts `kvmesh serve --model tiny-random` on a free loopback port with `flags`; returns
    (base URL, process). Every server started is stopped (killed if it will not stop) at the end of the test."""
    started = []

    def start(*flags: str):
        port = ports()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "kvmesh.cli", "serve", "--model", "tiny-random", "--port", str(port), *flags]
        process = launch(command, f"{url}/health", env={**os.environ, "OMP_NUM_THREADS": "1"})
        started.append(process)
        return url, process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)

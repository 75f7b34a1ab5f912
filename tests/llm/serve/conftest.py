"""A `kvmesh serve` process of a test's own (tiny-random, loopback only), with settings the test picks."""

import os
import subprocess
import sys
import time
import urllib.request

import pytest


@pytest.fixture
def serve(ports, tmp_path):
    """`serve(*flags)` starts `kvmesh serve --model tiny-random` on a free loopback port with `flags`; returns
    (base URL, process, log file). Every server started is stopped (killed if it will not stop) at the end."""
    started = []

    def start(*flags: str):
        port = ports()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "kvmesh.cli", "serve", "--model", "tiny-random", "--port", str(port), *flags]
        log = tmp_path / f"server-{port}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"}
            )
        started.append(process)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"kvmesh serve exited with {process.returncode}: {log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                return url, process, log
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"kvmesh serve did not answer within 120 s: {log.read_text()[-3000:]}")

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)

"""`kvmesh serve` (or vLLM's CPU server) under a bounded load with hostile clients mixed in, loopback only.

Starts the server on a free loopback port, then `--clients` threads send requests for `--seconds`: 90% well-formed
completions (short, medium and long prompts, 8 to 48 reply tokens, greedy or sampled, a third streamed), 10%
hostile, in turn: a NaN-prone temperature (1e-40), a body over kvmesh's limit, one just under it (read and
tokenized, then too long), a long list of token ids (some outside the vocabulary), a stream closed after three
events, a client that hangs up before its answer (both on requests that would decode `--long-tokens` tokens), a
field the server does not implement, and an out-of-range temperature. Then the clients leave and it reports:

    served / errors by kind and HTTP status    latency p50 / p99 of well-formed requests (seconds)
    peak and after-run memory (RSS of the server's process tree) against before the load
    seconds until the server's CPU is idle again (< 10% of a core over 0.5 s) after the last client left
    seconds SIGTERM takes to stop it while a long row is decoding (the server's grace period: --grace)

Bars (issue 24): no well-formed request fails; CPU idle within 2 s of the clients leaving; memory after within
10% of before; SIGTERM exits within the grace period. Every client is bounded in count and time; nothing
listens beyond 127.0.0.1.

    python benchmarks/serve_load.py [--servers kvmesh vllm] [--model smollm2-135m] [--clients 8] [--seconds 60]
        [--record NAME] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
from common import free_port, wait_until_up

from kvmesh.llm.registry import resolve

VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm" / "bin" / "python"
HOSTILE = (
    "nan-prone", "huge-body", "near-limit-body", "token-ids", "stream-closed", "hung-up", "unsupported-field",
    "bad-temperature",
)  # fmt: skip
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "near", "river", "bank", "while", "play")


def start(server: str, model: str, port: int, grace: float) -> subprocess.Popen:
    if server == "kvmesh":
        command = [sys.executable, "-m", "kvmesh.cli", "serve", "--model", model, "--port", str(port)]
        command += ["--grace", str(grace), "--max-body-bytes", str(2**20)]
        env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
    else:
        command = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(resolve(model))]
        command += ["--served-model-name", model, "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return wait_until_up(process, f"http://127.0.0.1:{port}/v1/models", server, 600)


def tree(process: subprocess.Popen) -> list[psutil.Process]:
    root = psutil.Process(process.pid)
    return [root, *root.children(recursive=True)]


def rss(process: subprocess.Popen) -> int:
    return sum(p.memory_info().rss for p in tree(process) if p.is_running())


def cpu_share(process: subprocess.Popen, window: float = 0.5) -> float:
    """The server's CPU use over `window` seconds, in cores."""
    procs = tree(process)
    before = sum(sum(p.cpu_times()[:2]) for p in procs)
    time.sleep(window)
    return (sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running()) - before) / window


def prompt(rng: random.Random) -> str:
    words = rng.choice((8, 120, 500))
    return " ".join(rng.choice(WORDS) for _ in range(words))


class Client:
    """One client's requests to the server at `port` (model `model`); each returns (kind, status, seconds)."""

    def __init__(self, port: int, model: str, long_tokens: int) -> None:
        self.port, self.model, self.long_tokens = port, model, long_tokens

    def _send(self, body: dict | bytes, timeout: float = 300.0) -> http.client.HTTPConnection:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        connection.request("POST", "/v1/completions", data, {"Content-Type": "application/json"})
        return connection

    def well_formed(self, rng: random.Random) -> tuple[str, int, float]:
        body = {"model": self.model, "prompt": prompt(rng), "max_tokens": rng.randint(8, 48)}
        body["temperature"] = rng.choice((0.0, 0.8))
        body["stream"] = rng.random() < 1 / 3
        started = time.perf_counter()
        connection = self._send(body)
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
        connection.close()
        ok = response.status == 200 and (not body["stream"] or "[DONE]" in text)
        return "well-formed", response.status if ok or response.status != 200 else 599, time.perf_counter() - started

    def long(self) -> dict:
        return {"model": self.model, "prompt": "Once upon a time", "max_tokens": self.long_tokens,
                "min_tokens": self.long_tokens}  # fmt: skip

    def hostile(self, kind: str) -> tuple[str, int, float]:
        started = time.perf_counter()
        status = 0
        if kind == "nan-prone":
            body = {"model": self.model, "prompt": "Hello", "max_tokens": 16, "temperature": 1e-40}
        elif kind == "huge-body":
            body = {"model": self.model, "prompt": "x" * (8 * 2**20)}
        elif kind == "near-limit-body":  # just under kvmesh's 1 MiB limit: read and tokenized, then too long
            body = {"model": self.model, "prompt": "word " * (2**20 // 5 - 40), "max_tokens": 4}
        elif kind == "token-ids":  # a long list of token ids, some outside the vocabulary
            body = {"model": self.model, "prompt": list(range(0, 10**7, 97)), "max_tokens": 4}
        elif kind == "unsupported-field":
            body = {"model": self.model, "prompt": "Hello", "max_tokens": 4, "tools": [{"type": "function"}]}
        elif kind == "bad-temperature":
            body = {"model": self.model, "prompt": "Hello", "max_tokens": 4, "temperature": 1e308}
        elif kind == "stream-closed":
            connection = self._send(self.long() | {"stream": True})
            response = connection.getresponse()
            for _ in range(3):
                response.fp.readline()
            connection.close()  # after three events
            return kind, response.status, time.perf_counter() - started
        else:  # hung-up: no answer read, the connection closed after half a second
            connection = self._send(self.long(), timeout=0.5)
            try:
                status = connection.getresponse().status
            except (TimeoutError, OSError):
                status = 0
            connection.close()
            return kind, status, time.perf_counter() - started
        try:
            connection = self._send(body, timeout=120)
            response = connection.getresponse()
            response.read()
            status = response.status
            connection.close()
        except OSError:  # a server may close on a body it refuses before reading it all
            status = -1
        return kind, status, time.perf_counter() - started


def load(port: int, model: str, clients: int, seconds: float, long_tokens: int, seed: int) -> list[tuple]:
    records: list[tuple] = []
    lock, deadline = threading.Lock(), time.monotonic() + seconds

    def run(index: int) -> None:
        rng, client, turn = random.Random(seed * 1000 + index), Client(port, model, long_tokens), index
        while time.monotonic() < deadline:
            if rng.random() < 0.1:
                record = client.hostile(HOSTILE[turn % len(HOSTILE)])
                turn += 1
            else:
                record = client.well_formed(rng)
            with lock:
                records.append(record)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records


def seconds_to_idle(process: subprocess.Popen, limit: float = 120.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if cpu_share(process) < 0.1:
            return time.monotonic() - started
    return float("inf")


def sigterm_seconds(port: int, model: str, process: subprocess.Popen, long_tokens: int) -> float:
    connection = Client(port, model, long_tokens)._send(Client(port, model, long_tokens).long() | {"stream": True})
    response = connection.getresponse()
    response.fp.readline()  # its row is decoding
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        return float("inf")
    connection.close()
    return time.monotonic() - started


def measure(server: str, args: argparse.Namespace) -> dict:
    """One server under the load, then idle, then SIGTERM: its figures and bars."""
    port = free_port()
    process = start(server, args.model, port, args.grace)
    try:
        Client(port, args.model, args.long_tokens).well_formed(random.Random(0))  # warm-up
        before, peak, sampling = rss(process), [0], True

        def sample() -> None:
            while sampling:
                peak[0] = max(peak[0], rss(process))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample)
        sampler.start()
        records = load(port, args.model, args.clients, args.seconds, args.long_tokens, args.seed)
        idle = seconds_to_idle(process)
        sampling = False
        sampler.join()
        after = rss(process)
        stop = sigterm_seconds(port, args.model, process, args.long_tokens)
    finally:
        if process.poll() is None:
            process.kill()
    good = [s for kind, status, s in records if kind == "well-formed" and status == 200]
    kinds = ("well-formed", *HOSTILE)
    statuses = {kind: dict(Counter(status for k, status, _ in records if k == kind)) for kind in kinds}
    failed = sum(1 for kind, status, _ in records if kind == "well-formed" and status != 200)
    quantile = statistics.quantiles(good, n=100) if len(good) > 1 else [float("nan")] * 99
    result = {
        "server": server, "requests": len(records), "statuses": statuses, "well_formed_failed": failed,
        "latency_p50": quantile[49], "latency_p99": quantile[98], "rss_before_mb": before / 2**20,
        "rss_peak_mb": peak[0] / 2**20, "rss_after_mb": after / 2**20, "memory_after_vs_before": after / before,
        "seconds_to_idle": idle, "sigterm_seconds": stop,
    }  # fmt: skip
    result["bars"] = {
        "no well-formed request failed": failed == 0,
        "CPU idle within 2 s": idle <= 2.0,
        "memory after within 10% of before": after <= 1.1 * before,
        "SIGTERM within the grace period": stop <= args.grace + 1.0,  # + the process's own exit
    }
    return result


def show(result: dict, args: argparse.Namespace) -> list[str]:
    lines = [f"{result['server']}: {args.clients} clients for {args.seconds:g} s, {result['requests']} requests"]
    lines += [f"  {kind:<18} {sum(c.values()):>5}  statuses {c}" for kind, c in result["statuses"].items()]
    lines.append(
        f"  well-formed latency p50 {result['latency_p50']:.2f} s, p99 {result['latency_p99']:.2f} s; failed "
        f"{result['well_formed_failed']}; memory before {result['rss_before_mb']:.0f} MB, peak "
        f"{result['rss_peak_mb']:.0f} MB, after {result['rss_after_mb']:.0f} MB "
        f"({result['memory_after_vs_before']:.3f}x); CPU idle {result['seconds_to_idle']:.2f} s after the clients "
        f"left; SIGTERM stopped it in {result['sigterm_seconds']:.2f} s (grace {args.grace:g} s)"
    )
    lines += [f"  {'PASS' if held else 'FAIL'}  {bar}" for bar, held in result["bars"].items()]
    return lines


def record(results: list[dict], args: argparse.Namespace) -> Path:
    """The runs as results/NAME.json: one row per server."""
    from kvmesh.evals.results import record_result

    def hostile(result: dict) -> str:  # what each hostile kind got back, e.g. "huge-body 413 x3"
        return "; ".join(
            f"{kind} " + ", ".join(f"{status} x{count}" for status, count in counts.items())
            for kind, counts in result["statuses"].items() if kind != "well-formed" and counts
        )  # fmt: skip

    columns = [
        {"key": "server", "header": "server", "format": ""},
        {"key": "requests", "header": "requests", "format": ""},
        {"key": "well_formed_failed", "header": "well-formed failed", "format": ""},
        {"key": "latency_p50", "header": "p50 s", "format": ".2f"},
        {"key": "latency_p99", "header": "p99 s", "format": ".2f"},
        {"key": "memory_after_vs_before", "header": "memory after / before", "format": ".3f"},
        {"key": "seconds_to_idle", "header": "s to idle", "format": ".2f"},
        {"key": "sigterm_seconds", "header": "SIGTERM s", "format": ".2f"},
        {"key": "hostile", "header": "hostile requests: status x count", "format": ""},
    ]
    rows = [r | {"hostile": hostile(r), "sigterm_seconds": None if r["sigterm_seconds"] == float("inf") else
                 r["sigterm_seconds"]} for r in results]  # fmt: skip
    config = {k: getattr(args, k) for k in ("model", "clients", "seconds", "long_tokens", "grace", "seed")}
    notes = (
        "Status 0: the client hung up before any answer (its point); SIGTERM '-': still running 120 s after the "
        "signal, then killed. p50/p99: well-formed requests, whole response. Memory: RSS of the server's process "
        "tree after one warm-up request, and once the clients left."
    )
    command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
    title = "Serving under a bounded load with 10% hostile clients (loopback)"
    return record_result(args.record, title=title, command=command, columns=columns, rows=rows, seeds=[args.seed],
                         config=config, notes=notes)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", nargs="+", choices=("kvmesh", "vllm"), default=["kvmesh"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--long-tokens", type=int, default=1500, help="reply length of the abandoned requests")
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--record", metavar="NAME", help="also write results/NAME.json (a README figure)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(server, args) for server in args.servers]
    if args.record:
        print(f"wrote {record(results, args)}", file=sys.stderr)
    if args.json:
        print(json.dumps({"config": vars(args), "runs": results}, indent=2))
        return
    for result in results:
        print("\n".join(show(result, args)))


if __name__ == "__main__":
    main()

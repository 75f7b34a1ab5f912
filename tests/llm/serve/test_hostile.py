"""One client cannot hurt the others: a sampler-breaking setting, a client that leaves, a huge body, a flood, a
SIGTERM with a row running. Each test watches the server's own load (`/health`: requests admitted, rows in the
batch) rather than timing it."""

import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest


def _get(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


def _post(url: str, body: dict | bytes, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()) | {"headers": {k.lower(): v for k, v in error.headers.items()}}


def _idle(url: str, deadline_s: float = 60.0) -> dict:
    """The server's load once no row is left in its batch (fails if rows stay past a generous deadline)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        load = _get(f"{url}/health")
        if load["rows"] == 0 and load["requests"] == 0:
            return load
        time.sleep(0.1)
    raise AssertionError(f"rows still in the batch after {deadline_s:g} s: {load}")


ENDLESS = {"model": "tiny-random", "prompt": "Once upon a time", "max_tokens": 100000, "min_tokens": 100000}


def _endless_stream(url: str):
    """A streamed request that would decode 100000 tokens (until the context's end), through the openai client."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    settings = {k: v for k, v in ENDLESS.items() if k != "min_tokens"}
    return client.completions.create(**settings, stream=True, extra_body={"min_tokens": ENDLESS["min_tokens"]})


def test_a_tiny_temperature_does_not_fail_itself_or_its_neighbours(serve):
    url, _ = serve()
    well_formed = {"model": "tiny-random", "prompt": "Hello there", "max_tokens": 8, "temperature": 0}
    alone = _post(f"{url}/v1/completions", well_formed)[1]["choices"][0]["text"]
    results = {}
    threads = [
        threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, _post(f"{url}/v1/completions", b)))
        for k, b in (("nan-prone", {**well_formed, "temperature": 1e-40, "max_tokens": 30}), ("plain", well_formed))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results["plain"][0] == 200 and results["plain"][1]["choices"][0]["text"] == alone
    assert results["nan-prone"][0] == 200  # shifted logits: a tiny temperature is greedy, not NaN


def test_a_stream_closed_early_cancels_its_row(serve):
    url, _ = serve()
    stream = _endless_stream(url)
    for count, _chunk in enumerate(stream):
        if count == 4:
            break
    assert _get(f"{url}/health")["rows"] == 1  # the row was decoding
    stream.close()
    _idle(url)  # without the cancel it would decode 100000 tokens


def test_a_client_that_disconnects_before_its_answer_cancels_its_row(serve):
    url, _ = serve()
    body = json.dumps(ENDLESS).encode()
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as raw:
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n"
        raw.sendall(head.encode() + body)
        end = time.monotonic() + 60
        while _get(f"{url}/health")["rows"] == 0 and time.monotonic() < end:
            time.sleep(0.05)
        assert _get(f"{url}/health")["rows"] == 1
    _idle(url)


def test_bodies_over_the_limit_get_413_before_they_are_read(serve):
    url, _ = serve("--max-body-bytes", "2000")
    status, body = _post(f"{url}/v1/completions", {"model": "tiny-random", "prompt": "x" * 5000})
    assert status == 413 and "2,000 bytes" in body["error"]["message"] and body["error"]["type"] == "request_too_large"
    request = urllib.request.Request(  # no Content-Length: a chunked body, counted while it is read
        f"{url}/v1/completions", iter([b'{"model": "tiny-random", "prompt": "', b"x" * 3000, b'"}']),
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413
    assert _post(f"{url}/v1/completions", {"model": "tiny-random", "prompt": "hi", "max_tokens": 2})[0] == 200


def test_a_full_queue_answers_503_with_retry_after(serve):
    url, _ = serve("--max-waiting", "1")
    stream = _endless_stream(url)
    next(iter(stream))  # admitted and decoding
    status, body = _post(f"{url}/v1/completions", {"model": "tiny-random", "prompt": "hi", "max_tokens": 2})
    assert status == 503 and body["headers"]["retry-after"] == "1" and "retry" in body["error"]["message"]
    stream.close()
    _idle(url)
    assert _post(f"{url}/v1/completions", {"model": "tiny-random", "prompt": "hi", "max_tokens": 2})[0] == 200


def test_sigterm_stops_a_server_with_a_row_running_within_its_grace(serve):
    url, process = serve("--grace", "2")
    stream = _endless_stream(url)
    next(iter(stream))
    process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down: the exit status is SIGTERM's
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)  # without the grace it would decode 100000 tokens first
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=5)

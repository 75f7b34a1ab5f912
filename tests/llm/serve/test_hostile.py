"""One client cannot hurt the others: a sampler-breaking setting, a client that leaves, a huge body, a slow body, a
flood, a SIGTERM with a row running. Each test reads what the server itself says it did (`/health`: requests
admitted, rows in the batch, rows cancelled; its log on shutdown) rather than timing it: a row nobody cancels
also ends, at the context's end, so only the server's count tells a cancel from a finish."""

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


def _idle(url: str, deadline_s: float = 120.0) -> dict:
    """The server's load once no row is left in its batch (a generous deadline: what matters is the counts)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        load = _get(f"{url}/health")
        if load["rows"] == 0 and load["requests"] == 0:
            return load
        time.sleep(0.1)
    raise AssertionError(f"rows still in the batch after {deadline_s:g} s: {load}")


# decodes to the context's end (tiny-random: 4096 positions) unless it is cancelled
ENDLESS = {"model": "tiny-random", "prompt": "Once upon a time", "max_tokens": 4000, "min_tokens": 4000}


def _endless_stream(url: str):
    """A streamed request that decodes to the context's end unless cancelled, through the openai client."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    settings = {k: v for k, v in ENDLESS.items() if k != "min_tokens"}
    return client.completions.create(**settings, stream=True, extra_body={"min_tokens": ENDLESS["min_tokens"]})


def test_a_tiny_temperature_does_not_fail_itself_or_its_neighbours(serve):
    url, _, _ = serve()
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
    url, _, _ = serve()
    stream = _endless_stream(url)
    for count, _chunk in enumerate(stream):
        if count == 4:
            break
    assert _get(f"{url}/health")["rows"] == 1  # the row was decoding
    stream.close()
    assert _idle(url)["cancelled"] == 1  # dropped, not decoded to the context's end


def test_a_client_that_disconnects_before_its_answer_cancels_its_row(serve):
    url, _, _ = serve()
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
    assert _idle(url)["cancelled"] == 1


def test_bodies_over_the_limit_get_413_before_they_are_read(serve):
    url, _, _ = serve("--max-body-bytes", "2000")
    status, body = _post(f"{url}/v1/completions", {"model": "tiny-random", "prompt": "x" * 5000})
    assert status == 413 and "2,000 bytes" in body["error"]["message"] and body["error"]["code"] == "request_too_large"
    request = urllib.request.Request(  # no Content-Length: a chunked body, counted while it is read
        f"{url}/v1/completions", iter([b'{"model": "tiny-random", "prompt": "', b"x" * 3000, b'"}']),
        {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413
    assert _post(f"{url}/v1/completions", {"model": "tiny-random", "prompt": "hi", "max_tokens": 2})[0] == 200


def test_a_full_queue_answers_503_with_retry_after(serve):
    url, _, _ = serve("--max-waiting", "1")
    stream = _endless_stream(url)
    next(iter(stream))  # admitted and decoding
    status, body = _post(f"{url}/v1/completions", {"model": "tiny-random", "prompt": "hi", "max_tokens": 2})
    assert status == 503 and body["headers"]["retry-after"] == "1" and "retry" in body["error"]["message"]
    stream.close()
    assert _idle(url)["cancelled"] == 1
    assert _post(f"{url}/v1/completions", {"model": "tiny-random", "prompt": "hi", "max_tokens": 2})[0] == 200


def test_sigterm_drops_a_running_row_after_its_grace_and_exits(serve):
    url, process, log = serve("--grace", "1")
    stream = _endless_stream(url)
    next(iter(stream))
    process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down: the exit status is SIGTERM's
    assert process.wait(timeout=120) in (0, -signal.SIGTERM)
    assert "; 1 cancelled in all" in log.read_text()  # dropped after the grace, not decoded to its end
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/health", timeout=5)


def _whole_response(raw: socket.socket) -> str:
    """One HTTP response read off `raw`: its head, then as many body bytes as Content-Length says (a response may
    arrive in several segments)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = raw.recv(4096)
        if not chunk:
            return data.decode()
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
    )
    while len(body) < length and (chunk := raw.recv(4096)):
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_body_that_drips_in_gets_408(serve):
    url, _, _ = serve("--body-timeout", "1")
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")  # 99 never come
        raw.settimeout(60)
        answer = _whole_response(raw)
    assert answer.startswith("HTTP/1.1 408") and "took over 1 s to arrive" in answer
    assert _get(f"{url}/health")["requests"] == 0

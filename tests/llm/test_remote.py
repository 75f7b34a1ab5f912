"""The OpenAI-compatible client backend: a team over HTTP answers as the in-process team does, with exact
counts; KV channels refuse it before any request; every failure says what went wrong; transient ones retry."""

import asyncio
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from kvmesh import Agent, CommGraph, Edge, Team
from kvmesh.agents.events import AgentFinished, TokenGenerated
from kvmesh.kvcomm import ChannelNotAvailableError
from kvmesh.llm import load_model
from kvmesh.llm.base import ContextLengthError, GenerationRequest
from kvmesh.llm.remote import OpenAIModel, RemoteModelError, RemoteSpec

TASKS = ["What is 2 + 2?", "Name a colour.", "Say hi."]


def team_on(model, channel="text") -> Team:
    agents = [Agent("a", "solver", model=model, max_new_tokens=6), Agent("b", "checker", model=model, max_new_tokens=6)]
    return Team(agents, CommGraph(["a", "b"], [Edge("a", "b", channel=channel)]), decision="last")


def remote(url: str, tiny, **settings) -> OpenAIModel:
    return OpenAIModel(f"openai:{url}#tiny-random", tiny.tokenizer, **settings)


def test_specs_name_the_url_the_served_model_and_optionally_a_tokenizer():
    assert RemoteSpec.parse("openai:http://h:8000/v1/#m") == RemoteSpec("http://h:8000/v1", "m", "m")
    assert RemoteSpec.parse("openai:http://h:8000/v1#m@smollm2-135m").tokenizer == "smollm2-135m"
    for bad in ("openai:h:8000#m", "openai:http://h:8000/v1", "openai:http://h/v1#"):
        with pytest.raises(RemoteModelError, match="openai:http://HOST:PORT/v1#MODEL-NAME"):
            RemoteSpec.parse(bad)


def test_a_served_name_with_no_tokenizer_here_says_to_name_one(tiny_server):
    with pytest.raises(RemoteModelError, match="name one after '@'"):
        load_model(f"openai:{tiny_server}#no-such-model-anywhere")


def test_a_team_over_http_answers_as_the_in_process_team_with_the_same_counts(tiny_server, tiny):
    spec = f"openai:{tiny_server}#tiny-random"
    served = load_model(spec)
    assert load_model(spec) is served and isinstance(served, OpenAIModel)
    over_http, local = team_on(spec).run_batch(TASKS), team_on(tiny).run_batch(TASKS)
    for theirs, ours in zip(over_http, local, strict=True):
        assert [m.content for m in theirs.messages] == [m.content for m in ours.messages]
        assert theirs.usage.total.input_tokens == ours.usage.total.input_tokens
        assert theirs.usage.total.output_tokens == ours.usage.total.output_tokens
        assert theirs.usage.per_edge == ours.usage.per_edge  # edge counts from the local tokenizer, exact
        assert theirs.usage.total.cache_read == 0  # kvmesh serve reports it: a true 0


def test_streamed_tokens_over_http_join_into_each_reply(tiny_server, tiny):
    events = list(team_on(remote(tiny_server, tiny)).stream(TASKS[0], tokens=True))
    for name in ("a", "b"):
        pieces = [e.text for e in events if isinstance(e, TokenGenerated) and e.agent == name]
        (finished,) = [e for e in events if isinstance(e, AgentFinished) and e.agent == name]
        assert pieces and "".join(pieces).strip() == finished.message.content


def test_kv_channels_refuse_a_served_model_before_any_request(tiny, unused_port):
    closed = f"http://127.0.0.1:{unused_port}/v1"  # a request would fail with "cannot reach"
    for channel in ("kv-reuse", "kv-select"):
        with pytest.raises(ChannelNotAvailableError, match="in this process"):
            team_on(remote(closed, tiny, max_retries=0), channel).run(TASKS[0])


def test_an_unreachable_server_says_so_and_how_to_start_one(tiny, unused_port):
    url = f"http://127.0.0.1:{unused_port}/v1"
    hint = rf"cannot reach .* Start one with: kvmesh serve --model tiny-random --port {unused_port}$"
    with pytest.raises(RemoteModelError, match=hint):  # the URL's own port and served name, not a fixed example
        team_on(remote(url, tiny, max_retries=0)).run(TASKS[0])


def test_a_name_the_server_does_not_serve_lists_what_it_serves(tiny_server, tiny):
    model = OpenAIModel(f"openai:{tiny_server}#gpt-4@tiny-random", tiny.tokenizer)
    with pytest.raises(RemoteModelError, match=r"serves \['tiny-random'\], not 'gpt-4'"):
        team_on(model).run(TASKS[0])


def test_a_prompt_past_the_served_context_is_refused_before_the_request(tiny_server, tiny):
    agent = Agent("a", "solver", model=remote(tiny_server, tiny), max_new_tokens=2)
    with pytest.raises(ContextLengthError, match=f"at most {tiny.context_length:,} positions"):
        Team([agent], CommGraph(["a"]), decision="last").run("x " * 9000)


# --- servers that misbehave: what no real engine does on demand ---------------------------------------------------


class Misbehaving:
    """A loopback OpenAI-shaped server whose /v1/completions answers as `reply(hit)` says (uvicorn, in a thread)."""

    def __init__(self, reply, port: int, context: int | None = None) -> None:
        self.hits, self.bodies = 0, []  # the request bodies it was sent, in order
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            card = {"id": "tiny-random", "object": "model", "owned_by": "test"}
            return {"object": "list", "data": [card | ({"max_model_len": context} if context else {})]}

        @app.post("/v1/completions")
        async def completions(request: Request):
            self.hits += 1
            self.bodies.append(await request.json())
            return await reply(self.hits)

        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _completion(usage: dict | None = None, text: str = "ok") -> dict:
    body = {"id": "c", "object": "text_completion", "created": 0, "model": "tiny-random"}
    body["choices"] = [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}]
    if usage is not None:
        body["usage"] = usage
    return body


USAGE = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_a_refused_request_names_the_status_and_the_server_s_reason(tiny, unused_port):
    async def reply(hit):
        return JSONResponse({"error": {"message": "prompt has a token id out of range"}}, status_code=400)

    refused = pytest.raises(RemoteModelError, match="HTTP 400: prompt has a token id out of range")
    with Misbehaving(reply, unused_port) as url, refused:
        team_on(remote(url, tiny)).run(TASKS[0])


def test_a_transient_failure_is_retried(tiny, unused_port):
    async def reply(hit):
        return JSONResponse({"error": "busy"}, status_code=503) if hit == 1 else _completion(USAGE)

    with Misbehaving(reply, unused_port) as url:
        result = team_on(remote(url, tiny, max_retries=2)).run(TASKS[0])
    assert result.messages[0].content == "ok"


def test_a_server_that_does_not_report_cached_tokens_leaves_them_unknown(tiny, unused_port):
    async def reply(hit):
        return _completion(USAGE)

    with Misbehaving(reply, unused_port) as url:
        result = team_on(remote(url, tiny)).run(TASKS[0])
    usage = result.messages[0].usage_metadata
    assert "cache_read" not in usage["input_token_details"] and result.usage.total.cache_read is None
    assert usage["input_tokens"] == 7 and usage["output_tokens"] == 2  # the server's own counts
    assert "unknown" in result.usage.table()


def test_reported_cached_tokens_are_read(tiny, unused_port):
    async def reply(hit):
        return _completion({**USAGE, "prompt_tokens_details": {"cached_tokens": 5}})

    with Misbehaving(reply, unused_port) as url:
        result = team_on(remote(url, tiny)).run(TASKS[0])
    assert result.usage.total.cache_read == 10  # 5 per call, two calls


@pytest.mark.parametrize(
    ("body", "message"),
    [(_completion(None), "without usage"), ({"id": "c", "object": "x", "created": 0, "model": "m"}, "no choices")],
)
def test_a_malformed_response_says_what_is_missing(tiny, unused_port, body, message):
    async def reply(hit):
        return body

    with Misbehaving(reply, unused_port) as url, pytest.raises(RemoteModelError, match=message):
        team_on(remote(url, tiny)).run(TASKS[0])


def test_a_server_that_does_not_answer_in_time_times_out(tiny, unused_port):
    async def reply(hit):
        await asyncio.sleep(5)
        return _completion(USAGE)

    slow = pytest.raises(RemoteModelError, match=r"did not answer within 0.5 s")
    with Misbehaving(reply, unused_port) as url, slow:
        team_on(remote(url, tiny, timeout=0.5, max_retries=0)).run(TASKS[0])


def test_sampled_rows_each_send_their_own_seed_and_a_rerun_the_same_in_any_order(tiny, ports):
    async def reply(hit):
        return _completion(USAGE)

    prompts = [tiny.encode_prompt("Once upon a time"), tiny.encode_prompt("Name a colour")]
    rows = [GenerationRequest(ids, 4, temperature=1.0) for ids in prompts for _ in range(2)]
    rows.append(GenerationRequest(prompts[0], 4))  # greedy: no seed
    seeds = []
    for order in (rows, rows[::-1]):  # a rerun whose rows are submitted in another order (as finishing times vary)
        server = Misbehaving(reply, ports())
        with server as url:
            remote(url, tiny).generate_requests(order, seed=7)
        sampled = [body for body in server.bodies if body["temperature"] > 0]
        assert [body.get("seed") for body in server.bodies if body["temperature"] == 0] == [None]
        seeds.append({tuple(ids): sorted(b["seed"] for b in sampled if b["prompt"] == ids) for ids in prompts})
    assert len({seed for pair in seeds[0].values() for seed in pair}) == 4  # every sampled row its own seed
    assert seeds[1] == seeds[0]  # reproducible whatever the submission order (was: the submission index)
    (pinned,) = [GenerationRequest(prompts[0], 4, temperature=1.0, seed=123)]
    server = Misbehaving(reply, ports())
    with server as url:
        remote(url, tiny).generate_requests([pinned], seed=7)
    assert server.bodies[0]["seed"] == 123  # a row's own seed goes as it is


def test_a_reply_is_clipped_to_the_served_context_as_in_process(tiny, unused_port):
    async def reply(hit):
        return _completion(USAGE)

    ids = tiny.encode_prompt("Once upon a time")
    server = Misbehaving(reply, unused_port, context=len(ids) + 3)
    with server as url:
        remote(url, tiny).generate_requests([GenerationRequest(ids, 20, min_new_tokens=10)])
    assert server.bodies[0]["max_tokens"] == 3 and server.bodies[0]["min_tokens"] == 3  # a server 400 otherwise


def test_a_cancelled_row_is_dropped_by_kvmesh_serve(tiny_server, tiny):
    import json
    import urllib.request

    def rows_in_batch() -> int:
        health = tiny_server.removesuffix("/v1") + "/health"
        return json.loads(urllib.request.urlopen(health, timeout=10).read())["rows"]

    batch = remote(tiny_server, tiny).new_batch()
    batch.submit(GenerationRequest(tiny.encode_prompt("Once"), 100000, min_new_tokens=100000), "endless")
    deadline = time.monotonic() + 60
    while rows_in_batch() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rows_in_batch() == 1
    batch.cancel("endless")
    assert not batch.has_work and batch.step() == []
    while rows_in_batch() and time.monotonic() < deadline + 60:
        time.sleep(0.1)
    assert rows_in_batch() == 0  # the closed connection cancelled the row; it would decode 100000 tokens

"""What `kvmesh serve` says to clients: OpenAI's error body, fields it cannot honour refused by name, the cheap
parameters implemented (top_p, logprobs, echo), a key when asked for, no CDN pages, and a busy port refused."""

import json
import subprocess
import sys
import urllib.error
import urllib.request

import openai
import pytest

from kvmesh.llm.base import GenerationRequest

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server, api_key="x", max_retries=0)


def _refused(client, **settings) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(**{"model": "tiny-random", "prompt": "hi", "max_tokens": 2, **settings})
    return caught.value


def test_errors_come_in_openais_body_so_its_client_shows_the_message(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    assert "serves 'tiny-random', not 'gpt-4'" in str(caught.value)  # FastAPI's {"detail"} showed only the code
    assert caught.value.body["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"extra_body": {"tools": [{"type": "function"}]}}, "tools"),
        ({"extra_body": {"response_format": {"type": "json_object"}}}, "response_format"),
        ({"best_of": 2}, "best_of"),
        ({"suffix": "end"}, "suffix"),
        ({"logprobs": 3}, "logprobs"),
        ({"logprobs": 0, "echo": True}, "echo"),
    ],
)
def test_fields_it_cannot_honour_are_refused_by_name(client, settings, param):
    error = _refused(client, **settings)
    assert error.status_code == 400 and error.body["param"] == param and param in error.body["message"]


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"extra_body": {"stream": "yes"}}, "stream"),
        ({"temperature": 1e308}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 2, "extra_body": {"min_tokens": 5}}, "min_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_values_out_of_range_are_refused_not_clamped(client, settings, param):
    error = _refused(client, **settings)
    assert error.status_code == 400 and param in error.body["message"]


def test_neutral_penalties_and_user_are_accepted(client):
    reply = client.completions.create(
        model="tiny-random", prompt="hi", max_tokens=2, presence_penalty=0, frequency_penalty=0, user="me"
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_logprobs_are_the_engines_for_the_chosen_tokens(client, tiny):
    ids = tiny.encode_prompt(PROMPT)
    (expected,) = tiny.generate_requests([GenerationRequest(ids, 5, logprobs=True)])
    reply = client.completions.create(model="tiny-random", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=0)
    assert reply.choices[0].logprobs.token_logprobs == pytest.approx(expected.logprobs, abs=1e-4)
    chat = client.chat.completions.create(
        model="tiny-random", messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0, logprobs=True
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens and all(item.logprob <= 0 for item in content)


def test_echo_puts_the_prompt_before_the_reply(client):
    plain = client.completions.create(model="tiny-random", prompt=PROMPT, max_tokens=4, temperature=0)
    echoed = client.completions.create(model="tiny-random", prompt=PROMPT, max_tokens=4, temperature=0, echo=True)
    assert echoed.choices[0].text == PROMPT + plain.choices[0].text


def test_top_p_zero_is_greedy_and_top_p_is_not_ignored(client):
    settings = {"model": "tiny-random", "prompt": PROMPT, "max_tokens": 12}
    greedy = client.completions.create(**settings, temperature=0).choices[0].text
    nucleus = {client.completions.create(**settings, temperature=1.5, top_p=0).choices[0].text for _ in range(3)}
    sampled = {client.completions.create(**settings, temperature=1.5).choices[0].text for _ in range(3)}
    assert nucleus == {greedy} and sampled != {greedy}


def test_a_streamed_chat_names_the_role_in_its_first_chunk_only(client):
    stream = client.chat.completions.create(
        model="tiny-random", messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0, stream=True
    )
    roles = [chunk.choices[0].delta.role for chunk in stream if chunk.choices]
    assert roles[0] == "assistant" and len(roles) > 1 and not any(roles[1:])


def test_no_docs_pages_that_need_a_cdn(tiny_server):
    root = tiny_server.removesuffix("/v1")
    for path in ("/docs", "/redoc", "/openapi.json"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(root + path, timeout=10)
        assert caught.value.code == 404


def test_an_api_key_guards_every_route_but_health(serve):
    url, _, _ = serve("--api-key", "sesame")
    assert json.loads(urllib.request.urlopen(f"{url}/health", timeout=10).read())["status"] == "ok"
    with pytest.raises(openai.AuthenticationError) as caught:
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    assert "Bearer" in str(caught.value)
    models = openai.OpenAI(base_url=f"{url}/v1", api_key="sesame", max_retries=0).models.list()
    assert models.data[0].id == "tiny-random"


def test_a_busy_port_is_refused_before_anything_is_announced(serve):
    url, _, _ = serve()
    port = url.rsplit(":", 1)[1]
    command = [sys.executable, "-m", "kvmesh.cli", "serve", "--model", "tiny-random", "--port", port]
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0 and "cannot listen on 127.0.0.1:" + port in second.stderr
    assert "serving" not in second.stderr


def test_the_routers_own_refusals_use_openais_body_too(tiny_server):
    root = tiny_server.removesuffix("/v1")
    for path, method, status in (("/v1/nothing", "GET", 404), ("/v1/completions", "GET", 405)):
        request = urllib.request.Request(root + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        body = json.loads(caught.value.read())
        assert caught.value.code == status and set(body["error"]) == {"message", "type", "param", "code"}


def test_min_tokens_over_the_default_cap_is_refused_not_clamped(client):
    with pytest.raises(openai.BadRequestError) as caught:  # no max_tokens: the server's default cap, 256
        client.completions.create(model="tiny-random", prompt="hi", extra_body={"min_tokens": 300})
    assert "min_tokens (300) is more than the reply cap (256" in str(caught.value)


def test_a_requests_seed_gives_its_own_draws_whatever_runs_beside_it(client):
    settings = {"model": "tiny-random", "prompt": PROMPT, "max_tokens": 12, "temperature": 1.0}
    first = client.completions.create(**settings, seed=3).choices[0].text
    client.completions.create(**settings)  # an unseeded draw from the shared sampler in between
    assert client.completions.create(**settings, seed=3).choices[0].text == first
    assert client.completions.create(**settings, seed=4).choices[0].text != first

"""`kvmesh serve`: OpenAI's API over the in-process engine, streamed or not, with continuous batching."""

import asyncio

import openai
import pytest

from kvmesh.llm.base import GenerationRequest
from kvmesh.llm.serve import EngineThread


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server, api_key="x", max_retries=0)


def test_models_lists_the_served_spec_and_its_context(client, tiny):
    (card,) = client.models.list().data
    assert card.id == "tiny-random" and card.model_extra["max_model_len"] == tiny.context_length


def test_a_chat_completion_is_the_engine_s_greedy_reply_with_exact_usage(client, tiny):
    messages = [{"role": "user", "content": "Say hello"}]
    reply = client.chat.completions.create(model="tiny-random", messages=messages, max_tokens=6, temperature=0)
    (expected,) = tiny.generate([[("user", "Say hello")]], max_new_tokens=6)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == ("length" if expected.finish_reason == "length" else "stop")
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected.prompt_tokens, expected.completion_tokens)
    assert usage.prompt_tokens_details.cached_tokens == 0  # no prefix cache across requests: a true 0


def test_a_streamed_chat_sends_the_engine_s_pieces_then_usage(client, tiny):
    messages = [{"role": "user", "content": "Say hello"}]
    stream = client.chat.completions.create(
        model="tiny-random",
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    (expected,) = tiny.generate([[("user", "Say hello")]], max_new_tokens=8)
    assert len(pieces) > 1 and "".join(pieces) == expected.text
    assert chunks[-1].usage.completion_tokens == expected.completion_tokens and not chunks[-1].choices


def test_completions_take_token_ids_and_return_the_generated_ids(client, tiny):
    ids = tiny.encode_prompt("Once upon a time")
    reply = client.completions.create(
        model="tiny-random", prompt=ids, max_tokens=5, temperature=0, extra_body={"return_token_ids": True}
    )
    (expected,) = tiny.generate_requests([GenerationRequest(ids, 5)])
    choice = reply.choices[0]
    assert choice.text == expected.text and choice.model_extra["token_ids"] == expected.token_ids


@pytest.mark.parametrize(
    ("settings", "status", "message"),
    [
        ({"model": "gpt-4"}, 404, "serves 'tiny-random', not 'gpt-4'"),
        ({"prompt": [10**9]}, 400, "token ids must lie in"),
        ({"prompt": "x " * 9000}, 400, "positions"),
        ({"max_tokens": 0}, 400, "max_tokens"),
    ],
)
def test_bad_requests_get_a_clear_http_error(client, settings, status, message):
    request = {"model": "tiny-random", "prompt": "hi", "max_tokens": 2, **settings}
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(**request)
    assert caught.value.status_code == status and message in str(caught.value.body)


async def test_a_request_joins_the_batch_that_is_already_decoding(tiny):
    engine = EngineThread(tiny)
    long_ids, short_ids = tiny.encode_prompt("Once upon a time"), tiny.encode_prompt("Hi")
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    first = GenerationRequest(long_ids, 200, min_new_tokens=200)
    first.on_text = lambda piece: loop.call_soon_threadsafe(started.set)
    _, slow = engine.submit(first)
    await started.wait()  # the first row is decoding
    fast = await engine.submit(GenerationRequest(short_ids, 2, min_new_tokens=2))[1]
    assert fast.completion_tokens == 2 and not slow.done()  # it did not wait for the running row to drain
    assert (await slow).completion_tokens == 200

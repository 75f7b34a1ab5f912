import copy

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from kvmesh.llm.chat import PLAIN_STOPS, ChatFormat, to_turns


def test_template_renders_a_transcript_that_ends_with_another_agents_reply(tiny):
    text = tiny.render([SystemMessage("Be brief."), HumanMessage("2+2?"), AIMessage("4", name="bob")])
    assert text.endswith("<|im_start|>assistant\n4<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in text


def test_plain_fallback_for_models_without_a_template(tiny):
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = None
    fmt = ChatFormat.for_tokenizer(tokenizer)
    assert fmt.stop == PLAIN_STOPS and not fmt.uses_template
    text = fmt.render([("system", "S"), ("user", "U"), ("assistant", "A")])
    assert text == tokenizer.bos_token + "System: S\n\nUser: U\n\nAssistant: A\n\nAssistant:"


def test_plain_prompts_show_every_token_and_stop_at_the_next_turn(tiny):
    from kvmesh import LocalLM

    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = None
    plain = LocalLM(tiny.model, tokenizer, "tiny-plain")
    text = plain.render([("user", "Hi")])
    ids = plain.encode_prompt(text)
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    free = plain.generate([text], max_new_tokens=24)[0]
    assert free.prompt_tokens == len(ids)
    stop_at = free.text[len(free.text) // 2 :][:3]  # make a piece of greedy output behave like the next turn
    plain.chat = ChatFormat(tokenizer, stop=(stop_at,))
    cut = plain.generate([text], max_new_tokens=24)[0]
    assert cut.finish_reason == "stop" and stop_at not in cut.text


STRICT = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}"
    "{% endif %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_strict_templates_get_merged_turns(tiny):
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = STRICT
    fmt = ChatFormat.for_tokenizer(tokenizer)
    text = fmt.render([("system", "S"), ("user", "U"), ("assistant", "A1"), ("assistant", "A2")])
    assert text == "<user>S\n\nU</user><assistant>A1\n\nA2</assistant><assistant>"


def test_bad_messages_are_rejected():
    with pytest.raises(ValueError, match="at least one message"):
        to_turns([])
    with pytest.raises(ValueError, match="unknown chat role"):
        to_turns([("robot", "hi")])
    with pytest.raises(TypeError, match="langchain message"):
        to_turns([42])

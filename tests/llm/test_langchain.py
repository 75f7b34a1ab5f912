import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from kvmesh.llm.langchain import ChatLocalLM


def test_transcript_ending_in_another_agents_reply(tiny):
    chat = ChatLocalLM(model=tiny, max_new_tokens=8, name_replies="carol")
    transcript = [
        SystemMessage("Be brief."),
        HumanMessage("Plan a trip."),
        AIMessage("Go to Rome.", name="bob"),
    ]
    reply = chat.invoke(transcript)
    assert isinstance(reply, AIMessage) and reply.name == "carol"
    prompt = tiny.render([*transcript[:2], AIMessage("bob: Go to Rome.")])  # the speaker is named in the text
    usage = reply.usage_metadata
    assert usage["input_tokens"] == tiny.count_tokens(prompt)
    assert usage["output_tokens"] == 8  # the random model never emits EOS this early
    assert usage["total_tokens"] == usage["input_tokens"] + 8
    assert usage["input_token_details"]["cache_read"] == 0
    assert prompt.endswith("<|im_start|>assistant\nbob: Go to Rome.<|im_end|>\n<|im_start|>assistant\n")


def test_per_call_settings_are_honoured(tiny):
    chat = ChatLocalLM(model=tiny, max_new_tokens=8)
    assert chat.invoke("hello", max_new_tokens=2).usage_metadata["output_tokens"] == 2
    assert chat.bind(max_new_tokens=3).invoke("hello").usage_metadata["output_tokens"] == 3
    with pytest.raises(TypeError, match="does not take \\['top_k'\\]"):
        chat.invoke("hello", top_k=5)


def test_batch_is_one_call_with_per_input_usage(tiny):
    chat = ChatLocalLM(model=tiny, max_new_tokens=4)
    inputs = ["hello", [HumanMessage("a much longer question about many different things")]]
    replies = chat.batch(inputs)
    assert [r.content for r in replies] == [chat.invoke(i).content for i in inputs]
    assert replies[0].usage_metadata["input_tokens"] < replies[1].usage_metadata["input_tokens"]


@pytest.mark.slow
def test_real_model_through_langchain(smollm):
    reply = ChatLocalLM(model="smollm2-135m", max_new_tokens=32).invoke("What is the capital of France?")
    assert "Paris" in reply.content

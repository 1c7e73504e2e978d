"""A prompt longer than the context, as real clients see it (live server): each must raise
its own context-overflow exception, which is what its fallbacks and retries act on.

- openai: BadRequestError with code `context_length_exceeded`.
- langchain-openai: OpenAIContextOverflowError, when "context_length_exceeded" is in the
  error's text (Chat Completions and the Responses API).
- LiteLLM: ContextWindowExceededError, from "This model's maximum context length is" in
  the message; its Router's context_window_fallbacks then retry on a larger model.
- pydantic-ai: ModelContextWindowExceededError, from the code (or "maximum context
  length" in the message).
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not fetch its price list at import

MODEL = "qwen3-vl-instruct"
LONG = "word " * 3000  # > 2047 tokens, the tiny model's prompt limit
SHORT_ENOUGH = "word " * 300  # over 100 tokens, under 2047


def test_openai_client(server):
    import openai

    client = server.openai(max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": LONG}], max_tokens=1)
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=LONG, max_tokens=1)
    assert e.value.code == "context_length_exceeded" and "your prompt resulted in" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input=LONG, max_output_tokens=16)
    assert e.value.code == "context_length_exceeded" and e.value.param == "input"


@pytest.mark.parametrize("responses_api", [False, True])
def test_langchain_raises_its_context_overflow_error(server, responses_api):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.exceptions import ContextOverflowError

    llm = langchain_openai.ChatOpenAI(
        base_url=server.url + "/v1",
        api_key=server.api_key,
        model=MODEL,
        max_tokens=16,
        max_retries=0,
        use_responses_api=responses_api,
    )
    with pytest.raises(ContextOverflowError) as e:
        llm.invoke(LONG)
    assert type(e.value).__name__ == "OpenAIContextOverflowError"


def test_litellm_raises_context_window_exceeded(server):
    litellm = pytest.importorskip("litellm")

    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(
            model="openai/" + MODEL,
            api_base=server.url + "/v1",
            api_key=server.api_key,
            messages=[{"role": "user", "content": LONG}],
            max_tokens=1,
            num_retries=0,
        )


def test_litellm_router_falls_back_to_the_larger_context(server, server_factory):
    """The point of the wording: a Router's context_window_fallbacks move an overflowing
    request to the model with the larger context (here the same tiny model, served with
    --max-prompt-tokens 100 as the "small" one)."""
    litellm = pytest.importorskip("litellm")

    def deployment(name, url):
        return {
            "model_name": name,
            "litellm_params": {"model": "openai/" + MODEL, "api_base": url + "/v1", "api_key": server.api_key},
        }

    with server_factory("--max-prompt-tokens", "100", api_key=server.api_key) as small:
        router = litellm.Router(
            model_list=[deployment("small", small.url), deployment("large", server.url)],
            context_window_fallbacks=[{"small": ["large"]}],
            num_retries=0,
        )
        r = router.completion(model="small", messages=[{"role": "user", "content": SHORT_ENOUGH}], max_tokens=1)
        assert r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.prompt_tokens > 100  # served by the larger one


@pytest.mark.parametrize("responses_api", [False, True])
def test_pydantic_ai_raises_model_context_window_exceeded(server, responses_api):
    pytest.importorskip("pydantic_ai")
    from pydantic_ai import Agent, ModelContextWindowExceededError
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(base_url=server.url + "/v1", api_key=server.api_key)
    model = (OpenAIResponsesModel if responses_api else OpenAIChatModel)(MODEL, provider=provider)
    agent = Agent(model, model_settings={"max_tokens": 16})
    with pytest.raises(ModelContextWindowExceededError):
        agent.run_sync(LONG)

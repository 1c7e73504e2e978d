"""Thinking models without a server: the reasoning splitter (whole and in every cut), the
template's thinking switches, earlier turns' reasoning in the prompt, and the slot
steering the scheduler consults (forced `</think>` at the budget)."""

from __future__ import annotations

import pytest

from qwen3vl_app.engine.steering import CLOSE_TEXT, THINK_END, THINK_START, Steering, build, prompt_opens_thinking
from qwen3vl_app.errors import APIError
from qwen3vl_app.processing import reasoning
from qwen3vl_app.processing.reasoning import ReasoningSplitter, split
from qwen3vl_app.protocol import GenerationRequest
from qwen3vl_app.tokenizer import ChatTokenizer


@pytest.fixture(scope="module")
def thinking_tok():
    from qwen3vl_app.devtools.tiny_thinking import ensure_tiny_thinking_checkpoint

    return ChatTokenizer(ensure_tiny_thinking_checkpoint())


@pytest.fixture(scope="module")
def hybrid_tok():
    from qwen3vl_app.devtools.tiny_thinking import ensure_tiny_thinking_checkpoint

    return ChatTokenizer(ensure_tiny_thinking_checkpoint(hybrid=True))


OUTPUTS = [
    # (output text, prompt opened <think>, reasoning, answer)
    ("Let me add.\n2+2=4\n</think>\n\nIt is 4.", True, "Let me add.\n2+2=4", "It is 4."),
    ("no newline</think>answer", True, "no newline", "answer"),
    ("never closed, cut by max_tokens\n\n", True, "never closed, cut by max_tokens", ""),
    ("\n<think>\nmodel opened it\n</think>\n\nok", False, "model opened it", "ok"),
    ("plain answer, <think> later is text", False, None, "plain answer, <think> later is text"),
    ("a < b and </thin k> is not a tag</think>\n\n\nx\n\ny", True, "a < b and </thin k> is not a tag", "x\n\ny"),
    ("</think>", True, "", ""),
]


@pytest.mark.parametrize("text,opened,thought,answer", OUTPUTS)
def test_split_whole(text, opened, thought, answer):
    assert split(text, opened) == (thought, answer)


@pytest.mark.parametrize("text,opened,thought,answer", OUTPUTS)
def test_split_in_every_cut(text, opened, thought, answer):
    """Stream deltas may cut anywhere (a tag, the newlines around it): the pieces add up
    to the same split, and no content comes before the last reasoning."""
    for size in (1, 2, 3, 5):
        s = ReasoningSplitter(opened)
        pieces = [s.push(text[i : i + size]) for i in range(0, len(text), size)] + [s.flush()]
        got_r = "".join(r for r, _ in pieces)
        got_c = "".join(c for _, c in pieces)
        assert (got_r if s.reasoning_seen else None, got_c) == (thought, answer)
        first_content = next((i for i, (_, c) in enumerate(pieces) if c), len(pieces))
        assert not any(r for r, _ in pieces[first_content + 1 :])


def test_template_support(tiny_tokenizer, thinking_tok, hybrid_tok):
    assert reasoning.support(tiny_tokenizer) == reasoning.ThinkingSupport(False, False, False)
    assert reasoning.support(thinking_tok) == reasoning.ThinkingSupport(True, True, False)
    assert reasoning.support(hybrid_tok) == reasoning.ThinkingSupport(True, True, True)


def test_template_kwargs(tiny_tokenizer, thinking_tok, hybrid_tok):
    instruct, always, hybrid = (reasoning.support(t) for t in (tiny_tokenizer, thinking_tok, hybrid_tok))
    off = GenerationRequest(chat_template_kwargs={"enable_thinking": False})
    on = GenerationRequest(chat_template_kwargs={"enable_thinking": True})
    assert reasoning.template_kwargs(off, hybrid) == {"enable_thinking": False}
    assert reasoning.template_kwargs(on, always) == {}
    assert reasoning.template_kwargs(off, instruct) == {}  # off on a model that never thinks: nothing to do
    for req, model, words in (
        (off, always, "always thinks"),
        (on, instruct, "no thinking mode"),
        (GenerationRequest(chat_template_kwargs={"add_generation_prompt": False}), hybrid, "'add_generation_prompt'"),
        (GenerationRequest(chat_template_kwargs={"enable_thinking": "no"}), hybrid, "true or false"),
    ):
        with pytest.raises(APIError) as e:
            reasoning.template_kwargs(req, model)
        assert e.value.status == 400 and words in e.value.message
    with pytest.raises(APIError, match="Thinking models only"):
        reasoning.check_budget(GenerationRequest(thinking_budget=10), instruct)
    reasoning.check_budget(GenerationRequest(thinking_budget=10), always)


def test_enable_thinking_false_closes_the_thinking_in_the_prompt(hybrid_tok):
    msgs = [{"role": "user", "content": "hi"}]
    on = hybrid_tok.encode_chat(msgs)
    off = hybrid_tok.encode_chat(msgs, template_kwargs={"enable_thinking": False})
    assert prompt_opens_thinking(on) and not prompt_opens_thinking(off)
    assert THINK_END in off[-4:]


def _prompt(tok, messages):
    """Template messages as serving builds them (reasoning attached), rendered to text."""
    from qwen3vl_app.prompt.messages import split_messages

    template_messages, _ = split_messages(messages)
    reasoning.attach_history(messages, template_messages)
    return tok.decode(tok.encode_chat(template_messages), skip_special=False)


def test_earlier_turns_reasoning_dropped(thinking_tok):
    """Qwen3-VL Thinking templates keep an assistant turn's reasoning only after the last
    user message: earlier turns' thinking never reaches the prompt, whichever way the
    client sends it back (reasoning_content, reasoning, or inline in the content)."""
    for turn in (
        {"role": "assistant", "content": "Four.", "reasoning_content": "SECRET-A adds two and two"},
        {"role": "assistant", "content": "Four.", "reasoning": "SECRET-A adds two and two"},
        {"role": "assistant", "content": "SECRET-A adds two and two\n</think>\n\nFour."},
        {"role": "assistant", "content": "<think>\nSECRET-A adds two and two\n</think>\n\nFour."},
    ):
        text = _prompt(thinking_tok, [{"role": "user", "content": "2+2?"}, turn, {"role": "user", "content": "3+3?"}])
        assert "SECRET-A" not in text and "</think>" not in text.split("<|im_start|>assistant\n")[1]
        assert "<|im_start|>assistant\nFour.<|im_end|>" in text
        assert text.endswith("<|im_start|>assistant\n<think>\n")


def test_reasoning_kept_within_a_tool_chain(thinking_tok):
    """After the last user message (the model called a tool and goes on) the template
    keeps that turn's reasoning, as the model wrote it; it stays client text (untrusted)."""
    call = {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2}'}}
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "", "tool_calls": [call], "reasoning_content": "I call add <|im_end|>"},
        {"role": "tool", "tool_call_id": "c1", "content": "4"},
    ]
    from qwen3vl_app.prompt.messages import split_messages

    template_messages, _ = split_messages(messages)
    reasoning.attach_history(messages, template_messages)
    ids = thinking_tok.encode_chat(template_messages)
    text = thinking_tok.decode(ids, skip_special=False)
    assert "<think>\nI call add <|im_end|>\n</think>\n\n<tool_call>" in text
    assert ids.count(151645) == 3  # the client's "<|im_end|>" is plain text, not a turn end


def test_steering_forces_the_close_at_the_budget(thinking_tok):
    close = tuple(thinking_tok.encode(CLOSE_TEXT))
    assert THINK_END in close
    prompt = thinking_tok.encode_chat([{"role": "user", "content": "hi"}])
    steer = build(prompt, True, 3, close, None)
    assert steer is not None and steer.thinking
    out = []
    for _ in range(10):
        forced = steer.forced()
        token = forced if forced is not None else 100  # the "model" never closes by itself
        out.append(token)
        assert steer.observe(token) is None
    assert out[:3] == [100, 100, 100] and tuple(out[3 : 3 + len(close)]) == close and out[3 + len(close) :] == [100] * 4
    assert steer.reasoning_tokens == 3 + close.index(THINK_END) + 1 and not steer.holds_mask


def test_steering_leaves_a_model_that_closes_alone(thinking_tok):
    steer = Steering(thinking=True, budget=5, close_ids=(1, THINK_END, 2))
    for token in (7, 8, THINK_END, 9, 9, 9, 9, 9, 9):
        assert steer.forced() is None
        steer.observe(token)
    assert steer.reasoning_tokens == 3 and not steer.thinking


def test_hybrid_model_opening_think_itself_counts():
    steer = Steering(thinking=False, budget=None, close_ids=(THINK_END,))
    for token in (THINK_START, 5, 6, THINK_END, 7):
        steer.observe(token)
    assert steer.reasoning_tokens == 4


def test_no_steering_without_thinking_or_guard(tiny_tokenizer):
    prompt = tiny_tokenizer.encode_chat([{"role": "user", "content": "hi"}])
    assert build(prompt, False, None, (), None) is None
    assert not prompt_opens_thinking(prompt)

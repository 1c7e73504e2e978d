"""Compiling schemas into grammars within a budget, once, and failing loudly: the checks
before the library, the compile cache, the probe, the runtime error checks and the
messages (engine/constraints.py, structured.py).  The live behaviour -- off the event
loop, HTTP statuses, streams -- is tests/resilience/test_grammar_limits.py."""

from __future__ import annotations

import time

import numpy as np
import pytest

from qwen3vl_app.engine.constraints import (
    MAX_ARRAY_ITEMS,
    GrammarBudget,
    GrammarFailed,
    GrammarRejected,
    clean_reason,
    compile_grammar,
)
from qwen3vl_app.errors import APIError
from qwen3vl_app.model_constants import IM_END
from qwen3vl_app.protocol import ChatRequest, ToolChoice
from qwen3vl_app.structured import plan_output as _plan


def _fmt(schema) -> dict:
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}


def _nested(levels: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "array", "items": {"type": "integer"}, "minItems": 30_000_000}, "30000000 array items"),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 10_000_000}, "10000000 array items"),
        ({"type": "array", "minItems": 10**400}, "array items"),
        (
            {"type": "object", "properties": {f"a{i}": {"type": "array", "maxItems": 9000} for i in range(2)}},
            "18000 array items",
        ),
        (_nested(200), "nested deeper"),
        ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(6000)}}, "properties"),
        ({"type": "string", "description": "x" * 300_000}, "262144 bytes"),
    ],
)
def test_the_budget_refuses_before_the_library_compiles(schema, words):
    t0 = time.monotonic()
    with pytest.raises(APIError) as e:
        plan_output(_fmt(schema), host_logits=True)
    assert time.monotonic() - t0 < 5  # milliseconds in fact: nothing is expanded
    assert e.value.status == 400 and e.value.code == "invalid_schema" and e.value.param == "response_format"
    assert words in e.value.message


def test_tool_parameters_share_the_budget_and_name_tools():
    tool = {"type": "function", "function": {"name": "f", "parameters": _nested(200)}}
    with pytest.raises(APIError) as e:
        plan_output({"tools": [tool], "tool_choice": ToolChoice("required")}, host_logits=True)
    assert e.value.param == "tools" and "tool parameter schema" in e.value.message
    big = {"type": "array", "maxItems": MAX_ARRAY_ITEMS // 2 + 1}
    tools = [{"type": "function", "function": {"name": n, "parameters": big}} for n in "ab"]
    with pytest.raises(APIError):
        plan_output({"tools": tools, "tool_choice": ToolChoice("required")}, host_logits=True)


def test_a_larger_budget_lets_a_larger_schema_through():
    schema = {"type": "string", "description": "x" * 300_000}
    with pytest.raises(GrammarRejected):
        compile_grammar(json_schema=schema)
    assert compile_grammar(json_schema=schema, budget=GrammarBudget(max_schema_bytes=1 << 20)).source


SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}}, "required": ["n"]}


def test_a_schema_is_compiled_once_and_every_generation_gets_its_own_copy(tiny_tokenizer):
    first = compile_grammar(json_schema=SCHEMA, tokenizer=tiny_tokenizer)
    again = compile_grammar(json_schema=dict(SCHEMA), tokenizer=tiny_tokenizer)
    assert first.compiled is not None and again.compiled is first.compiled  # from the cache
    a, b = first.mask(tiny_tokenizer), again.mask(tiny_tokenizer)
    start = a.allowed().copy()
    for token in tiny_tokenizer.encode('{"n": 1'):
        assert a.allowed()[token]
        a.accept(token)
    assert np.array_equal(b.allowed(), start)  # b is untouched by a's tokens
    assert np.array_equal(first.mask(tiny_tokenizer).allowed(), start)  # and so is the cached one


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "no JSON value satisfies it"),
        ({"type": "string", "pattern": "^(a{1000}){1000}$"}, "too large an automaton"),
        (
            {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1000)}},
            "too many alternatives",
        ),
    ],
)
def test_a_grammar_that_fails_at_once_is_refused_by_the_probe(tiny_tokenizer, schema, reason):
    """Each of these compiles, then fails on the first token or two (was: generation ran and
    the answer stopped at once, content '' or '"')."""
    with pytest.raises(GrammarRejected) as e:
        compile_grammar(json_schema=schema, tokenizer=tiny_tokenizer)
    assert reason in str(e.value)


def test_a_library_panic_is_a_plain_refusal(tiny_tokenizer):
    """This enum leaves llguidance's lexer budget just short of what the free-form `{}`
    needs, where the library unwraps an error and panics (pyo3's PanicException, a
    BaseException carrying a backtrace)."""
    schema = {
        "type": "object",
        "properties": {"a": {"enum": [f"value-{i:07d}" for i in range(17460)]}, "b": {}},
        "required": ["a", "b"],
    }
    roomy = GrammarBudget(max_schema_bytes=1 << 20)
    for tokenizer in (None, tiny_tokenizer):
        with pytest.raises(GrammarRejected) as e:
            compile_grammar(json_schema=schema, tokenizer=tokenizer, budget=roomy)
        message = str(e.value)
        assert message.startswith("Invalid JSON schema: ") and len(message) < 200
        assert not any(w in message.lower() for w in ("panic", "unwrap", "backtrace", "%json"))


def test_a_grammar_failing_mid_generation_raises_instead_of_ending_the_answer(tiny_tokenizer):
    """Every distinct 40-letter window is a new lexer state: after some hundreds of tokens
    the matcher passes its state limit.  The mask raises GrammarFailed (was: it quietly
    allowed only the end of the turn, and the answer ended mid-string)."""
    grammar = compile_grammar(json_schema={"type": "string", "pattern": "^[a-z]*a[a-z]{40}$"}, tokenizer=tiny_tokenizer)
    mask = grammar.mask(tiny_tokenizer)
    rng = np.random.default_rng(0)
    with pytest.raises(GrammarFailed) as e:
        for _ in range(2000):
            allowed = np.flatnonzero(mask.allowed())
            allowed = allowed[allowed != IM_END]
            assert len(allowed), "the string ended before the grammar failed"
            mask.accept(int(rng.choice(allowed)))
    assert e.value.tokens > 8  # past the probe
    assert "grammar failed" in str(e.value) and "automaton states" in str(e.value)
    assert e.value.param == "response_format"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (
            "at 2(9): failed to compile JSON schema: Invalid type: x\n   1 | start: answer\n   2 | answer: %json {}",
            "Invalid type: x",
        ),
        (
            "at 2(9): failed to compile JSON schema: regex parse error:\n    a{5\n     ^^\nerror: unclosed counted "
            "repetition\n   1 | start: answer",
            "regex parse error: unclosed counted repetition",
        ),
        ("panic: called `Result::unwrap()` on an `Err` value: boom\n<backtrace>\n0: x\n</backtrace>", None),
        ("lexer error: too many states: 50000 >= 50000\n<non-verbose/>", "too many automaton states"),
        ("", None),
    ],
)
def test_library_messages_are_cleaned(raw, clean):
    out = clean_reason(raw)
    if clean is None:
        assert out == "the grammar engine cannot compile it"
    else:
        assert clean in out
    assert "%json" not in out and "<" not in out


def plan_output(fields: dict, **kw):
    """structured.plan_output over the typed request these fields make."""
    typed = {k: tuple(v.items()) if k == "logit_bias" else tuple(v) if k == "tools" else v for k, v in fields.items()}
    return _plan(ChatRequest(messages=(), **typed), **kw)

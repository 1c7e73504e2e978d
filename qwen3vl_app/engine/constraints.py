"""Constrained decoding: a grammar turned into a per-step mask over the vocabulary.

`llguidance` compiles JSON schemas and Lark grammars and, given the tokens chosen so far,
answers "which tokens may come next?" as a bitmask over the whole vocabulary (a few tens
of microseconds per step, in Rust, with the GIL released).  The sampler sets every other
logit to -inf, so the token it picks keeps the output inside the grammar whatever the
weights say; once the grammar is complete only the end tokens remain allowed.

A `Grammar` is compiled in the request greenlet (an uncompilable schema is a 400 before
the request queues for the engine); its `TokenMask` then runs in the engine thread
inside the decode loop.  Works only where the engine hands logits to the host.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import APIError
from ..model_constants import IM_END, TOOL_CALL_END, TOOL_CALL_START, VOCAB_ROWS

if TYPE_CHECKING:
    from ..tokenizer import ChatTokenizer

# Compact separators, no free whitespace: a model (or random weights) cannot pad the
# output with whitespace until max_tokens runs out.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

_tokenizers: dict[tuple[str, int], object] = {}


def ll_tokenizer(tokenizer: ChatTokenizer, vocab_rows: int = VOCAB_ROWS):
    """llguidance's view of the vocabulary (its token trie), built once per worker from
    our own tokenizer: each row's bytes, which rows are control tokens, and our encoder.
    (Handing llguidance tokenizer.json instead makes it load a second copy of the whole
    tokenizer: ~200 MB per worker against ~10 MB this way.)  The build holds the GIL for a
    second or two, so `warm_up` does it while the worker loads.  Engine thread only."""
    key = (str(tokenizer.folder), vocab_rows)
    tok = _tokenizers.get(key)
    if tok is None:
        import llguidance

        wrapper = llguidance.TokenizerWrapper(_Vocabulary(tokenizer, vocab_rows))
        tok = llguidance.LLTokenizer(wrapper, n_vocab=vocab_rows, eos_token=IM_END)  # the chat turn's end
        _tokenizers[key] = tok
    return tok


class _Vocabulary:
    """What llguidance.TokenizerWrapper reads from a tokenizer."""

    eos_token_id = IM_END
    bos_token_id = None

    def __init__(self, tokenizer: ChatTokenizer, vocab_rows: int):
        n = tokenizer.vocab_size
        self.tokens = [tokenizer.token_bytes(i) if i < n else b"" for i in range(vocab_rows)]
        self.special_token_ids = sorted(tokenizer.special_ids)
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode_untrusted(text)


def warm_up(engine, tokenizer: ChatTokenizer):
    """Build the token trie now (worker start-up, engine thread) rather than on the first
    constrained request, where holding the GIL would stall every connection of the worker.
    Engines without host logits never constrain, so they skip it."""
    if engine.capabilities.logits:
        ll_tokenizer(tokenizer)
    return engine


@dataclass(frozen=True)
class Grammar:
    """A compiled-and-checked llguidance grammar (its serialized form) and what it is for."""

    source: str
    param: str  # the request field it came from, for error messages

    def mask(self, tokenizer: ChatTokenizer, vocab_rows: int = VOCAB_ROWS) -> TokenMask:
        return TokenMask(self, ll_tokenizer(tokenizer, vocab_rows), vocab_rows)


def compile_grammar(
    json_schema: dict | None = None,
    tools: list[dict] | None = None,
    parallel: bool = True,
    param: str = "response_format",
) -> Grammar:
    """The output must be a JSON value valid against `json_schema`, or one (or, with
    `parallel`, several newline-separated) tool-call blocks in the model's own format

        <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>

    each naming one of `tools` (OpenAI function objects) with arguments valid against
    that tool's parameter schema -- or either, when both are given."""
    import llguidance

    rules, starts = [], []
    if json_schema is not None:
        starts.append("answer")
        rules.append(f"answer: %json {_schema_text(json_schema)}")
    if tools:
        variants = [
            {
                "type": "object",
                "properties": {"name": {"const": t["name"]}, "arguments": t.get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in tools
        ]
        starts.append('call ("\\n" call)*' if parallel else "call")
        rules.append(f'call: <[{TOOL_CALL_START}]> "\\n" arguments "\\n" <[{TOOL_CALL_END}]>')
        rules.append(f"arguments: %json {_schema_text(variants[0] if len(variants) == 1 else {'anyOf': variants})}")
    lark = "start: " + " | ".join(starts) + "\n" + "\n".join(rules) + "\n"
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        what = "JSON schema" if json_schema is not None and not tools else "tool parameter schema"
        raise APIError(f"Invalid {what}: {_first_line(messages)}", 400, param, "invalid_schema")
    return Grammar(grammar, param)


def _first_line(messages: list[str]) -> str:
    """llguidance's message without the position in our generated Lark text."""
    text = (messages[0] if messages else "").strip().splitlines()
    return re.sub(r"^at \d+\(\d+\): ", "", text[0]) if text else "the grammar engine cannot compile it"


def _schema_text(schema: dict) -> str:
    """A JSON schema with this server's JSON layout options, as Lark's %json takes it."""
    if not isinstance(schema, dict):
        raise APIError("A JSON schema must be an object.", 400, None, "invalid_schema")
    return json.dumps({**close_objects(schema), "x-guidance": JSON_OPTIONS})


_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "if", "then", "else", "contains")


def close_objects(schema):
    """An object schema that lists `properties` but says nothing of others gets
    `additionalProperties: false` (what OpenAI's strict mode requires anyway): the output
    may then use only the declared keys -- still valid against the schema as sent -- and
    cannot wander off into invented keys until max_tokens.  Objects without `properties`
    (`{"type": "object"}`, free-form arguments) stay open."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out and "additionalProperties" not in out and "patternProperties" not in out:
        out["additionalProperties"] = False
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [close_objects(s) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: close_objects(s) for k, s in out[key].items()}
    for key in _SUBSCHEMAS:
        if isinstance(out.get(key), dict):
            out[key] = close_objects(out[key])
    return out


class TokenMask:
    """The grammar's state over one generation.  Engine thread only."""

    def __init__(self, grammar: Grammar, tokenizer, vocab_rows: int):
        import llguidance

        self.matcher = llguidance.LLMatcher(tokenizer, grammar.source, log_level=0)
        if self.matcher.is_error():
            raise APIError(f"Invalid {grammar.param}: {self.matcher.get_error()}", 400, grammar.param, "invalid_schema")
        self.vocab_rows = vocab_rows
        self._words = np.zeros((vocab_rows + 31) // 32, dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """Boolean row per vocabulary entry: may this token come next?"""
        self.matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        return np.unpackbits(self._words.view(np.uint8), bitorder="little")[: self.vocab_rows].view(bool)

    def accept(self, token_id: int) -> None:
        self.matcher.consume_token(token_id)

    @property
    def failed(self) -> str | None:
        return self.matcher.get_error() if self.matcher.is_error() else None

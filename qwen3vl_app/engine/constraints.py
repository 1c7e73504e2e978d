"""Constrained decoding: a grammar turned into a per-step mask over the vocabulary.

`llguidance` compiles JSON schemas and Lark grammars and, given the tokens chosen so far,
answers "which tokens may come next?" as a bitmask over the whole vocabulary (a few tens
of microseconds per step, in Rust, with the GIL released).  The sampler sets every other
logit to -inf, so the token it picks keeps the output inside the grammar whatever the
weights say; once the grammar is complete only the end tokens remain allowed.

Rules:

- A schema is compiled once per worker: `compile_grammar` runs in one dedicated native
  thread (never the gevent hub, never the engine thread), and its result -- the pristine
  matcher, or the refusal -- is kept in a small LRU keyed by the schema's hash.  Each
  generation works on a copy (`Grammar.mask`, engine thread).
- A budget bounds every compile before the library sees it (`check_schemas`: bytes,
  nesting, properties, array items -- llguidance expands `minItems`/`maxItems` item by
  item, about 95 bytes each), `PARSER_LIMITS` bound the library's own work (lexer fuel and
  states, grammar symbols), and the waiting request gives up after `GrammarBudget.timeout`.
- A freshly compiled grammar is walked a few tokens (`_probe`): a grammar that fails at
  once (a `$ref` cycle, a pattern whose automaton explodes) is refused before generation.
- A matcher that fails later is checked after every mask and every token: `GrammarFailed`
  ends that generation, never an answer that silently stops matching its schema.

Refusals are `GrammarRejected` (or `GrammarBusy`), failures `GrammarFailed`: plain
exceptions whose messages are written for the caller (library internals -- panic text,
parser state dumps, our generated Lark -- are cut out); the API layer maps them to HTTP.
Works only where the engine hands logits to the host.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..model_constants import IM_END, TOOL_CALL_END, TOOL_CALL_START, VOCAB_ROWS

if TYPE_CHECKING:
    from ..tokenizer import ChatTokenizer


class GrammarRejected(Exception):
    """The schema cannot be compiled into a grammar within this server's budget (a 400)."""


class GrammarBusy(Exception):
    """The compile thread did not get to this schema within the time budget (a 503)."""


class GrammarFailed(Exception):
    """The grammar engine failed part-way through a generation: the output can no longer
    be held to the schema, so the generation ends with this instead of an answer."""

    def __init__(self, reason: str, param: str | None = None, tokens: int = 0):
        super().__init__(f"the output grammar failed after {tokens} tokens ({reason})")
        self.reason, self.param, self.tokens = reason, param, tokens


@dataclass(frozen=True)
class GrammarBudget:
    """What one request may make the compiler do (settings `--max-schema-bytes`,
    `--grammar-timeout`)."""

    max_schema_bytes: int = 256 * 1024
    timeout: float = 10.0


MAX_DEPTH = 64  # JSON nesting of one schema (llguidance's own parser stops near 400)
MAX_PROPERTIES = 5000  # object properties in all schemas of a request (OpenAI's limit too)
MAX_ARRAY_ITEMS = 10_000  # minItems/maxItems/prefixItems, summed: expanded item by item
PROBE_TOKENS = 8  # tokens a new grammar is walked before it is accepted
CACHE_ENTRIES = 32  # compiled grammars (and refusals) kept per worker


def parser_limits():
    """llguidance's own bounds, tighter than its defaults: 200k lexer fuel (about 18k enum
    strings; its default of 1M let one pattern build 145 MB of automaton in a second of
    held GIL), 50k lexer states (~1-2 kB each), 100k grammar symbols.  Verbose errors off:
    they dump the parser state."""
    global _LIMITS
    if _LIMITS is None:
        import llguidance

        _LIMITS = llguidance.LLParserLimits(
            initial_lexer_fuel=200_000, max_lexer_states=50_000, max_grammar_size=100_000, verbose_errors=False
        )
    return _LIMITS


_LIMITS: Any = None  # llguidance.LLParserLimits, made on first use

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
    """A compiled-and-checked llguidance grammar (its serialized form), what it is for and,
    when it was compiled for a tokenizer, the pristine matcher every generation copies."""

    source: str
    param: str  # the request field it came from, for error messages
    compiled: Any = field(default=None, compare=False, repr=False)  # llguidance.LLMatcher, never advanced
    vocab: tuple[str, int] | None = None  # the (tokenizer folder, vocabulary rows) it was compiled for

    def mask(self, tokenizer: ChatTokenizer, vocab_rows: int = VOCAB_ROWS) -> TokenMask:
        """This generation's matcher (engine thread): a copy of the compiled one (tens of
        microseconds), or -- compiled without this tokenizer -- a compile here."""
        if self.compiled is not None and self.vocab == _vocab_key(tokenizer, vocab_rows):
            matcher = self.compiled.deep_copy()
        else:
            import llguidance

            tok = ll_tokenizer(tokenizer, vocab_rows)
            matcher = llguidance.LLMatcher(tok, self.source, log_level=0, limits=parser_limits())
        return TokenMask(matcher, self.param, vocab_rows)


def _vocab_key(tokenizer: ChatTokenizer, vocab_rows: int) -> tuple[str, int]:
    return (str(tokenizer.folder), vocab_rows)


def compile_grammar(
    json_schema: dict | None = None,
    tools: list[dict] | None = None,
    parallel: bool = True,
    param: str = "response_format",
    tokenizer: ChatTokenizer | None = None,
    budget: GrammarBudget = GrammarBudget(),
) -> Grammar:
    """The output must be a JSON value valid against `json_schema`, or one (or, with
    `parallel`, several newline-separated) tool-call blocks in the model's own format

        <tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>

    each naming one of `tools` (OpenAI function objects) with arguments valid against
    that tool's parameter schema -- or either, when both are given.

    With `tokenizer`, the grammar is compiled for it (and probed) once: the result is
    cached and every generation copies it.  Runs in the compile thread within `budget`
    (a plain call outside a gevent worker).  Raises GrammarRejected / GrammarBusy."""
    what = "JSON schema" if json_schema is not None and not tools else "tool parameter schema"
    args = (json_schema, tools, parallel, what, tokenizer, budget)
    source, compiled, vocab = _off_hub(_compile, *args, timeout=budget.timeout)
    return Grammar(source, param, compiled, vocab)


def _compile(json_schema, tools, parallel, what, tokenizer, budget):
    """Check, build, compile and probe (compile thread): (source, matcher or None, vocab).
    The cache is touched here only, so one thread owns it."""
    schemas = ([json_schema] if json_schema is not None else []) + [
        t.get("parameters") or {"type": "object"} for t in tools or ()
    ]
    check_schemas(schemas, budget, what)
    lark = _lark(json_schema, tools, parallel)
    if len(lark) > budget.max_schema_bytes + 4096:
        raise GrammarRejected(f"Invalid {what}: larger than this server's {budget.max_schema_bytes} bytes.")
    vocab = _vocab_key(tokenizer, VOCAB_ROWS) if tokenizer is not None else None
    key = hashlib.sha256(repr((lark, vocab)).encode("utf-8", "surrogatepass")).hexdigest()
    hit = _CACHE.get(key)
    if hit is None:
        hit = _build(lark, what, tokenizer)
        _CACHE[key] = hit
        while len(_CACHE) > CACHE_ENTRIES:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    if isinstance(hit, GrammarRejected):
        raise GrammarRejected(str(hit))
    return hit[0], hit[1], vocab


_CACHE: OrderedDict[str, tuple | GrammarRejected] = OrderedDict()


def _build(lark: str, what: str, tokenizer: ChatTokenizer | None) -> tuple | GrammarRejected:
    """(source, pristine matcher or None) or the refusal, for the cache."""
    import llguidance

    source = llguidance.LLMatcher.grammar_from_lark(lark)
    try:
        if tokenizer is None:
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(source, limits=parser_limits())
            error = messages[0] if is_error and messages else ("cannot compile it" if is_error else None)
            matcher = None
        else:
            matcher = llguidance.LLMatcher(ll_tokenizer(tokenizer), source, log_level=0, limits=parser_limits())
            error = matcher.get_error() if matcher.is_error() else _probe(matcher)
    except BaseException as e:  # llguidance panics surface as pyo3's PanicException (a BaseException)
        if type(e).__name__ != "PanicException":
            raise
        error = f"panic: {e}"
    if error is not None:
        return GrammarRejected(f"Invalid {what}: {clean_reason(error)}.")
    return source, matcher


def _probe(matcher) -> str | None:
    """Walk a copy of a new matcher PROBE_TOKENS tokens (the lowest allowed token id each
    time, never the end): the library's error if it fails on the way."""
    m = matcher.deep_copy()
    words = np.zeros((VOCAB_ROWS + 31) // 32, dtype=np.int32)
    for _ in range(PROBE_TOKENS):
        m.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        if m.is_error():
            return m.get_error()
        allowed = np.flatnonzero(np.unpackbits(words.view(np.uint8), bitorder="little"))
        allowed = allowed[allowed != IM_END]
        if not len(allowed):  # complete: only the end of the turn is left
            return None
        if not m.consume_token(int(allowed[0])):
            return m.get_error()
    return None


def _lark(json_schema: dict | None, tools: list[dict] | None, parallel: bool) -> str:
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
    return "start: " + " | ".join(starts) + "\n" + "\n".join(rules) + "\n"


# The library's messages for limits it hit, in the caller's terms.
_REASONS = (
    ("Current row has", "too many alternatives at one point (e.g. hundreds of optional properties in one object)"),
    ("too many expressions constructed", "a pattern or string constraint needs too large an automaton"),
    ("initial lexer configuration", "its patterns, enums and constants are too large for the grammar engine"),
    ("grammar size", "it is too large for the grammar engine"),
    ("too many states", "its patterns need too many automaton states"),
    ("NoExtension", "no JSON value satisfies it (a $ref cycle, or contradicting constraints)"),
    ("recursion limit", f"it is nested too deeply (at most {MAX_DEPTH} levels)"),
    ("schema too large", "it is too large for the grammar engine"),
    ("Regex is empty", "no string satisfies its pattern, format and length constraints together"),
)


def clean_reason(message: str) -> str:
    """llguidance's message, fit for the caller: a limit it hit in the caller's terms, else
    its own words without our generated Lark (listed after them) and the library's
    prefixes; never panic text, backtraces or state dumps."""
    lines = []
    for line in (message or "").strip().splitlines():
        if re.match(r"^\s*(\d+ \| |<)", line):  # the Lark listing, or a state dump, follows
            break
        lines.append(line.strip())
    text = " ".join(lines)
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    if not text or any(w in text.lower() for w in ("panic", "backtrace", "unwrap", "%json")):
        return "the grammar engine cannot compile it"
    first = re.sub(r"^at \d+\(\d+\): ", "", lines[0])
    first = re.sub(r"^(failed to compile JSON schema|Parser Error|lexer error): ", "", first)
    if first.endswith(":"):  # e.g. "regex parse error:" -- its last line says what
        first += " " + lines[-1].removeprefix("error: ")
    return first[:300]


def check_schemas(schemas: list, budget: GrammarBudget, what: str) -> None:
    """The budget, checked on the schemas as sent before any compiling: size (an estimate
    that stops counting at the limit, so a huge schema costs no more than a small one),
    nesting, object properties and the array items llguidance would expand one by one."""
    size = properties = items = 0
    stack: list[tuple[Any, int]] = [(s, 1) for s in schemas]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            size += 2 + sum(len(k) + 4 for k in node)
            stack.extend((v, depth + 1) for v in node.values())
            if isinstance(node.get("properties"), dict):
                properties += len(node["properties"])
            counts = [min(node[k], 1e18) for k in ("minItems", "maxItems") if _is_count(node.get(k))]
            if isinstance(node.get("prefixItems"), list):
                counts.append(len(node["prefixItems"]))
            items += int(max(counts, default=0))
        elif isinstance(node, list):
            size += 2 + len(node)
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str):
            size += len(node) + 2
        else:
            size += 8
        if depth > MAX_DEPTH:
            raise GrammarRejected(f"Invalid {what}: nested deeper than this server's {MAX_DEPTH} levels.")
        if size > budget.max_schema_bytes:
            raise GrammarRejected(f"Invalid {what}: larger than this server's {budget.max_schema_bytes} bytes.")
        if properties > MAX_PROPERTIES:
            raise GrammarRejected(f"Invalid {what}: more than this server's {MAX_PROPERTIES} object properties in all.")
        if items > MAX_ARRAY_ITEMS:
            raise GrammarRejected(
                f"Invalid {what}: minItems/maxItems/prefixItems ask for {items} array items in all "
                f"(at most {MAX_ARRAY_ITEMS}: each is compiled separately)."
            )


def _is_count(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")


def _schema_text(schema: dict) -> str:
    """A JSON schema with this server's JSON layout options, as Lark's %json takes it."""
    if not isinstance(schema, dict):
        raise GrammarRejected("A JSON schema must be an object.")
    return json.dumps({**close_objects(schema), "x-guidance": JSON_OPTIONS})


# ----------------------------------------------------------------------------- the compile thread

_compile_thread = None


def _off_hub(fn, *args, timeout: float):
    """fn(*args) in the one compile thread, waited for at most `timeout` seconds (plain
    call outside a gevent worker).  Given up while still queued behind other compiles:
    GrammarBusy (and the thread skips it); while compiling: GrammarRejected (the compile
    runs on, bounded by the budget, and its result is cached for the next request)."""
    global _compile_thread
    try:
        from gevent import monkey
        from gevent.threadpool import ThreadPool
    except ImportError:
        return fn(*args)
    if not monkey.is_module_patched("threading"):
        return fn(*args)
    if _compile_thread is None:
        _compile_thread = ThreadPool(1)
    task = _Task(fn, args)
    result = _compile_thread.spawn(task)
    result.wait(timeout)
    if not result.ready():
        task.abandoned = True
        if not task.started:
            raise GrammarBusy("The server is compiling other schemas; retry shortly.")
        raise GrammarRejected(f"Invalid schema: it did not compile within this server's {timeout:g} s.")
    ok, value = result.get()
    if ok:
        return value
    raise value


class _Task:
    """One compile for the thread; the outcome instead of an exception (gevent would print
    it).  Plain attributes: set by one thread, read by the other."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args
        self.started = self.abandoned = False

    def __call__(self):
        if self.abandoned:
            return False, GrammarBusy("abandoned")
        self.started = True
        try:
            return True, self.fn(*self.args)
        except Exception as e:
            return False, e


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
    """The grammar's state over one generation: checked after every mask and every token,
    so a failing grammar raises GrammarFailed instead of leaving only the end allowed.
    Engine thread only."""

    def __init__(self, matcher, param: str | None, vocab_rows: int):
        self.matcher, self.param, self.vocab_rows = matcher, param, vocab_rows
        self.tokens = 0
        self._words = np.zeros((vocab_rows + 31) // 32, dtype=np.int32)
        self._check()

    def allowed(self) -> np.ndarray:
        """Boolean row per vocabulary entry: may this token come next?"""
        self.matcher.unsafe_compute_mask_ptr(self._words.ctypes.data, self._words.nbytes)
        self._check()
        return np.unpackbits(self._words.view(np.uint8), bitorder="little")[: self.vocab_rows].view(bool)

    def accept(self, token_id: int) -> None:
        self.matcher.consume_token(token_id)
        self._check()
        self.tokens += 1

    def _check(self) -> None:
        if self.matcher.is_error():
            raise GrammarFailed(clean_reason(self.matcher.get_error()), self.param, self.tokens)

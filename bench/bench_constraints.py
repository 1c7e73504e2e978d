"""Cost of constrained decoding per generated token, over the full Qwen3-VL vocabulary
(151,936 logits rows), on the host: what response_format / forced tool calls add to every
decode step.  Prints JSON, then a short table.  Numbers, not assertions.

  mask        llguidance computes the allowed-token bitmask for the next step
  apply       the bitmask unpacked and applied to a float32 logits row (-inf elsewhere)
  consume     the grammar advances by the chosen token
  compile     the schema compiled for the tokenizer (once per worker; then a cache hit,
              and each generation copies the compiled matcher)
  sampler     Sampler.choose on the same logits without / with the mask (greedy,
              temperature + top-p on flat and peaked logits, untruncated), so the extra
              per-token time is visible end to end

The token sequences are real outputs: a JSON document valid against a nested schema and a
tool call, tokenized with the model folder's tokenizer, replayed step by step.

    python bench/bench_constraints.py [-m MODEL_DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qwen3vl_app.engine.constraints import compile_grammar, ll_tokenizer  # noqa: E402
from qwen3vl_app.engine.sampling import Sampler, SamplingParams  # noqa: E402
from qwen3vl_app.model_constants import IM_END, TOOL_CALL_END, TOOL_CALL_START, VOCAB_ROWS  # noqa: E402
from qwen3vl_app.tokenizer import ChatTokenizer  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer"},
        "rating": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "cast": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "role": {"type": "string", "enum": ["lead", "support", "cameo"]},
                },
                "required": ["name", "role"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "year", "rating", "tags", "cast"],
    "additionalProperties": False,
}
DOC = {
    "title": "The Lighthouse Keeper's Long Winter",
    "year": 1987,
    "rating": 8.25,
    "tags": ["drama", "sea", "solitude"],
    "cast": [{"name": "Anna Berg", "role": "lead"}, {"name": "Tomas Lind", "role": "support"}],
}
TOOL = {
    "name": "search_flights",
    "parameters": {
        "type": "object",
        "properties": {
            "origin": {"type": "string"},
            "destination": {"type": "string"},
            "date": {"type": "string"},
            "passengers": {"type": "integer", "minimum": 1, "maximum": 9},
        },
        "required": ["origin", "destination", "date"],
    },
}
CALL = {
    "name": "search_flights",
    "arguments": {"origin": "Stockholm", "destination": "Lisbon", "date": "2026-03-14", "passengers": 2},
}


def replay(grammar, tokenizer: ChatTokenizer, tokens: list[int], rounds: int) -> dict:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(VOCAB_ROWS).astype(np.float32)
    t_mask, t_apply, t_consume = [], [], []
    for _ in range(rounds):
        m = grammar.mask(tokenizer)
        for tok in tokens:
            t0 = time.perf_counter()
            m.matcher.unsafe_compute_mask_ptr(m._words.ctypes.data, m._words.nbytes)
            t1 = time.perf_counter()
            allowed = np.unpackbits(m._words.view(np.uint8), bitorder="little")[:VOCAB_ROWS].view(bool)
            x = logits.copy()
            x[~allowed] = -np.inf
            t2 = time.perf_counter()
            assert allowed[tok], f"token {tok} rejected by the grammar"
            m.accept(tok)
            t3 = time.perf_counter()
            t_mask.append(t1 - t0)
            t_apply.append(t2 - t1)
            t_consume.append(t3 - t2)
        assert m.allowed()[IM_END], "grammar not complete at the end of the document"
    us = lambda xs: round(statistics.median(xs) * 1e6, 1)  # noqa: E731
    p95 = lambda xs: round(float(np.percentile(xs, 95)) * 1e6, 1)  # noqa: E731
    return {
        "tokens": len(tokens),
        "mask_us_p50": us(t_mask),
        "mask_us_p95": p95(t_mask),
        "apply_us_p50": us(t_apply),
        "consume_us_p50": us(t_consume),
        "total_us_p50": us([a + b + c for a, b, c in zip(t_mask, t_apply, t_consume, strict=True)]),
    }


def sampler_cost(
    grammar, tokenizer: ChatTokenizer, params: SamplingParams, steps: int = 200, spread: float = 1.0
) -> dict:
    """`spread` scales standard-normal logits: 1 is a flat distribution (top-p keeps most of
    the vocabulary), 8 a peaked one, as a trained model's usually is."""
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal(VOCAB_ROWS) * spread).astype(np.float32)
    s = Sampler(params, [1, 2, 3])
    t0 = time.perf_counter()
    for _ in range(steps):
        s.choose(logits)
    free = (time.perf_counter() - t0) / steps
    m = grammar.mask(tokenizer)
    allowed = m.allowed()
    t0 = time.perf_counter()
    for _ in range(steps):
        s.choose(logits, allowed)
    masked = (time.perf_counter() - t0) / steps
    return {"free_us": round(free * 1e6, 1), "masked_us": round(masked * 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", type=Path, help="model folder (default: the tiny checkpoint's tokenizer)")
    ap.add_argument("--rounds", type=int, default=5)
    args, _ = ap.parse_known_args()  # `make bench ARGS=...` passes the other benches' flags too
    if args.model is None:
        from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint

        args.model = ensure_tiny_checkpoint()
    tok = ChatTokenizer(args.model)
    t0 = time.perf_counter()
    ll_tokenizer(tok)
    trie_s = time.perf_counter() - t0

    compile_times = []
    for _ in range(5):  # the first compiles (and probes) for the tokenizer; the rest are cache hits
        t0 = time.perf_counter()
        schema_grammar = compile_grammar(json_schema=SCHEMA, tokenizer=tok)
        compile_times.append(time.perf_counter() - t0)
    compile_ms = compile_times[0] * 1e3
    cached_ms = statistics.median(compile_times[1:]) * 1e3
    t0 = time.perf_counter()
    for _ in range(20):
        schema_grammar.mask(tok)
    copy_us = (time.perf_counter() - t0) / 20 * 1e6
    doc_tokens = tok.encode(json.dumps(DOC, ensure_ascii=False)) + [IM_END]
    tool_grammar = compile_grammar(tools=[TOOL], parallel=True, param="tools", tokenizer=tok)
    call_tokens = [TOOL_CALL_START] + tok.encode("\n" + json.dumps(CALL) + "\n") + [TOOL_CALL_END, IM_END]

    result = {
        "vocab_rows": VOCAB_ROWS,
        "tokenizer_trie_build_s": round(trie_s, 2),
        "schema_compile_ms": round(compile_ms, 2),
        "schema_cached_ms": round(cached_ms, 3),
        "mask_copy_us": round(copy_us, 1),
        "json_schema": replay(schema_grammar, tok, doc_tokens, args.rounds),
        "tool_call": replay(tool_grammar, tok, call_tokens, args.rounds),
        "sampler_greedy": sampler_cost(schema_grammar, tok, SamplingParams(temperature=0.0)),
        "sampler_top_p": sampler_cost(schema_grammar, tok, SamplingParams(temperature=0.7, top_p=0.8)),
        "sampler_top_p_peaked": sampler_cost(
            schema_grammar, tok, SamplingParams(temperature=0.7, top_p=0.95), spread=8.0
        ),
        "sampler_untruncated": sampler_cost(schema_grammar, tok, SamplingParams(temperature=1.0)),
    }
    print(json.dumps(result, indent=2))
    print(f"\nconstrained decoding over {VOCAB_ROWS} vocabulary rows (per generated token, p50)")
    print(
        f"  token trie (once per worker, at load): {result['tokenizer_trie_build_s']} s; "
        f"schema compile: {result['schema_compile_ms']} ms, cached {result['schema_cached_ms']} ms, "
        f"per-generation copy {result['mask_copy_us']} us"
    )
    for name in ("json_schema", "tool_call"):
        r = result[name]
        print(
            f"  {name:12s} {r['tokens']:3d} tokens  mask {r['mask_us_p50']:7.1f} us (p95 {r['mask_us_p95']:.1f})"
            f"  apply {r['apply_us_p50']:6.1f} us  consume {r['consume_us_p50']:5.1f} us"
            f"  total {r['total_us_p50']:7.1f} us"
        )
    for name in ("sampler_greedy", "sampler_top_p", "sampler_top_p_peaked", "sampler_untruncated"):
        r = result[name]
        print(f"  {name:15s} choose: free {r['free_us']:7.1f} us   with mask {r['masked_us']:7.1f} us")


if __name__ == "__main__":
    main()

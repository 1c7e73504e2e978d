"""Multi-turn reuse, measured (part of `make bench`; numbers, not assertions).

  turns      a three-turn chat with two images and a long system prompt, streamed: time to
             first token of turns 2 and 3 against turn 1, and the cached prompt tokens the
             server reports (usage.prompt_tokens_details.cached_tokens)
  hit_rate   share of follow-up turns that reused KV, for conversations that alternate
             (A1 B1 A2 B2 ...) with 1 and 2 workers behind one listening socket, no affinity

By default the tiny random-weight checkpoint on the torch engine (CPU).  `--sim`: the
turns only, on the bm1684x engine over the cmodel simulator with the tiny history-KV
bmodel (llm_convert --use_history_kv: 256-token context, 64-token prefill chunks), so the
system prompt is shorter; the hit rates do not depend on the engine.

    python bench/bench_multiturn.py [-m MODEL_DIR] [--conversations 4] [--sim]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

SYSTEM = "You are a meticulous visual analyst. Describe what matters, cite regions, and stay concise. " * 40
SYSTEM_SIM = SYSTEM[: len(SYSTEM) // 40 * 6]  # ~110 tokens: three turns fit the tiny bmodel's 256


def image_uri(seed: int, side: int = 448) -> str:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side]
    pixels = np.stack([x * 255 // side, y * 255 // side, rng.integers(0, 256, (side, side))], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def stream_turn(url: str, messages: list, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft, text, usage, pid = None, [], None, None
    with requests.post(
        url + "/v1/chat/completions",
        stream=True,
        timeout=600,
        json={
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as r:
        r.raise_for_status()
        pid = int(r.headers["X-Worker-Pid"])
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                piece = choice["delta"].get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    text.append(piece)
    return {"ttft": ttft, "text": "".join(text), "usage": usage, "pid": pid}


def three_turns(url: str, seed: int, max_tokens: int, system: str) -> list[dict]:
    messages = [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_uri(seed)}},
                {"type": "image_url", "image_url": {"url": image_uri(seed + 1)}},
                {"type": "text", "text": "Compare the two images."},
            ],
        },
    ]
    rows = []
    for follow_up in ("Which one is brighter?", "Summarise in one line."):
        out = stream_turn(url, messages, max_tokens)
        rows.append(out)
        messages += [{"role": "assistant", "content": out["text"]}, {"role": "user", "content": follow_up}]
    rows.append(stream_turn(url, messages, max_tokens))
    return rows


def turns_report(url: str, max_tokens: int, repeats: int, system: str = SYSTEM) -> dict:
    runs = [three_turns(url, 100 + 10 * i, max_tokens, system) for i in range(repeats)]
    out = {}
    for t in range(3):
        ttfts = sorted(run[t]["ttft"] for run in runs)
        usage = runs[-1][t]["usage"]
        out[f"turn{t + 1}"] = {
            "ttft_p50_s": round(ttfts[len(ttfts) // 2], 4),
            "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
        }
    for t in (2, 3):
        out[f"turn{t}"]["ttft_vs_turn1"] = round(out[f"turn{t}"]["ttft_p50_s"] / out["turn1"]["ttft_p50_s"], 3)
        new = out[f"turn{t}"]["prompt_tokens"] - out[f"turn{t - 1}"]["prompt_tokens"]
        out[f"turn{t}"]["new_tokens_share"] = round(new / out[f"turn{t}"]["prompt_tokens"], 3)
    return out


def hit_rate(url: str, conversations: int, max_tokens: int) -> dict:
    """Alternate the conversations turn by turn; count follow-ups that reused more than the
    shared system prompt (i.e. the conversation's own earlier turn)."""
    convs = [
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Conversation {i}: tell me about rivers number {i}."},
        ]
        for i in range(conversations)
    ]
    shared = None
    hits = follow_ups = 0
    for turn in range(3):
        for msgs in convs:
            out = stream_turn(url, msgs, max_tokens)
            cached = out["usage"]["prompt_tokens_details"]["cached_tokens"]
            if turn == 0:
                shared = cached if shared is None else max(shared, cached)
            else:
                follow_ups += 1
                hits += cached > (shared or 0) + 8
            msgs += [{"role": "assistant", "content": out["text"]}, {"role": "user", "content": f"Turn {turn + 2}?"}]
    return {"follow_ups": follow_ups, "reused_own_history": hits, "hit_rate": round(hits / follow_ups, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model-dir", default=None, help="default: the tiny random-weight model")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--sim", action="store_true", help="bm1684x on the simulator, tiny history-KV bmodel")
    args, _ = ap.parse_known_args()  # `make bench ARGS=...` passes bench.py's flags too
    sys.path.insert(0, str(REPO))
    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint
    from tests.conftest import run_server

    if args.sim:
        sim_turns(args, run_server)
        return
    model_dir = args.model_dir or str(ensure_tiny_checkpoint())
    report: dict = {"model_dir": model_dir}
    with tempfile.TemporaryDirectory(prefix="qwen3vl-bench-mt-") as tmp:
        with run_server(model_dir, Path(tmp), workers=1, timeout=300) as s:
            stream_turn(s.url, [{"role": "user", "content": "warm up"}], 2)
            report["turns"] = turns_report(s.url, args.max_tokens, args.repeats)
            report["hit_rate_1_worker_alternating"] = hit_rate(s.url, args.conversations, 4)
            report["hit_rate_1_worker_one_conversation"] = hit_rate(s.url, 1, 4)
        with run_server(model_dir, Path(tmp), workers=2, timeout=300) as s:
            report["hit_rate_2_workers_one_conversation"] = hit_rate(s.url, 1, 4)
        with run_server(model_dir, Path(tmp), "--vision-cache-mb", "0", workers=1, timeout=300) as s:
            stream_turn(s.url, [{"role": "user", "content": "warm up"}], 2)
            report["turns_without_vision_cache"] = turns_report(s.url, args.max_tokens, 1)
    print(json.dumps(report, indent=2))
    summary(report["turns"])
    for k in (
        "hit_rate_1_worker_alternating",
        "hit_rate_1_worker_one_conversation",
        "hit_rate_2_workers_one_conversation",
    ):
        print(f"{k}: {report[k]['hit_rate']}")


def sim_turns(args, run_server) -> None:
    import subprocess

    model_dir = (
        args.model_dir
        or subprocess.run(
            [sys.executable, str(REPO / "scripts" / "build_tiny_bmodel.py"), "--history-kv"],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    report: dict = {"model_dir": model_dir, "engine": "bm1684x (cmodel simulator)"}
    with tempfile.TemporaryDirectory(prefix="qwen3vl-bench-mt-") as tmp:
        with run_server(model_dir, Path(tmp), workers=1, timeout=300) as s:
            stream_turn(s.url, [{"role": "user", "content": "warm up"}], 2)
            report["turns"] = turns_report(s.url, 4, args.repeats, SYSTEM_SIM)
    print(json.dumps(report, indent=2))
    summary(report["turns"])


def summary(t: dict) -> None:
    print(
        f"\nmulti-turn TTFT p50: turn1 {t['turn1']['ttft_p50_s'] * 1000:.1f} ms, "
        f"turn2 {t['turn2']['ttft_p50_s'] * 1000:.1f} ms ({t['turn2']['ttft_vs_turn1']}x, "
        f"{t['turn2']['cached_tokens']}/{t['turn2']['prompt_tokens']} cached), "
        f"turn3 {t['turn3']['ttft_p50_s'] * 1000:.1f} ms ({t['turn3']['ttft_vs_turn1']}x)"
    )


if __name__ == "__main__":
    main()

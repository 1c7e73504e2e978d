"""`make bench`: one bounded run (a few minutes) that prints JSON, then a short table.

  throughput   streamed chat completions at 1, 2 and 4 concurrent clients against 1 and 2
               gunicorn workers: TTFT (request sent -> first content chunk), TPOT (mean gap
               between tokens after the first), requests/s and generated tokens/s
  overhead     p50 time a request spends in the server outside the engine and the queue
               (the server's Server-Timing header: app time - queue wait - engine time;
               engine time is measured inside the engine thread), and the client's view
  rss          resident memory of a worker-like process on the bm1684x path (serving
               modules + the native module, no torch) next to one holding torch +
               transformers, and the live torch workers of the run
  preprocess   our numpy/Pillow/OpenCV image and video preprocessing vs transformers'
               Qwen3-VL processor on the same inputs (scripts/bench_media.py)
  batching     continuous batching: one worker with --max-batch 1 and then 4, 1/2/4/8
               clients, fixed output length (ignore_eos): aggregate tok/s and TPOT
               (`--mode batching` runs only this)

By default the model is the tiny random-weight checkpoint on CPU, so the throughput
numbers measure the server and the reference engine on this machine, not the TPU: run
with `ARGS="-m /path/to/model"` on the box for device figures.  Numbers, not assertions.

    python bench/bench.py [-m MODEL_DIR] [--max-tokens 64] [--requests 5] [--quick] [--mode all|batching]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def pct(values, q):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def r3(x):
    return None if x is None else round(x, 3)


# ---------------------------------------------------------------------- throughput


def one_stream(url: str, max_tokens: int, ignore_eos: bool = False) -> dict:
    body = {
        "model": "qwen3-vl-instruct",
        "messages": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": ignore_eos,
    }
    t0 = time.perf_counter()
    arrivals, tokens, buf = [], 0, b""
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as r:
        if r.status_code != 200:
            return {"error": r.status_code}
        for piece in r.iter_content(chunk_size=None):
            now = time.perf_counter()
            buf += piece
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: {"):
                    continue
                chunk = json.loads(event[6:])
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    arrivals.append(now)
    end = time.perf_counter()
    ttft = arrivals[0] - t0 if arrivals else None
    tpot = (end - arrivals[0]) / (tokens - 1) if arrivals and tokens > 1 else None
    return {"ttft": ttft, "tpot": tpot, "tokens": tokens, "total": end - t0}


def throughput(url: str, clients: int, per_client: int, max_tokens: int, ignore_eos: bool = False) -> dict:
    results, lock = [], threading.Lock()

    def client():
        for _ in range(per_client):
            res = one_stream(url, max_tokens, ignore_eos)
            with lock:
                results.append(res)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "wall_s": r3(wall),
        "ttft_p50_ms": r3(1000 * pct([r["ttft"] for r in ok], 0.5)) if ok else None,
        "ttft_p90_ms": r3(1000 * pct([r["ttft"] for r in ok], 0.9)) if ok else None,
        "tpot_p50_ms": r3(1000 * pct([r["tpot"] for r in ok], 0.5)) if any(r["tpot"] for r in ok) else None,
        "req_per_s": r3(len(ok) / wall),
        "tok_per_s": r3(sum(r["tokens"] for r in ok) / wall),
    }


# ---------------------------------------------------------------------- batching


def batching(model_dir: str, tmp: Path, per_client: int, max_tokens: int) -> list[dict]:
    """The same load against one worker with --max-batch 1 and one with --max-batch 4: every
    request generates exactly max_tokens (ignore_eos), so tok/s compare like for like.  Both
    servers run side by side (only one is loaded at a time) and the two configurations
    alternate at each client count, so a drifting machine load biases neither."""
    from contextlib import ExitStack

    from tests.conftest import run_server

    rows = []
    with ExitStack() as stack:
        servers = {}
        for max_batch in (1, 4):
            print(f"[bench] batching: starting --max-batch {max_batch} ...", file=sys.stderr, flush=True)
            servers[max_batch] = stack.enter_context(
                run_server(
                    model_dir,
                    tmp,
                    "-c",
                    "32",
                    "--max-queue",
                    "16",
                    "--max-batch",
                    str(max_batch),
                    workers=1,
                    timeout=300,
                )
            )
            for _ in range(2):
                one_stream(servers[max_batch].url, 4)
        for clients in (1, 2, 4, 8):
            for max_batch, s in servers.items():
                row = throughput(s.url, clients, per_client, max_tokens, ignore_eos=True)
                row["max_batch"] = max_batch
                rows.append(row)
                print(f"[bench] batch {max_batch} x {clients}c: {row}", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: (r["max_batch"], r["clients"]))
    return rows


def batching_gain(rows: list[dict]) -> dict:
    """Aggregate tok/s with --max-batch 4 over --max-batch 1, per client count."""
    by = {(r["max_batch"], r["clients"]): r["tok_per_s"] for r in rows}
    return {c: round(by[(4, c)] / by[(1, c)], 2) for c in (1, 2, 4, 8) if by.get((1, c)) and by.get((4, c))}


# ---------------------------------------------------------------------- overhead


def overhead(url: str, n: int) -> dict:
    """Sequential non-stream requests; the server's Server-Timing splits each one."""
    server, engine, app, client = [], [], [], []
    body = {"messages": PROMPT, "max_tokens": 8, "temperature": 0}
    for _ in range(n):
        t0 = time.perf_counter()
        r = requests.post(url + "/v1/chat/completions", json=body, timeout=120)
        client.append(time.perf_counter() - t0)
        timing = dict(re.findall(r"(\w+);dur=([\d.]+)", r.headers.get("Server-Timing", "")))
        server.append(float(timing["overhead"]))
        engine.append(float(timing["engine"]))
        app.append(float(timing["app"]))
    return {
        "requests": n,
        "server_overhead_p50_ms": r3(pct(server, 0.5)),
        "server_overhead_p90_ms": r3(pct(server, 0.9)),
        "engine_p50_ms": r3(pct(engine, 0.5)),
        "app_p50_ms": r3(pct(app, 0.5)),
        "client_total_p50_ms": r3(1000 * pct(client, 0.5)),
        "outside_app_p50_ms": r3(pct([1000 * c - a for c, a in zip(client, app, strict=True)], 0.5)),
    }


# ---------------------------------------------------------------------- memory

_WORKER_LIKE = r"""
import json, os, sys
from gevent import monkey; monkey.patch_all()
torch_stack = sys.argv[2] == "torch"
from qwen3vl_app import create_app
from qwen3vl_app.settings import Settings
import qwen3vl_app.api.chat, qwen3vl_app.api.media, qwen3vl_app.media.pipeline, qwen3vl_app.processing.video
settings = Settings(model_dir=sys.argv[1], engine="torch" if torch_stack else "bm1684x", disable_api_auth=True)
app = create_app(settings)
native = False
if torch_stack:
    from qwen3vl_app.engine.torch.engine import TorchEngine
    engine = TorchEngine(sys.argv[1], dtype="float32", threads=1)  # the tiny weights: the stack, not the model
else:
    import qwen3vl_app.engine.bm1684x.engine
    try:
        from qwen3vl_app.engine.bm1684x import qwen3vl_native  # noqa: F401
        native = True
    except ImportError:
        pass
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
print(json.dumps({"rss_mib": round(rss / 1024, 1), "torch_imported": "torch" in sys.modules,
                  "transformers_imported": "transformers" in sys.modules, "native_module": native}))
"""


def rss_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def worker_like_rss(model_dir: str, stack: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _WORKER_LIKE, str(model_dir), stack],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=180,
        env={k: v for k, v in os.environ.items() if not k.startswith("QWEN3VL_")},
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- preprocessing


def preprocessing(repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_media.py"), "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )
    rows = {}
    for line in out.stdout.splitlines():
        m = re.match(r"(image|video) (.*?) -> grid (\(.*?\))\s+([\d.]+) ms\s+([\d.]+) ms\s+([\d.]+)x", line)
        if m:
            rows[m.group(1)] = {
                "input": m.group(2),
                "grid_thw": m.group(3),
                "ours_ms": float(m.group(4)),
                "transformers_ms": float(m.group(5)),
                "speedup": float(m.group(6)),
            }
    if not rows:
        rows["error"] = (out.stderr or out.stdout).strip()[-500:]
    return rows


def admission_cost(n: int = 20000) -> dict:
    """Cost of the server-wide admission on the request path: take + give back one slot."""
    from qwen3vl_app.admission import ENV_FILE, Admission

    with tempfile.TemporaryDirectory() as d:
        adm = Admission.from_env(10, {ENV_FILE: Admission.create_file(d, 10)})
        held = [adm.try_acquire() for _ in range(9)]  # worst case: the free slot is the last one
        t0 = time.perf_counter()
        for _ in range(n):
            adm.try_acquire().release()
        per = (time.perf_counter() - t0) / n
        for t in held:
            t.release()
    return {"acquire_release_us": round(per * 1e6, 2), "slots": 10, "slots_taken": 9}


# ---------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model-dir", default=None, help="default: the tiny random-weight model")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=5, help="streamed requests per client per configuration")
    ap.add_argument("--quick", action="store_true", help="1 request per client, fewer repeats (a smoke run)")
    ap.add_argument(
        "--mode", choices=("all", "batching"), default="all", help="batching: only the --max-batch 1 vs 4 comparison"
    )
    args = ap.parse_args()
    per_client = 1 if args.quick else args.requests

    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint

    model_dir = args.model_dir or str(ensure_tiny_checkpoint())
    if args.mode == "batching":
        with tempfile.TemporaryDirectory(prefix="qwen3vl-bench-") as tmp:
            rows = batching(model_dir, Path(tmp), per_client, args.max_tokens)
        report = {
            "model_dir": model_dir,
            "demo_model": args.model_dir is None,
            "max_tokens": args.max_tokens,
            "batching": rows,
            "batching_gain": batching_gain(rows),
        }
        print(json.dumps(report, indent=2))
        print_batching(report)
        return
    from tests.conftest import run_server

    started = time.perf_counter()
    report = {
        "model_dir": model_dir,
        "demo_model": args.model_dir is None,
        "cpu_count": os.cpu_count(),
        "max_tokens": args.max_tokens,
        "throughput": [],
        "overhead": None,
        "rss_mib": {},
        "preprocess": {},
    }
    with tempfile.TemporaryDirectory(prefix="qwen3vl-bench-") as tmp:
        for workers in (1, 2):
            print(f"[bench] {workers} worker(s): starting ...", file=sys.stderr, flush=True)
            with run_server(model_dir, Path(tmp), "-c", "16", "--max-queue", "16", workers=workers, timeout=300) as s:
                for _ in range(2 * workers):  # warm every worker (first torch call is slow)
                    one_stream(s.url, 4)
                for clients in (1, 2, 4):
                    row = throughput(s.url, clients, per_client, args.max_tokens)
                    row["workers"] = workers
                    report["throughput"].append(row)
                    print(f"[bench] {workers}w x {clients}c: {row}", file=sys.stderr, flush=True)
                if workers == 1:
                    report["overhead"] = overhead(s.url, 10 if args.quick else 30)
                report["rss_mib"][f"live_torch_workers_{workers}w"] = [rss_of(p) for p in s.worker_pids()]
    print("[bench] memory and preprocessing ...", file=sys.stderr, flush=True)
    report["rss_mib"]["worker_like_bm1684x_path"] = worker_like_rss(model_dir, "bm1684x")
    report["rss_mib"]["worker_like_torch_stack"] = worker_like_rss(model_dir, "torch")
    report["preprocess"] = preprocessing(2 if args.quick else 3)
    report["admission"] = admission_cost()
    with tempfile.TemporaryDirectory(prefix="qwen3vl-bench-") as tmp:
        report["batching"] = batching(model_dir, Path(tmp), per_client, args.max_tokens)
    report["batching_gain"] = batching_gain(report["batching"])
    report["bench_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    print_table(report)


def print_table(rep: dict) -> None:
    def f(x, nd=1):
        return "-" if x is None else f"{x:.{nd}f}"

    print(
        f"\nthroughput ({'tiny random-weight model, CPU torch' if rep['demo_model'] else rep['model_dir']}, "
        f"max_tokens {rep['max_tokens']}, streamed)"
    )
    print(
        f"{'workers':>7} {'clients':>7} {'TTFT p50 ms':>12} {'TTFT p90 ms':>12} {'TPOT p50 ms':>12} "
        f"{'req/s':>7} {'tok/s':>7} {'errors':>6}"
    )
    for r in rep["throughput"]:
        print(
            f"{r['workers']:>7} {r['clients']:>7} {f(r['ttft_p50_ms']):>12} {f(r['ttft_p90_ms']):>12} "
            f"{f(r['tpot_p50_ms']):>12} {f(r['req_per_s'], 2):>7} {f(r['tok_per_s']):>7} {r['errors']:>6}"
        )
    o = rep["overhead"] or {}
    print(
        f"\nserver overhead per request (outside engine and queue), p50 {f(o.get('server_overhead_p50_ms'), 2)} ms "
        f"(p90 {f(o.get('server_overhead_p90_ms'), 2)} ms); engine p50 {f(o.get('engine_p50_ms'))} ms of app "
        f"p50 {f(o.get('app_p50_ms'))} ms; client-side total p50 {f(o.get('client_total_p50_ms'))} ms"
    )
    print(f"admission (server-wide slot, flock + scan): {rep['admission']['acquire_release_us']} us per request")
    m = rep["rss_mib"]
    bm, th = m.get("worker_like_bm1684x_path", {}), m.get("worker_like_torch_stack", {})
    print(
        f"\nRSS: bm1684x-path worker-like process {bm.get('rss_mib', bm.get('error'))} MiB "
        f"(torch imported: {bm.get('torch_imported')}, native module: {bm.get('native_module')}); "
        f"torch+transformers process {th.get('rss_mib', th.get('error'))} MiB; live torch workers "
        f"{m.get('live_torch_workers_1w')} (1w), {m.get('live_torch_workers_2w')} (2w) MiB"
    )
    p = rep["preprocess"]
    print("\npreprocessing (median ms)      ours   transformers  speedup")
    for kind in ("image", "video"):
        if kind in p:
            r = p[kind]
            print(
                f"  {kind} {r['input'][:22]:<22} {r['ours_ms']:>7.1f} {r['transformers_ms']:>12.1f} "
                f"{r['speedup']:>7.2f}x"
            )
    if "error" in p:
        print(f"  preprocessing comparison failed: {p['error']}")
    print_batching(rep)
    print(f"\n(bench took {rep['bench_seconds']} s)")


def print_batching(rep: dict) -> None:
    def f(x, nd=1):
        return "-" if x is None else f"{x:.{nd}f}"

    print(f"\ncontinuous batching (1 worker, {rep['max_tokens']} tokens per request, ignore_eos)")
    print(f"{'max-batch':>9} {'clients':>7} {'TTFT p50 ms':>12} {'TPOT p50 ms':>12} {'tok/s':>7} {'errors':>6}")
    for r in rep["batching"]:
        print(
            f"{r['max_batch']:>9} {r['clients']:>7} {f(r['ttft_p50_ms']):>12} {f(r['tpot_p50_ms']):>12} "
            f"{f(r['tok_per_s']):>7} {r['errors']:>6}"
        )
    gain = ", ".join(f"{c} clients {g}x" for c, g in rep["batching_gain"].items())
    print(f"aggregate tok/s, --max-batch 4 over 1: {gain}")


if __name__ == "__main__":
    main()

"""Measure what a careless or hostile client can do to a server (hardening round 2).

    .venv/bin/python bench/hardening.py                  # the server in this checkout
    .venv/bin/python bench/hardening.py --repo /tmp/old  # another checkout (before/after)
    .venv/bin/python bench/hardening.py --only stall,idle

Every case starts its own server (tiny model, 1 worker, settings by QWEN3VL_* variables so
an older checkout simply ignores the ones it does not know), plays the client and prints
one JSON line of numbers, then a table.  Peak worker memory is VmHWM of the worker,
reset before each case (/proc/<pid>/clear_refs).  Nothing here asserts: see
tests/resilience/test_hardening_*.py for the behaviour, docs/operations.md for figures.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))  # tests.support: the sample media, the slow media host, the /health probe
from tests.support.health_probe import while_probing  # noqa: E402

MSG = [{"role": "user", "content": "Tell me a long story."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, repo: Path, env: dict, workers: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="hardening-", suffix=".log")[1])
        full = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3VL_")}
        full.update(
            {
                "QWEN3VL_HOST": "127.0.0.1",
                "QWEN3VL_PORT": str(self.port),
                "QWEN3VL_DISABLE_API_AUTH": "1",
                "QWEN3VL_WORKERS": str(workers),
                "PYTHONPATH": str(repo),
                **env,
            }
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qwen3vl_app"],
            cwd=repo,
            env=full,
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=2).json()["status"] == "healthy":
                    break
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(self.log())
            time.sleep(0.2)
        else:
            raise RuntimeError("server did not start:\n" + self.log())
        self.worker = int(
            subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()[0]
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self, timeout: float = 30) -> dict:
        return requests.get(self.url + "/health", headers={"Connection": "close"}, timeout=timeout).json()

    def reset_peak(self) -> None:
        Path(f"/proc/{self.worker}/clear_refs").write_text("5")

    def mem_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the worker, MiB."""
        vals = {}
        for line in Path(f"/proc/{self.worker}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                vals[line.split(":")[0]] = int(line.split()[1]) / 1024
        return vals["VmRSS"], vals["VmHWM"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log_path.unlink(missing_ok=True)


@contextmanager
def server(repo, env=None, workers=1):
    s = Server(repo, env or {}, workers)
    try:
        yield s
    finally:
        s.stop()


def chat(s: Server, content, timeout=300, **kw):
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 2, **kw}
    t0 = time.monotonic()
    r = requests.post(s.url + "/v1/chat/completions", json=body, timeout=timeout)
    return r, time.monotonic() - t0


def code_of(r) -> str:
    try:
        return f"{r.status_code} {r.json()['error']['code']}"
    except Exception:
        return str(r.status_code)


def png_uri(img) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ----------------------------------------------------------------------------- cases


def case_stall(repo):
    """1. A stream reader that reads the headers, then nothing (default timeouts).  The
    tiny model on a CPU is slow enough that megabytes of kernel buffers take minutes to
    fill: measured up to a cap."""
    cap = 120
    with server(repo) as s:
        body = json.dumps(
            {
                "messages": MSG,
                "max_tokens": 4000,
                "stream": True,
                "logprobs": True,
                "top_logprobs": 20,
                "temperature": 1.0,
            }
        ).encode()
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect(("127.0.0.1", s.port))
        c.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        c.recv(64)
        t0 = time.monotonic()
        busy = cap
        while time.monotonic() - t0 < cap:
            if s.health()["running"] == 0:
                busy = time.monotonic() - t0
                break
            time.sleep(0.5)
        c.close()
        return {"engine_busy_after_reader_stopped_s": round(busy, 1), "capped": busy >= cap}


def case_slow_body(repo):
    """2. Three clients dripping a chunked body (1 byte/s) against -c 2."""
    with server(repo, {"QWEN3VL_MAX_CONCURRENT": "2", "QWEN3VL_BODY_TIMEOUT": "10"}) as s:
        drips = []
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", s.port))
            c.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n"
            )
            drips.append(c)
        stop = threading.Event()

        def drip():
            while not stop.is_set():
                for c in drips:
                    try:
                        c.sendall(b"1\r\n \r\n")
                    except OSError:
                        pass
                time.sleep(1)

        threading.Thread(target=drip, daemon=True).start()
        time.sleep(1)
        r, _ = chat(s, "hi")
        t0 = time.monotonic()
        cut = None
        for c in drips:
            c.settimeout(40)
            try:
                got = c.recv(64)
            except OSError:
                got = b""
            if got and cut is None:
                cut = time.monotonic() - t0 + 1
        stop.set()
        for c in drips:
            c.close()
        return {
            "other_client_while_dripping": code_of(r),
            "drippers_cut_after_s": None if cut is None else round(cut, 1),
            "body_timeout_s": 10,
        }


def case_idle(repo):
    """3. 300 idle connections (no key, nothing sent), re-opened every 5 s; /health latency."""
    with server(repo) as s:
        lat = []
        stop = threading.Event()

        def attacker():
            while not stop.is_set():
                socks = []
                for _ in range(300):
                    try:
                        socks.append(socket.create_connection(("127.0.0.1", s.port), timeout=5))
                    except OSError:
                        pass
                stop.wait(5)
                for c in socks:
                    c.close()

        threading.Thread(target=attacker, daemon=True).start()
        time.sleep(1)
        for _ in range(10):
            t0 = time.monotonic()
            try:
                requests.get(s.url + "/health", timeout=20)
                lat.append(time.monotonic() - t0)
            except requests.RequestException:
                lat.append(20.0)
            time.sleep(1)
        stop.set()
        return {"health_max_s": round(max(lat), 3), "health_median_s": round(sorted(lat)[len(lat) // 2], 3)}


def case_signals(repo):
    """4. Idle server (2 workers): Ctrl-C to the process group, SIGTERM to the master."""
    out = {}
    for name, sig, group in (("sigint_group", signal.SIGINT, True), ("sigterm_master", signal.SIGTERM, False)):
        s = Server(repo, {}, workers=2)
        time.sleep(1)
        t0 = time.monotonic()
        (os.killpg if group else os.kill)(s.proc.pid, sig)
        try:
            s.proc.wait(60)
            took = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            took = 60.0
        out[f"{name}_exit_s"] = round(took, 2)
        out[f"{name}_sigkill_logged"] = "SIGKILL" in s.log()
        s.stop()
    return out


def case_images(repo):
    """5. Four all-black 8192x8192 PNGs in one message; three concurrent 8000x8000 RGBA
    PNGs (max_pixels 262144, so they are within the prompt and really decoded)."""
    from PIL import Image

    black = png_uri(Image.new("1", (8192, 8192)))
    rgba = png_uri(Image.new("RGBA", (8000, 8000), (10, 200, 30, 128)))
    out = {}
    with server(repo) as s:
        s.reset_peak()
        base = s.mem_mib()[0]
        part = {"type": "image_url", "image_url": {"url": black}}
        r, took = chat(s, [part] * 4 + [{"type": "text", "text": "hi"}])
        rss, hwm = s.mem_mib()
        out.update(
            {
                "four_black_8192_answer": code_of(r),
                "four_black_8192_s": round(took, 2),
                "four_black_8192_peak_delta_mib": round(hwm - base, 1),
            }
        )
        s.reset_peak()
        base = s.mem_mib()[0]
        part = {"type": "image_url", "image_url": {"url": rgba}, "max_pixels": 262144}
        results = []

        def one():
            results.append(chat(s, [part, {"type": "text", "text": "hi"}]))

        threads = [threading.Thread(target=one) for _ in range(3)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - t0
        time.sleep(1)
        rss, hwm = s.mem_mib()
        out.update(
            {
                "three_rgba_8000_answers": sorted(code_of(r) for r, _ in results),
                "three_rgba_8000_s": round(took, 2),
                "three_rgba_8000_peak_delta_mib": round(hwm - base, 1),
                "three_rgba_8000_rss_after_delta_mib": round(rss - base, 1),
            }
        )
    return out


def case_text(repo):
    """6. 3 MB and 10 MB of digits in one message; /health latency while it is handled."""
    out = {}
    with server(repo) as s:
        for mb in (3, 10):
            s.reset_peak()
            base = s.mem_mib()[0]
            lat: list[float] = []
            done = threading.Event()

            def probe(done=done, lat=lat):
                while not done.is_set():
                    t0 = time.monotonic()
                    requests.get(s.url + "/health", timeout=60)
                    lat.append(time.monotonic() - t0)
                    time.sleep(0.1)

            th = threading.Thread(target=probe)
            th.start()
            r, took = chat(s, "1" * (mb * 1_000_000))
            done.set()
            th.join()
            rss, hwm = s.mem_mib()
            out.update(
                {
                    f"digits_{mb}mb_answer": code_of(r),
                    f"digits_{mb}mb_s": round(took, 2),
                    f"digits_{mb}mb_peak_delta_mib": round(hwm - base, 1),
                    f"digits_{mb}mb_health_max_s": round(max(lat), 3),
                }
            )
    return out


def case_video(repo):
    """7. A 100 s 320x240 clip; an 8 MB 1080p clip (about 10 s)."""
    from tests.support.media_samples import write_video

    out = {}
    with tempfile.TemporaryDirectory() as d, server(repo) as s:
        long = write_video(Path(d) / "long.mp4", frames=500, fps=5.0, h=240, w=320).read_bytes()
        hd = write_video(Path(d) / "hd.mp4", frames=300, fps=30.0, h=1080, w=1920).read_bytes()
        for name, data in (("video_100s_320x240", long), ("video_1080p", hd)):
            s.reset_peak()
            base = s.mem_mib()[0]
            uri = "data:video/mp4;base64," + base64.b64encode(data).decode()
            r, took = chat(s, [{"type": "video_url", "video_url": {"url": uri}}, {"type": "text", "text": "what?"}])
            rss, hwm = s.mem_mib()
            out.update(
                {
                    f"{name}_mib": round(len(data) / 2**20, 1),
                    f"{name}_answer": code_of(r),
                    f"{name}_s": round(took, 2),
                    f"{name}_peak_delta_mib": round(hwm - base, 1),
                }
            )
            if r.status_code == 200:
                out[f"{name}_prompt_tokens"] = r.json()["usage"]["prompt_tokens"]
    return out


def case_fetch(repo):
    """8. A media server dripping its header lines (limit 6 s); 16 items of 4 s each (request limit 12 s)."""
    from tests.support.media_host import slow_media_host

    out = {}
    with slow_media_host(line_every=0.5, body_seconds=4.0) as base:
        env = {
            "QWEN3VL_ALLOW_PRIVATE_MEDIA_URLS": "1",
            "QWEN3VL_MEDIA_FETCH_TIMEOUT": "6",
            "QWEN3VL_MEDIA_REQUEST_TIMEOUT": "12",
        }
        with server(repo, env) as s:
            r, took = chat(s, [{"type": "image_url", "image_url": {"url": base + "/drip"}}], timeout=120)
            out.update({"dripped_headers_answer": code_of(r), "dripped_headers_s": round(took, 1), "fetch_limit_s": 6})
            parts = [{"type": "image_url", "image_url": {"url": f"{base}/slow.png?{i}"}} for i in range(16)]
            r, took = chat(s, parts, timeout=300)
            out.update({"sixteen_slow_items_answer": code_of(r), "sixteen_slow_items_s": round(took, 1)})
    return out


def _r3_body_case(repo, path: str, bodies: dict[str, bytes]) -> dict:
    """Each body POSTed to `path` while /health is probed: answer, time, worker peak and the
    longest /health answer.  A worker killed on the way (gunicorn's heartbeat) is reported."""
    out: dict = {}
    with server(repo) as s:
        requests.post(s.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 1}, timeout=300)
        for name, body in bodies.items():
            s.reset_peak()
            base = s.mem_mib()[0]

            def post(body=body):
                try:
                    r = requests.post(
                        s.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=900
                    )
                    return code_of(r)
                except requests.RequestException as e:
                    return f"connection lost ({type(e).__name__})"

            answer, stall, took = while_probing(s.url, post)
            try:
                peak = round(s.mem_mib()[1] - base, 1)
            except OSError:
                peak = "worker gone (killed)"
                out[f"{name}_log_tail"] = s.log()[-600:]
            out.update(
                {
                    f"{name}_mb": round(len(body) / 1e6, 1),
                    f"{name}_answer": answer,
                    f"{name}_s": round(took, 2),
                    f"{name}_peak_delta_mib": peak,
                    f"{name}_health_max_s": round(stall, 3),
                }
            )
            if isinstance(peak, str):
                break  # the server has a new worker: the next figures would not be comparable
            # The same bytes as text/plain: read (@admitted), then 415 -- the part of the stall
            # that is the body's reading, before any endpoint code runs.
            _, stall, _ = while_probing(
                s.url, lambda body=body: requests.post(s.url + path, data=body, headers={"Content-Type": "text/plain"})
            )
            out[f"{name}_read_only_health_max_s"] = round(stall, 3)
    return out


def case_r3_items(repo):
    """Round 3, 5. /v1/responses with 200k and 1.9M empty input items (6.6 and 63 MB)."""
    item = {"role": "user", "content": ""}
    return _r3_body_case(
        repo,
        "/v1/responses",
        {f"items_{n // 1000}k": json.dumps({"input": [item] * n}).encode() for n in (200_000, 1_900_000)},
    )


def case_r3_ids(repo):
    """Round 3, 5. /v1/completions with 8M token ids (55 MB), and 50k (over the context)."""
    return _r3_body_case(
        repo,
        "/v1/completions",
        {
            "ids_8m": json.dumps({"prompt": list(range(100_000)) * 80, "max_tokens": 1}).encode(),
            "ids_50k": json.dumps({"prompt": list(range(50_000)), "max_tokens": 1}).encode(),
        },
    )


CASES = {
    "stall": case_stall,
    "slow_body": case_slow_body,
    "idle": case_idle,
    "signals": case_signals,
    "images": case_images,
    "text": case_text,
    "video": case_video,
    "fetch": case_fetch,
    "r3_items": case_r3_items,
    "r3_ids": case_r3_ids,
}


# ----------------------------------------------------------------------------- round 3: grammars


def _grammar_probe(s: Server, schema, **kw) -> dict:
    """One request (response_format `schema`) while /health is asked every 50 ms: answer,
    seconds, worker peak over the request, longest /health latency (the event loop's
    stall).  A worker that dies on the way is reported, not raised."""
    s.reset_peak()
    base = s.mem_mib()[0]
    if schema is not None:  # None: the same request unconstrained, for comparison
        kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}

    def ask():
        try:
            return chat(s, "Answer in JSON.", temperature=1.0, seed=1, **kw)[0], None
        except requests.RequestException as e:
            return None, type(e).__name__

    (r, error), stall, took = while_probing(s.url, ask, every=0.05)
    out: dict = {"s": round(took, 2), "health_max_s": round(stall, 3)}
    try:
        out["peak_delta_mib"] = round(s.mem_mib()[1] - base, 1)
    except OSError:
        out["peak_delta_mib"] = "worker gone"
    if r is None:
        out["answer"] = f"no answer ({error}); worker alive: {Path(f'/proc/{s.worker}').exists()}"
    elif r.status_code == 200:
        out["answer"] = "200"
        out["content"] = r.json()["choices"][0]["message"]["content"][:40]
    else:
        out["answer"] = code_of(r)
        out["message"] = r.json()["error"]["message"][:120]
    return out


def _grammar_cases(repo, cases: dict, fresh: bool = False, env: dict | None = None) -> dict:
    """The requests in turn on one server (`fresh`: a server each -- a request may kill its worker)."""
    out = {}
    if fresh:
        for name, case in cases.items():
            out.update(_grammar_cases(repo, {name: case}, env=env))
        return out
    with server(repo, env) as s:
        chat(s, "hi")  # a first generation warms the worker up; not measured
        for name, (schema, kw) in cases.items():
            out.update({f"{name}_{k}": v for k, v in _grammar_probe(s, schema, **kw).items()})
    return out


def case_r3_grammar_size(repo):
    """R3-1. A 60-byte schema asking for 3e7 array items (minItems), 1e7 (maxItems)."""
    items = {"type": "integer"}
    return _grammar_cases(
        repo,
        {
            "min_items_3e7": ({"type": "array", "items": items, "minItems": 30_000_000}, {}),
            "max_items_1e7": ({"type": "array", "items": items, "maxItems": 10_000_000}, {}),
        },
        fresh=True,
    )


def case_r3_grammar_compile(repo):
    """R3-2. 10k optional properties (300 KB); a 5 MB schema (a pattern); 1500 required
    properties, twice (the second is a cache hit)."""
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(10_000)}}
    big = {"type": "string", "pattern": "^" + "ab" * 2_500_000 + "$"}
    legit = {
        "type": "object",
        "properties": {f"k{i}": {"type": "integer", "minimum": i} for i in range(1500)},
        "required": [f"k{i}" for i in range(1500)],
    }
    return _grammar_cases(
        repo,
        {
            "props_10k": (wide, {}),
            "schema_5mb": (big, {}),
            "required_1500_first": (legit, {}),
            "required_1500_again": (legit, {}),
        },
    )


def case_r3_grammar_offhub(repo):
    """R3-2b. The 5 MB schema again with --max-schema-bytes 8000000, so it reaches the
    compiler: compiled (and refused) in the compile thread, off the event loop."""
    big = {"type": "string", "pattern": "^" + "ab" * 2_500_000 + "$"}
    return _grammar_cases(repo, {"schema_5mb_allowed": (big, {})}, env={"QWEN3VL_MAX_SCHEMA_BYTES": "8000000"})


def case_r3_grammar_fail(repo):
    """R3-3. A $ref cycle; pattern ^(a{1000}){1000}$; a pattern whose automaton outgrows
    the grammar engine a few hundred tokens in (max_tokens 800); the same request without
    a schema (what /health latency a generation alone costs on this machine)."""
    return _grammar_cases(
        repo,
        {
            "ref_cycle": ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, {"max_tokens": 50}),
            "pattern_1e6": ({"type": "string", "pattern": "^(a{1000}){1000}$"}, {"max_tokens": 50}),
            "late_failure": ({"type": "string", "pattern": "^[a-z]*a[a-z]{40}$"}, {"max_tokens": 800}),
            "unconstrained_800": (None, {"max_tokens": 800}),
        },
    )


CASES["r3_grammar_size"] = case_r3_grammar_size
CASES["r3_grammar_compile"] = case_r3_grammar_compile
CASES["r3_grammar_offhub"] = case_r3_grammar_offhub
CASES["r3_grammar_fail"] = case_r3_grammar_fail


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=str(HERE), help="checkout whose server is measured")
    p.add_argument("--only", default="", help="comma-separated cases: " + ",".join(CASES))
    args = p.parse_args()
    repo = Path(args.repo).resolve()
    results = {}
    for name, fn in CASES.items():
        if args.only and name not in args.only.split(","):
            continue
        try:
            results[name] = fn(repo)
        except Exception as e:  # one broken case must not hide the others' numbers
            results[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(json.dumps({"case": name, **results[name]}), flush=True)
    print()
    for name, res in results.items():
        for k, v in res.items():
            print(f"{name:10s} {k:45s} {v}")


if __name__ == "__main__":
    main()

"""Stalls and lock-outs a careless or hostile client could cause (hardening round 2).

Each test drives a real gunicorn with raw sockets where a well-behaved HTTP client would
hide the misbehaviour.  Time bounds here only detect a hang: they are many times what a
fixed server needs (the figures are measured by bench/hardening.py, not asserted).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.support.live import REPO, free_port
from tests.support.polling import wait_for
from tests.support.procfs import holds_connection_from

MSG = [{"role": "user", "content": "Tell me a long story."}]
KEY = "stall-key-0123456789"


@pytest.fixture(scope="module")
def tight(server_factory):
    """Two slots, short body and write timeouts, a long request timeout."""
    with server_factory(
        "-c", "2", "--body-timeout", "2", "--write-timeout", "2", "--request-timeout", "40", api_key=KEY
    ) as srv:
        yield srv


AUTH = {"Authorization": f"Bearer {KEY}"}


def _raw_request(
    port: int, body: bytes, headers: dict, path: str = "/v1/chat/completions", rcvbuf: int | None = None
) -> socket.socket:
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    s.sendall(head.encode() + body)
    return s


def _health(server) -> dict:
    return requests.get(server.url + "/health", headers={**server.headers, "Connection": "close"}, timeout=10).json()


def _wait_engine_free(server, bound: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        h = _health(server)
        if h["running"] == 0 and h["queued"] == 0:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"engine still busy after {bound} s: {_health(server)}")


def test_stream_reader_that_stops_reading_is_dropped(tight):
    """The client reads the headers, then nothing: the send times out, the generation is
    cancelled and the engine serves the next request -- within the request timeout."""
    srv = tight
    body = json.dumps(
        {
            "messages": MSG,
            "max_tokens": 1500,
            "stream": True,
            "logprobs": True,
            "top_logprobs": 20,
            "temperature": 1.0,
            "stop": [],
        }
    ).encode()
    s = _raw_request(srv.port, body, {"Content-Type": "application/json", **AUTH}, rcvbuf=4096)
    try:
        assert s.recv(64).startswith(b"HTTP/1.1 200")  # headers arrive; from now on it reads nothing
        t_stop_reading = time.monotonic()
        time.sleep(1)
        assert _health(srv)["running"] == 1
        _wait_engine_free(srv, 60)  # was: busy until the client went away
        freed_after = time.monotonic() - t_stop_reading
        r = srv.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 3}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        s.close()
    log = srv.log()
    assert "write timeout" in log and "finish=cancelled" in log
    assert freed_after < 40  # before --request-timeout: the stall, not the deadline, ended it


def test_slow_authenticated_body_holds_no_slot_and_is_cut(tight):
    """Clients with a valid key dripping a chunked body: nobody else is refused, and each
    dripping client gets a 408 (in OpenAI's shape) once --body-timeout has passed."""
    srv = tight
    drips = []
    for _ in range(3):  # more than -c
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n1\r\n{\r\n"
        )
        drips.append(s)
    (worker,) = srv.worker_pids()
    for s in drips:  # every dripping client is in the worker's hands, its body being read
        port = s.getsockname()[1]
        wait_for(lambda port=port: holds_connection_from(worker, port), what="the worker reading the drip")
    r = srv.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2}, timeout=30)
    assert r.status_code == 200, r.text  # no slot held by the drippers
    for s in drips:
        s.settimeout(30)
        got = b""
        try:
            while part := s.recv(4096):
                got += part
        except OSError:
            pass
        s.close()
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        err = json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]
        assert err["code"] == "request_timeout"


def test_bad_chunk_size_on_authenticated_post_is_a_json_400(server):
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(30)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nAuthorization: Bearer " + server.api_key.encode() + b"\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n"
    )
    got = b""
    while True:
        part = s.recv(4096)
        if not part:
            break
        got += part
    s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), got[:300]
    assert b"application/json" in head
    assert json.loads(body)["error"]["code"] == "invalid_body"
    assert got.count(b"HTTP/1.1") == 1  # one answer, the rest of the body never parsed as a request
    assert "Traceback" not in server.log()


def test_idle_connections_do_not_starve_health(server):
    """300 connections that send nothing (no key needed) do not keep /health waiting."""
    srv = server
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(300)]
    try:
        time.sleep(0.5)
        r = requests.get(srv.url + "/health", headers=srv.headers, timeout=3)  # was 6-9 s with 64 per worker
        assert r.status_code == 200
    finally:
        for s in idle:
            s.close()


def _start(tmp_path, tiny_model_dir, *args):
    port = free_port()
    log = tmp_path / f"sig-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3VL_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qwen3vl_app",
            "-m",
            str(tiny_model_dir),
            "-p",
            str(port),
            "--host",
            "127.0.0.1",
            "--disable-api-auth",
            *args,
        ],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).json()["status"] == "healthy":
                return proc, log
        except requests.RequestException:
            pass
        assert proc.poll() is None, log.read_text()
        time.sleep(0.2)
    raise AssertionError("server did not start")


def _exit_within(proc, bound: float) -> None:
    try:
        proc.wait(bound)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"server still running {bound} s after the signal") from None


def test_ctrl_c_and_sigterm_stop_an_idle_server_at_once(tmp_path, tiny_model_dir):
    proc, log = _start(tmp_path, tiny_model_dir, "--workers", "2")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    _exit_within(proc, 10)
    assert "SIGKILL" not in log.read_text()
    proc, log = _start(tmp_path, tiny_model_dir)
    os.kill(proc.pid, signal.SIGTERM)
    _exit_within(proc, 10)
    text = log.read_text()
    assert "SIGKILL" not in text and "engine torch released" in text


def test_gunicorn_refusals_are_openai_json(server):
    cases = [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    ]
    for raw, status in cases:
        s = socket.create_connection(("127.0.0.1", server.port))
        s.settimeout(30)
        s.sendall(raw)
        got = b""
        try:
            while True:
                part = s.recv(65536)
                if not part:
                    break
                got += part
        except ConnectionResetError:
            pass
        s.close()
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status}".encode()), (raw[:40], got[:200])
        assert b"Content-Type: application/json" in head
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]

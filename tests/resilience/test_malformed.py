"""Malformed HTTP against a real gunicorn: every case is a 4xx (OpenAI format when the app
answers; gunicorn's own reply for what never reaches the app) or a closed connection, and
the one worker stays up: the same pid answers /health afterwards.  Bad bodies the app
parses itself (invalid JSON, wrong content types, size limits) are tested in-process:
tests/inprocess/test_errors.py."""

from __future__ import annotations

import socket
import time

import pytest
import requests

from tests.support.checks import openai_error
from tests.support.live import API_KEY
from tests.support.polling import wait_for
from tests.support.procfs import holds_connection_from

LIMIT = 65536
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def srv(server_factory):
    with server_factory("--max-body-bytes", str(LIMIT), api_key=API_KEY, workers=1) as s:
        s.pid = s.get("/health").json()["worker_pid"]
        yield s
        assert s.worker_pids() == [s.pid], "the worker was replaced"
        assert "Traceback" not in s.log(), s.log()[-3000:]


def same_worker(s) -> None:
    h = requests.get(s.url + "/health", headers={**s.headers, "Connection": "close"}, timeout=10)
    assert h.status_code == 200 and h.json()["worker_pid"] == s.pid


def raw(s, data: bytes, *, shut_write: bool = False, wait: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; return what comes back until close or `wait`."""
    with socket.create_connection(("127.0.0.1", s.port), timeout=wait) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                out += chunk
                if b"\r\n\r\n" in out and _complete(out):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def _complete(resp: bytes) -> bool:
    head, _, body = resp.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_of(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp.startswith(b"HTTP/1.") else 0


def auth_line(s) -> bytes:
    return f"Authorization: Bearer {API_KEY}\r\n".encode()


# ----------------------------------------------------------------------------- body limits


def test_chunked_body_over_the_limit(srv):
    """Chunked, so there is no Content-Length to refuse up front: the limit applies while reading."""
    chunks = (b"x" * 8192 for _ in range(LIMIT * 2 // 8192))
    r = requests.post(
        srv.url + "/v1/chat/completions",
        data=chunks,
        timeout=30,
        headers={**srv.headers, "Content-Type": "application/json"},
    )
    assert r.status_code in (400, 413), r.text
    openai_error(r)
    same_worker(srv)


def test_huge_declared_length_is_refused_without_reading_it(srv):
    # Only 1000 of the declared bytes are sent: a server that tried to read them would never answer.
    resp = raw(
        srv,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth_line(srv)
        + b"Content-Length: 1000000000\r\n\r\n"
        + b"{" * 1000,
        wait=10,
    )
    assert status_of(resp) == 413, resp[:300]
    same_worker(srv)


# ----------------------------------------------------------------------------- HTTP level


@pytest.mark.parametrize(
    "name,request_bytes,statuses",
    [
        ("huge header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", (431, 400)),
        (
            "many headers",
            b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: a\r\n" % i for i in range(300)) + b"\r\n",
            (431, 400),
        ),
        ("huge url", b"GET /health?" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", (414, 400)),
        ("garbage", b"\x00\x01\x02 garbage\r\n\r\n", (400,)),
        ("bad content-length", b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", (400,)),
        (
            "negative content-length",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
            (400,),
        ),
        (
            "two content-lengths",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            (400,),
        ),
        (
            "bad chunked",
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            (400, 401),
        ),
    ],
)
def test_protocol_abuse_is_a_4xx_and_the_worker_stays(srv, name, request_bytes, statuses):
    resp = raw(srv, request_bytes)
    assert status_of(resp) in statuses or resp == b"", (name, resp[:300])
    same_worker(srv)


def test_request_that_stops_mid_body_then_closes(srv):
    partial = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth_line(srv)
        + b"Content-Length: 1000\r\n\r\n"
        + b'{"messages"'
    )
    resp = raw(srv, partial, shut_write=True)
    assert resp == b"" or 400 <= status_of(resp) < 500, resp[:300]
    same_worker(srv)


def test_request_that_stops_mid_body_and_waits(srv):
    """A client that never finishes its body holds one connection, not the worker."""
    partial = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + auth_line(srv)
        + b"Content-Length: 1000\r\n\r\n"
        + b'{"messages"'
    )
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as stalled:
        stalled.sendall(partial)
        client_port = stalled.getsockname()[1]
        wait_for(lambda: holds_connection_from(srv.pid, client_port), what="the worker accepted the stalled client")
        for _ in range(3):  # the same worker keeps answering, generation included
            same_worker(srv)
            r = srv.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 2}, timeout=30)
            assert r.status_code == 200 and int(r.headers["X-Worker-Pid"]) == srv.pid
    # stalled client gone: its request ends (400 in the log at most), the worker is unaffected
    wait_for(lambda: not holds_connection_from(srv.pid, client_port), what="the worker let the stalled client go")
    same_worker(srv)

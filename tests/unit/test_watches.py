"""The watch loop and its bounds (qwen3vl_app/watches.py), driven with a scripted `ask`
in place of the model: which answers become events, errors, the end.  The whole path (a
real camera, the engine, SSE over gunicorn) is tests/live/test_cameras.py."""

from __future__ import annotations

import json

import pytest

from qwen3vl_app import watches
from qwen3vl_app.admission import Admission
from qwen3vl_app.errors import APIError
from qwen3vl_app.media.cameras import CameraError


def _events(chunks) -> list:
    out = []
    for chunk in chunks:
        if chunk.startswith("data: "):
            data = chunk[6:].strip()
            out.append(None if data == "[DONE]" else json.loads(data))
    return out


def test_structured_answers_compare_as_json():
    assert watches.comparable('{"a": 1, "b": [2]}', True) == watches.comparable('\n{"b":[2],"a":1} ', True)
    assert watches.comparable('{"a": 1}', True) != watches.comparable('{"a": 2}', True)
    assert watches.comparable(" yes\n", False) == watches.comparable("yes", False)
    assert watches.comparable("not json", True) == ("text", "not json")


def test_only_changed_answers_are_sent_and_errors_once():
    script = iter(
        [
            "empty",  # same as the first: nothing sent
            "a truck",  # changed
            CameraError("camera 'bay' has no frame to give: offline"),
            CameraError("camera 'bay' has no frame to give: offline"),  # the same error: once
            "a truck",  # after an error the answer goes out again
            "a truck",
        ]
    )

    def ask():
        item = next(script, "a truck")
        if isinstance(item, APIError):
            raise item
        return watches.Answer(item, 1700000000.0)

    watch = watches.Watch("bay", interval=0.02, duration=1.0, structured=False, keepalive=5)
    events = _events(watches.run(watch, ask, watches.Answer("empty", None), lambda: False))
    kinds = [(e or {}).get("object") for e in events]
    assert kinds == ["watch.answer", "watch.answer", "watch.error", "watch.answer", "watch.end", None]
    answers = [e for e in events if e and e["object"] == "watch.answer"]
    assert [a["answer"] for a in answers] == ["empty", "a truck", "a truck"]
    assert [a["sequence"] for a in answers] == [1, 2, 3]
    error = events[2]
    assert error["error"]["code"] == "camera_unavailable" and "'bay'" in error["error"]["message"]
    assert events[-2]["reason"] == "duration"


def test_a_client_that_leaves_ends_the_watch():
    asked = []
    gone = iter([False, False, True])
    watch = watches.Watch("bay", interval=0.01, duration=60, structured=True)
    events = _events(
        watches.run(
            watch, lambda: asked.append(1) or watches.Answer("{}", None), watches.Answer("{}", None), lambda: next(gone)
        )
    )
    assert [e["object"] for e in events] == ["watch.answer"]  # no end event: nobody to tell
    assert events[0]["parsed"] == {}
    assert len(asked) <= 2


def test_limits_per_key_and_server():
    limits = watches.WatchLimits(Admission(3), per_key=2)
    a1, a2 = limits.acquire(b"a"), limits.acquire(b"a")
    with pytest.raises(watches.TooManyWatches) as e:
        limits.acquire(b"a")
    assert e.value.status == 429 and "--max-watches-per-key" in e.value.message
    b1 = limits.acquire(b"b")
    with pytest.raises(watches.TooManyWatches) as e:
        limits.acquire(b"c")
    assert "--max-watches" in e.value.message
    a1()
    a1()  # a second release changes nothing
    c1 = limits.acquire(b"c")
    with pytest.raises(watches.TooManyWatches):
        limits.acquire(b"d")
    for release in (a2, b1, c1):
        release()
    assert limits.running == {} and limits.server.in_use() == 0


def test_pings_keep_a_quiet_watch_alive_without_flooding():
    watch = watches.Watch("bay", interval=0.3, duration=1.05, structured=False, keepalive=0.2)
    chunks = list(watches.run(watch, lambda: watches.Answer("same", None), watches.Answer("same", None), lambda: False))
    pings = sum(1 for c in chunks if c.startswith(": ping"))
    assert 3 <= pings <= 6, chunks  # about one per keepalive over ~1 s, not one per poll
    assert [e["object"] for e in _events(chunks) if e] == ["watch.answer", "watch.end"]

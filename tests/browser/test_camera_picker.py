"""The playground's camera picker in a real browser (Debian's chromium) against a real server
with a real RTSP camera on loopback (tests/support/rtsp_server.py)."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from tests.conftest import API_KEY
from tests.support.camera import RtspCamera, frame_clock_ms, require_rtsp
from tests.support.live import free_port

from .conftest import set_key
from .test_playground import send, wait_answer


@pytest.fixture(scope="module")
def camera():
    require_rtsp()
    with RtspCamera(free_port(), "gray-moving") as cam:
        yield cam


@pytest.fixture(scope="module")
def play_server(server_factory, camera, tmp_path_factory):
    cams = tmp_path_factory.mktemp("cams") / "cameras"
    cams.write_text(f"door={camera.url()}\n")
    with server_factory("--camera-file", str(cams), api_key=API_KEY, workers=1) as s:
        yield s


def _clock_of(data_url: str) -> int:
    jpeg = base64.b64decode(data_url.split(",", 1)[1])
    return frame_clock_ms(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))


def test_pick_a_camera_see_it_refresh_and_ask(page, play_server):
    page.wait_for_selector("#camera-picker:not([hidden])")
    options = page.eval_on_selector_all("#camera-picker option", "os => os.map(o => o.value)")
    assert options == ["", "image:door", "video:door"]
    page.select_option("#camera-picker", "image:door")
    chip = page.wait_for_selector("#attachments .chip img")
    first = chip.get_attribute("src")
    assert first.startswith("data:image/jpeg;base64,")
    # The snapshot refreshes while the message is being written.
    page.wait_for_function(
        "(src) => { const i = document.querySelector('#attachments .chip img'); return i && i.src !== src; }",
        arg=first,
        timeout=10_000,
    )
    later = page.get_attribute("#attachments .chip img", "src")
    assert _clock_of(later) > _clock_of(first)
    send(page, "What is in the picture?", max_tokens=3)
    wait_answer(page, "done")
    assert page.locator(".message.user .media img").count() == 1
    stats = page.text_content(".message.assistant .stats")
    assert "prompt tokens" in stats


def test_no_picker_without_the_key(page, play_server):
    set_key(page, "wrong-key")
    page.wait_for_selector("#camera-picker", state="hidden")

"""A real RTSP camera on loopback for tests: tests/support/rtsp_server.py (GStreamer's RTSP
server) run under the system Python, which has GStreamer's `gi` bindings.

`RtspCamera(port, ...)` starts it and waits until it listens; `stats()` asks how many
RTSP clients have connected so far; `pattern(name)` changes what it shows; `kill()` ends
it at once (SIGKILL, as a camera losing power).  `frame_clock_ms(bgr)` reads the clock
the pattern draws into each frame (wall-clock milliseconds mod 2**32).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def rtsp_available() -> str | None:
    """None when the RTSP server can run here, else why not."""
    if not os.path.exists(SYSTEM_PYTHON):
        return "no /usr/bin/python3"
    probe = subprocess.run(
        [
            SYSTEM_PYTHON,
            "-c",
            "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
            "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
            "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('clockoverlay')",
        ],
        capture_output=True,
    )
    if probe.returncode:
        return "GStreamer RTSP server (gir1.2-gst-rtsp-server-1.0, python3-gi, plugins-ugly) not installed"
    return None


def require_rtsp() -> None:
    why = rtsp_available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)  # CI installs it (.ci/run): missing there is a defect
        pytest.skip(why)


class RtspCamera:
    def __init__(
        self,
        port: int,
        pattern: str = "gray-moving",
        user: str = "",
        password: str = "",
        fps: int = 10,
        size: str = "",
    ) -> None:
        self.port = port
        cmd = [SYSTEM_PYTHON, str(SCRIPT), "--port", str(port), "--pattern", pattern, "--fps", str(fps)]
        if size:
            cmd += ["--size", size]  # GStreamer's test pattern at this size (benchmarks)
        if user:
            cmd += ["--user", user, "--password", password]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line or not json.loads(line).get("ready"):
            self.kill()
            raise RuntimeError("the RTSP test server did not start")

    def url(self, user: str = "", password: str = "", host: str = "127.0.0.1") -> str:
        cred = f"{user}:{password}@" if user else ""
        return f"rtsp://{cred}{host}:{self.port}/cam"

    def _ask(self, line: str) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stats(self) -> dict:
        return self._ask("stats")

    def pattern(self, name: str) -> None:
        assert self._ask(f"pattern {name}")["ok"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> RtspCamera:
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def frame_clock_ms(bgr) -> int:
    """The clock band of a frame of the test pattern (32 columns of 10 px, MSB first)."""
    bits = "".join("1" if bgr[20, 10 * k + 5].mean() > 128 else "0" for k in range(32))
    return int(bits, 2)


def clock_age_ms(clock_ms: int, now: float) -> int:
    """Milliseconds from a frame's clock to the wall-clock time `now` (seconds)."""
    return ((int(now * 1000) & 0xFFFFFFFF) - clock_ms) & 0xFFFFFFFF


__all__ = ["RtspCamera", "frame_clock_ms", "clock_age_ms", "require_rtsp"]

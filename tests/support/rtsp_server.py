"""A real RTSP camera on loopback for the camera tests (GStreamer's RTSP server).

Runs under Debian's system Python (/usr/bin/python3, which has `gi`), started as a
subprocess by tests/support/camera.py; it is not imported by the test process.

The stream is H.264 over RTP, 320x240 at --fps, one shared pipeline for every client.
Each frame is drawn here, in pure Python (no numpy in the system Python):

* rows 0-39: a machine-readable clock -- 32 columns 10 px wide, black/white, the bits of
  the wall-clock time in milliseconds (mod 2**32) when the frame was drawn, most
  significant first -- so a test reads the capture time back out of a decoded frame;
* rows 40-239: a background colour (the "pattern", changed with a command) with a 40x40
  square moving left to right (on in patterns named `*-moving`), and GStreamer's
  `clockoverlay` burns the same clock as text in the corner, for people looking at it.

Commands on stdin, one per line; replies on stdout, one JSON line each:
  stats            -> {"clients": <RTSP clients connected so far>, "sessions": <open sessions>}
  pattern <name>   -> {"ok": true}   (gray, red, blue, green, black or white, then optionally "-moving"
                                      and/or "-still": no clock band, identical frames)
  quit             -> exits
On start it prints {"ready": true, "port": <port>}.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

W, H = 320, 240
BAND = 40
BITS = 32
COLOURS = {
    "gray": (128, 128, 128),
    "red": (200, 30, 30),
    "blue": (30, 30, 200),
    "green": (30, 180, 30),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
}
WHITE = bytes((255, 255, 255)) * 10
BLACK = bytes((0, 0, 0)) * 10


class Pattern:
    def __init__(self, name: str):
        self.set(name)

    def set(self, name: str) -> None:
        base, *flags = name.split("-")
        if base not in COLOURS or not set(flags) <= {"moving", "still"}:
            raise ValueError(name)
        self.colour = bytes(COLOURS[base])
        self.moving = "moving" in flags
        self.clock = "still" not in flags  # "still": no clock band, every frame the same


def draw(pattern: Pattern, frame_no: int) -> bytes:
    bg_row = pattern.colour * W
    ms = int(time.time() * 1000) & 0xFFFFFFFF
    row = b"".join(WHITE if (ms >> (BITS - 1 - i)) & 1 else BLACK for i in range(BITS))
    band = row * BAND if pattern.clock else bg_row * BAND
    if not pattern.moving:
        return band + bg_row * (H - BAND)
    x = (frame_no * 8) % (W - 40)
    sq_row = pattern.colour * x + bytes((250, 250, 0)) * 40 + pattern.colour * (W - 40 - x)
    top = 100
    return band + bg_row * (top - BAND) + sq_row * 40 + bg_row * (H - top - 40)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--path", default="/cam")
    ap.add_argument("--fps", type=int, default=10)
    ap.add_argument("--pattern", default="gray-moving")
    ap.add_argument("--user", default="")
    ap.add_argument("--password", default="")
    ap.add_argument(
        "--size", default="", help="WxH: GStreamer's own moving test pattern at this size (benchmarks), no pixel clock"
    )
    args = ap.parse_args()

    Gst.init(None)
    pattern = Pattern(args.pattern)
    counts = {"clients": 0}
    lock = threading.Lock()

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    overlay = (
        'clockoverlay valignment=bottom halignment=right font-desc="Sans 10" time-format="%H:%M:%S" ! '
        if pattern.clock
        else ""
    )
    encode = (
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.fps} bitrate=800 "
        "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1"
    )
    if args.size:  # GStreamer's own pattern at a camera's size (benchmarks): no pixel clock
        width, height = (int(v) for v in args.size.lower().split("x"))
        source = (
            f"videotestsrc is-live=true pattern=ball ! video/x-raw,width={width},height={height},"
            f"framerate={args.fps}/1 ! timeoverlay ! videoconvert"
        )
    else:
        source = (
            f"appsrc name=src is-live=true format=time do-timestamp=true "
            f"caps=video/x-raw,format=RGB,width={W},height={H},framerate={args.fps}/1 "
            f"! videoconvert ! {overlay}videoconvert"
        )
    factory.set_launch(f"( {source} ! {encode} )")
    factory.set_shared(True)

    def on_configure(_factory, media):
        src = media.get_element().get_child_by_name("src")
        if src is None:  # --size: GStreamer draws the frames
            return
        state = {"n": 0, "alive": True}

        def push():
            if not state["alive"]:
                return False
            with lock:
                data = draw(pattern, state["n"])
            state["n"] += 1
            buf = Gst.Buffer.new_wrapped(data)
            ret = src.emit("push-buffer", buf)
            return ret == Gst.FlowReturn.OK

        def unprepared(_media):
            state["alive"] = False

        media.connect("unprepared", unprepared)
        GLib.timeout_add(int(1000 / args.fps), push)

    factory.connect("media-configure", on_configure)
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        perms.add_permission_for_role("user", "media.factory.access", True)
        perms.add_permission_for_role("user", "media.factory.construct", True)
        factory.set_permissions(perms)
    server.get_mount_points().add_factory(args.path, factory)

    def on_client(_server, _client):
        counts["clients"] += 1

    server.connect("client-connected", on_client)
    server.attach(None)
    loop = GLib.MainLoop()

    def reply(obj) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def commands():
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "stats":
                sessions = server.get_session_pool().get_n_sessions()
                GLib.idle_add(lambda s=sessions: reply({"clients": counts["clients"], "sessions": s}) and False)
            elif cmd == "pattern":
                try:
                    with lock:
                        pattern.set(arg)
                    GLib.idle_add(lambda: reply({"ok": True}) and False)
                except ValueError:
                    GLib.idle_add(lambda: reply({"ok": False}) and False)
            elif cmd == "quit":
                break
        GLib.idle_add(loop.quit)

    threading.Thread(target=commands, daemon=True).start()
    reply({"ready": True, "port": server.get_bound_port()})
    loop.run()


if __name__ == "__main__":
    main()

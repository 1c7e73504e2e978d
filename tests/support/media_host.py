"""Media for the API tests: a folder of files (allowed and not) and loopback HTTP servers
playing the remote media host (redirects, an endless body, a slow answer, dripped headers)."""

from __future__ import annotations

import io
import os
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from .media_samples import image_bytes, write_video

PNG = image_bytes("PNG", 120, 160)
JPEG = image_bytes("JPEG", 90, 200, seed=3)
SLOW_SECONDS = 3.0  # how long /slow keeps the client waiting (longer than the tests' fetch timeout)


def make_media_dir(root: Path) -> Path:
    """root/allowed: a.png, b.jpg, clip.mp4, clip.avi and link.png (a symlink out of the
    folder); root/outside/secret.png; root/zero_frames.mp4 (an mp4 with no decodable frame)."""
    allowed = root / "allowed"
    allowed.mkdir()
    (allowed / "a.png").write_bytes(PNG)
    (allowed / "b.jpg").write_bytes(JPEG)
    write_video(allowed / "clip.mp4", frames=30, fps=10.0, h=96, w=128)
    write_video(allowed / "clip.avi", frames=20, fps=10.0, h=64, w=96)
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(PNG)
    os.symlink(outside / "secret.png", allowed / "link.png")
    good = (allowed / "clip.mp4").read_bytes()
    (root / "zero_frames.mp4").write_bytes(good[:64] + bytes(len(good) - 64))
    return root


class _Remote(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    release: threading.Event

    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        try:
            if url.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", q["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif url.path == "/big":  # no Content-Length, more bytes than any limit
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(PNG[:64])
                for _ in range(100):
                    self.wfile.write(b"\0" * 65536)
            elif url.path == "/slow":  # answers late (or when the host shuts down)
                self.release.wait(SLOW_SECONDS)
                self.send_response(200)
                self.end_headers()
            elif url.path.lstrip("/") in self.files:
                body = self.files[url.path.lstrip("/")]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass


@contextmanager
def remote_media_host(media_dir: Path):
    """Serve a.png, clip.mp4 and clip.avi (and the special paths) on 127.0.0.1; yields the base URL."""
    handler = type(
        "Remote",
        (_Remote,),
        {
            "files": {
                "a.png": PNG,
                "clip.mp4": (media_dir / "allowed" / "clip.mp4").read_bytes(),
                "clip.avi": (media_dir / "allowed" / "clip.avi").read_bytes(),
            },
            "release": threading.Event(),
        },
    )
    with _serving(handler) as url:
        try:
            yield url
        finally:
            handler.release.set()  # slow handlers end before the server shuts down


@contextmanager
def slow_media_host(line_every: float, body_seconds: float, pieces: int = 8):
    """A media host that is slow on purpose; yields its base URL.  /drip...: response header
    lines for a minute, one every `line_every` seconds (never a body); any other path: a
    64x64 PNG whose body arrives in `pieces` over about `body_seconds`."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(buf, "PNG")
    png = buf.getvalue()
    step = len(png) // pieces + 1

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):  # noqa: N802
            try:
                if self.path.startswith("/drip"):
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    for i in range(int(60 / line_every)):
                        self.wfile.write(f"X-Drip-{i}: x\r\n".encode())
                        self.wfile.flush()
                        time.sleep(line_every)
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(png)))
                    self.end_headers()
                    for i in range(0, len(png), step):
                        self.wfile.write(png[i : i + step])
                        self.wfile.flush()
                        time.sleep(body_seconds / pieces)
            except OSError:
                pass

    with _serving(Handler) as url:
        yield url


@contextmanager
def _serving(handler):
    """A threaded loopback HTTP server for `handler`; yields its base URL."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()

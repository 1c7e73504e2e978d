"""Sample media for the media/preprocessing tests (images and short videos made on the fly)."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gradient_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth content plus noise: exercises resampling like a real photo does."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 127 // max(h + w, 1))], -1)
    noise = rng.integers(-40, 41, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def image_bytes(fmt: str = "PNG", h: int = 240, w: int = 320, mode: str = "RGB", seed: int = 0) -> bytes:
    img = Image.fromarray(gradient_rgb(h, w, seed))
    if mode != "RGB":
        img = img.convert(mode)
    if mode == "RGBA":
        a = np.array(img)
        a[: h // 2, :, 3] = 0  # half transparent
        img = Image.fromarray(a, "RGBA")
    buf = io.BytesIO()
    kw = {"quality": 90} if fmt == "JPEG" else {}
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width` x `height` with a tiny (invalid) body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def frame_at(i: int, h: int, w: int) -> np.ndarray:
    """Frame `i` of a synthetic clip: a moving square over a gradient (BGR for OpenCV)."""
    y, x = np.mgrid[0:h, 0:w]
    f = np.stack([(x * 200 // w + i * 3) % 256, (y * 200 // h) % 256, np.full_like(x, (i * 37) % 256)], -1)
    s = max(4, min(h, w) // 4)
    cy, cx = (i * 5) % max(h - s, 1), (i * 7) % max(w - s, 1)
    f[cy : cy + s, cx : cx + s] = (255, 255, 255)
    return f.astype(np.uint8)


VIDEO_CODECS = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG", ".flv": "FLV1", ".wmv": "WMV2"}


def write_video(path: Path, frames: int = 40, fps: float = 10.0, h: int = 120, w: int = 160) -> Path:
    import cv2

    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_CODECS[path.suffix]), fps, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(frame_at(i, h, w))
    writer.release()
    return path


def video_bytes(tmp_dir: Path, ext: str = ".mp4", **kw) -> bytes:
    p = write_video(Path(tmp_dir) / f"sample{ext}", **kw)
    data = p.read_bytes()
    p.unlink()
    return data


def png_bytes(w: int = 32, h: int = 24, seed: int = 0) -> bytes:
    """A small noisy PNG."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def data_uri(blob: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(blob).decode()

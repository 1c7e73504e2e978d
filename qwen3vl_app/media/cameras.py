"""Cameras as a media source: `camera://NAME` (a camera the operator named) and raw
`rtsp://` / `rtsps://` URLs inside the operator's allowed media networks.

Rules:
* A camera's URL (credentials and all) lives only in `CameraSpec.url` and in the reader
  that opens it.  Everything shown -- replies, errors, logs, metrics, /v1/cameras -- uses
  the camera's name, or for a raw URL `redact_url(url)` (no user, password or query).
* One reader per camera per worker process (`CameraReader`), shared by every request: a
  native OS thread (never a greenlet: OpenCV blocks) that opens the stream with OpenCV's
  FFmpeg backend under connect/read timeouts, keeps a bounded ring of recent frames,
  reconnects with exponential backoff, and stops after `idle_timeout` without a user.
* Requests never wait on OpenCV: they poll the ring (cooperatively under gevent).  A
  request gets a frame or a `CameraError` (503, naming the camera and the reason) within
  the connect timeout, and a clip fails when the camera stalls for the read timeout.
* The reader thread touches only its own state, guarded by a native lock; gevent objects
  and metrics are touched from greenlets only (`publish_metrics`).
* Raw RTSP URLs: every address the host resolves to must lie inside
  `--allowed-media-network` (public addresses too are refused: the server does not dial
  cameras on the internet for its clients), and the reader connects to the checked
  address, so a second DNS answer cannot change the target.

Capture times: a frame's `ts` is wall-clock seconds.  The stream's presentation time
(CAP_PROP_POS_MSEC) spaces the frames; it is anchored to the wall clock by the least
delay seen between presentation and arrival (a frame that arrived late in a burst does not
move it), which creeps up slowly so a drifting camera clock is followed.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from ..errors import MediaError

if TYPE_CHECKING:  # numpy and OpenCV are imported where frames are handled, not by the master
    import numpy as np

log = logging.getLogger("qwen3vl.cameras")

CAMERA_PREFIX = "camera://"
RTSP_SCHEMES = ("rtsp", "rtsps")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_RAW_READERS = 8  # raw rtsp:// URLs from requests, each with its own reader, per worker
POLL = 0.02  # seconds between looks at a reader's ring from a request
BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0
# FFmpeg options for every capture this process opens (OpenCV reads them from the
# environment at open): RTSP over TCP (no lost UDP packets, one connection) and a short
# stream probe, so a camera opens in about a second rather than five.
FFMPEG_OPTIONS = "rtsp_transport;tcp|analyzeduration;1000000"


class CameraError(MediaError):
    """A camera that cannot give a frame now: offline, stalled, garbage (503)."""

    code = "camera_unavailable"

    def __init__(self, message: str, param: str | None = None, status: int = 503, code: str | None = None):
        super().__init__(message, param, status, code)


# ----------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class CameraSpec:
    name: str
    url: str = field(repr=False)  # may carry credentials: never shown

    @property
    def shown(self) -> str:
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """The URL without user, password, query or fragment (all may carry credentials)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        user = "***@" if "@" in parts.netloc else ""
        query = "***" if parts.query else ""
        return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, query, ""))
    except ValueError:
        return "<malformed URL>"


def parse_camera(text: str, where: str = "--camera") -> CameraSpec:
    """`NAME=URL` -> CameraSpec.  Errors name the camera, never its URL."""
    name, sep, url = text.strip().partition("=")
    name, url = name.strip(), url.strip()
    if not sep or not _NAME.match(name):
        raise ValueError(f"{where}: expected NAME=URL with NAME of letters, digits, '_', '.', '-' (got {name!r})")
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in (*RTSP_SCHEMES, "http", "https", "file") and not url.startswith("/"):
        raise ValueError(f"{where}: camera {name!r} needs an rtsp://, rtsps://, http(s):// URL or a file path")
    return CameraSpec(name, url)


def load_cameras(specs: tuple[str, ...], path: str = "") -> dict[str, CameraSpec]:
    """Cameras of the flags and of the file (NAME=URL lines, '#' comments).  Checked at
    start-up; a repeated name is an error."""
    items: list[tuple[str, str]] = [(s, "--camera") for s in specs]
    if path:
        with open(path, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    items.append((line, f"{path}:{no}"))
    out: dict[str, CameraSpec] = {}
    for text, where in items:
        spec = parse_camera(text, where)
        if spec.name in out:
            raise ValueError(f"{where}: camera {spec.name!r} is configured twice")
        out[spec.name] = spec
    return out


@dataclass(frozen=True)
class CameraConfig:
    """What the media layer needs to reach cameras (from the settings)."""

    cameras: tuple[CameraSpec, ...] = ()
    connect_timeout: float = 8.0
    read_timeout: float = 5.0
    idle_timeout: float = 60.0
    buffer_frames: int = 8
    clip_seconds: float = 3.0
    max_clip_seconds: float = 20.0

    @classmethod
    def from_settings(cls, settings) -> CameraConfig:
        return cls(
            cameras=tuple(_cached_cameras(settings.camera, settings.camera_file).values()),
            connect_timeout=settings.camera_connect_timeout,
            read_timeout=settings.camera_read_timeout,
            idle_timeout=settings.camera_idle_timeout,
            buffer_frames=max(2, settings.camera_buffer_frames),
            clip_seconds=settings.camera_clip_seconds,
            max_clip_seconds=settings.camera_max_clip_seconds,
        )

    def spec(self, name: str) -> CameraSpec | None:
        return next((c for c in self.cameras if c.name == name), None)


_camera_cache: dict[tuple, dict[str, CameraSpec]] = {}


def _cached_cameras(specs: tuple[str, ...], path: str) -> dict[str, CameraSpec]:
    key = (specs, path)
    if key not in _camera_cache:
        _camera_cache[key] = load_cameras(specs, path)
    return _camera_cache[key]


# -------------------------------------------------------------------- threads and locks


def _native():
    """(start_new_thread, allocate_lock, sleep) of the OS, even in a gevent-patched process."""
    try:
        from gevent import monkey

        return (
            monkey.get_original("_thread", "start_new_thread"),
            monkey.get_original("_thread", "allocate_lock"),
            monkey.get_original("time", "sleep"),
        )
    except ImportError:
        import _thread

        return _thread.start_new_thread, _thread.allocate_lock, time.sleep


_start_thread, _new_lock, _thread_sleep = _native()


# ------------------------------------------------------------------------------ reader


@dataclass(frozen=True)
class Frame:
    seq: int
    ts: float  # capture time, wall-clock seconds
    image: np.ndarray  # BGR, as OpenCV decodes it

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])


class CameraReader:
    """One camera's stream, read by a native thread into a ring of recent frames."""

    def __init__(self, name: str, url: str, config: CameraConfig, shown: str | None = None):
        self.name = name
        self.shown = shown or name
        self._url = url
        self.config = config
        self._lock = _new_lock()
        self._ring: deque[Frame] = deque(maxlen=config.buffer_frames)
        self._seq = 0
        self._running = False
        self._stop = False
        self.last_used = time.monotonic()
        # What /v1/cameras shows (plain attributes: written by the thread, read anywhere).
        self.state = "idle"  # idle, connecting, connected, reconnecting, error
        self.reason = ""
        self.width = 0
        self.height = 0
        self.fps = 0.0
        self.sessions = 0  # streams opened so far
        self.frames = 0
        self.failures = 0  # opens or reads that failed (each followed by a reconnect)
        self.resolution_changes = 0

    # -- requests' side ------------------------------------------------------------------
    def touch(self) -> None:
        """Mark a use; start the thread if it is not running."""
        self.last_used = time.monotonic()
        with self._lock:
            if self._running:
                return
            self._running = True
            self._stop = False
            self.state = "connecting"
            self.reason = ""
        _start_thread(self._run, ())

    def latest(self) -> Frame | None:
        with self._lock:
            return self._ring[-1] if self._ring else None

    def since(self, seq: int) -> list[Frame]:
        with self._lock:
            return [f for f in self._ring if f.seq > seq]

    def stop(self) -> None:
        self._stop = True

    def join(self, timeout: float) -> bool:
        """Wait (blocking this thread) until the reader's thread has ended; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._running and time.monotonic() < deadline:
            _thread_sleep(0.02)
        return not self._running

    @property
    def running(self) -> bool:
        return self._running

    def info(self) -> dict:
        latest = self.latest()
        return {
            "name": self.name,
            "state": self.state,
            "reason": self.reason or None,
            "width": self.width or None,
            "height": self.height or None,
            "fps": round(self.fps, 3) if self.fps else None,
            "last_frame_age": round(max(time.time() - latest.ts, 0.0), 3) if latest else None,
            "sessions_opened": self.sessions,
        }

    # -- the thread ----------------------------------------------------------------------
    def _idle(self) -> bool:
        return self._stop or time.monotonic() - self.last_used > self.config.idle_timeout

    def _run(self) -> None:
        backoff = BACKOFF_MIN
        had_frames = False
        try:
            while not self._idle():
                got = self._session()
                had_frames = had_frames or got
                if self._idle():
                    break
                self.failures += 1
                self.state = "reconnecting" if had_frames else "error"
                if got:
                    backoff = BACKOFF_MIN
                waited = 0.0
                while waited < backoff and not self._idle():
                    _thread_sleep(0.05)
                    waited += 0.05
                backoff = min(backoff * 2, BACKOFF_MAX)
        except Exception as e:  # never let the thread die silently
            self.state, self.reason = "error", f"reader failed: {type(e).__name__}"
            log.exception("camera %s: reader failed", self.shown)
        finally:
            with self._lock:
                self._ring.clear()
                self._running = False
                if self.state != "error":
                    self.state = "idle"

    def _open(self):
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", FFMPEG_OPTIONS)
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        import cv2

        try:  # a failed open is this module's to report (by name): not OpenCV's warning per retry
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except AttributeError:
            pass
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(self.config.connect_timeout * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.config.read_timeout * 1000),
        ]
        cap = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _session(self) -> bool:
        """One connection: open, read until it fails or the reader goes idle.  True when
        it gave at least one frame."""
        import cv2

        cap = self._open()
        if cap is None:
            self.reason = "could not open the stream (offline, refused, wrong credentials or timed out)"
            return False
        self.sessions += 1
        got = False
        anchor: float | None = None
        last_pts = -1.0
        last_arrival = 0.0
        live = False  # frames queued while the stream was probed arrive in a burst: not kept
        opened_at = time.time()
        size: tuple[int, int] | None = None
        try:
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.fps = float(fps) if fps and 0 < fps < 1000 else 0.0
            while not self._idle():
                ok, image = cap.read()
                arrival = time.time()
                if not ok or image is None:
                    self.reason = (
                        f"no frame for {self.config.read_timeout:g} s (stalled or ended)"
                        if got
                        else "the stream opened but sent no decodable frame"
                    )
                    return got
                if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 2 or image.shape[1] < 2:
                    self.reason = "the stream sent frames that are not images"
                    return got
                new_size = (int(image.shape[1]), int(image.shape[0]))
                if size is not None and new_size != size:
                    self.resolution_changes += 1
                    self.reason = f"resolution changed from {size[0]}x{size[1]} to {new_size[0]}x{new_size[1]}"
                size = new_size
                pts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if not live:
                    # Live once a read had to wait for the camera (half a frame interval),
                    # or after a few seconds when the stream's times say nothing.
                    waited = 0 <= last_pts < pts and arrival - last_arrival >= (pts - last_pts) / 2
                    live = waited or arrival - opened_at > 3.0
                    last_arrival, last_pts = arrival, pts
                    if not live:
                        continue
                    last_pts = -1.0
                if pts > last_pts >= 0 or (last_pts < 0 and pts >= 0):
                    delay = arrival - pts
                    if anchor is None or delay < anchor:
                        anchor = delay
                    else:
                        anchor += min(delay - anchor, 0.25) * 0.01  # follow a slowly drifting clock
                    ts = anchor + pts
                    last_pts = pts
                else:  # no usable presentation time (or it went back): the arrival time
                    ts, anchor, last_pts = arrival, None, -1.0
                with self._lock:
                    self._seq += 1
                    self._ring.append(Frame(self._seq, min(ts, arrival), image))
                self.frames += 1
                if not got:
                    got = True
                    self.state, self.reason = "connected", ""
                self.width, self.height = size
            return got
        finally:
            cap.release()


# ---------------------------------------------------------------------------- registry


class Cameras:
    """This process's readers: one per named camera, and a few for raw RTSP URLs."""

    def __init__(self, config: CameraConfig):
        self.config = config
        self.readers: dict[str, CameraReader] = {c.name: CameraReader(c.name, c.url, config) for c in config.cameras}
        self.raw: dict[str, CameraReader] = {}

    def named(self, name: str, param: str | None = None) -> CameraReader:
        reader = self.readers.get(name)
        if reader is None:
            shown = name if _NAME.match(name) else "(invalid name)"
            raise MediaError(
                f"there is no camera {shown!r} on this server (GET /v1/cameras lists them)",
                param,
                status=404,
                code="camera_not_found",
            )
        return reader

    def for_url(self, url: str, policy, param: str | None = None) -> CameraReader:
        pinned, shown = check_rtsp_url(url, policy)
        reader = self.raw.get(pinned)
        if reader is None:
            for key, r in list(self.raw.items()):  # forget readers that went idle
                if not r.running:
                    del self.raw[key]
            if len(self.raw) >= MAX_RAW_READERS:
                raise CameraError(
                    f"this server reads at most {MAX_RAW_READERS} rtsp:// URLs at once; name the camera "
                    "on the server (--camera) or retry later",
                    param,
                )
            reader = self.raw[pinned] = CameraReader(shown, pinned, self.config, shown)
        return reader

    def all(self) -> list[CameraReader]:
        return list(self.readers.values())

    def close(self, wait: float = 0.0) -> None:
        readers = [*self.readers.values(), *self.raw.values()]
        for r in readers:
            r.stop()
        deadline = time.monotonic() + wait
        for r in readers:
            r.join(max(deadline - time.monotonic(), 0.0))


_registry: Cameras | None = None


def registry(config: CameraConfig) -> Cameras:
    """This process's cameras (rebuilt when the configuration differs: in-process tests)."""
    global _registry
    if _registry is None or _registry.config != config:
        if _registry is not None:
            _registry.close()
        _registry = Cameras(config)
        _start_publisher()
        global _atexit_registered
        if not _atexit_registered:
            atexit.register(_close_at_exit)
            _atexit_registered = True
    return _registry


_atexit_registered = False
EXIT_WAIT = 3.0  # seconds the process waits at exit for its readers to leave OpenCV


def _close_at_exit() -> None:
    """Stop the readers and let their threads leave OpenCV before the interpreter goes: a
    thread still inside a read when Python finalizes is torn down mid-C++ and aborts the
    process ("FATAL: exception not rethrown")."""
    if _registry is not None:
        _registry.close(wait=EXIT_WAIT)


def is_camera_url(url: str) -> bool:
    head = url.strip()[:10].lower()
    return head.startswith(CAMERA_PREFIX) or head.startswith(("rtsp://", "rtsps://"))


def check_rtsp_url(url: str, policy) -> tuple[str, str]:
    """(the URL with its host replaced by the checked address, the URL as shown) or a
    MediaError.  Every address of the host must lie inside --allowed-media-network."""
    from .sources import _resolve, parse_networks

    shown = redact_url(url)
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port or (322 if parts.scheme.lower() == "rtsps" else 554)
    except ValueError:
        raise MediaError("camera URL is malformed", code="invalid_media_url") from None
    if parts.scheme.lower() not in RTSP_SCHEMES or not host:
        raise MediaError("camera URL is malformed", code="invalid_media_url")
    addrs = _resolve(host, port, policy)
    nets = parse_networks(policy.allowed_networks)

    def inside(ip) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in nets)

    if not nets or not all(inside(ip) for ip in addrs):
        raise MediaError(
            f"{shown}: rtsp:// URLs may only reach the operator's camera networks (--allowed-media-network); "
            "ask the operator to name this camera (camera://NAME)",
            code="media_url_not_allowed",
        )
    ip = addrs[0]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    ip_text = f"[{ip}]" if ip.version == 6 else str(ip)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + f"{ip_text}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), shown


def reader_for(url: str, config: CameraConfig, policy, param: str | None = None) -> CameraReader:
    url = url.strip()
    cams = registry(config)
    if url[:9].lower() == CAMERA_PREFIX:
        return cams.named(url[9:].strip("/"), param)
    return cams.for_url(url, policy, param)


# ------------------------------------------------------------------- frames for requests


def _sleep(seconds: float) -> None:
    time.sleep(seconds)  # cooperative under gevent's monkey-patching


def _unavailable(reader: CameraReader, param: str | None, what: str = "has no frame to give") -> CameraError:
    why = reader.reason or "it is not connected"
    return CameraError(f"camera {reader.shown!r} {what}: {why}", param)


def fresh_frame(reader: CameraReader, param: str | None = None, max_age: float | None = None) -> Frame:
    """The newest frame no older than `max_age` (default: the read timeout), waiting at
    most the connect timeout for a reader that is (re)opening.  A reader that has
    already failed answers at once with its reason."""
    config = reader.config
    max_age = config.read_timeout if max_age is None else max_age
    was_running = reader.running
    reader.touch()
    deadline = time.monotonic() + config.connect_timeout + 1.0
    while True:
        f = reader.latest()
        if f is not None and time.time() - f.ts <= max_age:
            return f
        if was_running and reader.state in ("error", "reconnecting"):
            raise _unavailable(reader, param)
        if not reader.running and reader.state == "error":
            raise _unavailable(reader, param)
        if time.monotonic() > deadline:
            raise _unavailable(reader, param, "gave no frame in time")
        was_running = True  # after the first look, a failure is this request's answer
        _sleep(POLL)
        reader.touch()  # a thread that was just ending for idleness starts again


def _next_frame(reader: CameraReader, after_seq: int, param: str | None) -> Frame:
    """The first frame after `after_seq`, waiting at most the read timeout."""
    since = time.monotonic()
    while True:
        reader.touch()
        new = reader.since(after_seq)
        if new:
            return new[0]
        if not reader.running or time.monotonic() - since > reader.config.read_timeout:
            raise _unavailable(reader, param, "stopped sending frames")
        _sleep(POLL)


def record_clip(
    reader: CameraReader,
    duration: float,
    fps: float,
    max_frames: int,
    param: str | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Frame]:
    """Frames from now for `duration` seconds, one every 1/fps seconds of capture time
    (at most `max_frames`, at least 2), each passed through `transform` when it is taken
    (the frames kept are then the transformed ones).  A stall of the read timeout, a
    reconnect or a resolution change mid-clip is a CameraError naming the camera."""
    keep = transform or (lambda image: image)
    asked = time.time()
    first = fresh_frame(reader, param, max_age=1.0)
    if first.ts < asked:  # the clip starts with the first frame captured after the ask
        first = _next_frame(reader, first.seq, param)
    want = max(2, min(int(round(duration * fps)), max_frames))
    step = 1.0 / fps
    frames = [replace(first, image=keep(first.image))]
    start, next_due, last_seq = first.ts, first.ts + step, first.seq
    sessions = reader.sessions
    progress = time.monotonic()
    done = False
    while not done and len(frames) < want:
        reader.touch()
        new = reader.since(last_seq)
        if reader.sessions != sessions or not reader.running:
            raise _unavailable(reader, param, "stopped sending frames mid-clip")
        if not new:
            if time.monotonic() - progress > reader.config.read_timeout:
                raise _unavailable(reader, param, "stopped sending frames mid-clip")
            _sleep(POLL)
            continue
        progress = time.monotonic()
        for f in new:
            last_seq = f.seq
            if f.ts - start > duration + step / 2:
                done = True
                break
            if f.ts < next_due - step / 4:
                continue
            if f.size != first.size:
                raise CameraError(
                    f"camera {reader.shown!r} changed resolution mid-clip "
                    f"({first.size[0]}x{first.size[1]} to {f.size[0]}x{f.size[1]})",
                    param,
                )
            frames.append(replace(f, image=keep(f.image)))
            next_due += step
            while next_due <= f.ts:
                next_due += step
            if len(frames) >= want:
                break
    return frames


def clip_timestamps(frames: list[Frame], temporal: int = 2) -> list[float]:
    """Seconds from the clip's first frame, one per temporal block (the mean of its
    frames' capture times; the last block padded with its last frame)."""
    t0 = frames[0].ts
    times = [f.ts - t0 for f in frames]
    if len(times) % temporal:
        times.extend([times[-1]] * (temporal - len(times) % temporal))
    return [sum(times[i : i + temporal]) / temporal for i in range(0, len(times), temporal)]


def to_rgb(frame: Frame) -> np.ndarray:
    import numpy as np

    return np.ascontiguousarray(frame.image[:, :, ::-1])


def encode_jpeg(frame: Frame, quality: int = 85) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", frame.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise CameraError("the frame could not be encoded")
    return buf.tobytes()


# ------------------------------------------------------------------------------ metrics


def publish_metrics() -> None:
    """This process's readers into the Prometheus gauges/counters (from a greenlet)."""
    try:
        from .. import metrics
    except ImportError:
        return
    cams = _registry
    if cams is None:
        return
    for r in cams.all():
        metrics.camera_state(r.name, r.state == "connected", r.frames, r.failures)


_publisher_started = False


def _start_publisher() -> None:
    """Under gevent, a greenlet that publishes the readers' figures every second."""
    global _publisher_started
    if _publisher_started:
        return
    try:
        import gevent
        from gevent import monkey

        if not monkey.is_module_patched("threading"):
            return
    except ImportError:
        return
    _publisher_started = True

    def loop():
        while True:
            try:
                publish_metrics()
            except Exception:  # metrics must never take the worker down
                log.exception("camera metrics")
            gevent.sleep(1.0)

    gevent.spawn(loop)

"""What camera readers cost a worker: CPU (decoding every frame) and memory (the ring of
decoded frames), for a few stream sizes and numbers of cameras.  Prints JSON, then a table.

Each "camera" is its own reader and RTSP session (qwen3vl_app/media/cameras.py), all
reading one stream of GStreamer's RTSP server on loopback (tests/support/rtsp_server.py,
`videotestsrc` encoded with x264 once for every client).  CPU is this process's user+system
time over the window, in cores (1.0 = one core busy), so the server's encoding, which runs
in its own process, is not counted; on a shared machine the figures still move by
some tens of percent from run to run.  Numbers, not assertions.

    python bench/bench_cameras.py [--sizes 640x360,1280x720] [--cameras 1,4] [--fps 25] [--seconds 6]
    python bench/bench_cameras.py --url rtsp://user:pass@192.168.7.21/sub --cameras 1,4   # a real camera
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qwen3vl_app.media.cameras import CameraConfig, CameraReader, fresh_frame  # noqa: E402
from tests.support.camera import RtspCamera, rtsp_available  # noqa: E402
from tests.support.live import free_port  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(size: str, cameras: int, fps: int, seconds: float, buffer_frames: int, url: str = "") -> dict:
    if url:  # a real camera: its own size and rate
        return _measure(url, size, cameras, fps, seconds, buffer_frames)
    with RtspCamera(free_port(), fps=fps, size=size) as cam:
        return _measure(cam.url(), size, cameras, fps, seconds, buffer_frames)


def _measure(url: str, size: str, cameras: int, fps: int, seconds: float, buffer_frames: int) -> dict:
    config = CameraConfig(connect_timeout=10, read_timeout=5, idle_timeout=120, buffer_frames=buffer_frames)
    before = rss_mb()
    readers = [CameraReader(f"cam{i}", url, config) for i in range(cameras)]
    try:
        for r in readers:
            fresh_frame(r)
        time.sleep(1.0)  # the rings fill
        frames0 = sum(r.frames for r in readers)
        cpu0, t0 = cpu_seconds(), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = cpu_seconds(), time.monotonic()
        frames1 = sum(r.frames for r in readers)
        after = rss_mb()
        if url and readers[0].width:
            size, fps = f"{readers[0].width}x{readers[0].height}", round(readers[0].fps or 0)
    finally:
        for r in readers:
            r.stop()
        for r in readers:
            r.join(5.0)
    wall = t1 - t0
    return {
        "size": size,
        "fps": fps,
        "cameras": cameras,
        "cpu_cores": round((cpu1 - cpu0) / wall, 3),
        "cpu_cores_per_camera": round((cpu1 - cpu0) / wall / cameras, 3),
        "frames_per_s_per_camera": round((frames1 - frames0) / wall / cameras, 1),
        "rss_mb_added": round(after - before, 1),
        "rss_mb_per_camera": round((after - before) / cameras, 1),
        "buffer_frames": buffer_frames,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="640x360,1280x720")
    ap.add_argument("--cameras", default="1,4")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--buffer-frames", type=int, default=8)
    ap.add_argument("--url", default="", help="measure this camera (rtsp://...) instead of the test stream")
    args = ap.parse_args()
    why = None if args.url else rtsp_available()
    if why:
        sys.exit(f"bench_cameras: {why}")
    if args.url:
        args.sizes = "camera"
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    rows = [
        measure(size, int(n), args.fps, args.seconds, args.buffer_frames, args.url)
        for size in args.sizes.split(",")
        for n in args.cameras.split(",")
    ]
    print(json.dumps({"camera_readers": rows}, indent=2))
    print(f"\n{'size':>10} {'fps':>4} {'cams':>5} {'cores':>6} {'cores/cam':>10} {'frames/s/cam':>13} {'MB/cam':>7}")
    for r in rows:
        print(
            f"{r['size']:>10} {r['fps']:>4} {r['cameras']:>5} {r['cpu_cores']:>6} {r['cpu_cores_per_camera']:>10} "
            f"{r['frames_per_s_per_camera']:>13} {r['rss_mb_per_camera']:>7}"
        )


if __name__ == "__main__":
    main()

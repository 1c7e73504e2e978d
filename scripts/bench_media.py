"""Preprocessing time: this server's torch-free code beside transformers' Qwen3-VL processor.

    python scripts/bench_media.py [--repeat N]

Same inputs for both: a 1920x1080 JPEG, and an MP4 (640x480, 30 fps, 20 s) sampled at
2 fps.  Image: ours (`image_from_bytes`: decode + resize + normalise + patchify) vs
transformers' `Qwen2VLImageProcessorPil` on the same decoded bytes.  Video: transformers'
Qwen3-VL video processor needs torchvision, which does not install beside this CPU torch,
so the reference column is transformers' own sampling / smart_resize / patchify with the
resize torchvision would call (torch antialiased bicubic on uint8), over frames decoded
the way the reference decoders do it -- every frame read in order, then indexed.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "unit"))


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from media_samples import gradient_rgb, write_video
    from oracle import RefVideoProcessor, decode_all_frames, processor
    from PIL import Image

    from qwen3vl_app.processing.video import VideoBudget, video_from_path
    from qwen3vl_app.processing.vision import image_from_bytes

    buf = io.BytesIO()
    Image.fromarray(gradient_rgb(1080, 1920)).save(buf, "JPEG", quality=90)
    jpeg = buf.getvalue()
    ref_ip = processor().image_processor

    def ref_image():
        ref_ip(images=[Image.open(io.BytesIO(jpeg))], return_tensors="np")

    ours_img = timeit(lambda: image_from_bytes(jpeg), args.repeat)
    ref_img = timeit(ref_image, args.repeat)
    v = image_from_bytes(jpeg)

    with tempfile.TemporaryDirectory() as d:
        path = write_video(Path(d) / "clip.mp4", frames=600, fps=30.0, h=480, w=640)
        budget = VideoBudget()
        ref_vp = RefVideoProcessor(
            fps=budget.fps,
            min_frames=budget.min_frames,
            max_frames=budget.max_frames,
            min_pixels=budget.min_pixels,
            max_pixels=budget.stack_max_pixels,
        )

        def ref_video():
            frames, fps = decode_all_frames(path)
            ref_vp.video_fps = [fps]
            ref_vp([np.stack(frames)])

        ours_vid = timeit(lambda: video_from_path(str(path), budget), max(1, args.repeat // 2))
        ref_vid = timeit(ref_video, max(1, args.repeat // 2))
        vv = video_from_path(str(path), budget)

    print(f"{'input':<40} {'ours (numpy+Pillow+OpenCV)':>28} {'transformers':>14} {'ratio':>7}")
    print(
        f"{'image 1920x1080 JPEG -> grid ' + str(v.grid_thw):<40} {ours_img * 1e3:>25.1f} ms "
        f"{ref_img * 1e3:>11.1f} ms {ref_img / ours_img:>6.2f}x"
    )
    print(
        f"{'video 640x480 30fps 20s -> grid ' + str(vv.grid_thw):<40} {ours_vid * 1e3:>25.1f} ms "
        f"{ref_vid * 1e3:>11.1f} ms {ref_vid / ours_vid:>6.2f}x"
    )
    print(
        "(median of runs; video reference = transformers' sampling/resize/patchify with torch's uint8 resize"
        " over all decoded frames, since its video processor needs torchvision)"
    )


if __name__ == "__main__":
    main()

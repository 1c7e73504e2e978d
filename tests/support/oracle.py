"""transformers' Qwen3-VL processor and get_rope_index, usable without torchvision.

`AutoProcessor` refuses to load here because the Qwen3-VL *video* processor needs
torchvision (not installable beside this CPU torch).  The image side has a Pillow
backend, and the processor/prompt logic and `get_rope_index` need only torch, so the
oracle is assembled from those real pieces:

* image processor: `Qwen2VLImageProcessorPil` (the Pillow backend) -- used as is;
* processor: `Qwen3VLProcessor` -- used as is, except the class check of its video
  processor slot, which is filled by `RefVideoProcessor` below;
* `RefVideoProcessor`: frame sampling (`Qwen3VLVideoProcessor.sample_frames`), the video
  `smart_resize`, `patchify` and the timestamp rule are transformers' own functions; only
  the resize itself -- torchvision's antialiased bicubic on uint8 -- is done here with the
  call torchvision makes, torch's `interpolate(uint8, mode="bicubic", antialias=True)`,
  independently of the code under test (which uses Pillow);
* positions: `Qwen3VLModel.get_rope_index` called on a stand-in `self` carrying the config.
"""

from __future__ import annotations

import functools
import types

import numpy as np


@functools.lru_cache(maxsize=1)
def processor():
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    from qwen3vl_app.devtools.tiny_model import ensure_tiny_checkpoint

    folder = ensure_tiny_checkpoint()

    class Processor(Qwen3VLProcessor):
        def check_argument_for_proper_class(self, *args, **kwargs):  # video slot: our stand-in
            return None

    return Processor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(folder),
        tokenizer=AutoTokenizer.from_pretrained(folder),
        video_processor=RefVideoProcessor(),
    )


def decode_all_frames(path) -> tuple[list[np.ndarray], float]:
    """Every frame, decoded sequentially (no seeking), RGB."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames, fps


class RefVideoProcessor:
    merge_size = 2
    temporal_patch_size = 2
    patch_size = 16

    def __init__(self, fps=2.0, min_frames=4, max_frames=768, min_pixels=4096, max_pixels=None):
        self.fps, self.min_frames, self.max_frames = fps, min_frames, max_frames
        self.min_pixels, self.max_pixels = min_pixels, max_pixels

    def max_pixels_for(self, n):  # the server's budget rule, passed in by the test
        return self.max_pixels(n) if callable(self.max_pixels) else self.max_pixels

    def sample(self, total, video_fps):
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
        from transformers.video_utils import VideoMetadata

        me = types.SimpleNamespace(fps=self.fps, min_frames=self.min_frames, max_frames=self.max_frames)
        meta = VideoMetadata(total_num_frames=total, fps=video_fps)
        return Qwen3VLVideoProcessor.sample_frames(me, meta, fps=self.fps), meta

    video_fps: list[float] = []  # set by the test: the container fps of each video

    def __call__(self, videos, **kwargs):
        """videos: list of all-frames arrays [N, H, W, 3] RGB uint8 (fps in `video_fps`)."""
        from transformers.video_utils import make_batched_videos

        videos = make_batched_videos(videos)
        import torch
        import torch.nn.functional as F
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor, smart_resize

        pixel_values, grids, metas = [], [], []
        for frames, video_fps in zip(videos, self.video_fps, strict=True):
            indices, meta = self.sample(len(frames), video_fps)
            meta.frames_indices = indices
            clip = torch.from_numpy(np.stack([frames[i] for i in indices])).permute(0, 3, 1, 2)  # T C H W uint8
            n, _, h, w = clip.shape
            rh, rw = smart_resize(
                n, h, w, temporal_factor=2, factor=32, min_pixels=self.min_pixels, max_pixels=self.max_pixels_for(n)
            )
            # torchvision's tvF.resize on a uint8 CPU tensor is this call (uint8 in, uint8 out).
            x = F.interpolate(clip.contiguous(), size=(rh, rw), mode="bicubic", antialias=True, align_corners=False)
            # transformers fuses rescale and normalise: (x - 0.5*255) / (0.5*255) in float32.
            x = (x.to(torch.float32) - 127.5) / 127.5
            patches, gt, gh, gw = Qwen3VLVideoProcessor.patchify(None, x[None], 16, 2, 2)
            pixel_values.append(patches[0].numpy())
            grids.append([gt, gh, gw])
            metas.append(meta)
        return {
            "pixel_values_videos": np.concatenate(pixel_values),
            "video_grid_thw": np.array(grids),
            "video_metadata": metas,
        }


def timestamps(indices, video_fps):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    return Qwen3VLProcessor._calculate_timestamps(None, list(indices), video_fps, 2)


def rope_index(input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None) -> np.ndarray:
    import torch
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel

    me = types.SimpleNamespace(config=types.SimpleNamespace(vision_config=types.SimpleNamespace(spatial_merge_size=2)))
    me.get_vision_position_ids = functools.partial(Qwen3VLModel.get_vision_position_ids, me)
    t = lambda a: None if a is None else torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    pos, _ = Qwen3VLModel.get_rope_index(
        me, t(np.asarray(input_ids)[None]), t(np.asarray(mm_token_type_ids)[None]), t(image_grid_thw), t(video_grid_thw)
    )
    return pos[:, 0].numpy()

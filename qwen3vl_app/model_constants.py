"""Facts of the Qwen3-VL model family the server depends on, each written once.

Token ids are those of every Qwen3-VL checkpoint (tokenizer.json's added tokens); the
vision geometry is its processor's (patch 16, temporal patch 2, 2x2 spatial merge).
"""

from __future__ import annotations

# Special tokens
END_OF_TEXT = 151643  # <|endoftext|>
IM_START = 151644  # <|im_start|>
IM_END = 151645  # <|im_end|>
VISION_START = 151652  # <|vision_start|>
VISION_END = 151653  # <|vision_end|>
IMAGE_PAD = 151655  # <|image_pad|>
VIDEO_PAD = 151656  # <|video_pad|>
TOOL_CALL_START = 151657  # <tool_call>
TOOL_CALL_END = 151658  # </tool_call>

VOCAB_ROWS = 151936  # rows of the embedding table and of every logits vector (ids past the tokenizer's never occur)

# Vision geometry
PATCH_SIZE = 16
TEMPORAL_PATCH = 2
MERGE_SIZE = 2  # a 2x2 group of patches becomes one token
FACTOR = PATCH_SIZE * MERGE_SIZE  # 32: resized sides are multiples of this

# A model folder whose config holds this file with {"random_weights": true} is a demo model.
DEMO_MARKER = "qwen3vl_demo.json"

"""Grounding: the model's boxes and points as JSON in the ORIGINAL image's pixels.

Qwen3-VL writes boxes and points in relative coordinates, 0-1000 on each axis of the image
it saw: `{"bbox_2d": [x1, y1, x2, y2], "label": "cat"}`, `{"point_2d": [x, y], ...}`.
A chat request with `grounding` (an extension field) gets:

- an output held by the grammar (engine/constraints.py, through structured.plan_output) to
  a JSON array of such detections, so it always parses: integers 0-1000, a label of at
  most MAX_LABEL characters, at most `max_detections` items; with several images in the
  conversation each item also names its image (`"image": k`, 1-based, images and videos
  counted in message order);
- `message.detections` (streamed as a last `delta.detections` before the finish chunk):
  the same detections in pixels of the image as the client sent it.

The mapping.  The image the model saw is the source resized (processing/vision.py
smart_resize: sides rounded to multiples of 32 within the pixel budget, no crop, no
padding), so a relative position there is the same relative position in the source,
whatever the resize did to the aspect ratio:  x_px = x / 1000 * width,  y_px = y / 1000 *
height, where (width, height) is the source as displayed (EXIF orientation applied) and
at its full size (a JPEG decoded at reduced size for the resize still maps to the size
sent): `VisionInput.source_size`.  Values are exact (x * width / 1000 has at most three
decimals).  A box is returned with x1 <= x2 and y1 <= y2.  A video's detections map to
its frame size.

A generation cut by max_tokens leaves an unfinished array: the detections complete by
then are returned.  Only engines that hand logits to the host can enforce the grammar; on
a device-greedy build `grounding` is a 400 like every other constrained output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import APIError

if TYPE_CHECKING:
    from .engine.base import VisionInput
    from .protocol import ChatRequest

SHAPES = {"bbox": ("bbox_2d", 4), "point": ("point_2d", 2)}
MAX_LABEL = 64  # characters of one label
DEFAULT_MAX_DETECTIONS = 50
MEDIA_PARTS = ("image_url", "video_url", "image", "video")


@dataclass(frozen=True)
class Grounding:
    """A request's `grounding`: "bbox", "point" or "any" (boxes or points), and the most
    detections the output may hold."""

    shape: str = "bbox"
    max_detections: int = DEFAULT_MAX_DETECTIONS

    def json_schema(self, images: int) -> dict:
        """The output's JSON schema for a conversation holding `images` images/videos."""
        variants = []
        for shape in ("bbox", "point") if self.shape == "any" else (self.shape,):
            key, n = SHAPES[shape]
            props: dict = {}
            if images > 1:
                props["image"] = {"type": "integer", "minimum": 1, "maximum": images}
            props[key] = {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 1000},
                "minItems": n,
                "maxItems": n,
            }
            props["label"] = {"type": "string", "maxLength": MAX_LABEL}
            variants.append(
                {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}
            )
        item = variants[0] if len(variants) == 1 else {"anyOf": variants}
        return {"type": "array", "items": item, "maxItems": self.max_detections}


def media_count(messages: Sequence[Mapping]) -> int:
    """Images and videos of a (validated) chat request, in message order, as
    prompt/messages.split_messages collects them (a tool result's parts are text only)."""
    return sum(
        1
        for m in messages
        if m.get("role") != "tool" and isinstance(m.get("content"), list)
        for p in m["content"]
        if p.get("type") in MEDIA_PARTS
    )


def output_schema(req: ChatRequest) -> dict:
    """The grammar's schema for a request with `grounding` (a 400 when it cannot apply)."""
    spec = req.grounding
    assert spec is not None
    fmt = (req.response_format or {"type": "text"})["type"]
    for other, given in (("response_format", fmt != "text"), ("tools", bool(req.tools))):
        if given:
            raise APIError(
                f"grounding decides the shape of the output (a JSON array of detections); it cannot be "
                f"combined with {other}.",
                400,
                "grounding",
                "invalid_request",
            )
    images = media_count(req.messages)
    if not images:
        raise APIError(
            "grounding needs an image (or video) in the messages to find things in.", 400, "grounding", "invalid_value"
        )
    return spec.json_schema(images)


# ----------------------------------------------------------------------------- output -> pixels


def parse_items(text: str) -> list[dict]:
    """The detections of the model's output: the whole array, or -- cut short by
    max_tokens -- the items complete so far."""
    try:
        value = json.loads(text)
        return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
    except ValueError:
        pass
    return list(_complete_items(text))


def _complete_items(text: str) -> Iterator[dict]:
    decoder = json.JSONDecoder()
    i = text.find("[")
    if i < 0:
        return
    i += 1
    while True:
        while i < len(text) and text[i] in " \n\t\r,":
            i += 1
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return
        if isinstance(value, dict):
            yield value


def to_pixels(items: list[dict], sizes: Sequence[tuple[int, int] | None]) -> list[dict]:
    """Relative 0-1000 detections -> pixels of each source image (see the module doc)."""
    out = []
    for item in items:
        k = item.get("image", 1)
        if not isinstance(k, int) or not 1 <= k <= len(sizes) or sizes[k - 1] is None:
            continue
        width, height = sizes[k - 1]  # type: ignore[misc]
        det: dict = {"image_index": k - 1, "label": item.get("label", "")}
        box, point = item.get("bbox_2d"), item.get("point_2d")
        if _coords(box, 4):
            x1, y1, x2, y2 = box  # type: ignore[misc]
            det["bbox_2d"] = [
                _px(min(x1, x2), width),
                _px(min(y1, y2), height),
                _px(max(x1, x2), width),
                _px(max(y1, y2), height),
            ]
        elif _coords(point, 2):
            det["point_2d"] = [_px(point[0], width), _px(point[1], height)]  # type: ignore[index]
        else:
            continue
        out.append(det)
    return out


def _coords(value, n: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1000 for v in value)
    )


def _px(rel: float, size: int) -> float | int:
    value = round(rel * size / 1000, 3)
    return int(value) if value == int(value) else value


def detections(text: str, vision: Sequence[VisionInput]) -> list[dict]:
    """`message.detections` of a grounding reply."""
    return to_pixels(parse_items(text), [v.source_size for v in vision])


class GroundingStream:
    """Wraps a chat stream's encoder: the same events, and before the finish chunk one
    chunk whose delta carries `detections`."""

    def __init__(self, inner, vision: Sequence[VisionInput]):
        self.inner = inner
        self.sizes = [v.source_size for v in vision]  # not the pixels: the stream may last minutes
        self.text: list[str] = []

    def start(self):
        return self.inner.start()

    def delta(self, ev):
        self.text.append(ev.text)
        return self.inner.delta(ev)

    def finish(self, ev):
        yield self.inner.chunks.chunk({"detections": to_pixels(parse_items("".join(self.text)), self.sizes)})
        yield from self.inner.finish(ev)

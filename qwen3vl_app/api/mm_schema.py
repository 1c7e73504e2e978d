"""vLLM's `mm_processor_kwargs`: the vision controls of a whole request.

Each key is also a field of a media content part (qwen-vl-utils' names); a part's own
value wins over the request's.  Values are checked against what the server can honour
in media/pipeline.py (a value outside that range is a 400 that says the range).  Unknown
keys are a 400: a processor option this server does not implement must not look honoured.
"""

from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

DESCRIPTIONS = {
    "min_pixels": "image: smallest area (pixels) after resizing; video: per frame",
    "max_pixels": "image: largest area (pixels) after resizing; video: per frame. Above the server's ceiling "
    "(--max-image-pixels, the compiled vision encoder) or below one 32x32 block: a 400 with the range",
    "total_pixels": "video: pixels of the whole sampled clip (one frame per 2-frame block), capping its tokens",
    "fps": "video: frames sampled per second",
    "max_frames": "video: most frames sampled (at most --max-video-frames)",
    "video_start": "video: the clip starts here (seconds of the source); timestamps stay the source's",
    "video_end": "video: the clip ends here (seconds of the source)",
}


def media_option_fields() -> dict[str, fields.Field]:
    """The fields, fresh (a marshmallow field belongs to one schema)."""
    d = DESCRIPTIONS
    return {
        "min_pixels": fields.Integer(validate=validate.Range(min=1), metadata={"description": d["min_pixels"]}),
        "max_pixels": fields.Integer(validate=validate.Range(min=1), metadata={"description": d["max_pixels"]}),
        "total_pixels": fields.Integer(validate=validate.Range(min=1), metadata={"description": d["total_pixels"]}),
        "fps": fields.Float(validate=validate.Range(min=0.01, max=60), metadata={"description": d["fps"]}),
        "max_frames": fields.Integer(validate=validate.Range(min=2), metadata={"description": d["max_frames"]}),
        "video_start": fields.Float(validate=validate.Range(min=0), metadata={"description": d["video_start"]}),
        "video_end": fields.Float(
            validate=validate.Range(min=0, min_inclusive=False), metadata={"description": d["video_end"]}
        ),
    }


def check_clip(data: dict) -> None:
    start, end = data.get("video_start"), data.get("video_end")
    if start is not None and end is not None and end <= start:
        raise ValidationError("video_end must be after video_start", "video_end")


class MMProcessorKwargsSchema(Schema.from_dict(media_option_fields())):  # type: ignore[misc]
    """Extension (vLLM's): vision controls for every image and video of the request."""

    class Meta:
        unknown = RAISE

    @validates_schema
    def _clip(self, data, **kwargs):
        check_clip(data)


def mm_processor_kwargs_field() -> fields.Field:
    return fields.Nested(
        MMProcessorKwargsSchema,
        allow_none=True,
        metadata={
            "description": "extension (vLLM's): min_pixels, max_pixels, total_pixels, fps, max_frames, "
            "video_start, video_end for every media part (a part's own fields win)"
        },
    )

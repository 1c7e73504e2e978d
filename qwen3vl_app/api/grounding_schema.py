"""The `grounding` request field of chat completions (an extension; qwen3vl_app/grounding.py)."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields

from ..grounding import DEFAULT_MAX_DETECTIONS, SHAPES, Grounding

MAX_DETECTIONS = 200
SHAPE_NAMES = (*SHAPES, "any")


class GroundingField(fields.Field):
    """`true` (boxes), "bbox", "point", "any", or `{"type": ..., "max_detections": n}`,
    loaded as a `grounding.Grounding`; `false` / null: off."""

    def __init__(self, **kw):
        kw.setdefault("allow_none", True)
        kw.setdefault(
            "metadata",
            {
                "description": "extension: the output is held by the grammar to a JSON array of detections "
                '(`[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]` or `point_2d`, Qwen3-VL\'s 0-1000 relative '
                "coordinates; with several images each names its `image`, 1-based), and the reply adds "
                "`message.detections` in pixels of the original images. true = boxes; "
                f'"bbox", "point", "any", or {{"type": ..., "max_detections": 1-{MAX_DETECTIONS} '
                f"(default {DEFAULT_MAX_DETECTIONS})}}. Needs an engine with host logits.",
                "oneOf": [
                    {"type": "boolean"},
                    {"type": "string", "enum": list(SHAPE_NAMES)},
                    {
                        "type": "object",
                        "properties": {
                            "type": {"type": "string", "enum": list(SHAPE_NAMES)},
                            "max_detections": {"type": "integer", "minimum": 1, "maximum": MAX_DETECTIONS},
                        },
                    },
                ],
            },
        )
        super().__init__(**kw)

    def _deserialize(self, value, attr, data, **kwargs):
        if value is False:
            return None
        if value is True:
            return Grounding()
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict):
            raise ValidationError('must be true, "bbox", "point", "any" or {"type": ..., "max_detections": n}')
        shape = value.get("type", "bbox")
        if shape not in SHAPE_NAMES:
            raise ValidationError(f"type must be one of {', '.join(SHAPE_NAMES)}")
        most = value.get("max_detections", DEFAULT_MAX_DETECTIONS)
        if isinstance(most, bool) or not isinstance(most, int) or not 1 <= most <= MAX_DETECTIONS:
            raise ValidationError(f"max_detections must be an integer from 1 to {MAX_DETECTIONS}")
        unknown = set(value) - {"type", "max_detections"}
        if unknown:
            raise ValidationError(f"unknown keys: {', '.join(sorted(unknown))}")
        return Grounding(shape, most)


class DetectionSchema(Schema):
    """One detection in pixels of the image as sent (EXIF orientation applied)."""

    image_index = fields.Integer(
        required=True, metadata={"description": "which image/video of the request, 0-based, in message order"}
    )
    label = fields.String(required=True)
    bbox_2d = fields.List(fields.Float(), metadata={"description": "[x1, y1, x2, y2], x1 <= x2 and y1 <= y2"})
    point_2d = fields.List(fields.Float(), metadata={"description": "[x, y]"})

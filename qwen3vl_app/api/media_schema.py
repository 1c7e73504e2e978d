"""Schemas of POST /v1/media/describe, for the OpenAPI document (api/docs.py).

The endpoint reads its multipart form by hand (api/media.py); these describe the same
fields and replies so `/docs` can offer an upload form and schemathesis can fuzz it.
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from .chat_schema import FINISH_REASONS, UsageSchema


class MediaDescribeFormSchema(Schema):
    file = fields.Raw(
        required=True,
        metadata={
            "type": "string",
            "format": "binary",
            "description": "an image (JPG, PNG, BMP, GIF, WEBP) or a video (MP4, AVI, MOV, MKV, FLV, WMV); "
            "the bytes decide which, not the name",
        },
    )
    prompt = fields.String(metadata={"description": "instruction; default 'Describe this image/video in detail.'"})
    stream = fields.Boolean(metadata={"description": "Server-Sent Events instead of one JSON reply"})
    model = fields.String(metadata={"description": "a served model name (404 model_not_found for others)"})
    max_tokens = fields.Integer(validate=validate.Range(min=1, max=1 << 20))
    temperature = fields.Float(validate=validate.Range(min=0, max=2))


class MediaMetadataSchema(Schema):
    filename = fields.String(required=True)
    media_type = fields.String(required=True, validate=validate.OneOf(["image", "video"]))
    prompt = fields.String(required=True)
    processing_time_seconds = fields.Float(required=True)
    model = fields.String(required=True)
    model_dir = fields.String(required=True)


class MediaDescriptionSchema(Schema):
    """Non-stream reply; also the last event of a stream (with `finish_reason`)."""

    status = fields.String(required=True, validate=validate.OneOf(["success"]))
    description = fields.String(required=True)
    reasoning = fields.String(metadata={"description": "a Thinking model's thinking (the description is the answer)"})
    finish_reason = fields.String(validate=validate.OneOf(FINISH_REASONS))
    metadata = fields.Nested(MediaMetadataSchema, required=True)
    usage = fields.Nested(UsageSchema, required=True)


class MediaStreamDeltaSchema(Schema):
    """The other events of a stream: `data: {"status": "streaming", "delta": "..."}`."""

    status = fields.String(required=True, validate=validate.OneOf(["streaming"]))
    delta = fields.String(required=True)

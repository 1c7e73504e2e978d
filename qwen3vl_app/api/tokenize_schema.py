"""Request and reply schemas of POST /tokenize and /detokenize (vLLM's shapes, with
extensions that say what each image and video costs)."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

from ..protocol import DetokenizeRequest, TokenizeRequest
from .chat_schema import MessageSchema, ToolSchema
from .mm_schema import mm_processor_kwargs_field


class TokenizeRequestSchema(Schema):
    """Either chat `messages` (rendered by the chat template, images and videos fetched and
    resized as a chat request would) or a raw `prompt` (no template)."""

    class Meta:
        unknown = EXCLUDE

    model = fields.String(load_default=None, allow_none=True)
    messages = fields.List(fields.Nested(MessageSchema), validate=validate.Length(min=1))
    prompt = fields.String()
    tools = fields.List(fields.Nested(ToolSchema), allow_none=True, validate=validate.Length(max=128))
    mm_processor_kwargs = mm_processor_kwargs_field()
    add_generation_prompt = fields.Boolean(
        load_default=True,
        metadata={"description": "vLLM's; only true: the prompt is counted as a chat request runs it"},
    )
    return_token_strs = fields.Boolean(
        load_default=False, allow_none=True, metadata={"description": "also return each token's text"}
    )

    @validates_schema
    def _one_input(self, data, **kwargs):
        if ("messages" in data) == ("prompt" in data):
            raise ValidationError("give either 'messages' or 'prompt'", "messages")
        if data.get("add_generation_prompt") is False:
            raise ValidationError(
                "only true is supported: the count is that of the prompt a chat request runs", "add_generation_prompt"
            )

    @post_load
    def _typed(self, data, **kwargs) -> TokenizeRequest:
        messages = data.get("messages")
        return TokenizeRequest(
            model=data.get("model"),
            messages=None if messages is None else tuple(messages),
            prompt=data.get("prompt"),
            tools=tuple(data.get("tools") or ()),
            mm_processor_kwargs=data.get("mm_processor_kwargs"),
            return_token_strs=bool(data.get("return_token_strs")),
        )


class DetokenizeRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    model = fields.String(load_default=None, allow_none=True)
    tokens = fields.List(fields.Integer(strict=True), required=True)

    @post_load
    def _typed(self, data, **kwargs) -> DetokenizeRequest:
        return DetokenizeRequest(model=data.get("model"), tokens=tuple(data["tokens"]))


class MediaCostSchema(Schema):
    """One image or video of the prompt, in order."""

    index = fields.Integer(required=True)
    param = fields.String(allow_none=True, metadata={"description": "the content part it came from"})
    type = fields.String(required=True, validate=validate.OneOf(["image", "video"]))
    tokens = fields.Integer(required=True, metadata={"description": "its vision placeholder tokens"})
    width = fields.Integer(allow_none=True, metadata={"description": "the source's width (EXIF orientation applied)"})
    height = fields.Integer(allow_none=True)
    resized_width = fields.Integer(required=True, metadata={"description": "what the vision encoder sees"})
    resized_height = fields.Integer(required=True)
    grid_thw = fields.List(fields.Integer(), required=True, metadata={"description": "in 16-pixel patches"})
    frames = fields.Integer(metadata={"description": "video: frames sampled (padded to an even count)"})
    timestamps = fields.List(fields.Float(), metadata={"description": "video: seconds of each 2-frame block"})


class TokenizeReplySchema(Schema):
    count = fields.Integer(required=True)
    max_model_len = fields.Integer(required=True, metadata={"description": "prompt + generated tokens"})
    tokens = fields.List(fields.Integer(), required=True)
    token_strs = fields.List(fields.String(), allow_none=True)
    max_prompt_tokens = fields.Integer(metadata={"description": "extension: the longest prompt this server takes"})
    image_tokens = fields.Integer(metadata={"description": "extension: tokens of the images"})
    video_tokens = fields.Integer(metadata={"description": "extension: tokens of the videos (timestamps are text)"})
    media = fields.List(fields.Nested(MediaCostSchema), metadata={"description": "extension"})


class DetokenizeReplySchema(Schema):
    prompt = fields.String(required=True)

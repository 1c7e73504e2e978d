"""GET /v1/cameras (this worker's view of the named cameras) and
GET /v1/cameras/<name>/snapshot (the latest frame as JPEG, for the playground's picker).

Names only: a camera's URL is never part of a reply.  Listing does not open a camera;
a snapshot does (the reader then stays open for --camera-idle-timeout).  Each gunicorn
worker has its own readers, so the figures are those of the worker that answers.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from marshmallow import Schema, fields, validate

from ..media.cameras import CameraConfig, encode_jpeg, fresh_frame, registry
from .auth import auth
from .routedoc import route_doc

bp = Blueprint("cameras", __name__)

STATES = ("idle", "connecting", "connected", "reconnecting", "error")


class CameraSchema(Schema):
    name = fields.String(required=True, metadata={"description": "use it as camera://NAME in image_url/video_url"})
    state = fields.String(required=True, validate=validate.OneOf(STATES))
    reason = fields.String(
        required=True, allow_none=True, metadata={"description": "why the camera is not connected (or last failed)"}
    )
    width = fields.Integer(required=True, allow_none=True)
    height = fields.Integer(required=True, allow_none=True)
    fps = fields.Float(required=True, allow_none=True, metadata={"description": "as the stream declares it"})
    last_frame_age = fields.Float(
        required=True, allow_none=True, metadata={"description": "seconds since the newest frame was captured"}
    )
    sessions_opened = fields.Integer(
        required=True, metadata={"description": "stream connections this worker opened (reconnects included)"}
    )


class CameraListSchema(Schema):
    object = fields.String(required=True, validate=validate.OneOf(["list"]))
    data = fields.List(fields.Nested(CameraSchema), required=True)


def _cameras():
    return registry(CameraConfig.from_settings(current_app.extensions["qwen3vl"].settings))


@bp.get("/v1/cameras")
@route_doc(
    tag="cameras",
    summary="The server's named cameras and their state (this worker's readers)",
    operation_id="listCameras",
    responses={200: ("the cameras", CameraListSchema)},
)
@auth.login_required
def list_cameras():
    return jsonify({"object": "list", "data": [r.info() for r in _cameras().all()]})


@bp.get("/v1/cameras/<name>/snapshot")
@route_doc(
    tag="cameras",
    summary="The camera's latest frame as JPEG (X-Capture-Time: its capture time, Unix seconds)",
    operation_id="cameraSnapshot",
    path_examples={"name": "door"},
    responses={200: ("JPEG image", {"image/jpeg": {"type": "string", "format": "binary"}})},
    errors=(404, 503),
)
@auth.login_required
def snapshot(name: str):
    reader = _cameras().named(name, "name")
    frame = fresh_frame(reader, "name")
    return Response(
        encode_jpeg(frame),
        mimetype="image/jpeg",
        headers={"Cache-Control": "no-store", "X-Capture-Time": f"{frame.ts:.3f}"},
    )

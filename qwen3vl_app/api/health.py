"""GET /health: the old service's fields, plus engine state, device and the worker pid."""

from __future__ import annotations

import os
import time

from flask import Blueprint, current_app, jsonify
from marshmallow import Schema, fields, validate

from .. import __version__
from .auth import auth
from .routedoc import route_doc

bp = Blueprint("health", __name__)


class HealthSchema(Schema):
    """Body of GET /health (200 when the engine is ready or loading, 503 when it failed)."""

    status = fields.String(required=True, validate=validate.OneOf(["healthy", "loading", "unhealthy"]))
    details = fields.String(required=True)
    model = fields.String(required=True)
    model_dir = fields.String(required=True)
    max_concurrent = fields.Integer(required=True)
    api_auth_enabled = fields.Boolean(required=True)
    timestamp = fields.Integer(required=True)
    version = fields.String(required=True)
    engine = fields.String(required=True)
    device = fields.String(required=True, allow_none=True)
    demo = fields.Boolean(required=True)
    worker_pid = fields.Integer(required=True)
    load_seconds = fields.Float(required=True, allow_none=True)
    running = fields.Integer(required=True)
    queued = fields.Integer(required=True)
    max_batch = fields.Integer(required=True, metadata={"description": "this worker's batch slots"})
    slots_in_use = fields.Integer(required=True, metadata={"description": "slots running a generation"})


@bp.get("/health")
@route_doc(
    tag="service",
    summary="Engine state and server facts (the old service's fields)",
    operation_id="health",
    responses={200: ("ready or still loading", HealthSchema), 503: ("the engine failed to load", HealthSchema)},
)
@auth.login_required
def health():
    state = current_app.extensions["qwen3vl"]
    runner = state.runner
    engine = runner.engine
    status = {"ready": "healthy", "failed": "unhealthy"}.get(runner.state, "loading")
    details = {
        "ready": "model loaded",
        "loading": "model is loading",
        "idle": "model loads on first request",
        "failed": f"model failed to load: {runner.error}",
    }[runner.state]
    body = {
        "status": status,
        "details": details + (f"; {state.demo_notice}" if state.demo else ""),
        "model": state.model_id,
        "model_dir": str(state.settings.model_dir),
        "max_concurrent": state.settings.max_concurrent,
        "api_auth_enabled": not state.settings.disable_api_auth,
        "timestamp": int(time.time()),
        "version": __version__,
        "engine": state.engine_kind,
        "device": getattr(engine, "device", None),
        "demo": state.demo,
        "worker_pid": os.getpid(),
        "load_seconds": runner.load_seconds,
        "running": runner.running,
        "queued": runner.waiting,
        "max_batch": runner.max_batch,
        "slots_in_use": runner.running,
    }
    return jsonify(body), 200 if runner.state != "failed" else 503

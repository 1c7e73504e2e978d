"""POST /tokenize and /detokenize, and the same under /v1/: vLLM's shapes; the prompt a
chat request would run, counted without running it (qwen3vl_app/tokenization.py)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .. import tokenization
from ..protocol import DetokenizeRequest, TokenizeRequest
from .admission import admitted
from .auth import auth
from .common import json_body, load_messages_body, prepare, request_limit, value_budget
from .models import check_served
from .routedoc import route_doc
from .tokenize_schema import DetokenizeReplySchema, DetokenizeRequestSchema, TokenizeReplySchema, TokenizeRequestSchema

bp = Blueprint("tokenize", __name__)


def _tokenize_doc(operation_id: str) -> route_doc:
    return route_doc(
        tag="tokenize",
        summary="Count a request's prompt tokens (chat messages with images and videos, or a raw prompt) "
        "without running the model",
        operation_id=operation_id,
        request=TokenizeRequestSchema,
        request_example={"model": "qwen3-vl-instruct", "messages": [{"role": "user", "content": "Hello!"}]},
        responses={200: ("the prompt's token ids, and what each image and video costs", TokenizeReplySchema)},
        errors=(400, 404, 408, 413, 415, 503),
    )


def _detokenize_doc(operation_id: str) -> route_doc:
    return route_doc(
        tag="tokenize",
        summary="The text of token ids (special tokens included)",
        operation_id=operation_id,
        request=DetokenizeRequestSchema,
        request_example={"model": "qwen3-vl-instruct", "tokens": [9707, 0]},
        responses={200: ("the text", DetokenizeReplySchema)},
        errors=(400, 404, 413, 415, 503),
    )


def _tokenize():
    state = current_app.extensions["qwen3vl"]
    req: TokenizeRequest
    _, req = load_messages_body(state, TokenizeRequestSchema())
    check_served(state, req.model)  # 404 for a model not served here
    return jsonify(tokenization.count_request(state, req))


def _detokenize():
    state = current_app.extensions["qwen3vl"]
    req: DetokenizeRequest = prepare(DetokenizeRequestSchema().load, json_body(value_budget(request_limit(state))))
    check_served(state, req.model)
    state.runner.wait_ready()  # 503 model_unavailable for a folder no engine can serve
    assert state.tokenizer is not None  # an unusable model folder never gets a ready engine
    return jsonify(tokenization.detokenize(state.tokenizer, list(req.tokens)))


# Media are fetched and decoded for /tokenize, so it holds an admission ticket as a generation does.
@bp.post("/tokenize")
@_tokenize_doc("tokenize")
@auth.login_required
@admitted
def tokenize():
    return _tokenize()


@bp.post("/v1/tokenize")
@_tokenize_doc("tokenizeV1")
@auth.login_required
@admitted
def tokenize_v1():
    return _tokenize()


@bp.post("/detokenize")
@_detokenize_doc("detokenize")
@auth.login_required
def detokenize():
    return _detokenize()


@bp.post("/v1/detokenize")
@_detokenize_doc("detokenizeV1")
@auth.login_required
def detokenize_v1():
    return _detokenize()

"""GET /metrics: Prometheus exposition of every worker's metrics (see qwen3vl_app/metrics.py).

Open by default so a scraper on the same host needs no key (bind to localhost or let
nginx keep it private); `--metrics-auth` makes it require the API key like every other
endpoint.  That choice is made per request, from the serving app's settings.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from .. import metrics
from .auth import auth
from .routedoc import route_doc

bp = Blueprint("metrics", __name__)


def _render() -> Response:
    body, content_type = metrics.render()
    return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})


@bp.get("/metrics")
@route_doc(
    tag="service",
    summary="Prometheus metrics (open unless --metrics-auth)",
    operation_id="metrics",
    auth=lambda settings: settings.metrics_auth,
    responses={200: ("Prometheus text format", {"text/plain": {"type": "string"}})},
)
def prometheus_metrics():
    if current_app.extensions["qwen3vl"].settings.metrics_auth:
        return auth.login_required(_render)()
    return _render()

"""GET /metrics: Prometheus exposition of every worker's metrics (see qwen3vl_app/metrics.py).

Open by default so a scraper on the same host needs no key (bind to localhost or let
nginx keep it private); `--metrics-auth` makes it require the API key like every other
endpoint.
"""
from __future__ import annotations

from flask import Blueprint, Response

from .. import metrics

bp = Blueprint("metrics", __name__)


def register(app, auth):
    settings = app.extensions["qwen3vl"].settings

    def prometheus_metrics():
        body, content_type = metrics.render()
        return Response(body, content_type=content_type, headers={"Cache-Control": "no-store"})

    view = auth.login_required(prometheus_metrics) if settings.metrics_auth else prometheus_metrics
    bp.add_url_rule("/metrics", "metrics", view, methods=["GET"])
    app.register_blueprint(bp)
    metrics.ADMISSION_LIMIT.set(settings.max_concurrent)

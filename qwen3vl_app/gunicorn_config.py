"""gunicorn settings and hooks, shared by `gunicorn -c gunicorn.conf.py` and the CLI.

Workers are gevent workers; each builds the app (no --preload) and starts loading its
own engine right after fork, in its engine thread, while the hub already runs -- so a
slow model load never trips gunicorn's worker timeout.
"""
from __future__ import annotations

import logging
import os

from .settings import Settings


def options(settings: Settings) -> dict:
    return {
        "bind": [f"{settings.host}:{settings.port}" if ":" not in settings.host else f"[{settings.host}]:{settings.port}"],
        "workers": settings.workers,
        "worker_class": "gevent",
        "worker_connections": max(64, settings.max_concurrent * 4),
        "timeout": 60,  # heartbeat; the hub stays free while the engine computes
        "graceful_timeout": 30,
        "keepalive": 5,
        "preload_app": False,
        "loglevel": settings.log_level.lower(),
        "accesslog": None,
        "errorlog": "-",
        "limit_request_field_size": 16384,
        "control_socket_disable": True,  # several servers (tests, benchmarks) may run side by side
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
        "when_ready": when_ready,
    }


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")


def when_ready(server) -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    from .auth import log_auth_config
    from .engine.loader import is_demo

    log = logging.getLogger("qwen3vl")
    log.info("serving %s on %s:%d with %d gevent worker(s)", settings.model_dir, settings.host, settings.port,
             settings.workers)
    if is_demo(settings.model_dir):
        log.warning("=" * 72)
        log.warning("DEMO MODEL: %s holds a tiny RANDOM-WEIGHT Qwen3-VL. Output is meaningless.",
                    settings.model_dir)
        log.warning("Put a real model at ./models/qwen3vl_2b or pass -m /path/to/model.")
        log.warning("=" * 72)
    log_auth_config(settings)


def post_worker_init(worker) -> None:
    configure_logging(Settings.from_env().log_level)
    state = worker.wsgi.extensions["qwen3vl"]
    state.runner.start_loading()


def worker_exit(server, worker) -> None:
    app = getattr(worker, "wsgi", None)
    state = getattr(app, "extensions", {}).get("qwen3vl") if app is not None else None
    if state is not None:
        state.runner.close()

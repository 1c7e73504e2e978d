"""`python -m qwen3vl_app` / `qwen3vl-server`: the old service's flags, served by gunicorn."""

from __future__ import annotations

import sys

from gunicorn.app.base import BaseApplication

from .api.auth import check_api_keys
from .gunicorn_config import options
from .model_dir import resolve_model_dir
from .settings import Settings, args_to_env, build_arg_parser


class Server(BaseApplication):
    def __init__(self, settings):
        self.settings = settings
        super().__init__()

    def load_config(self):
        for key, value in options(self.settings).items():
            self.cfg.set(key, value)

    def load(self):
        # Called in each worker after fork (preload is off): the app, and so the engine,
        # are never built in the master.
        from . import create_app

        return create_app(Settings.from_env())


def main(argv=None) -> None:
    ns = build_arg_parser().parse_args(argv)
    args_to_env(ns)  # workers read their settings from the environment
    try:
        settings = resolve_model_dir(Settings.from_env())
        check_api_keys(settings, ns.api_key)
    except ValueError as e:
        sys.exit(f"qwen3vl-server: error: {e}")
    Server(settings).run()


if __name__ == "__main__":
    main()

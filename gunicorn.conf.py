# gunicorn -c gunicorn.conf.py wsgi:app
# Settings come from QWEN3VL_* environment variables (see `python -m qwen3vl_app --help`).
from qwen3vl_app.gunicorn_config import options as _options
from qwen3vl_app.model_dir import resolve_model_dir as _resolve
from qwen3vl_app.settings import Settings as _Settings

globals().update(_options(_resolve(_Settings.from_env())))

# gunicorn -c gunicorn.conf.py wsgi:app
# Settings come from QWEN3VL_* environment variables (see `python -m qwen3vl_app --help`).
from qwen3vl_app.api.auth import check_api_keys as _check_keys
from qwen3vl_app.gunicorn_config import options as _options
from qwen3vl_app.model_dir import resolve_model_dir as _resolve
from qwen3vl_app.settings import Settings as _Settings

_settings = _resolve(_Settings.from_env())
_check_keys(_settings)
globals().update(_options(_settings))

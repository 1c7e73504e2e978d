"""WSGI entry point: `gunicorn -c gunicorn.conf.py wsgi:app` (settings from QWEN3VL_* env)."""

from qwen3vl_app import create_app

app = create_app()

"""Command-line tools around the server, never imported by serving code:

- `tiny_model`: builds (or reuses) the tiny random-weight Qwen3-VL checkpoint that the
  tests, the benchmarks and `make run` without a model use (`make tiny-model`).
- `model_fetch`: fetches a published BM1684X build into models/ (`make model`).

Run them as `python -m qwen3vl_app.devtools.<name>`.
"""

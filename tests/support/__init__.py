"""Helpers shared by the test modules (imported as `tests.support.<module>`).

live           a real gunicorn server (gevent workers) on a free loopback port
inprocess      the Flask app built in this process over a fake engine, with Flask's
               test client and the official openai client on a WSGI transport
fake_engine    FakeEngine: a stand-in for the model with deterministic logits
checks         assertions on OpenAI-format error bodies
sse            reading Server-Sent Events bodies
polling        wait for a condition with a deadline (never sleep to synchronise)
procfs         /proc readings of a worker: fds, RSS, held connections
prometheus     parsing GET /metrics
media_samples  images and short videos made on the fly
oracle         transformers' Qwen3-VL processor, usable without torchvision
"""

"""Blueprints, one per resource; each module's schemas sit beside it.  Routes are declared
at import, so any number of apps can register them."""

from __future__ import annotations

from flask import Flask


def register_all(app: Flask) -> None:
    from . import (
        cameras,
        chat,
        completions,
        docs,
        health,
        media,
        metrics,
        models,
        playground,
        responses,
        tokenize,
        watches,
    )

    blueprints = (health, models, chat, completions, responses, tokenize, media, cameras, watches, docs, metrics)
    for module in (*blueprints, playground):
        app.register_blueprint(module.bp)

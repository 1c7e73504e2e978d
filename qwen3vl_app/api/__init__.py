"""Blueprints, one per resource; each module's schemas sit beside it."""


def register_all(app, auth):
    from . import chat, docs, health, media, metrics, models

    for module in (health, models, chat, media, docs, metrics):
        module.register(app, auth)

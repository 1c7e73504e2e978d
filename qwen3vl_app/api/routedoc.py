"""What a route puts in /openapi.json, declared on the route itself: `@route_doc(...)`.

Every view function the app serves carries a `RouteDoc`, put there by `@route_doc(...)`
just under its `@bp.get`/`@bp.post`.  api/docs.py builds the document from `app.url_map`
and these, and refuses to build it (`UndocumentedRoute`) while a route has none, so a new
endpoint cannot ship undocumented.  The decorator only records: it returns the view
unchanged, and request handling (the handlers load and check their bodies themselves)
never sees it.

Rules:
- Bodies are marshmallow Schema classes; apispec makes each a component named after the
  class less its "Schema" suffix.  A response that is not JSON gives `{media type: JSON
  Schema}`, and one described in words only gives None.
- `errors` are the error statuses the route answers with (OpenAI error bodies); docs.py
  adds 401 when the route needs the key and auth is on.
- `auth` is True (the key is required), False (open), or a function of the settings for a
  route whose openness is a flag (/metrics and --metrics-auth).
- Path parameters come from the rule; `path_examples` only gives their examples.
- `stream` describes the `data` of each Server-Sent Event a 200 may instead be;
  `events` are the schemas those events follow when no operation refers to them otherwise
  (they are documented as components).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from marshmallow import Schema

# A body: JSON following a Schema, {media type: JSON Schema}, or only words (None).
Body = type[Schema] | Mapping[str, dict] | None
View = TypeVar("View", bound=Callable[..., Any])

ATTRIBUTE = "_qwen3vl_route_doc"


class UndocumentedRoute(RuntimeError):
    """A route of the app has no `@route_doc`."""


@dataclass(frozen=True)
class RouteDoc:
    """One route's operation; used as a decorator: `@route_doc(tag=..., ...)`."""

    tag: str
    summary: str
    operation_id: str
    responses: Mapping[int, tuple[str, Body]]  # status -> (description, body)
    errors: tuple[int, ...] = ()
    auth: bool | Callable[[Any], bool] = True
    request: type[Schema] | None = None
    request_type: str = "application/json"
    request_example: dict | None = None
    path_examples: Mapping[str, str] = field(default_factory=dict)
    stream: str | None = None
    events: tuple[type[Schema], ...] = ()

    def __post_init__(self):
        if not any(200 <= s < 300 for s in self.responses):
            raise ValueError(f"{self.operation_id}: no success response")
        if self.stream and 200 not in self.responses:
            raise ValueError(f"{self.operation_id}: a stream is an alternative 200 body")

    def __call__(self, view: View) -> View:
        setattr(view, ATTRIBUTE, self)
        return view

    def needs_key(self, settings) -> bool:
        return self.auth(settings) if callable(self.auth) else self.auth


route_doc = RouteDoc


def doc_of(view) -> RouteDoc | None:
    return getattr(view, ATTRIBUTE, None)

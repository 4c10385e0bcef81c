"""What a request may put in its URL besides the body: the query parameters each route declares, and ids.

* **Query parameters.** A route takes exactly the query parameters of its ``@blp.arguments(…, location="query")``
  schema, and none without one. Anything else is a 400 naming the parameter (and the one meant, for a near
  miss), never silently ignored: ``?vehicle=`` for ``?vehicle_id=`` would otherwise return every mission
  unfiltered. The allowed names are read once from the routes' own schemas, so the rule has one source.
* **Ids in the path.** ``<mission_id:…>``, ``<user_id:…>`` and ``<stop_id:…>`` accept any path segment and answer
  a malformed id with the same JSON 404 as an unknown one, saying why, instead of Werkzeug's generic "URL not
  found".
"""
from __future__ import annotations

import difflib
import uuid
from collections.abc import Callable

from flask import Flask, request
from flask_smorest import Api
from marshmallow import Schema
from werkzeug.exceptions import NotFound
from werkzeug.routing import BaseConverter

from fleetcore.errors import HttpError

# flask-smorest's own endpoints (Swagger UI, openapi.json) are documentation, not the operator API.
_DOCUMENTATION_BLUEPRINT = "api-docs"


def _query_names(view: Callable) -> frozenset[str]:
    """The query parameter names a view's ``@blp.arguments(location="query")`` schemas accept (their data keys)."""
    names: set[str] = set()
    for parameter in getattr(view, "_apidoc", {}).get("arguments", {}).get("parameters", []):
        if parameter.get("in") != "query":
            continue
        schema = parameter["schema"]
        schema = schema() if isinstance(schema, type) and issubclass(schema, Schema) else schema
        names.update(field.data_key or name for name, field in schema.fields.items() if not field.dump_only)
    return frozenset(names)


def install(app: Flask, smorest: Api) -> None:
    """Register the id converters (before the blueprints that use them) and the query check."""
    for converter, schema in ((MissionIdConverter, {"type": "string", "format": "uuid"}),
                              (UserIdConverter, {"type": "integer", "minimum": 1}),
                              (StopIdConverter, {"type": "integer", "minimum": 1})):
        app.url_map.converters[converter.name] = converter
        smorest.register_converter(converter, lambda _converter, schema=schema: schema)
    allowed: dict[str, frozenset[str]] = {}

    @app.before_request
    def check_query() -> None:
        endpoint = request.endpoint
        if endpoint is None or not request.args or endpoint.startswith(f"{_DOCUMENTATION_BLUEPRINT}."):
            return
        if endpoint not in allowed:
            allowed[endpoint] = _query_names(app.view_functions[endpoint])
        names = allowed[endpoint]
        unknown = sorted(set(request.args) - names)
        if not unknown:
            return
        hints = {name: match[0] for name in unknown if (match := difflib.get_close_matches(name, names, n=1))}
        message = f"unknown query parameter{'s' if len(unknown) > 1 else ''} " + ", ".join(
            f"'{name}'" + (f" (did you mean '{hints[name]}'?)" if name in hints else "") for name in unknown)
        message += f"; this endpoint takes {', '.join(sorted(names))}" if names else "; this endpoint takes none"
        raise HttpError(400, message, code="unknown_parameter",
                        details={"unknown": unknown, "allowed": sorted(names)})


class _IdConverter(BaseConverter):
    """A path segment that must parse as one kind of id; anything else is a 404 that says so."""
    regex = "[^/]+"
    noun = "resource"
    shape = "an id"

    def parse(self, value: str):
        raise NotImplementedError

    def to_python(self, value: str):
        try:
            return self.parse(value)
        except ValueError:
            # Raised while routing: Flask keeps it as the request's routing exception, answered as JSON
            # (fleetcore/errors.py) like any 404.
            raise NotFound(f"no such {self.noun}: {value!r} is not a {self.noun} id ({self.shape})") from None

    def to_url(self, value) -> str:
        return str(value)


class MissionIdConverter(_IdConverter):
    name = "mission_id"
    noun, shape = "mission", "a UUID such as 00000000-0000-4000-8000-000000000000"

    def parse(self, value: str) -> uuid.UUID:
        return uuid.UUID(value)


class UserIdConverter(_IdConverter):
    name = "user_id"
    noun, shape = "user", "a positive whole number"

    def parse(self, value: str) -> int:
        if not value.isdigit() or int(value) < 1 or len(value) > 18:
            raise ValueError(value)
        return int(value)


class StopIdConverter(UserIdConverter):
    name = "stop_id"
    noun, shape = "emergency stop", "a positive whole number"

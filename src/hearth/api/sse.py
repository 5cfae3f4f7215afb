"""The API's Server-Sent Event streams, each event's data a model (hearth.api.schemas).

A stream writes every event through its model, so what is sent is what `/docs` shows: the
route's `text/event-stream` response names each event and its model, with an `itemSchema`
(OpenAPI 3.2's schema of one event of a stream, as FastAPI writes it for its own streams)
of one branch per event, and the models are added to the document's components.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from fastapi import FastAPI
from pydantic import BaseModel

SCHEMAS = "#/components/schemas/"


@dataclass(frozen=True)
class EventStream:
    """A route's events: each event's name and the model of its data (JSON)."""

    description: str
    events: Mapping[str, type[BaseModel]]

    def encode(self, event: str, data: dict) -> str:
        """One event on the wire; its data checked by its model (an unknown field or a
        wrong type is a bug here, not something to send)."""
        payload = self.events[event].model_validate(data).model_dump_json(exclude_unset=True)
        return f"event: {event}\ndata: {payload}\n\n"

    def responses(self) -> dict[int | str, dict]:
        """The route's `responses` for its 200."""
        names = "; ".join(f"`{e}`: {m.__name__}" for e, m in self.events.items())
        item = {"oneOf": [_branch(event, model) for event, model in self.events.items()]}
        return {
            200: {
                "description": f"{self.description} (events and their data: {names})",
                "content": {"text/event-stream": {"itemSchema": item}},
            }
        }


def _branch(event: str, model: type[BaseModel]) -> dict:
    return {
        "type": "object",
        "title": event,
        "required": ["event", "data"],
        "properties": {
            "event": {"const": event},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": SCHEMAS + model.__name__},
            },
        },
    }


def documented(app: FastAPI, streams: Iterable[EventStream]) -> Callable[[], dict]:
    """`app`'s OpenAPI document with the streams' models among its schemas (FastAPI adds
    only those its routes return or take); to be set as `app.openapi`."""
    streams = tuple(streams)

    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = FastAPI.openapi(app)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for stream in streams:
                for model in stream.events.values():
                    schema = model.model_json_schema(
                        ref_template=SCHEMAS + "{model}", mode="serialization"
                    )
                    for name, definition in schema.pop("$defs", {}).items():
                        schemas.setdefault(name, definition)
                    schemas.setdefault(model.__name__, schema)
        return app.openapi_schema

    return openapi

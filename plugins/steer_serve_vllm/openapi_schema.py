"""Publish the `steering` field in the server's OpenAPI schema.

The gateway middleware, not vLLM's request models, owns `steering`, so FastAPI cannot see it.
Adding it to the schema (with its real constraints, from the same pydantic models that
validate it) documents the API and lets schema-driven fuzzers generate steered requests.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from steer_serve.steering_spec import SteeringSpec

STEERABLE_REQUEST_MODELS = ("ChatCompletionRequest", "CompletionRequest")


def publish_steering_schema(app: FastAPI) -> None:
    """Wrap `app.openapi` so the generated schema carries `steering` on the steerable requests."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_steering(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def with_steering(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    spec = SteeringSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(spec.pop("$defs", {}))
    components["SteeringSpec"] = spec
    field = {"anyOf": [{"$ref": "#/components/schemas/SteeringSpec"}, {"type": "null"}],
             "description": "per-request interventions (steer-serve); see README"}
    for name in STEERABLE_REQUEST_MODELS:
        if name in components:
            components[name].setdefault("properties", {})["steering"] = field
    return schema

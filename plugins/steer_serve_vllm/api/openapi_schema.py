"""Publish the `steering` field and the steering admin routes in the server's OpenAPI schema.

The gateway middleware, not vLLM's request models, owns `steering`, so FastAPI cannot see it.
Adding it to the schema (with its real constraints: the pydantic models that validate it, then
the served model's layer/head ranges and hidden size, see `openapi_steering_bounds`) documents
the API and lets schema-driven fuzzers generate steered requests that reach the engine.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from steer_serve.request.steering_spec import SteeringSpec
from steer_serve_vllm.api.openapi_admin_schema import add_admin_routes
from steer_serve_vllm.api.openapi_steering_bounds import add_model_bounds

STEERABLE_REQUEST_MODELS = ("ChatCompletionRequest", "CompletionRequest", "ResponsesRequest")


def publish_steering_schema(app: FastAPI) -> None:
    """Wrap `app.openapi` so the generated schema carries `steering` on the steerable requests.

    Built on the first request for it, when the plugin's state (the served model's shape) exists.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            service = getattr(app.state, "steer_serve", None)
            schema = with_steering(build())
            if service is not None:
                add_model_bounds(schema["components"]["schemas"], service.shape, service.settings)
            add_admin_routes(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def with_steering(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    spec = SteeringSpec.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(spec.pop("$defs", {}))
    components["SteeringSpec"] = spec
    _require_one_of(components, "SteeringSpec", {"interventions": {"type": "array"}, "preset": {"type": "string"}})
    _require_one_of(components, "HeadsIntervention", {"mask": {"minProperties": 1}, "scale": {"minProperties": 1}})
    _require_one_of(components, "ExpertsIntervention", {"disable": {"minProperties": 1}, "force": {"minProperties": 1}})
    for name in ("AddIntervention", "AblateIntervention", "ClampIntervention"):
        layers = components[name]["properties"]["layers"]["anyOf"]
        next(o for o in layers if o.get("type") == "array")["uniqueItems"] = True  # "layers must not repeat"
        # the resolver's rule: an inline vector needs `layers`, or (add) a per-layer scale to choose them
        where = {"vector": {"type": "string"}, "layers": {"type": "array"}}
        if name == "AddIntervention":
            where["scale"] = {"type": "object"}
        _require_one_of(components, name, where, required=("layers", "scale"))
    field = {"anyOf": [{"$ref": "#/components/schemas/SteeringSpec"}, {"type": "null"}],
             "description": "per-request interventions (steer-serve); see README"}
    for name in STEERABLE_REQUEST_MODELS:
        if name in components:
            components[name].setdefault("properties", {})["steering"] = field
    return schema


def _require_one_of(components: dict[str, Any], model: str, alternatives: dict[str, dict[str, Any]],
                    required: tuple[str, ...] | None = None) -> None:
    """Say in the schema what a validator enforces: one of these fields matches its constraint
    (and, for the fields in `required`, is present)."""
    components[model]["anyOf"] = [
        {"required": [field]} | {"properties": {field: constraint}} if required is None or field in required
        else {"properties": {field: constraint}}
        for field, constraint in alternatives.items()]

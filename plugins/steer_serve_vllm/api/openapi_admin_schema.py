"""Request bodies, query flags and the bearer scheme of the /v1/steering/* routes, for the schema.

Those handlers read their bodies themselves (multipart uploads, JSON checked by our own pydantic
models, so that every error is an OpenAI-shaped 400), so FastAPI publishes them with no body at
all. This module writes the bodies they really accept into the schema, from the same models
where there is one, so that clients and schema-driven fuzzers see the real API.
"""

from __future__ import annotations

from typing import Any

from steer_serve.experiments.records import FeedbackIn
from steer_serve.library.library_files import NAME
from steer_serve.library.presets import PresetBody
from steer_serve_vllm.api.experiment_routes import KillSwitch
from steer_serve_vllm.api.library_routes import EXPORT_FORMATS

Schema = dict[str, Any]
BEARER = "SteerServeAdminKey"
NAME_SCHEMA = {"type": "string", "pattern": f"^{NAME.pattern}$"}
REPLACE = {"name": "replace", "in": "query", "required": False,
           "schema": {"type": "string", "enum": ["true", "false", "1", "0"], "default": "false"},
           "description": "swap an existing entry of that name (otherwise 409)"}
VECTOR_UPLOAD = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "format": "binary", "description": ".safetensors or .gguf (sniffed from its bytes)"},
    "name": {**NAME_SCHEMA, "description": "library name; default: the file's stem"},
    "metadata": {"type": "string", "contentMediaType": "application/json", "description": "a JSON object"},
}}
ADMIN_OPERATIONS = (
    ("/v1/steering/vectors", "post"), ("/v1/steering/vectors/{name}", "delete"),
    ("/v1/steering/presets", "post"), ("/v1/steering/presets/{name}", "delete"),
    ("/v1/steering/experiments/reload", "post"), ("/v1/steering/experiments/kill-switch", "post"),
    ("/v1/steering/experiments/{key}/kill-switch", "post"), ("/v1/steering/policy/reload", "post"),
)


def add_admin_routes(schema: Schema) -> None:
    """Publish the bodies of the steering admin routes and mark them as needing the admin key."""
    paths = schema.get("paths", {})
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http", "scheme": "bearer", "description": "steer-serve admin key (--admin-key)"}
    models = components.setdefault("schemas", {})
    models["KillSwitch"] = KillSwitch.model_json_schema()
    models["FeedbackIn"] = FeedbackIn.model_json_schema()
    models["PresetBody"] = _preset_body(models)
    kill_switch = ("application/json", {"$ref": "#/components/schemas/KillSwitch"})
    bodies = {
        ("/v1/steering/vectors", "post"): ("multipart/form-data", VECTOR_UPLOAD),
        ("/v1/steering/presets", "post"): ("application/json", {"$ref": "#/components/schemas/PresetBody"}),
        ("/v1/steering/experiments/kill-switch", "post"): kill_switch,
        ("/v1/steering/experiments/{key}/kill-switch", "post"): kill_switch,
        ("/v1/steering/feedback", "post"): ("application/json", {"$ref": "#/components/schemas/FeedbackIn"}),
    }
    for (path, method), (media_type, body) in bodies.items():
        if method in paths.get(path, {}):
            paths[path][method]["requestBody"] = {"required": True, "content": {media_type: {"schema": body}}}
    for path, method in (("/v1/steering/vectors", "post"), ("/v1/steering/presets", "post")):
        if method in paths.get(path, {}):
            paths[path][method].setdefault("parameters", []).append(REPLACE)
    for parameter in paths.get("/v1/steering/vectors/{name}/export", {}).get("get", {}).get("parameters", []):
        if parameter["name"] == "format":
            parameter["schema"] = {"type": "string", "enum": list(EXPORT_FORMATS), "default": "safetensors"}
    for path, method in ADMIN_OPERATIONS:
        if method in paths.get(path, {}):
            paths[path][method]["security"] = [{BEARER: []}]


def _preset_body(models: Schema) -> Schema:
    """PresetBody, with its interventions typed like the `steering` object's (same validation)."""
    body = PresetBody.model_json_schema()
    body["properties"]["name"] = NAME_SCHEMA  # optional in preset files (the file stem), required here
    body["required"] = sorted({*body.get("required", []), "name"})
    steering = models.get("SteeringSpec")
    if steering is not None:
        interventions = next(o for o in steering["properties"]["interventions"]["anyOf"] if o.get("type") == "array")
        body["properties"]["interventions"] = interventions
    return body

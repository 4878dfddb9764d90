"""Which operations the OpenAPI fuzz drives, and the steering-focused view of the server's schema.

vLLM's completion request models make `prompt`/`messages` optional and carry ~60 sampling
fields, so cases generated from them as published are nearly all refused by vLLM before our
gateway ever looks at `steering`. The focused view keeps the server's own `SteeringSpec`
(with the model bounds the server publishes) and the steering admin routes untouched, but pins
the completion bodies to a required short prompt, a few tokens and a required `steering`, so
most of the budget becomes steered requests that reach the engine. The published schema is
fuzzed too (`published` profile), unchanged.
"""

from __future__ import annotations

import copy
from typing import Any

Schema = dict[str, Any]
COMPLETIONS = ("/v1/completions", "post")
CHAT = ("/v1/chat/completions", "post")
STEERING_PREFIX = "/v1/steering/"
MAX_PROMPT_CHARS = 24
MAX_TOKENS = 8
VECTOR_INTERVENTIONS = ("AddIntervention", "AblateIntervention", "ClampIntervention")


def fuzzed_operations(schema: Schema) -> list[tuple[str, str]]:
    """(path, method) of the completion endpoints and every /v1/steering/* route, in schema order."""
    found = []
    for path, methods in schema.get("paths", {}).items():
        for method in methods:
            if (path, method) in (COMPLETIONS, CHAT) or path.startswith(STEERING_PREFIX):
                found.append((path, method))
    return found


def steering_focused(schema: Schema, model: str, vectors: list[str], presets: list[str],
                     experiments: list[str] = ()) -> Schema:
    """A copy of `schema` whose completion bodies require a short prompt and a `steering` object,
    naming only the library vectors and presets that exist when the fuzz starts (the schema can
    only say "a name"; random names are all unknown, and negative cases still send those)."""
    focused = copy.deepcopy(schema)
    models = focused["components"]["schemas"]
    _only_names(models["SteeringSpec"]["properties"]["preset"], presets)
    for name in VECTOR_INTERVENTIONS:
        _only_names(models[name]["properties"]["vector"], vectors)
    steering = {"$ref": "#/components/schemas/SteeringSpec"}
    sampling = {
        "model": {"type": "string", "enum": [model]},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "stream": {"type": "boolean"},
        "steering": steering,
    }
    text = {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}
    models["FocusedCompletionRequest"] = {
        "type": "object", "additionalProperties": False, "required": ["model", "prompt", "max_tokens", "steering"],
        "properties": {**sampling, "prompt": text},
    }
    message = {"type": "object", "additionalProperties": False, "required": ["role", "content"],
               "properties": {"role": {"type": "string", "enum": ["system", "user", "assistant"]}, "content": text}}
    models["FocusedChatCompletionRequest"] = {
        "type": "object", "additionalProperties": False, "required": ["model", "messages", "max_tokens", "steering"],
        "properties": {**sampling, "messages": {"type": "array", "minItems": 1, "maxItems": 2, "items": message}},
    }
    _name_existing(focused["paths"], {"name": list(vectors), "presets": list(presets), "key": list(experiments)})
    for (path, method), name in ((COMPLETIONS, "FocusedCompletionRequest"), (CHAT, "FocusedChatCompletionRequest")):
        body = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
        focused["paths"][path][method]["requestBody"] = body
    return focused


def _only_names(prop: Schema, names: list[str]) -> None:
    """Replace the free-string alternative of a name field by the names that exist (if any)."""
    if names:
        prop["anyOf"] = [{"type": "string", "enum": sorted(names)} if option.get("type") == "string" else option
                         for option in prop["anyOf"]]


def _name_existing(paths: Schema, names: dict[str, list[str]]) -> None:
    """Read routes and kill switches address entries that exist (else every case is a 404); the
    DELETE routes keep free names, so the fuzz does not empty the library it steers with."""
    for path, methods in paths.items():
        if not path.startswith(STEERING_PREFIX):
            continue
        for method, operation in methods.items():
            if method == "delete":
                continue
            for parameter in operation.get("parameters", []):
                wanted = names.get(parameter["name"]) if parameter.get("in") == "path" else None
                if "/presets/" in path and parameter["name"] == "name":
                    wanted = names.get("presets")
                if wanted:
                    parameter["schema"] = {"type": "string", "enum": sorted(wanted)}

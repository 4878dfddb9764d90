"""Model-dependent constraints of the `steering` object, written into the published schema.

The pydantic models only know limits that hold for every model; the served model adds the real
ones (layer and head ranges, the inline vector's length, |scale| and the intervention count).
Without them a schema-driven fuzzer almost never writes a steering object the server accepts,
so nothing it sends reaches the engine. With them, positive cases are steered requests and
negative cases are exactly the ones the gateway must refuse with a 400.
"""

from __future__ import annotations

from typing import Any

from steer_serve.model_shape import ModelShape
from steer_serve.settings import Settings

Schema = dict[str, Any]
VECTOR_INTERVENTIONS = ("AddIntervention", "AblateIntervention", "ClampIntervention")


def add_model_bounds(components: Schema, shape: ModelShape, settings: Settings) -> None:
    """Tighten the steering components in place to what `shape` and `settings` accept."""
    layer_keys = {"type": "string", "enum": [str(layer) for layer in range(shape.num_layers)]}
    layer = {"type": "integer", "minimum": 0, "maximum": shape.num_layers - 1}
    bounded = {"type": "number", "minimum": -settings.max_abs_scale, "maximum": settings.max_abs_scale}
    interventions = _variant(components["SteeringSpec"]["properties"]["interventions"], "array")
    interventions["maxItems"] = settings.max_interventions
    for name in VECTOR_INTERVENTIONS:
        properties = components[name]["properties"]
        inline = _variant(properties["vector"], "array")
        inline["minItems"] = inline["maxItems"] = shape.hidden_size
        _variant(properties["layers"], "array").update(items=layer, maxItems=shape.num_layers)
    scale = components["AddIntervention"]["properties"]["scale"]
    scale["anyOf"] = [bounded, {"type": "object", "propertyNames": layer_keys, "additionalProperties": bounded,
                                "minProperties": 1}]
    components["ClampIntervention"]["properties"]["value"] = {**bounded, "description": "target projection"}
    _bound_heads(components["HeadsIntervention"]["properties"], shape, layer_keys, bounded)
    if shape.is_moe:
        _bound_experts(components["ExpertsIntervention"]["properties"], shape)
    else:  # a dense model refuses every `experts` intervention
        _drop_intervention(interventions["items"], "experts", "ExpertsIntervention")


def _bound_heads(properties: Schema, shape: ModelShape, layer_keys: Schema, factor: Schema) -> None:
    if shape.num_heads <= 0:
        return
    head = {"type": "integer", "minimum": 0, "maximum": shape.num_heads - 1}
    head_keys = {"type": "string", "enum": [str(h) for h in range(shape.num_heads)]}
    properties["mask"].update(propertyNames=layer_keys)
    properties["mask"]["additionalProperties"].update(items=head, maxItems=shape.num_heads)
    properties["scale"].update(propertyNames=layer_keys)
    properties["scale"]["additionalProperties"] = {"type": "object", "propertyNames": head_keys,
                                                   "additionalProperties": factor}


def _bound_experts(properties: Schema, shape: ModelShape) -> None:
    keys = {"type": "string", "enum": [str(layer) for layer in sorted(shape.experts_per_layer)]}
    expert = {"type": "integer", "minimum": 0, "maximum": max(shape.experts_per_layer.values()) - 1}
    for field in ("disable", "force"):
        properties[field].update(propertyNames=keys)
        properties[field]["additionalProperties"].update(items=expert)


def _drop_intervention(items: Schema, kind: str, model: str) -> None:
    """Remove one intervention type from the discriminated union of `interventions` items."""
    ref = f"#/components/schemas/{model}"
    items["oneOf"] = [option for option in items["oneOf"] if option.get("$ref") != ref]
    items.get("discriminator", {}).get("mapping", {}).pop(kind, None)


def _variant(prop: Schema, kind: str) -> Schema:
    """The `anyOf` alternative of type `kind` (pydantic spells optional fields as anyOf)."""
    return next(option for option in prop.get("anyOf", [prop]) if option.get("type") == kind)

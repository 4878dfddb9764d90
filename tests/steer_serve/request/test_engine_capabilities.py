"""The capability handshake on the API side: ranks' reports merge into the shape the resolver
checks, and what the engine cannot apply is a 400 naming the layer and why."""

from __future__ import annotations

import pytest

from steer_serve.engine_capabilities import LayerCapability, WorkerCapabilities, merge
from steer_serve.settings import Settings
from steer_serve.library.vector_library import VectorLibrary
from steer_serve.request.errors import SteeringError
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.request.steering_spec import SteeringSpec

DENSE = "dense layer (first_k_dense_replace = 1): its MLP has no router"


def _rank(rank: int, heads: int = 2) -> WorkerCapabilities:
    """A DeepSeek-V3-like rank: layer 0 dense, layers 1-3 bias-corrected grouped routing (8 experts, 2 groups)."""
    layers = [LayerCapability(layer=0, residual=True, heads=heads, first_head=rank * heads, experts_refused=DENSE)]
    layers += [LayerCapability(layer=i, residual=True, heads=heads, first_head=rank * heads, experts=8, top_k=2,
                               routing="sigmoid_bias_grouped_topk", expert_groups=2, groups_selected=1)
               for i in (1, 2, 3)]
    return WorkerCapabilities(rank=rank, architecture="deepseek", hidden_size=8, layers=layers)


def _resolver(tmp_path, workers: list[WorkerCapabilities]) -> SteeringResolver:
    shape = merge("unit", workers)
    return SteeringResolver(shape, VectorLibrary.load_dir(tmp_path, shape), Settings(vector_dir=tmp_path))


def _resolve(resolver: SteeringResolver, *interventions: dict):
    return resolver.resolve(SteeringSpec.model_validate({"interventions": list(interventions)}))


def test_ranks_merge_heads_add_up_and_moe_layers_come_from_the_engine() -> None:
    shape = merge("unit", [_rank(0), _rank(1)])
    assert shape.num_heads == 4 and shape.num_layers == 4 and shape.hidden_size == 8
    assert shape.experts_per_layer == {1: 8, 2: 8, 3: 8} and shape.experts_per_token == 2
    assert shape.expert_groups[1] == (2, 1) and shape.refusal("experts", 0) == DENSE


def test_a_layer_one_rank_cannot_apply_is_refused() -> None:
    worse = _rank(1)
    worse.layers[2].heads, worse.layers[2].heads_refused = 0, "no attention output projection at attn.o_proj"
    shape = merge("unit", [_rank(0), worse])
    assert shape.refusal("heads", 2) == "no attention output projection at attn.o_proj"


def test_experts_on_a_dense_layer_is_refused_with_the_reason(tmp_path) -> None:
    with pytest.raises(SteeringError, match="layer 0 cannot take `experts` edits on this model: dense layer"):
        _resolve(_resolver(tmp_path, [_rank(0)]), {"type": "experts", "disable": {"0": [1]}})


def test_heads_refused_by_the_engine_is_400_naming_the_layer(tmp_path) -> None:
    rank = _rank(0)
    rank.layers[3].heads, rank.layers[3].heads_refused = 0, "no attention output projection"
    with pytest.raises(SteeringError, match="layer 3 cannot take `heads` edits"):
        _resolve(_resolver(tmp_path, [rank]), {"type": "heads", "mask": {"3": [0]}})


def test_grouped_routing_keeps_two_selectable_experts_per_group(tmp_path) -> None:
    resolver = _resolver(tmp_path, [_rank(0)])
    _resolve(resolver, {"type": "experts", "disable": {"1": [0, 1]}})  # group 0 keeps 2 of 4
    with pytest.raises(SteeringError, match="expert group 0 .* keeps 1 enabled experts"):
        _resolve(resolver, {"type": "experts", "disable": {"1": [0, 1, 2]}})


def test_forced_experts_must_fit_in_the_kept_groups(tmp_path) -> None:
    with pytest.raises(SteeringError, match="forced experts span 2 expert groups"):
        _resolve(_resolver(tmp_path, [_rank(0)]), {"type": "experts", "force": {"2": [0, 7]}})


def test_no_worker_report_refuses_to_start() -> None:
    with pytest.raises(RuntimeError, match="no engine worker reported"):
        merge("unit", [])


def test_under_pipeline_parallelism_only_the_stage_that_runs_a_layer_decides() -> None:
    """Stage 0 runs layer 0, stage 1 runs layer 1; each reports the other's layer as not owned."""
    from steer_serve.engine_capabilities import LayerCapability, WorkerCapabilities, merge

    def stage(rank: int) -> WorkerCapabilities:
        layers = [LayerCapability(layer=i, owned=i == rank, residual=True, heads=2 if i == rank else 0,
                                  heads_refused=None if i == rank else "no attention output projection at o_proj")
                  for i in range(2)]
        return WorkerCapabilities(rank=rank, architecture="llama", hidden_size=8, layers=layers)

    shape = merge("m", [stage(0), stage(1)])
    assert shape.num_heads == 2 and shape.refusal("heads", 0) is None and shape.refusal("heads", 1) is None


def test_the_engines_projection_count_bounds_edits_per_layer(tmp_path) -> None:
    """The workers report K (--steering-projections); the API allows K edits per layer and phase,
    K + 1 is a 400 naming the setting, and ranks that disagree give the smallest."""
    eight = [_rank(0).model_copy(update={"projections_per_layer": 8}), _rank(1).model_copy(update={"projections_per_layer": 9})]
    resolver = _resolver(tmp_path, eight)
    assert resolver.shape.projections_per_layer == 8
    clamp = lambda value: {"type": "clamp", "vector": [1.0] + [0.0] * 7, "layers": [1], "value": value}  # noqa: E731
    assert len(_resolve(resolver, *(clamp(float(i)) for i in range(8))).projections) == 8
    with pytest.raises(SteeringError, match=r"9 ablate/clamp/feature-clamp edits on layer 1 .*at most 8 per layer "
                                            r"on this server \(--steering-projections\)"):
        _resolve(resolver, *(clamp(float(i)) for i in range(9)))
    default = _resolver(tmp_path, [_rank(0)])
    with pytest.raises(SteeringError, match="at most 2 per layer"):
        _resolve(default, *(clamp(float(i)) for i in range(3)))

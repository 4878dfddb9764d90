"""The hook maths on fake layers, against plain formulas (no server, no vLLM model).

A fake decoder layer has vLLM's shape where it matters: it returns `(hidden, residual)`, has
`self_attn.o_proj` (whose input is the per-head attention output) and an MoE router module of a
class named `GateLinear` under `mlp.gate`. One batch holds a steered request's prompt and
generated tokens next to an unsteered request; every check is written out with plain
tensor arithmetic, independent of the tables and hooks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from steer_serve.model_shape import ModelShape
from steer_serve.request import wire_format
from steer_serve.request.resolved_steering import (
    FORCE_LOGIT,
    ExpertRouting,
    HeadScales,
    LayerAddition,
    LayerProjection,
    ResolvedSteering,
)
from steer_serve_vllm.engine import opaque_sites
from steer_serve_vllm.engine.adapters.base import Adapter, LayerSites, RouterSite
from steer_serve_vllm.engine.layer_hooks import install_hooks
from steer_serve_vllm.engine.runtime import SteeringRuntime
from steer_serve_vllm.engine.sites import ModelSites
from steer_serve_vllm.engine.topk_encoders import TopKEncoder, TopKEncoders
from steer_serve_vllm.engine.vector_pool import steering_budget

# What the model adapters place on vLLM's Llama-family models, spelt out for the fake layers.
FAKE_ADAPTER = Adapter("fake", (), "layers", "pair", "self_attn.o_proj")

D, LAYERS, HEADS, HEAD_DIM, EXPERTS = 8, 3, 2, 4, 4
SHAPE = ModelShape("fake", hidden_size=D, num_layers=LAYERS, num_heads=HEADS,
                   experts_per_layer={layer: EXPERTS for layer in range(LAYERS)}, experts_per_token=2)
# the batch: "plain" (3 prompt tokens), then "steered" (last 2 prompt tokens + 1 generated token)
REQ_IDS, SCHEDULED, COMPUTED, PROMPT = ["plain", "steered"], [3, 3], [0, 2], [3, 4]
PLAIN, STEERED_PROMPT, STEERED_GENERATED = [0, 1, 2], [3, 4], [5]
T = 6


class GateLinear(nn.Linear):
    """Named like vLLM's MoE router; returns (logits, None) as vLLM's linear layers do."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return super().forward(x), None


class RecordingLinear(nn.Linear):
    """A linear layer that keeps the input it was called with (after any pre-hooks)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_input = x
        return super().forward(x)


class FakeAttention(nn.Module):
    def __init__(self, heads: int = HEADS) -> None:
        super().__init__()
        self.qkv = nn.Linear(D, heads * HEAD_DIM)
        self.o_proj = RecordingLinear(heads * HEAD_DIM, D, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o_proj(self.qkv(x))


class FakeMoE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = GateLinear(D, EXPERTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_logits, _ = self.gate(x)  # [T, E], after any forward hooks
        return self.last_logits


class FakeLayer(nn.Module):
    """Returns (hidden, residual) like vLLM's Llama-family layers."""

    def __init__(self, heads: int = HEADS) -> None:
        super().__init__()
        self.self_attn = FakeAttention(heads)
        self.mlp = FakeMoE()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.mlp(x)
        return self.self_attn(x), x

    def seen(self) -> dict[str, torch.Tensor]:
        return {"o_proj_input": self.self_attn.o_proj.last_input, "router_logits": self.mlp.last_logits}


class FakeModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(FakeLayer() for _ in range(LAYERS))


def _runtime(steering: ResolvedSteering) -> SteeringRuntime:
    runtime = SteeringRuntime(SHAPE, max_reqs=4, max_tokens=16, device=torch.device("cpu"), dtype=torch.float32)
    runtime.add_request("steered", {wire_format.EXTRA_ARGS_KEY: wire_format.encode(steering)})
    runtime.prepare_step(REQ_IDS, np.array(SCHEDULED), np.array(COMPUTED), np.array(PROMPT))
    return runtime


def _run(steering: ResolvedSteering, max_dose: float | None = None, skip_unused: bool = False):
    """(hooked outputs, unhooked outputs, the hooked model) of layer 1 on one random batch."""
    torch.manual_seed(0)
    model = FakeModel()
    x = torch.randn(T, D)
    plain = model.layers[1](x)
    plain_seen = model.layers[1].seen()
    install_hooks(sites(model.layers), _runtime(steering), max_dose=max_dose, skip_unused=skip_unused)
    return model.layers[1](x), plain, model.layers[1].seen(), plain_seen


def _vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(D).astype(np.float32)


def sites(layers: nn.ModuleList, tp_rank: int = 0, tp_size: int = 1) -> ModelSites:
    """The hook sites of the fake layers: o_proj input, and the GateLinear router (softmax top-k)."""
    local_heads = HEADS // tp_size
    placed = [LayerSites(layer.self_attn.o_proj, None,
                         RouterSite("softmax_topk", EXPERTS, 2, logits=layer.mlp.gate)) for layer in layers]
    return ModelSites(FAKE_ADAPTER, layers, placed, local_heads, tp_rank * local_heads)


def test_addition_is_added_to_the_residual_of_the_steered_generated_tokens_only() -> None:
    v = _vector(1)
    (hidden, residual), (plain_hidden, plain_residual), _, _ = _run(
        ResolvedSteering(additions=(LayerAddition(1, "generated", v),)))
    expected = plain_residual.clone()
    expected[STEERED_GENERATED] += torch.from_numpy(v)
    assert torch.equal(hidden, plain_hidden)
    assert torch.allclose(residual, expected, atol=1e-6)


def test_clamp_sets_the_streams_component_and_ablate_zeroes_it() -> None:
    u = _vector(2)
    u /= np.linalg.norm(u)
    unit = torch.from_numpy(u)
    for value in (0.0, 1.5):
        steering = ResolvedSteering(projections=(LayerProjection(1, "all", u, value),))
        (hidden, residual), (_, plain_residual), _, _ = _run(steering)
        stream = hidden + residual  # the layer's output
        steered = STEERED_PROMPT + STEERED_GENERATED
        assert torch.allclose(stream[steered] @ unit, torch.full((3,), value), atol=1e-5)
        # only the component along u changed
        before = hidden[steered] + plain_residual[steered]
        rest = lambda s: s - (s @ unit)[:, None] * unit  # noqa: E731
        assert torch.allclose(rest(stream[steered]), rest(before), atol=1e-5)
        assert torch.equal(residual[PLAIN], plain_residual[PLAIN])


def test_two_projections_on_one_layer_apply_in_order() -> None:
    a, b = _vector(3), _vector(4)
    a /= np.linalg.norm(a)
    b /= np.linalg.norm(b)
    steering = ResolvedSteering(projections=(LayerProjection(1, "prompt", a, 0.0), LayerProjection(1, "prompt", b, 2.0)))
    (hidden, residual), (_, plain_residual), _, _ = _run(steering)
    stream = hidden[STEERED_PROMPT] + plain_residual[STEERED_PROMPT]
    ua, ub = torch.from_numpy(a), torch.from_numpy(b)
    stream = stream - (stream @ ua)[:, None] * ua  # ablate a
    stream = stream + (2.0 - stream @ ub)[:, None] * ub  # then clamp b to 2
    assert torch.allclose(hidden[STEERED_PROMPT] + residual[STEERED_PROMPT], stream, atol=1e-5)
    assert torch.equal(residual[STEERED_GENERATED], plain_residual[STEERED_GENERATED])


def test_head_scales_multiply_each_heads_slice_of_the_o_proj_input() -> None:
    scales = np.array([0.0, 2.5], dtype=np.float32)
    _, _, seen, plain_seen = _run(ResolvedSteering(head_scales=(HeadScales(1, "all", scales),)))
    expected = plain_seen["o_proj_input"].clone().view(T, HEADS, HEAD_DIM)
    steered = STEERED_PROMPT + STEERED_GENERATED
    expected[steered] *= torch.from_numpy(scales)[None, :, None]
    assert torch.allclose(seen["o_proj_input"], expected.view(T, -1), atol=1e-6)


def test_router_bias_disables_with_minus_inf_and_forces_with_a_large_logit() -> None:
    routing = ExpertRouting(1, "prompt", disabled=(0,), forced=(3,))
    (hidden, _), _, seen, plain_seen = _run(ResolvedSteering(expert_routing=(routing,)))
    logits, plain = seen["router_logits"], plain_seen["router_logits"]
    assert torch.equal(logits[PLAIN + STEERED_GENERATED], plain[PLAIN + STEERED_GENERATED])
    assert torch.isneginf(logits[STEERED_PROMPT, 0]).all()
    assert torch.allclose(logits[STEERED_PROMPT, 3], plain[STEERED_PROMPT, 3] + FORCE_LOGIT)
    assert torch.equal(logits[STEERED_PROMPT, 1:3], plain[STEERED_PROMPT, 1:3])


def test_dose_guardrail_caps_the_addition_relative_to_the_layer_output() -> None:
    v = 100 * _vector(5)
    (hidden, residual), (plain_hidden, plain_residual), _, _ = _run(
        ResolvedSteering(additions=(LayerAddition(1, "all", v),)), max_dose=0.5)
    delta = residual - plain_residual
    limit = 0.5 * (plain_hidden + plain_residual).norm(dim=-1)  # [T]
    steered = STEERED_PROMPT + STEERED_GENERATED
    assert torch.allclose(delta[steered].norm(dim=-1), limit[steered], rtol=1e-5)
    direction = torch.from_numpy(v) / torch.from_numpy(v).norm()
    assert torch.allclose(delta[steered] / delta[steered].norm(dim=-1, keepdim=True), direction.expand(3, D), atol=1e-5)
    assert torch.equal(delta[PLAIN], torch.zeros(3, D))


@pytest.mark.parametrize("skip_unused", [False, True])
def test_an_unsteered_step_leaves_every_output_exact(skip_unused: bool) -> None:
    torch.manual_seed(0)
    model = FakeModel()
    x = torch.randn(T, D)
    plain = model.layers[2](x)
    plain_seen = model.layers[2].seen()
    runtime = SteeringRuntime(SHAPE, max_reqs=4, max_tokens=16, device=torch.device("cpu"), dtype=torch.float32)
    runtime.prepare_step(REQ_IDS, np.array(SCHEDULED), np.array(COMPUTED), np.array(PROMPT))
    install_hooks(sites(model.layers), runtime, skip_unused=skip_unused)
    hidden, residual = model.layers[2](x)
    assert torch.equal(hidden, plain[0]) and torch.equal(residual, plain[1])
    assert torch.equal(model.layers[2].seen()["router_logits"], plain_seen["router_logits"])
    assert torch.equal(model.layers[2].seen()["o_proj_input"], plain_seen["o_proj_input"])


def test_tensor_parallel_rank_scales_only_its_own_heads() -> None:
    """At TP=2 with 2 heads, rank 1 holds head 1: its o_proj input is [T, 1 * head_dim]."""
    scales = np.array([3.0, 0.5], dtype=np.float32)
    runtime = _runtime(ResolvedSteering(head_scales=(HeadScales(0, "all", scales),)))
    layer = FakeLayer(heads=1)  # this rank's shard: one head
    install_hooks(sites(nn.ModuleList([layer, FakeLayer(), FakeLayer()]), tp_rank=1, tp_size=2), runtime)
    attn = torch.randn(T, HEAD_DIM)  # [T, 1 * head_dim]
    layer.self_attn.o_proj(attn)
    expected = attn.clone()
    expected[STEERED_PROMPT + STEERED_GENERATED] *= 0.5
    assert torch.allclose(layer.self_attn.o_proj.last_input, expected)


def test_eight_projections_on_one_layer_apply_in_order_with_k_8() -> None:
    """--steering-projections 8: eight clamps on one layer, each read after the ones before it."""
    units = [_vector(20 + i) / np.linalg.norm(_vector(20 + i)) for i in range(8)]
    steering = ResolvedSteering(projections=tuple(LayerProjection(1, "all", u, 0.5 * i) for i, u in enumerate(units)))
    torch.manual_seed(0)
    model = FakeModel()
    x = torch.randn(T, D)
    _, plain_residual = model.layers[1](x)
    budget = steering_budget(LAYERS, D, 4, max_num_seqs=4, projections=8)
    runtime = SteeringRuntime(SHAPE, max_reqs=4, max_tokens=16, device=torch.device("cpu"), dtype=torch.float32,
                              budget=budget)
    runtime.add_request("steered", {wire_format.EXTRA_ARGS_KEY: wire_format.encode(steering)})
    runtime.prepare_step(REQ_IDS, np.array(SCHEDULED), np.array(COMPUTED), np.array(PROMPT))
    install_hooks(sites(model.layers), runtime)
    hidden, residual = model.layers[1](x)
    steered = STEERED_PROMPT + STEERED_GENERATED
    stream = hidden[steered] + plain_residual[steered]
    for i, u in enumerate(units):
        unit = torch.from_numpy(u)
        stream = stream + (0.5 * i - stream @ unit)[:, None] * unit
    assert runtime.tables.num_projections == 8
    assert torch.allclose(hidden[steered] + residual[steered], stream, atol=1e-5)
    assert torch.equal(residual[PLAIN], plain_residual[PLAIN])


@pytest.mark.parametrize("skip_unused", [False, True])
def test_a_topk_feature_clamp_reads_its_feature_through_the_layers_full_encoder(skip_unused: bool) -> None:
    """A layer holding a TopK encoder: the steered tokens' TopK projection counts the feature only
    where it is among the k largest pre-activations (and positive); the plain request is untouched."""
    rng = np.random.default_rng(9)
    w_enc = rng.standard_normal((D, 16)).astype(np.float32)  # [D, F]
    offset = rng.standard_normal(16).astype(np.float32) * 0.1  # [F]
    w_dec = _vector(30)
    encoder = TopKEncoder("tk", "sha", torch.from_numpy(w_enc), torch.from_numpy(offset), 3, False)
    clamp = LayerProjection(1, "all", w_dec, 2.0, encoder=w_enc[:, 4].copy(), offset=float(offset[4]), threshold=0.0, topk=3)
    torch.manual_seed(0)
    model = FakeModel()
    x = torch.randn(T, D)
    _, plain_residual = model.layers[1](x)
    runtime = _runtime(ResolvedSteering(projections=(clamp,)))
    runtime.topk_encoders = TopKEncoders({1: encoder})
    assert "topk" in runtime.kinds_in_step
    install_hooks(sites(model.layers), runtime, skip_unused=skip_unused)
    hidden, residual = model.layers[1](x)
    stream = hidden + plain_residual
    pre = stream @ torch.from_numpy(w_enc) + torch.from_numpy(offset)  # [T, F]
    top = torch.topk(pre, 3, dim=-1).indices
    f = torch.where((top == 4).any(dim=-1), pre[:, 4].clamp_min(0.0), torch.zeros(T))  # SAELens's TopK, by hand
    steered = STEERED_PROMPT + STEERED_GENERATED
    expected = stream[steered] + (2.0 - f[steered])[:, None] * torch.from_numpy(w_dec)
    assert torch.allclose(hidden[steered] + residual[steered], expected, atol=1e-5)
    assert torch.equal(residual[PLAIN], plain_residual[PLAIN])


def test_eager_hooks_run_only_the_projection_slots_the_step_fills() -> None:
    """K = 8 slots; the step's requests fill 3 at layer 1 (prompt phase) and 1 at layer 2: skipping
    hooks project at those layers only (no projection work on layer 0) and give the result of the
    hooks that run every layer (CUDA graphs) bit for bit."""
    units = [_vector(40 + i) / np.linalg.norm(_vector(40 + i)) for i in range(4)]
    steering = ResolvedSteering(projections=(
        LayerProjection(1, "prompt", units[0], 0.5), LayerProjection(1, "all", units[1], 0.0),
        LayerProjection(1, "prompt", units[2], 1.5), LayerProjection(2, "generated", units[3], 2.0)))
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(1))
    outputs = []
    for skip_unused in (False, True):
        budget = steering_budget(LAYERS, D, 4, max_num_seqs=4, projections=8)
        runtime = SteeringRuntime(SHAPE, max_reqs=4, max_tokens=16, device=torch.device("cpu"), dtype=torch.float32,
                                  budget=budget)
        runtime.add_request("steered", {wire_format.EXTRA_ARGS_KEY: wire_format.encode(steering)})
        runtime.prepare_step(REQ_IDS, np.array(SCHEDULED), np.array(COMPUTED), np.array(PROMPT))
        torch.manual_seed(0)
        model = FakeModel()
        install_hooks(sites(model.layers), runtime, skip_unused=skip_unused)
        outputs.append([model.layers[i](x) for i in range(3)])
    assert runtime.projections_in_step == {1: 3, 2: 1}
    for (hidden, residual), (eager_hidden, eager_residual) in zip(*outputs):
        assert torch.equal(hidden, eager_hidden) and torch.equal(residual, eager_residual)
    runtime.remove_request("steered")
    runtime.prepare_step(["plain"], np.array([2]), np.array([0]), np.array([2]))
    assert runtime.projections_in_step == {}


def _every_kind() -> ResolvedSteering:
    u, w = _vector(50), _vector(51)
    return ResolvedSteering(additions=(LayerAddition(1, "generated", _vector(52)), LayerAddition(2, "all", _vector(53))),
                            projections=(LayerProjection(1, "all", u / np.linalg.norm(u), 0.5),
                                         LayerProjection(1, "prompt", w / np.linalg.norm(w), 0.0)),
                            head_scales=(HeadScales(1, "all", np.array([0.0, 2.0], dtype=np.float32)),),
                            expert_routing=(ExpertRouting(2, "prompt", disabled=(0,), forced=(3,)),))


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outputs = []
    for layer in model.layers:
        outputs += [*layer(x), *layer.seen().values()]
    return outputs


@pytest.mark.parametrize("skip_unused", [False, True])
def test_opaque_ops_apply_exactly_the_hooks_edits(skip_unused: bool) -> None:
    """Compiled engines call each site's edit through an opaque custom op: every output, bit for bit."""
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(2))
    results = []
    for opaque in (False, True):
        torch.manual_seed(0)
        model = FakeModel()
        install_hooks(sites(model.layers), _runtime(_every_kind()), max_dose=4.0, skip_unused=skip_unused,
                      opaque=opaque)
        results.append(_outputs(model, x))
    for hooked, opaque in zip(*results):
        assert torch.equal(hooked, opaque)


class _Caller(nn.Module):
    """Calls a decoder layer as vLLM's compiled model forward does (its hooks inlined into one graph)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> Any:
        return self.layer(x)


def test_a_compiled_layer_holds_one_node_per_site_and_branches_per_step_inside_it() -> None:
    """Under torch.compile an opaque site is one graph node (traced hooks are dozens per layer), and on
    CPU the op still skips per step what no request uses: a step with other kinds, after the compile,
    gives the eager hooks' results without a retrace."""
    graphs: list[torch.fx.GraphModule] = []

    def keep_graph(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
        graphs.append(gm)
        return gm.forward

    x = torch.randn(T, D, generator=torch.Generator().manual_seed(3))
    runtimes, layers = [], []
    for opaque in (True, False):
        torch.manual_seed(0)
        model = FakeModel()
        runtime = _runtime(_every_kind())
        install_hooks(sites(model.layers), runtime, skip_unused=opaque, opaque=opaque)
        runtimes.append(runtime)
        layers.append(model.layers[1])
    torch._dynamo.reset()
    compiled = torch.compile(_Caller(layers[0]), backend=keep_graph, fullgraph=True, dynamic=False)
    for steering in (_every_kind(), ResolvedSteering(additions=(LayerAddition(1, "all", _vector(54)),))):
        for runtime in runtimes:
            runtime.add_request("next", {wire_format.EXTRA_ARGS_KEY: wire_format.encode(steering)})
            runtime.prepare_step(["plain", "next"], np.array(SCHEDULED), np.array(COMPUTED), np.array(PROMPT))
        # x.clone(): this fake layer returns its input as the residual, which the compiled op edits in
        # place (vLLM's layers never do: their residual is the next layer's, written in place there too)
        assert all(torch.equal(a, b) for a, b in zip(compiled(x.clone()), layers[1](x)))
    ops = [node for node in graphs[0].graph.nodes if "steer_serve" in str(node.target)]
    assert len(graphs) == 1, "a new step's kinds must not retrace"
    assert sorted(str(node.target) for node in ops) == [
        "steer_serve.head_scale", "steer_serve.layer_output", "steer_serve.router_bias"]
    traced = torch.compile(_Caller(layers[1]), backend=keep_graph, fullgraph=True, dynamic=False)
    traced(x)
    assert len(graphs[1].graph.nodes) > len(graphs[0].graph.nodes) + 40


def test_an_idle_step_skips_every_op_and_a_new_install_starts_not_idle() -> None:
    """`set_step_idle(True)` (the worker's call for a step nobody steers or observes) makes every op
    return at once, so a steered token would go unedited: the flag must never outlive the step it
    was set for into a new engine. install_hooks clears it."""
    x = torch.randn(T, D, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    eager = FakeModel()
    install_hooks(sites(eager.layers), _runtime(_every_kind()), skip_unused=True)
    expected = _outputs(eager, x)
    torch.manual_seed(0)
    model = FakeModel()
    install_hooks(sites(model.layers), _runtime(_every_kind()), skip_unused=True, opaque=True)
    opaque_sites.set_step_idle(True)
    skipped = _outputs(model, x)
    assert not all(torch.equal(a, b) for a, b in zip(expected, skipped))
    torch.manual_seed(0)
    model = FakeModel()
    install_hooks(sites(model.layers), _runtime(_every_kind()), skip_unused=True, opaque=True)
    assert all(torch.equal(a, b) for a, b in zip(expected, _outputs(model, x)))


def test_an_idle_call_returns_before_the_dispatcher_and_a_live_call_goes_through_it(monkeypatch) -> None:
    """Inductor's Python wrapper and dynamo's fake-tensor pass call the ops as `OpOverload.__call__`,
    with keyword arguments too. On an idle step the call returns in Python, before the dispatcher
    parses its arguments (the idle cost is that round trip); otherwise the dispatcher runs as before:
    it checks the schema, and the kernel edits the rows in place."""
    op = torch.ops.steer_serve.head_scale.default
    opaque_sites.set_step_idle(True)
    try:
        assert op(rows="not a tensor", layer=0) is None
    finally:
        opaque_sites.set_step_idle(False)
    with pytest.raises(RuntimeError, match="Expected a value of type 'Tensor' for argument 'rows'"):
        op(rows="not a tensor", layer=0)
    monkeypatch.setitem(opaque_sites._HEADS, 999, lambda rows: rows * 2)
    rows = torch.ones(2, 3)
    op(rows=rows, layer=999)
    assert torch.equal(rows, torch.full((2, 3), 2.0))

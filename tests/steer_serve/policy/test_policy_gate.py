"""The policy applied by the request gateway: each rule allowed and refused (403 naming the rule),
for two callers with different keys; presets and arms checked at load; reload keeps the old
policy on a mistake. A refused request gets no body for the engine (the gateway returns before)."""

from __future__ import annotations

import json

import pytest

from steer_serve.experiments.arm_selector import ArmSelector
from steer_serve.experiments.config import ExperimentConfigError
from harness.experiments import control_follower
from steer_serve.policy.gate import PolicyGate, key_hash
from steer_serve.policy.loader import PolicyError
from steer_serve.library.presets import PresetError, PresetLibrary
from steer_serve_vllm.api.gateway import Forward, Rejection, RequestGateway
from steer_serve.settings import Settings
from steer_serve.request.steering_resolver import SteeringResolver
from harness.experiments import experiment, write_experiments
from harness.libraries import SHAPE, library, vector

ALICE, BOB = {"authorization": "Bearer alice-key"}, {"authorization": "Bearer bob-key"}
INLINE = [0.5] * SHAPE.hidden_size
POLICY = f"""
default:
  inline_vectors: false
  kinds: [add]
  vectors: {{allow: ["v*"], deny: [vbad]}}
  presets: {{allow: [light]}}
  layers: ["1-2"]
  max_abs_scale: 2
  max_dose: 0.5
  max_interventions: 2
  override_experiments: false
callers:
  bob:
    keys_sha256: ["{key_hash('bob-key')}"]
    kinds: [add, ablate]
    vectors: {{allow: ["sha256:{{w_hash}}", v]}}
    max_abs_scale: 8
    observe: [probes]
"""


@pytest.fixture
def world(tmp_path):
    """Vectors v, vbad (layers 1, 2), w and w_copy (layer 3, same numbers); presets light (v at 0.5) and
    deep (w); a policy."""
    w = vector(layers=(3,), seed=2)
    lib = library(tmp_path, v=vector(layers=(1, 2)), vbad=vector(layers=(1, 2), seed=1), w=w, w_copy=w)
    presets_dir = tmp_path / "presets"
    presets_dir.mkdir()
    (presets_dir / "light.yaml").write_text("interventions: [{type: add, vector: v, scale: 0.5}]\n")
    (presets_dir / "deep.yaml").write_text("interventions: [{type: add, vector: w, scale: 0.5}]\n")
    plain = SteeringResolver(SHAPE, lib, Settings(vector_dir=tmp_path))
    presets = PresetLibrary(presets_dir, plain.resolve, poll_s=0)
    resolver = plain.with_presets(presets)
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.replace("{w_hash}", lib.get("w").record["content_sha256"]))
    return tmp_path, resolver, presets, path


def _gateway(world, arms=None) -> RequestGateway:
    _, resolver, presets, path = world
    gate = PolicyGate(path, resolver.library, presets, resolver)
    return RequestGateway(resolver, arms, gate)


def _send(gateway: RequestGateway, steering: dict | None, headers: dict, **fields) -> Rejection | Forward:
    body = {"model": "m", "prompt": "x", **fields} | ({"steering": steering} if steering is not None else {})
    return gateway.prepare("/v1/completions", json.dumps(body).encode(), headers)


def _add(vector="v", **fields) -> dict:
    return {"interventions": [{"type": "add", "vector": vector, **fields}]}


def _refused(decision, rule: str) -> Rejection:
    assert isinstance(decision, Rejection) and decision.status == 403, decision
    assert decision.rule == rule and f"policy rule {rule}" in decision.message
    assert json.loads(decision.body())["error"]["type"] == "PermissionDeniedError"
    return decision


def _allowed(decision) -> Forward:
    assert isinstance(decision, Forward) and decision.body is not None, decision
    return decision


# (rule, steering allowed for alice (default rule), steering refused for alice)
DEFAULT_CASES = [
    ("default.inline_vectors", _add("v", scale=1.0), _add(INLINE, layers=[1])),
    ("default.kinds", _add("v"), {"interventions": [{"type": "ablate", "vector": "v"}]}),
    ("default.vectors", _add("v"), _add("vbad")),
    ("default.presets", {"preset": "light"}, {"preset": "deep"}),
    ("default.layers", _add("v", layers=[1]), _add("v")),  # (layers narrowed to [1] below) v's default: 1, 2
    ("default.max_abs_scale", _add("v", scale=-2), _add("v", scale={"1": 1.0, "2": 2.5})),
    ("default.max_interventions", {"preset": "light", "interventions": _add("v")["interventions"]},
     {"preset": "light", "interventions": _add("v")["interventions"] * 2}),
]


@pytest.mark.parametrize("rule, allowed, refused", DEFAULT_CASES, ids=[c[0] for c in DEFAULT_CASES])
def test_each_default_rule_allows_and_refuses(world, rule, allowed, refused) -> None:
    gateway = _gateway(world)
    if rule == "default.layers":
        gateway.policy.policy.default.layers = [1]
    _allowed(_send(gateway, allowed, ALICE))
    _refused(_send(gateway, refused, ALICE), rule)


def test_a_named_vector_is_checked_on_its_default_layers(world) -> None:
    gateway = _gateway(world)
    gateway.policy.policy.default.vectors.allow = ["*"]
    _refused(_send(gateway, _add("w"), ALICE), "default.layers")  # w lives on layer 3 only


def test_the_second_caller_has_its_own_rule(world) -> None:
    gateway = _gateway(world)
    ablate = {"interventions": [{"type": "ablate", "vector": "w"}]}
    _refused(_send(gateway, ablate, ALICE), "default.kinds")
    _allowed(_send(gateway, ablate, BOB))  # bob: ablate allowed, w allowed by content hash, any layer
    _allowed(_send(gateway, _add("w", scale=7.5), BOB))
    _refused(_send(gateway, _add("w", scale=8.5), BOB), "bob.max_abs_scale")
    _refused(_send(gateway, _add("vbad"), BOB), "bob.vectors")  # neither named nor w's numbers
    _allowed(_send(gateway, _add(INLINE, layers=[4]), BOB))  # fields bob leaves out do not restrict
    _refused(_send(gateway, _add(INLINE, layers=[4]), {"authorization": "Bearer who-knows"}), "default.inline_vectors")
    _refused(_send(gateway, _add(INLINE, layers=[4]), {}), "default.inline_vectors")


def test_a_vector_renamed_keeps_its_content_hash(world) -> None:
    _allowed(_send(_gateway(world), {"interventions": [{"type": "ablate", "vector": "w_copy"}]}, BOB))


def test_the_dose_limit_travels_with_the_steering(world) -> None:
    gateway = _gateway(world)
    alice, bob = _allowed(_send(gateway, _add("v"), ALICE)), _allowed(_send(gateway, _add("v"), BOB))
    assert alice.fingerprint != bob.fingerprint  # same edits, different dose limit: different slots
    from steer_serve.request import wire_format
    payloads = [json.loads(d.body)["vllm_xargs"][wire_format.EXTRA_ARGS_KEY] for d in (alice, bob)]
    assert [wire_format.decode(p)[1].max_dose for p in payloads] == [0.5, None]


def test_observe_fields_need_the_rule_also_through_vllm_xargs(world) -> None:
    from steer_serve.request.observe_spec import ObserveResolver
    from steer_serve_vllm.api.observe_gateway import ObserveGate

    _, resolver, presets, path = world
    gateway = RequestGateway(resolver, None, PolicyGate(path, resolver.library, presets, resolver),
                             ObserveGate(ObserveResolver(SHAPE, resolver.library)))
    probes = {"probes": [{"name": "p", "vector": "v", "layer": 1}]}
    assert _allowed(_send(gateway, None, BOB, observe=probes)).observation is not None
    _refused(_send(gateway, None, ALICE, observe=probes), "default.observe")
    capture = {"capture": {"layers": [1], "positions": "last"}}
    _refused(_send(gateway, None, BOB, observe=capture), "bob.observe")
    _refused(_send(gateway, None, BOB, vllm_xargs={"observe": json.dumps(capture)}), "bob.observe")


def test_unknown_observe_fields_are_refused(world) -> None:
    gateway = _gateway(world)
    _refused(_send(gateway, None, BOB, observe={"residual": [3]}), "bob.observe")
    _refused(_send(gateway, _add("v"), ALICE, observe=True), "default.observe")
    assert isinstance(_send(gateway, None, BOB), Forward)


def test_overriding_an_experiment_arm_follows_the_rule(world) -> None:
    tmp_path, resolver, _, _ = world
    directory = write_experiments(tmp_path / "exp", experiment("tone", [
        {"name": "control", "weight": 1, "control": True},
        {"name": "inline", "weight": 1, "interventions": [{"type": "ablate", "vector": INLINE, "layers": [4]}]}]))
    gateway = _gateway(world)
    gateway.arms = ArmSelector(directory, resolver, control_follower(tmp_path / "c"))
    _refused(_send(gateway, _add("v"), ALICE, user="u1"), "default.override_experiments")
    _allowed(_send(gateway, _add("v"), ALICE))  # no unit: not in the experiment
    _allowed(_send(gateway, _add("v"), BOB, user="u1"))  # bob may override
    served = [_send(gateway, None, ALICE, user=f"u{i}") for i in range(20)]
    assert {d.assignment.arm.name for d in served} == {"control", "inline"}  # arms are never refused


def test_arms_are_checked_and_dosed_at_load(world) -> None:
    tmp_path, resolver, presets, path = world
    gate = PolicyGate(path, resolver.library, presets, resolver)
    inline_arm = [{"type": "add", "vector": INLINE, "layers": [1]}]
    bad = write_experiments(tmp_path / "bad", experiment("x", [{"name": "control", "weight": 1, "control": True},
                                                              {"name": "t", "weight": 1, "interventions": inline_arm}]))
    with pytest.raises(ExperimentConfigError, match="arm 't' breaks policy rule default.inline_vectors"):
        ArmSelector(bad, resolver, control_follower(tmp_path / "c"), gate.vet_experiment)
    good = write_experiments(tmp_path / "good", experiment("y", [{"name": "control", "weight": 1, "control": True},
                                                                {"name": "t", "weight": 1, "preset": "light"}]))
    selector = ArmSelector(good, resolver, control_follower(tmp_path / "c2"), gate.vet_experiment)
    assert selector.experiments[0].arms[1].steering.max_dose == 0.5  # the arms rule (here: default) doses arms


def test_a_preset_a_rule_allows_must_fit_that_rule(world) -> None:
    tmp_path, resolver, presets, path = world
    (tmp_path / "presets" / "light.yaml").write_text("interventions: [{type: add, vector: v, scale: 5}]\n")
    with pytest.raises(PolicyError, match=r"default.presets names preset 'light', which breaks rule "
                                          r"default.max_abs_scale"):
        PolicyGate(path, resolver.library, presets, resolver)
    path.write_text(path.read_text().replace("allow: [light]", "allow: [l*]"))  # by a glob: 403 per request
    gateway = RequestGateway(resolver, None, PolicyGate(path, resolver.library, presets, resolver))
    _refused(_send(gateway, {"preset": "light"}, ALICE), "default.max_abs_scale")


def test_runtime_preset_registration_is_checked(world) -> None:
    _, resolver, presets, _ = world
    gate = _gateway(world).policy
    presets.vet = gate.check_preset  # as the API plugin wires it
    with pytest.raises(PresetError, match="policy rule default.kinds"):
        presets.register({"name": "light", "interventions": [{"type": "ablate", "vector": "v"}]}, replace=True)
    presets.register({"name": "other", "interventions": [{"type": "ablate", "vector": "v"}]})  # no rule allows it


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace('allow: [light]', 'allow: [lite]'), "default.presets.allow[0]: unknown preset 'lite'"),
    (lambda t: t.replace('deny: [vbad]', 'deny: [vbda]'), "default.vectors.deny[0]: unknown vector 'vbda'"),
    (lambda t: t.replace('"1-2"', '"1-6"'), "default.layers: layer 6 does not exist"),
    (lambda t: t.replace('v*', 'v[*'), "default.vectors.allow: Value error, [0] bad glob 'v[*'"),
    (lambda t: t.replace('max_abs_scale: 8', 'max_abs_scal: 8'), "callers.bob.max_abs_scal: Extra inputs"),
])
def test_reload_with_a_mistake_keeps_the_old_policy(world, edit, fragment) -> None:
    _, _, _, path = world
    gateway = _gateway(world)
    good = path.read_text()
    path.write_text(edit(good))
    with pytest.raises(PolicyError) as info:
        gateway.policy.reload([])
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value), str(info.value)
    _refused(_send(gateway, _add("vbad"), ALICE), "default.vectors")  # the old rules still hold
    with pytest.raises(PolicyError, match=fragment.replace("[", r"\[").replace("*", r"\*")):
        PolicyGate(path, gateway.resolver.library, gateway.resolver.presets, gateway.resolver)  # ... and at start
    path.write_text(good.replace("deny: [vbad]", "deny: []"))
    gateway.policy.reload([])
    _allowed(_send(gateway, _add("vbad"), ALICE))


def test_the_shipped_production_policy_fits_the_shipped_library_presets_and_experiments(tmp_path) -> None:
    from steer_serve.model_shape import ModelShape
    from steer_serve.settings import REPO_CONFIGS
    from steer_serve.library.vector_library import VectorLibrary

    shape = ModelShape(model_id="SmolLM2-135M-Instruct", hidden_size=576, num_layers=30, num_heads=9)
    lib = VectorLibrary.load_dir(REPO_CONFIGS / "vectors", shape)
    plain = SteeringResolver(shape, lib, Settings())
    presets = PresetLibrary(REPO_CONFIGS / "presets", plain.resolve)
    resolver = plain.with_presets(presets)
    gate = PolicyGate(REPO_CONFIGS / "policies" / "production.yaml", lib, presets, resolver)
    selector = ArmSelector(REPO_CONFIGS / "experiments", resolver, control_follower(tmp_path / "c"), gate.vet_experiment)
    assert {arm.steering.max_dose for e in selector.experiments for arm in e.arms if arm.steering} == {0.5}
    gateway = RequestGateway(resolver, None, gate)
    _allowed(_send(gateway, {"preset": "gloomy_light"}, {}))
    _allowed(_send(gateway, _add("gloomy", scale=0.6), {}))
    _refused(_send(gateway, _add([0.1] * 576, layers=[8]), {}), "default.inline_vectors")
    _refused(_send(gateway, _add("gloomy_pca"), {}), "default.vectors")
    _refused(_send(gateway, _add("gloomy", scale=1.5), {}), "default.max_abs_scale")


def test_the_caller_is_the_key_vllm_checks(world) -> None:
    """vLLM reads the first Authorization header, unstripped; so do the middleware and the gate."""
    from steer_serve.policy.gate import bearer_key
    from steer_serve_vllm.api.middleware import _header_map

    headers = _header_map([(b"Authorization", b"Bearer bob-key"), (b"authorization", b"Bearer alice-key")])
    assert bearer_key(headers) == "bob-key"
    assert _gateway(world).policy.caller(headers).name == "bob"
    assert bearer_key({"authorization": "Bearer  bob-key"}) == " bob-key"  # vLLM would not accept it either
    assert bearer_key({"authorization": "Basic bob-key"}) is None and bearer_key({}) is None

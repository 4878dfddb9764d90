"""TopK clamps in the API process: allowed only for the TopK SAEs whose full encoder the engine
reports holding (--topk-clamp-saes, the same version), refused otherwise with a 400 naming the
field and the setting; the resolved edit carries k across the wire and into the fingerprint."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from harness.saes import random_sae, write_library
from steer_serve.engine_capabilities import LayerCapability, WorkerCapabilities, merge
from steer_serve.library.sae_library import SAELibrary
from steer_serve.library.vector_library import VectorLibrary
from steer_serve.model_shape import ModelShape
from steer_serve.request import wire_format
from steer_serve.request.errors import SteeringError
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.request.steering_spec import SteeringSpec
from steer_serve.settings import Settings

D = 32
CLAMP = {"interventions": [{"type": "feature", "sae": "tk", "feature": 5, "clamp": 2.0}]}


def _resolver(tmp_path: Path, held: dict[str, str]) -> SteeringResolver:
    write_library(tmp_path / "saes", [random_sae("tk", 1, "topk", D, seed=4, k=8)])
    shape = ModelShape("tiny", hidden_size=D, num_layers=4, topk_encoders=held)
    saes = SAELibrary(tmp_path / "saes", shape, poll_s=0)
    return SteeringResolver(shape, VectorLibrary.load_dir(tmp_path, shape), Settings(vector_dir=tmp_path), saes=saes)


def _sha(resolver: SteeringResolver) -> str:
    return resolver.saes.get("tk").sae.content_sha256()


def test_a_topk_clamp_resolves_when_the_engine_holds_that_encoder(tmp_path: Path) -> None:
    resolver = _resolver(tmp_path, {})
    held = _resolver(tmp_path, {"tk": _sha(resolver)})
    (proj,) = held.resolve(SteeringSpec.model_validate(CLAMP)).projections
    assert (proj.layer, proj.topk, proj.threshold, proj.value) == (1, 8, 0.0, 2.0)
    steering = held.resolve(SteeringSpec.model_validate(CLAMP))
    fingerprint, decoded = wire_format.decode(wire_format.encode(steering))
    assert decoded.projections[0].topk == 8 and fingerprint == steering.fingerprint
    assert replace(steering, projections=(replace(proj, topk=0),)).fingerprint != steering.fingerprint


@pytest.mark.parametrize("held, fragment", [
    ({}, "needs its full encoder on the engine"),
    ({"other": "0" * 64}, "TopK encoders for: other (steer-serve serve --topk-clamp-saes NAME)"),
    ({"tk": "0" * 64}, "the engine holds another version of TopK SAE 'tk'"),
])
def test_a_topk_clamp_the_engine_cannot_apply_is_a_400_naming_the_field(tmp_path: Path, held, fragment) -> None:
    with pytest.raises(SteeringError, match=re.escape(fragment)) as raised:
        _resolver(tmp_path, held).resolve(SteeringSpec.model_validate(CLAMP))
    assert raised.value.param == "steering.interventions[0].clamp"


def test_ranks_must_all_hold_the_same_encoder() -> None:
    layers = [LayerCapability(layer=0, residual=True)]
    rank = lambda r, held: WorkerCapabilities(rank=r, architecture="llama", hidden_size=8, layers=layers,  # noqa: E731
                                              topk_encoders=held)
    assert merge("m", [rank(0, {"a": "1", "b": "2"}), rank(1, {"a": "1", "b": "3"})]).topk_encoders == {"a": "1"}

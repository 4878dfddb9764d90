"""Factories for vector libraries, resolvers and resolved steering used by the unit tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steer_serve.model_shape import ModelShape
from steer_serve_vllm.api.gateway import RequestGateway
from steer_serve.settings import Settings
from steer_serve.request.resolved_steering import LayerAddition, ResolvedSteering, SteeringBuilder
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.library.steering_vector import SteeringVector
from steer_serve.library.vector_formats import write_vector
from steer_serve.library.vector_library import VectorLibrary

SHAPE = ModelShape(model_id="unit", hidden_size=8, num_layers=6)


def vector(dim: int = 8, layers: tuple[int, ...] = (1, 2), seed: int = 0) -> SteeringVector:
    rng = np.random.default_rng(seed)
    return SteeringVector({layer: rng.standard_normal(dim).astype(np.float32) for layer in layers}, {"model": "unit"})


def library(directory: Path, **vectors: SteeringVector) -> VectorLibrary:
    for name, value in vectors.items():
        write_vector(value, directory / f"{name}.safetensors")
    return VectorLibrary.load_dir(directory, SHAPE)


def resolver(directory: Path, **vectors: SteeringVector) -> SteeringResolver:
    return SteeringResolver(SHAPE, library(directory, **vectors), Settings(vector_dir=directory))


def gateway(directory: Path, **vectors: SteeringVector) -> RequestGateway:
    return RequestGateway(resolver(directory, **vectors))


def combine_additions(additions: list[LayerAddition]) -> ResolvedSteering:
    """Resolved steering made of these additions (summed per (layer, positions), canonical order)."""
    builder = SteeringBuilder()
    for add in additions:
        builder.add(add.layer, add.positions, add.vector)
    return builder.build()

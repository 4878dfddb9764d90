"""vLLM endpoint plugin: the steering routes, the gateway middleware and their state.

Loaded by vLLM's `vllm.endpoint_plugins` mechanism in the API server process only (opt-in via
VLLM_PLUGINS, which `steer-serve serve` sets).
"""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from steer_serve import metrics
from steer_serve.experiments.arm_selector import ArmSelector
from steer_serve.experiments.control_state import ControlFile
from steer_serve.experiments.request_recorder import RequestRecorder
from steer_serve.model_shape import ModelShape
from steer_serve.library.presets import PresetLibrary
from steer_serve.policy.gate import PolicyGate
from steer_serve_vllm.model_config import model_shape
from steer_serve_vllm.api.gateway import Rejection, RequestGateway
from steer_serve.settings import Settings
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.library.vector_library import VectorLibrary
from steer_serve_vllm.api.middleware import SteeringMiddleware
from steer_serve_vllm.api.openapi_schema import publish_steering_schema
from steer_serve_vllm.api.experiment_routes import router as experiment_router
from steer_serve_vllm.api.policy_routes import router as policy_router
from steer_serve_vllm.api.library_routes import router as library_router
from steer_serve_vllm.api.engine_routes import router as engine_router
from steer_serve_vllm.api.engine_death import exit_nonzero_on_engine_death
from steer_serve_vllm.names import ENDPOINT_PLUGIN, ENGINE_PLUGIN

logger = logging.getLogger(f"vllm.{__name__}")  # vLLM configures handlers for "vllm.*" only


@dataclass
class SteeringService:
    """Everything the API side of steering needs, kept on `app.state.steer_serve`."""

    settings: Settings
    shape: ModelShape
    library: VectorLibrary
    presets: PresetLibrary
    gateway: RequestGateway
    recorder: RequestRecorder
    rejections: Counter = field(default_factory=Counter)

    def count_rejection(self, rejection: Rejection) -> None:
        self.rejections[rejection.status] += 1
        if rejection.rule is not None:  # a policy rule: its name comes from the policy file (bounded)
            metrics.POLICY_REFUSALS.labels(rejection.rule).inc()
        else:
            metrics.REJECTIONS.labels(metrics.rejection_reason(rejection.status, rejection.param)).inc()


def _require_engine_plugin() -> None:
    """Without the worker half, every steering request would run unsteered: refuse to start."""
    allowed = os.environ.get("VLLM_PLUGINS", "")
    if ENGINE_PLUGIN not in [name.strip() for name in allowed.split(",")]:
        raise RuntimeError(
            f"VLLM_PLUGINS={allowed!r} enables the {ENDPOINT_PLUGIN} endpoint plugin without the "
            f"{ENGINE_PLUGIN} engine plugin; name both (steer-serve serve does this)"
        )


def _share_vllm_log_handlers() -> None:
    """Let the domain package's loggers ("steer_serve.*") print like vLLM's own."""
    ours, theirs = logging.getLogger("steer_serve"), logging.getLogger("vllm")
    if not ours.handlers:
        for handler in theirs.handlers:
            ours.addHandler(handler)
        ours.setLevel(theirs.level)
        ours.propagate = False


class SteerServeEndpointPlugin:
    name = ENDPOINT_PLUGIN
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        app.include_router(library_router)
        app.include_router(experiment_router)
        app.include_router(policy_router)
        app.include_router(engine_router)
        app.add_middleware(SteeringMiddleware)
        publish_steering_schema(app)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        if engine_client is None:
            return
        _require_engine_plugin()
        exit_nonzero_on_engine_death(engine_client)
        model_config = engine_client.model_config
        shape = model_shape(model_config.served_model_name, model_config.hf_text_config)
        _share_vllm_log_handlers()
        settings = Settings()
        # the gauge follows every (re)load: start, admin changes, other processes' changes
        library = VectorLibrary.load_dir(settings.vector_dir, shape, poll_s=settings.library_poll_s,
                                         on_change=metrics.VECTORS_LOADED.set)
        plain = SteeringResolver(shape, library, settings)
        presets = PresetLibrary(settings.preset_dir, plain.resolve, poll_s=settings.library_poll_s)
        resolver = plain.with_presets(presets)
        policy = _load_policy(settings, library, presets, resolver, bool(getattr(args, "api_key", None)
                                                                           or os.environ.get("VLLM_API_KEY")))
        arms = _load_experiments(settings, resolver, policy)
        gateway = RequestGateway(resolver, arms, policy)
        recorder = RequestRecorder(shape.model_id, settings.exposure_log_path if arms else None)
        state.steer_serve = SteeringService(settings, shape, library, presets, gateway, recorder)
        logger.info("steer-serve: API ready for %s (%d vectors, %d presets)", shape, len(library), len(presets))


def _load_policy(settings: Settings, library: VectorLibrary, presets: PresetLibrary,
                 resolver: SteeringResolver, keys_checked: bool) -> PolicyGate | None:
    """The steering policy, checked against the library and presets now: a bad file stops the server."""
    if settings.policy_file is None:
        return None
    policy = PolicyGate(settings.policy_file, library, presets, resolver)
    if policy.policy.callers and not keys_checked:
        logger.warning("steer-serve: the policy has caller rules but vLLM runs without --api-key: nobody's key "
                       "is checked, and a caller who sends none gets the default rule")
    presets.vet = policy.check_preset  # runtime registration: a rule that names the preset must allow it
    logger.info("steer-serve: steering policy %s (rules: %s)", settings.policy_file,
                ", ".join(name for name, _ in policy.policy.named_rules()))
    return policy


def _load_experiments(settings: Settings, resolver: SteeringResolver,
                      policy: PolicyGate | None = None) -> ArmSelector | None:
    """The experiments, resolved against the model now: a bad file stops the server with its error."""
    if settings.experiments_dir is None:
        return None
    settings.exposure_log_path.parent.mkdir(parents=True, exist_ok=True)
    settings.feedback_log_path.parent.mkdir(parents=True, exist_ok=True)
    arms = ArmSelector(settings.experiments_dir, resolver, ControlFile(settings.control_file_path),
                       policy.vet_experiment if policy else None)
    running = [e.config.key for e in arms.experiments if e.config.status == "running"]
    logger.info("steer-serve: %d experiments (running: %s); exposures -> %s", len(arms.experiments),
                ", ".join(running) or "none", settings.exposure_log_path)
    return arms

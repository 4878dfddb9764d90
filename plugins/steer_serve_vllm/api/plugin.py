"""vLLM endpoint plugin: the steering routes, the gateway middleware and their state.

Loaded by vLLM's `vllm.endpoint_plugins` mechanism in the API server process only (opt-in via
VLLM_PLUGINS, which `steer-serve serve` sets).
"""

from __future__ import annotations

import atexit
import logging
import os
from argparse import Namespace
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from steer_serve import metrics
from steer_serve.experiments.arm_selector import ArmSelector
from steer_serve.experiments.request_recorder import RequestRecorder
from steer_serve.experiments.store_services import StoreServices
from steer_serve.model_shape import ModelShape
from steer_serve.library.presets import PresetLibrary
from steer_serve.policy.gate import PolicyGate
from steer_serve_vllm.api.capabilities import engine_shape
from steer_serve_vllm.api.gateway import Rejection, RequestGateway
from steer_serve_vllm.api.observe_gateway import ObserveGate
from steer_serve.request.observe_spec import ObserveResolver, read_server_probes
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
from steer_serve_vllm.registration import engine_plugin_registered
from steer_serve_vllm.api.sae_routes import router as sae_router
from steer_serve.library.sae_library import SAELibrary

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
    store: StoreServices | None = None
    saes: SAELibrary | None = None
    rejections: Counter = field(default_factory=Counter)

    def count_rejection(self, rejection: Rejection) -> None:
        self.rejections[rejection.status] += 1
        if rejection.rule is not None:  # a policy rule: its name comes from the policy file (bounded)
            metrics.POLICY_REFUSALS.labels(rejection.rule).inc()
        else:
            metrics.REJECTIONS.labels(metrics.rejection_reason(rejection.status, rejection.param)).inc()


def _require_engine_plugin() -> None:
    """Without the worker half, every steering request would run unsteered: refuse to start.
    vLLM runs general plugins in the API process too (before endpoint plugins), so the engine
    plugin has registered here iff the engine processes, which inherit VLLM_PLUGINS, run it."""
    if not engine_plugin_registered():
        raise RuntimeError(
            f"VLLM_PLUGINS={os.environ.get('VLLM_PLUGINS')!r} enables the {ENDPOINT_PLUGIN} endpoint plugin "
            f"without the {ENGINE_PLUGIN} engine plugin; name both, or leave VLLM_PLUGINS unset"
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
        app.include_router(sae_router)
        app.add_middleware(SteeringMiddleware)
        publish_steering_schema(app)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        if engine_client is None:
            return
        _require_engine_plugin()
        exit_nonzero_on_engine_death(engine_client)
        model_config = engine_client.model_config
        shape = await engine_shape(engine_client, model_config.served_model_name)  # the capability handshake
        _share_vllm_log_handlers()
        settings = Settings()
        # the gauge follows every (re)load: start, admin changes, other processes' changes
        library = VectorLibrary.load_dir(settings.vector_dir, shape, poll_s=settings.library_poll_s,
                                         on_change=metrics.VECTORS_LOADED.set)
        saes = SAELibrary(settings.sae_dir, shape, poll_s=settings.library_poll_s)
        plain = SteeringResolver(shape, library, settings, saes=saes)
        presets = PresetLibrary(settings.preset_dir, plain.resolve, poll_s=settings.library_poll_s)
        resolver = plain.with_presets(presets)
        store = _open_store(settings)
        policy = _load_policy(settings, library, presets, resolver, bool(getattr(args, "api_key", None)
                                                                           or os.environ.get("VLLM_API_KEY")))
        arms = _load_experiments(settings, resolver, store, policy)
        gateway = RequestGateway(resolver, arms, policy, _observe_gate(settings, shape, library))
        recorder = RequestRecorder(shape.model_id, store.writer if store else None)
        state.steer_serve = SteeringService(settings, shape, library, presets, gateway, recorder, store, saes)
        logger.info("steer-serve: API ready for %s (%d vectors, %d presets, %d SAEs)", shape, len(library),
                    len(presets), len(saes))


def _observe_gate(settings: Settings, shape: ModelShape, library: VectorLibrary) -> ObserveGate:
    """The `observe` field's gate, with the server's probes resolved now: a bad file stops the server."""
    resolver = ObserveResolver(shape, library)
    specs = [] if settings.probes_file is None else read_server_probes(settings.probes_file)
    probes = tuple(resolver.probe(spec, f"{settings.probes_file}[{i}]", report=False) for i, spec in enumerate(specs))
    if probes:
        logger.info("steer-serve: server probes %s on every completion request",
                    ", ".join(f"{p.name}@{p.layer}" for p in probes))
    return ObserveGate(resolver, probes)


def _open_store(settings: Settings) -> StoreServices | None:
    """The experiment database and its threads; the last flush runs when the process exits."""
    if settings.experiments_dir is None:
        return None
    store = StoreServices.open(settings)
    atexit.register(store.close)
    return store


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


def _load_experiments(settings: Settings, resolver: SteeringResolver, store: StoreServices | None,
                      policy: PolicyGate | None = None) -> ArmSelector | None:
    """The experiments, resolved against the model now: a bad file stops the server with its error."""
    if settings.experiments_dir is None or store is None:
        return None
    arms = ArmSelector(settings.experiments_dir, resolver, store.control, policy.vet_experiment if policy else None)
    running = [e.config.key for e in arms.experiments if e.config.status == "running"]
    logger.info("steer-serve: %d experiments (running: %s); store %s", len(arms.experiments),
                ", ".join(running) or "none", store.store.display_url)
    return arms

"""HTTP routes of A/B experiments: listing, results, feedback, and the admin routes (reload,
kill switches) guarded by the admin key (`admin_auth`, shared with the library routes).
Domain work lives in `steer_serve.experiments`. Feedback goes to the local outbox (it never
waits for the database); results and admin changes need the database and answer 503 naming it
when it is unreachable."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from steer_serve import metrics
from steer_serve.experiments.arm_selector import ArmSelector, LiveExperiment
from steer_serve.experiments.config import ExperimentConfigError
from steer_serve.experiments.records import ControlState
from steer_serve.experiments.records import Feedback, FeedbackIn
from steer_serve.experiments.results import compute_results
from steer_serve.experiments.store import StoreUnavailable
from steer_serve.request.errors import describe_validation_error
from steer_serve_vllm.api.admin_auth import admin_refusal as _admin_refusal
from steer_serve_vllm.api.errors import error_response as _error

router = APIRouter(tags=["steering experiments"])
ALL = "all"


class KillSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engaged: StrictBool  # "yes" must not engage a kill switch by coercion


def _selector(request: Request) -> ArmSelector | JSONResponse:
    selector = request.app.state.steer_serve.gateway.arms
    if selector is None:
        return _error(404, "experiments are not enabled on this server (start it with --experiments DIR)", "NotFoundError")
    return selector


def _describe(experiment: LiveExperiment, state: ControlState) -> dict[str, Any]:
    described = experiment.config.public()
    fingerprints = {arm.name: arm.steering.fingerprint if arm.steering else None for arm in experiment.arms}
    for arm in described["arms"]:
        arm["fingerprint"] = fingerprints[arm["name"]]
    return {"object": "experiment", **described, "killed": state.is_killed(experiment.config.key)}


async def _json_body(request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
    try:
        return model.model_validate(await request.json())
    except ValueError as exc:  # pydantic's ValidationError and JSON decoding errors are both ValueErrors
        message = describe_validation_error(exc) if isinstance(exc, ValidationError) else f"body is not JSON: {exc}"
        return _error(400, message, "BadRequestError")


@router.get("/v1/steering/experiments")
async def list_experiments(request: Request) -> Any:
    service = request.app.state.steer_serve
    selector = service.gateway.arms
    if selector is None:
        return {"object": "list", "data": [], "kill_all": False, "store": None}
    state = selector.control.current()
    return {"object": "list", "data": [_describe(e, state) for e in selector.experiments], "kill_all": state.kill_all,
            "store": service.store.health()}


def _unavailable(exc: StoreUnavailable, what: str) -> JSONResponse:
    return _error(503, f"{what}: {exc}", "ServiceUnavailableError")


@router.post("/v1/steering/experiments/reload")
async def reload_experiments(request: Request) -> Any:
    selector = _selector(request)
    refusal = _admin_refusal(request) or (selector if isinstance(selector, JSONResponse) else None)
    if refusal is not None:
        return refusal
    try:
        experiments = await asyncio.to_thread(selector.reload)
    except ExperimentConfigError as exc:
        return _error(400, f"reload refused, the previous experiments stay in force: {exc}", "BadRequestError")
    except StoreUnavailable as exc:
        return _unavailable(exc, "reloaded in this process only; the other processes and replicas were not told")
    return {"object": "list", "data": [_describe(e, selector.control.current()) for e in experiments]}


@router.post("/v1/steering/experiments/kill-switch")
async def kill_all(request: Request) -> Any:
    return await _switch(request, None)


@router.post("/v1/steering/experiments/{key}/kill-switch")
async def kill_one(key: str, request: Request) -> Any:
    return await _switch(request, key)


async def _switch(request: Request, key: str | None) -> Any:
    """Engage (everyone to control at once) or release a kill switch; every process follows within ~1 s."""
    selector = _selector(request)
    refusal = _admin_refusal(request) or (selector if isinstance(selector, JSONResponse) else None)
    if refusal is not None:
        return refusal
    if key is not None and key not in {e.config.key for e in selector.experiments}:
        return _error(404, f"no experiment {key!r}", "NotFoundError", "key")
    body = await _json_body(request, KillSwitch)
    if isinstance(body, JSONResponse):
        return body

    try:
        state = await asyncio.to_thread(selector.control.store.set_kill_switch, key, body.engaged)
    except StoreUnavailable as exc:
        return _unavailable(exc, "kill switch not changed (it must reach every replica)")
    selector.control.accept(state)
    metrics.KILL_SWITCH.labels(key or ALL).set(1 if body.engaged else 0)
    return {"object": "kill_switch", "experiment": key or ALL, "engaged": body.engaged, **state.model_dump()}


@router.get("/v1/steering/experiments/{key}/results")
async def experiment_results(key: str, request: Request, version: int | None = None) -> Any:
    selector = _selector(request)
    if isinstance(selector, JSONResponse):
        return selector
    experiment = next((e for e in selector.experiments if e.config.key == key), None)
    if experiment is None:
        return _error(404, f"no experiment {key!r}", "NotFoundError", "key")
    store = request.app.state.steer_serve.store.store

    def compute() -> dict[str, Any]:
        results = compute_results(experiment.config, store, version)
        return {"object": "experiment_results", **results.model_dump(), "assignments": metrics.assignment_counts(key)}

    try:
        return await asyncio.to_thread(compute)
    except StoreUnavailable as exc:
        return _unavailable(exc, "results need the experiment store")


@router.post("/v1/steering/feedback")
async def post_feedback(request: Request) -> Any:
    selector = _selector(request)
    if isinstance(selector, JSONResponse):
        return selector
    body = await _json_body(request, FeedbackIn)
    if isinstance(body, JSONResponse):
        return body
    record = Feedback(**body.model_dump())
    if not await asyncio.to_thread(request.app.state.steer_serve.store.writer.record, "feedback", record.row()):
        return _error(503, "feedback dropped: the experiment store is unreachable and the local outbox is full",
                      "ServiceUnavailableError")
    return {"object": "feedback", "id": record.id, "request_id": record.request_id, "metric": record.metric,
            "accepted": True}

"""Admin route of the steering policy: reload the file (like the experiments' reload).

A reload with any mistake (schema, unknown vector, a preset or arm the new rules refuse) answers
400 naming the file and field, and the policy in force stays. Domain work lives in
`steer_serve.policy`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from steer_serve.policy.loader import PolicyError
from steer_serve_vllm.api.admin_auth import admin_refusal
from steer_serve_vllm.api.errors import error_response

router = APIRouter(tags=["steering policy"])


@router.post("/v1/steering/policy/reload")
async def reload_policy(request: Request) -> Any:
    refusal = admin_refusal(request)
    if refusal is not None:
        return refusal
    gateway = request.app.state.steer_serve.gateway
    if gateway.policy is None:
        return error_response(404, "no steering policy on this server (start it with --policy FILE)", "NotFoundError")
    selector = gateway.arms
    try:
        experiments = await asyncio.to_thread(gateway.policy.reload, selector.experiments if selector else [])
    except PolicyError as exc:
        return error_response(400, f"reload refused, the previous policy stays in force: {exc}", "BadRequestError")
    if selector is not None:
        selector.experiments = experiments  # arms re-checked and re-dosed under the new rules
    rules = [name for name, _ in gateway.policy.policy.named_rules()]
    return {"object": "steering_policy", "file": str(gateway.policy.path), "rules": rules}

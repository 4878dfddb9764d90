"""The admin-key check shared by every admin route (experiments, vector library, presets).

The key comes from `Settings.admin_key` (`steer-serve serve --admin-key` or STEER_SERVE_ADMIN_KEY)
and is sent as `Authorization: Bearer KEY`: 401 without it, 403 with a wrong one, and 403 when
the server has no key configured (admin routes are then disabled).
"""

from __future__ import annotations

import hashlib
import secrets

from fastapi import Request
from fastapi.responses import JSONResponse

from steer_serve_vllm.api.errors import error_response


def admin_refusal(request: Request) -> JSONResponse | None:
    """None when the request carries the admin key; 403 when no key is configured at all."""
    key = request.app.state.steer_serve.settings.admin_key
    if key is None:
        return error_response(403, "admin routes are disabled: no admin key is configured (STEER_SERVE_ADMIN_KEY or "
                                   "steer-serve serve --admin-key)", "PermissionDeniedError")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return error_response(401, "admin route: send the admin key as `Authorization: Bearer KEY`", "AuthenticationError")
    digest = hashlib.sha256
    if not secrets.compare_digest(digest(given.encode()).digest(), digest(key.get_secret_value().encode()).digest()):
        return error_response(403, "wrong admin key", "PermissionDeniedError")
    return None

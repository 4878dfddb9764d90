"""The experiment store's record types: an exposure (an arm was served), a feedback value, and
the shared control state (kill switches, reload generation).

They are pydantic models so that what the server writes and what the report reads are checked
against one schema. The request id that joins them is the response's `id` (`chatcmpl-...`,
`cmpl-...`), which every OpenAI client already exposes (`response.id`); vLLM's X-Request-Id
header is off unless --enable-request-id-headers and is not under the client's control.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator

METRIC_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"


class Exposure(BaseModel):
    """One request served under an experiment arm, with what the middleware observed."""

    model_config = ConfigDict(extra="forbid")

    ts: float = Field(default_factory=time.time)
    request_id: str
    experiment: str
    version: int
    arm: str
    assigned_arm: str
    outcome: Literal["assigned", "killed"]
    unit: str = Field(description="salted hash of the unit, never the raw user id")
    fingerprint: str | None
    model: str
    stream: bool
    status: int
    error: bool
    ttft_s: float | None
    latency_s: float
    tokens: int | None
    tokens_source: Literal["usage", "chunks"] | None
    finish_reason: str | None


class FeedbackIn(BaseModel):
    """Body of POST /v1/steering/feedback."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=256)
    metric: str = Field(pattern=METRIC_PATTERN)
    value: StrictBool | StrictInt | StrictFloat = Field(
        description="true/false for a binary metric (two-proportion z-test), a number otherwise (Welch t-test)",
    )

    @field_validator("value")
    @classmethod
    def _finite(cls, value: bool | int | float) -> bool | int | float:
        if not math.isfinite(value):
            raise ValueError("value must be finite")
        return value


class Feedback(FeedbackIn):
    """A feedback value as stored: its own id (minted once, so a resent outbox batch is not counted twice)."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    ts: float = Field(default_factory=time.time)

    def row(self) -> dict[str, object]:
        """The database row: numbers as floats, with whether the metric is binary."""
        return {"id": self.id, "ts": self.ts, "request_id": self.request_id, "metric": self.metric,
                "value": float(self.value), "binary": isinstance(self.value, bool)}


class ControlState(BaseModel):
    """Kill switches and the reload generation, as every process reads them from the store."""

    model_config = ConfigDict(extra="forbid")

    kill_all: bool = False
    killed: list[str] = []
    generation: int = 0

    def is_killed(self, key: str) -> bool:
        return self.kill_all or key in self.killed

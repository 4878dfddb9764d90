"""A load-test scenario: the YAML file an operator writes, checked strictly before any traffic.

Every model forbids unknown fields and refuses wrong types, so a misspelt key or a negative rate
is an error that names the field (`arrival.rate: ...`), never a silently different load test.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from steer_serve.request.steering_spec import SteeringSpec

_STRICT = ConfigDict(extra="forbid", strict=True)
PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
CLASS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
SLO_METRICS = ("ttft", "tpot", "itl", "e2el")


class ScenarioError(ValueError):
    """The scenario file is unusable; the message names the file and the field."""


class Fixed(BaseModel):
    model_config = _STRICT
    dist: Literal["fixed"]
    value: PositiveInt


class Uniform(BaseModel):
    model_config = _STRICT
    dist: Literal["uniform"]
    min: PositiveInt
    max: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> "Uniform":
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class Normal(BaseModel):
    """A normal distribution rounded to integers and clipped to [min, max]."""

    model_config = _STRICT
    dist: Literal["normal"]
    mean: PositiveFloat
    std: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    min: PositiveInt = 1
    max: PositiveInt | None = None


Distribution = Annotated[Union[Fixed, Uniform, Normal], Field(discriminator="dist")]
Length = Union[PositiveInt, Distribution]  # a bare integer means fixed


class Prompts(BaseModel):
    """Synthetic prompts of `input_tokens` random token ids, or the prompts of a JSONL `file`
    (lines {"prompt": "..."} for /v1/completions or {"messages": [...]} for /v1/chat/completions)."""

    model_config = _STRICT
    input_tokens: Length | None = None
    file: str | None = None
    output_tokens: Length

    @model_validator(mode="after")
    def _one_source(self) -> "Prompts":
        if (self.input_tokens is None) == (self.file is None):
            raise ValueError("give exactly one of `input_tokens` (synthetic prompts) or `file` (JSONL prompts)")
        return self


class RandomVectors(BaseModel):
    """K distinct random unit vectors sent inline, request i of the class carrying vector i % K."""

    model_config = _STRICT
    count: PositiveInt
    layers: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
    scale: Annotated[float, Field(allow_inf_nan=False)] = 1.0
    dim: PositiveInt | None = Field(None, description="hidden size; default: the dim of the server's library vectors")


class Users(BaseModel):
    """A/B traffic: each request carries `user` drawn from a pool of `pool` ids."""

    model_config = _STRICT
    pool: PositiveInt
    prefix: str = "user-"


class TrafficClass(BaseModel):
    model_config = _STRICT
    name: str
    weight: PositiveFloat
    steering: dict[str, Any] | None = Field(None, description="the request's `steering` object, sent as written")
    random_vectors: RandomVectors | None = None
    users: Users | None = None

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if CLASS_NAME.fullmatch(value) is None:
            raise ValueError(f"{value!r} is not a class name (letters, digits, _ . @ -, at most 64)")
        return value

    @field_validator("steering")
    @classmethod
    def _valid_steering(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            SteeringSpec.model_validate(value)  # the server's own schema; names are checked against the server later
        return value

    @model_validator(mode="after")
    def _one_steering(self) -> "TrafficClass":
        if self.steering is not None and self.random_vectors is not None:
            raise ValueError("give `steering` or `random_vectors`, not both")
        return self

    @property
    def steered(self) -> bool:
        return self.steering is not None or self.random_vectors is not None


class Arrival(BaseModel):
    """Closed loop (`concurrency` alone), open loop at a `rate` (req/s), or a `sweep` of rates.
    `concurrency` with a rate caps the requests in flight."""

    model_config = _STRICT
    concurrency: PositiveInt | None = None
    rate: PositiveFloat | None = None
    sweep: Annotated[list[PositiveFloat], Field(min_length=2)] | None = None
    process: Literal["poisson", "constant"] = "poisson"

    @model_validator(mode="after")
    def _one_shape(self) -> "Arrival":
        if self.rate is not None and self.sweep is not None:
            raise ValueError("give `rate` or `sweep`, not both")
        if self.rate is None and self.sweep is None and self.concurrency is None:
            raise ValueError("give `concurrency`, `rate` or `sweep`")
        if self.sweep is not None and sorted(self.sweep) != self.sweep:
            raise ValueError("`sweep` rates must be in increasing order")
        return self

    @property
    def rates(self) -> list[float]:
        """Offered loads, one benchmark run each; inf = closed loop."""
        return self.sweep or [self.rate if self.rate is not None else math.inf]


class SLOTarget(BaseModel):
    model_config = _STRICT
    max_ms: PositiveFloat
    percentile: Annotated[float, Field(gt=0, le=100)] = 99.0


class SLO(BaseModel):
    """Latency objectives: the given percentile of each metric at most `max_ms`. A request is
    "good" (goodput) when its own TTFT, TPOT and E2E latency are within their `max_ms` (vLLM's
    goodput definition; ITL is per token, so it has an aggregate objective only)."""

    model_config = _STRICT
    ttft: SLOTarget | None = None
    tpot: SLOTarget | None = None
    itl: SLOTarget | None = None
    e2el: SLOTarget | None = None
    min_goodput: Annotated[float, Field(gt=0, le=1)] | None = Field(
        None, description="share of requests that must be good")

    def targets(self) -> dict[str, SLOTarget]:
        return {m: getattr(self, m) for m in SLO_METRICS if getattr(self, m) is not None}


class Scenario(BaseModel):
    model_config = _STRICT
    model: str = Field(description="the served model name, as listed by GET /v1/models")
    tokenizer: str | None = Field(None, description="local tokenizer directory (default: `model`)")
    seed: Annotated[int, Field(ge=0)] = 0
    prompts: Prompts
    traffic: Annotated[list[TrafficClass], Field(min_length=1)]
    arrival: Arrival
    requests: PositiveInt | None = Field(None, description="requests per run")
    duration_s: PositiveFloat | None = Field(None, description="seconds of arrivals per run (open loop only)")
    warmup_requests: Annotated[int, Field(ge=0)] = Field(0, description="unmeasured requests sent first")
    ignore_eos: bool = True
    temperature: Annotated[float, Field(ge=0)] = 0.0
    slo: SLO | None = None

    @field_validator("traffic")
    @classmethod
    def _unique_names(cls, value: list[TrafficClass]) -> list[TrafficClass]:
        names = [c.name for c in value]
        if len(set(names)) != len(names):
            raise ValueError(f"traffic class names must be unique, got {names}")
        return value

    @model_validator(mode="after")
    def _size(self) -> "Scenario":
        if (self.requests is None) == (self.duration_s is None):
            raise ValueError("give exactly one of `requests` or `duration_s`")
        if self.duration_s is not None and self.arrival.rate is None and self.arrival.sweep is None:
            raise ValueError("`duration_s` needs an open-loop `arrival.rate` or `arrival.sweep`; "
                             "a closed loop takes `requests`")
        return self

    def requests_at(self, rate: float) -> int:
        if self.requests is not None:
            return self.requests
        return max(1, math.ceil(rate * self.duration_s))


_UNION_TAGS = {"int", "float", "str", "constrained-int", "constrained-float", "constrained-str"}


def _field(loc: tuple[Any, ...]) -> str:
    """`traffic.1.weight`, without pydantic's union-member tags (`int`, `tagged-union[...]`)."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
    return ".".join(parts) or "(top level)"


def describe_errors(exc: ValidationError) -> str:
    seen: list[str] = []
    for error in exc.errors():
        line = f"{_field(error['loc'])}: {error['msg'].removeprefix('Value error, ')}"
        if line not in seen:
            seen.append(line)
    return "; ".join(seen)


def parse_scenario(raw: Any, source: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {describe_errors(exc)}") from None


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file; a relative `prompts.file` is resolved next to it."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    scenario = parse_scenario(raw, str(path))
    if scenario.prompts.file is not None:
        prompts_file = (path.parent / scenario.prompts.file).resolve()
        if not prompts_file.is_file():
            raise ScenarioError(f"{path}: prompts.file: no such file {prompts_file}")
        scenario.prompts.file = str(prompts_file)
    return scenario

"""One settings object for the API side, read from `STEER_SERVE_*` environment variables.

The `steer-serve serve` CLI turns its flags into these variables, because vLLM starts the API
server itself and our plugin can only receive configuration through the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEER_SERVE_", extra="ignore")

    vector_dir: Path = Field(REPO_CONFIGS / "vectors", description="steering vector library directory")
    max_interventions: int = Field(16, ge=1, description="interventions allowed in one request")
    max_abs_scale: float = Field(1000.0, gt=0, description="largest |scale| accepted")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body accepted")

"""One settings object for the API side, read from `STEER_SERVE_*` environment variables.

The `steer-serve serve` CLI turns its flags into these variables, because vLLM starts the API
server itself and our plugin can only receive configuration through the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEER_SERVE_", extra="ignore")

    vector_dir: Path = Field(REPO_CONFIGS / "vectors", description="steering vector library directory")
    preset_dir: Path = Field(REPO_CONFIGS / "presets", description="directory of preset YAML/JSON files")
    max_vector_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest vector file accepted by upload")
    library_poll_s: float = Field(1.0, ge=0, description="how often a process checks the vector/preset dirs for changes")
    max_interventions: int = Field(16, ge=1, description="interventions allowed in one request")
    max_abs_scale: float = Field(1000.0, gt=0, description="largest |scale| accepted")
    max_dose: float | None = Field(
        None, gt=0, description="clip |added vector| to max_dose * |layer output| per token (engine side); None: off"
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body accepted")

    experiments_dir: Path | None = Field(None, description="directory of experiment YAML files; None: no experiments")
    exposure_log: Path | None = Field(None, description="exposure JSONL (default: <experiments_dir>/exposures.jsonl)")
    feedback_log: Path | None = Field(None, description="feedback JSONL (default: next to the exposure log)")
    policy_file: Path | None = Field(None, description="steering policy YAML (who may steer what); None: no policy")
    admin_key: SecretStr | None = Field(None, description="bearer key for the admin routes; None: admin routes refuse")

    @property
    def exposure_log_path(self) -> Path | None:
        if self.exposure_log is not None:
            return self.exposure_log
        return None if self.experiments_dir is None else self.experiments_dir / "exposures.jsonl"

    @property
    def feedback_log_path(self) -> Path | None:
        if self.feedback_log is not None:
            return self.feedback_log
        exposures = self.exposure_log_path
        return None if exposures is None else exposures.with_name("feedback.jsonl")

    @property
    def control_file_path(self) -> Path | None:
        """Kill switches and reload generation shared by the API-server processes (next to the exposure log)."""
        exposures = self.exposure_log_path
        return None if exposures is None else exposures.with_name("experiments-control.json")

"""One settings object for the API side, read from `STEER_SERVE_*` environment variables.

The `steer-serve serve` CLI turns its flags into these variables, because vLLM starts the API
server itself and our plugin can only receive configuration through the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from steer_serve.request.resolved_steering import DEFAULT_PROJECTIONS_PER_LAYER

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEER_SERVE_", extra="ignore")

    vector_dir: Path = Field(REPO_CONFIGS / "vectors", description="steering vector library directory")
    preset_dir: Path = Field(REPO_CONFIGS / "presets", description="directory of preset YAML/JSON files")
    sae_dir: Path = Field(REPO_CONFIGS / "saes", description="SAE library: NAME.safetensors + NAME.json (SAELens) or NAME.npz + NAME.json")
    max_vector_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest vector file accepted by upload")
    library_poll_s: float = Field(1.0, ge=0, description="how often a process checks the vector/preset dirs for changes")
    max_interventions: int = Field(16, ge=1, description="interventions allowed in one request")
    max_abs_scale: float = Field(1000.0, gt=0, description="largest |scale| accepted")
    max_dose: float | None = Field(
        None, gt=0, description="clip |added vector| to max_dose * |layer output| per token (engine side); None: off"
    )
    steering_memory: float = Field(
        32.0, gt=0, description="MiB per engine worker for steering vectors (the shared vector pool); requests wait beyond it"
    )
    steering_slots: int = Field(
        256, ge=1, description="distinct steering configurations resident per worker (capped at max_num_seqs); more wait"
    )
    observe_memory: float = Field(
        64.0, gt=0, description="MiB per engine worker for observation results (probe positions, captured vectors); "
                                "observed requests beyond it get an explicit observation error")
    steering_projections: int = Field(
        DEFAULT_PROJECTIONS_PER_LAYER, ge=1, le=16, description="projection edits (ablate, clamp, SAE feature clamp) per layer and token phase; "
        "each one runs on every layer and step under torch.compile, steered or not"
    )
    topk_clamp_saes: list[str] = Field(
        [], description="TopK SAEs of the SAE library whose clamps the engine applies: each one's full encoder "
        "(d_in x d_sae) is held per worker and evaluated at its layer on every step under torch.compile"
    )
    head_sites: bool = Field(
        True, description="install the head-scaling site (attention output, before o_proj) on every layer; False: "
        "`heads` edits are 400s, and an unsteered compiled step makes one op call per layer fewer")
    expert_sites: bool = Field(
        True, description="install the router site on every MoE layer; False: `experts` edits are 400s, and an "
        "unsteered compiled step makes one op call per MoE layer fewer")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body accepted")

    experiments_dir: Path | None = Field(None, description="directory of experiment YAML files; None: no experiments")
    experiments_db: str | None = Field(
        None, description="postgresql://... or sqlite:///...; None: SQLite file <experiments_dir>/experiments.db")
    outbox_dir: Path | None = Field(None, description="local spool for exposures/feedback (default: <experiments_dir>/outbox)")
    outbox_max_bytes: int = Field(256 * 1024 * 1024, ge=4096, description="outbox bound; past it records are dropped")
    control_poll_s: float = Field(0.25, gt=0, le=1, description="how often kill switches/reloads are read from the store")
    policy_file: Path | None = Field(None, description="steering policy YAML (who may steer what); None: no policy")
    probes_file: Path | None = Field(None, description="server probes (YAML/JSON list of name, vector, layer) observed "
                                                      "on every completion request, for /metrics; None: none")
    admin_key: SecretStr | None = Field(None, description="bearer key for the admin routes; None: admin routes refuse")

    @property
    def experiments_db_url(self) -> str | None:
        from steer_serve.experiments.store import database_url

        if self.experiments_dir is None:
            return None
        return database_url(self.experiments_db, self.experiments_dir / "experiments.db")

    @property
    def outbox_path(self) -> Path | None:
        if self.outbox_dir is not None:
            return self.outbox_dir
        return None if self.experiments_dir is None else self.experiments_dir / "outbox"

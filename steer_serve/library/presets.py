"""Presets: named bundles of interventions, used as `"steering": {"preset": NAME}`.

One file per preset in the presets directory, `NAME.yaml` / `NAME.yml` / `NAME.json`:

    description: Gloomy tone, light touch     # optional
    interventions:                              # = a request's `steering.interventions`
      - {type: add, vector: gloomy, scale: 0.3}

The name is the file stem (an optional `name:` key must equal it). Interventions are parsed by
the same `SteeringSpec` model as a request, and checked against the served model by the same
resolver (`check`): at registration a preset that does not resolve is refused; a file on disk
that does not resolve (say, its vector was deleted) is still listed, with its error, and a
request naming it gets that error as a 400. Like the vector library, runtime changes are atomic
file writes followed by a re-read, readers use a copy-on-write snapshot, and other API-server
processes pick changes up within `poll_s`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from steer_serve.files import atomic_write, remove
from steer_serve.library.library_files import check_name
from steer_serve.library.named_store import NamedFileStore, NameTaken
from steer_serve.request.errors import describe_validation_error
from steer_serve.request.steering_spec import SteeringSpec

logger = logging.getLogger(__name__)

PRESET_SUFFIXES = (".yaml", ".yml", ".json")
STORED_SUFFIX = ".json"  # what runtime registration writes


class PresetError(ValueError):
    """A preset that cannot be used; the message names the preset and the field."""


class PresetBody(BaseModel):
    """A preset file, or the JSON body of `POST /v1/steering/presets`."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr | None = None
    description: StrictStr = Field("", max_length=4096)
    interventions: list[dict[str, Any]] = Field(min_length=1)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    spec: SteeringSpec  # interventions only, validated like a request's
    raw: list[dict[str, Any]]  # as written, for listing and export
    path: Path

    @property
    def interventions(self) -> list[Any]:
        return list(self.spec.interventions or [])

    def describe(self) -> dict[str, Any]:
        return {"object": "steering_preset", "name": self.name, "description": self.description,
                "interventions": self.raw, "file": self.path.name}


def parse_preset(name: str, raw: Any, path: Path) -> Preset:
    """Schema-check a preset (the model is not consulted here); PresetError says what is wrong."""
    check_name(name, "preset name")
    try:
        body = PresetBody.model_validate(raw)
    except ValidationError as exc:
        raise PresetError(f"preset {name!r}: {describe_validation_error(exc)}") from None
    if body.name is not None and body.name != name:
        raise PresetError(f"preset {name!r}: `name` is {body.name!r} but must equal the file name {name!r}")
    try:
        spec = SteeringSpec.model_validate({"interventions": body.interventions})
    except ValidationError as exc:
        raise PresetError(f"preset {name!r}: {describe_validation_error(exc)}") from None
    return Preset(name, body.description, spec, body.interventions, path)


class PresetLibrary(NamedFileStore[Preset]):
    kind = "preset"
    suffixes = PRESET_SUFFIXES

    def __init__(self, directory: Path, check: Callable[[SteeringSpec], object] | None = None, *,
                 poll_s: float = 1.0) -> None:
        """`check(spec)` (the resolver's `resolve`) raises ValueError, e.g. SteeringError, if a preset's
        interventions do not fit the served model; it is called at registration, at load (warnings)
        and when listing."""
        self.check = check
        self.vet: Callable[[Preset], None] | None = None  # registration only: the steering policy (ValueError)
        super().__init__(directory, poll_s)
        for name, preset in sorted(self._snapshot.items.items()):
            problem = self.problem(preset)
            if problem:
                logger.warning("preset %s does not resolve against the served model: %s", name, problem)
        logger.info("presets %s: %d loaded, %d rejected", directory, len(self._snapshot.items),
                    len(self._snapshot.rejected))

    # ---- reading ---------------------------------------------------------------------------
    def problem(self, preset: Preset) -> str | None:
        """Why the preset does not resolve against the served model right now, or None."""
        if self.check is None:
            return None
        try:
            self.check(preset.spec)
        except ValueError as exc:
            param = getattr(exc, "param", None)
            return f"{param.removeprefix('steering.')}: {exc}" if param else str(exc)
        return None

    def describe(self) -> list[dict[str, Any]]:
        self.refresh()
        snapshot = self._snapshot
        listed = []
        for name in sorted(set(snapshot.items) | set(snapshot.rejected)):
            if name in snapshot.items:
                problem = self.problem(snapshot.items[name])
                listed.append({**snapshot.items[name].describe(), "usable": problem is None, "error": problem})
            else:
                listed.append({"object": "steering_preset", "name": name, "usable": False,
                               "error": snapshot.rejected[name]})
        return listed

    # ---- writing ---------------------------------------------------------------------------
    def register(self, body: Any, *, name: str | None = None, replace: bool = False) -> Preset:
        """Validate (schema, then the served model) and store as NAME.json. PresetError / NameTaken."""
        if name is None:
            name = body.get("name") if isinstance(body, dict) else None
            if not isinstance(name, str):
                raise PresetError("give the preset's `name`")
        try:
            check_name(name, "preset name")
        except ValueError as exc:
            raise PresetError(str(exc)) from None
        path = self.directory / f"{name}{STORED_SUFFIX}"
        preset = parse_preset(name, body, path)
        problem = self.problem(preset)
        if problem:
            raise PresetError(f"preset {name!r} does not fit the served model: {problem}")
        if self.vet is not None:
            try:
                self.vet(preset)
            except ValueError as exc:
                raise PresetError(f"preset {name!r} is refused: {exc}") from None
        stored = {"name": name, "description": preset.description, "interventions": preset.raw}
        with self._lock:
            self._reload()
            if not replace and self._exists(name):
                raise NameTaken(f"preset {name!r} already exists; delete it first or create it with replace=true")
            atomic_write(path, json.dumps(stored, indent=2).encode())
            for suffix in PRESET_SUFFIXES:
                if suffix != STORED_SUFFIX:
                    remove(self.directory / f"{name}{suffix}")
            self._reload()
            registered = self._snapshot.items.get(name)
        if registered is None:
            raise PresetError(f"preset {name!r} was written but is not usable: {self._snapshot.rejected.get(name)}")
        logger.info("presets: registered %s (%d interventions)", name, len(preset.raw))
        return registered

    def delete(self, name: str) -> list[str]:
        check_name(name, "preset name")
        with self._lock:
            removed = [f"{name}{suffix}" for suffix in PRESET_SUFFIXES if remove(self.directory / f"{name}{suffix}")]
            if not removed:
                raise KeyError(f"unknown preset {name!r}")
            self._reload()
        logger.info("presets: deleted %s", name)
        return removed

    # ---- loading (under the lock) -------------------------------------------------------------
    def _load(self, name: str, path: Path) -> Preset | str:
        try:
            text = path.read_text()
            raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            return parse_preset(name, raw, path)
        except (OSError, ValueError, yaml.YAMLError) as exc:  # PresetError and JSON errors are ValueErrors
            return f"{path.name}: {exc}"

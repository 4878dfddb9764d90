"""How steering configurations share one pool of vectors, and how large that pool is.

Every [D] vector a configuration needs (the summed addition of one layer and token phase, a
projection's direction, an SAE encoder row) occupies one row of a pool [P, D] shared by all
configurations; per-slot index tables point into it (engine/tables.py). Row 0 is the zero vector:
unused entries select it and their edit is exactly zero. Memory is therefore P x D x dtype bytes
for the vectors, whatever max_num_seqs is, plus small per-slot index and scalar tables.

The plan is structural (which edits share a row), never content-based, so that the scheduler's
admission (engine/admission.py) and the worker's loader (tables.py) count exactly the same rows
from the same ResolvedSteering, without converting any vector.
"""

from __future__ import annotations

from dataclasses import dataclass

from steer_serve.request.resolved_steering import DEFAULT_PROJECTIONS_PER_LAYER, PHASES, ResolvedSteering
from steer_serve.settings import Settings

# 32 MiB: 4,096 pool rows of Llama-3-8B's D = 4096 in bfloat16; 256 slots (capped at max_num_seqs)
DEFAULT_STEERING_MEMORY_MIB: float = Settings.model_fields["steering_memory"].default
DEFAULT_STEERING_SLOTS: int = Settings.model_fields["steering_slots"].default


@dataclass(frozen=True)
class ProjectionEntry:
    """Projection `projection` (index into ResolvedSteering.projections) at position k of (layer, phase)."""

    layer: int
    phase: int
    k: int
    projection: int
    direction: int  # plan vector number of its direction
    reads: int  # plan vector number of its encoder row (= direction when it reads along itself)


@dataclass(frozen=True)
class VectorPlan:
    """The pool rows one configuration needs, numbered 0..num_vectors-1 (the loader maps them to
    pool rows). `sums[j]` lists the additions summed into vector j (an addition vector), `sources[j]`
    says what vector j is: ("add", j) or ("direction" | "reads", projection index)."""

    sources: tuple[tuple[str, int], ...]
    sums: dict[int, tuple[int, ...]]
    additions: dict[tuple[int, int], int]  # (layer, phase) -> vector number
    projections: tuple[ProjectionEntry, ...]

    @property
    def num_vectors(self) -> int:
        return len(self.sources)

    @property
    def projection_depths(self) -> dict[int, int]:
        """layer -> projection slots this configuration fills there (the loader's k + 1, most over phases)."""
        depths: dict[int, int] = {}
        for entry in self.projections:
            depths[entry.layer] = max(depths.get(entry.layer, 0), entry.k + 1)
        return depths


def plan_vectors(steering: ResolvedSteering, num_layers: int,
                 max_projections: int = DEFAULT_PROJECTIONS_PER_LAYER) -> VectorPlan:
    """Layers outside [0, num_layers) and projections beyond `max_projections` per (layer, phase)
    are skipped, exactly as the loader skips them."""
    sources: list[tuple[str, int]] = []
    sums: dict[int, tuple[int, ...]] = {}
    additions: dict[tuple[int, int], int] = {}
    for layer in sorted({a.layer for a in steering.additions if 0 <= a.layer < num_layers}):
        numbered: dict[tuple[int, ...], int] = {}  # phases summing the same additions share a row
        for phase in (0, 1):
            summed = tuple(i for i, a in enumerate(steering.additions)
                           if a.layer == layer and phase in PHASES[a.positions])
            if summed:
                if summed not in numbered:
                    numbered[summed] = len(sources)
                    sums[len(sources)] = summed
                    sources.append(("add", len(sources)))
                additions[(layer, phase)] = numbered[summed]
    projections: list[ProjectionEntry] = []
    used: dict[tuple[int, int], int] = {}
    for index, proj in enumerate(steering.projections):
        if not 0 <= proj.layer < num_layers:
            continue
        phases = [p for p in PHASES[proj.positions] if used.get((proj.layer, p), 0) < max_projections]
        if not phases:
            continue
        direction = len(sources)
        sources.append(("direction", index))
        reads = direction
        if proj.encoder is not None:
            reads = len(sources)
            sources.append(("reads", index))
        for phase in phases:
            k = used.get((proj.layer, phase), 0)
            projections.append(ProjectionEntry(proj.layer, phase, k, index, direction, reads))
            used[(proj.layer, phase)] = k + 1
    return VectorPlan(tuple(sources), sums, additions, tuple(projections))


def max_vectors_per_configuration(num_layers: int, max_projections: int = DEFAULT_PROJECTIONS_PER_LAYER) -> int:
    """Worst case of plan_vectors: per layer, two addition sums (prompt, generated) and, per phase,
    max_projections projections with their own direction and encoder rows."""
    return num_layers * (2 + 2 * max_projections * 2)


@dataclass(frozen=True)
class SteeringBudget:
    """How many configurations (slots) and pool rows (row 0 included) one worker holds, and K, the
    projection edits per layer and token phase its tables take (--steering-projections)."""

    slots: int
    pool_rows: int
    projections: int = DEFAULT_PROJECTIONS_PER_LAYER

    @property
    def vector_capacity(self) -> int:
        """Pool rows configurations can occupy (row 0 is the shared zero vector)."""
        return self.pool_rows - 1


def steering_budget(num_layers: int, hidden_size: int, dtype_bytes: int, max_num_seqs: int,
                    memory_mib: float = DEFAULT_STEERING_MEMORY_MIB,
                    slots: int = DEFAULT_STEERING_SLOTS,
                    projections: int = DEFAULT_PROJECTIONS_PER_LAYER) -> SteeringBudget:
    """P = max(floor(memory / (D x dtype bytes)), 1 + worst case of one configuration): the pool
    always holds the largest valid configuration (with K = `projections`), so every request can
    eventually run alone. Slots = min(max_num_seqs, slots): a batch never holds more
    configurations than requests."""
    by_memory = int(memory_mib * 2**20) // (hidden_size * dtype_bytes)
    pool_rows = max(by_memory, 1 + max_vectors_per_configuration(num_layers, projections))
    return SteeringBudget(slots=max(1, min(max_num_seqs, slots)), pool_rows=pool_rows, projections=projections)

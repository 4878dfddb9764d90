"""After each completion response: Prometheus series for every request (steered, unsteered, in an
experiment or not), and an exposure for requests served an experiment arm (control included),
handed to the store's writer (a local append; the database insert happens in the background).
Called by the API middleware."""

from __future__ import annotations

import uuid

from steer_serve import metrics
from steer_serve.experiments.arm_selector import Assignment
from steer_serve.experiments.records import Exposure
from steer_serve.experiments.response_observer import Observation
from steer_serve.experiments.store_writer import StoreWriter


class RequestRecorder:
    """Records every completion request's metrics, and the exposure of those in an experiment."""

    def __init__(self, model: str, writer: StoreWriter | None) -> None:
        self.model = model
        self.writer = writer

    def record(self, assignment: Assignment | None, fingerprint: str | None, seen: Observation) -> None:
        experiment = assignment.experiment.config.key if assignment and assignment.experiment else metrics.NONE
        arm = assignment.arm.name if assignment and assignment.arm else metrics.NONE
        metrics.REQUESTS.labels(self.model, experiment, arm, str(seen.status)).inc()
        metrics.E2E_LATENCY.labels(experiment, arm).observe(seen.latency_s)
        if seen.ttft_s is not None:
            metrics.TIME_TO_FIRST_TOKEN.labels(experiment, arm).observe(seen.ttft_s)
        if seen.tokens:
            metrics.GENERATION_TOKENS.labels(experiment, arm).inc(seen.tokens)
        if assignment is not None and self.writer is not None:
            self._write(assignment, fingerprint, seen)

    def _write(self, assignment: Assignment, fingerprint: str | None, seen: Observation) -> None:
        experiment, arm, assigned = assignment.experiment, assignment.arm, assignment.assigned_arm
        assert experiment is not None and arm is not None and assigned is not None and assignment.unit_hash
        exposure = Exposure(
            # an error answered before vLLM made an id still counts as an exposure; it just cannot get feedback
            request_id=seen.request_id or f"noid-{uuid.uuid4().hex}", experiment=experiment.config.key, version=experiment.config.version,
            arm=arm.name, assigned_arm=assigned.name, outcome="killed" if assignment.outcome == "killed" else "assigned",
            unit=assignment.unit_hash, fingerprint=fingerprint, model=self.model, stream=seen.stream,
            status=seen.status, error=seen.error, ttft_s=seen.ttft_s, latency_s=seen.latency_s, tokens=seen.tokens,
            tokens_source=seen.tokens_source, finish_reason=seen.finish_reason,
        )
        self.writer.record("exposure", exposure.model_dump(mode="json"))

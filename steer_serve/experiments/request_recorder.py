"""After each completion response: Prometheus series for every request (steered, unsteered, in an
experiment or not), and an exposure line for requests served an experiment arm (control
included). Called by the API middleware."""

from __future__ import annotations

import logging
from pathlib import Path

from steer_serve import metrics
from steer_serve.experiments.arm_selector import Assignment
from steer_serve.experiments.jsonl_log import append_record
from steer_serve.experiments.records import Exposure
from steer_serve.experiments.response_observer import Observation

logger = logging.getLogger(__name__)


class RequestRecorder:
    """Records every completion request's metrics, and the exposure of those in an experiment."""

    def __init__(self, model: str, log_path: Path | None) -> None:
        self.model = model
        self.log_path = log_path

    def record(self, assignment: Assignment | None, fingerprint: str | None, seen: Observation) -> None:
        experiment = assignment.experiment.config.key if assignment and assignment.experiment else metrics.NONE
        arm = assignment.arm.name if assignment and assignment.arm else metrics.NONE
        metrics.REQUESTS.labels(self.model, experiment, arm, str(seen.status)).inc()
        metrics.E2E_LATENCY.labels(experiment, arm).observe(seen.latency_s)
        if seen.ttft_s is not None:
            metrics.TIME_TO_FIRST_TOKEN.labels(experiment, arm).observe(seen.ttft_s)
        if seen.tokens:
            metrics.GENERATION_TOKENS.labels(experiment, arm).inc(seen.tokens)
        if assignment is not None and self.log_path is not None:
            self._write(assignment, fingerprint, seen)

    def _write(self, assignment: Assignment, fingerprint: str | None, seen: Observation) -> None:
        experiment, arm, assigned = assignment.experiment, assignment.arm, assignment.assigned_arm
        assert experiment is not None and arm is not None and assigned is not None and assignment.unit_hash
        exposure = Exposure(
            request_id=seen.request_id, experiment=experiment.config.key, version=experiment.config.version,
            arm=arm.name, assigned_arm=assigned.name, outcome="killed" if assignment.outcome == "killed" else "assigned",
            unit=assignment.unit_hash, fingerprint=fingerprint, model=self.model, stream=seen.stream,
            status=seen.status, error=seen.error, ttft_s=seen.ttft_s, latency_s=seen.latency_s, tokens=seen.tokens,
            tokens_source=seen.tokens_source, finish_reason=seen.finish_reason,
        )
        try:
            append_record(self.log_path, exposure.model_dump(mode="json"))
        except OSError as exc:  # a full disk must not fail the user's request; the metric still counts it
            logger.error("cannot append to exposure log %s: %s", self.log_path, exc)

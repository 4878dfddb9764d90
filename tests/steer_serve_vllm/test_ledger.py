"""Every ledger record resolves against the installed vLLM (run this first after an upgrade), the
wrappers it lists are installed once, and plugins/README.md's table is the generated one."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

from steer_serve_vllm.api.endpoint_guard import guard_endpoint_plugin_loading
from steer_serve_vllm.engine.admission import apply_admission_patches
from steer_serve_vllm.engine.compile_cache_key import salt_compile_cache_key
from steer_serve_vllm.engine.worker_patches import apply_worker_patches
from steer_serve_vllm.ledger import LEDGER, LedgerRecord, Target, markdown_table

README = Path(__file__).resolve().parents[2] / "plugins" / "README.md"
BEGIN, END = "<!-- ledger:begin (python -m steer_serve_vllm.ledger --markdown) -->", "<!-- ledger:end -->"
MISSING = object()


def _owner_and_name(target: Target) -> tuple[Any, str]:
    owner: Any = importlib.import_module(target.module)
    *parents, name = target.path.split(".")
    for part in parents:
        owner = getattr(owner, part)
    return owner, name


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


def _member(owner: Any, name: str) -> Any:
    """The attribute, a dataclass field, or (for an attribute set on instances) the owner itself."""
    value = getattr(owner, name, MISSING)
    if value is not MISSING:
        return value
    if dataclasses.is_dataclass(owner) and name in {f.name for f in dataclasses.fields(owner)}:
        return owner
    if inspect.isclass(owner) and re.search(rf"self\.{name}\s*(:[^=\n]*)?=", _source(owner)):
        return owner
    raise AssertionError(f"{name} not found on {owner!r}")


@pytest.mark.parametrize("record", LEDGER, ids=lambda r: f"{r.how}-{r.target}")
def test_every_record_resolves_against_the_installed_vllm(record: LedgerRecord) -> None:
    owner, name = _owner_and_name(record.target)
    if record.how in ("add", "plant"):
        # our name must be one vLLM does not use (a collision would shadow or be shadowed)
        assert name not in _source(owner if inspect.isclass(owner) or callable(owner) else type(owner))
        return
    member = _member(owner, name)
    if record.how in ("wrap", "replace"):
        assert callable(member)
    if record.evidence is not None:
        assert record.evidence in _source(member if member is not owner else owner), record.evidence


def test_records_are_unique_and_complete() -> None:
    targets = [str(r.target) for r in LEDGER]
    assert len(targets) == len(set(targets))
    assert {r.process for r in LEDGER} == {"api", "engine", "client"}
    assert {r.how for r in LEDGER} == {"wrap", "replace", "add", "plant", "rely"}
    assert all(r.why and r.drop_when and r.versions and r.ours for r in LEDGER)


def test_wrappers_are_installed_once() -> None:
    """Every class- or module-level wrap (AsyncLLM.shutdown is wrapped per instance: tests/e2e/test_faults.py)."""
    for _ in range(2):  # idempotent: vLLM loads general plugins more than once
        apply_worker_patches()
        apply_admission_patches()
        guard_endpoint_plugin_loading()
        salt_compile_cache_key()
    wraps = [r for r in LEDGER if r.how == "wrap" and r.target.path != "AsyncLLM.shutdown"]
    assert len(wraps) == 10
    for record in wraps:
        owner, name = _owner_and_name(record.target)
        wrapper = vars(owner)[name] if inspect.isclass(owner) else getattr(owner, name)
        assert getattr(wrapper, "steer_serve_wrapper", False), record.target
        assert not getattr(wrapper.__wrapped__, "steer_serve_wrapper", False), record.target


def test_readme_table_is_generated_from_the_ledger() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == markdown_table().strip(), "regenerate: python -m steer_serve_vllm.ledger --markdown"

"""`quantiles(column, (0.5, 0.9))`: one SQL aggregate giving several quantiles, on both backends.

PostgreSQL: `percentile_cont(ARRAY[...]) WITHIN GROUP (ORDER BY column)`, one sort per group for
all the points. SQLite has no percentile aggregate: we register a Python one on each connection
(`steer_quantiles`), with the same linear interpolation (numpy's default equals percentile_cont).
Both come back as a list of floats, or None for an empty group.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement


class quantiles(FunctionElement):  # noqa: N801 (a SQL function name)
    inherit_cache = True
    name = "quantiles"

    def __init__(self, column: ColumnElement[Any], points: Sequence[float]) -> None:
        self.points = tuple(float(p) for p in points)
        super().__init__(column)


@compiles(quantiles, "postgresql")
def _postgresql(element: quantiles, compiler: Any, **kw: Any) -> str:
    column = compiler.process(list(element.clauses)[0], **kw)
    points = ", ".join(repr(p) for p in element.points)
    return f"percentile_cont(ARRAY[{points}]::float8[]) WITHIN GROUP (ORDER BY {column})"


@compiles(quantiles, "sqlite")
def _sqlite(element: quantiles, compiler: Any, **kw: Any) -> str:
    column = compiler.process(list(element.clauses)[0], **kw)
    return f"steer_quantiles({column}, '{','.join(repr(p) for p in element.points)}')"


class _SqliteQuantiles:
    """The SQLite aggregate: collects the group's non-null values, answers a JSON list."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.points = ""

    def step(self, value: float | None, points: str) -> None:
        self.points = points
        if value is not None:
            self.values.append(value)

    def finalize(self) -> str | None:
        if not self.values:
            return None
        points = [float(p) for p in self.points.split(",")]
        return json.dumps([float(v) for v in np.quantile(np.asarray(self.values), points)])


def register_sqlite_quantiles(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _add(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.create_aggregate("steer_quantiles", 2, _SqliteQuantiles)


def as_list(value: Any) -> list[float] | None:
    """The aggregate's value as floats, whichever backend computed it."""
    if value is None:
        return None
    if isinstance(value, str):
        return [float(v) for v in json.loads(value)]
    return [float(v) for v in value]


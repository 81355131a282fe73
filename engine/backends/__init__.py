"""Backends compile a QueryPlan into exact bounded aggregates; registered by name."""

from engine.backends.base import Backend, ExactAggregates
from engine.backends.polars import PolarsBackend

BACKENDS: dict[str, type[Backend]] = {"polars": PolarsBackend}

__all__ = ["BACKENDS", "Backend", "ExactAggregates", "PolarsBackend"]

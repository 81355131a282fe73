"""Backends compile a QueryPlan into exact bounded aggregates; registered by name.

``SparkBackend`` imports pyspark only when it first runs a plan, so this
registry (and the engine) works without pyspark installed.
"""

from engine.backends.base import Backend, ExactAggregates
from engine.backends.polars import PolarsBackend
from engine.backends.spark import SparkBackend

BACKENDS: dict[str, type[Backend]] = {"polars": PolarsBackend, "spark": SparkBackend}

__all__ = ["BACKENDS", "Backend", "ExactAggregates", "PolarsBackend", "SparkBackend"]

"""Where the Spark backend's SparkSession comes from: settings from the environment, built once, on first use.

``COOPDP_SPARK_MASTER`` (default ``local[*]``) is the master URL
(``spark://host:7077``, ``yarn``, ``k8s://https://host:6443``, ``local[2]``);
``COOPDP_SPARK_CONF`` is a JSON object of extra Spark settings, e.g.
``{"spark.executor.memory": "8g", "spark.hadoop.fs.s3a.endpoint": "…"}``
(JSON, not ``key=value`` lists, because values such as JVM options hold
spaces and ``=``).

pyspark is imported here only, and only when a dataset asks for Spark, so
the engine runs without it.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.errors import BackendUnavailable, PolicyError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MASTER_VARIABLE = "COOPDP_SPARK_MASTER"
CONF_VARIABLE = "COOPDP_SPARK_CONF"
DEFAULT_MASTER = "local[*]"
REQUIRED_CONF = {"spark.sql.ansi.enabled": "false", "spark.sql.session.timeZone": "UTC"}
"""Non-ANSI: failed casts and missing map keys give NULL, 64-bit arithmetic wraps (the hash); UTC: a zoned
timestamp reads as its UTC wall clock, as Polars reads it."""


@dataclass(frozen=True)
class SparkSettings:
    master: str = DEFAULT_MASTER
    conf: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_environment(cls) -> SparkSettings:
        raw = os.environ.get(CONF_VARIABLE, "").strip()
        conf: object = {}
        if raw:
            try:
                conf = json.loads(raw)
            except json.JSONDecodeError as error:
                raise PolicyError(f"{CONF_VARIABLE} is not valid JSON: {error.msg}") from None
        if not isinstance(conf, dict):
            raise PolicyError(f'{CONF_VARIABLE} must be a JSON object such as {{"spark.executor.memory": "4g"}}')
        for key, value in REQUIRED_CONF.items():
            if str(conf.get(key, value)).lower() != value.lower():
                raise PolicyError(f"{CONF_VARIABLE} may not set {key}: the Spark backend needs {key}={value}")
        return cls(os.environ.get(MASTER_VARIABLE, DEFAULT_MASTER), {str(k): str(v) for k, v in conf.items()})


_lock = threading.Lock()


def get_session(settings: SparkSettings) -> SparkSession:
    """The process's SparkSession (Spark allows one active per driver), started on first call."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise BackendUnavailable(
            'a dataset uses backend = "spark" but pyspark is not installed: pip install "coopdp[spark]" '
            "(and a Java 17 runtime)"
        ) from None
    with _lock:
        builder = SparkSession.builder.master(settings.master).appName("coopdp")
        for key, value in {**settings.conf, **REQUIRED_CONF}.items():
            builder = builder.config(key, value)
        session = builder.getOrCreate()
        for key, value in REQUIRED_CONF.items():  # an already running session keeps its own settings otherwise
            session.conf.set(key, value)
        return session

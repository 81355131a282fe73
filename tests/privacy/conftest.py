"""Fixtures of the privacy tests: how many samples the empirical audits draw."""

from __future__ import annotations

import pytest

from tests.privacy.audit import AuditSizes

FAST = AuditSizes(select=600, test=2_500)
"""Per pool: enough for a sharp bound on a count at ε = 1 (see test_audit.py), in a few seconds."""
FULL = AuditSizes(select=5_000, test=40_000)
"""``--audit-full``: tighter bounds, minutes per audit."""


@pytest.fixture
def audit_sizes(request: pytest.FixtureRequest) -> AuditSizes:
    return FULL if request.config.getoption("--audit-full") else FAST

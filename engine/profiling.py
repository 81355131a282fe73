"""Planning a query's member profile before the charge: its noise, and the checks that keep its choice total.

A query whose policy leaves bounds to the engine (``"auto"``), or that asks
for its bias, releases a member profile (``engine.member_profile``) after the
charge; here is what is fixed before it: the profile's share of the loss,
and the plan checked and calibrated at the largest bounds the choice may make.
"""

from __future__ import annotations

from dataclasses import replace

from engine.accounting import PrivacyRequest
from engine.bounds_choice import largest, profiled_histograms
from engine.errors import PolicyViolation
from engine.mechanisms import MODES, NoisePlan, calibrate, request_loss
from engine.member_profile import ProfileNoise
from engine.plan import QueryPlan
from engine.policy import Policy
from engine.sensitivity import check_no_overflow

AUTO_DRY_RUN_NOTE = (
    "contribution bounds are chosen when the query runs (auto): the accuracy shown is at the largest bounds it may "
    "choose; the answer's will be as good or better"
)


def profile_noise(
    policy: Policy, plan: QueryPlan, request: PrivacyRequest, *, explain_bias: bool, accuracy_targets: bool
) -> ProfileNoise | None:
    """The member profile's noise, when bounds are chosen per query or their bias is asked for; else None.

    It spends the policy's ``auto_share`` of the request's loss; the query's parts get the rest.
    """
    if plan.auto_bounds is None and not explain_bias:
        return None
    if plan.contribution.unit_column is None and plan.auto_bounds is None:
        raise PolicyViolation("explain_bias is for member-level datasets: at row level bounding removes no rows")
    if accuracy_targets:
        raise PolicyViolation(
            "accuracy targets need fixed contribution bounds: give epsilon (this query's bounds are chosen by DP "
            "when it runs, or their bias is estimated)"
        )
    loss = policy.privacy.auto_share * request_loss(plan, request)
    return ProfileNoise.fitted(MODES[request.accounting], profiled_histograms(plan, request.accounting), loss)


def calibrated_at_every_limit(
    plan: QueryPlan, request: PrivacyRequest, weights: tuple[float, ...] | None, reserved: float
) -> NoisePlan:
    """The plan's noise beside the profile's loss; with ``"auto"`` bounds, checked at each mode's largest bounds.

    Whatever the choice after the charge, its bounds are at most these: its
    plan cannot overflow and its noise calibrates (a smaller sensitivity only needs less noise).
    """
    noise = calibrate(plan, request, weights, reserved)
    if plan.auto_bounds is not None:
        for contribution in largest(plan, request.accounting):
            bounded = replace(plan, contribution=contribution)
            check_no_overflow(bounded)
            calibrate(bounded, request, weights, reserved)
    return noise

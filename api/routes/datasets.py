"""What a buyer needs to write SQL: the public description of each dataset. Never a row or a path."""

from __future__ import annotations

from fastapi import APIRouter

from api.auth import CurrentPrincipal, EngineDep
from api.schemas import ColumnInfo, CostBody, DatasetInfo, PublicTableInfo
from engine import Engine
from engine.errors import Forbidden
from engine.keys import Role
from engine.policy import Policy

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.get("", response_model=list[DatasetInfo])
def list_datasets(engine: EngineDep, principal: CurrentPrincipal) -> list[DatasetInfo]:
    """The datasets the caller may query (a policy may name its buyers)."""
    buyer = principal.name if principal.role is Role.BUYER else None
    described = []
    for _, policy in sorted(engine.policies.items()):
        try:
            described.append(describe(engine, policy, buyer))
        except Forbidden:
            continue
    return described


@router.get("/{name}", response_model=DatasetInfo)
def get_dataset(name: str, engine: EngineDep, principal: CurrentPrincipal) -> DatasetInfo:
    return describe(engine, engine.policy(name), principal.name if principal.role is Role.BUYER else None)


def describe(engine: Engine, policy: Policy, buyer: str | None) -> DatasetInfo:
    remaining = engine.remaining(policy, engine.caller(policy, buyer))
    return DatasetInfo(
        name=policy.name,
        description=policy.dataset.description,
        privacy_unit="row" if policy.unit_column is None else "member",
        max_groups=policy.privacy.max_groups,
        max_rows_per_group=policy.privacy.max_rows_per_group,
        max_rows_per_member=policy.privacy.max_rows_per_member,
        accounting=policy.budget.accounting,
        max_epsilon_per_query=policy.budget.max_epsilon_per_query,
        columns=[
            ColumnInfo(
                name=name,
                type=column.type.value,
                bounds=column.bounds,
                public_keys=list(column.public_keys) if column.public_keys is not None else None,
                range=column.range,
            )
            for name, column in policy.columns.items()
        ],
        public_tables=[
            PublicTableInfo(
                name=name,
                key=section.key,
                description=section.description,
                columns={
                    table.key: table.key_type.value,
                    **{column: kind.value for column, (kind, _) in table.attributes.items()},
                },
            )
            for name, section in policy.public_tables.items()
            for table in [policy.lookups[name.lower()]]
        ],
        remaining=CostBody(**remaining.to_dict()),
    )

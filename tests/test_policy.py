"""Policies load strictly: every problem names the file, the key and what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import PolicyError
from engine.policy import ColumnType, load_policies, load_policy
from tests.conftest import ROW_LEVEL, small_pool, write_dataset


def _policy_file(tmp_path: Path, **options: object) -> Path:
    policies = write_dataset(tmp_path, small_pool(rows=20), **options)  # type: ignore[arg-type]
    return policies / "shifts.toml"


def _edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


def test_a_valid_policy_loads_with_resolved_source(tmp_path: Path) -> None:
    policy = load_policy(_policy_file(tmp_path))
    assert policy.name == "shifts"
    assert policy.unit_column == "member_id"
    assert policy.columns["hours"].bounds == (0.0, 60.0)
    assert policy.columns["member_flag"].public_keys == (False, True)
    assert policy.source_paths == ((tmp_path / "data" / "shifts.parquet").resolve(),)


def test_row_level_policy_has_no_unit_column(tmp_path: Path) -> None:
    assert load_policy(_policy_file(tmp_path, privacy=ROW_LEVEL)).unit_column is None


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('type = "float"', 'type = "decimal"', "columns.hours.type"),
        ("bounds = [0.0, 60.0]\n", "", "columns.hours"),
        ("bounds = [0.0, 60.0]", "bounds = [60.0, 0.0]", "inverted"),
        ("bounds = [18, 80]", "bounds = [18.5, 80]", "integer bounds"),
        ("epsilon = 10.0", "epsilon = 0", "budget.epsilon"),
        ("epsilon = 10.0", "epsilon = -1.0", "budget.epsilon"),
        ('accounting = "pure"', 'accounting = "renyi"', "budget.accounting"),
        ("max_epsilon_per_query = 2.0", "max_epsilon_per_query = 20.0", "max_epsilon_per_query"),
        ('unit = "member_id"', 'unit = "person"', "not a declared column"),
        ('unit = "member_id"', 'unit = "region"', 'must have type = "id"'),
        ("max_groups = 1\n", "", "max_groups"),
        ("max_groups = 1", "max_groups = 0", "privacy.max_groups"),
        ("max_groups = 1", "max_grops = 1", "max_grops"),
        ('source = "../data/shifts.parquet"', 'source = "../data/missing.parquet"', "matches no file"),
        ('values = ["north", "south", "east", "west"]', 'values = ["north", "north"]', "must not repeat"),
        ('[columns.city]\ntype = "category"', '[columns.city]\ntype = "category"\nbounds = [0, 1]', "takes no bounds"),
        ("delta = 1e-06", "delta = 1.5", "budget.delta"),
    ],
)
def test_bad_policies_name_file_key_and_problem(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = _edit(_policy_file(tmp_path), old, new)
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert str(path) in raised.value.message
    assert expected in raised.value.message


def test_zcdp_needs_a_delta(tmp_path: Path) -> None:
    path = _edit(_policy_file(tmp_path, accounting="zcdp"), "delta = 1e-06", "delta = 0.0")
    with pytest.raises(PolicyError, match="zcdp"):
        load_policy(path)


@pytest.mark.parametrize("bound", ["max_groups = 2", "max_rows_per_member = 5"])
def test_row_unit_refuses_contribution_bounds(tmp_path: Path, bound: str) -> None:
    path = _edit(_policy_file(tmp_path, privacy=ROW_LEVEL), 'unit = "row"', f'unit = "row"\n{bound}')
    with pytest.raises(PolicyError, match="takes no max_groups / max_rows_per_group / max_rows_per_member"):
        load_policy(path)


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ("", "needs privacy.max_rows_per_member, or privacy.max_groups and privacy.max_rows_per_group, or all three"),
        ("max_groups = 2", "max_groups and privacy.max_rows_per_group go together"),
        ("max_rows_per_group = 2\nmax_rows_per_member = 9", "go together: give both or neither"),
        ("max_groups = 2\nmax_rows_per_member = 9", "go together: give both or neither"),
        ("max_rows_per_member = 0", "privacy.max_rows_per_member: Value error, must be a positive whole number"),
        ("max_rows_per_member = 2.5", "privacy.max_rows_per_member"),
        ("max_row_per_member = 3", "max_row_per_member"),
    ],
)
def test_member_level_bounds_are_per_group_or_total_or_both(tmp_path: Path, bounds: str, expected: str) -> None:
    path = _policy_file(tmp_path, privacy=f'unit = "member_id"\n{bounds}')
    with pytest.raises(PolicyError) as raised:
        load_policy(path)
    assert str(path) in raised.value.message
    assert expected in raised.value.message


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [
        ("max_rows_per_member = 12", (None, None, 12)),
        ("max_groups = 2\nmax_rows_per_group = 5", (2, 5, None)),
        ("max_groups = 2\nmax_rows_per_group = 5\nmax_rows_per_member = 12", (2, 5, 12)),
    ],
)
def test_member_level_policies_load_with_either_mode_or_both(
    tmp_path: Path, bounds: str, expected: tuple[int | None, ...]
) -> None:
    privacy = load_policy(_policy_file(tmp_path, privacy=f'unit = "member_id"\n{bounds}')).privacy
    assert (privacy.max_groups, privacy.max_rows_per_group, privacy.max_rows_per_member) == expected


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    path = _edit(_policy_file(tmp_path), "[budget]", "[budget")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(path)


def test_csv_sources_and_globs_load(tmp_path: Path) -> None:
    policies = write_dataset(tmp_path, small_pool(rows=20), suffix="csv")
    path = _edit(policies / "shifts.toml", "../data/shifts.csv", "../data/*.csv")
    assert load_policy(path).source_paths[0].suffix == ".csv"


def test_two_files_declaring_one_dataset_are_refused(tmp_path: Path) -> None:
    policies = write_dataset(tmp_path, small_pool(rows=20))
    (policies / "copy.toml").write_text((policies / "shifts.toml").read_text())
    with pytest.raises(PolicyError, match="declared by another policy file"):
        load_policies(policies)


def test_missing_policies_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_policies(tmp_path / "nowhere")


def test_column_types_are_an_enum(tmp_path: Path) -> None:
    policy = load_policy(_policy_file(tmp_path))
    assert policy.columns["age"].type is ColumnType.INT
    assert policy.columns["age"].type.is_numeric

"""The ``coopdp`` command end to end: output formats, exit codes, JSON errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tests.bounds_pools import heavy_tail_pool, truncation_pool, with_auto_hours

runner = CliRunner()
QUERY = "SELECT region, COUNT(*) AS n, SUM(hours) AS h, AVG(age) FROM shifts WHERE age >= 25 GROUP BY region ORDER BY n DESC"


@pytest.fixture
def policies(dataset: Callable[..., Path]) -> Path:
    return dataset(epsilon=1.0, max_epsilon_per_query=1.0)


def _run(policies: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "--policies", str(policies)])
    return result.exit_code, result.stdout, result.stderr


def test_query_as_json_follows_the_contract(policies: Path) -> None:
    code, out, _ = _run(policies, "query", "--dataset", "shifts", "--epsilon", "0.5", "--format", "json", QUERY)
    assert code == 0
    document = json.loads(out)
    assert document["columns"] == ["region", "n", "h", "avg(age)"]
    assert len(document["rows"]) == 4
    assert document["cost"] == {"epsilon": 0.5, "delta": 0.0}
    assert document["remaining"]["epsilon"] == 0.5
    assert set(document["accuracy"]) == {"n", "h", "avg(age)"}


def test_query_as_a_table_for_people(policies: Path) -> None:
    code, out, _ = _run(policies, "query", "--dataset", "shifts", "--epsilon", "0.5", QUERY)
    assert code == 0
    assert "north" in out and "±" in out and "remaining ε=0.5" in out


def test_rejected_query_exits_2_with_a_json_error(policies: Path) -> None:
    code, _, err = _run(
        policies, "query", "--dataset", "shifts", "--epsilon", "0.5", "--format", "json", "SELECT * FROM shifts"
    )
    assert code == 2
    assert json.loads(err) == {
        "error": {
            "code": "policy_violation",
            "message": "SELECT * is refused: rows are never released; select aggregates",
        }
    }


def test_epsilon_above_the_per_query_maximum_exits_2(policies: Path) -> None:
    code, _, err = _run(policies, "query", "--dataset", "shifts", "--epsilon", "1.5", "--format", "json", QUERY)
    assert code == 2 and json.loads(err)["error"]["code"] == "policy_violation"


def test_exhausted_budget_exits_3(policies: Path) -> None:
    for epsilon in ("0.5", "0.25"):
        assert _run(policies, "query", "--dataset", "shifts", "--epsilon", epsilon, QUERY)[0] == 0
    code, out, err = _run(policies, "query", "--dataset", "shifts", "--epsilon", "0.3", "--format", "json", QUERY)
    assert code == 3 and out == ""
    assert json.loads(err)["error"]["code"] == "budget_exhausted"


def test_dry_run_charges_nothing(policies: Path) -> None:
    code, out, _ = _run(
        policies, "query", "--dry-run", "--dataset", "shifts", "--epsilon", "1.0", "--format", "json", QUERY
    )
    assert code == 0 and json.loads(out)["rows"] == []
    code, out, _ = _run(policies, "budget", "--format", "json")
    assert json.loads(out)["datasets"][0]["spent"] == {"epsilon": 0.0, "delta": 0.0}


def test_explain_prints_the_plan_and_charges_nothing(policies: Path) -> None:
    code, out, _ = _run(policies, "explain", "--dataset", "shifts", "--epsilon", "0.5", "--weight", "n=2", QUERY)
    assert code == 0
    assert out.startswith("explain shifts\n") and "part 0: count_rows(*)" in out and "[parts 0]" in out
    assert "charged: ε 0.5, δ 0" in out
    code, out, _ = _run(policies, "explain", "--dataset", "shifts", "--epsilon", "0.5", "--format", "json", QUERY)
    assert code == 0
    document = json.loads(out)
    assert document["explain"] is True and [key["name"] for key in document["keys"]] == ["region"]
    assert document["cost"]["epsilon"] == 0.5
    code, out, _ = _run(policies, "budget", "--dataset", "shifts", "--format", "json")
    assert json.loads(out)["datasets"][0]["spent"]["epsilon"] == 0


def test_a_refused_explain_exits_2_like_the_query(policies: Path) -> None:
    code, _, err = _run(
        policies, "explain", "--dataset", "shifts", "--epsilon", "0.5", "--format", "json", "SELECT * FROM shifts"
    )
    assert code == 2 and json.loads(err)["error"]["code"] == "policy_violation"


def test_budget_shows_spent_and_left(policies: Path) -> None:
    _run(policies, "query", "--dataset", "shifts", "--epsilon", "0.25", QUERY)
    code, out, _ = _run(policies, "budget", "--dataset", "shifts")
    assert code == 0 and "shifts" in out and "0.75" in out


def test_a_bad_policy_exits_1_naming_the_file(policies: Path) -> None:
    path = policies / "shifts.toml"
    path.write_text(path.read_text().replace("epsilon = 1.0", "epsilon = -1.0"))
    code, _, err = _run(policies, "budget", "--format", "json")
    assert code == 1
    error = json.loads(err)["error"]
    assert error["code"] == "invalid_policy" and "shifts.toml" in error["message"]


def test_the_installed_command_runs_the_demo(tmp_path: Path) -> None:
    environment = {**os.environ, "COOPDP_POLICIES": str(tmp_path / "policies")}
    coopdp = str(Path(sys.executable).parent / "coopdp")
    completed = subprocess.run(
        [coopdp, "demo"], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    assert "created" in completed.stdout and "refused" in completed.stdout
    assert (tmp_path / "coopdp.db").exists()
    budget = subprocess.run(
        [coopdp, "budget", "--format", "json"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(budget.stdout)["datasets"][0]["spent"]["epsilon"] == pytest.approx(0.9)


def test_keys_are_listed_and_revoked_by_id_never_the_last_steward_key(policies: Path) -> None:
    code, first_secret, _ = _run(policies, "keys", "create", "--buyer", "root", "--role", "steward")
    assert code == 0
    assert _run(policies, "keys", "create", "--buyer", "lab")[0] == 0
    code, out, _ = _run(policies, "keys", "list", "--format", "json")
    assert code == 0
    keys = json.loads(out)["keys"]
    assert [(k["name"], k["role"], k["revoked"], k["last_used_at"]) for k in keys] == [
        ("root", "steward", False, None),
        ("lab", "buyer", False, None),
    ]
    assert all(set(k) == {"id", "name", "role", "created_at", "last_used_at", "revoked"} for k in keys)
    assert first_secret.strip() not in out
    root, lab = keys[0]["id"], keys[1]["id"]
    code, _, err = _run(policies, "keys", "revoke", root)
    assert code == 1 and "last live steward key" in err
    code, out, _ = _run(policies, "keys", "revoke", lab)
    assert code == 0 and f"revoked {lab} (lab, buyer)" in out
    code, out, _ = _run(policies, "keys", "list")
    assert code == 0 and "revoked" in out and root in out
    code, _, err = _run(policies, "keys", "revoke", "k_missing")
    assert code == 1 and "not_found" in err
    code, _, err = _run(policies, "keys", "create", "--buyer", "lab", "--role", "steward")
    assert code == 1 and "conflict" in err


def test_quota_sets_a_buyers_epsilon_and_delta_on_a_dataset(policies: Path) -> None:
    assert _run(policies, "keys", "create", "--buyer", "lab")[0] == 0
    code, out, _ = _run(policies, "quota", "--dataset", "shifts", "--buyer", "lab", "--epsilon", "0.5", "--delta", "0")
    assert code == 0 and "epsilon 0.5" in out
    assert _run(policies, "query", "--dataset", "shifts", "--buyer", "lab", "--epsilon", "0.5", QUERY)[0] == 0
    code, _, err = _run(policies, "query", "--dataset", "shifts", "--buyer", "lab", "--epsilon", "0.1", QUERY)
    assert code == 3 and "quota_exhausted" in err
    code, _, err = _run(policies, "quota", "--dataset", "shifts", "--buyer", "lab", "--epsilon", "0")
    assert code == 2 and "epsilon quota" in err
    code, _, err = _run(policies, "quota", "--dataset", "shifts", "--buyer", "nobody", "--delta", "1e-7")
    assert code == 1 and "not_found" in err
    assert _run(policies, "quota", "--dataset", "shifts", "--buyer", "lab")[0] == 0  # both lifted
    assert _run(policies, "query", "--dataset", "shifts", "--buyer", "lab", "--epsilon", "0.1", QUERY)[0] == 0


# --- contribution bounds and their bias -----------------------------------------------------------------------

BIAS_QUERY = "SELECT COUNT(*) AS n FROM shifts"


@pytest.fixture
def truncated(dataset: Callable[..., Path]) -> Path:
    """2,000 members with one row and 300 with 40: bounds (1, 10) remove about 64% of the rows."""
    return dataset(truncation_pool(2_000, 300, 40), epsilon=3.0, max_epsilon_per_query=1.0)


def test_explain_bias_prints_the_bias_row_and_the_bounds_line(truncated: Path) -> None:
    code, out, _ = _run(truncated, "query", "--dataset", "shifts", "--epsilon", "1", "--explain-bias", BIAS_QUERY)
    assert code == 0
    assert "contribution bounds: max_groups = 1, max_rows_per_group = 10" in out
    (bias_row,) = [line for line in out.splitlines() if "bias −" in line]
    share = float(bias_row.split("bias −")[1].split("%")[0]) / 100
    assert 0.55 < share < 0.7
    code, out, _ = _run(
        truncated, "query", "--dataset", "shifts", "--epsilon", "1", "--explain-bias", "--format", "json",
        BIAS_QUERY + " WHERE age > 0",
    )  # fmt: skip
    document = json.loads(out)
    assert code == 0 and document["bounds"] == {"max_groups": 1, "max_rows_per_group": 10}
    assert set(document["bias"]) == {"n"} and 0.55 < document["bias"]["n"] < 0.7


def test_without_explain_bias_the_bounds_are_shown_and_no_bias(truncated: Path) -> None:
    code, out, _ = _run(truncated, "query", "--dataset", "shifts", "--epsilon", "1", BIAS_QUERY)
    assert code == 0 and "bias −" not in out
    assert "contribution bounds: max_groups = 1, max_rows_per_group = 10" in out
    code, out, _ = _run(truncated, "query", "--dataset", "shifts", "--epsilon", "1", "--format", "json", BIAS_QUERY)
    assert code == 0 and "bias" not in json.loads(out)


def test_auto_bounds_print_the_bounds_chosen_and_their_bias(dataset: Callable[..., Path]) -> None:
    privacy = 'unit = "member_id"\nmax_groups = "auto"\nmax_rows_per_group = "auto"'
    policies = dataset(heavy_tail_pool(), privacy=privacy, epsilon=3.0, max_epsilon_per_query=1.0)
    code, out, _ = _run(policies, "query", "--dataset", "shifts", "--epsilon", "1", "--format", "json", BIAS_QUERY)
    document = json.loads(out)
    assert (
        code == 0 and set(document["bounds"]) == {"max_groups", "max_rows_per_group"} and set(document["bias"]) == {"n"}
    )
    code, out, _ = _run(policies, "query", "--dataset", "shifts", "--epsilon", "1", BIAS_QUERY + " WHERE age > 0")
    assert code == 0 and "bias −" in out and "contribution bounds: max_groups = 1, max_rows_per_group = " in out


def test_auto_value_bounds_are_in_the_json_result(dataset: Callable[..., Path]) -> None:
    """Every member's hours are 8.0 in a range of [0, 60]: the bound chosen keeps them, under the range's top."""
    policies = with_auto_hours(dataset(heavy_tail_pool(), epsilon=3.0, max_epsilon_per_query=1.0))
    sql = "SELECT SUM(hours) AS h FROM shifts"
    code, out, _ = _run(policies, "query", "--dataset", "shifts", "--epsilon", "1", "--format", "json", sql)
    document = json.loads(out)
    assert code == 0 and set(document["value_bounds"]) == {"hours"}
    low, high = document["value_bounds"]["hours"]
    assert low == 0.0 and 8.0 <= high < 60.0 and set(document["bias"]) == {"h"}


def test_explain_bias_at_row_level_exits_2_and_charges_nothing(dataset: Callable[..., Path]) -> None:
    policies = dataset(privacy='unit = "row"', epsilon=1.0, max_epsilon_per_query=1.0)
    code, _, err = _run(
        policies, "query", "--dataset", "shifts", "--epsilon", "0.5", "--explain-bias", "--format", "json", BIAS_QUERY
    )
    assert code == 2 and json.loads(err)["error"]["code"] == "policy_violation"
    assert "member-level" in json.loads(err)["error"]["message"]
    code, out, _ = _run(policies, "budget", "--format", "json")
    assert json.loads(out)["datasets"][0]["spent"] == {"epsilon": 0.0, "delta": 0.0}

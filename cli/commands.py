"""The ``coopdp`` command: an operator tool (whoever runs it holds the data and the ledger).

Errors become exit codes here and only here: 2 query rejected, 3 budget or
quota exhausted, 1 anything else.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.demo import EXAMPLES, ensure_demo
from engine.engine import BudgetStatus, Engine
from engine.errors import BudgetRefused, CoopdpError, InternalError, QueryRejected
from engine.explain_text import render
from engine.keys import Role
from engine.result import Result

EXIT_CODES: dict[type[CoopdpError], int] = {QueryRejected: 2, BudgetRefused: 3}

app = typer.Typer(
    name="coopdp",
    help="Differentially private SQL over a data cooperative's pool.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()
errors = Console(stderr=True)


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


PoliciesOption = Annotated[
    Path, typer.Option("--policies", envvar="COOPDP_POLICIES", help="Directory of policy files.")
]
LedgerOption = Annotated[
    str | None,
    typer.Option(
        "--ledger", envvar="COOPDP_LEDGER", help="Ledger URL (default: sqlite:///coopdp.db beside the policies)."
    ),
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="table for people, json for scripts.")]


def exit_code(error: CoopdpError) -> int:
    return next((code for kind, code in EXIT_CODES.items() if isinstance(error, kind)), 1)


def _fail(error: Exception, output: OutputFormat) -> NoReturn:
    if not isinstance(error, CoopdpError):
        # Never print the message of an unexpected error: it could hold a data value.
        error = InternalError(f"unexpected {error.__class__.__name__}; this is a bug")
    if output is OutputFormat.JSON:
        print(json.dumps(error.to_dict()), file=sys.stderr)
    else:
        errors.print(f"[bold red]error[/] {escape(f'[{error.code}]: {error.message}')}", highlight=False)
    raise typer.Exit(exit_code(error))


@contextmanager
def _session(policies: Path, ledger: str | None, output: OutputFormat) -> Iterator[Engine]:
    """An engine for one command; any failure inside ends as a typed error and its exit code."""
    try:
        engine = Engine.from_policies(policies, ledger=ledger)
    except Exception as error:  # noqa: BLE001
        _fail(error, output)
    try:
        yield engine
    except Exception as error:  # noqa: BLE001
        _fail(error, output)
    finally:
        engine.close()


def _numbers(pairs: list[str] | None, option: str) -> dict[str, float] | None:
    """``COLUMN=NUMBER`` options (``--weight``, ``--accuracy``) as a mapping; None when none was given."""
    numbers = {}
    for pair in pairs or []:
        column, _, number = pair.rpartition("=")
        try:
            numbers[column] = float(number)
        except ValueError:
            raise typer.BadParameter(f"{pair!r}: write COLUMN=NUMBER", param_hint=option) from None
        if not column:
            raise typer.BadParameter(f"{pair!r}: write COLUMN=NUMBER", param_hint=option)
    return numbers or None


SqlArgument = Annotated[str, typer.Argument(help="One SELECT over the dataset's table.")]
DatasetOption = Annotated[str, typer.Option("--dataset", help="Dataset (table) name.")]
EpsilonOption = Annotated[
    float | None, typer.Option("--epsilon", help="Privacy budget this query may spend (or give --accuracy).")
]
DeltaOption = Annotated[float | None, typer.Option("--delta", help="δ (needed by zcdp datasets).")]
BuyerOption = Annotated[str | None, typer.Option("--buyer", help="Charge this buyer's quota.")]
WeightOption = Annotated[
    list[str] | None,
    typer.Option(
        "--weight",
        metavar="COLUMN=W",
        help="Give an output column W shares of ε (default 1 each); repeat for several columns.",
    ),
]
AccuracyOption = Annotated[
    list[str] | None,
    typer.Option(
        "--accuracy",
        metavar="COLUMN=HALF_WIDTH",
        help="Instead of --epsilon: spend the least ε that gives this COUNT or SUM column a 95%% half-width of at "
        "most HALF_WIDTH; repeat for several columns.",
    ),
]


@app.command()
def query(
    sql: SqlArgument,
    dataset: DatasetOption,
    epsilon: EpsilonOption = None,
    delta: DeltaOption = None,
    buyer: BuyerOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Cost and accuracy only; reads no data.")] = False,
    weight: WeightOption = None,
    accuracy: AccuracyOption = None,
    explain_bias: Annotated[
        bool,
        typer.Option(
            "--explain-bias",
            help="Also estimate the share of rows bounding removes, for the policy's auto_share of the ε "
            "(always done where the policy's bounds are auto).",
        ),
    ] = False,
    output: FormatOption = OutputFormat.TABLE,
    policies: PoliciesOption = Path("policies"),
    ledger: LedgerOption = None,
) -> None:
    """Answer an aggregate SQL query with differential privacy."""
    weights, targets = _numbers(weight, "--weight"), _numbers(accuracy, "--accuracy")
    with _session(policies, ledger, output) as engine:
        result = engine.query(
            dataset,
            sql,
            epsilon=epsilon,
            delta=delta,
            buyer=buyer,
            dry_run=dry_run,
            weights=weights,
            accuracy=targets,
            explain_bias=explain_bias,
        )
    if output is OutputFormat.JSON:
        print(json.dumps(result.to_dict()))
    else:
        _print_result(result)


@app.command()
def explain(
    sql: SqlArgument,
    dataset: DatasetOption,
    epsilon: EpsilonOption = None,
    delta: DeltaOption = None,
    buyer: BuyerOption = None,
    weight: WeightOption = None,
    accuracy: AccuracyOption = None,
    output: FormatOption = OutputFormat.TABLE,
    policies: PoliciesOption = Path("policies"),
    ledger: LedgerOption = None,
) -> None:
    """Show how a query would be answered (bounds, sensitivity, noise, cost); reads no data, charges nothing."""
    weights, targets = _numbers(weight, "--weight"), _numbers(accuracy, "--accuracy")
    with _session(policies, ledger, output) as engine:
        explanation = engine.explain(
            dataset, sql, epsilon=epsilon, delta=delta, buyer=buyer, weights=weights, accuracy=targets
        )
    if output is OutputFormat.JSON:
        print(json.dumps(explanation.to_dict()))
    else:
        print(render(explanation), end="")  # plain text: rich markup would eat "[parts 0]"


@app.command()
def budget(
    dataset: Annotated[str | None, typer.Option("--dataset", help="One dataset (default: all).")] = None,
    output: FormatOption = OutputFormat.TABLE,
    policies: PoliciesOption = Path("policies"),
    ledger: LedgerOption = None,
) -> None:
    """Show each dataset's privacy budget, spent and left."""
    with _session(policies, ledger, output) as engine:
        statuses = engine.budgets(dataset)
    if output is OutputFormat.JSON:
        print(json.dumps({"datasets": [_budget_dict(status) for status in statuses]}))
        return
    table = Table(title="Privacy budgets")
    for column in ("dataset", "accounting", "ε spent", "ε left", "δ spent", "δ left"):
        table.add_column(column, justify="left" if column in ("dataset", "accounting") else "right")
    for status in statuses:
        left = status.remaining
        amounts = (status.spent.epsilon, left.epsilon, status.spent.delta, left.delta)
        table.add_row(status.dataset, status.accounting, *(f"{float(amount):g}" for amount in amounts))
    console.print(table)


@app.command()
def quota(
    dataset: Annotated[str, typer.Option("--dataset", help="Dataset (table) name.")],
    buyer: Annotated[str, typer.Option("--buyer", help="A registered buyer.")],
    epsilon: Annotated[float | None, typer.Option("--epsilon", help="ε quota (left out: none).")] = None,
    delta: Annotated[float | None, typer.Option("--delta", help="δ quota (left out: none).")] = None,
    policies: PoliciesOption = Path("policies"),
    ledger: LedgerOption = None,
) -> None:
    """Set a buyer's ε and δ quotas on a dataset; they replace the policy's (a part left out is lifted)."""
    with _session(policies, ledger, OutputFormat.TABLE) as engine:
        name = engine.policy(dataset).name
        engine.set_quota(name, buyer, epsilon=epsilon, delta=delta, actor="cli")
    console.print(f"{escape(buyer)} on {name}: epsilon {epsilon or 'unlimited'}, delta {delta or 'unlimited'}")


@app.command()
def demo(
    policies: PoliciesOption = Path("policies"),
    ledger: LedgerOption = None,
) -> None:
    """Create the demo pool and policy if missing, then run example queries."""
    for path in ensure_demo(policies):
        console.print(f"created {path}")
    with _session(policies, ledger, OutputFormat.TABLE) as engine:
        for title, epsilon, sql in EXAMPLES:
            console.rule(title)
            console.print(
                f"[dim]$ coopdp query --dataset gig_work --epsilon {epsilon} {escape(repr(sql))}[/]", highlight=False
            )
            try:
                _print_result(engine.query("gig_work", sql, epsilon=epsilon))
            except CoopdpError as error:
                console.print(f"[bold red]refused[/] {escape(f'[{error.code}]: {error.message}')}", highlight=False)
        console.rule("Budget")
        for status in engine.budgets():
            console.print(f"{status.dataset}: ε {status.remaining.epsilon} of {status.budget.epsilon} left")


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes (share the ledger).")] = 1,
    policies: PoliciesOption = Path("policies"),
    ledger: LedgerOption = None,
) -> None:
    """Serve the HTTP API (FastAPI on uvicorn); the demo pool is created if no policy exists."""
    import uvicorn

    if not any(policies.glob("*.toml")):
        ensure_demo(policies)
    os.environ["COOPDP_POLICIES"] = str(policies.resolve())
    if ledger:
        os.environ["COOPDP_LEDGER"] = ledger
    uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers)


@keys_app.command("create")
def create_key(
    buyer: Annotated[str, typer.Option("--buyer", help="Whose key: a buyer's name, or a steward's.")],
    role: Annotated[Role, typer.Option("--role", help="buyer (queries) or steward (governs).")] = Role.BUYER,
    policies: PoliciesOption = Path("policies"),
    ledger: LedgerOption = None,
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""
    with _session(policies, ledger, OutputFormat.TABLE) as engine:
        issued = engine.create_key(buyer, role, actor="cli")
    print(issued.secret)


@keys_app.command("list")
def list_keys(
    output: FormatOption = OutputFormat.TABLE,
    policies: PoliciesOption = Path("policies"),
    ledger: LedgerOption = None,
) -> None:
    """List every key, live and revoked (id, name, role, created, last used); never a secret."""
    with _session(policies, ledger, output) as engine:
        records = engine.keys()
    if output is OutputFormat.JSON:
        print(json.dumps({"keys": [asdict(record) for record in records]}))
        return
    table = Table(title="API keys", caption="times in UTC, to the minute")
    for column in ("id", "name", "role", "created", "last used", "state"):
        table.add_column(column, no_wrap=column in ("id", "state"))
    for record in records:
        last_used = _minute(record.last_used_at) if record.last_used_at else "never"
        state = "revoked" if record.revoked else "live"
        table.add_row(record.id, escape(record.name), record.role, _minute(record.created_at), last_used, state)
    console.print(table)


def _minute(timestamp: str) -> str:
    """``2024-05-01T12:34:56.789+00:00`` → ``2024-05-01 12:34``."""
    return timestamp[:16].replace("T", " ")


@keys_app.command("revoke")
def revoke_key(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id, from `coopdp keys list`.")],
    policies: PoliciesOption = Path("policies"),
    ledger: LedgerOption = None,
) -> None:
    """Revoke one key, a buyer's or a steward's; the last live steward key is refused (exit 1)."""
    with _session(policies, ledger, OutputFormat.TABLE) as engine:
        record = engine.revoke_key(key_id, actor="cli")
    console.print(f"revoked {record.id} ({escape(record.name)}, {record.role})", highlight=False)


def _budget_dict(status: BudgetStatus) -> dict[str, Any]:
    return {
        "dataset": status.dataset,
        "accounting": status.accounting,
        "budget": status.budget.to_dict(),
        "spent": status.spent.to_dict(),
        "remaining": status.remaining.to_dict(),
    }


def _print_result(result: Result) -> None:
    title = "dry run: nothing read, nothing charged" if result.dry_run else f"{result.dataset} · {result.query_id}"
    caption = "± is the half-width of a 95% interval per cell (noise only)"
    if result.rank_accuracy:
        caption += "; for quantiles, in rows of rank"
    if result.bias:
        caption += "; bias: the estimated share bounding removed"
    table = Table(title=title, caption=caption)
    for column in result.columns:
        table.add_column(column, justify="right")
    for row in result.rows:
        table.add_row(*(_cell(value) for value in row))
    table.add_section()
    table.add_row(*(_accuracy_cell(result, column) for column in result.columns), style="dim")
    if result.bias:
        table.add_row(*(_bias_cell(result, column) for column in result.columns), style="dim")
    console.print(table)
    if result.bounds:
        bounds = ", ".join(f"{name} = {value}" for name, value in result.bounds.items())
        console.print(f"contribution bounds: {bounds}", highlight=False)
    asked = ", ".join(f"{name} ± {target:g}" for name, target in result.accuracy_target.items())
    console.print(
        f"cost ε={result.cost.epsilon} δ={result.cost.delta}"
        + (f" (the least ε for {asked})" if asked else "")
        + f" · remaining ε={result.remaining.epsilon} δ={result.remaining.delta}",
        highlight=False,
    )


def _cell(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _bias_cell(result: Result, column: str) -> str:
    share = result.bias.get(column)
    return "" if share is None else f"bias −{share:.1%}"


def _accuracy_cell(result: Result, column: str) -> str:
    if column in result.rank_accuracy:
        return f"± {result.rank_accuracy[column]:,} rows"
    if column not in result.accuracy:
        return ""
    value = result.accuracy[column]
    return "± n/a" if value is None else f"± {value:,.2f}"

from engine import Engine


def test_member_level_grouped_query_releases_every_public_key(engine: Engine) -> None:
    result = engine.query("shifts", "SELECT region, COUNT(*) AS n, AVG(hours) FROM shifts GROUP BY region", epsilon=1.0)
    assert sorted(row[0] for row in result.rows) == ["east", "north", "south", "west"]
    assert result.columns == ["region", "n", "avg(hours)"]

-- dataset: shifts
-- epsilon: 1.0
SELECT region, SUM(hours) / COUNT(*) AS per_row, SUM(hours * 2 + 1) AS shifted FROM shifts GROUP BY region

-- dataset: shifts
-- epsilon: 1.0
-- weights: n=3, total_hours=1
SELECT region, COUNT(*) AS n, SUM(hours) AS total_hours FROM shifts GROUP BY region

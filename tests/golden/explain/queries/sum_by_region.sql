-- dataset: shifts
-- epsilon: 0.5
SELECT region, SUM(hours) AS total_hours FROM shifts GROUP BY region

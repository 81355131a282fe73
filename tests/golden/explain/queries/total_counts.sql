-- dataset: shifts_total
-- epsilon: 1.0
SELECT region, COUNT(*) AS n, AVG(hours) AS avg_hours FROM shifts_total GROUP BY region

-- dataset: shifts_total
-- epsilon: 1.0
-- delta: 1e-7
SELECT city, COUNT(*) AS n, SUM(hours) AS total_hours FROM shifts_total GROUP BY city

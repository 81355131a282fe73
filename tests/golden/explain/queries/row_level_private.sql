-- dataset: shifts_rows
-- epsilon: 1.0
-- delta: 1e-7
SELECT city, COUNT(*) AS n FROM shifts_rows GROUP BY city

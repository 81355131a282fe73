-- dataset: shifts_zcdp
-- epsilon: 1.0
-- delta: 1e-6
SELECT region, COUNT(*) AS n, SUM(age) AS total_age FROM shifts_zcdp GROUP BY region

-- dataset: shifts
-- epsilon: 1.0
-- delta: 1e-7
SELECT region, city, AVG(age) AS avg_age FROM shifts GROUP BY region, city

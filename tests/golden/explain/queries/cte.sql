-- dataset: shifts
-- epsilon: 1.0
WITH recent AS (SELECT region, hours FROM shifts WHERE day >= DATE '2024-06-01')
SELECT region, AVG(hours) AS avg_hours FROM recent GROUP BY region

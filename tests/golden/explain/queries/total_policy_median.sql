-- dataset: shifts_total
-- epsilon: 1.0
SELECT region, MEDIAN(hours) AS median_hours FROM shifts_total GROUP BY region

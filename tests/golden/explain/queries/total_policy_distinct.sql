-- dataset: shifts_total
-- epsilon: 1.0
SELECT region, COUNT(DISTINCT member_id) AS members FROM shifts_total GROUP BY region

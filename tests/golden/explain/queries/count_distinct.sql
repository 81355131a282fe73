-- dataset: shifts
-- epsilon: 1.0
SELECT region, COUNT(DISTINCT member_id) AS members FROM shifts GROUP BY region

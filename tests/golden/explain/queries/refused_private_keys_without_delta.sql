-- dataset: shifts
-- epsilon: 1.0
SELECT city, COUNT(*) FROM shifts GROUP BY city

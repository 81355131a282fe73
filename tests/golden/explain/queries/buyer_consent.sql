-- dataset: shifts
-- epsilon: 1.0
-- buyer: uni_lab
SELECT region, COUNT(*) AS n FROM shifts GROUP BY region

-- dataset: shifts
-- epsilon: 1.0
SELECT day, COUNT(*) AS n FROM shifts WHERE day BETWEEN DATE '2024-03-01' AND DATE '2024-03-31' GROUP BY day
